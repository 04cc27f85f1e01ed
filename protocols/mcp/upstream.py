"""Federation: upstream MCP servers behind the gateway, one pooled session each.

``UpstreamClient`` is a small Streamable HTTP client (2025-11-25 handshake) over one pooled
``httpx.AsyncClient``. It is not the SDK's ``ClientSession`` on purpose: the gateway must know
which upstream request a server->client message belongs to (sampling, elicitation, progress,
logging all ride the POST's SSE stream of the ``tools/call`` that caused them) to relay it to the
one downstream client that made that call. Reading each call's own response stream gives that
for free, with one shared upstream session, and keeps ``mcp`` out of the runtime dependencies.

``UpstreamSet`` holds the clients for a list of (agent name, MCP URL), keeps each upstream's
catalog (tools, resources, resource templates, prompts) fresh on ``list_changed``, and exposes
the aggregate under a naming policy:

  ``prefix`` (default)   every upstream tool/prompt is exposed as ``{agent}{separator}{name}``
                         (separator ``__``; names stay within ``[A-Za-z0-9_.-]``)
  ``pass-through``       upstream names are kept unchanged; a name offered by more than one
                         upstream (or clashing with a gateway tool) is prefixed for every
                         upstream that offers it, so no call is ever ambiguous

Resource URIs are never renamed: a read goes to the upstream that lists the URI, else to the one
whose template matches it, else (a single upstream) to that upstream.

Rug-pull defence: each upstream tool definition (name, title, description, input and output
schema, annotations) is hashed (SHA-256 over canonical JSON) and pinned in the shared store the
first time it is seen (``mcp:pin:{agent}:{tool}``). A later definition with another hash is hidden
from ``tools/list``, refused by ``tools/call``, logged, counted on
``interlace_mcp_tool_definition_changes_total`` and listed by ``quarantined()`` until
``repin()`` accepts it. New tools are pinned on first sight (trust on first use).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import httpx

from gateway.core.backends.base import KeyValue

from . import wire
from .wire import McpError

log = logging.getLogger("interlace.mcp.upstream")

PIN_TTL_S = 10 * 365 * 24 * 3600
NAME_OK = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")

MessageHandler = Callable[[dict[str, Any]], Awaitable[None]]


class UpstreamUnavailable(Exception):
    """The upstream cannot be reached or broke the protocol; the message is client-safe."""


class UpstreamTimeout(Exception):
    pass


@dataclass(frozen=True)
class Upstream:
    """One upstream MCP server: the agent's name, its MCP endpoint, and headers of its own
    (its credentials; a client's token is never passed through)."""

    name: str
    url: str
    headers: tuple[tuple[str, str], ...] = ()

    @classmethod
    def of(cls, item: "Upstream | tuple | dict") -> "Upstream":
        if isinstance(item, Upstream):
            return item
        if isinstance(item, dict):
            return cls(item["name"], item["url"], tuple((item.get("headers") or {}).items()))
        name, url, *rest = item
        return cls(name, url, tuple((rest[0] if rest else {}).items()))


def sanitize(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)[:64] or "agent"


def tool_hash(tool: dict[str, Any]) -> str:
    keys = ("name", "title", "description", "inputSchema", "outputSchema", "annotations")
    subset = {k: tool[k] for k in keys if k in tool}
    raw = json.dumps(subset, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(raw.encode()).hexdigest()


def template_regex(template: str) -> re.Pattern:
    """RFC 6570 level 1-ish: ``{var}`` matches one path segment, ``{+var}``/``{var*}`` anything."""
    out, pos = [], 0
    for m in re.finditer(r"\{([^}]+)\}", template):
        out.append(re.escape(template[pos : m.start()]))
        expr = m.group(1)
        out.append(".+" if expr.startswith(("+", "#")) or expr.endswith("*") else "[^/?#]+")
        pos = m.end()
    out.append(re.escape(template[pos:]))
    return re.compile("^" + "".join(out) + "$")


class UpstreamClient:
    """One upstream session (created on first use, re-created when the upstream forgets it)."""

    def __init__(
        self,
        upstream: Upstream,
        http: httpx.AsyncClient,
        *,
        on_notification: Callable[["UpstreamClient", dict[str, Any]], Awaitable[None]],
        connect_timeout_s: float = 10.0,
    ) -> None:
        self.upstream = upstream
        self.name, self.url = upstream.name, upstream.url
        self.http = http
        self.on_notification = on_notification
        self.connect_timeout_s = connect_timeout_s
        self.session_id: str | None = None
        self.protocol_version = wire.LATEST_VERSION
        self.capabilities: dict[str, Any] = {}
        self.server_info: dict[str, Any] = {}
        self.catalog: dict[str, list[dict[str, Any]]] = {"tools": [], "resources": [], "resourceTemplates": [], "prompts": []}
        self.connected = False
        self.last_error: str | None = None
        self.first_attempt = asyncio.Event()  # set once the first connect attempt succeeded or failed
        self.generation = 0  # successful handshakes so far (a new one means a new upstream session)
        self._ids = 0
        self._lock = asyncio.Lock()
        self._get_task: asyncio.Task | None = None
        self._background: set[asyncio.Task] = set()
        self._closed = False

    # ---- session ---------------------------------------------------------------------------

    def _headers(self, *, sse_only: bool = False) -> dict[str, str]:
        h = dict(self.upstream.headers)
        h["Accept"] = "text/event-stream" if sse_only else "application/json, text/event-stream"
        if self.session_id:
            h["Mcp-Session-Id"] = self.session_id
            h["MCP-Protocol-Version"] = self.protocol_version
        return h

    async def ensure(self) -> None:
        if self.connected:
            return
        async with self._lock:
            if self.connected:
                return
            if self._closed:
                raise UpstreamUnavailable(f"upstream {self.name!r} is closed")
            try:
                await asyncio.wait_for(self._handshake(), self.connect_timeout_s)
            except asyncio.TimeoutError:
                self.last_error = f"no answer to initialize within {self.connect_timeout_s:g} s"
                raise UpstreamUnavailable(f"upstream {self.name!r} is unavailable: {self.last_error}") from None
            except (httpx.HTTPError, OSError, McpError, ValueError, UpstreamUnavailable) as exc:
                self.last_error = _describe(exc)
                raise UpstreamUnavailable(f"upstream {self.name!r} is unavailable: {self.last_error}") from None

    async def _handshake(self) -> None:
        self.session_id = None
        params = {
            "protocolVersion": wire.LATEST_VERSION,
            "capabilities": {"sampling": {}, "elicitation": {"form": {}, "url": {}}, "roots": {"listChanged": True}},
            "clientInfo": {"name": "interlace-gateway", "version": "0.1.0"},
        }
        self._ids += 1
        body = wire.request(self._ids, "initialize", params)
        async with self.http.stream("POST", self.url, json=body, headers=self._headers()) as resp:
            if resp.status_code != 200:
                raise UpstreamUnavailable(f"initialize answered HTTP {resp.status_code}")
            sid = resp.headers.get("mcp-session-id")
            reply = await self._read_reply(resp, self._ids, None)
        if "error" in reply:
            raise McpError(reply["error"].get("code", wire.INTERNAL_ERROR), reply["error"].get("message", "initialize failed"))
        res = reply["result"]
        version = res.get("protocolVersion")
        if version not in wire.SUPPORTED_VERSIONS:
            raise UpstreamUnavailable(f"upstream negotiated unsupported protocol version {version!r}")
        self.session_id, self.protocol_version = sid, version
        self.generation += 1
        self.capabilities = res.get("capabilities") or {}
        self.server_info = res.get("serverInfo") or {}
        await self._post_message(wire.notification("notifications/initialized"))
        if "logging" in self.capabilities:
            # One shared upstream session serves many clients: ask for everything and filter
            # per client session at relay time.
            with contextlib.suppress(McpError, UpstreamUnavailable, UpstreamTimeout):
                await self._exchange_direct("logging/setLevel", {"level": "debug"})
        self.connected, self.last_error = True, None
        if self._get_task is None or self._get_task.done():
            self._get_task = asyncio.create_task(self._listen(), name=f"mcp-upstream-get-{self.name}")

    async def _exchange_direct(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        self._ids += 1
        return await self._exchange(wire.request(self._ids, method, params), self._ids, None)

    def _lost(self, why: str) -> None:
        if self.connected:
            log.warning("upstream session lost", extra={"upstream": self.name, "reason": why})
        self.connected, self.last_error = False, why

    async def close(self) -> None:
        self._closed = True
        for task in [self._get_task, *self._background]:
            if task is not None:
                task.cancel()
        with contextlib.suppress(Exception):
            await asyncio.gather(*(t for t in [self._get_task, *self._background] if t is not None), return_exceptions=True)
        if self.session_id:
            with contextlib.suppress(Exception):
                await self.http.delete(self.url, headers=self._headers(), timeout=2.0)
        self.connected = False

    # ---- requests --------------------------------------------------------------------------

    async def request(
        self,
        method: str,
        params: dict[str, Any] | None,
        *,
        on_message: MessageHandler | None = None,
        timeout: float | None = None,
    ) -> dict[str, Any]:
        """Send a request; its result, or McpError for a JSON-RPC error.

        ``on_message`` receives the notifications and server->client requests that arrive on
        this request's stream. Raises UpstreamUnavailable / UpstreamTimeout; on timeout or
        cancellation, ``notifications/cancelled`` is sent upstream.
        """
        await self.ensure()
        self._ids += 1
        rid = self._ids
        body = wire.request(rid, method, params or {})
        try:
            async with asyncio.timeout(timeout):
                return await self._exchange(body, rid, on_message)
        except TimeoutError:
            self._cancel_upstream(rid, f"gateway timeout after {timeout:g} s")
            raise UpstreamTimeout(f"upstream {self.name!r} did not answer {method} within {timeout:g} s") from None
        except asyncio.CancelledError:
            self._cancel_upstream(rid, "cancelled by the client")
            raise

    def _cancel_upstream(self, rid: int, reason: str) -> None:
        task = asyncio.create_task(self._post_quiet(wire.notification("notifications/cancelled", {"requestId": rid, "reason": reason})))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _post_quiet(self, msg: dict[str, Any]) -> None:
        with contextlib.suppress(Exception):
            await self._post_message(msg)

    async def notify(self, method: str, params: dict[str, Any] | None = None) -> None:
        await self._post_message(wire.notification(method, params))

    async def respond(self, id: Any, *, result: dict[str, Any] | None = None, error: McpError | None = None) -> None:
        msg = wire.error(id, error) if error is not None else wire.result(id, result or {})
        await self._post_message(msg)

    async def _post_message(self, msg: dict[str, Any]) -> None:
        resp = await self.http.post(self.url, json=msg, headers=self._headers(), timeout=10.0)
        if resp.status_code == 404 and self.session_id:
            self._lost("session expired")
        if resp.status_code >= 400:
            raise UpstreamUnavailable(f"upstream {self.name!r} answered HTTP {resp.status_code}")

    async def _exchange(self, body: dict[str, Any], rid: int, on_message: MessageHandler | None) -> dict[str, Any]:
        for attempt in range(3):
            answered = False
            try:
                async with self.http.stream("POST", self.url, json=body, headers=self._headers()) as resp:
                    answered = True
                    if resp.status_code == 404 and self.session_id and attempt < 2:
                        self._lost("session expired")  # the upstream restarted or dropped us
                        await self.ensure()
                        continue
                    if resp.status_code >= 400:
                        reply = await self._error_body(resp)
                        if reply is None:
                            raise UpstreamUnavailable(f"upstream {self.name!r} answered HTTP {resp.status_code}")
                    else:
                        reply = await self._read_reply(resp, rid, on_message)
            except (httpx.RemoteProtocolError, httpx.ReadError) as exc:
                if not answered and attempt == 0:
                    continue  # a pooled connection the upstream had just closed: nothing was read
                self._lost(_describe(exc))
                raise UpstreamUnavailable(f"upstream {self.name!r} is unavailable: {_describe(exc)}") from None
            except (httpx.TransportError, OSError) as exc:
                self._lost(_describe(exc))
                raise UpstreamUnavailable(f"upstream {self.name!r} is unavailable: {_describe(exc)}") from None
            if "error" in reply:
                err = reply["error"] if isinstance(reply["error"], dict) else {}
                raise McpError(err.get("code", wire.INTERNAL_ERROR), str(err.get("message", "upstream error")), err.get("data"))
            res = reply.get("result")
            return res if isinstance(res, dict) else {}
        raise UpstreamUnavailable(f"upstream {self.name!r} keeps forgetting the session")

    @staticmethod
    async def _error_body(resp: httpx.Response) -> dict[str, Any] | None:
        if not resp.headers.get("content-type", "").startswith("application/json"):
            return None
        with contextlib.suppress(Exception):
            msg = json.loads(await resp.aread())
            if isinstance(msg, dict) and isinstance(msg.get("error"), dict):
                return msg
        return None

    async def _read_reply(self, resp: httpx.Response, rid: int, on_message: MessageHandler | None) -> dict[str, Any]:
        ctype = resp.headers.get("content-type", "")
        if ctype.startswith("application/json"):
            msg = json.loads(await resp.aread())
            if not isinstance(msg, dict):
                raise UpstreamUnavailable(f"upstream {self.name!r} sent a malformed response")
            return msg
        if not ctype.startswith("text/event-stream"):
            raise UpstreamUnavailable(f"upstream {self.name!r} answered with content type {ctype!r}")
        cursor = _Cursor()
        lines = resp.aiter_lines()
        reply = await self._read_events(lines, rid, on_message, cursor)
        if reply is not None:
            # The server ends the stream after the response: read to the end so the pooled
            # connection is reused (a half-read response would close it).
            with contextlib.suppress(TimeoutError, httpx.HTTPError):
                async with asyncio.timeout(1.0):
                    async for _ in lines:
                        pass
            return reply
        # The stream closed before the response (SSE polling, SEP-1699): resume it with GET +
        # Last-Event-ID after the server's retry interval, as often as it closes it.
        if cursor.last_id is None:
            raise UpstreamUnavailable(f"upstream {self.name!r} closed the stream without a response")
        for _ in range(1000):
            await asyncio.sleep(cursor.retry_ms / 1000)
            headers = {**self._headers(sse_only=True), "Last-Event-ID": cursor.last_id}
            async with self.http.stream("GET", self.url, headers=headers) as resumed:
                if resumed.status_code != 200:
                    raise UpstreamUnavailable(f"upstream {self.name!r} refused to resume (HTTP {resumed.status_code})")
                reply = await self._read_events(resumed.aiter_lines(), rid, on_message, cursor)
            if reply is not None:
                return reply
        raise UpstreamUnavailable(f"upstream {self.name!r} closed the stream without a response")

    async def _read_events(self, lines, rid, on_message, cursor: "_Cursor") -> dict[str, Any] | None:
        async for ev in wire.read_sse(lines):
            if ev.id:
                cursor.last_id = ev.id
            if ev.retry is not None:
                cursor.retry_ms = ev.retry
            if not ev.data.strip():
                continue  # priming event
            try:
                msg = json.loads(ev.data)
            except json.JSONDecodeError:
                continue
            if not isinstance(msg, dict):
                continue
            if "method" not in msg and msg.get("id") == rid:
                return msg
            await self._dispatch(msg, on_message)
        return None

    async def _dispatch(self, msg: dict[str, Any], on_message: MessageHandler | None) -> None:
        """A message on a request's stream that is not its response."""
        if "method" in msg and "id" in msg:
            if msg["method"] == "ping":
                await self._post_quiet(wire.result(msg["id"], {}))
                return
            if on_message is None:
                await self._post_quiet(wire.error(msg["id"], McpError(wire.METHOD_NOT_FOUND, "no client to relay to")))
                return
            # Requests run concurrently: the upstream may send several and waits for each.
            task = asyncio.create_task(on_message(msg))
            self._background.add(task)
            task.add_done_callback(self._background.discard)
            return
        if "method" in msg:
            method = msg["method"]
            if method in ("notifications/progress", "notifications/message", "notifications/cancelled") and on_message is not None:
                await on_message(msg)
            else:
                await self.on_notification(self, msg)

    async def _listen(self) -> None:
        """The upstream's GET stream: list_changed, resource updates, unrelated requests."""
        backoff, last_id = 0.5, None
        while not self._closed:
            if not self.connected:
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 30.0)
                continue
            try:
                headers = self._headers(sse_only=True)
                if last_id:
                    headers["Last-Event-ID"] = last_id
                async with self.http.stream("GET", self.url, headers=headers) as resp:
                    if resp.status_code == 405:
                        return  # the upstream offers no GET stream
                    if resp.status_code == 404:
                        self._lost("session expired")
                        continue
                    if resp.status_code != 200:
                        raise UpstreamUnavailable(f"GET answered HTTP {resp.status_code}")
                    backoff = 0.5
                    async for ev in wire.read_sse(resp.aiter_lines()):
                        last_id = ev.id or last_id
                        if ev.data.strip():
                            with contextlib.suppress(json.JSONDecodeError):
                                msg = json.loads(ev.data)
                                if isinstance(msg, dict):
                                    await self._on_get_message(msg)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # network trouble: back off and listen again
                log.debug("upstream GET stream ended", extra={"upstream": self.name, "error": _describe(exc)})
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 30.0)

    async def _on_get_message(self, msg: dict[str, Any]) -> None:
        if "method" in msg and "id" in msg:
            if msg["method"] == "ping":
                await self._post_quiet(wire.result(msg["id"], {}))
            elif msg["method"] == "roots/list":
                await self._post_quiet(wire.result(msg["id"], {"roots": []}))
            else:
                err = McpError(wire.METHOD_NOT_FOUND, f"{msg['method']} is only relayed within a client's request")
                await self._post_quiet(wire.error(msg["id"], err))
        elif "method" in msg:
            await self.on_notification(self, msg)

    # ---- catalog ---------------------------------------------------------------------------

    async def list_all(self, method: str, key: str, timeout: float) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        cursor = None
        for _ in range(100):
            params = {"cursor": cursor} if cursor else {}
            page = await self.request(method, params, timeout=timeout)
            items.extend(x for x in page.get(key) or [] if isinstance(x, dict))
            cursor = page.get("nextCursor")
            if not cursor:
                break
        return items

    async def refresh(self, kinds: Iterable[str], timeout: float) -> None:
        plan = {
            "tools": ("tools", "tools/list", "tools"),
            "resources": ("resources", "resources/list", "resources"),
            "resourceTemplates": ("resources", "resources/templates/list", "resourceTemplates"),
            "prompts": ("prompts", "prompts/list", "prompts"),
        }
        for kind in kinds:
            cap, method, key = plan[kind]
            if cap in self.capabilities:
                self.catalog[kind] = await self.list_all(method, key, timeout)
            else:
                self.catalog[kind] = []


def _describe(exc: BaseException) -> str:
    text = str(exc) or exc.__class__.__name__
    if isinstance(exc, httpx.ConnectError):
        return f"connection failed ({text})"
    return text


@dataclass
class _Cursor:
    """Where a request's SSE stream got to: the id to resume after, and the server's retry."""

    last_id: str | None = None
    retry_ms: int = 1000


@dataclass
class Quarantined:
    upstream: str
    tool: str
    pinned: str
    current: str
    since: float
    definition: dict[str, Any] = field(repr=False, default_factory=dict)

    def dump(self) -> dict[str, Any]:
        return {"upstream": self.upstream, "tool": self.tool, "pinned_sha256": self.pinned,
                "current_sha256": self.current, "since": self.since, "definition": self.definition}


class UpstreamSet:
    """Pooled sessions to the upstream MCP servers and their aggregated catalog."""

    LOCAL = object()

    def __init__(
        self,
        upstreams: Iterable[Upstream | tuple | dict] = (),
        *,
        kv: KeyValue,
        naming: str = "prefix",
        separator: str = "__",
        call_timeout_s: float = 60.0,
        registry=None,
        on_change: Callable[[set[str]], Awaitable[None]] | None = None,
        on_resource_updated: Callable[[str], Awaitable[None]] | None = None,
        on_log: Callable[[dict[str, Any]], Awaitable[None]] | None = None,
    ) -> None:
        if naming not in ("prefix", "pass-through"):
            raise ValueError(f"naming must be 'prefix' or 'pass-through', not {naming!r}")
        self.kv, self.naming, self.separator = kv, naming, separator
        self.call_timeout_s = call_timeout_s
        self.on_change, self.on_resource_updated, self.on_log = on_change, on_resource_updated, on_log
        self.local_names: set[str] = set()  # gateway tools (agent and meta tools) upstream names must not shadow
        self.http: httpx.AsyncClient | None = None  # one pooled client for every upstream, made at start
        self.clients: dict[str, UpstreamClient] = {}
        self._wanted = [Upstream.of(u) for u in upstreams]
        self._tools: dict[str, tuple[UpstreamClient, dict[str, Any]]] = {}
        self._prompts: dict[str, tuple[UpstreamClient, dict[str, Any]]] = {}
        self._resources: dict[str, UpstreamClient] = {}
        self._templates: list[tuple[re.Pattern, UpstreamClient]] = []
        self._quarantine: dict[tuple[str, str], Quarantined] = {}
        self._keepers: dict[str, asyncio.Task] = {}
        self._refreshing: dict[str, asyncio.Task] = {}
        self._started = False
        self._metrics(registry)

    def _metrics(self, registry) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge

        r = registry or CollectorRegistry()
        self.m_changes = Counter(
            "interlace_mcp_tool_definition_changes", "Upstream tool definitions that changed after they were pinned",
            ["upstream", "tool"], registry=r)
        self.m_quarantined = Gauge(
            "interlace_mcp_quarantined_tools", "Upstream tools hidden because their definition changed", ["upstream"], registry=r)
        self.m_up = Gauge("interlace_mcp_upstream_up", "1 when the upstream MCP session is established", ["upstream"], registry=r)

    # ---- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        self.http = httpx.AsyncClient(
            timeout=httpx.Timeout(10.0, read=None),
            # Idle connections are dropped before a typical server's keep-alive timeout (uvicorn: 5 s)
            # so a request rarely meets a connection the upstream is closing.
            limits=httpx.Limits(max_connections=200, max_keepalive_connections=64, keepalive_expiry=2.0),
        )
        self._started = True
        await self.set_upstreams(self._wanted)

    async def stop(self) -> None:
        self._started = False
        for task in [*self._keepers.values(), *self._refreshing.values()]:
            task.cancel()
        await asyncio.gather(*self._keepers.values(), *self._refreshing.values(), return_exceptions=True)
        await asyncio.gather(*(c.close() for c in self.clients.values()), return_exceptions=True)
        if self.http is not None:
            await self.http.aclose()

    async def set_upstreams(self, upstreams: Iterable[Upstream | tuple | dict], wait_s: float = 5.0) -> None:
        """Replace the set of upstreams (the registry feeds this); new ones are connected,
        removed ones closed. Waits up to ``wait_s`` for new upstreams' first catalog."""
        wanted = {u.name: u for u in (Upstream.of(x) for x in upstreams)}
        self._wanted = list(wanted.values())
        if not self._started:
            return
        for name in list(self.clients):
            if name not in wanted or wanted[name] != self.clients[name].upstream:
                client = self.clients.pop(name)
                keeper = self._keepers.pop(name, None)
                if keeper:
                    keeper.cancel()
                await client.close()
                self.m_up.labels(name).set(0)
        started = []
        for name, up in wanted.items():
            if name not in self.clients:
                self.clients[name] = UpstreamClient(up, self.http, on_notification=self._on_notification)
                self._keepers[name] = asyncio.create_task(self._keep(self.clients[name]), name=f"mcp-keeper-{name}")
                started.append(self.clients[name])
        if started:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._first_sync(started), wait_s)
        self._reindex()

    @staticmethod
    async def _first_sync(clients: list[UpstreamClient]) -> None:
        await asyncio.gather(*(c.first_attempt.wait() for c in clients))

    async def _keep(self, client: UpstreamClient) -> None:
        """Connect and load the catalog; reconnect with backoff while the upstream is down."""
        backoff, synced = 0.5, 0
        while True:
            try:
                if not client.connected or client.generation != synced:
                    await client.ensure()
                    # Every new upstream session (also one a call re-opened) re-reads the catalog:
                    # a definition swapped while we were away is caught by the pins.
                    generation = client.generation
                    await self._sync(client, {"tools", "resources", "resourceTemplates", "prompts"})
                    synced = generation
                    client.first_attempt.set()
                    self.m_up.labels(client.name).set(1)
                    log.info("upstream connected", extra={"upstream": client.name, "tools": len(client.catalog["tools"])})
                    await self._changed({"tools", "resources", "prompts"})
                    backoff = 0.5
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.m_up.labels(client.name).set(0)
                client.last_error = _describe(exc)
                log.warning("upstream unavailable", extra={"upstream": client.name, "error": client.last_error})
                client.first_attempt.set()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 30.0)
                continue
            await asyncio.sleep(1.0 if client.connected else 0.1)

    async def _sync(self, client: UpstreamClient, kinds: set[str]) -> None:
        await client.refresh(sorted(kinds), self.call_timeout_s)
        if "tools" in kinds:
            await self._check_pins(client)
        self._reindex()

    async def _on_notification(self, client: UpstreamClient, msg: dict[str, Any]) -> None:
        method = msg.get("method")
        params = msg.get("params") or {}
        kinds = {
            "notifications/tools/list_changed": {"tools"},
            "notifications/resources/list_changed": {"resources", "resourceTemplates"},
            "notifications/prompts/list_changed": {"prompts"},
        }.get(method)
        if kinds:
            self._schedule_refresh(client, kinds)
        elif method == "notifications/resources/updated" and self.on_resource_updated and isinstance(params.get("uri"), str):
            await self.on_resource_updated(params["uri"])
        elif method == "notifications/message" and self.on_log:
            await self.on_log(params)

    def _schedule_refresh(self, client: UpstreamClient, kinds: set[str]) -> None:
        async def run() -> None:
            try:
                await self._sync(client, kinds)
                await self._changed({"resources" if k == "resourceTemplates" else k for k in kinds})
            except Exception as exc:
                log.warning("upstream catalog refresh failed", extra={"upstream": client.name, "error": _describe(exc)})

        task = asyncio.create_task(run())
        key = f"{client.name}:{','.join(sorted(kinds))}:{time.monotonic()}"
        self._refreshing[key] = task
        task.add_done_callback(lambda _: self._refreshing.pop(key, None))

    async def refresh_now(self, name: str | None = None) -> None:
        """Re-read every (or one) upstream's catalog now."""
        for client in list(self.clients.values()):
            if name is None or client.name == name:
                await self._sync(client, {"tools", "resources", "resourceTemplates", "prompts"})

    async def _changed(self, kinds: set[str]) -> None:
        if self.on_change:
            with contextlib.suppress(Exception):
                await self.on_change(kinds)

    # ---- rug-pull pins -----------------------------------------------------------------------

    async def _check_pins(self, client: UpstreamClient) -> None:
        current = set()
        for tool in client.catalog["tools"]:
            name = tool.get("name")
            if not isinstance(name, str):
                continue
            current.add(name)
            digest = tool_hash(tool)
            key = f"mcp:pin:{client.name}:{name}"
            if await self.kv.set(key, digest, PIN_TTL_S, only_new=True):
                self._quarantine.pop((client.name, name), None)
                continue
            pinned = await self.kv.get(key)
            if pinned is None or pinned == digest:
                self._quarantine.pop((client.name, name), None)
                continue
            prior = self._quarantine.get((client.name, name))
            if prior is None or prior.current != digest:
                self.m_changes.labels(client.name, name).inc()
                log.warning(
                    "upstream tool definition changed after it was pinned; hidden until re-pinned",
                    extra={"upstream": client.name, "tool": name, "pinned": pinned, "current": digest},
                )
            self._quarantine[(client.name, name)] = Quarantined(client.name, name, pinned, digest, time.time(), tool)
        for key in [k for k in self._quarantine if k[0] == client.name and k[1] not in current]:
            del self._quarantine[key]
        self.m_quarantined.labels(client.name).set(sum(1 for k in self._quarantine if k[0] == client.name))

    def quarantined(self) -> list[dict[str, Any]]:
        """Tools hidden because their definition changed since it was pinned (for /registry views)."""
        return [q.dump() for q in self._quarantine.values()]

    async def repin(self, upstream: str, tool: str | None = None) -> list[str]:
        """Accept the current definition of one tool (or all quarantined tools of ``upstream``)."""
        done = []
        for key, q in list(self._quarantine.items()):
            if key[0] == upstream and (tool is None or key[1] == tool):
                await self.kv.set(f"mcp:pin:{upstream}:{key[1]}", q.current, PIN_TTL_S)
                del self._quarantine[key]
                done.append(key[1])
        self.m_quarantined.labels(upstream).set(sum(1 for k in self._quarantine if k[0] == upstream))
        if done:
            self._reindex()
            await self._changed({"tools"})
        return done

    # ---- naming and lookup ---------------------------------------------------------------------

    def _exposed(self, kind: str) -> dict[str, tuple[UpstreamClient, dict[str, Any]]]:
        offers: dict[str, list[tuple[UpstreamClient, dict[str, Any]]]] = {}
        for client in self.clients.values():
            for item in client.catalog[kind]:
                name = item.get("name")
                if not isinstance(name, str):
                    continue
                if kind == "tools" and (client.name, name) in self._quarantine:
                    continue
                offers.setdefault(name, []).append((client, item))
        out: dict[str, tuple[UpstreamClient, dict[str, Any]]] = {}
        reserved = self.local_names if kind == "tools" else set()
        for name, owners in offers.items():
            keep = self.naming == "pass-through" and len(owners) == 1 and name not in reserved
            for client, item in owners:
                exposed = name if keep else f"{sanitize(client.name)}{self.separator}{name}"
                if exposed in out:
                    log.warning("duplicate upstream name skipped", extra={"upstream": client.name, "name": exposed})
                    continue
                out[exposed] = (client, item)
        return out

    def _reindex(self) -> None:
        self._tools = self._exposed("tools")
        self._prompts = self._exposed("prompts")
        self._resources, self._templates = {}, []
        for client in self.clients.values():
            for res in client.catalog["resources"]:
                uri = res.get("uri")
                if isinstance(uri, str):
                    self._resources.setdefault(uri, client)
            for tmpl in client.catalog["resourceTemplates"]:
                if isinstance(tmpl.get("uriTemplate"), str):
                    self._templates.append((template_regex(tmpl["uriTemplate"]), client))

    def set_local_names(self, names: set[str]) -> None:
        if names != self.local_names:
            self.local_names = set(names)
            self._reindex()

    def tools(self) -> list[dict[str, Any]]:
        return [{**item, "name": name} for name, (_, item) in self._tools.items()]

    def prompts(self) -> list[dict[str, Any]]:
        return [{**item, "name": name} for name, (_, item) in self._prompts.items()]

    def resources(self) -> list[dict[str, Any]]:
        return [r for c in self.clients.values() for r in c.catalog["resources"]]

    def templates(self) -> list[dict[str, Any]]:
        return [t for c in self.clients.values() for t in c.catalog["resourceTemplates"]]

    def resolve_tool(self, name: str) -> tuple[UpstreamClient, str] | Quarantined | None:
        hit = self._tools.get(name)
        if hit is not None:
            return hit[0], hit[1]["name"]
        for q in self._quarantine.values():
            if name in (q.tool, f"{sanitize(q.upstream)}{self.separator}{q.tool}"):
                return q
        return None

    def resolve_prompt(self, name: str) -> tuple[UpstreamClient, str] | None:
        hit = self._prompts.get(name)
        return (hit[0], hit[1]["name"]) if hit else None

    def resolve_uri(self, uri: str) -> UpstreamClient | None:
        if uri in self._resources:
            return self._resources[uri]
        for pattern, client in self._templates:
            if pattern.match(uri):
                return client
        if len(self.clients) == 1:
            return next(iter(self.clients.values()))
        return None

    def names(self) -> set[str]:
        return set(self.clients)
