"""SIGHUP: "re-read your files". One handler per event loop calls every reloader registered.

An event loop keeps one handler per signal, so each file that reloads on SIGHUP (the policy,
the API keys) registers here instead of with the loop. A reloader that raises is logged and the
others still run. Where the loop cannot take signals (another thread, Windows), ``on_hangup``
returns False and the caller relies on its other trigger (a file watch) alone.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable

log = logging.getLogger("interlace.hangup")

_reloaders: dict[asyncio.AbstractEventLoop, list[Callable[[], object]]] = {}


def on_hangup(reloader: Callable[[], object]) -> bool:
    """Call ``reloader()`` on each SIGHUP to the running loop's process; False if it cannot."""
    hup = getattr(signal, "SIGHUP", None)
    loop = asyncio.get_running_loop()
    if hup is None:
        return False
    if loop not in _reloaders:
        try:
            loop.add_signal_handler(hup, _hangup, loop)
        except (NotImplementedError, RuntimeError, ValueError):  # Windows; not the main thread
            return False
        _reloaders[loop] = []
    _reloaders[loop].append(reloader)
    return True


def off_hangup(reloader: Callable[[], object]) -> None:
    """Stop calling ``reloader``; the loop's handler goes with the last one."""
    loop = asyncio.get_running_loop()
    reloaders = _reloaders.get(loop, [])
    if reloader in reloaders:
        reloaders.remove(reloader)
    if not reloaders and loop in _reloaders:
        del _reloaders[loop]
        loop.remove_signal_handler(signal.SIGHUP)


def _hangup(loop: asyncio.AbstractEventLoop) -> None:
    for reloader in list(_reloaders.get(loop, [])):
        try:
            reloader()
        except Exception:
            log.exception("a SIGHUP reload failed")
