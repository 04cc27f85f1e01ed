"""The service layer every adapter calls: submit, continue, wait for, follow and cancel tasks.

Adapters translate their protocol into these calls and never touch the backend directly, so
task semantics (routing, transitions, cancel rules, metrics) live in one place.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import AsyncIterator

from agents.links import DirectLink, wait_cancelled
from agents.worker import Worker, WorkerRunner
from gateway.backends import Backend, BackendUnavailable, Limits, StoredEvent, TaskNotFound, open_backend
from gateway.config import Config
from gateway.metrics import Metrics
from schemas import InvalidTransition, Message, Route, Task, TaskError, TaskState

log = logging.getLogger("interlace.runtime")


class UnknownAgent(TaskError):
    code = "unknown_agent"


class NotCancelable(TaskError):
    code = "not_cancelable"


class NotContinuable(TaskError):
    code = "not_continuable"


class Runtime:
    def __init__(self, config: Config, backend: Backend | None = None, workers: list[Worker] | None = None) -> None:
        self.config = config
        self.node_id = config.node_id
        self.backend = backend or open_backend(
            config.redis_url,
            Limits(
                visibility_timeout_ms=config.visibility_timeout_ms,
                max_queue=config.max_queue,
                max_deliveries=config.max_deliveries,
                retention_s=config.retention_s,
            ),
        )
        self.metrics = Metrics()
        self._workers = list(workers or [])
        self._runners: list[WorkerRunner] = []
        self._waiters: dict[str, list[asyncio.Future]] = defaultdict(list)
        self._feed: asyncio.Task | None = None
        self._seen_agents: set[str] = set()

    # ---- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        self._feed = asyncio.create_task(self._follow_finished(), name="finished-feed")
        for worker in self._workers:
            runner = WorkerRunner(worker, DirectLink(self.backend), lock_ttl_ms=self.config.visibility_timeout_ms)
            runner.start()
            self._runners.append(runner)
        # In-process agents are routable as soon as the gateway answers.
        await asyncio.gather(*(asyncio.wait_for(r.ready.wait(), 10) for r in self._runners), return_exceptions=True)

    async def stop(self) -> None:
        await asyncio.gather(*(r.stop(self.config.shutdown_grace_s) for r in self._runners))
        if self._feed is not None:
            await wait_cancelled(self._feed)
        await self.backend.close()

    async def ready(self) -> None:
        """Raise BackendUnavailable unless the bus answers promptly."""
        try:
            await asyncio.wait_for(self.backend.ping(), 2.0)
        except asyncio.TimeoutError as exc:
            raise BackendUnavailable("bus did not answer within 2 s") from exc

    # ---- tasks ------------------------------------------------------------------------------

    async def resolve_agent(self, name: str) -> str:
        if name in await self.backend.directory.live():
            return name
        raise UnknownAgent(f"no agent named {name!r} is available")

    async def submit(
        self,
        message: Message,
        *,
        agent: str,
        context_id: str | None = None,
        metadata: dict | None = None,
    ) -> Task:
        """Accept a new task for ``agent``; it is stored and enqueued, or nothing happens."""
        agent = await self.resolve_agent(agent)
        task = Task(metadata=metadata or {}, route=Route(agent=agent, reason="named by the client"))
        if context_id:
            task.context_id = context_id
        task.history.append(message.model_copy(update={"task_id": task.id, "context_id": task.context_id}))
        await self.backend.tasks.submit(task, agent, self.node_id)
        self.metrics.accepted.labels(agent).inc()
        self._seen_agents.add(agent)
        log.info("task accepted", extra={"task_id": task.id, "agent": agent})
        return task

    async def continue_task(self, task_id: str, message: Message) -> Task:
        """A follow-up message resumes a task that waits for input (input-required)."""
        task = await self.get(task_id)
        if not task.state.interrupted or task.route is None:
            raise NotContinuable(f"task {task_id} is {task.state.value}; only a task that waits for input takes a follow-up")
        message = message.model_copy(update={"task_id": task.id, "context_id": task.context_id})
        task, _ = await self.backend.tasks.apply(task.id, task.status_event(TaskState.WORKING, message))
        await self.backend.tasks.requeue(task, task.route.agent)
        return task

    async def get(self, task_id: str) -> Task:
        task = await self.backend.tasks.get(task_id)
        if task is None:
            raise TaskNotFound(f"task {task_id} not found")
        return task

    async def cancel(self, task_id: str) -> Task:
        task = await self.get(task_id)
        if task.state.terminal:
            raise NotCancelable(f"task {task_id} is already {task.state.value}")
        try:
            task, _ = await self.backend.tasks.apply(task_id, task.status_event(TaskState.CANCELED))
        except InvalidTransition:
            current = await self.get(task_id)
            raise NotCancelable(f"task {task_id} is already {current.state.value}") from None
        log.info("task canceled", extra={"task_id": task_id})
        return task

    async def wait(self, task_id: str, timeout_s: float) -> Task:
        """The task once final (terminal or waiting for input), or as it is when time runs out."""
        fut = asyncio.get_running_loop().create_future()
        self._waiters[task_id].append(fut)
        try:
            task = await self.get(task_id)
            if not (task.state.terminal or task.state.interrupted):
                try:
                    await asyncio.wait_for(asyncio.shield(fut), timeout_s)
                except asyncio.TimeoutError:
                    pass
                task = await self.get(task_id)
            return task
        finally:
            waiters = self._waiters.get(task_id, [])
            if fut in waiters:
                waiters.remove(fut)
            if not waiters:
                self._waiters.pop(task_id, None)

    def follow(self, task_id: str, after: str | None = None) -> AsyncIterator[StoredEvent]:
        return self.backend.events(task_id, after)

    async def known_agents(self) -> list[str]:
        return sorted(set(await self.backend.directory.live()) | self._seen_agents)

    async def _follow_finished(self) -> None:
        """One reader of the 'finished' feed per node: wakes waiters and feeds the metrics."""
        cursor, backoff = None, 0.1
        while True:
            try:
                batch, cursor = await self.backend.tasks.read_finished(cursor, 5_000)
                backoff = 0.1
            except BackendUnavailable:
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            for fin in batch:
                if fin.accepted_by == self.node_id:
                    self.metrics.finished(fin.agent, fin.state, fin.created_at)
                for fut in self._waiters.get(fin.task_id, []):
                    if not fut.done():
                        fut.set_result(fin.state)
