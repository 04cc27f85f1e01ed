"""Small asyncio helpers."""

from __future__ import annotations

import asyncio


async def wait_cancelled(task: asyncio.Task) -> None:
    """Cancel ``task`` and wait until it has finished unwinding."""
    task.cancel()
    try:
        await task
    except (asyncio.CancelledError, Exception):
        pass
