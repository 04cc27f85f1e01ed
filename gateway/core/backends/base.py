"""The bus and store interface every backend implements.

One ``Backend`` bundles the task queues (a stream per agent, consumer groups, at-least-once
delivery with a visibility timeout), the task store (state + an event stream per task), the
store of signed agent records and a small key/value store for protocol sessions. Two
implementations: ``embedded`` (in-process, the default) and ``redis`` (Redis Streams, shared by
many gateway and worker processes). The same behavioural test suite runs against both.

Delivery contract: ``receive`` hands out new entries and re-hands entries whose consumer has
not called ``extend`` for ``visibility_timeout_ms``; an entry leaves the queue only on ``ack``.
The worker runtime makes redelivery idempotent with the per-task run lock and the task state.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator
from dataclasses import dataclass

from pydantic import TypeAdapter

from registry.store import RecordStore
from schemas import Task, TaskArtifactUpdate, TaskEvent, TaskState, TaskStatusUpdate

EVENT_JSON = TypeAdapter(TaskEvent)  # a TaskEvent to and from JSON: stores, the /bus API and its client


class BackendError(Exception):
    code = "backend_error"


class BackendUnavailable(BackendError):
    """The backing service (Redis) cannot be reached; callers answer 503 and retry later."""

    code = "unavailable"


class BackendMisconfigured(BackendError):
    """The backend's configuration cannot work (a cluster URL pointed at one Redis, or the
    reverse; refused credentials): a start-up error for the operator, never retried."""

    code = "misconfigured"


class QueueFull(BackendError):
    code = "queue_full"


class TaskNotFound(BackendError):
    code = "not_found"


class TaskExists(BackendError):
    code = "conflict"


class InvalidCursor(BackendError):
    """A task list cursor that no list returned (a client's, passed on by ``GET /tasks``)."""

    code = "invalid_cursor"


def cursor_offset(cursor: str | None) -> int:
    """The offset a task list cursor stands for (both backends' cursors are offsets); 0 for none."""
    if not cursor:
        return 0
    if not (cursor.isascii() and cursor.isdigit()) or len(cursor) > 15:
        raise InvalidCursor(f"cursor {cursor[:40]!r} is not one a task list returned")
    return int(cursor)


@dataclass(frozen=True)
class Delivery:
    agent: str
    entry_id: str
    task_id: str
    attempt: int


@dataclass(frozen=True)
class StoredEvent:
    event_id: str
    event: TaskStatusUpdate | TaskArtifactUpdate


@dataclass(frozen=True)
class Finished:
    """A task reached a terminal or interrupted state (fed to metrics and ?wait=true waiters)."""

    task_id: str
    state: TaskState
    accepted_by: str
    created_at: str
    agent: str


@dataclass
class Limits:
    visibility_timeout_ms: int = 30_000
    max_queue: int = 10_000
    max_events_per_task: int = 10_000
    retention_s: int = 24 * 3600  # finished tasks are dropped this long after they ended
    max_deliveries: int = 5
    max_finished_tasks: int = 100_000  # embedded backend: finished tasks kept in memory at most


class Bus(abc.ABC):
    @abc.abstractmethod
    async def receive(self, agent: str, consumer: str, *, block_ms: int, count: int = 1) -> list[Delivery]:
        """Entries for ``consumer``: stale ones of dead consumers first, then new ones. A stale
        entry counts as one delivery more (``attempt``, which the poison rule bounds) when
        another consumer held it; one ``consumer`` let go itself, as a worker does when the bus
        fails under it, comes back with its count unchanged: an outage uses up no deliveries."""

    @abc.abstractmethod
    async def extend(self, delivery: Delivery, consumer: str) -> None:
        """Heartbeat: restart the visibility timeout of an entry this consumer is working on."""

    @abc.abstractmethod
    async def ack(self, delivery: Delivery) -> None:
        """The entry is done; it leaves the queue for good."""

    @abc.abstractmethod
    async def depth(self, agent: str) -> int:
        """Entries not yet acknowledged (waiting plus in flight)."""


class TaskStore(abc.ABC):
    @abc.abstractmethod
    async def submit(self, task: Task, agent: str, accepted_by: str) -> None:
        """Store a new task and enqueue it on ``agent``'s stream, atomically.

        Raises TaskExists, QueueFull (nothing stored) or BackendUnavailable.
        """

    @abc.abstractmethod
    async def requeue(self, task: Task, agent: str) -> None:
        """Enqueue an existing task again (a follow-up message continues it)."""

    @abc.abstractmethod
    async def get(self, task_id: str) -> Task | None: ...

    @abc.abstractmethod
    async def list(
        self,
        context_id: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
        owner: str | None = None,
        state: TaskState | None = None,
    ) -> tuple[list[Task], str | None]:
        """Tasks newest first, optionally of one context, one owner and/or in one state; returns
        (page, next cursor). ``owner`` None lists every owner's tasks (for admins). Each
        combination is an index: a page costs its offset and length, never a scan of the store."""

    @abc.abstractmethod
    async def count(
        self, context_id: str | None = None, owner: str | None = None, state: TaskState | None = None
    ) -> int:
        """How many tasks ``list`` with these filters pages through (read from the index)."""

    @abc.abstractmethod
    async def apply(self, task_id: str, event: TaskEvent) -> tuple[Task, str]:
        """Apply an event atomically (transition-checked) and append it to the task's events.

        Returns the new task and the event id. Raises TaskNotFound or InvalidTransition.
        """

    @abc.abstractmethod
    async def read_events(self, task_id: str, after: str | None, block_ms: int) -> list[StoredEvent]:
        """Events after ``after`` (None = from the start), waiting up to ``block_ms`` for one."""

    @abc.abstractmethod
    async def read_finished(self, after: str | None, block_ms: int) -> tuple[list[Finished], str | None]:
        """The feed of tasks that became final, after cursor ``after`` (None = from now)."""

    @abc.abstractmethod
    async def lock(self, task_id: str, owner: str, ttl_ms: int) -> bool:
        """Take or refresh the task's run lock; False when another owner holds it."""

    @abc.abstractmethod
    async def unlock(self, task_id: str, owner: str) -> None: ...


class KeyValue(abc.ABC):
    """Small shared state with a lifetime (protocol sessions, nonces), visible to every node."""

    @abc.abstractmethod
    async def get(self, key: str) -> str | None: ...

    @abc.abstractmethod
    async def set(self, key: str, value: str, ttl_s: int, *, only_new: bool = False) -> bool:
        """Store ``value``; with ``only_new`` nothing is written (False) when the key exists."""

    @abc.abstractmethod
    async def delete(self, key: str) -> None: ...


class Backend(abc.ABC):
    name: str
    shared: bool  # whether other gateway nodes see the same state
    bus: Bus
    tasks: TaskStore
    records: RecordStore
    kv: KeyValue
    limits: Limits

    async def check(self) -> None:
        """Raise BackendMisconfigured when the configuration cannot work (called at start-up);
        the embedded backend always can."""
        return None

    @abc.abstractmethod
    async def ping(self) -> None:
        """Raise BackendUnavailable when the backend cannot serve."""

    @abc.abstractmethod
    async def close(self) -> None: ...

    async def take_run(self, delivery: Delivery, consumer: str, ttl_ms: int) -> tuple[Task | None, bool]:
        """The task of ``delivery``, and whether ``consumer`` now holds its run lock. With the lock,
        the entry's clock restarts after the lock's, so the lock always lapses first and a
        redelivery after a crash finds it free. A backend may also lock a task that cannot run
        (finished, waiting for input): ``end_run`` releases it."""
        task = await self.tasks.get(delivery.task_id)
        if task is None or task.state.terminal or task.state.interrupted:
            return task, False
        if not await self.tasks.lock(task.id, consumer, ttl_ms):
            return task, False
        await self.bus.extend(delivery, consumer)
        return task, True

    async def end_run(self, delivery: Delivery, consumer: str) -> None:
        """Ack the entry and drop ``consumer``'s run lock, if it holds it."""
        await self.bus.ack(delivery)
        await self.tasks.unlock(delivery.task_id, consumer)

    async def events(
        self, task_id: str, after: str | None = None, *, block_ms: int = 5_000
    ) -> AsyncIterator[StoredEvent]:
        """Follow a task's events until a final one (terminal or interrupted state)."""
        while True:
            batch = await self.tasks.read_events(task_id, after, block_ms)
            for stored in batch:
                yield stored
                after = stored.event_id
                if isinstance(stored.event, TaskStatusUpdate) and stored.event.final:
                    return
