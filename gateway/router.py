"""Capability routing: which live agent should run a task that names no agent.

The capability index (registry/index.py) holds one entry per skill of every live record and
follows the registry. The router feeds it what this node observes of each agent: latency (an
EWMA of accept-to-final time) and load (tasks this node accepted that are not final yet), both
per bus stream, since replicas sharing a name share a stream.
"""

from __future__ import annotations

from collections import Counter

from registry.index import AgentStats, CapabilityIndex, CapabilityQuery, LatencyTracker, RouteResult
from registry.service import Registry, stream_of
from schemas.agent_record import AgentRecord


class Router:
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

    def _stats(self, did: str) -> AgentStats:
        record = self.registry.get(did)
        if record is None:
            return AgentStats(live=False)
        stream = stream_of(record)
        ewma = self.latency.get(stream)
        return AgentStats(latency_ewma_ms=None if ewma is None else ewma * 1000, load=self.inflight[stream])

    def route(self, query: CapabilityQuery, limit: int = 5) -> RouteResult:
        return self.index.search(query, stats=self._stats, limit=limit)

    def accepted(self, stream: str) -> None:
        self.inflight[stream] += 1

    def finished(self, stream: str, seconds: float | None) -> None:
        if self.inflight[stream] > 0:
            self.inflight[stream] -= 1
        if seconds is not None:
            self.latency.observe(stream, seconds)
