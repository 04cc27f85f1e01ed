"""The console's charts: the gateway's own Prometheus metrics, sampled into a short history.

Every ``interval_s`` the sampler reads the node's counters (tasks accepted), its latency
histogram and its queue-depth gauges (``gateway.core.metrics``), and keeps ``keep`` points: per
agent, tasks per second over the interval, p50 and p99 latency of the tasks that finished in it
(from the histogram buckets' increments, each quantile read as its bucket's upper bound), and the
queue depth. Only what this node accepted is counted, as in ``/metrics``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from typing import Any

from gateway.core.backends import BackendUnavailable
from gateway.core.metrics import LATENCY_BUCKETS
from gateway.core.runtime import Runtime


class Sampler:
    def __init__(self, runtime: Runtime, interval_s: float = 5.0, keep: int = 120) -> None:
        self.runtime, self.interval_s = runtime, interval_s
        self.points: deque[dict[str, Any]] = deque(maxlen=keep)
        self._last: tuple[float, dict[str, float], dict[str, list[float]]] | None = None
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="console-sampler")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            await self.sample()
            await asyncio.sleep(self.interval_s)

    async def sample(self) -> dict[str, Any] | None:
        """Take one point (the first call only sets the baseline); returns it."""
        rt = self.runtime
        with contextlib.suppress(BackendUnavailable):  # the gauges keep their last value
            await rt.measure_queue_depths()
        now = time.time()
        accepted, buckets, depth = _read(rt.metrics.registry)
        last, self._last = self._last, (now, accepted, buckets)
        if last is None:
            return None
        then, before, before_buckets = last
        seconds = max(now - then, 1e-6)
        agents: dict[str, dict[str, float | None]] = {}
        for agent in sorted(set(accepted) | set(depth)):
            delta = [a - b for a, b in zip(buckets.get(agent, []), before_buckets.get(agent, []) or [0.0] * 99)]
            agents[agent] = {
                "rate": round((accepted.get(agent, 0.0) - before.get(agent, 0.0)) / seconds, 3),
                "p50_ms": _quantile(delta, 0.5),
                "p99_ms": _quantile(delta, 0.99),
                "depth": depth.get(agent, 0.0),
            }
        point = {"t": round(now, 3), "agents": agents}
        self.points.append(point)
        return point


def _read(registry) -> tuple[dict[str, float], dict[str, list[float]], dict[str, float]]:
    """(accepted totals, cumulative latency bucket counts, queue depths), each by agent."""
    accepted: dict[str, float] = {}
    buckets: dict[str, list[float]] = {}
    depth: dict[str, float] = {}
    for family in registry.collect():
        for s in family.samples:
            agent = s.labels.get("agent")
            if agent is None:
                continue
            if s.name == "interlace_tasks_accepted_total":
                accepted[agent] = s.value
            elif s.name == "interlace_queue_depth":
                depth[agent] = s.value
            elif s.name == "interlace_task_latency_seconds_bucket" and s.labels.get("le") != "+Inf":
                buckets.setdefault(agent, []).append(s.value)
    return accepted, buckets, depth


def _quantile(cumulative_delta: list[float], q: float) -> float | None:
    """The upper bound (ms) of the bucket holding quantile ``q``; None when nothing finished."""
    if not cumulative_delta or cumulative_delta[-1] <= 0:
        return None
    target = q * cumulative_delta[-1]
    for bound, count in zip(LATENCY_BUCKETS, cumulative_delta):
        if count >= target:
            return bound * 1000
    return LATENCY_BUCKETS[-1] * 1000
