"""Child processes the gateway runs (stdio MCP servers): started with exactly the environment the
operator named, in a process group of their own, never outliving the gateway, their stderr kept
within bounds.

- ``child_environment(env, passthrough)``: the child's whole environment: the ``env`` the operator
  wrote plus the gateway's variables named in ``passthrough`` (missing ones are left out); nothing
  else of the gateway's environment reaches the child (not PATH, not HOME: name them).
- ``spawn(argv, env, cwd)``: the command under a keeper (``gateway/core/child_keeper.py``), the
  leader of a new process group that ends the whole group when the gateway dies, even by SIGKILL
  (the parent-death signal). A bare command name is looked up on the child's PATH, else the
  gateway's (the lookup only: the environment stays what was named). stdin, stdout and stderr are
  pipes; stdout lines may be up to ``line_limit`` bytes.
- ``stop(proc, grace_s)``: stdin closed (the MCP stdio shutdown), then SIGTERM to the group after
  ``grace_s``, then SIGKILL to the group; whatever the child started goes too.
- ``StderrLog``: a child's stderr into the gateway's log, one record per line, tagged with the
  child's name, at most ``rate`` lines a second (bursts of ``burst``); past that lines are counted,
  not logged, and the count is logged once the flood ebbs (of a read holding more than ``tail``
  lines only the last ``tail`` are looked at). The last ``tail`` lines are kept for status pages.
  A line is cut at ``max_line`` characters.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import shutil
import signal
import sys
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

KEEPER = str(Path(__file__).with_name("child_keeper.py"))


def child_environment(
    env: Mapping[str, str], passthrough: Iterable[str], source: Mapping[str, str] | None = None
) -> dict[str, str]:
    source = os.environ if source is None else source
    out = {name: source[name] for name in passthrough if name in source}
    out.update(env)
    return out


def resolve(command: str, env: Mapping[str, str]) -> str:
    """``command`` as a path: a bare name is looked up on the child's PATH, else the gateway's."""
    if os.sep in command:
        return command
    return shutil.which(command, path=env.get("PATH") or os.environ.get("PATH")) or command


async def spawn(
    argv: list[str] | tuple[str, ...],
    env: Mapping[str, str],
    cwd: str | None = None,
    *,
    grace_s: float = 5.0,
    line_limit: int = 16 * 1024 * 1024,
) -> asyncio.subprocess.Process:
    """Start ``argv`` under its keeper (see the module docstring); OSError if that cannot start
    (a missing ``cwd``); a command that cannot start ends its keeper with status 127."""
    command = [resolve(argv[0], env), *argv[1:]]
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-I",
        "-S",
        KEEPER,
        str(os.getpid()),
        f"{grace_s:g}",
        "" if "LC_CTYPE" in env else "LC_CTYPE",  # see child_keeper.py
        "--",
        *command,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=dict(env),
        cwd=cwd,
        start_new_session=True,
        limit=line_limit,
    )


def kill_group(proc: asyncio.subprocess.Process, sig: int = signal.SIGKILL) -> None:
    """``sig`` to the child's process group (its keeper's pid). Also right after the keeper has
    exited: a group id is not reused while any member lives, so this reaches leftovers only."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


async def stop(proc: asyncio.subprocess.Process, grace_s: float = 5.0) -> None:
    """End the child and its group: stdin closed, SIGTERM after ``grace_s``, SIGKILL after another."""
    if proc.stdin is not None and not proc.stdin.is_closing():
        proc.stdin.close()
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            await asyncio.wait_for(proc.wait(), grace_s)
            break
        except TimeoutError:
            kill_group(proc, sig)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(proc.wait(), grace_s)
    kill_group(proc)


class StderrLog:
    """A child's stderr into ``log`` (see the module docstring)."""

    def __init__(
        self,
        name: str,
        log: logging.Logger,
        *,
        rate: float = 20.0,
        burst: int = 200,
        tail: int = 50,
        max_line: int = 2000,
    ) -> None:
        self.name, self.log = name, log
        self.rate, self.burst, self.max_line = rate, burst, max_line
        self.tail: collections.deque[str] = collections.deque(maxlen=tail)
        self.dropped = 0  # lines not logged since the last report
        self.dropped_total = 0
        self._tokens, self._at = float(burst), time.monotonic()

    async def drain(self, stream: asyncio.StreamReader) -> None:
        """Read ``stream`` to its end (always: a child blocked on a full pipe would hang)."""
        partial = b""
        while chunk := await stream.read(65536):
            lines = (partial + chunk).split(b"\n")
            partial = lines.pop()[: self.max_line * 4]
            # Only the last ``tail`` lines of a chunk are looked at: more in one read is a flood,
            # and decoding it all would cost the gateway what the flood is worth.
            skip = max(0, len(lines) - self.tail.maxlen)
            self._drop(skip)
            for raw in lines[skip:]:
                self.line(raw)
        if partial:
            self.line(partial)
        self._report()

    def line(self, raw: bytes) -> None:
        text = raw.decode("utf-8", "replace").rstrip("\r")[: self.max_line]
        if not text.strip():
            return
        self.tail.append(text)
        now = time.monotonic()
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now
        if self._tokens < 1:
            self._drop(1)
            return
        self._tokens -= 1
        self._report()
        self.log.info(text, extra={"upstream": self.name, "stream": "stderr"})

    def _drop(self, n: int) -> None:
        self.dropped += n
        self.dropped_total += n

    def _report(self) -> None:
        if self.dropped:
            self.log.warning(
                "stderr lines not logged (too many)", extra={"upstream": self.name, "dropped": self.dropped}
            )
            self.dropped = 0
