"""Prometheus metrics of a model worker, registered on a registry the caller passes.

The gateway can register them on its own registry (in-process worker), or the worker serves
its registry on ``--metrics-port``. Every series has an ``agent`` label.

  interlace_model_tokens_per_second     generated tokens per second over the last ``window_s``
  interlace_model_tokens_generated_total
  interlace_model_queue_depth           requests waiting for a batch slot
  interlace_model_batch_size            sequences in the running batch
  interlace_model_gpu_memory_bytes      {kind=allocated|reserved}, only on GPU
  interlace_model_requests_total        {outcome=completed|canceled|failed|oom|released}
  interlace_model_step_seconds          duration of one forward pass (prefill or decode)
  interlace_model_ready                 1 while the model (or its engine) can serve, else 0

``serve`` answers ``GET /metrics`` (Prometheus) and ``GET /healthz`` (200 ready, 503 not) on
``--metrics-port``.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from collections.abc import Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

STEP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)


class ModelMetrics:
    def __init__(self, registry: CollectorRegistry, agent: str = "model", window_s: float = 10.0) -> None:
        self.agent, self.window_s = agent, window_s
        r = registry
        self._tokens = Counter("interlace_model_tokens_generated", "Tokens generated", ["agent"], registry=r)
        self._rate = Gauge(
            "interlace_model_tokens_per_second",
            f"Tokens generated per second over the last {window_s:g} s",
            ["agent"],
            registry=r,
        )
        self._queue = Gauge("interlace_model_queue_depth", "Requests waiting for a batch slot", ["agent"], registry=r)
        self._batch = Gauge("interlace_model_batch_size", "Sequences in the running batch", ["agent"], registry=r)
        self._requests = Counter(
            "interlace_model_requests", "Requests finished, by outcome", ["agent", "outcome"], registry=r
        )
        self._step = Histogram(
            "interlace_model_step_seconds", "Duration of one forward pass", ["agent"], buckets=STEP_BUCKETS, registry=r
        )
        self._gpu = Gauge(
            "interlace_model_gpu_memory_bytes", "GPU memory held by the model process", ["agent", "kind"], registry=r
        )
        self._events: deque[tuple[float, int]] = deque()
        self._lock = threading.Lock()  # the scrape may run on another thread (--metrics-port)
        self._rate.labels(agent).set_function(self.tokens_per_second)
        for outcome in ("completed", "canceled", "failed", "oom", "released"):
            self._requests.labels(agent, outcome)
        self._ready = Gauge("interlace_model_ready", "1 while the model can serve", ["agent"], registry=r)
        self.set_ready(True)

    def set_ready(self, ready: bool) -> None:
        self.ready = ready
        self._ready.labels(self.agent).set(1 if ready else 0)

    def generated(self, tokens: int, step_s: float | None = None) -> None:
        now = time.monotonic()
        self._tokens.labels(self.agent).inc(tokens)
        if step_s is not None:
            self._step.labels(self.agent).observe(step_s)
        with self._lock:
            self._events.append((now, tokens))
            self._trim(now)

    def tokens_per_second(self) -> float:
        now = time.monotonic()
        with self._lock:
            self._trim(now)
            if not self._events:
                return 0.0
            total = sum(n for _, n in self._events)
        return total / self.window_s

    def _trim(self, now: float) -> None:
        while self._events and self._events[0][0] < now - self.window_s:
            self._events.popleft()

    def set_load(self, batch: int, waiting: int) -> None:
        self._batch.labels(self.agent).set(batch)
        self._queue.labels(self.agent).set(waiting)

    def finished(self, outcome: str) -> None:
        self._requests.labels(self.agent, outcome).inc()

    def watch_memory(self, probe: Callable[[], dict[str, int]]) -> None:
        """Read device memory at scrape time (``probe`` returns bytes by kind, e.g. allocated)."""
        kinds = probe()
        for kind in kinds:
            self._gpu.labels(self.agent, kind).set_function(lambda kind=kind: float(probe().get(kind, 0)))


async def serve(registry: CollectorRegistry, metrics: ModelMetrics, host: str, port: int) -> web.AppRunner:
    """Serve ``/metrics`` and ``/healthz`` until the returned runner is cleaned up."""

    async def scrape(request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def health(request: web.Request) -> web.Response:
        body = json.dumps({"ready": metrics.ready, "agent": metrics.agent})
        return web.Response(text=body, status=200 if metrics.ready else 503, content_type="application/json")

    app = web.Application()
    app.add_routes([web.get("/metrics", scrape), web.get("/healthz", health)])
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
