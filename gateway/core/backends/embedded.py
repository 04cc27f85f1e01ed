"""In-process backend: asyncio queues and dicts, nothing to install.

It keeps the same delivery semantics as the Redis backend (pending entries, visibility timeout,
redelivery count) so the behavioural suite holds for both; it lives and dies with the process.
"""

from __future__ import annotations

import array
import asyncio
import bisect
import itertools
import time
from collections import OrderedDict, defaultdict, deque
from collections.abc import Iterator
from dataclasses import dataclass, field

from gateway.core.backends.base import (
    EVENT_JSON,
    Backend,
    Bus,
    Delivery,
    Finished,
    KeyValue,
    Limits,
    QueueFull,
    StoredEvent,
    TaskExists,
    TaskNotFound,
    TaskStore,
    cursor_offset,
)
from registry.store import MemoryRecordStore
from schemas import Task, TaskEvent, TaskState, TaskStatusUpdate


def _now_ms() -> int:
    return int(time.monotonic() * 1000)


class _Signal:
    """A broadcast 'something changed' that waiters can await with a timeout."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def fire(self) -> None:
        self._event.set()
        self._event = asyncio.Event()

    async def wait(self, timeout_ms: int) -> None:
        if timeout_ms <= 0:
            return
        # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancellation that races
        # with the event firing, and then a cancelled reader never stops.
        try:
            async with asyncio.timeout(timeout_ms / 1000):
                await self._event.wait()
        except TimeoutError:
            pass


@dataclass
class _Pending:
    task_id: str
    consumer: str
    since_ms: int
    deliveries: int


@dataclass
class _Queue:
    waiting: OrderedDict[str, str] = field(default_factory=OrderedDict)  # entry id -> task id
    pending: dict[str, _Pending] = field(default_factory=dict)
    signal: _Signal = field(default_factory=_Signal)


class EmbeddedBus(Bus):
    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self._queues: dict[str, _Queue] = {}
        self._ids = itertools.count(1)

    def _queue(self, agent: str) -> _Queue:
        return self._queues.setdefault(agent, _Queue())

    def push(self, agent: str, task_id: str) -> None:
        q = self._queue(agent)
        if len(q.waiting) + len(q.pending) >= self.limits.max_queue:
            raise QueueFull(f"queue of agent {agent!r} is full")
        q.waiting[f"{next(self._ids)}-0"] = task_id
        q.signal.fire()

    async def receive(self, agent: str, consumer: str, *, block_ms: int, count: int = 1) -> list[Delivery]:
        q = self._queue(agent)
        deadline = _now_ms() + block_ms
        while True:
            out = self._claim_stale(q, agent, consumer, count)
            while len(out) < count and q.waiting:
                entry_id, task_id = q.waiting.popitem(last=False)
                q.pending[entry_id] = _Pending(task_id, consumer, _now_ms(), 1)
                out.append(Delivery(agent, entry_id, task_id, 1))
            if out:
                return out
            remaining = deadline - _now_ms()
            if remaining <= 0:
                return []
            # Wake on new entries, or when the oldest pending entry becomes claimable.
            wait = remaining
            if q.pending:
                oldest = min(p.since_ms for p in q.pending.values())
                wait = max(1, min(wait, oldest + self.limits.visibility_timeout_ms - _now_ms()))
            await q.signal.wait(wait)

    def _claim_stale(self, q: _Queue, agent: str, consumer: str, count: int) -> list[Delivery]:
        now, out = _now_ms(), []
        for entry_id, p in q.pending.items():
            if len(out) >= count:
                break
            if now - p.since_ms >= self.limits.visibility_timeout_ms:
                # One this consumer let go itself is no new delivery (base.Bus.receive).
                more = 0 if p.consumer == consumer else 1
                p.consumer, p.since_ms, p.deliveries = consumer, now, p.deliveries + more
                out.append(Delivery(agent, entry_id, p.task_id, p.deliveries))
        return out

    async def extend(self, delivery: Delivery, consumer: str) -> None:
        p = self._queue(delivery.agent).pending.get(delivery.entry_id)
        if p is not None:
            p.consumer, p.since_ms = consumer, _now_ms()

    async def ack(self, delivery: Delivery) -> None:
        q = self._queue(delivery.agent)
        q.pending.pop(delivery.entry_id, None)
        q.waiting.pop(delivery.entry_id, None)

    async def depth(self, agent: str) -> int:
        q = self._queues.get(agent)
        return 0 if q is None else len(q.waiting) + len(q.pending)


class _TaskSlot:
    """One task, its recent events and its run lock.

    A terminal task is kept packed: the task and its events as JSON bytes, which the garbage
    collector does not scan. As objects, the up to 100k finished tasks a default gateway keeps
    made every full collection walk millions of them (about 10 µs per task per pass).
    """

    __slots__ = (
        "accepted_by",
        "context_id",
        "owner",
        "seq",
        "state",
        "signal",
        "lock_owner",
        "lock_until_ms",
        "ended_at",
        "_task",
        "_events",
    )

    def __init__(self, task: Task, accepted_by: str, seq: int) -> None:
        self.accepted_by, self.context_id, self.owner = accepted_by, task.context_id, task.owner
        self.seq, self.state = seq, task.state  # creation order; the state it is indexed under
        self.signal = _Signal()
        self.lock_owner: str | None = None
        self.lock_until_ms = 0
        self.ended_at: float | None = None  # monotonic time the task became terminal
        self._task: Task | bytes = task
        self._events: list[StoredEvent] | list[tuple[str, bytes]] = []

    @property
    def task(self) -> Task:
        """The stored task; do not mutate it (``copy`` gives one to hand out)."""
        t = self._task
        return Task.model_validate_json(t) if isinstance(t, bytes) else t

    def copy(self) -> Task:
        t = self._task
        return Task.model_validate_json(t) if isinstance(t, bytes) else t.snapshot()

    def events(self) -> list[StoredEvent]:
        if isinstance(self._task, bytes):
            return [StoredEvent(event_id, EVENT_JSON.validate_json(raw)) for event_id, raw in self._events]  # type: ignore[misc]
        return self._events  # type: ignore[return-value]

    def record(self, task: Task, stored: StoredEvent, keep: int) -> None:
        self._task = task
        self._events.append(stored)  # type: ignore[arg-type]
        del self._events[:-keep]

    def pack(self) -> None:
        task, events = self._task, self._events
        if isinstance(task, Task):
            self._events = [(e.event_id, EVENT_JSON.dump_json(e.event, exclude_none=True)) for e in events]  # type: ignore[union-attr]
            self._task = task.model_dump_json(exclude_none=True).encode()


class _Index:
    """The tasks of one owner (or of every owner) in one state (or in any), by creation order.

    ``order`` holds creation numbers ascending; a task leaves ``members`` at once and ``order``
    lazily (it is compacted once half of it is gone), so adding, removing and counting are
    amortised O(1) (a task that rejoins, say working again after input-required, is put back
    in place by bisection) and a page costs its offset plus its length.
    """

    __slots__ = ("members", "order")

    def __init__(self) -> None:
        self.members: set[int] = set()
        self.order: list[int] = []

    def add(self, seq: int) -> None:
        if seq in self.members:
            return
        self.members.add(seq)
        if not self.order or seq > self.order[-1]:
            self.order.append(seq)
            return
        at = bisect.bisect_left(self.order, seq)
        if at == len(self.order) or self.order[at] != seq:  # else: still there from before, reused
            self.order.insert(at, seq)

    def discard(self, seq: int) -> None:
        self.members.discard(seq)
        if len(self.order) > 2 * len(self.members) + 32:
            self.order = [s for s in self.order if s in self.members]

    def newest(self) -> Iterator[int]:
        return (seq for seq in reversed(self.order) if seq in self.members)


class EmbeddedTaskStore(TaskStore):
    """Tasks by id, and the indexes that list them (``list``, ``count``): one per owner and state
    (each may be "any": ``_Index``), and per context the creation numbers of its tasks, oldest
    first (a number alone for a context of one task, as most are, so that contexts add nothing
    for the garbage collector to scan): a context's page is read from there, by the owner and
    state its slots keep, never by reading tasks. So no listing scans the store; a context's
    listing reads that context's slots only."""

    def __init__(self, bus: EmbeddedBus, limits: Limits) -> None:
        self.bus, self.limits = bus, limits
        self._tasks: dict[str, _TaskSlot] = {}
        self._seqs = itertools.count(1)
        self._by_seq: dict[int, str] = {}  # creation number -> task id
        self._indexes: dict[tuple[str | None, TaskState | None], _Index] = {}
        # context id -> the creation numbers of its tasks (some gone): one, or an array of them
        self._contexts: dict[str, int | array.array] = {}
        self._context_sizes: dict[str, int] = {}  # context id -> how many of those are not gone
        self._ended: deque[str] = deque()  # terminal task ids in the order they ended
        self._event_ids = itertools.count(1)
        self._finished: deque[tuple[int, Finished]] = deque(maxlen=10_000)
        self._finished_ids = itertools.count(1)
        self._finished_signal = _Signal()

    async def submit(self, task: Task, agent: str, accepted_by: str) -> None:
        if task.id in self._tasks:
            raise TaskExists(f"task {task.id} exists")
        self.bus.push(agent, task.id)  # raises QueueFull before anything is stored
        slot = self._tasks[task.id] = _TaskSlot(task.snapshot(), accepted_by, next(self._seqs))
        self._by_seq[slot.seq] = task.id
        for owner in {None, slot.owner}:
            self._add((owner, None), slot.seq)
            self._add((owner, slot.state), slot.seq)
        seqs = self._contexts.get(slot.context_id)
        if seqs is None:  # most contexts hold one task: its number alone, no object to collect
            self._contexts[slot.context_id] = slot.seq
        elif isinstance(seqs, int):
            self._contexts[slot.context_id] = array.array("q", (seqs, slot.seq))
        else:
            seqs.append(slot.seq)
        self._context_sizes[slot.context_id] = self._context_sizes.get(slot.context_id, 0) + 1
        self._prune()

    def _add(self, key: tuple[str | None, TaskState | None], seq: int) -> None:
        index = self._indexes.get(key)
        if index is None:
            index = self._indexes[key] = _Index()
        index.add(seq)

    def _discard(self, key: tuple[str | None, TaskState | None], seq: int) -> None:
        index = self._indexes.get(key)
        if index is not None:
            index.discard(seq)
            if not index.members:  # an owner's indexes go with its last task
                del self._indexes[key]

    def _restate(self, slot: _TaskSlot, state: TaskState) -> None:
        """Move a task from the indexes of its state to those of ``state``."""
        for owner in {None, slot.owner}:
            self._discard((owner, slot.state), slot.seq)
            self._add((owner, state), slot.seq)
        slot.state = state

    def _prune(self) -> None:
        """Drop finished tasks past the retention period or over the in-memory bound."""
        cutoff = time.monotonic() - self.limits.retention_s
        while self._ended:  # in the order tasks ended, so the first kept one stops the scan
            slot = self._tasks[self._ended[0]]
            if len(self._ended) <= self.limits.max_finished_tasks and slot.ended_at > cutoff:
                break
            del self._tasks[self._ended.popleft()]
            del self._by_seq[slot.seq]
            for owner in {None, slot.owner}:
                self._discard((owner, None), slot.seq)
                self._discard((owner, slot.state), slot.seq)
            self._forget_in_context(slot.context_id)

    def _forget_in_context(self, context_id: str) -> None:
        size = self._context_sizes[context_id] - 1
        seqs = self._contexts[context_id]
        if not size:
            del self._context_sizes[context_id], self._contexts[context_id]
            return
        self._context_sizes[context_id] = size
        if isinstance(seqs, array.array) and len(seqs) > 2 * size + 8:  # amortised: once half is gone
            self._contexts[context_id] = array.array("q", (s for s in seqs if s in self._by_seq))

    def _in_context(self, context_id: str, owner: str | None, state: TaskState | None) -> Iterator[int]:
        """Creation numbers of a context's tasks of ``owner`` in ``state`` (None: any), newest first."""
        seqs = self._contexts.get(context_id, ())
        for seq in (seqs,) if isinstance(seqs, int) else reversed(seqs):
            task_id = self._by_seq.get(seq)
            if task_id is None:
                continue
            slot = self._tasks[task_id]
            if (owner is None or slot.owner == owner) and (state is None or slot.state is state):
                yield seq

    def _matching(self, context_id: str | None, owner: str | None, state: TaskState | None) -> Iterator[int]:
        if context_id:
            return self._in_context(context_id, owner, state)
        index = self._indexes.get((owner, state))
        return iter(()) if index is None else index.newest()

    async def requeue(self, task: Task, agent: str) -> None:
        self._slot(task.id)
        self.bus.push(agent, task.id)

    def _slot(self, task_id: str) -> _TaskSlot:
        slot = self._tasks.get(task_id)
        if slot is None:
            raise TaskNotFound(f"task {task_id} not found")
        return slot

    async def get(self, task_id: str) -> Task | None:
        slot = self._tasks.get(task_id)
        return None if slot is None else slot.copy()

    async def list(self, context_id=None, limit=50, cursor=None, owner=None, state=None):
        start = cursor_offset(cursor)
        page = list(itertools.islice(self._matching(context_id, owner, state), start, start + limit + 1))
        nxt = str(start + limit) if len(page) > limit else None  # the one extra: more follow
        return [self._tasks[self._by_seq[seq]].copy() for seq in page[:limit]], nxt

    async def count(self, context_id=None, owner=None, state=None):
        if context_id:
            return sum(1 for _ in self._in_context(context_id, owner, state))
        index = self._indexes.get((owner, state))
        return 0 if index is None else len(index.members)

    async def apply(self, task_id: str, event: TaskEvent) -> tuple[Task, str]:
        slot = self._slot(task_id)
        task = slot.task.apply(event)  # raises InvalidTransition, leaving the slot unchanged
        if task.state is not slot.state:
            self._restate(slot, task.state)
        stored = StoredEvent(f"{next(self._event_ids)}-0", event)
        slot.record(task, stored, self.limits.max_events_per_task)
        slot.signal.fire()
        if isinstance(event, TaskStatusUpdate) and event.final:
            agent = task.route.agent if task.route else ""
            fin = Finished(task_id, event.status.state, slot.accepted_by, task.created_at, agent)
            self._finished.append((next(self._finished_ids), fin))
            self._finished_signal.fire()
        if task.state.terminal:
            slot.ended_at = time.monotonic()
            self._ended.append(task_id)
            slot.pack()
            return task, stored.event_id  # the store keeps its own packed copy
        return task.snapshot(), stored.event_id

    async def read_events(self, task_id: str, after: str | None, block_ms: int) -> list[StoredEvent]:
        slot = self._slot(task_id)
        for attempt in range(2):
            out = [e for e in slot.events() if after is None or _id_gt(e.event_id, after)]
            if out or attempt:
                return out
            await slot.signal.wait(block_ms)
        return []

    async def read_finished(self, after: str | None, block_ms: int):
        newest = self._finished[-1][0] if self._finished else 0
        last = int(after) if after is not None else newest
        if newest <= last:
            await self._finished_signal.wait(block_ms)
            newest = self._finished[-1][0] if self._finished else 0
        # Ids are consecutive, so the entries after ``last`` are the deque's tail.
        fresh = min(newest - last, len(self._finished))
        out = [f for _, f in itertools.islice(reversed(self._finished), fresh)][::-1] if fresh > 0 else []
        return out, str(max(last, newest))

    async def lock(self, task_id: str, owner: str, ttl_ms: int) -> bool:
        slot = self._slot(task_id)
        now = _now_ms()
        if slot.lock_owner not in (None, owner) and slot.lock_until_ms > now:
            return False
        slot.lock_owner, slot.lock_until_ms = owner, now + ttl_ms
        return True

    async def unlock(self, task_id: str, owner: str) -> None:
        slot = self._tasks.get(task_id)
        if slot is not None and slot.lock_owner == owner:
            slot.lock_owner, slot.lock_until_ms = None, 0


def _id_gt(a: str, b: str) -> bool:
    return tuple(map(int, a.split("-"))) > tuple(map(int, b.split("-")))


class EmbeddedKeyValue(KeyValue):
    """Keys with a lifetime, dropped soon after it ends by sweeping an expiry queue.

    The queue has one bucket per second of expiry time. A key is queued once, in the bucket of
    its expiry (again only if a write shortens it); each write sweeps the buckets whose second
    has passed, dropping the keys that expired and moving the ones re-written since to the
    bucket of their new expiry. Each queued key is visited once per lifetime, so a write costs
    amortised O(1) however many keys are live (a scan of every key on each write, as before,
    took 6.8 ms a write with 100k live keys: P16 of the security review).
    """

    def __init__(self) -> None:
        self._data: dict[str, tuple[str, float]] = {}
        self._buckets: defaultdict[int, list[str]] = defaultdict(list)
        self._swept = int(time.monotonic())  # the buckets of every earlier second are swept

    async def get(self, key: str) -> str | None:
        item = self._data.get(key)
        if item is None or item[1] <= time.monotonic():
            self._data.pop(key, None)
            return None
        return item[0]

    async def set(self, key: str, value: str, ttl_s: int, *, only_new: bool = False) -> bool:
        if only_new and await self.get(key) is not None:
            return False
        now = time.monotonic()
        old = self._data.get(key)
        expires = now + ttl_s
        self._data[key] = (value, expires)
        if old is None or expires < old[1]:  # not queued, or queued for a later second
            self._buckets[int(expires)].append(key)
        self._sweep(now)
        return True

    def _sweep(self, now: float) -> None:
        if not self._buckets:
            self._swept = int(now)
            return
        while self._swept < int(now):
            for key in self._buckets.pop(self._swept, ()):
                item = self._data.get(key)
                if item is None:
                    continue  # deleted
                if item[1] <= now:
                    del self._data[key]
                else:  # re-written with a later expiry
                    self._buckets[int(item[1])].append(key)
            self._swept += 1

    async def delete(self, key: str) -> None:
        self._data.pop(key, None)


class EmbeddedBackend(Backend):
    name = "embedded"
    shared = False  # one process

    def __init__(self, limits: Limits | None = None) -> None:
        self.limits = limits or Limits()
        self.bus = EmbeddedBus(self.limits)
        self.tasks = EmbeddedTaskStore(self.bus, self.limits)
        self.records = MemoryRecordStore()
        self.kv = EmbeddedKeyValue()

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        return None
