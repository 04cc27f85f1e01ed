"""The Streamable HTTP binding of ``/mcp``, both eras on one path.

``StreamableHTTP`` turns HTTP into calls of the MCP methods (methods.py). It checks Host and
Origin (DNS-rebinding defence) and the media types of every request, then picks the era: a POST
that ``modern.is_modern`` (its ``_meta`` names a protocol version, its ``MCP-Protocol-Version``
header is 2026-07-28, or it is ``server/discover``) goes to the stateless binding
(stateless_http.py) without any session lookup; everything else is the 2025-11-25 handshake era
(also 2025-06-18 and 2025-03-26), served here: ``POST`` carries one JSON-RPC message (a request,
a notification or a response to one of our requests; ``initialize`` opens a session), ``GET``
opens the session's stream of server-initiated messages or resumes a stream, ``DELETE`` ends the
session, each checked for its ``MCP-Protocol-Version`` and ``Mcp-Session-Id`` headers. A ``GET``
or ``DELETE`` without a session (or with the 2026-07-28 version header) gets 405: they belong to
sessions.

A POST's reply is ``application/json`` when the first thing the handler produces is its
result, and ``text/event-stream`` otherwise (priming event, then every message with an id
``{stream}-{seq}``, stored in the shared key/value store so ``GET`` + ``Last-Event-ID`` resumes
it on any node). Events are framed, kept alive and bounded in time by ``gateway.core.sse``.

Quotas (``gateway.core.quotas``): ``initialize`` past the caller's quota of sessions, a request
whose task a quota refuses, and a GET stream past the quota of open streams are answered 429
with ``Retry-After`` and the JSON-RPC error -31029 (``data.retryAfter``). A POST's SSE reply is
not counted as an open stream: it lasts one request, bounded by the task quotas and the call
timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from gateway.core import sse
from gateway.core.principal import LOCAL, principal_of
from gateway.core.quotas import QuotaExceeded
from protocols.mcp import modern, wire
from protocols.mcp.methods import MCPCall, MCPService
from protocols.mcp.stateless_http import StatelessHTTP
from protocols.mcp.wire import INVALID_REQUEST, MCPError

LOOPBACK_HOSTS = ("127.0.0.1:*", "localhost:*", "[::1]:*")
KEEPALIVE_S = 15.0  # a comment line after this long without an event
SESSION_CHECK_S = 30.0  # a GET stream checks this often whether its session ended on another node

Item = tuple[str | None, dict[str, Any], bool]  # (event id, message, final)


class Outbox:
    """Everything one POST sends back: JSON if the result comes first, else an SSE stream."""

    def __init__(self, service: MCPService, sid: str, sse_ok: bool) -> None:
        self.service, self.sid, self.sse_ok = service, sid, sse_ok
        self.queue: asyncio.Queue[Item] = asyncio.Queue()
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
        await self.service.events.put(self.sid, self.stream, seq, msg, final=final)


def _host_matches(host: str, pattern: str) -> bool:
    if pattern == "*" or host == pattern:
        return True
    if pattern.endswith(":*"):
        base = pattern[:-2]
        return host == base or (host.startswith(base + ":") and host[len(base) + 1 :].isdigit())
    return False


def _message(event_id: str, msg: dict[str, Any]) -> bytes:
    return sse.encode(msg, id=event_id, event="message")


def _rpc_error(status: int, code: int, message: str, id: Any = None, headers: dict | None = None) -> JSONResponse:
    return JSONResponse(wire.error(id, MCPError(code, message)), status_code=status, headers=headers)


def _event_stream(body: AsyncIterator[bytes], release: Callable[[], None] | None = None) -> StreamingResponse:
    return sse.HeldStream(body, media_type="text/event-stream", headers=dict(sse.HEADERS), release=release)


def _reply(msg: dict[str, Any], headers: dict[str, str] | None = None) -> JSONResponse:
    """A JSON-RPC reply as JSON: HTTP 429 with ``Retry-After`` when a quota refused the request."""
    error = msg.get("error") or {}
    if error.get("code") == wire.RATE_LIMITED:
        retry = str((error.get("data") or {}).get("retryAfter", 1))
        return JSONResponse(msg, status_code=429, headers={**(headers or {}), "Retry-After": retry})
    return JSONResponse(msg, headers=headers)


class StreamableHTTP:
    """``/mcp`` over Streamable HTTP for one ``MCPService``."""

    def __init__(self, service: MCPService) -> None:
        self.service = service
        options, cfg = service.options, service.runtime.config
        hosts = options.allowed_hosts
        if hosts is None:
            hosts = LOOPBACK_HOSTS
            if cfg.host not in ("0.0.0.0", "::", "", "127.0.0.1", "localhost"):
                hosts = (*hosts, f"{cfg.host}:*")
        self.allowed_hosts: tuple[str, ...] = tuple(hosts)
        self.allowed_origins = options.allowed_origins
        self.retry_ms = options.sse_retry_ms
        self.sse_max_s = options.sse_max_s or cfg.sse_max_s
        self.stateless = StatelessHTTP(service, self.sse_max_s)

    # ---- checks --------------------------------------------------------------------------------

    def _check_origin(self, request: Request) -> Response | None:
        """DNS-rebinding defence: 421 for a foreign Host, 403 for a foreign Origin."""
        allowed = self.allowed_hosts
        host = request.headers.get("host", "")
        if not any(_host_matches(host, p) for p in allowed):
            return _rpc_error(421, INVALID_REQUEST, "Invalid Host header")
        origin = request.headers.get("origin")
        if origin is not None and origin not in self.allowed_origins:
            parts = urlsplit(origin)
            ok = parts.scheme in ("http", "https") and any(_host_matches(parts.netloc, p) for p in allowed)
            if not ok:
                return _rpc_error(403, INVALID_REQUEST, "Invalid Origin header")
        return None

    @staticmethod
    def _check_version(request: Request) -> Response | None:
        version = request.headers.get("mcp-protocol-version")
        if version is not None and version not in wire.SUPPORTED_VERSIONS:
            return _rpc_error(
                400,
                INVALID_REQUEST,
                f"Unsupported protocol version: {version} (supported: {', '.join(wire.SUPPORTED_VERSIONS)})",
            )
        return None

    async def _session(self, request: Request) -> tuple[str, dict[str, Any]] | Response:
        """The request's session (after its MCP-Protocol-Version header is checked), or the error."""
        bad = self._check_version(request)
        if bad is not None:
            return bad
        sid = request.headers.get("mcp-session-id")
        if not sid:
            return _rpc_error(400, INVALID_REQUEST, "Bad Request: Missing session ID")
        if len(sid) > 128 or not sid.isascii():
            return _rpc_error(404, INVALID_REQUEST, "Session not found")
        record = await self.service.sessions.get(sid)
        # A session belongs to the caller that opened it: to anyone else it does not exist.
        if record is None or record.get("who", LOCAL.id) != principal_of(request).id:
            return _rpc_error(404, INVALID_REQUEST, "Session not found")
        self.service.runtime.quotas.session_used(sid, self.service.options.session_ttl_s)
        return sid, record

    # ---- HTTP methods --------------------------------------------------------------------------

    async def endpoint(self, request: Request) -> Response:
        bad = self._check_origin(request)
        if bad is not None:
            return bad
        if request.method == "POST":
            return await self._post(request)
        headers = request.headers
        if not headers.get("mcp-session-id") or headers.get("mcp-protocol-version") in wire.MODERN_VERSIONS:
            # GET and DELETE belong to sessions; a modern client has none
            return _rpc_error(405, INVALID_REQUEST, f"{request.method} needs a session", headers={"Allow": "POST"})
        if request.method == "GET":
            return await self._get(request)
        return await self._delete(request)

    async def _post(self, request: Request) -> Response:
        ctype = request.headers.get("content-type", "application/json")
        if "json" not in ctype:
            return _rpc_error(415, INVALID_REQUEST, "Unsupported Media Type: Content-Type must be application/json")
        accept = request.headers.get("accept", "*/*")
        sse_ok = "text/event-stream" in accept or "*/*" in accept
        if not (sse_ok or "application/json" in accept or "application/*" in accept):
            return _rpc_error(406, INVALID_REQUEST, "Not Acceptable: accept application/json and text/event-stream")
        try:
            msg = wire.parse(await request.body())
            kind = wire.classify(msg)
        except MCPError as exc:
            return JSONResponse(wire.error(None, exc), status_code=400)
        if modern.is_modern(msg, request.headers):
            return await self.stateless.post(request, msg, kind, sse_ok)
        if kind == "request" and msg["method"] == "initialize":
            try:
                sid, result = await self.service.initialize(msg.get("params") or {}, principal_of(request))
            except MCPError as exc:
                return JSONResponse(wire.error(msg["id"], exc))
            except QuotaExceeded as exc:
                return _reply(wire.error(msg["id"], wire.rate_limited(str(exc), exc.retry_after)))
            return JSONResponse(wire.result(msg["id"], result), headers={"Mcp-Session-Id": sid})
        found = await self._session(request)
        if isinstance(found, Response):
            return found
        sid, session = found
        if kind == "notification":
            await self.service.notification(sid, msg)
            return Response(status_code=202)
        if kind == "response":
            await self.service.response(sid, msg)
            return Response(status_code=202)
        return await self._request(request, sid, session, msg, sse_ok)

    async def _request(
        self, request: Request, sid: str, session: dict[str, Any], msg: dict[str, Any], sse_ok: bool
    ) -> Response:
        out = Outbox(self.service, sid, sse_ok)
        self.service.dispatch(MCPCall(self.service, sid, session, msg, out, principal_of(request)))
        first = await out.queue.get()
        if first[2] and out.mode == "json":
            return _reply(first[1])
        return _event_stream(self._stream(out, first, session.get("v", wire.DEFAULT_HEADER_VERSION)))

    async def _stream(self, out: Outbox, first: Item, version: str) -> AsyncIterator[bytes]:
        """A POST's SSE reply: priming event, then its messages up to the response (or the
        deadline: the client resumes with GET + Last-Event-ID)."""

        async def items() -> AsyncIterator[Item]:
            item = first
            while True:
                yield item
                if item[2]:
                    return
                item = await out.queue.get()

        if version >= wire.PRIMING_SINCE:
            yield sse.encode("", id=f"{out.stream}-0", retry_ms=self.retry_ms)
        paced = sse.paced(items(), max_seconds=self.sse_max_s, keepalive_s=KEEPALIVE_S)
        async with contextlib.aclosing(paced) as stream:
            async for item in stream:
                if item is None:
                    yield sse.KEEPALIVE
                else:
                    event_id, msg, _ = item
                    yield _message(event_id or "", msg)

    async def _get(self, request: Request) -> Response:
        if "text/event-stream" not in request.headers.get("accept", ""):
            return _rpc_error(406, INVALID_REQUEST, "Not Acceptable: GET needs Accept: text/event-stream")
        found = await self._session(request)
        if isinstance(found, Response):
            return found
        sid, _ = found
        events = self.service.events
        last = request.headers.get("last-event-id")
        if last:
            stream, _, seq = last.rpartition("-")
            if not stream or not seq.isdigit() or not await events.exists(sid, stream, int(seq)):
                return _rpc_error(400, INVALID_REQUEST, "Unknown Last-Event-ID")
            if stream != "g":
                release = self._open_stream(request)
                if isinstance(release, Response):
                    return release
                return _event_stream(self._replay(sid, stream, int(seq)), release)
        streams = self.service.get_streams
        if sid in streams:
            return _rpc_error(409, INVALID_REQUEST, "Conflict: this session already has a GET stream")
        release = self._open_stream(request)
        if isinstance(release, Response):
            return release
        closed = asyncio.Event()
        streams[sid] = closed
        self.service.listeners[sid] = principal_of(request)  # what it may be told depends on who it is
        try:
            after = int(last.rpartition("-")[2]) if last else await events.get_head(sid)
        except BaseException:
            release()
            raise
        return _event_stream(self._standalone(sid, after, closed), release)

    def _open_stream(self, request: Request) -> Callable[[], None] | Response:
        """The caller's place among its open streams (what closes it), or the 429 refusal."""
        try:
            return self.service.runtime.acting_for(principal_of(request)).open_stream()
        except QuotaExceeded as exc:
            return _reply(wire.error(None, wire.rate_limited(str(exc), exc.retry_after)))

    async def _replay(self, sid: str, stream: str, after: int) -> AsyncIterator[bytes]:
        """A POST stream resumed after ``after``, up to its response."""
        deadline = time.monotonic() + self.sse_max_s
        async for seq, msg in self.service.events.follow(sid, stream, after, deadline):
            yield _message(f"{stream}-{seq}", msg)

    async def _standalone(self, sid: str, after: int, closed: asyncio.Event) -> AsyncIterator[bytes]:
        """The session's GET stream, until DELETE (``closed``), the session's end on another node,
        or the deadline. ``paced`` ticks every second, so a closed stream ends within one."""
        service = self.service
        follow = service.events.follow(sid, "g", after, time.monotonic() + self.sse_max_s)
        paced = sse.paced(follow, max_seconds=self.sse_max_s, keepalive_s=1.0)
        try:
            yield sse.encode("", id=f"g-{after}", retry_ms=self.retry_ms)
            last_write = checked = time.monotonic()
            async with contextlib.aclosing(paced) as ticks:
                async for item in ticks:
                    if item is not None:
                        seq, msg = item
                        yield _message(f"g-{seq}", msg)
                        last_write = time.monotonic()
                    elif time.monotonic() - last_write > KEEPALIVE_S:
                        yield sse.KEEPALIVE
                        last_write = time.monotonic()
                    if closed.is_set():
                        return
                    if time.monotonic() - checked > SESSION_CHECK_S:  # terminated on another node?
                        checked = time.monotonic()
                        if await service.sessions.get(sid) is None:
                            return
        finally:
            if service.get_streams.get(sid) is closed:
                del service.get_streams[sid]
                service.listeners.pop(sid, None)

    async def _delete(self, request: Request) -> Response:
        found = await self._session(request)
        if isinstance(found, Response):
            return found
        sid, _ = found
        await self.service.end_session(sid)
        return Response(status_code=200)
