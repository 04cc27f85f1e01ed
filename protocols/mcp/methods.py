"""The MCP methods, independent of the transport: what the gateway answers to an MCP client.

``MCPService`` handles ``initialize``, the client's notifications and responses, and every
request method (``ping``, ``tools/*``, ``resources/*``, ``prompts/*``, ``completion/complete``,
``logging/setLevel``, and ``tasks/*`` with tasks_ext.py, which also decides which tool calls
become tasks), each request given as an ``MCPCall``: its params, its session, its caller
and the stream its messages go back on. A 2026-07-28 request (``MCPCall.modern``) has no session:
its envelope says what its client declared and the log level it wants (nothing without one);
its methods (``modern_methods``) are those of its era (``server/discover``; no ``ping``,
``logging/setLevel`` or ``resources/(un)subscribe``), its answer gets the era's shape
(``modern.finish``: ``resultType``, ``serverInfo``, ``ttlMs`` of ``cache_ttl_ms``, 0 for a
resource read, and ``cacheScope``: ``public`` only when the answer is everyone's, see
``cache_scope``). An upstream's sampling, elicitation or roots request, and an agent's question,
become input-required results of ``tools/call``, ``prompts/get`` and ``resources/read`` whose
retry (its ``requestState`` redeemed before anything runs) resumes the call (mrtr.py,
request_state.py); a request the client did not declare the capability for is refused upstream
and, when nothing is left to ask, the call answers -32021 naming it.

Tools are the routable agents and the meta tools (agents.py) and the federated upstreams' tools
(federation.py); resources and prompts are the upstreams'.

It holds one gateway's MCP state in the shared key/value store (sessions, the resumable event
log, the cross-node mailbox: sessions.py), runs the federation, and sends the server-initiated
notifications (``list_changed``, ``resources/updated``, log messages) to the sessions' GET
streams, and the change notifications to ``subscriptions/listen`` streams (listen.py; a listen
stream's resources are subscribed upstream while it lasts, shared with the sessions'
subscriptions). The Streamable HTTP bindings (streamable_http.py, stateless_http.py) turn HTTP
requests into these calls.

The policy (``gateway.core.policy``, action ``call``) decides what each caller sees and uses.
Agent tools are the agents the caller may call (``ActingFor.known_agents``). An upstream's
tool, prompt, resource or resource template is judged as ``Target(agent=<upstream>,
upstream=<upstream>, tool|prompt|resource=<its name or URI as the upstream lists it>)``, with the
DID, tags and skills of the upstream's registry record when it has one, so a rule on the agent
covers its federated tools too; a template is judged by its ``uriTemplate``, and a URI read
through a template must be allowed as itself and as that template. What the caller may not use
is left out of every list, ``find_agents`` and ``send_task``'s matching, and answered exactly as
an unknown item (``Unknown tool: <name>``, ``Unknown prompt: <name>``, and for a resource the
gateway's ``Resource not found``, its answer to a URI no upstream serves; but with a single
upstream, a URI it does not list is relayed to it, which answers for itself), with the refusal
in the audit log. Nothing is cached per caller: names come from the whole
catalog (a name means the same to everyone), each list is filtered per request, a policy reload
sends ``list_changed`` for tools, prompts and resources to every GET stream (each client then
lists again, as itself), ``resources/updated`` goes only to subscribers who may still read the
resource, and an upstream's log messages that belong to no request only to callers it offers
something.

Dispatch is a small hand-written JSON-RPC dispatcher over an explicit ``methods`` mapping, not
jsonrpcserver: MCP handlers need their request's context while they run (the session, and the
POST's SSE stream to send progress, log messages and server->client requests such as sampling
before the response), the transport must tell requests, notifications (202) and client
responses (answers to our requests, 202) apart, and the response body is JSON or SSE depending
on whether anything is sent before the result. jsonrpcserver maps one request to one return
value and does not parse responses, so it cannot express that.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import functools
import json
import logging
import secrets
from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any, Protocol

from gateway.core import __version__, audit
from gateway.core.backends import BackendUnavailable, QueueFull, TaskNotFound
from gateway.core.policy import Action, Target
from gateway.core.principal import LOCAL, Principal
from gateway.core.quotas import QuotaExceeded
from gateway.core.runtime import ActingFor, Runtime
from gateway.core.settings import load_settings
from protocols.mcp import mrtr, telemetry, wire
from protocols.mcp.agents import META_TOOLS, AgentTools, agent_tool, task_result, tool_error
from protocols.mcp.client import Upstream, UpstreamClient, UpstreamTimeout, UpstreamUnavailable, describe
from protocols.mcp.federation import Quarantined, UpstreamSet, Visible, configured_upstreams, registry_upstreams
from protocols.mcp.listen import Filter, Hub, Listener
from protocols.mcp.modern import ENVELOPE, Envelope, check_param_headers, finish
from protocols.mcp.mrtr import (
    Exchange,
    Parked,
    agent_answer,
    agent_question,
    answered,
    input_required,
    is_input_required,
    outcome_reply,
)
from protocols.mcp.request_state import RequestStates, refused
from protocols.mcp.sessions import EventLog, Mailbox, Sessions
from protocols.mcp.stdio_upstream import StdioUpstream
from protocols.mcp.tasks_ext import EXTENSION, LEGACY_CAPABILITY, LEGACY_SINCE, MCPTasks
from protocols.mcp.upstreams_file import UpstreamsFile
from protocols.mcp.wire import INVALID_PARAMS, INVALID_REQUEST, MCPError
from schemas import TaskState

log = logging.getLogger("interlace.mcp")

CAPABILITIES = {
    "tools": {"listChanged": True},
    "resources": {"subscribe": True, "listChanged": True},
    "prompts": {"listChanged": True},
    "logging": {},
    "completions": {},
}
LEGACY_ONLY = ("ping", "logging/setLevel", "resources/subscribe", "resources/unsubscribe")  # gone in 2026-07-28
SERVER_INFO = {"name": "interlace", "title": "Interlace gateway", "version": __version__}
INSTRUCTIONS = (
    "Tools are the gateway's routable agents (send them a message), the meta tools "
    "find_agents and send_task, and the tools of federated MCP servers."
)


@dataclasses.dataclass
class MCPOptions:
    """MCP endpoint options; each has an ``INTERLACE_MCP_*`` environment variable (see from_env)."""

    upstreams: tuple[Any, ...] = ()  # fixed upstream MCP servers (see federation.configured_upstreams)
    upstreams_file: str | None = None  # YAML file of HTTP and stdio upstreams, reloaded on change (upstreams_file.py)
    naming: str = "prefix"  # upstream tool/prompt naming: "prefix" | "pass-through"
    separator: str = "__"
    allowed_hosts: tuple[str, ...] | None = None  # None: loopback (+ the bind host); ("*",): any
    allowed_origins: tuple[str, ...] = ()  # origins allowed besides http(s)://<allowed host>
    session_ttl_s: int = 3600  # idle sessions expire
    event_ttl_s: int = 600  # SSE events are kept this long for Last-Event-ID resumption
    call_timeout_s: float = 60.0  # bound on a relayed upstream request or an agent task
    client_request_timeout_s: float = 120.0  # bound on the client's answer to sampling/elicitation
    page_size: int = 100
    # 2026-07-28 caching hint (ttlMs) on server/discover and the lists; their changes are also
    # announced on subscriptions/listen. resources/read gets 0: an upstream's resource may change
    # at any time.
    cache_ttl_ms: int = 5000
    sse_retry_ms: int = 1000
    sse_max_s: float | None = None  # default: the gateway's sse_max_s
    agents_poll_s: float = 5.0  # agent set re-checked for tools/list_changed (changes are also signalled)
    follow_registry: bool = True  # federate every live registry record with an mcp endpoint
    task_ttl_ms: int = 3_600_000  # an MCP task is kept this long (a 2025-11-25 client may ask for another)
    task_poll_ms: int = 500  # the pollInterval MCP tasks suggest
    registry_poll_s: float = 2.0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> MCPOptions:
        return load_settings(cls, "INTERLACE_MCP_", overrides, env)


class Outbound(Protocol):
    """Where one request's messages go back (the binding's response to it)."""

    @property
    def can_stream(self) -> bool:
        """Whether a message may still be sent before the result (the response is a stream)."""

    async def send(self, msg: dict[str, Any], final: bool = False) -> None:
        """Send ``msg``; ``final``: it is the request's response."""


class MCPCall:
    """One client request being handled: its params, its session (legacy) or envelope (modern:
    no session), its caller and the stream its messages go back on."""

    def __init__(
        self,
        service: MCPService,
        sid: str,
        session: dict[str, Any],
        msg: dict[str, Any],
        out: Outbound,
        principal: Principal = LOCAL,
        envelope: Envelope | None = None,
    ) -> None:
        self.service, self.sid, self.session, self.out = service, sid, session, out
        self.principal, self.envelope = principal, envelope
        self.id, self.method = msg["id"], msg["method"]
        self.params: dict[str, Any] = msg.get("params") or {}
        meta = self.params.get("_meta")
        self.progress_token = meta.get("progressToken") if isinstance(meta, dict) else None
        # capabilities an upstream needed of this (modern) client that it did not declare
        self.missing_capabilities: dict[str, dict] = {}
        self.exchange: Exchange | None = None  # a modern call's upstream call asking in rounds (mrtr.py)
        self.resume: dict[str, Any] | None = None  # what its verified requestState resumes

    @classmethod
    def modern(
        cls, service: MCPService, msg: dict[str, Any], out: Outbound, principal: Principal, envelope: Envelope
    ) -> MCPCall:
        """A 2026-07-28 request: its client is described by its envelope, not by a session."""
        return cls(service, "", {}, msg, out, principal, envelope)

    @property
    def capabilities(self) -> dict[str, Any]:
        """What the client declared: in this request's envelope, or when its session began."""
        if self.envelope is not None:
            return self.envelope.capabilities
        return self.session.get("caps") or {}

    @functools.cached_property
    def rt(self) -> ActingFor:
        """The runtime acting for the caller: the tasks this call makes are the caller's own."""
        return self.service.runtime.acting_for(self.principal)

    async def notify(self, method: str, params: dict[str, Any]) -> None:
        await self.out.send(wire.notification(method, params))

    async def ask(self, method: str, params: dict[str, Any], rid: str | None = None) -> dict[str, Any]:
        """A server->client request on this request's stream; the client's result.

        If the wait is cancelled (the upstream withdrew its request), the client is told with
        ``notifications/cancelled``."""
        if not self.out.can_stream:
            raise MCPError(INVALID_REQUEST, f"cannot relay {method}: the client does not accept text/event-stream")
        service = self.service
        rid = rid or service.new_request_id()
        await self.out.send(wire.request(rid, method, params))
        try:
            reply = await service.mailbox.wait("r", self.sid, rid, service.options.client_request_timeout_s)
        except TimeoutError:
            await self.notify("notifications/cancelled", {"requestId": rid, "reason": "no answer in time"})
            raise MCPError(wire.INTERNAL_ERROR, f"the client did not answer {method} in time") from None
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                withdrawn = {"requestId": rid, "reason": "withdrawn upstream"}
                await asyncio.shield(self.notify("notifications/cancelled", withdrawn))
            raise
        if isinstance(reply.get("error"), dict):
            err = reply["error"]
            code, message = err.get("code", wire.INTERNAL_ERROR), str(err.get("message", "client error"))
            raise MCPError(code, message, err.get("data"))
        res = reply.get("result")
        return res if isinstance(res, dict) else {}


def _cursor(offset: int) -> str:
    return base64.urlsafe_b64encode(json.dumps({"o": offset}).encode()).decode().rstrip("=")


def _offset(cursor: Any, size: int) -> int:
    try:
        data = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        offset = data["o"]
        if isinstance(offset, int) and 0 <= offset <= size:
            return offset
    except Exception:
        pass
    raise MCPError(INVALID_PARAMS, "Invalid cursor")


class MCPService:
    """The MCP side of one gateway: sessions, dispatch, agent tools and upstream federation."""

    def __init__(self, runtime: Runtime, options: MCPOptions | None = None) -> None:
        self.runtime = runtime
        self.options = options or MCPOptions.from_env()
        kv = runtime.kv
        self.shared = runtime.shared_state  # other nodes may serve the same sessions
        self.sessions = Sessions(kv, self.options.session_ttl_s)
        self.events = EventLog(kv, self.options.event_ttl_s)
        self.mailbox = Mailbox(kv, self.shared)
        # input-required results (mrtr.py): their signed states, and the upstream calls parked here
        self.states = RequestStates(
            runtime.identity, kv, trust_file=runtime.config.trust, ttl_s=self.options.client_request_timeout_s
        )
        self.parked = Parked(self.mailbox, self.options.client_request_timeout_s, self.options.call_timeout_s)
        self.agent_tools = AgentTools(self.options.call_timeout_s)
        # The operator's upstreams: the options' list and the upstream file's (a ValueError if it
        # does not parse), which is reloaded while running.
        self.upstreams_file = UpstreamsFile(self.options.upstreams_file) if self.options.upstreams_file else None
        self.static_upstreams = self._operators_upstreams()
        self.upstreams = UpstreamSet(
            self.static_upstreams,
            kv=kv,
            naming=self.options.naming,
            separator=self.options.separator,
            call_timeout_s=self.options.call_timeout_s,
            registry=runtime.metrics.registry,
            on_change=self._catalog_changed,
            on_resource_updated=self._resource_updated,
            on_log=self._upstream_log,
            # Registry upstreams are dialled under the gateway's egress policy; the hosts of the
            # configured ones (the operator's own) are allowed.
            egress=runtime.egress.allowing(*(u.url for u in self.static_upstreams)),
        )
        self._node = secrets.token_hex(3)
        self._ids = 0
        self.inflight: dict[tuple[str, str], asyncio.Task] = {}
        # sid -> closed flag of the GET stream the binding holds open for it on this node; the
        # server-initiated notifications go to these sessions
        self.get_streams: dict[str, asyncio.Event] = {}
        self.listeners: dict[str, Principal] = {}  # sid -> the caller whose GET stream that is
        # uri -> {sid: its caller} of the sessions subscribed via this node
        self.subscriptions: dict[str, dict[str, Principal]] = defaultdict(dict)
        self.listen = Hub(self.events, self.shared, self._listener_may_read)
        self.held: dict[str, int] = defaultdict(int)  # uri -> listen streams of this node subscribed to it
        self._background: set[asyncio.Task] = set()
        self.methods = {
            "ping": self.ping,
            "tools/list": self.tools_list,
            "tools/call": self.tools_call,
            "resources/list": self.resources_list,
            "resources/templates/list": self.templates_list,
            "resources/read": self.resources_read,
            "resources/subscribe": self.resources_subscribe,
            "resources/unsubscribe": self.resources_unsubscribe,
            "prompts/list": self.prompts_list,
            "prompts/get": self.prompts_get,
            "completion/complete": self.complete,
            "logging/setLevel": self.set_level,
        }
        # 2026-07-28 (subscriptions/listen, a stream rather than one answer, is the binding's)
        self.modern_methods = {
            "server/discover": self.discover,
            **{m: handler for m, handler in self.methods.items() if m not in LEGACY_ONLY},
        }
        # tasks: the 2025-11-25 utility in sessions, the extension statelessly (tasks_ext.py)
        self.tasks = MCPTasks(self, ttl_ms=self.options.task_ttl_ms, poll_ms=self.options.task_poll_ms)
        self.methods.update(self.tasks.legacy_methods())
        self.modern_methods.update(self.tasks.modern_methods())

    def _operators_upstreams(self) -> list[Upstream | StdioUpstream]:
        listed = configured_upstreams(self.options.upstreams)
        return listed + (self.upstreams_file.current if self.upstreams_file is not None else [])

    async def _upstreams_file_changed(self, _: list[Upstream | StdioUpstream]) -> None:
        self.static_upstreams = self._operators_upstreams()
        static = {u.name for u in self.static_upstreams}
        registered = [u for u in registry_upstreams(self.runtime) if u.name not in static]
        await self.upstreams.set_upstreams([*self.static_upstreams, *registered], wait_s=0)

    async def start(self) -> None:
        await self.upstreams.start()
        if self.upstreams_file is not None:
            self.upstreams_file.start(self._upstreams_file_changed)
        self._spawn(self._watch_agents())
        if self.options.follow_registry:
            self._spawn(self._follow_registry())

    async def _follow_registry(self) -> None:
        """Keep the upstream set equal to the static list plus the registry's MCP agents."""
        current = list(self.static_upstreams)
        seqs: dict[str, int] = {}
        while True:
            try:
                static = {u.name for u in self.static_upstreams}
                registered = [u for u in registry_upstreams(self.runtime) if u.name not in static]
                wanted = [*self.static_upstreams, *registered]
                if wanted != current:
                    await self.upstreams.set_upstreams(wanted, wait_s=0)
                    current = wanted
                await self._repin_reregistered(seqs)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("could not follow the registry's MCP agents")
            await asyncio.sleep(self.options.registry_poll_s)

    async def _repin_reregistered(self, seqs: dict[str, int]) -> None:
        """Rug-pull defence: a tool whose definition drifted stays hidden until its owner
        re-registers (a record with a higher seq); then the current definition is pinned."""
        for record in self.runtime.registry.live():
            if record.endpoints.mcp is None:
                continue
            before = seqs.get(record.name)
            seqs[record.name] = max(record.seq, before or 0)
            if before is not None and record.seq > before:
                repinned = await self.upstreams.repin(record.name)
                if repinned:
                    log.info("re-pinned tools after re-registration", extra={"agent": record.name, "tools": repinned})

    async def _watch_agents(self) -> None:
        """Tell clients with a GET stream when the set of routable agents (tools) changes, or the
        policy (what each caller sees of everything): on the runtime's signal (a record, a node
        going down or coming back, a policy reload), else every poll."""
        changed = asyncio.Event()
        self.runtime.watch_agents(changed.set)
        last: set[str] | None = None
        policy = self.runtime.policy
        while True:
            try:
                current = set(await self._agents())
            except Exception:  # the bus is down: try again next round
                pass
            else:
                if self.runtime.policy is not policy:
                    policy = self.runtime.policy
                    await self._catalog_changed({"tools", "prompts", "resources"})
                elif last is not None and current != last:
                    await self._catalog_changed({"tools"})
                last = current
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), self.options.agents_poll_s)
            changed.clear()

    async def stop(self) -> None:
        if self.upstreams_file is not None:
            await self.upstreams_file.stop()
        await self.listen.stop()
        await self.parked.stop()
        for task in [*self.inflight.values(), *self._background]:
            task.cancel()
        for closed in self.get_streams.values():
            closed.set()
        await asyncio.gather(*self.inflight.values(), *self._background, return_exceptions=True)
        await self.upstreams.stop()

    def new_request_id(self) -> str:
        self._ids += 1
        return f"ilx-{self._node}-{self._ids}"

    def _spawn(self, coro) -> asyncio.Task:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    # ---- the session's life ----------------------------------------------------------------------

    async def initialize(self, params: dict[str, Any], principal: Principal = LOCAL) -> tuple[str, dict[str, Any]]:
        """A new session for ``initialize``, belonging to ``principal``: (its id, the result)."""
        version, caps, info = params.get("protocolVersion"), params.get("capabilities", {}), params.get("clientInfo")
        if not isinstance(version, str) or not isinstance(caps, dict) or not isinstance(info, (dict, type(None))):
            raise MCPError(
                INVALID_PARAMS, "initialize needs protocolVersion (string), capabilities (object), clientInfo (object)"
            )
        negotiated = version if version in wire.SUPPORTED_VERSIONS else wire.LATEST_VERSION
        session = {"v": negotiated, "caps": caps, "info": info or {}, "level": None, "who": principal.id}
        with self.runtime.quotas.session(principal, self.options.session_ttl_s) as counted:
            sid = await self.sessions.create(session)
            counted(sid)
        tasks = {"tasks": LEGACY_CAPABILITY} if negotiated >= LEGACY_SINCE else {}  # the 2025-11-25 utility
        result = {
            "protocolVersion": negotiated,
            "capabilities": {**CAPABILITIES, **tasks},
            "serverInfo": SERVER_INFO,
            "instructions": INSTRUCTIONS,
        }
        client = (info or {}).get("name")
        log.info("mcp session started", extra={"session": sid[:8], "client": client, "version": negotiated})
        return sid, result

    async def notification(self, sid: str, msg: dict[str, Any]) -> None:
        """A client notification; ``notifications/cancelled`` cancels its request on whichever node runs it."""
        if msg["method"] == "notifications/cancelled":
            rid = (msg.get("params") or {}).get("requestId")
            if rid is None:
                return
            task = self.inflight.get((sid, json.dumps(rid)))
            if task is not None:
                task.cancel()
            elif self.shared:
                await self.mailbox.post("c", sid, rid, True)

    async def response(self, sid: str, msg: dict[str, Any]) -> None:
        """The client's answer to one of our requests (``MCPCall.ask``), for whichever node waits for it."""
        await self.mailbox.post("r", sid, msg["id"], msg)

    def dispatch(self, call: MCPCall) -> None:
        """Run a request in the background; its response goes to ``call.out`` (a cancelled
        request answers REQUEST_CANCELLED)."""
        job = asyncio.create_task(self._run(call))
        key = (call.sid, json.dumps(call.id))
        self.inflight[key] = job
        job.add_done_callback(lambda _: self.inflight.pop(key, None) if self.inflight.get(key) is job else None)
        if self.shared and call.method not in ("ping", "tools/list", "resources/list", "prompts/list"):
            watcher = self._spawn(self._watch_cancel(call.sid, call.id, job))
            job.add_done_callback(lambda _: watcher.cancel())

    async def _watch_cancel(self, sid: str, rid: Any, job: asyncio.Task) -> None:
        await asyncio.sleep(0.3)
        with contextlib.suppress(TimeoutError):
            await self.mailbox.wait("c", sid, rid, None)
            job.cancel()

    async def _run(self, call: MCPCall) -> None:
        try:
            reply = await self.answer(call)
        except asyncio.CancelledError:
            reply = wire.error(call.id, MCPError(wire.REQUEST_CANCELLED, "Request cancelled"))
        await call.out.send(reply, final=True)

    @telemetry.server_span
    async def answer(self, call: MCPCall) -> dict[str, Any]:
        """The JSON-RPC response to ``call`` (a result or an error, never an exception but
        cancellation), by the methods and in the shape of its era."""
        reply = await self._reply(call)
        return reply if call.envelope is None else self.modern_reply(call, reply)

    def modern_reply(self, call: MCPCall, reply: dict[str, Any]) -> dict[str, Any]:
        """``reply`` in its 2026-07-28 shape, with this gateway's identity and caching hints."""
        ttl_ms = 0 if call.method == "resources/read" else self.options.cache_ttl_ms
        return finish(call.method, reply, server_info=SERVER_INFO, scope=self.cache_scope(call), ttl_ms=ttl_ms)

    async def _reply(self, call: MCPCall) -> dict[str, Any]:
        try:
            handler = (self.methods if call.envelope is None else self.modern_methods).get(call.method)
            if handler is None:
                raise MCPError(wire.METHOD_NOT_FOUND, f"Method not found: {call.method}")
            state = call.params.get("requestState")
            if call.envelope is not None and call.method in mrtr.METHODS and state is not None:
                # verified (and used up) before anything runs: a refused state changes nothing
                call.resume = await self.states.redeem(state, call.principal.id, call.method, call.params)
            reply = wire.result(call.id, await handler(call))
        except MCPError as exc:
            reply = wire.error(call.id, exc)
        except QuotaExceeded as exc:
            reply = wire.error(call.id, wire.rate_limited(str(exc), exc.retry_after))
        except (QueueFull, BackendUnavailable) as exc:  # transient: the other faces answer 503 + Retry-After
            reply = wire.error(call.id, MCPError(wire.INTERNAL_ERROR, f"{exc}; try again shortly", {"retryAfter": 1}))
        except Exception:
            log.exception("mcp handler failed", extra={"method": call.method})
            reply = wire.error(call.id, MCPError(wire.INTERNAL_ERROR, "Internal error"))
        # Whatever the upstream made of the refusal, this is the answer, unless there is still
        # something the client can be asked.
        if call.missing_capabilities and not is_input_required(reply.get("result")):
            names = ", ".join(sorted(call.missing_capabilities))
            needed = {"requiredCapabilities": call.missing_capabilities}
            return wire.error(
                call.id,
                MCPError(
                    wire.MISSING_CLIENT_CAPABILITY,
                    f"{call.method} needs undeclared client capabilities: {names}",
                    needed,
                ),
            )
        return reply

    async def end_session(self, sid: str) -> None:
        """The client ended the session: forget it, cancel its requests, close its GET stream."""
        await self.sessions.delete(sid)
        self.runtime.quotas.end_session(sid)
        for (s, _), task in list(self.inflight.items()):
            if s == sid:
                task.cancel()
        closed = self.get_streams.get(sid)
        if closed is not None:
            closed.set()
            self.events.wake(sid, "g")
        self.listeners.pop(sid, None)
        for uri, sids in list(self.subscriptions.items()):
            sids.pop(sid, None)
            if not sids:
                del self.subscriptions[uri]
        log.info("mcp session ended", extra={"session": sid[:8]})

    # ---- server-initiated messages -------------------------------------------------------------

    async def _catalog_changed(self, kinds: set[str]) -> None:
        for kind in sorted(kinds):
            note = wire.notification(f"notifications/{kind}/list_changed")
            for sid in list(self.get_streams):
                await self.events.append_get(sid, note)
            await self.listen.publish({"kind": kind})

    async def _resource_updated(self, uri: str) -> None:
        note = wire.notification("notifications/resources/updated", {"uri": uri})
        hit = self.upstreams.resolve_uri(uri)
        for sid, caller in list(self.subscriptions.get(uri, {}).items()):
            # Subscribed when it could read the resource; the policy may have changed since.
            if hit is not None and self._may_read(self.runtime.acting_for(caller), hit[0].name, uri, hit[1]):
                await self.events.append_get(sid, note)
        await self.listen.publish({"kind": "updated", "uri": uri})

    def _listener_may_read(self, caller: Principal, uri: str) -> bool:
        hit = self.upstreams.resolve_uri(uri)
        return hit is not None and self._may_read(self.runtime.acting_for(caller), hit[0].name, uri, hit[1])

    async def _upstream_log(self, upstream: str, params: dict[str, Any]) -> None:
        for sid in list(self.get_streams):
            caller = self.listeners.get(sid)
            offered = self.upstreams.offered_to(self._visible(self.runtime.acting_for(caller))) if caller else set()
            if upstream not in offered:
                continue  # a log of an upstream that offers the caller nothing is not its to read
            record = await self.sessions.get(sid)
            if record and record.get("level") and _passes(params.get("level"), record["level"]):
                await self.events.append_get(sid, wire.notification("notifications/message", params))

    async def _wants_log(self, call: MCPCall, level: Any) -> bool:
        """Whether a log message at ``level`` goes to ``call``'s client: a 2026-07-28 request
        gets only what its ``logLevel`` asks for (nothing without one), a session what its
        ``logging/setLevel`` asked for (everything before it)."""
        if call.envelope is not None:
            return call.envelope.log_level is not None and _passes(level, call.envelope.log_level)
        session = await self.sessions.get(call.sid) or call.session
        return _passes(level, session.get("level"))

    # ---- methods -------------------------------------------------------------------------------

    def _page(self, items: list[dict[str, Any]], key: str, params: dict[str, Any]) -> dict[str, Any]:
        cursor = params.get("cursor")
        if cursor is not None and not isinstance(cursor, str):
            raise MCPError(INVALID_PARAMS, "Invalid cursor")
        start = _offset(cursor, len(items)) if cursor else 0
        end = start + self.options.page_size
        page: dict[str, Any] = {key: items[start:end]}
        if end < len(items):
            page["nextCursor"] = _cursor(end)
        return page

    async def ping(self, call: MCPCall) -> dict[str, Any]:
        return {}

    # ---- what the caller may use (module docstring) --------------------------------------------

    def visible_to(self, rt: ActingFor) -> Visible | None:
        """What ``rt``'s caller may use of the upstreams (for views such as the console)."""
        return self._visible(rt)

    def _visible(self, rt: ActingFor) -> Visible | None:
        """What ``rt``'s caller may use of the upstreams; None: everything (no policy rules)."""
        if not rt.policy.rules:
            return None
        judged_as: dict[str, Target] = {}

        def visible(upstream: str, kind: str, name: str) -> bool:
            base = judged_as.get(upstream)
            if base is None:
                base = judged_as[upstream] = self._upstream_target(upstream)
            return rt.allows(Action.CALL, dataclasses.replace(base, **{kind: name}))

        return visible

    def _upstream_target(self, upstream: str) -> Target:
        """An upstream as the policy sees it: its registry record's name, DID, tags and skills
        when it is a registered MCP agent, else its name alone."""
        records = [r for r in self.runtime.registry.by_name(upstream) if r.endpoints.mcp]
        if records:
            return Target.of_record(min(records, key=lambda r: r.did), upstream=upstream)
        return Target(agent=upstream, upstream=upstream)

    def _may_read(self, rt: ActingFor, upstream: str, uri: str, template: str | None) -> bool:
        """Whether ``rt``'s caller may read ``uri`` of ``upstream``: as itself and, read through
        a template, as that template."""
        visible = self._visible(rt)
        return visible is None or (
            visible(upstream, "resource", uri) and (template is None or visible(upstream, "resource", template))
        )

    def _readable(self, rt: ActingFor, uri: str) -> UpstreamClient | None:
        """The upstream that serves ``uri`` to ``rt``'s caller; None: none does, or the caller
        may not read it (audited)."""
        hit = self.upstreams.resolve_uri(uri)
        if hit is None:
            return None
        if not self._may_read(rt, hit[0].name, uri, hit[1]):
            _refused(rt, hit[0].name, uri)
            return None
        return hit[0]

    async def _agents(self) -> dict[str, str]:
        """Every agent tool (tool name -> agent), whoever calls: upstream names are made unique
        against these, so that a name does not depend on the caller."""
        agents = await self.agent_tools.agents(self.runtime, self.upstreams.names())
        self.upstreams.set_local_names({*agents, *(t["name"] for t in META_TOOLS)})
        return agents

    async def tools_list(self, call: MCPCall) -> dict[str, Any]:
        await self._agents()
        agents = await self.agent_tools.agents(call.rt, self.upstreams.names())
        about = self.agent_tools.about(call.rt)
        tools = [
            *META_TOOLS,
            *(agent_tool(a, about.get(a, "")) for a in agents.values()),
            *self.upstreams.tools(self._visible(call.rt)),
        ]
        return self._page(tools, "tools", call.params)

    async def tools_call(self, call: MCPCall) -> dict[str, Any]:
        name, args = call.params.get("name"), call.params.get("arguments")
        if not isinstance(name, str):
            raise MCPError(INVALID_PARAMS, "tools/call needs params.name (string)")
        if args is None:
            args = {}
        if not isinstance(args, dict):
            raise MCPError(INVALID_PARAMS, "params.arguments must be an object")
        exclude = self.upstreams.names()
        if name in ("find_agents", "send_task"):
            self.tasks.plan(call, name, None)  # no task support: a 2025-11-25 task request is refused
        if name == "find_agents":
            query = args.get("query", "")
            if not isinstance(query, str):
                return tool_error("argument 'query' must be a string")
            offered = self.upstreams.offered_to(self._visible(call.rt))
            return await self.agent_tools.find_agents(call.rt, query, exclude, sorted(offered))
        if name == "send_task":
            if call.resume is not None:
                return await self._continue_agent(call)
            result = await self.agent_tools.send_task(call.rt, args, exclude, call.notify, call.progress_token)
            return await self._agent_asks(call, result)
        hit = self.upstreams.resolve_tool(name)
        if hit is not None:
            upstream, original = (hit.upstream, hit.tool) if isinstance(hit, Quarantined) else (hit[0].name, hit[1])
            visible = self._visible(call.rt)
            if visible is not None and not visible(upstream, "tool", original):
                _refused(call.rt, upstream, original)
                hit = None
        if isinstance(hit, Quarantined):
            return tool_error(
                f"tool {name!r} of {hit.upstream!r} changed its definition after it was pinned; "
                "it is hidden until an operator re-pins it"
            )
        if hit is not None:
            client, original = hit
            if call.envelope is not None and call.envelope.headers is not None:
                check_param_headers(self.upstreams.input_schema(name), args, call.envelope.headers)
            # (a retry resumes its input-required exchange: it is no new call to make a task of)
            ttl_ms = None if call.resume is not None else self.tasks.plan(call, name, self.upstreams.task_support(name))
            if ttl_ms is not None:
                return await self.tasks.start_call(call, client, name, original, args, ttl_ms)
            return await self._relay(call, client, "tools/call", {"name": original, "arguments": args}, tool=True)
        agents = await self.agent_tools.agents(call.rt, exclude)
        if name in agents:
            if call.resume is not None:
                return await self._continue_agent(call)
            ttl_ms = self.tasks.plan(call, name, "optional")
            if ttl_ms is not None:
                return await self.tasks.submit_agent(call, agents[name], args, ttl_ms)
            result = await self.agent_tools.call(call.rt, agents[name], args, call.notify, call.progress_token)
            return await self._agent_asks(call, result)
        everyone = await self._agents()
        if name in everyone:  # an agent the caller may not call: answered as an unknown tool
            audit.record(call.principal, Action.CALL, everyone[name], "denied")
        raise MCPError(INVALID_PARAMS, f"Unknown tool: {name}")

    async def _relay(
        self, call: MCPCall, client: UpstreamClient, method: str, params: dict[str, Any], *, tool: bool = False
    ) -> dict[str, Any]:
        """Forward a request upstream; relay what arrives on its stream to this call's client."""
        params = dict(params)
        meta = dict(call.params.get("_meta") or {}) if isinstance(call.params.get("_meta"), dict) else {}
        meta.pop("progressToken", None)
        for key in ENVELOPE:  # a 2026-07-28 client's envelope describes it to us, not us upstream
            meta.pop(key, None)
        if call.progress_token is not None:  # a token of ours: unique on the shared upstream session
            meta["progressToken"] = self.new_request_id()
        if meta:
            params["_meta"] = meta

        asked: dict[str, asyncio.Task] = {}  # upstream request id -> the task relaying it

        async def on_message(msg: dict[str, Any]) -> None:
            if "id" in msg:
                key = json.dumps(msg["id"])
                asked[key] = asyncio.current_task()
                try:
                    await self._relay_request(call, client, msg)
                finally:
                    asked.pop(key, None)
                return
            p = dict(msg.get("params") or {})
            if msg["method"] == "notifications/cancelled":  # the upstream withdrew a request it sent
                task = asked.get(json.dumps(p.get("requestId")))
                if task is not None:
                    task.cancel()
                    await asyncio.wait({task}, timeout=1.0)  # its cancel reaches the client before the result
            elif msg["method"] == "notifications/progress":
                if call.progress_token is not None:
                    p["progressToken"] = call.progress_token
                    await call.notify("notifications/progress", p)
            elif msg["method"] == "notifications/message":
                if await self._wants_log(call, p.get("level")):
                    await call.notify("notifications/message", p)

        async def upstream() -> dict[str, Any]:
            try:
                timeout = self.options.call_timeout_s
                return await client.request(method, params, on_message=on_message, timeout=timeout)
            except (UpstreamUnavailable, UpstreamTimeout) as exc:
                log.warning(
                    "upstream call failed", extra={"upstream": client.name, "method": method, "error": describe(exc)}
                )
                if tool:
                    return tool_error(str(exc))
                raise MCPError(wire.INTERNAL_ERROR, str(exc)) from None

        if call.envelope is None or call.method not in mrtr.METHODS:
            return await upstream()
        return await self._rounds(call, upstream)

    async def _rounds(self, call: MCPCall, upstream) -> dict[str, Any]:
        """A modern call relayed upstream, whose requests for input become input-required
        results, or the retry that answers them (mrtr.py)."""
        if call.resume is not None:
            if call.resume.get("k") != "x" or not isinstance(call.resume.get("x"), str):
                raise refused("it belongs to another request")
            exchange_id, round = call.resume["x"], int(call.resume.get("r", 1))
            outcome = await self.parked.resume(exchange_id, round, call.params.get("inputResponses"))
            return await self._next_round(call, outcome, exchange_id, round + 1)
        exchange = call.exchange = Exchange(upstream, call.params.get("inputResponses"))
        try:
            outcome = await exchange.next()
        except BaseException:  # cancelled: the client left before anything was asked
            exchange.cancel()
            raise
        if "ask" not in outcome:
            return outcome_reply(outcome)
        try:  # a parked call holds an upstream request open: it counts as one of the caller's streams
            release = call.rt.open_stream()
        except QuotaExceeded:
            exchange.cancel()
            raise
        await self.parked.park(exchange, 1, release)
        return await self._next_round(call, outcome, exchange.id, 1)

    async def _next_round(self, call: MCPCall, outcome: mrtr.Outcome, exchange_id: str, round: int) -> dict[str, Any]:
        if "ask" not in outcome:
            return outcome_reply(outcome)
        resume = {"k": "x", "x": exchange_id, "r": round}
        return input_required(
            outcome["ask"], await self.states.mint(call.principal.id, call.method, call.params, resume)
        )

    async def _agent_asks(self, call: MCPCall, result: dict[str, Any]) -> dict[str, Any]:
        """An agent tool's result; for a modern client that takes elicitation, a task that waits
        for input becomes an input-required result asking its question (mrtr.py)."""
        found = result.get("structuredContent")
        if (
            call.envelope is None
            or "elicitation" not in call.capabilities
            or not isinstance(found, dict)
            or found.get("state") != "input-required"
        ):
            return result
        texts = [c.get("text", "") for c in result.get("content", []) if c.get("type") == "text"]
        return await self._ask_agent_question(call, found["task_id"], texts[-1] if texts else "")

    async def _ask_agent_question(self, call: MCPCall, task_id: str, question: str) -> dict[str, Any]:
        state = await self.states.mint(call.principal.id, call.method, call.params, {"k": "t", "t": task_id})
        return input_required(agent_question(question or "The agent needs more input"), state)

    async def _continue_agent(self, call: MCPCall) -> dict[str, Any]:
        """The retry of an agent's input-required result: its answer continues the task."""
        task_id = call.resume.get("t") if call.resume else None
        if not isinstance(task_id, str):
            raise refused("it belongs to another request")
        responses = call.params.get("inputResponses")
        if not answered(responses):  # asked again (the spec's SHOULD) while the task still waits
            try:
                task = await call.rt.get(task_id)
            except TaskNotFound as exc:
                return tool_error(str(exc))
            if task.state is not TaskState.INPUT_REQUIRED:
                return task_result(task)
            question = task.status.message.text() if task.status.message else ""
            return await self._ask_agent_question(call, task_id, question)
        text = agent_answer(responses)
        if text is None:  # declined or cancelled: the task is not left waiting
            with contextlib.suppress(Exception):
                await call.rt.cancel(task_id)
            return tool_error(f"the input was declined; task {task_id} was canceled")
        result = await self.agent_tools.continue_task(call.rt, task_id, text, call.notify, call.progress_token)
        return await self._agent_asks(call, result)

    async def _relay_request(self, call: MCPCall, client: UpstreamClient, msg: dict[str, Any]) -> None:
        """sampling/createMessage, elicitation/create, roots/list from upstream -> client -> upstream."""
        method, params = msg["method"], msg.get("params") or {}
        needs = {"sampling/createMessage": "sampling", "elicitation/create": "elicitation", "roots/list": "roots"}
        try:
            need = needs.get(method)
            if need is None:
                raise MCPError(wire.METHOD_NOT_FOUND, f"Method not found: {method}")
            if need not in call.capabilities:
                if call.envelope is not None:  # the call then answers -32021 (MCPService._reply)
                    call.missing_capabilities[need] = {}
                raise MCPError(INVALID_REQUEST, f"the client did not declare the {need} capability")
            reply: dict[str, Any] | MCPError
            if call.exchange is not None:  # asked in an input-required result (mrtr.py)
                reply = await call.exchange.ask(method, params)
            elif call.envelope is not None:  # no server->client requests on a 2026-07-28 stream
                raise MCPError(INVALID_REQUEST, f"{method} is not relayed to a 2026-07-28 client")
            else:  # a session's client is asked by request, not by key
                reply = await call.ask(method, mrtr.named_key(params)[1])
        except MCPError as exc:
            reply = exc
        with contextlib.suppress(Exception):
            if isinstance(reply, MCPError):
                await client.respond(msg["id"], error=reply)
            else:
                await client.respond(msg["id"], result=reply)

    async def resources_list(self, call: MCPCall) -> dict[str, Any]:
        return self._page(self.upstreams.resources(self._visible(call.rt)), "resources", call.params)

    async def templates_list(self, call: MCPCall) -> dict[str, Any]:
        return self._page(self.upstreams.templates(self._visible(call.rt)), "resourceTemplates", call.params)

    def _uri_owner(self, call: MCPCall) -> tuple[str, UpstreamClient]:
        uri = call.params.get("uri")
        if not isinstance(uri, str) or not uri:
            raise MCPError(INVALID_PARAMS, "params.uri (string) is required")
        client = self._readable(call.rt, uri)
        if client is None:
            raise MCPError(wire.RESOURCE_NOT_FOUND, "Resource not found", {"uri": uri})
        return uri, client

    async def resources_read(self, call: MCPCall) -> dict[str, Any]:
        uri, client = self._uri_owner(call)
        return await self._relay(call, client, "resources/read", {"uri": uri})

    async def resources_subscribe(self, call: MCPCall) -> dict[str, Any]:
        uri, client = self._uri_owner(call)
        if not self.subscriptions.get(uri) and not self.held.get(uri):
            await self._relay(call, client, "resources/subscribe", {"uri": uri})
        self.subscriptions[uri][call.sid] = call.principal
        return {}

    async def resources_unsubscribe(self, call: MCPCall) -> dict[str, Any]:
        uri, client = self._uri_owner(call)
        subs = self.subscriptions.get(uri)
        if subs is not None:
            subs.pop(call.sid, None)
            if not subs:
                del self.subscriptions[uri]
                if not self.held.get(uri):
                    await self._relay(call, client, "resources/unsubscribe", {"uri": uri})
        return {}

    async def prompts_list(self, call: MCPCall) -> dict[str, Any]:
        return self._page(self.upstreams.prompts(self._visible(call.rt)), "prompts", call.params)

    def _prompt(self, call: MCPCall, name: str) -> tuple[UpstreamClient, str]:
        """The upstream and original name of the prompt ``name`` the caller may get, else the
        error an unknown prompt gets."""
        hit = self.upstreams.resolve_prompt(name)
        if hit is not None:
            visible = self._visible(call.rt)
            if visible is not None and not visible(hit[0].name, "prompt", hit[1]):
                _refused(call.rt, hit[0].name, hit[1])
                hit = None
        if hit is None:
            raise MCPError(INVALID_PARAMS, f"Unknown prompt: {name}")
        return hit

    async def prompts_get(self, call: MCPCall) -> dict[str, Any]:
        name, args = call.params.get("name"), call.params.get("arguments")
        if not isinstance(name, str):
            raise MCPError(INVALID_PARAMS, "prompts/get needs params.name (string)")
        if args is not None and not isinstance(args, dict):
            raise MCPError(INVALID_PARAMS, "params.arguments must be an object")
        client, original = self._prompt(call, name)
        params: dict[str, Any] = {"name": original}
        if args is not None:
            params["arguments"] = args
        return await self._relay(call, client, "prompts/get", params)

    async def complete(self, call: MCPCall) -> dict[str, Any]:
        ref, argument = call.params.get("ref"), call.params.get("argument")
        if not isinstance(ref, dict) or not isinstance(argument, dict) or not isinstance(argument.get("name"), str):
            raise MCPError(INVALID_PARAMS, "completion/complete needs ref (object) and argument {name, value}")
        if ref.get("type") == "ref/prompt" and isinstance(ref.get("name"), str):
            client, original = self._prompt(call, ref["name"])
            new_ref = {**ref, "name": original}
        elif ref.get("type") == "ref/resource" and isinstance(ref.get("uri"), str):
            found = self._readable(call.rt, ref["uri"])
            if found is None:
                raise MCPError(INVALID_PARAMS, f"Unknown resource: {ref['uri']}")
            client, new_ref = found, ref
        else:
            raise MCPError(INVALID_PARAMS, "ref must be {type: 'ref/prompt', name} or {type: 'ref/resource', uri}")
        if "completions" not in client.capabilities:
            return {"completion": {"values": [], "hasMore": False}}
        return await self._relay(call, client, "completion/complete", {**call.params, "ref": new_ref})

    # ---- 2026-07-28 ------------------------------------------------------------------------------

    async def discover(self, call: MCPCall) -> dict[str, Any]:
        versions = list(wire.ALL_VERSIONS)  # both eras: legacy clients may still open a session
        capabilities = {**CAPABILITIES, "extensions": {EXTENSION: {}}}
        return {"supportedVersions": versions, "capabilities": capabilities, "instructions": INSTRUCTIONS}

    @staticmethod
    def cache_scope(call: MCPCall) -> str:
        """``public`` when the answer is the same for everyone: server/discover, and anything
        when the gateway authenticates nobody (every caller is the local principal); else
        ``private``, since what a caller lists and reads is decided for them."""
        return "public" if call.method == "server/discover" or call.principal is LOCAL else "private"

    async def listen_open(self, call: MCPCall, wanted: Filter) -> Listener:
        """A listen stream for ``call`` (subscriptions/listen) with the filter ``wanted``
        (``Filter.parse``), less the resources the caller may not read, no upstream serves, or
        whose upstream refuses to subscribe, and the task ids that are not the caller's tasks
        (they are not acknowledged). ``listen_close`` ends it."""
        tasks = await self.tasks.owned(call, wanted.task_ids)  # the caller's own tasks only
        held: list[str] = []
        try:
            for uri in wanted.uris:
                if await self._hold(call.rt, uri):
                    held.append(uri)
        except BaseException:  # cancelled (the client left) while subscribing upstream
            self._release(held)
            raise
        listener = Listener(call.id, dataclasses.replace(wanted, uris=tuple(held), task_ids=tasks), call.principal)
        self.listen.open(listener)
        if tasks:
            listener.tasks_watch = self._spawn(self.tasks.watch(call.rt, listener))
        return listener

    def listen_close(self, listener: Listener) -> None:
        if listener.tasks_watch is not None:
            listener.tasks_watch.cancel()
        self.listen.close(listener)
        self._release(listener.filter.uris)

    def _release(self, uris: Iterable[str]) -> None:
        """One listen stream fewer holds each of ``uris``; the last one unsubscribes upstream."""
        for uri in uris:
            self.held[uri] -= 1
            if self.held[uri] <= 0:
                del self.held[uri]
                if not self.subscriptions.get(uri):
                    self._spawn(self._unsubscribe_upstream(uri))

    async def _hold(self, rt: ActingFor, uri: str) -> bool:
        """Keep ``uri`` subscribed upstream for one more listen stream of this node; False when
        the caller may not read it, no upstream serves it, or its upstream refuses."""
        client = self._readable(rt, uri)
        if client is None:
            return False
        if not self.subscriptions.get(uri) and not self.held.get(uri):
            try:
                await client.request("resources/subscribe", {"uri": uri}, timeout=self.options.call_timeout_s)
            except (MCPError, UpstreamUnavailable, UpstreamTimeout) as exc:
                log.info("upstream refused a resource subscription", extra={"uri": uri, "error": str(exc)})
                return False
        self.held[uri] += 1
        return True

    async def _unsubscribe_upstream(self, uri: str) -> None:
        hit = self.upstreams.resolve_uri(uri)
        if hit is not None and not self.held.get(uri) and not self.subscriptions.get(uri):
            with contextlib.suppress(MCPError, UpstreamUnavailable, UpstreamTimeout):
                await hit[0].request("resources/unsubscribe", {"uri": uri}, timeout=self.options.call_timeout_s)

    async def set_level(self, call: MCPCall) -> dict[str, Any]:
        level = call.params.get("level")
        if level not in wire.LOG_LEVELS:
            raise MCPError(INVALID_PARAMS, f"Invalid log level: {level!r} (one of {', '.join(wire.LOG_LEVELS)})")
        session = await self.sessions.get(call.sid) or call.session
        session["level"] = level
        await self.sessions.save(call.sid, session)
        return {}


def _passes(level: Any, wanted: str | None) -> bool:
    """Whether a log message at ``level`` passes a client's minimum ``wanted`` (None: anything;
    a level this gateway does not know always passes)."""
    if wanted is None or level not in wire.LOG_LEVELS:
        return True
    return wire.LOG_LEVELS.index(level) >= wire.LOG_LEVELS.index(wanted)


def _refused(rt: ActingFor, upstream: str, name: str) -> None:
    """Audit a refused upstream item (the caller is told it is unknown)."""
    audit.record(rt.principal, Action.CALL, f"{upstream}:{name}", "denied")
