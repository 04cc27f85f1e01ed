"""A model-backed agent in front of an inference engine the operator already runs.

``EngineWorker`` is a ``ModelWorker`` over an ``OpenAIEngine``: the same task contract, skills,
options and streamed ``response`` artifact as the in-process backends. What differs is that the
model lives elsewhere and may come and go:

* At start the worker reads ``/v1/models`` (``OpenAIEngine.describe``): a model the engine does
  not serve is a start-up error; an engine that does not answer yet is waited for. Every
  ``refresh_s`` it reads it again, and when what it serves changes (its context length, say
  after the engine restarted with other settings) the card changes and the runner re-registers.
* No batching here (the engine batches) but at most ``max_inflight`` requests in flight: the
  runner takes no more tasks than that, so the backlog waits on the bus, where any replica (one
  worker per engine, same agent name and key) can take it.
* When the engine goes down (``EngineDown``) the task in hand is released for redelivery, not
  failed; the worker is not ready (``interlace_model_ready`` 0, ``/healthz`` 503) and takes no
  work until ``/v1/models`` answers again, polled with capped exponential backoff.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from agents.model.base import ModelError
from agents.model.openai_api import EngineDown, OpenAIEngine, Served
from agents.model.worker import ModelWorker

log = logging.getLogger("interlace.model")


class EngineWorker(ModelWorker):
    def __init__(
        self,
        engine: OpenAIEngine,
        *,
        agent: str = "model",
        default_max_tokens: int = 256,
        max_tokens_limit: int = 4096,
        metrics: Any = None,
        refresh_s: float = 30.0,
        retry_s: tuple[float, float] = (0.2, 5.0),
    ) -> None:
        super().__init__(
            engine,
            agent=agent,
            concurrency=engine.max_batch,
            default_max_tokens=default_max_tokens,
            max_tokens_limit=max_tokens_limit,
            metrics=metrics,
        )
        self.engine = engine
        self.refresh_s, self.retry_s = refresh_s, retry_s
        self.served: Served | None = None
        self.card_changed = asyncio.Event()
        self._up = asyncio.Event()
        self._checked = 0.0
        self._refresh: asyncio.Task | None = None

    async def start(self) -> Served | None:
        """Read what the engine serves; None while it does not answer (the worker waits for it).
        Raises ModelError when the engine answers but does not serve the model."""
        try:
            await self._check()
        except EngineDown as exc:
            self._mark_down(str(exc))
        return self.served

    @property
    def description(self) -> str:  # type: ignore[override]
        return f"{self.engine.model_name} served by an OpenAI-compatible engine: chat, text generation, summaries."

    def labels(self) -> dict[str, str]:
        out = super().labels()
        out["model.engine"] = "openai-compatible"
        if not self.engine.context_length:
            del out["model.context_tokens"]  # the engine did not say
        return out

    async def until_available(self) -> None:
        if self._up.is_set():
            if time.monotonic() - self._checked > self.refresh_s and (self._refresh is None or self._refresh.done()):
                self._refresh = asyncio.create_task(self._check_quietly())
            return
        delay, most = self.retry_s
        while not self._up.is_set():
            try:
                await self._check()
            except (EngineDown, ModelError) as exc:
                log.debug("engine still unavailable", extra={"agent": self.agent, "error": str(exc)[:300]})
                await asyncio.sleep(delay)
                delay = min(delay * 2, most)

    async def handle(self, task):
        try:
            async for event in super().handle(task):
                yield event
        except EngineDown as exc:
            self._mark_down(str(exc))
            raise

    async def _check(self) -> None:
        served = await self.engine.describe()
        self._checked = time.monotonic()
        if served != self.served:
            if served.context_length:
                self.engine.context_length = served.context_length
            if self.served is not None:
                log.info("the engine serves the model differently; re-registering", extra={"agent": self.agent})
            self.served = served
            self.card_changed.set()
        if not self._up.is_set():
            log.info("engine ready", extra={"agent": self.agent, "model": served.model})
            self._up.set()
            if self.metrics is not None:
                self.metrics.set_ready(True)

    async def _check_quietly(self) -> None:
        try:
            await self._check()
        except EngineDown as exc:
            self._mark_down(str(exc))
        except ModelError as exc:  # the engine stopped serving the model: not ready until it does
            self._mark_down(str(exc))

    def _mark_down(self, why: str) -> None:
        if self._up.is_set() or self.served is None:
            log.warning(
                "engine unavailable; holding no tasks until it answers", extra={"agent": self.agent, "error": why[:300]}
            )
        self._up.clear()
        if self.metrics is not None:
            self.metrics.set_ready(False)

    async def aclose(self) -> None:
        if self._refresh is not None:
            self._refresh.cancel()
        await self.engine.close()
