"""Per-principal quotas: how fast one caller may add tasks, and how much of a node it may hold.

Each quota is counted per principal id on this node (with Redis every node counts its own):

- tasks per second: every task a caller submits or continues (a token bucket: rate and burst);
- concurrent tasks: the caller's tasks submitted or continued on this node and not yet final
  (terminal, or waiting for input); a task that never ends (its agent has no worker) holds its
  place until it is cancelled;
- MCP sessions: the sessions a caller opened on this node, until it ends them (DELETE) or leaves
  them unused for their lifetime;
- SSE streams: event streams open at once, on every face.

A refusal raises ``QuotaExceeded`` before anything happens; ``retry_after`` (whole seconds) says
when to try again, and each face answers 429 with a ``Retry-After`` header in its own shape. The
gateway's own work (``SYSTEM``) is never counted. The defaults (``gateway.core.config``) leave
one caller a small part of what two cores serve, so it cannot starve the others; the loopback
quick start is one caller (``LOCAL``) and gets the same; ``--no-quotas`` lifts them (benchmarks).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from gateway.core.config import Config
from gateway.core.principal import SYSTEM, Principal


@dataclass(frozen=True)
class QuotaLimits:
    tasks_per_s: float
    task_burst: int
    concurrent_tasks: int
    mcp_sessions: int
    sse_streams: int


class QuotaExceeded(Exception):
    """A caller is at one of its quotas; try again after ``retry_after`` seconds."""

    code = "rate_limited"

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = max(1, math.ceil(retry_after))

    @property
    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}


class TokenBucket:
    """Per-key rate limit: ``rate`` tokens a second, up to ``burst``."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate, self.burst = rate, burst
        self._buckets: dict[str, tuple[float, float]] = {}

    def take(self, key: str) -> float:
        """0 when allowed (a token is taken), else the seconds until a token is available."""
        now = time.monotonic()
        tokens, last = self._buckets.get(key, (float(self.burst), now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        if tokens < 1:
            self._buckets[key] = (tokens, now)
            return (1 - tokens) / self.rate
        self._buckets[key] = (tokens - 1, now)
        if len(self._buckets) > 100_000:  # bound memory: forget keys with full buckets
            self._buckets = {k: v for k, v in self._buckets.items() if v[0] < self.burst}
        return 0.0


class TaskClaim:
    """A place among a caller's concurrent tasks, taken before a task is accepted: ``bind`` it
    to the task once the backend has it, or it is given back when the ``with`` block ends."""

    def __init__(self, quotas: Quotas | None, principal_id: str) -> None:
        self._quotas, self._principal_id, self._bound = quotas, principal_id, False

    def bind(self, task_id: str) -> None:
        if self._quotas is not None and not self._bound:
            self._bound = True
            self._quotas._bind(task_id, self._principal_id)

    def _release(self) -> None:
        if self._quotas is not None and not self._bound:
            self._quotas._release(self._principal_id)


class Quotas:
    """This node's counts against ``limits`` (None: no quotas)."""

    def __init__(self, limits: QuotaLimits | None) -> None:
        self.limits = limits
        self._rate = TokenBucket(limits.tasks_per_s, limits.task_burst) if limits else None
        self._running: dict[str, int] = {}  # principal id -> tasks claimed and not final
        self._owners: dict[str, str] = {}  # task id -> the principal id it counts for
        self._streams: dict[str, int] = {}
        # principal id -> {session id: when it lapses unused}, the one lapsing first first
        self._sessions: dict[str, OrderedDict[str, float]] = {}
        self._session_of: dict[str, str] = {}  # session id -> principal id
        self._claims = 0

    def _counted(self, principal: Principal) -> bool:
        return self.limits is not None and principal is not SYSTEM

    # ---- tasks --------------------------------------------------------------------------------

    @contextlib.contextmanager
    def task(self, principal: Principal) -> Iterator[TaskClaim]:
        """Claim a place for one more task of ``principal`` (QuotaExceeded when it is at its
        concurrency or its rate); see ``TaskClaim``."""
        if not self._counted(principal):
            yield TaskClaim(None, principal.id)
            return
        assert self.limits is not None and self._rate is not None
        pid = principal.id
        if self._running.get(pid, 0) >= self.limits.concurrent_tasks:
            raise QuotaExceeded(f"at most {self.limits.concurrent_tasks} tasks may run at once", 1)
        wait = self._rate.take(pid)
        if wait:
            raise QuotaExceeded(
                f"at most {self.limits.tasks_per_s:g} tasks a second (bursts of {self.limits.task_burst})", wait
            )
        self._running[pid] = self._running.get(pid, 0) + 1
        claim = TaskClaim(self, pid)
        try:
            yield claim
        finally:
            claim._release()

    def _bind(self, task_id: str, principal_id: str) -> None:
        if task_id in self._owners:  # continued before its last pause reached this node: counted once
            self._release(principal_id)
        else:
            self._owners[task_id] = principal_id

    def _release(self, principal_id: str) -> None:
        left = self._running.get(principal_id, 0) - 1
        if left > 0:
            self._running[principal_id] = left
        else:
            self._running.pop(principal_id, None)

    def task_final(self, task_id: str) -> None:
        """A task ended or waits for input: it no longer counts (nothing if it never did here)."""
        principal_id = self._owners.pop(task_id, None)
        if principal_id is not None:
            self._release(principal_id)

    # ---- SSE streams ----------------------------------------------------------------------------

    def stream(self, principal: Principal) -> Callable[[], None]:
        """Count one more open stream of ``principal`` (QuotaExceeded at its quota); returns the
        call that closes it (idempotent)."""
        if not self._counted(principal):
            return lambda: None
        assert self.limits is not None
        pid = principal.id
        if self._streams.get(pid, 0) >= self.limits.sse_streams:
            raise QuotaExceeded(f"at most {self.limits.sse_streams} event streams may be open at once", 1)
        self._streams[pid] = self._streams.get(pid, 0) + 1
        closed = False

        def close() -> None:
            nonlocal closed
            if not closed:
                closed = True
                left = self._streams.get(pid, 0) - 1
                if left > 0:
                    self._streams[pid] = left
                else:
                    self._streams.pop(pid, None)

        return close

    # ---- MCP sessions ---------------------------------------------------------------------------

    @contextlib.contextmanager
    def session(self, principal: Principal, ttl_s: float) -> Iterator[Callable[[str], None]]:
        """Claim a place for one more session of ``principal`` (QuotaExceeded at its quota: retry
        once the one lapsing first lapses); call what this yields with the session's id once it
        exists, or the place is given back when the ``with`` block ends. A session counts until
        ``end_session``, or ``ttl_s`` without ``session_used``."""
        if not self._counted(principal):
            yield lambda session_id: None
            return
        assert self.limits is not None
        held = self._live_sessions(principal.id)
        if len(held) >= self.limits.mcp_sessions:
            first = next(iter(held.values()))
            raise QuotaExceeded(
                f"at most {self.limits.mcp_sessions} MCP sessions may be open at once; end unused ones (DELETE)",
                first - time.monotonic(),
            )
        self._claims += 1
        claim = f"\0claim-{self._claims}"  # no session id: ids are visible ASCII
        held[claim] = time.monotonic() + ttl_s

        def opened(session_id: str) -> None:
            held.pop(claim, None)
            held[session_id] = time.monotonic() + ttl_s
            self._session_of[session_id] = principal.id

        try:
            yield opened
        finally:
            held.pop(claim, None)
            if not held:
                self._sessions.pop(principal.id, None)

    def session_used(self, session_id: str, ttl_s: float) -> None:
        """A request used the session: it lapses ``ttl_s`` from now."""
        held = self._sessions.get(self._session_of.get(session_id, ""))
        if held is not None and session_id in held:
            held[session_id] = time.monotonic() + ttl_s
            held.move_to_end(session_id)

    def end_session(self, session_id: str) -> None:
        principal_id = self._session_of.pop(session_id, None)
        held = self._sessions.get(principal_id or "")
        if held is not None:
            held.pop(session_id, None)
            if not held:
                del self._sessions[principal_id]  # type: ignore[arg-type]

    def _live_sessions(self, principal_id: str) -> OrderedDict[str, float]:
        """The principal's sessions, after dropping those that lapsed (all lapse after the same
        time unused, so in order)."""
        held = self._sessions.setdefault(principal_id, OrderedDict())
        now = time.monotonic()
        while held:
            session_id, lapses = next(iter(held.items()))
            if lapses > now:
                break
            del held[session_id]
            self._session_of.pop(session_id, None)
        return held


def limits_of(config: Config) -> QuotaLimits | None:
    """The quotas a gateway config sets (None with ``quotas`` off)."""
    if not config.quotas:
        return None
    return QuotaLimits(
        tasks_per_s=config.quota_tasks_per_s,
        task_burst=config.quota_task_burst,
        concurrent_tasks=config.quota_concurrent_tasks,
        mcp_sessions=config.quota_mcp_sessions,
        sse_streams=config.quota_sse_streams,
    )
