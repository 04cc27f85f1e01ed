"""A remote agent's event stream, read in a task of its own (for the outbound connectors).

A connector's handler can be canceled before the remote agent has named its task or run. With
the stream read elsewhere, the handler's cancel path can still wait (briefly) for that name,
which ``on_item`` records as items arrive, and then cancel the remote side.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Generic, TypeVar

T = TypeVar("T")

_END = object()


class RemoteStream(Generic[T]):
    def __init__(self, source: AsyncIterator[T], name: str, on_item: Callable[[T], None] | None = None) -> None:
        self._queue: asyncio.Queue = asyncio.Queue()
        self._reader = asyncio.create_task(self._read(source, on_item), name=name)

    async def _read(self, source: AsyncIterator[T], on_item: Callable[[T], None] | None) -> None:
        try:
            async for item in source:
                if on_item is not None:
                    on_item(item)
                await self._queue.put(item)
            await self._queue.put(_END)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            await self._queue.put(exc)

    async def items(self) -> AsyncIterator[T]:
        """The items in order; an error of the source is raised here, after the items before it."""
        while (item := await self._queue.get()) is not _END:
            if isinstance(item, BaseException):
                raise item
            yield item

    def close(self, *, finished: bool) -> None:
        """Stop reading. After its final event the remote ends the stream by itself: then the
        reader gets 5 s to read it to the end, so the pooled connection is reused."""
        if self._reader.done():
            return
        if finished:
            asyncio.get_running_loop().call_later(5.0, self._reader.cancel)
        else:
            self._reader.cancel()
