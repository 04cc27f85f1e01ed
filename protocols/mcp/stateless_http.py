"""The 2026-07-28 (modern, stateless) binding of ``/mcp``: one POST, one request, no session.

``StreamableHTTP`` (streamable_http.py) hands a POST here when ``modern.is_modern`` says so,
after the checks both eras share (Host and Origin, media types, JSON-RPC framing). Nothing here
reads or writes a session: the request's envelope says what the client is, the principal who
the caller is, so any node answers any request, and the request touches only the shared state
its method needs (the runtime's tasks, the change feed).

- A notification gets 202 and is dropped: this revision defines none from client to server on
  HTTP (cancellation is closing the response stream). A client response gets 400 (-32600).
- A request is checked first (``modern.envelope``; a failure is answered with HTTP 400 and
  nothing runs), then run as its caller (``MCPCall.modern``). Its answer goes back as JSON with
  the HTTP status of ``modern.http_status``, unless it sends progress or log messages first:
  then as an SSE stream of those messages followed by the answer (``X-Accel-Buffering: no``,
  keep-alive comments, at most ``sse_max_s``; no event ids: nothing is resumable). When the
  client closes the connection before the answer, the request is cancelled (a relayed call
  upstream too, an agent's task is canceled) and nothing more is sent for it. This is the
  cheapest path through ``/mcp``: no store is read or written for the request itself, and a
  request answered within ``WATCH_AFTER_S`` costs one task (a slower one also gets a watcher of
  its connection).
- ``subscriptions/listen`` gets an SSE stream: the acknowledgement first, then the change
  notifications its filter asks for (listen.py), until the client closes it, the gateway shuts
  down or ``sse_max_s`` passes (those two end with the listen request's result, a graceful
  close). It counts among the caller's open streams (``gateway.core.quotas``): past that quota,
  or when a task quota refuses a request, the answer is 429 with ``Retry-After`` and the error
  -31029 (``data.retryAfter``), as in the handshake era.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from gateway.core import sse
from gateway.core.principal import principal_of
from gateway.core.quotas import QuotaExceeded
from protocols.mcp import modern, wire
from protocols.mcp.listen import CLOSED, LOST, Filter
from protocols.mcp.methods import MCPCall, MCPService
from protocols.mcp.wire import INVALID_REQUEST, MCPError

KEEPALIVE_S = 15.0
WATCH_AFTER_S = 0.05
CLIENT_GONE = 499  # the status no one reads: the client closed the connection first

Message = tuple[dict[str, Any], bool]  # (message, it is the answer)


class ResponseStream:
    """What one modern request sends back, in order, its answer last (the ``Outbound`` of its
    ``MCPCall``); ``started`` resolves with the first message."""

    def __init__(self, sse_ok: bool) -> None:
        self.sse_ok = sse_ok
        self.queue: asyncio.Queue[Message] = asyncio.Queue()
        self.started: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    @property
    def can_stream(self) -> bool:
        return self.sse_ok

    async def send(self, msg: dict[str, Any], final: bool = False) -> None:
        if not (final or self.sse_ok):
            return  # a client that takes JSON only gets the answer alone
        self.queue.put_nowait((msg, final))
        if not self.started.done():
            self.started.set_result(None)


async def _disconnected(request: Request) -> None:
    """Return once the client has closed the connection (its body was read already)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def _json(reply: dict[str, Any]) -> JSONResponse:
    status = modern.http_status(reply)
    if status == 429:  # a quota refused it: when to try again
        retry = str(reply["error"]["data"]["retryAfter"])
        return JSONResponse(reply, status_code=status, headers={"Retry-After": retry})
    return JSONResponse(reply, status_code=status)


def _event_stream(body: AsyncIterator[bytes], release: Callable[[], None]) -> StreamingResponse:
    """An SSE response; ``release`` runs once it has ended, however it ended."""
    return sse.HeldStream(body, media_type="text/event-stream", headers=dict(sse.HEADERS), release=release)


class StatelessHTTP:
    """Modern POSTs to ``/mcp`` for one ``MCPService``."""

    def __init__(self, service: MCPService, sse_max_s: float) -> None:
        self.service, self.sse_max_s = service, sse_max_s

    async def post(self, request: Request, msg: dict[str, Any], kind: str, sse_ok: bool) -> Response:
        if kind == "notification":
            return Response(status_code=202)
        if kind == "response":
            return _json(wire.error(msg["id"], MCPError(INVALID_REQUEST, "a 2026-07-28 client sends no responses")))
        try:
            envelope = modern.envelope(msg, request.headers)
        except MCPError as exc:
            return _json(wire.error(msg["id"], exc))
        out = ResponseStream(sse_ok)
        call = MCPCall.modern(self.service, msg, out, principal_of(request), envelope)
        if call.method == "subscriptions/listen":
            return await self._listen(call, sse_ok)
        return await self._request(request, call, out)

    # ---- one request, one answer ----------------------------------------------------------------

    async def _request(self, request: Request, call: MCPCall, out: ResponseStream) -> Response:
        job = asyncio.create_task(self._answer(call, out))
        try:
            # Most answers come at once: only a request still silent after WATCH_AFTER_S gets a
            # watcher for its connection (a client that left meanwhile is seen as gone at once).
            await asyncio.wait((out.started,), timeout=WATCH_AFTER_S)
            if not out.started.done():
                gone = asyncio.create_task(_disconnected(request))
                try:
                    await asyncio.wait((out.started, gone), return_when=asyncio.FIRST_COMPLETED)
                finally:
                    gone.cancel()
        except asyncio.CancelledError:  # the server is going away: so is the request
            job.cancel()
            raise
        if not out.started.done():  # the client left before anything was sent: cancel the request
            job.cancel()
            return Response(status_code=CLIENT_GONE)
        first = out.queue.get_nowait()
        if first[1]:
            return _json(first[0])
        # The stream's end cancels the request, even a stream that never started (the client left).
        return _event_stream(self._stream(out, job, first), job.cancel)

    async def _answer(self, call: MCPCall, out: ResponseStream) -> None:
        await out.send(await self.service.answer(call), final=True)

    async def _stream(self, out: ResponseStream, job: asyncio.Task, first: Message) -> AsyncIterator[bytes]:
        async def messages() -> AsyncIterator[Message]:
            item = first
            while True:
                yield item
                if item[1]:
                    return
                item = await out.queue.get()

        try:
            paced = sse.paced(messages(), max_seconds=self.sse_max_s, keepalive_s=KEEPALIVE_S)
            async with contextlib.aclosing(paced) as stream:
                async for item in stream:
                    yield sse.KEEPALIVE if item is None else sse.encode(item[0])
        finally:
            job.cancel()  # nothing once answered; else the stream closed first: the request is cancelled

    # ---- subscriptions/listen ---------------------------------------------------------------------

    async def _listen(self, call: MCPCall, sse_ok: bool) -> Response:
        if not sse_ok:
            refused = MCPError(INVALID_REQUEST, "subscriptions/listen answers with text/event-stream: accept it")
            return JSONResponse(wire.error(call.id, refused), status_code=406)
        try:
            wanted = Filter.parse(call.params)
            if wanted.task_ids:
                self.service.tasks.check_listen(call)  # -32021 without the tasks extension
            release = call.rt.open_stream()  # a listen stream counts among the caller's open streams
        except MCPError as exc:
            return _json(self.service.modern_reply(call, wire.error(call.id, exc)))
        except QuotaExceeded as exc:
            refused = wire.error(call.id, wire.rate_limited(str(exc), exc.retry_after))
            return _json(self.service.modern_reply(call, refused))
        return _event_stream(self._listen_stream(call, wanted), release)

    async def _listen_stream(self, call: MCPCall, wanted: Filter) -> AsyncIterator[bytes]:
        """The stream's body; the subscription exists while it runs (a stream that never started
        never subscribed)."""
        listener = await self.service.listen_open(call, wanted)

        async def items() -> AsyncIterator[dict[str, Any] | str]:
            while True:
                item = await listener.queue.get()
                yield item
                if isinstance(item, str):
                    return

        closing = sse.encode(self.service.modern_reply(call, listener.closing()))
        try:
            acknowledged = {"notifications": listener.filter.acknowledged()}
            yield sse.encode(listener.notification("notifications/subscriptions/acknowledged", acknowledged))
            paced = sse.paced(items(), max_seconds=self.sse_max_s, keepalive_s=KEEPALIVE_S)
            async with contextlib.aclosing(paced) as stream:
                async for item in stream:
                    if item is None:
                        yield sse.KEEPALIVE
                    elif item == LOST:
                        return
                    elif item == CLOSED:
                        break
                    else:
                        yield sse.encode(item)
            yield closing  # the gateway ends the subscription (shutdown or the deadline): gracefully
        finally:
            self.service.listen_close(listener)
