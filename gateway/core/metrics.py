"""Prometheus metrics of one gateway process (its own registry, so apps never share counters)."""

from __future__ import annotations

from datetime import UTC, datetime

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from schemas import TaskState

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.accepted = Counter("interlace_tasks_accepted", "Tasks accepted by this node", ["agent"], registry=r)
        self.completed = Counter(
            "interlace_tasks_completed", "Tasks accepted here that completed", ["agent"], registry=r
        )
        self.failed = Counter(
            "interlace_tasks_failed", "Tasks accepted here that failed or were rejected", ["agent"], registry=r
        )
        self.canceled = Counter(
            "interlace_tasks_canceled", "Tasks accepted here that were canceled", ["agent"], registry=r
        )
        self.queue_depth = Gauge(
            "interlace_queue_depth", "Unacknowledged entries in an agent's stream", ["agent"], registry=r
        )
        self.latency = Histogram(
            "interlace_task_latency_seconds",
            "Accept-to-final latency of tasks accepted here",
            ["agent"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )

    def finished(self, agent: str, state: TaskState, created_at: str) -> float | None:
        """Count a task that became final; returns its accept-to-final seconds (None: not final)."""
        counter = {
            TaskState.COMPLETED: self.completed,
            TaskState.FAILED: self.failed,
            TaskState.REJECTED: self.failed,
            TaskState.CANCELED: self.canceled,
        }.get(state)
        if counter is None:  # input-required / auth-required: not finished yet
            return None
        counter.labels(agent).inc()
        started = datetime.fromisoformat(created_at.replace("Z", "+00:00"))
        seconds = max(0.0, (datetime.now(UTC) - started).total_seconds())
        self.latency.labels(agent).observe(seconds)
        return seconds

    def render(self) -> bytes:
        return generate_latest(self.registry)
