"""Files the gateway reloads while it runs (the policy, the MCP upstreams): changes are seen by
polling ``stat`` (device, inode, size, mtime), and a change is acted on once the file has stood
still for one interval, so a half-written file is rarely read.

``file_version(path)`` is what is compared (None: the file is missing). ``watch(path, seen,
reload, interval_s)`` runs until cancelled: ``seen()`` is the version last loaded (the loader
takes it before reading, so a write during the read shows as newer), ``reload()`` (plain or a
coroutine) is called once per new version; what it raises is logged and watching goes on.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger("interlace.files")


def file_version(path: str | Path) -> tuple[int, ...] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


async def watch(
    path: str | Path, seen: Callable[[], tuple[int, ...] | None], reload: Callable[[], Any], interval_s: float
) -> None:
    pending = None  # a new version seen once: loaded when the next poll sees it unchanged
    while True:
        await asyncio.sleep(interval_s)
        version = file_version(path)
        if version == seen():
            pending = None
        elif version != pending:
            pending = version
        else:
            pending = None
            try:
                result = reload()  # tried once per version: a broken file is logged once, not every poll
                if inspect.isawaitable(result):
                    await result
            except Exception:  # a bug, not the file: keep what is in force and keep watching
                log.exception("reload failed", extra={"path": str(path)})
