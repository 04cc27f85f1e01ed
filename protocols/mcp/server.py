"""The ``/mcp`` endpoint: MCP Streamable HTTP (2025-11-25, also 2025-06-18 and 2025-03-26).

Dispatch is a small hand-written JSON-RPC dispatcher over an explicit ``methods`` mapping, not
jsonrpcserver: MCP handlers need their request's context while they run (the session, and the
POST's SSE stream to send progress, log messages and server->client requests such as sampling
before the response), the transport must tell requests, notifications (202) and client
responses (answers to our requests, 202) apart, and the response body is JSON or SSE depending
on whether anything is sent before the result. jsonrpcserver maps one request to one return
value and does not parse responses, so it cannot express that.

A POST's reply is ``application/json`` when the first thing the handler produces is its
result, and ``text/event-stream`` otherwise (priming event, then every message with an id
``{stream}-{seq}``, stored in the shared key/value store so ``GET`` + ``Last-Event-ID`` resumes
it on any node). Session state lives in the shared store too (see sessions.py).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import json
import logging
import os
import secrets
import time
from collections import defaultdict
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from gateway.core import __version__
from gateway.core.settings import load_settings
from gateway.core.runtime import Runtime

from . import wire
from .agents import META_TOOLS, AgentTools, agent_tool, tool_error
from .sessions import EventLog, Mailbox, Sessions
from .upstream import Quarantined, Upstream, UpstreamClient, UpstreamSet, UpstreamTimeout, UpstreamUnavailable
from .wire import INVALID_PARAMS, INVALID_REQUEST, McpError

log = logging.getLogger("interlace.mcp")

CAPABILITIES = {
    "tools": {"listChanged": True},
    "resources": {"subscribe": True, "listChanged": True},
    "prompts": {"listChanged": True},
    "logging": {},
    "completions": {},
}
LOOPBACK_HOSTS = ("127.0.0.1:*", "localhost:*", "[::1]:*")


@dataclasses.dataclass
class McpSettings:
    """MCP endpoint settings; each has an ``INTERLACE_MCP_*`` environment variable (see from_env)."""

    naming: str = "prefix"  # upstream tool/prompt naming: "prefix" | "pass-through"
    separator: str = "__"
    allowed_hosts: tuple[str, ...] | None = None  # None: loopback (+ the bind host); ("*",): any
    allowed_origins: tuple[str, ...] = ()  # origins allowed besides http(s)://<allowed host>
    session_ttl_s: int = 3600  # idle sessions expire
    event_ttl_s: int = 600  # SSE events are kept this long for Last-Event-ID resumption
    call_timeout_s: float = 60.0  # bound on a relayed upstream request or an agent task
    client_request_timeout_s: float = 120.0  # bound on the client's answer to sampling/elicitation
    page_size: int = 100
    sse_retry_ms: int = 1000
    sse_max_s: float | None = None  # default: the gateway's sse_max_s
    agents_poll_s: float = 5.0  # agent set re-checked for tools/list_changed (changes are also signalled)
    follow_registry: bool = True  # federate every live registry record with an mcp endpoint
    registry_poll_s: float = 2.0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> McpSettings:
        return load_settings(cls, "INTERLACE_MCP_", overrides, env)


def registry_upstreams(runtime: Runtime) -> list[Upstream]:
    """Live registry records with an ``endpoints.mcp`` URL, one upstream per agent name."""
    registry = getattr(runtime, "registry", None)
    out: dict[str, Upstream] = {}
    for record in sorted(registry.live() if registry is not None else [], key=lambda r: (r.name, r.did)):
        url = getattr(record.endpoints, "mcp", None)
        if url and record.name not in out:
            out[record.name] = Upstream(record.name, str(url))
    return list(out.values())


def upstreams_from_env(env: Mapping[str, str] | None = None) -> list[Upstream]:
    """``INTERLACE_MCP_UPSTREAMS="name=http://host/mcp,other=http://..."``."""
    env = os.environ if env is None else env
    out = []
    for item in (env.get("INTERLACE_MCP_UPSTREAMS") or "").split(","):
        name, sep, url = item.strip().partition("=")
        if sep and name and url:
            out.append(Upstream(name.strip(), url.strip()))
    return out


class Outbox:
    """Everything one POST sends back: JSON if the result comes first, else an SSE stream."""

    def __init__(self, server: "McpServer", sid: str, sse_ok: bool) -> None:
        self.server, self.sid, self.sse_ok = server, sid, sse_ok
        self.queue: asyncio.Queue = asyncio.Queue()
        self.mode: str | None = None
        self.stream = secrets.token_hex(6)
        self.seq = 0

    @property
    def can_stream(self) -> bool:
        return self.sse_ok and self.mode != "json"

    async def send(self, msg: dict[str, Any], final: bool = False) -> None:
        if self.mode is None:
            self.mode = "sse" if self.sse_ok and not final else "json"
        if self.mode == "json":
            if final:
                self.queue.put_nowait((None, msg, True))
            return
        self.seq += 1
        seq = self.seq
        self.queue.put_nowait((f"{self.stream}-{seq}", msg, final))
        await self.server.events.put(self.sid, self.stream, seq, msg, final=final)


class Call:
    """One client request being handled: its params, session and response stream."""

    def __init__(self, server: "McpServer", sid: str, session: dict[str, Any], msg: dict[str, Any], out: Outbox) -> None:
        self.server, self.sid, self.session, self.out = server, sid, session, out
        self.id, self.method = msg["id"], msg["method"]
        self.params: dict[str, Any] = msg.get("params") or {}
        meta = self.params.get("_meta")
        self.progress_token = meta.get("progressToken") if isinstance(meta, dict) else None

    async def notify(self, method: str, params: dict[str, Any]) -> None:
        await self.out.send(wire.notification(method, params))

    async def ask(self, method: str, params: dict[str, Any], rid: str | None = None) -> dict[str, Any]:
        """A server->client request on this request's stream; the client's result.

        If the wait is cancelled (the upstream withdrew its request), the client is told with
        ``notifications/cancelled``."""
        if not self.out.can_stream:
            raise McpError(INVALID_REQUEST, f"cannot relay {method}: the client does not accept text/event-stream")
        rid = rid or self.server.new_request_id()
        await self.out.send(wire.request(rid, method, params))
        try:
            reply = await self.server.mailbox.wait("r", self.sid, rid, self.server.settings.client_request_timeout_s)
        except TimeoutError:
            await self.notify("notifications/cancelled", {"requestId": rid, "reason": "no answer in time"})
            raise McpError(wire.INTERNAL_ERROR, f"the client did not answer {method} in time") from None
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await asyncio.shield(self.notify("notifications/cancelled", {"requestId": rid, "reason": "withdrawn upstream"}))
            raise
        if isinstance(reply.get("error"), dict):
            err = reply["error"]
            raise McpError(err.get("code", wire.INTERNAL_ERROR), str(err.get("message", "client error")), err.get("data"))
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
    raise McpError(INVALID_PARAMS, "Invalid cursor")


def _host_matches(host: str, pattern: str) -> bool:
    if pattern == "*" or host == pattern:
        return True
    if pattern.endswith(":*"):
        base = pattern[:-2]
        return host == base or (host.startswith(base + ":") and host[len(base) + 1 :].isdigit())
    return False


class McpServer:
    """The MCP side of one gateway: sessions, dispatch, agent tools and upstream federation."""

    def __init__(self, runtime: Runtime, upstreams=(), settings: McpSettings | None = None) -> None:
        self.runtime = runtime
        self.settings = settings or McpSettings.from_env()
        cfg = runtime.config
        if self.settings.allowed_hosts is None:
            hosts = list(LOOPBACK_HOSTS)
            if cfg.host not in ("0.0.0.0", "::", "", "127.0.0.1", "localhost"):
                hosts.append(f"{cfg.host}:*")
            self.settings.allowed_hosts = tuple(hosts)
        self.sse_max_s = self.settings.sse_max_s or cfg.sse_max_s
        kv = runtime.kv
        self.shared = runtime.shared_state  # other nodes may serve the same sessions
        self.sessions = Sessions(kv, self.settings.session_ttl_s)
        self.events = EventLog(kv, self.settings.event_ttl_s)
        self.mailbox = Mailbox(kv, self.shared)
        self.agent_tools = AgentTools(runtime, self.settings.call_timeout_s)
        self.static_upstreams = [Upstream.of(u) for u in upstreams]
        self.upstreams = UpstreamSet(
            self.static_upstreams,
            kv=kv,
            naming=self.settings.naming,
            separator=self.settings.separator,
            call_timeout_s=self.settings.call_timeout_s,
            registry=runtime.metrics.registry,
            on_change=self._catalog_changed,
            on_resource_updated=self._resource_updated,
            on_log=self._upstream_log,
        )
        self._node = secrets.token_hex(3)
        self._ids = 0
        self.inflight: dict[tuple[str, str], asyncio.Task] = {}
        self.get_streams: dict[str, asyncio.Event] = {}  # sid -> closed flag of its local GET stream
        self.subscriptions: dict[str, set[str]] = defaultdict(set)  # uri -> sids subscribed via this node
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

    async def start(self) -> None:
        await self.upstreams.start()
        self._spawn(self._watch_agents())
        if self.settings.follow_registry:
            self._spawn(self._follow_registry())

    async def _follow_registry(self) -> None:
        """Keep the upstream set equal to the static list plus the registry's MCP agents."""
        current: list[Upstream] = list(self.static_upstreams)
        seqs: dict[str, int] = {}
        while True:
            try:
                static = {u.name for u in self.static_upstreams}
                wanted = [*self.static_upstreams, *(u for u in registry_upstreams(self.runtime) if u.name not in static)]
                if wanted != current:
                    await self.upstreams.set_upstreams(wanted, wait_s=0)
                    current = wanted
                await self._repin_reregistered(seqs)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("could not follow the registry's MCP agents")
            await asyncio.sleep(self.settings.registry_poll_s)

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
        """Tell clients with a GET stream when the set of routable agents (tools) changes: on
        the runtime's signal (a record, or a node going down or coming back), else every poll."""
        changed = asyncio.Event()
        self.runtime.watch_agents(changed.set)
        last: set[str] | None = None
        while True:
            try:
                current = set(await self._agents())
            except Exception:  # the bus is down: try again next round
                pass
            else:
                if last is not None and current != last:
                    await self._catalog_changed({"tools"})
                last = current
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), self.settings.agents_poll_s)
            changed.clear()

    async def stop(self) -> None:
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

    # ---- HTTP ------------------------------------------------------------------------------

    def _check_origin(self, request: Request) -> Response | None:
        """DNS-rebinding defence: 421 for a foreign Host, 403 for a foreign Origin."""
        allowed = self.settings.allowed_hosts or ()
        host = request.headers.get("host", "")
        if not any(_host_matches(host, p) for p in allowed):
            return self._rpc_error(421, INVALID_REQUEST, "Invalid Host header")
        origin = request.headers.get("origin")
        if origin is not None and origin not in self.settings.allowed_origins:
            parts = urlsplit(origin)
            ok = parts.scheme in ("http", "https") and any(_host_matches(parts.netloc, p) for p in allowed)
            if not ok:
                return self._rpc_error(403, INVALID_REQUEST, "Invalid Origin header")
        return None

    @staticmethod
    def _rpc_error(status: int, code: int, message: str, id: Any = None, headers: dict | None = None) -> JSONResponse:
        return JSONResponse(wire.error(id, McpError(code, message)), status_code=status, headers=headers)

    def _check_version(self, request: Request) -> Response | None:
        version = request.headers.get("mcp-protocol-version")
        if version is not None and version not in wire.SUPPORTED_VERSIONS:
            return self._rpc_error(400, INVALID_REQUEST, f"Unsupported protocol version: {version} "
                                   f"(supported: {', '.join(wire.SUPPORTED_VERSIONS)})")
        return None

    async def _session(self, request: Request) -> tuple[str, dict[str, Any]] | Response:
        """The request's session (after its MCP-Protocol-Version header is checked), or the error."""
        bad = self._check_version(request)
        if bad is not None:
            return bad
        sid = request.headers.get("mcp-session-id")
        if not sid:
            return self._rpc_error(400, INVALID_REQUEST, "Bad Request: Missing session ID")
        if len(sid) > 128 or not sid.isascii():
            return self._rpc_error(404, INVALID_REQUEST, "Session not found")
        record = await self.sessions.get(sid)
        if record is None:
            return self._rpc_error(404, INVALID_REQUEST, "Session not found")
        return sid, record

    async def endpoint(self, request: Request) -> Response:
        bad = self._check_origin(request)
        if bad is not None:
            return bad
        if request.method == "POST":
            return await self._post(request)
        if request.method == "GET":
            return await self._get(request)
        return await self._delete(request)

    async def _post(self, request: Request) -> Response:
        ctype = request.headers.get("content-type", "application/json")
        if "json" not in ctype:
            return self._rpc_error(415, INVALID_REQUEST, "Unsupported Media Type: Content-Type must be application/json")
        accept = request.headers.get("accept", "*/*")
        sse_ok = "text/event-stream" in accept or "*/*" in accept
        if not (sse_ok or "application/json" in accept or "application/*" in accept):
            return self._rpc_error(406, INVALID_REQUEST, "Not Acceptable: accept application/json and text/event-stream")
        try:
            msg = wire.parse(await request.body())
            kind = wire.classify(msg)
        except McpError as exc:
            return JSONResponse(wire.error(None, exc), status_code=400)
        if kind == "request" and msg["method"] == "server/discover":
            # A 2026-07-28 probe. A plain 4xx without a JSON-RPC body is not modern evidence:
            # the official clients fall back to the initialize handshake.
            return Response(status_code=400)
        if kind == "request" and msg["method"] == "initialize":
            return await self._initialize(msg)
        found = await self._session(request)
        if isinstance(found, Response):
            return found
        sid, session = found
        if kind == "notification":
            await self._notification(sid, msg)
            return Response(status_code=202)
        if kind == "response":
            await self.mailbox.post("r", sid, msg["id"], msg)
            return Response(status_code=202)
        return await self._request(sid, session, msg, sse_ok)

    async def _initialize(self, msg: dict[str, Any]) -> Response:
        params = msg.get("params") or {}
        version, caps, info = params.get("protocolVersion"), params.get("capabilities", {}), params.get("clientInfo")
        if not isinstance(version, str) or not isinstance(caps, dict) or (info is not None and not isinstance(info, dict)):
            err = McpError(INVALID_PARAMS, "initialize needs protocolVersion (string), capabilities (object), clientInfo (object)")
            return JSONResponse(wire.error(msg["id"], err))
        negotiated = version if version in wire.SUPPORTED_VERSIONS else wire.LATEST_VERSION
        sid = await self.sessions.create({"v": negotiated, "caps": caps, "info": info or {}, "level": None})
        result = {
            "protocolVersion": negotiated,
            "capabilities": CAPABILITIES,
            "serverInfo": {"name": "interlace", "title": "Interlace gateway", "version": __version__},
            "instructions": "Tools are the gateway's routable agents (send them a message), the meta tools "
                            "find_agents and send_task, and the tools of federated MCP servers.",
        }
        log.info("mcp session started", extra={"session": sid[:8], "client": (info or {}).get("name"), "version": negotiated})
        return JSONResponse(wire.result(msg["id"], result), headers={"Mcp-Session-Id": sid})

    async def _notification(self, sid: str, msg: dict[str, Any]) -> None:
        if msg["method"] == "notifications/cancelled":
            rid = (msg.get("params") or {}).get("requestId")
            if rid is None:
                return
            task = self.inflight.get((sid, json.dumps(rid)))
            if task is not None:
                task.cancel()
            elif self.shared:
                await self.mailbox.post("c", sid, rid, True)

    async def _request(self, sid: str, session: dict[str, Any], msg: dict[str, Any], sse_ok: bool) -> Response:
        out = Outbox(self, sid, sse_ok)
        call = Call(self, sid, session, msg, out)
        job = asyncio.create_task(self._run(call))
        key = (sid, json.dumps(call.id))
        self.inflight[key] = job
        job.add_done_callback(lambda _: self.inflight.pop(key, None) if self.inflight.get(key) is job else None)
        if self.shared and call.method not in ("ping", "tools/list", "resources/list", "prompts/list"):
            watcher = self._spawn(self._watch_cancel(sid, call.id, job))
            job.add_done_callback(lambda _: watcher.cancel())
        event_id, first, final = await out.queue.get()
        if final and out.mode == "json":
            return JSONResponse(first)
        return StreamingResponse(
            self._stream(out, (event_id, first, final), session.get("v", wire.DEFAULT_HEADER_VERSION)),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    async def _stream(self, out: Outbox, first, version: str):
        if version >= wire.PRIMING_SINCE:
            yield wire.format_event(f"{out.stream}-0", "", retry_ms=self.settings.sse_retry_ms)
        item, deadline = first, time.monotonic() + self.sse_max_s
        while True:
            event_id, msg, final = item
            yield wire.format_event(event_id, wire.dumps(msg))
            if final:
                return
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    return  # the client resumes with GET + Last-Event-ID
                try:
                    item = await asyncio.wait_for(out.queue.get(), min(15.0, left))
                    break
                except asyncio.TimeoutError:
                    yield b": keep-alive\n\n"

    async def _watch_cancel(self, sid: str, rid: Any, job: asyncio.Task) -> None:
        await asyncio.sleep(0.3)
        with contextlib.suppress(TimeoutError):
            await self.mailbox.wait("c", sid, rid, None)
            job.cancel()

    async def _run(self, call: Call) -> None:
        try:
            handler = self.methods.get(call.method)
            if handler is None:
                raise McpError(wire.METHOD_NOT_FOUND, f"Method not found: {call.method}")
            reply = wire.result(call.id, await handler(call))
        except McpError as exc:
            reply = wire.error(call.id, exc)
        except asyncio.CancelledError:
            reply = wire.error(call.id, McpError(wire.REQUEST_CANCELLED, "Request cancelled"))
        except Exception:
            log.exception("mcp handler failed", extra={"method": call.method})
            reply = wire.error(call.id, McpError(wire.INTERNAL_ERROR, "Internal error"))
        await call.out.send(reply, final=True)

    async def _get(self, request: Request) -> Response:
        if "text/event-stream" not in request.headers.get("accept", ""):
            return self._rpc_error(406, INVALID_REQUEST, "Not Acceptable: GET needs Accept: text/event-stream")
        found = await self._session(request)
        if isinstance(found, Response):
            return found
        sid, _ = found
        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        last = request.headers.get("last-event-id")
        if last:
            stream, _, seq = last.rpartition("-")
            if not stream or not seq.isdigit() or not await self.events.exists(sid, stream, int(seq)):
                return self._rpc_error(400, INVALID_REQUEST, "Unknown Last-Event-ID")
            if stream != "g":
                return StreamingResponse(self._replay(sid, stream, int(seq)), media_type="text/event-stream", headers=headers)
        if sid in self.get_streams:
            return self._rpc_error(409, INVALID_REQUEST, "Conflict: this session already has a GET stream")
        closed = asyncio.Event()
        self.get_streams[sid] = closed
        after = int(last.rpartition("-")[2]) if last else await self.events.get_head(sid)
        return StreamingResponse(self._standalone(sid, after, closed), media_type="text/event-stream", headers=headers)

    async def _replay(self, sid: str, stream: str, after: int):
        deadline = time.monotonic() + self.sse_max_s
        async for seq, msg in self.events.follow(sid, stream, after, deadline):
            yield wire.format_event(f"{stream}-{seq}", wire.dumps(msg))

    async def _standalone(self, sid: str, after: int, closed: asyncio.Event):
        deadline = time.monotonic() + self.sse_max_s
        follow = self.events.follow(sid, "g", after, deadline)
        pending: asyncio.Task | None = None
        try:
            yield wire.format_event(f"g-{after}", "", retry_ms=self.settings.sse_retry_ms)
            last_write, checked = time.monotonic(), time.monotonic()
            while not closed.is_set() and time.monotonic() < deadline:
                if pending is None:
                    pending = asyncio.ensure_future(anext(follow))
                done, _ = await asyncio.wait({pending}, timeout=1.0)
                if done:
                    try:
                        seq, msg = pending.result()
                    except StopAsyncIteration:
                        return
                    finally:
                        pending = None
                    yield wire.format_event(f"g-{seq}", wire.dumps(msg))
                    last_write = time.monotonic()
                elif time.monotonic() - last_write > 15:
                    yield b": keep-alive\n\n"
                    last_write = time.monotonic()
                if time.monotonic() - checked > 30:  # terminated on another node?
                    checked = time.monotonic()
                    if await self.sessions.get(sid) is None:
                        return
        finally:
            if pending is not None:
                pending.cancel()
                await asyncio.gather(pending, return_exceptions=True)
            await follow.aclose()
            if self.get_streams.get(sid) is closed:
                del self.get_streams[sid]

    async def _delete(self, request: Request) -> Response:
        found = await self._session(request)
        if isinstance(found, Response):
            return found
        sid, _ = found
        await self.sessions.delete(sid)
        for (s, _), task in list(self.inflight.items()):
            if s == sid:
                task.cancel()
        closed = self.get_streams.get(sid)
        if closed is not None:
            closed.set()
            self.events.wake(sid, "g")
        for uri, sids in list(self.subscriptions.items()):
            sids.discard(sid)
            if not sids:
                del self.subscriptions[uri]
        log.info("mcp session ended", extra={"session": sid[:8]})
        return Response(status_code=200)

    # ---- server-initiated messages -------------------------------------------------------------

    async def _catalog_changed(self, kinds: set[str]) -> None:
        for kind in sorted(kinds):
            note = wire.notification(f"notifications/{kind}/list_changed")
            for sid in list(self.get_streams):
                await self.events.append_get(sid, note)

    async def _resource_updated(self, uri: str) -> None:
        note = wire.notification("notifications/resources/updated", {"uri": uri})
        for sid in list(self.subscriptions.get(uri, ())):
            await self.events.append_get(sid, note)

    async def _upstream_log(self, params: dict[str, Any]) -> None:
        for sid in list(self.get_streams):
            record = await self.sessions.get(sid)
            if record and record.get("level") and self._level_ok(record, params.get("level")):
                await self.events.append_get(sid, wire.notification("notifications/message", params))

    @staticmethod
    def _level_ok(session: dict[str, Any], level: Any) -> bool:
        wanted = session.get("level")
        if wanted is None or level not in wire.LOG_LEVELS:
            return True
        return wire.LOG_LEVELS.index(level) >= wire.LOG_LEVELS.index(wanted)

    # ---- methods -------------------------------------------------------------------------------

    def _page(self, items: list[dict[str, Any]], key: str, params: dict[str, Any]) -> dict[str, Any]:
        cursor = params.get("cursor")
        if cursor is not None and not isinstance(cursor, str):
            raise McpError(INVALID_PARAMS, "Invalid cursor")
        start = _offset(cursor, len(items)) if cursor else 0
        end = start + self.settings.page_size
        page: dict[str, Any] = {key: items[start:end]}
        if end < len(items):
            page["nextCursor"] = _cursor(end)
        return page

    async def ping(self, call: Call) -> dict[str, Any]:
        return {}

    async def _agents(self) -> dict[str, str]:
        agents = await self.agent_tools.agents(self.upstreams.names())
        self.upstreams.set_local_names({*agents, *(t["name"] for t in META_TOOLS)})
        return agents

    async def tools_list(self, call: Call) -> dict[str, Any]:
        agents = await self._agents()
        about = self.agent_tools.about()
        tools = [*META_TOOLS, *(agent_tool(a, about.get(a, "")) for a in agents.values()), *self.upstreams.tools()]
        return self._page(tools, "tools", call.params)

    async def tools_call(self, call: Call) -> dict[str, Any]:
        name, args = call.params.get("name"), call.params.get("arguments")
        if not isinstance(name, str):
            raise McpError(INVALID_PARAMS, "tools/call needs params.name (string)")
        if args is None:
            args = {}
        if not isinstance(args, dict):
            raise McpError(INVALID_PARAMS, "params.arguments must be an object")
        exclude = self.upstreams.names()
        if name == "find_agents":
            query = args.get("query", "")
            if not isinstance(query, str):
                return tool_error("argument 'query' must be a string")
            return await self.agent_tools.find_agents(query, exclude, sorted(exclude))
        if name == "send_task":
            return await self.agent_tools.send_task(args, exclude, call.notify, call.progress_token)
        hit = self.upstreams.resolve_tool(name)
        if isinstance(hit, Quarantined):
            return tool_error(f"tool {name!r} of {hit.upstream!r} changed its definition after it was pinned; "
                              "it is hidden until an operator re-pins it")
        if hit is not None:
            client, original = hit
            return await self._relay(call, client, "tools/call", {"name": original, "arguments": args}, tool=True)
        agents = await self._agents()
        if name in agents:
            return await self.agent_tools.call(agents[name], args, call.notify, call.progress_token)
        raise McpError(INVALID_PARAMS, f"Unknown tool: {name}")

    async def _relay(self, call: Call, client: UpstreamClient, method: str, params: dict[str, Any], *, tool: bool = False) -> dict[str, Any]:
        """Forward a request upstream; relay what arrives on its stream to this call's client."""
        params = dict(params)
        meta = dict(call.params.get("_meta") or {}) if isinstance(call.params.get("_meta"), dict) else {}
        meta.pop("progressToken", None)
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
                session = await self.sessions.get(call.sid) or call.session
                if self._level_ok(session, p.get("level")):
                    await call.notify("notifications/message", p)

        try:
            return await client.request(method, params, on_message=on_message, timeout=self.settings.call_timeout_s)
        except (UpstreamUnavailable, UpstreamTimeout) as exc:
            if tool:
                return tool_error(str(exc))
            raise McpError(wire.INTERNAL_ERROR, str(exc)) from None

    async def _relay_request(self, call: Call, client: UpstreamClient, msg: dict[str, Any]) -> None:
        """sampling/createMessage, elicitation/create, roots/list from upstream -> client -> upstream."""
        method, params = msg["method"], msg.get("params") or {}
        needs = {"sampling/createMessage": "sampling", "elicitation/create": "elicitation", "roots/list": "roots"}
        try:
            need = needs.get(method)
            if need is None:
                raise McpError(wire.METHOD_NOT_FOUND, f"Method not found: {method}")
            if need not in (call.session.get("caps") or {}):
                raise McpError(INVALID_REQUEST, f"the client did not declare the {need} capability")
            reply: dict[str, Any] | McpError = await call.ask(method, params)
        except McpError as exc:
            reply = exc
        with contextlib.suppress(Exception):
            if isinstance(reply, McpError):
                await client.respond(msg["id"], error=reply)
            else:
                await client.respond(msg["id"], result=reply)

    async def resources_list(self, call: Call) -> dict[str, Any]:
        return self._page(self.upstreams.resources(), "resources", call.params)

    async def templates_list(self, call: Call) -> dict[str, Any]:
        return self._page(self.upstreams.templates(), "resourceTemplates", call.params)

    def _uri_owner(self, call: Call) -> tuple[str, UpstreamClient]:
        uri = call.params.get("uri")
        if not isinstance(uri, str) or not uri:
            raise McpError(INVALID_PARAMS, "params.uri (string) is required")
        client = self.upstreams.resolve_uri(uri)
        if client is None:
            raise McpError(wire.RESOURCE_NOT_FOUND, "Resource not found", {"uri": uri})
        return uri, client

    async def resources_read(self, call: Call) -> dict[str, Any]:
        uri, client = self._uri_owner(call)
        return await self._relay(call, client, "resources/read", {"uri": uri})

    async def resources_subscribe(self, call: Call) -> dict[str, Any]:
        uri, client = self._uri_owner(call)
        if not self.subscriptions.get(uri):
            await self._relay(call, client, "resources/subscribe", {"uri": uri})
        self.subscriptions[uri].add(call.sid)
        return {}

    async def resources_unsubscribe(self, call: Call) -> dict[str, Any]:
        uri, client = self._uri_owner(call)
        subs = self.subscriptions.get(uri)
        if subs is not None:
            subs.discard(call.sid)
            if not subs:
                del self.subscriptions[uri]
                await self._relay(call, client, "resources/unsubscribe", {"uri": uri})
        return {}

    async def prompts_list(self, call: Call) -> dict[str, Any]:
        return self._page(self.upstreams.prompts(), "prompts", call.params)

    async def prompts_get(self, call: Call) -> dict[str, Any]:
        name, args = call.params.get("name"), call.params.get("arguments")
        if not isinstance(name, str):
            raise McpError(INVALID_PARAMS, "prompts/get needs params.name (string)")
        if args is not None and not isinstance(args, dict):
            raise McpError(INVALID_PARAMS, "params.arguments must be an object")
        hit = self.upstreams.resolve_prompt(name)
        if hit is None:
            raise McpError(INVALID_PARAMS, f"Unknown prompt: {name}")
        client, original = hit
        params: dict[str, Any] = {"name": original}
        if args is not None:
            params["arguments"] = args
        return await self._relay(call, client, "prompts/get", params)

    async def complete(self, call: Call) -> dict[str, Any]:
        ref, argument = call.params.get("ref"), call.params.get("argument")
        if not isinstance(ref, dict) or not isinstance(argument, dict) or not isinstance(argument.get("name"), str):
            raise McpError(INVALID_PARAMS, "completion/complete needs ref (object) and argument {name, value}")
        if ref.get("type") == "ref/prompt" and isinstance(ref.get("name"), str):
            hit = self.upstreams.resolve_prompt(ref["name"])
            if hit is None:
                raise McpError(INVALID_PARAMS, f"Unknown prompt: {ref['name']}")
            client, new_ref = hit[0], {**ref, "name": hit[1]}
        elif ref.get("type") == "ref/resource" and isinstance(ref.get("uri"), str):
            client = self.upstreams.resolve_uri(ref["uri"])
            if client is None:
                raise McpError(INVALID_PARAMS, f"Unknown resource: {ref['uri']}")
            new_ref = ref
        else:
            raise McpError(INVALID_PARAMS, "ref must be {type: 'ref/prompt', name} or {type: 'ref/resource', uri}")
        if "completions" not in client.capabilities:
            return {"completion": {"values": [], "hasMore": False}}
        return await self._relay(call, client, "completion/complete", {**call.params, "ref": new_ref})

    async def set_level(self, call: Call) -> dict[str, Any]:
        level = call.params.get("level")
        if level not in wire.LOG_LEVELS:
            raise McpError(INVALID_PARAMS, f"Invalid log level: {level!r} (one of {', '.join(wire.LOG_LEVELS)})")
        session = await self.sessions.get(call.sid) or call.session
        session["level"] = level
        await self.sessions.save(call.sid, session)
        return {}


# ---- wiring into the gateway app ---------------------------------------------------------------


def server_for(app) -> McpServer:
    """The app's MCP server; unless ``mount`` set one, it is configured from ``INTERLACE_MCP_*``.

    The gateway app starts it with its lifespan and stops it before the runtime."""
    server = getattr(app.state, "mcp", None)
    if server is None:
        server = McpServer(app.state.runtime, upstreams_from_env(), McpSettings.from_env())
        app.state.mcp = server
    return server


async def endpoint(request: Request) -> Response:
    return await server_for(request.app).endpoint(request)


routes = [Route("/mcp", endpoint, methods=["GET", "POST", "DELETE"])]


def tool_drift(app):
    """For ``GET /registry/agents/{did}``: the tools of an MCP agent hidden since their definition
    changed after it was pinned (rug-pull defence), until the owner re-registers."""

    def annotate(record) -> dict:
        if record.endpoints.mcp is None:
            return {}
        drift = [q for q in server_for(app).upstreams.quarantined() if q["upstream"] == record.name]
        return {"mcp_tool_drift": drift}

    return annotate


def mount(app, upstreams=None, settings: McpSettings | None = None) -> McpServer:
    """Serve ``/mcp`` on a gateway app (``create_app``) with these upstream MCP servers (agent
    name, URL) federated, before the app starts; the app's lifespan starts and stops it.

    ``upstreams`` defaults to ``INTERLACE_MCP_UPSTREAMS``.
    """
    if upstreams is None:
        upstreams = upstreams_from_env()
    server = McpServer(app.state.runtime, upstreams, settings)
    app.state.mcp = server
    return server
