"""Redis Streams backend: how Interlace runs as many processes on one or more machines.

Keys (prefix ``il:``):
  q:{agent}          stream of task ids, consumer group ``workers``; acked entries are deleted,
                     so XLEN is the queue depth and the bound on it is exact
  t:{id}             hash: ``task`` (canonical JSON), ``by`` (accepting node), ``applied``
                     (a token that changes with every event: the compare-and-set version)
  t:{id}:ev          stream of the task's status/artifact events (approximately trimmed)
  t:{id}:lock        run lock of the worker executing the task (the idempotency key)
  tasks, ctx:{cid}   sorted sets of task ids by creation time (the indexes that list tasks; also
  own:{o}, octx:{o}:{cid}   per owner, ``o`` a digest of the owner's id), and each of them by
  st:{state}:...     state (``st:completed:tasks``, ``st:working:own:{o}`` ...); an index per
                     owner or context expires with its last task and is pruned as it grows, the
                     two global ones are pruned once a second
  finished           stream of tasks that became final (metrics, ?wait=true)
  reg, reg:seq, reg:feed  signed agent records (see registry/store.py)
  kv:{key}           small shared state with a TTL (protocol sessions, nonces)

Each step of a task is one Lua script, so one round trip: submit (store + enqueue, or nothing),
take a delivery for a run (task, lock, entry clock), apply an event (a compare-and-set against
the ``applied`` token this node last saw: state, event, finished entry and expiries land
together or not at all), end a run (ack + unlock).
"""

from __future__ import annotations

import functools
import hashlib
import time
import uuid
from collections import OrderedDict
from typing import Any

from gateway.core.backends.base import (
    EVENT_JSON,
    Backend,
    BackendUnavailable,
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
from registry.store import RedisRecordStore
from schemas import InvalidTransition, Task, TaskEvent, TaskState, TaskStatusUpdate

try:
    import redis.asyncio as aioredis
    from redis import exceptions as rexc
    from redis.asyncio.retry import Retry
    from redis.backoff import ExponentialBackoff
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError("the Redis backend needs the 'redis' extra: pip install 'interlace[redis]'") from exc

GROUP = "workers"
_UNAVAILABLE = (rexc.ConnectionError, rexc.TimeoutError, rexc.BusyLoadingError, OSError)

# KEYS: the agent's stream, the task hash, the two global indexes, then the task's indexes per
# context and owner (these expire with their last task and are pruned as they grow).
SUBMIT = """
if redis.call('EXISTS', KEYS[2]) == 1 then
  if redis.call('HGET', KEYS[2], 'nonce') == ARGV[6] then return 1 end  -- our own retried call
  return -1
end
if redis.call('XLEN', KEYS[1]) >= tonumber(ARGV[5]) then return -2 end
redis.call('HSET', KEYS[2], 'task', ARGV[1], 'by', ARGV[2], 'nonce', ARGV[6], 'at', ARGV[4])
redis.call('ZADD', KEYS[3], ARGV[4], ARGV[3])
redis.call('ZADD', KEYS[4], ARGV[4], ARGV[3])
for i = 5, #KEYS do
  redis.call('ZREMRANGEBYSCORE', KEYS[i], 0, ARGV[7])
  redis.call('ZADD', KEYS[i], ARGV[4], ARGV[3])
  redis.call('PEXPIRE', KEYS[i], ARGV[8])
end
redis.call('XADD', KEYS[1], '*', 'task', ARGV[3])
return 1
"""

ENQUEUE = """
if redis.call('XLEN', KEYS[1]) >= tonumber(ARGV[2]) then return -2 end
redis.call('XADD', KEYS[1], '*', 'task', ARGV[1])
return 1
"""

LOCK = """
local v = redis.call('GET', KEYS[1])
if v == false or v == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""

# Compare-and-set of a task: applied only if the task's 'applied' token is still the one the
# caller computed the new task from; a retry of a call that landed (its reply lost in a
# reconnect) finds its own token and answers as the first call did.
# KEYS: task hash, its event stream, the finished feed, its lock, then (when the state changes)
# the ARGV[11] state indexes it leaves, the global index of its new state and the others it joins.
# ARGV: token read, new token, new task JSON, event JSON, max events, final state or '',
# task id, created_at, agent, retention seconds or '' (not terminal), indexes left, the
# prune cutoff (ms) and retention (ms) of the indexes joined, now (ms: the score of a task
# stored without its creation time).
APPLY = """
local cur = redis.call('HGET', KEYS[1], 'applied') or ''
if cur == ARGV[2] then
  local last = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1)
  return {1, last[1] and last[1][1] or '0-0'}
end
if redis.call('EXISTS', KEYS[1]) == 0 then return {-1, ''} end
if cur ~= ARGV[1] then return {0, ''} end
redis.call('HSET', KEYS[1], 'task', ARGV[3], 'applied', ARGV[2])
local id = redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[5], '*', 'e', ARGV[4])
if ARGV[6] ~= '' then
  local by = redis.call('HGET', KEYS[1], 'by') or ''
  redis.call('XADD', KEYS[3], 'MAXLEN', '~', 10000, '*',
             'id', ARGV[7], 'state', ARGV[6], 'by', by, 'at', ARGV[8], 'agent', ARGV[9])
end
if ARGV[10] ~= '' then
  for _, key in ipairs({KEYS[1], KEYS[2], KEYS[4]}) do redis.call('EXPIRE', key, ARGV[10]) end
end
if #KEYS > 4 then
  local left, at = tonumber(ARGV[11]), redis.call('HGET', KEYS[1], 'at') or ARGV[14]
  for i = 5, 4 + left do redis.call('ZREM', KEYS[i], ARGV[7]) end
  redis.call('ZADD', KEYS[5 + left], at, ARGV[7])
  for i = 6 + left, #KEYS do
    redis.call('ZREMRANGEBYSCORE', KEYS[i], 0, ARGV[12])
    redis.call('ZADD', KEYS[i], at, ARGV[7])
    redis.call('PEXPIRE', KEYS[i], ARGV[13])
  end
end
return {1, id}
"""

# A worker takes a delivered task for a run: the task (with its 'applied' token), its run lock
# when free or already ours, and the entry's clock restarted after the lock's, in one round trip.
# KEYS: task hash, its lock, the agent's stream. ARGV: consumer, lock TTL ms, group, entry id.
TAKE = """
local got = redis.call('HMGET', KEYS[1], 'task', 'applied')
if not got[1] then return {'', '', 0} end
local holder = redis.call('GET', KEYS[2])
if holder and holder ~= ARGV[1] then return {got[1], got[2] or '', 0} end
redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
redis.call('XCLAIM', KEYS[3], ARGV[3], ARGV[1], 0, ARGV[4], 'JUSTID')
return {got[1], got[2] or '', 1}
"""

# KEYS: the agent's stream, the task's lock. ARGV: group, entry id, consumer.
END_RUN = """
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
if redis.call('GET', KEYS[2]) == ARGV[3] then redis.call('DEL', KEYS[2]) end
return 1
"""

UNLOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def _translate(fn):
    """Map connection-level Redis failures to BackendUnavailable (503 upstream of here)."""

    @functools.wraps(fn)
    async def wrapper(*args, **kwargs):
        try:
            return await fn(*args, **kwargs)
        except _UNAVAILABLE as exc:
            raise BackendUnavailable(f"redis unavailable: {exc.__class__.__name__}") from exc

    return wrapper


def _q(agent: str) -> str:
    return f"il:q:{agent}"


def _t(task_id: str) -> str:
    return f"il:t:{task_id}"


def _index(context_id: str | None = None, owner: str | None = None, state: TaskState | None = None) -> str:
    """The sorted set of the tasks (by creation time) of a context (any: None) and an owner (any:
    None; contexts are per caller, and owner ids, any string, are hashed so keys cannot
    collide), in one state or any. States hold no ':', so every key is unambiguous."""
    prefix = "il:" if state is None else f"il:st:{state.value}:"
    if context_id:
        return f"{prefix}ctx:{context_id}" if owner is None else f"{prefix}octx:{_digest(owner)}:{context_id}"
    return f"{prefix}tasks" if owner is None else f"{prefix}own:{_digest(owner)}"


def _indexes(task: Task, state: TaskState | None) -> list[str]:
    """The indexes ``task`` is in (for ``state``: those of that state), the global one first."""
    scopes = [(None, None), (task.context_id, None)]
    if task.owner is not None:
        scopes += [(None, task.owner), (task.context_id, task.owner)]
    return [_index(context, owner, state) for context, owner in scopes]


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _lock(task_id: str) -> str:
    return f"il:t:{task_id}:lock"


class RedisBus(Bus):
    def __init__(self, r: aioredis.Redis, limits: Limits) -> None:
        self.r, self.limits = r, limits
        self._groups: set[str] = set()
        self._claimed_at: dict[str, float] = {}

    async def _ensure_group(self, agent: str) -> None:
        if agent in self._groups:
            return
        try:
            await self.r.xgroup_create(_q(agent), GROUP, id="0", mkstream=True)
        except rexc.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._groups.add(agent)

    @_translate
    async def receive(self, agent: str, consumer: str, *, block_ms: int, count: int = 1) -> list[Delivery]:
        await self._ensure_group(agent)
        try:
            return await self._receive(agent, consumer, block_ms, count)
        except rexc.ResponseError as exc:
            if "NOGROUP" not in str(exc):  # the stream was lost (Redis restarted without it)
                raise
            self._groups.discard(agent)
            await self._ensure_group(agent)
            return []

    async def _receive(self, agent: str, consumer: str, block_ms: int, count: int) -> list[Delivery]:
        # Block in slices so entries of dead consumers are claimed soon after they turn stale.
        deadline = time.monotonic() + block_ms / 1000
        slice_ms = max(50, self.limits.visibility_timeout_ms // 4)
        while True:
            # Entries turn stale only after the visibility timeout: looking once a slice is enough.
            now = time.monotonic()
            if now - self._claimed_at.get(agent, 0.0) >= slice_ms / 1000:
                self._claimed_at[agent] = now
                claimed = await self._claim_stale(agent, consumer, count)
                if claimed:
                    return claimed
            remaining = int((deadline - time.monotonic()) * 1000)
            got = await self.r.xreadgroup(
                GROUP, consumer, {_q(agent): ">"}, count=count, block=max(1, min(remaining, slice_ms))
            )
            fresh = [Delivery(agent, eid, f["task"], 1) for _, entries in got or [] for eid, f in entries]
            if fresh or remaining <= slice_ms:
                return fresh

    async def _claim_stale(self, agent: str, consumer: str, count: int) -> list[Delivery]:
        _, claimed, _ = await self.r.xautoclaim(
            _q(agent), GROUP, consumer, self.limits.visibility_timeout_ms, "0-0", count=count
        )
        if not claimed:
            return []
        pending = await self.r.xpending_range(
            _q(agent), GROUP, min=claimed[0][0], max=claimed[-1][0], count=len(claimed) + 16
        )
        times = {p["message_id"]: p["times_delivered"] for p in pending}
        return [Delivery(agent, eid, f["task"], int(times.get(eid, 2))) for eid, f in claimed if f]

    @_translate
    async def extend(self, delivery: Delivery, consumer: str) -> None:
        await self.r.xclaim(_q(delivery.agent), GROUP, consumer, 0, [delivery.entry_id], justid=True)

    @_translate
    async def ack(self, delivery: Delivery) -> None:
        async with self.r.pipeline(transaction=True) as p:
            p.xack(_q(delivery.agent), GROUP, delivery.entry_id)
            p.xdel(_q(delivery.agent), delivery.entry_id)
            await p.execute()

    @_translate
    async def depth(self, agent: str) -> int:
        return int(await self.r.xlen(_q(agent)))


class RedisTaskStore(TaskStore):
    def __init__(self, r: aioredis.Redis, limits: Limits) -> None:
        self.r, self.limits = r, limits
        self._submit = r.register_script(SUBMIT)
        self._enqueue = r.register_script(ENQUEUE)
        self._lock = r.register_script(LOCK)
        self._unlock = r.register_script(UNLOCK)
        self._apply = r.register_script(APPLY)
        # The last version this node wrote of each running task, with its 'applied' token: the
        # next event of a task (almost always from this node's worker) is then one round trip.
        self._known: OrderedDict[str, tuple[str, Task]] = OrderedDict()
        self._pruned_at = 0

    @_translate
    async def submit(self, task: Task, agent: str, accepted_by: str) -> None:
        score = int(time.time() * 1000)
        anystate, instate = _indexes(task, None), _indexes(task, task.state)
        keys = [_q(agent), _t(task.id), anystate[0], instate[0], *anystate[1:], *instate[1:]]
        nonce = uuid.uuid4().hex  # makes a retried submit (reply lost in a reconnect) idempotent
        retention_ms = self.limits.retention_s * 1000
        args = [task.model_dump_json(exclude_none=True), accepted_by, task.id, score, self.limits.max_queue, nonce]
        args += [score - retention_ms, retention_ms]
        result = await self._submit(keys=keys, args=args)
        if result == -1:
            raise TaskExists(f"task {task.id} exists")
        if result == -2:
            raise QueueFull(f"queue of agent {agent!r} is full")
        self.remember(task.id, "", task.snapshot())  # a worker of this node makes the first write
        await self._prune(score)

    def remember(self, task_id: str, token: str, task: Task) -> None:
        """Keep this node's copy of a running task for the next ``apply`` (a compare-and-set)."""
        self._known[task_id] = (token, task)
        while len(self._known) > 4096:
            self._known.popitem(last=False)

    async def _prune(self, now_ms: int) -> None:
        # Ids of expired tasks linger in the global indexes; drop the ones past retention (once a second).
        if now_ms - self._pruned_at >= 1000:
            self._pruned_at = now_ms
            async with self.r.pipeline(transaction=False) as p:
                for state in (None, *TaskState):
                    p.zremrangebyscore(_index(state=state), 0, now_ms - self.limits.retention_s * 1000)
                await p.execute()

    @_translate
    async def requeue(self, task: Task, agent: str) -> None:
        if await self._enqueue(keys=[_q(agent)], args=[task.id, self.limits.max_queue]) == -2:
            raise QueueFull(f"queue of agent {agent!r} is full")

    @_translate
    async def get(self, task_id: str) -> Task | None:
        raw = await self.r.hget(_t(task_id), "task")
        return None if raw is None else Task.model_validate_json(raw)

    @_translate
    async def list(self, context_id=None, limit=50, cursor=None, owner=None, state=None):
        start = cursor_offset(cursor)
        ids = await self.r.zrevrange(_index(context_id, owner, state), start, start + limit)  # one extra: more?
        more = len(ids) > limit
        ids = ids[:limit]
        tasks = []
        if ids:
            async with self.r.pipeline(transaction=False) as p:
                for tid in ids:
                    p.hget(_t(tid), "task")
                raws = await p.execute()
            tasks = [Task.model_validate_json(raw) for raw in raws if raw is not None]
        return tasks, str(start + limit) if more else None

    @_translate
    async def count(self, context_id=None, owner=None, state=None):
        return int(await self.r.zcard(_index(context_id, owner, state)))

    @_translate
    async def apply(self, task_id: str, event: TaskEvent) -> tuple[Task, str]:
        key, token = _t(task_id), uuid.uuid4().hex
        known = self._known.pop(task_id, None)
        while True:
            fresh = known is None
            if known is None:
                raw, applied = await self.r.hmget(key, "task", "applied")
                if raw is None:
                    raise TaskNotFound(f"task {task_id} not found")
                known = (applied or "", Task.model_validate_json(raw))
            read_token, current = known
            try:
                task = current.apply(event)
            except InvalidTransition:
                if fresh:
                    raise
                known = None  # judged on this node's copy: check the stored task before refusing
                continue
            final = isinstance(event, TaskStatusUpdate) and event.final
            args = [
                read_token,
                token,
                task.model_dump_json(exclude_none=True),
                event.model_dump_json(exclude_none=True),
                self.limits.max_events_per_task,
                event.status.state.value if final else "",  # type: ignore[union-attr]
                task_id,
                task.created_at,
                task.route.agent if task.route else "",
                self.limits.retention_s if task.state.terminal else "",
            ]
            keys = [key, f"{key}:ev", "il:finished", _lock(task_id)]
            if task.state is not current.state:
                left = _indexes(current, current.state)
                keys += [*left, *_indexes(task, task.state)]
                now_ms, retention_ms = int(time.time() * 1000), self.limits.retention_s * 1000
                args += [len(left), now_ms - retention_ms, retention_ms, now_ms]
            status, event_id = await self._apply(keys=keys, args=args)
            if status == -1:
                raise TaskNotFound(f"task {task_id} not found")
            if status == 1:
                if not task.state.terminal:
                    self.remember(task_id, token, task)
                return task.snapshot(), event_id
            known = None  # another writer got there first: read it again

    @_translate
    async def read_events(self, task_id: str, after: str | None, block_ms: int) -> list[StoredEvent]:
        key = f"{_t(task_id)}:ev"
        if after is None and not await self.r.exists(_t(task_id)):
            raise TaskNotFound(f"task {task_id} not found")
        kwargs: dict[str, Any] = {"block": block_ms} if block_ms > 0 else {}
        got = await self.r.xread({key: after or "0-0"}, count=500, **kwargs)
        return [StoredEvent(eid, EVENT_JSON.validate_json(f["e"])) for _, entries in got or [] for eid, f in entries]

    @_translate
    async def read_finished(self, after: str | None, block_ms: int):
        if after is None:
            last = await self.r.xrevrange("il:finished", count=1)
            after = last[0][0] if last else "0-0"
        kwargs: dict[str, Any] = {"block": block_ms} if block_ms > 0 else {}
        got = await self.r.xread({"il:finished": after}, count=1000, **kwargs)
        out = []
        for _, entries in got or []:
            for eid, f in entries:
                out.append(Finished(f["id"], TaskState(f["state"]), f["by"], f["at"], f.get("agent", "")))
                after = eid
        return out, after

    @_translate
    async def lock(self, task_id: str, owner: str, ttl_ms: int) -> bool:
        return bool(await self._lock(keys=[_lock(task_id)], args=[owner, ttl_ms]))

    @_translate
    async def unlock(self, task_id: str, owner: str) -> None:
        await self._unlock(keys=[_lock(task_id)], args=[owner])


class RedisKeyValue(KeyValue):
    def __init__(self, r: aioredis.Redis) -> None:
        self.r = r

    @_translate
    async def get(self, key: str) -> str | None:
        return await self.r.get(f"il:kv:{key}")

    @_translate
    async def set(self, key: str, value: str, ttl_s: int, *, only_new: bool = False) -> bool:
        return bool(await self.r.set(f"il:kv:{key}", value, ex=ttl_s, nx=only_new))

    @_translate
    async def delete(self, key: str) -> None:
        await self.r.delete(f"il:kv:{key}")


class _RecordStore(RedisRecordStore):
    """The registry's Redis store, with connection failures reported as BackendUnavailable."""

    put_if_newer = _translate(RedisRecordStore.put_if_newer)
    load = _translate(RedisRecordStore.load)
    changes = _translate(RedisRecordStore.changes)
    drop = _translate(RedisRecordStore.drop)


class RedisBackend(Backend):
    name = "redis"
    shared = True  # every node on the same Redis sees the same state

    def __init__(self, url: str, limits: Limits | None = None) -> None:
        self.limits = limits or Limits()
        # Retry a command once or twice on a dropped connection: after a Redis restart the pool
        # still holds sockets to the old process. Our writes are idempotent under a retry
        # (submit carries a nonce, events are transition-checked, acks and locks are idempotent).
        self.r = aioredis.Redis.from_url(
            url,
            decode_responses=True,
            socket_connect_timeout=2,
            socket_keepalive=True,
            health_check_interval=15,
            retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), 2),
            retry_on_error=[rexc.ConnectionError, rexc.TimeoutError],
        )
        self.bus = RedisBus(self.r, self.limits)
        self.tasks = RedisTaskStore(self.r, self.limits)
        self.records = _RecordStore(self.r)
        self.kv = RedisKeyValue(self.r)
        self._take = self.r.register_script(TAKE)
        self._end_run = self.r.register_script(END_RUN)

    @_translate
    async def take_run(self, delivery: Delivery, consumer: str, ttl_ms: int) -> tuple[Task | None, bool]:
        keys = [_t(delivery.task_id), _lock(delivery.task_id), _q(delivery.agent)]
        raw, applied, locked = await self._take(keys=keys, args=[consumer, ttl_ms, GROUP, delivery.entry_id])
        if not raw:
            return None, False
        task = Task.model_validate_json(raw)
        if locked:
            self.tasks.remember(task.id, applied, task.snapshot())  # this run's first write is one round trip
        return task, bool(locked)

    @_translate
    async def end_run(self, delivery: Delivery, consumer: str) -> None:
        keys = [_q(delivery.agent), _lock(delivery.task_id)]
        await self._end_run(keys=keys, args=[GROUP, delivery.entry_id, consumer])

    @_translate
    async def ping(self) -> None:
        await self.r.ping()

    async def close(self) -> None:
        await self.r.aclose()
