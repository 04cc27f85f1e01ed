"""Server-Sent Events, both ways: the one reader and the one writer every adapter uses.

Reading (``read_events``) follows the WHATWG event-stream rules: lines end with CRLF, LF or CR
(a CRLF split between two chunks is one line end), ``data`` lines are joined with newlines, a
comment line (``:``) is skipped, an event is dispatched at a blank line, and ``id``, ``event``
and ``retry`` are kept per event. It takes raw byte chunks, so it serves httpx
(``aiter_bytes()``) and aiohttp (``content.iter_any()``) alike, and it bounds a line, and an
event's data, at ``max_line`` bytes: a peer cannot make the gateway buffer an endless line or
event (``LineTooLong``).

Writing: ``encode`` frames one event; ``paced`` turns a source of items into a stream with
keep-alive ticks and a deadline; ``sse_response`` is the Starlette response built from both.
``HeldStream`` gives back what a stream holds (its place in the caller's quota of open streams,
``ActingFor.open_stream``) however the stream ends.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

T = TypeVar("T")

KEEPALIVE = b": keep-alive\n\n"
HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
MAX_LINE = 16 * 1024 * 1024


class LineTooLong(ValueError):
    """An event-stream line passed the reader's bound."""


@dataclass
class Event:
    data: str
    id: str | None = None
    event: str | None = None
    retry: int | None = None

    def json(self) -> Any:
        return json.loads(self.data)


async def read_lines(chunks: AsyncIterator[bytes], max_line: int = MAX_LINE) -> AsyncIterator[str]:
    """The lines of an event stream, decoded as UTF-8 (invalid bytes replaced)."""
    pending = bytearray()
    after_cr = False
    async for chunk in chunks:
        if after_cr and chunk.startswith(b"\n"):
            chunk = chunk[1:]
        after_cr = chunk.endswith(b"\r")
        *complete, rest = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")
        for line in complete:
            pending += line
            if len(pending) > max_line:
                raise LineTooLong(f"an event-stream line passed {max_line} bytes")
            yield pending.decode("utf-8", "replace")
            pending.clear()
        pending += rest
        if len(pending) > max_line:
            raise LineTooLong(f"an event-stream line passed {max_line} bytes")
    if pending:
        yield pending.decode("utf-8", "replace")


async def read_events(chunks: AsyncIterator[bytes], max_line: int = MAX_LINE) -> AsyncIterator[Event]:
    """The events of an event stream; a last event without its blank line is still dispatched.
    An event's data, however many lines it spans, is bounded by ``max_line`` too."""
    event_id = name = retry = None
    data: list[str] = []
    size = 0
    seen = False
    async for line in read_lines(chunks, max_line):
        if line == "":
            if seen:
                yield Event("\n".join(data), event_id, name, retry)
            event_id = name = retry = None
            data, size, seen = [], 0, False
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        seen = True
        if field == "data":
            size += len(value) + 1
            if size > max_line:
                raise LineTooLong(f"an event's data passed {max_line} bytes")
            data.append(value)
        elif field == "id":
            event_id = value
        elif field == "event":
            name = value
        elif field == "retry" and value.isdigit():
            retry = int(value)
    if seen and data:
        yield Event("\n".join(data), event_id, name, retry)


def encode(data: Any, *, id: str | None = None, event: str | None = None, retry_ms: int | None = None) -> bytes:
    """One event; ``data`` is a string as is, anything else as compact JSON. Empty data is sent
    as one empty ``data:`` line (an MCP priming event)."""
    lines = []
    if id:
        lines.append(f"id: {id}")
    if retry_ms is not None:
        lines.append(f"retry: {retry_ms}")
    if event:
        lines.append(f"event: {event}")
    payload = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"), ensure_ascii=False)
    lines.extend(f"data: {line}" for line in payload.split("\n"))
    return ("\n".join(lines) + "\n\n").encode()


async def paced(source: AsyncIterator[T], *, max_seconds: float, keepalive_s: float) -> AsyncIterator[T | None]:
    """``source``'s items, with ``None`` whenever ``keepalive_s`` passes without one, until the
    source ends or ``max_seconds`` have passed."""
    deadline = time.monotonic() + max_seconds
    it = source.__aiter__()
    pending: asyncio.Future | None = None
    try:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            if pending is None:
                pending = asyncio.ensure_future(it.__anext__())
            done, _ = await asyncio.wait({pending}, timeout=min(keepalive_s, remaining))
            if not done:
                yield None
                continue
            try:
                item = pending.result()
            except StopAsyncIteration:
                return
            finally:
                pending = None
            yield item
    finally:
        if pending is not None:
            pending.cancel()


EventTuple = tuple[str | None, str | None, Any]  # (id, event name, data)


class HeldStream(StreamingResponse):
    """A streaming response that calls ``release`` once it has ended, however it ends (finished,
    timed out, the client gone)."""

    def __init__(self, content: Any, *, release: Callable[[], None] | None = None, **kw: Any) -> None:
        super().__init__(content, **kw)
        self.release = release

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            if self.release is not None:
                self.release()


def sse_response(
    events: AsyncIterator[EventTuple],
    *,
    max_seconds: float,
    keepalive_s: float = 15.0,
    on_close: Callable[[], Awaitable[None]] | None = None,
    release: Callable[[], None] | None = None,
) -> StreamingResponse:
    """Server-Sent Events with keep-alive comments and a bound on the stream's duration;
    ``release`` is called once the response has ended (``HeldStream``)."""

    async def body() -> AsyncIterator[bytes]:
        try:
            async for item in paced(events, max_seconds=max_seconds, keepalive_s=keepalive_s):
                if item is None:
                    yield KEEPALIVE
                else:
                    event_id, name, data = item
                    yield encode(data, id=event_id, event=name)
        finally:
            if on_close is not None:
                await on_close()

    return HeldStream(body(), media_type="text/event-stream", headers=dict(HEADERS), release=release)
