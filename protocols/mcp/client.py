"""The MCP client: one remote MCP server over Streamable HTTP, in the era it speaks.

``UpstreamClient`` runs over one pooled client (``gateway.core.http_client.PooledClient``, aiohttp:
the upstream hop is the hot path of a relayed call). It first discovers the server's
era (``protocols.mcp.upstream_modern.discover``: ``server/discover``, then ``initialize`` when
that is refused): a 2026-07-28 server is spoken statelessly by ``upstream_modern.ModernWire``
behind the same methods (``request``, ``respond``, ``notify``, notifications to
``on_notification``), so callers never branch on era; ``era`` and ``protocol_version`` say which
(each connection discovers it again: an upstream may be upgraded). A handshake-era server gets
the 2025-11-25 handshake, the session re-created when the server forgets it, each request's
response read as JSON or as an SSE stream (resumed with GET + ``Last-Event-ID`` when the server
closes it early), and the server's GET stream for notifications. The federation
(``protocols.mcp.federation``) keeps one per upstream server; the outbound connector
(``protocols.mcp.connector``) one per remote server it calls.

It is not the SDK's ``ClientSession`` on purpose: the gateway must know which upstream request
a server->client message belongs to (sampling, elicitation, progress, logging all ride the
POST's SSE stream of the ``tools/call`` that caused them) to relay it to the one downstream
client that made that call. Reading each call's own response stream gives that for free, with
one shared upstream session, and keeps ``mcp`` out of the runtime dependencies.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

from gateway.core import sse
from gateway.core.http_client import Disconnected, PooledClient, Response, TransportError
from protocols.mcp import telemetry, upstream_modern, wire
from protocols.mcp.upstream_errors import UpstreamRefused, UpstreamTimeout, UpstreamUnavailable
from protocols.mcp.wire import MCPError

log = logging.getLogger("interlace.mcp.upstream")

MessageHandler = Callable[[dict[str, Any]], Awaitable[None]]


@dataclass(frozen=True)
class Upstream:
    """One upstream MCP server: the agent's name, its MCP endpoint, headers of its own (its
    credentials; a client's token is never passed through), and its era: ``auto`` (discovered),
    or pinned to ``legacy`` (the handshake, no discovery: a dual-era server whose tools still ask
    through a session) or ``modern`` (2026-07-28 or nothing)."""

    name: str
    url: str
    headers: tuple[tuple[str, str], ...] = ()
    era: str = "auto"

    def __post_init__(self) -> None:
        if self.era not in ("auto", "legacy", "modern"):
            raise ValueError(f"upstream {self.name!r}: era must be auto, legacy or modern, not {self.era!r}")

    @classmethod
    def of(cls, item: Upstream | tuple | dict) -> Upstream:
        if isinstance(item, Upstream):
            return item
        if isinstance(item, dict):
            return cls(item["name"], item["url"], tuple((item.get("headers") or {}).items()), item.get("era") or "auto")
        name, url, *rest = item
        return cls(name, url, tuple((rest[0] if rest else {}).items()))


class UpstreamClient:
    """One upstream session (created on first use, re-created when the upstream forgets it)."""

    def __init__(
        self,
        upstream: Upstream,
        http: PooledClient,
        *,
        on_notification: Callable[[UpstreamClient, dict[str, Any]], Awaitable[None]],
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
        self.catalog: dict[str, list[dict[str, Any]]] = {
            "tools": [],
            "resources": [],
            "resourceTemplates": [],
            "prompts": [],
        }
        self.modern: upstream_modern.ModernWire | None = None  # set while the upstream speaks 2026-07-28
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

    @property
    def era(self) -> str | None:
        """``modern`` (2026-07-28, stateless), ``legacy`` (a handshake-era session), or None before
        the first connection."""
        if self.modern is not None:
            return "modern"
        return "legacy" if self.session_id is not None or self.generation else None

    def next_id(self) -> int:
        self._ids += 1
        return self._ids

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
                raise UpstreamUnavailable(self.name, "is closed")
            try:
                await asyncio.wait_for(self._connect(), self.connect_timeout_s)
            except TimeoutError:
                self.last_error = f"no answer to server/discover or initialize within {self.connect_timeout_s:g} s"
                raise UpstreamUnavailable(self.name, self.last_error) from None
            except (TransportError, OSError, MCPError, ValueError, UpstreamUnavailable) as exc:
                self.last_error = describe(exc)
                raise UpstreamUnavailable(self.name, self.last_error) from None

    async def _connect(self) -> None:
        """Discover the upstream's era and open it."""
        subscribed: set[str] = set()  # a 2026-07-28 upstream's resource subscriptions outlive a reconnection
        if self.modern is not None:
            subscribed = self.modern.subscribed
            await self.modern.close()
            self.modern = None
        self.session_id = None
        found = None if self.upstream.era == "legacy" else await upstream_modern.discover(self)
        if found is None:
            if self.upstream.era == "modern":
                raise UpstreamUnavailable(
                    self.name, "is pinned to 2026-07-28 and does not answer server/discover for it"
                )
            await self._handshake()
            return
        self.modern = upstream_modern.ModernWire(self, found.version, subscribed)
        self.protocol_version, self.capabilities, self.server_info = (
            found.version,
            found.capabilities,
            found.server_info,
        )
        self.generation += 1
        self.connected, self.last_error = True, None
        await self.modern.open()

    async def _handshake(self) -> None:
        self.session_id = None
        rid, body = self._initialize_request()
        async with self.http.stream("POST", self.url, json=body, headers=self._headers()) as resp:
            if resp.status_code != 200:
                raise UpstreamUnavailable(self.name, f"initialize answered HTTP {resp.status_code}")
            sid = resp.headers.get("mcp-session-id")
            reply = await self._read_reply(resp, rid, None)
        await self._initialized(reply, sid)

    def _initialize_request(self) -> tuple[int, dict[str, Any]]:
        params = {
            "protocolVersion": wire.LATEST_VERSION,
            "capabilities": upstream_modern.CLIENT_CAPABILITIES,
            "clientInfo": upstream_modern.CLIENT_INFO,
        }
        rid = self.next_id()
        return rid, wire.request(rid, "initialize", params)

    async def _initialized(self, reply: dict[str, Any], session_id: str | None) -> None:
        """The handshake once ``initialize`` was answered (whatever the transport: see stdio_upstream)."""
        res = result_of(reply)
        version = res.get("protocolVersion")
        if version not in wire.SUPPORTED_VERSIONS:
            raise UpstreamUnavailable(self.name, f"negotiated unsupported protocol version {version!r}")
        self.session_id, self.protocol_version = session_id, version
        self.generation += 1
        self.capabilities = res.get("capabilities") or {}
        self.server_info = res.get("serverInfo") or {}
        await self._post_message(wire.notification("notifications/initialized"))
        if "logging" in self.capabilities:
            # One shared upstream session serves many clients: ask for everything and filter
            # per client session at relay time.
            with contextlib.suppress(MCPError, UpstreamUnavailable, UpstreamTimeout):
                await self._exchange_direct("logging/setLevel", {"level": "debug"})
        self.connected, self.last_error = True, None
        if self._get_task is None or self._get_task.done():
            self._get_task = asyncio.create_task(self._listen(), name=f"mcp-upstream-get-{self.name}")

    async def _exchange_direct(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        rid = self.next_id()
        return await self._exchange(wire.request(rid, method, params), rid, None)

    def _lost(self, why: str) -> None:
        if self.connected:
            log.warning("upstream session lost", extra={"upstream": self.name, "reason": why})
        self.connected, self.last_error = False, why

    async def close(self) -> None:
        self._closed = True
        if self.modern is not None:
            await self.modern.close()
        for task in [self._get_task, *self._background]:
            if task is not None:
                task.cancel()
        with contextlib.suppress(Exception):
            await asyncio.gather(
                *(t for t in [self._get_task, *self._background] if t is not None), return_exceptions=True
            )
        if self.session_id:
            with contextlib.suppress(Exception):
                await self.http.request("DELETE", self.url, headers=self._headers(), timeout=2.0)
        self.connected = False

    # ---- requests --------------------------------------------------------------------------

    @telemetry.client_span
    async def request(
        self,
        method: str,
        params: dict[str, Any] | None,
        *,
        on_message: MessageHandler | None = None,
        timeout: float | None = None,
    ) -> dict[str, Any]:
        """Send a request; its result, or MCPError for a JSON-RPC error.

        ``on_message`` receives the notifications and server->client requests that arrive on
        this request's stream. Raises UpstreamUnavailable / UpstreamTimeout; on timeout or
        cancellation, ``notifications/cancelled`` is sent upstream.
        """
        await self.ensure()
        rid: int | None = None  # a 2026-07-28 request is cancelled by closing its stream
        if self.modern is not None:
            call = self.modern.request(method, params or {}, on_message)
        else:
            rid = self.next_id()
            call = self._exchange(wire.request(rid, method, params or {}), rid, on_message)
        try:
            async with asyncio.timeout(timeout):
                return await call
        except TimeoutError:
            if rid is not None:
                self._cancel_upstream(rid, f"gateway timeout after {timeout:g} s")
            raise UpstreamTimeout(f"upstream {self.name!r} did not answer {method} within {timeout:g} s") from None
        except asyncio.CancelledError:
            if rid is not None:
                self._cancel_upstream(rid, "cancelled by the client")
            raise

    def _cancel_upstream(self, rid: int, reason: str) -> None:
        task = asyncio.create_task(
            self._post_quiet(wire.notification("notifications/cancelled", {"requestId": rid, "reason": reason}))
        )
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _post_quiet(self, msg: dict[str, Any]) -> None:
        with contextlib.suppress(Exception):
            await self._post_message(msg)

    async def notify(self, method: str, params: dict[str, Any] | None = None) -> None:
        if self.modern is None:  # 2026-07-28 defines no client notifications
            await self._post_message(wire.notification(method, params))

    async def respond(self, id: Any, *, result: dict[str, Any] | None = None, error: MCPError | None = None) -> None:
        """Answer a server->client request (of a 2026-07-28 upstream: one of an input_required result's)."""
        if self.modern is not None and self.modern.answer(id, result, error):
            return
        msg = wire.error(id, error) if error is not None else wire.result(id, result or {})
        await self._post_message(msg)

    async def _post_message(self, msg: dict[str, Any]) -> None:
        resp = await self.http.request("POST", self.url, json=msg, headers=self._headers(), timeout=10.0)
        if resp.status_code == 404 and self.session_id:
            self._lost("session expired")
        if resp.status_code >= 400:
            raise UpstreamRefused(self.name, f"answered HTTP {resp.status_code}")

    async def _exchange(
        self,
        body: dict[str, Any],
        rid: int,
        on_message: MessageHandler | None,
        headers: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        """POST a request (with the session's headers unless ``headers``); its result."""
        for attempt in range(3):
            answered = False
            try:
                sent = self._headers() if headers is None else headers
                async with self.http.stream("POST", self.url, json=body, headers=sent) as resp:
                    answered = True
                    if resp.status_code == 404 and self.session_id and attempt < 2:
                        self._lost("session expired")  # the upstream restarted or dropped us
                        await self.ensure()
                        continue
                    if resp.status_code >= 400:
                        reply = await self._error_body(resp)
                        if reply is None:
                            raise UpstreamRefused(self.name, f"answered HTTP {resp.status_code}")
                    else:
                        reply = await self._read_reply(resp, rid, on_message)
            except Disconnected as exc:
                if not answered and attempt == 0:
                    continue  # a pooled connection the upstream had just closed: nothing was read
                self._lost(describe(exc))
                raise UpstreamUnavailable(self.name, describe(exc)) from None
            except (TransportError, OSError) as exc:
                self._lost(describe(exc))
                raise UpstreamUnavailable(self.name, describe(exc)) from None
            except sse.LineTooLong as exc:
                raise UpstreamUnavailable(self.name, f"broke the protocol: {exc}") from None
            return result_of(reply)
        raise UpstreamUnavailable(self.name, "keeps forgetting the session")

    async def post_stream(self, body: dict[str, Any], headers: dict[str, str], handle: MessageHandler) -> None:
        """POST ``body`` and give each message of the answer to ``handle`` until the stream ends
        (a ``subscriptions/listen`` stream). A JSON-RPC error raises MCPError; anything else
        that is not JSON-RPC, UpstreamRefused; a broken connection, UpstreamUnavailable."""

        async def deliver(msg: dict[str, Any]) -> None:
            if "method" not in msg and isinstance(msg.get("error"), dict):
                err = msg["error"]
                raise MCPError(err.get("code", wire.INTERNAL_ERROR), str(err.get("message", "upstream error")))
            await handle(msg)

        try:
            async with self.http.stream("POST", self.url, json=body, headers=headers) as resp:
                if resp.status_code >= 400:
                    reply = await self._error_body(resp)
                    if reply is None:
                        raise UpstreamRefused(self.name, f"answered HTTP {resp.status_code}")
                    await deliver(reply)
                elif not resp.headers.get("content-type", "").startswith("text/event-stream"):
                    await deliver(await self._read_reply(resp, -1, None))
                else:
                    async with contextlib.aclosing(sse.read_events(resp.aiter_bytes())) as events:
                        async for ev in events:
                            with contextlib.suppress(json.JSONDecodeError):
                                msg = json.loads(ev.data) if ev.data.strip() else None
                                if isinstance(msg, dict):
                                    await deliver(msg)
        except (TransportError, OSError, sse.LineTooLong) as exc:
            raise UpstreamUnavailable(self.name, describe(exc)) from None

    @staticmethod
    async def _error_body(resp: Response) -> dict[str, Any] | None:
        if not resp.headers.get("content-type", "").startswith("application/json"):
            return None
        with contextlib.suppress(Exception):
            msg = json.loads(await resp.aread())
            if isinstance(msg, dict) and isinstance(msg.get("error"), dict):
                return msg
        return None

    async def _read_reply(self, resp: Response, rid: int, on_message: MessageHandler | None) -> dict[str, Any]:
        ctype = resp.headers.get("content-type", "")
        if ctype.startswith("application/json"):
            try:
                msg = json.loads(await resp.aread())
            except ValueError:
                raise UpstreamRefused(self.name, "sent a reply that is not JSON") from None
            if not isinstance(msg, dict):
                raise UpstreamRefused(self.name, "sent a malformed response")
            return msg
        if not ctype.startswith("text/event-stream"):
            raise UpstreamRefused(self.name, f"answered with content type {ctype!r}")
        cursor = _Cursor()
        async with contextlib.aclosing(sse.read_events(resp.aiter_bytes())) as events:
            reply = await self._read_events(events, rid, on_message, cursor)
            if reply is not None:
                # The server ends the stream after the response: read to the end so the pooled
                # connection is reused (a half-read response would close it).
                with contextlib.suppress(TimeoutError, TransportError, sse.LineTooLong):
                    async with asyncio.timeout(1.0):
                        async for _ in events:
                            pass
                return reply
        # The stream closed before the response (SSE polling, SEP-1699): resume it with GET +
        # Last-Event-ID after the server's retry interval, as often as it closes it.
        if cursor.last_id is None:
            raise UpstreamUnavailable(self.name, "closed the stream without a response")
        for _ in range(1000):
            await asyncio.sleep(cursor.retry_ms / 1000)
            headers = {**self._headers(sse_only=True), "Last-Event-ID": cursor.last_id}
            async with self.http.stream("GET", self.url, headers=headers) as resumed:
                if resumed.status_code != 200:
                    raise UpstreamUnavailable(self.name, f"refused to resume (HTTP {resumed.status_code})")
                async with contextlib.aclosing(sse.read_events(resumed.aiter_bytes())) as events:
                    reply = await self._read_events(events, rid, on_message, cursor)
            if reply is not None:
                return reply
        raise UpstreamUnavailable(self.name, "closed the stream without a response")

    async def _read_events(
        self, events: AsyncIterator[sse.Event], rid: int, on_message: MessageHandler | None, cursor: _Cursor
    ) -> dict[str, Any] | None:
        """Read a request's stream up to its response (None: the stream ended before it)."""
        async for ev in events:
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
                await self._post_quiet(wire.error(msg["id"], MCPError(wire.METHOD_NOT_FOUND, "no client to relay to")))
                return
            # Requests run concurrently: the upstream may send several and waits for each.
            task = asyncio.create_task(on_message(msg))
            self._background.add(task)
            task.add_done_callback(self._background.discard)
            return
        if "method" in msg:
            method = msg["method"]
            if (
                method in ("notifications/progress", "notifications/message", "notifications/cancelled")
                and on_message is not None
            ):
                await on_message(msg)
            else:
                await self.on_notification(self, msg)

    async def _listen(self) -> None:
        """The upstream's GET stream: list_changed, resource updates, unrelated requests."""
        backoff, last_id = 0.5, None
        while not self._closed and self.modern is None:
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
                        raise UpstreamUnavailable(self.name, f"GET answered HTTP {resp.status_code}")
                    backoff = 0.5
                    async for ev in sse.read_events(resp.aiter_bytes()):
                        last_id = ev.id or last_id
                        if ev.data.strip():
                            with contextlib.suppress(json.JSONDecodeError):
                                msg = json.loads(ev.data)
                                if isinstance(msg, dict):
                                    await self._on_get_message(msg)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # network trouble: back off and listen again
                log.debug("upstream GET stream ended", extra={"upstream": self.name, "error": describe(exc)})
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 30.0)

    async def _on_get_message(self, msg: dict[str, Any]) -> None:
        if "method" in msg and "id" in msg:
            if msg["method"] == "ping":
                await self._post_quiet(wire.result(msg["id"], {}))
            elif msg["method"] == "roots/list":
                await self._post_quiet(wire.result(msg["id"], {"roots": []}))
            else:
                err = MCPError(wire.METHOD_NOT_FOUND, f"{msg['method']} is only relayed within a client's request")
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


def result_of(reply: dict[str, Any]) -> dict[str, Any]:
    """A response's result, or its error as MCPError."""
    if "error" in reply:
        err = reply["error"] if isinstance(reply["error"], dict) else {}
        raise MCPError(err.get("code", wire.INTERNAL_ERROR), str(err.get("message", "upstream error")), err.get("data"))
    res = reply.get("result")
    return res if isinstance(res, dict) else {}


def describe(exc: BaseException) -> str:
    """What went wrong reaching an upstream, for the log (never for a client: see UpstreamUnavailable)."""
    if isinstance(exc, UpstreamUnavailable):
        return exc.detail
    return str(exc) or exc.__class__.__name__


@dataclass
class _Cursor:
    """Where a request's SSE stream got to: the id to resume after, and the server's retry."""

    last_id: str | None = None
    retry_ms: int = 1000
