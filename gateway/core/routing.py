"""Capability routing: which live agent should run a task that names no agent.

The capability index (registry/index.py) holds one entry per skill of every live record and
follows the registry. The router feeds it what this node observes of each agent: latency (an
EWMA of accept-to-final time) and load (tasks this node accepted that are not final yet), both
per bus stream, since an owner and the replicas it names share their name's stream.
"""

from __future__ import annotations

import math
from collections import Counter, OrderedDict

from registry.index import AgentStats, CapabilityIndex, CapabilityQuery, RouteResult
from registry.service import Registry, stream_of
from schemas.agent_record import AgentRecord


class CapabilityRouter:
    """The capability index plus what this node observes of each agent (latency, load)."""

    def __init__(self, registry: Registry, *, embeddings: bool = False) -> None:
        self.registry = registry
        self.index = CapabilityIndex(embeddings=embeddings)
        self.latency = LatencyTracker()
        self.inflight: Counter[str] = Counter()
        registry.subscribe(self._changed)

    def _changed(self, did: str, record: AgentRecord | None) -> None:
        if record is None:
            self.index.remove(did)
        else:
            self.index.upsert(record)

    def stats(self, did: str) -> AgentStats:
        """What routing knows of an agent now: live, latency EWMA (ms), tasks in flight."""
        record = self.registry.get(did)
        if record is None:
            return AgentStats(live=False)
        stream = stream_of(record)
        ewma = self.latency.get(stream)
        return AgentStats(latency_ewma_ms=None if ewma is None else ewma * 1000, load=self.inflight[stream])

    def route(self, query: CapabilityQuery, limit: int = 5) -> RouteResult:
        return self.index.search(query, stats=self.stats, limit=limit)

    def accepted(self, stream: str) -> None:
        self.inflight[stream] += 1

    def finished(self, stream: str, seconds: float | None) -> None:
        if self.inflight[stream] > 0:
            self.inflight[stream] -= 1
        if seconds is not None:
            self.latency.observe(stream, seconds)


class LatencyTracker:
    """Exponentially weighted moving average of each agent's task latency.

    ``alpha`` = 0.2: a new observation carries 20 % of the weight, so the last 10 observations
    carry about 89 % of it: recent enough to react within a few tasks, smooth enough that one
    slow task does not flip the routing. The first observation seeds the average. ``observe``
    and ``get`` speak seconds; ``get_ms`` gives milliseconds, the unit of ``AgentStats``.
    """

    def __init__(self, alpha: float = 0.2, max_agents: int = 1_000_000) -> None:
        if not 0.0 < alpha <= 1.0:
            raise ValueError("alpha must be in (0, 1]")
        self.alpha = alpha
        self.max_agents = max_agents
        self._ewma: OrderedDict[str, float] = OrderedDict()  # seconds

    def observe(self, did: str, seconds: float) -> float:
        """Record one task's latency; returns the new average (seconds). Negative/NaN is refused."""
        if not seconds >= 0.0 or math.isinf(seconds):
            raise ValueError(f"latency must be a finite non-negative number of seconds, got {seconds!r}")
        old = self._ewma.get(did)
        new = seconds if old is None else old + self.alpha * (seconds - old)
        self._ewma[did] = new
        self._ewma.move_to_end(did)
        while len(self._ewma) > self.max_agents:  # least recently observed first
            self._ewma.popitem(last=False)
        return new

    def get(self, did: str) -> float | None:
        """The average in seconds, or None before the first observation."""
        return self._ewma.get(did)

    def get_ms(self, did: str) -> float | None:
        """The average in milliseconds (``AgentStats.latency_ewma_ms``), or None."""
        value = self._ewma.get(did)
        return None if value is None else value * 1000.0

    def forget(self, did: str) -> None:
        self._ewma.pop(did, None)

    def __len__(self) -> int:
        return len(self._ewma)
