"""Redis Streams backend: how Interlace runs as many processes on one or more machines.

One Redis, Redis Cluster (or Valkey cluster) and Sentinel are the same layout (URLs and error
mapping: ``redis_client``). Keys (prefix ``il:``) carry a hash tag, so each script touches one
cluster slot:
  q:{agent}          stream of task ids, consumer group ``workers``; acked entries are deleted,
                     so XLEN is the queue depth and the bound on it is exact. With the URL's
                     ``queue_shards`` N > 1, an agent's queue spans N streams
                     (``q:{agent}``, ``q:{agent#1}`` ... on as many slots), a task going to the
                     one its id hashes to; workers read them all
  {b}:t:{id}         hash: ``task`` (canonical JSON), ``by`` (accepting node), ``applied``
                     (a token that changes with every event: the compare-and-set version)
  {b}:t:{id}:ev      stream of the task's status/artifact events (approximately trimmed)
  {b}:t:{id}:lock    run lock of the worker executing the task (the idempotency key)
  {b}:tasks, {b}:ctx:{cid}   sorted sets of task ids by creation time (the indexes that list
  {b}:own:{o}, {b}:octx:{o}:{cid}   tasks; per owner, ``o`` a digest of the owner's id), and each
  {b}:st:{state}:... of them by state; an index per owner or context expires with its last task
                     and is pruned as it grows, the global ones are pruned a bucket a second
  {b}:finished       stream of tasks that became final (metrics, ?wait=true)
  {reg}:...          signed agent records (see registry/store.py)
  kv:{key}           small shared state with a TTL (protocol sessions, nonces)
``b`` is the task's bucket, a hash of its id: one bucket on one Redis or behind Sentinel,
``CLUSTER_BUCKETS`` on a cluster, so no key is written by every task (each index and the
finished feed is one key per bucket, and lists merge the buckets' pages). A task's hash, events,
lock, index entries and finished entry share its bucket's slot: every event lands with all it
changes at once.

Each step of a task is one Lua script, so one round trip on one Redis: submit (store + enqueue,
or nothing), take a delivery for a run (task, lock, entry clock), apply an event (a
compare-and-set against the ``applied`` token this node last saw: state, event, finished entry
and expiries land together or not at all), end a run (ack + unlock). On a cluster the queue is
in another slot than the task, so the steps that touch both split in two, each crash window
closed: submit enqueues first, then stores (a worker that finds no task waits out
``ORPHAN_GRACE_S`` for the store before it drops the entry, a store that lands later than half
that enqueues again, a duplicate being a plain redelivery, and a store that fails takes its
entry back); take and end run their task
half and queue half separately (a lock without a restarted entry clock, or an ack without an
unlock, resolves itself when the lock's TTL lapses).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
import uuid
import zlib
from collections import OrderedDict
from typing import Any

from gateway.core.backends import redis_client
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
from gateway.core.backends.redis_client import rexc, translate
from registry.store import RedisRecordStore
from schemas import InvalidTransition, Task, TaskEvent, TaskState, TaskStatusUpdate

GROUP = "workers"
CLUSTER_BUCKETS = 16  # spreads tasks over the slots of 16 tags: a few per master of a small cluster
ORPHAN_GRACE_S = 2.0  # cluster: how long a delivered task id may wait for its task to be stored

# KEYS: the task hash, the two global indexes (any state, the task's state), then the task's
# indexes per context and owner (these expire with their last task and are pruned as they
# grow), then, when ARGV[9] is '1', the agent's stream (one Redis: store and enqueue at once;
# a cluster enqueues first, on the stream's own slot).
SUBMIT = """
local last, q = #KEYS, nil
if ARGV[9] == '1' then q = KEYS[#KEYS]; last = #KEYS - 1 end
if redis.call('EXISTS', KEYS[1]) == 1 then
  if redis.call('HGET', KEYS[1], 'nonce') == ARGV[6] then return 1 end  -- our own retried call
  return -1
end
if q and redis.call('XLEN', q) >= tonumber(ARGV[5]) then return -2 end
redis.call('HSET', KEYS[1], 'task', ARGV[1], 'by', ARGV[2], 'nonce', ARGV[6], 'at', ARGV[4])
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[3])
redis.call('ZADD', KEYS[3], ARGV[4], ARGV[3])
for i = 4, last do
  redis.call('ZREMRANGEBYSCORE', KEYS[i], 0, ARGV[7])
  redis.call('ZADD', KEYS[i], ARGV[4], ARGV[3])
  redis.call('PEXPIRE', KEYS[i], ARGV[8])
end
if q then redis.call('XADD', q, '*', 'task', ARGV[3]) end
return 1
"""

ENQUEUE = """
if redis.call('XLEN', KEYS[1]) >= tonumber(ARGV[2]) then return -2 end
return redis.call('XADD', KEYS[1], '*', 'task', ARGV[1])
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
# KEYS: task hash, its event stream, its bucket's finished feed, its lock, then (when the state
# changes) the ARGV[11] state indexes it leaves, the global index of its new state and the
# others it joins (all in the task's bucket).
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
# when free or already ours, and (one Redis: KEYS[3] given) the entry's clock restarted after
# the lock's, in one round trip. KEYS: task hash, its lock[, the agent's stream].
# ARGV: consumer, lock TTL ms, group, entry id.
TAKE = """
local got = redis.call('HMGET', KEYS[1], 'task', 'applied')
if not got[1] then return {'', '', 0} end
local holder = redis.call('GET', KEYS[2])
if holder and holder ~= ARGV[1] then return {got[1], got[2] or '', 0} end
redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
if KEYS[3] then redis.call('XCLAIM', KEYS[3], ARGV[3], ARGV[1], 0, ARGV[4], 'JUSTID') end
return {got[1], got[2] or '', 1}
"""

# Ack an entry (and, one Redis: KEYS[2] given, drop the consumer's run lock).
# KEYS: the agent's stream[, the task's lock]. ARGV: group, entry id, consumer.
END_RUN = """
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
if KEYS[2] and redis.call('GET', KEYS[2]) == ARGV[3] then redis.call('DEL', KEYS[2]) end
return 1
"""

UNLOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _hash(text: str) -> int:
    return zlib.crc32(text.encode())


class Keys:
    """The key of everything, given how many buckets tasks spread over and how many streams an
    agent's queue spans."""

    def __init__(self, buckets: int, shards: int) -> None:
        self.buckets, self.shards = buckets, shards

    def bucket(self, task_id: str) -> int:
        return _hash(task_id) % self.buckets if self.buckets > 1 else 0

    def task(self, task_id: str) -> str:
        return f"il:{{{self.bucket(task_id)}}}:t:{task_id}"

    def events(self, task_id: str) -> str:
        return self.task(task_id) + ":ev"

    def lock(self, task_id: str) -> str:
        return self.task(task_id) + ":lock"

    def finished(self, bucket: int) -> str:
        return f"il:{{{bucket}}}:finished"

    def queue(self, agent: str, task_id: str | None = None) -> str:
        """The stream of ``agent`` that ``task_id`` goes to (the first one without a task)."""
        shard = _hash(task_id) % self.shards if task_id is not None and self.shards > 1 else 0
        return self.queue_shard(agent, shard)

    def queue_shard(self, agent: str, shard: int) -> str:
        return f"il:q:{{{agent}}}" if shard == 0 else f"il:q:{{{agent}#{shard}}}"

    def queues(self, agent: str) -> list[str]:
        return [self.queue_shard(agent, s) for s in range(self.shards)]

    def index(
        self, bucket: int, context_id: str | None = None, owner: str | None = None, state: TaskState | None = None
    ) -> str:
        """The sorted set, in ``bucket``, of the tasks (by creation time) of a context (any: None)
        and an owner (any: None; contexts are per caller, and owner ids, any string, are hashed
        so keys cannot collide), in one state or any. States hold no ':', so every key is
        unambiguous."""
        prefix = f"il:{{{bucket}}}:" if state is None else f"il:{{{bucket}}}:st:{state.value}:"
        if context_id:
            return f"{prefix}ctx:{context_id}" if owner is None else f"{prefix}octx:{_digest(owner)}:{context_id}"
        return f"{prefix}tasks" if owner is None else f"{prefix}own:{_digest(owner)}"

    def indexes(self, task: Task, state: TaskState | None) -> list[str]:
        """The indexes ``task`` is in (for ``state``: those of that state), the global one first."""
        scopes = [(None, None), (task.context_id, None)]
        if task.owner is not None:
            scopes += [(None, task.owner), (task.context_id, task.owner)]
        bucket = self.bucket(task.id)
        return [self.index(bucket, context, owner, state) for context, owner in scopes]


class NotReplicated(BackendUnavailable):
    """A write landed on the primary but fewer replicas than asked confirmed it in time."""


class Conn:
    """The client, its mode and key layout, and writes acknowledged as the URL asks (``replicas``)."""

    def __init__(self, target: redis_client.Target) -> None:
        self.target, self.r = target, redis_client.connect(target)
        self.cluster = target.mode == "cluster"
        self.keys = Keys(CLUSTER_BUCKETS if self.cluster else 1, max(1, target.queue_shards))

    async def write(self, script: Any, keys: list[str], args: list[Any]) -> Any:
        """Run a write script; with ``replicas`` N, acknowledged only once N replicas have it."""
        n = self.target.replicas
        if not n:
            return await script(keys=keys, args=args)
        timeout = self.target.replica_timeout_ms
        if self.cluster:
            result = await script(keys=keys, args=args)
            node = self.r.get_node_from_key(keys[0])
            acked = await self.r.execute_command("WAIT", n, timeout, target_nodes=node)
        else:
            async with self.r.pipeline(transaction=False) as p:  # one round trip: the write, then WAIT
                await script(keys=keys, args=args, client=p)
                p.execute_command("WAIT", n, timeout)
                result, acked = await p.execute()
        if int(acked) < n:
            raise NotReplicated(f"redis: {acked} of {n} replicas confirmed a write within {timeout} ms")
        return result

    async def each(self, calls: list[tuple[str, tuple, dict]]) -> list[Any]:
        """Several commands in one round trip (one per node, in parallel, on a cluster)."""
        if len(calls) == 1:
            name, args, kwargs = calls[0]
            return [await getattr(self.r, name)(*args, **kwargs)]
        async with self.r.pipeline(transaction=False) as p:
            for name, args, kwargs in calls:
                getattr(p, name)(*args, **kwargs)
            return await p.execute()


class RedisBus(Bus):
    def __init__(self, conn: Conn, limits: Limits) -> None:
        self.c, self.r, self.keys, self.limits = conn, conn.r, conn.keys, limits
        self._end = self.r.register_script(END_RUN)
        self._groups: set[str] = set()
        self._claimed_at: dict[str, float] = {}
        self._turn = 0

    async def _ensure_group(self, stream: str) -> None:
        if stream in self._groups:
            return
        try:
            await self.r.xgroup_create(stream, GROUP, id="0", mkstream=True)
        except rexc.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._groups.add(stream)

    @translate
    async def receive(self, agent: str, consumer: str, *, block_ms: int, count: int = 1) -> list[Delivery]:
        streams = self.keys.queues(agent)
        for stream in streams:
            await self._ensure_group(stream)
        if len(streams) > 1:  # start at another stream each time, so none starves
            self._turn = (self._turn + 1) % len(streams)
            streams = streams[self._turn :] + streams[: self._turn]
        try:
            return await self._receive(agent, streams, consumer, block_ms, count)
        except rexc.ResponseError as exc:
            if "NOGROUP" not in str(exc):  # the stream was lost (Redis restarted without it)
                raise
            self._groups.difference_update(streams)
            for stream in streams:
                await self._ensure_group(stream)
            return []

    async def _receive(
        self, agent: str, streams: list[str], consumer: str, block_ms: int, count: int
    ) -> list[Delivery]:
        # Block in slices so entries of dead consumers are claimed soon after they turn stale;
        # with several streams, block on one a short while and look at the others between.
        deadline = time.monotonic() + block_ms / 1000
        slice_ms = max(50, self.limits.visibility_timeout_ms // 4)
        wait_ms = slice_ms if len(streams) == 1 else min(slice_ms, 100)
        while True:
            # Entries turn stale only after the visibility timeout: looking once a slice is enough.
            now = time.monotonic()
            if now - self._claimed_at.get(agent, 0.0) >= slice_ms / 1000:
                self._claimed_at[agent] = now
                for stream in streams:
                    claimed = await self._claim_stale(agent, stream, consumer, count)
                    if claimed:
                        return claimed
            fresh: list[Delivery] = []
            for stream in streams[1:]:
                got = await self.r.xreadgroup(GROUP, consumer, {stream: ">"}, count=count)
                fresh += self._deliveries(agent, got)
            if fresh:
                return fresh
            remaining = int((deadline - time.monotonic()) * 1000)
            got = await self.r.xreadgroup(
                GROUP, consumer, {streams[0]: ">"}, count=count, block=max(1, min(remaining, wait_ms))
            )
            fresh = self._deliveries(agent, got)
            if fresh or remaining <= wait_ms:
                return fresh

    @staticmethod
    def _deliveries(agent: str, got: Any) -> list[Delivery]:
        return [Delivery(agent, eid, f["task"], 1) for _, entries in got or [] for eid, f in entries]

    async def _claim_stale(self, agent: str, stream: str, consumer: str, count: int) -> list[Delivery]:
        """Entries idle past the visibility timeout. One another consumer held counts as a
        delivery more (its holder died mid-run: the poison rule counts these); one this consumer
        held itself does not: it let it go only because the bus failed under it (or it is
        retrying after a lost lock), and a bus outage must not use up a task's deliveries."""
        idle = self.limits.visibility_timeout_ms
        stale = await self.r.xpending_range(stream, GROUP, min="-", max="+", count=count, idle=idle)
        if not stale:
            return []
        calls = []
        for p in stale:
            own = p["consumer"] == consumer
            retry = {"retrycount": int(p["times_delivered"])} if own else {}
            calls.append(("xclaim", (stream, GROUP, consumer, idle, [p["message_id"]]), retry))
        claimed = await self.c.each(calls)
        out = []
        for p, got in zip(stale, claimed):
            own = p["consumer"] == consumer
            times = int(p["times_delivered"]) + (0 if own else 1)
            out += [Delivery(agent, eid, f["task"], times) for eid, f in got or [] if f]
        return out

    @translate
    async def extend(self, delivery: Delivery, consumer: str) -> None:
        stream = self.keys.queue(delivery.agent, delivery.task_id)
        await self.r.xclaim(stream, GROUP, consumer, 0, [delivery.entry_id], justid=True)

    @translate
    async def ack(self, delivery: Delivery) -> None:
        stream = self.keys.queue(delivery.agent, delivery.task_id)
        await self.c.write(self._end, [stream], [GROUP, delivery.entry_id, ""])

    @translate
    async def depth(self, agent: str) -> int:
        return sum(int(n) for n in await self.c.each([("xlen", (q,), {}) for q in self.keys.queues(agent)]))


class RedisTaskStore(TaskStore):
    def __init__(self, conn: Conn, limits: Limits) -> None:
        self.c, self.r, self.keys, self.limits = conn, conn.r, conn.keys, limits
        self._submit = self.r.register_script(SUBMIT)
        self._enqueue = self.r.register_script(ENQUEUE)
        self._lock = self.r.register_script(LOCK)
        self._unlock = self.r.register_script(UNLOCK)
        self._apply = self.r.register_script(APPLY)
        self._end = self.r.register_script(END_RUN)
        # The last version this node wrote of each running task, with its 'applied' token: the
        # next event of a task (almost always from this node's worker) is then one round trip.
        self._known: OrderedDict[str, tuple[str, Task]] = OrderedDict()
        self._pruned_at = 0
        self._prune_turn = 0
        # Cluster: the blocking read of each bucket's finished feed under way, with its cursor.
        self._feed_reads: dict[str, tuple[str, asyncio.Task]] = {}

    @translate
    async def submit(self, task: Task, agent: str, accepted_by: str) -> None:
        score = int(time.time() * 1000)
        anystate, instate = self.keys.indexes(task, None), self.keys.indexes(task, task.state)
        keys = [self.keys.task(task.id), anystate[0], instate[0], *anystate[1:], *instate[1:]]
        nonce = uuid.uuid4().hex  # makes a retried submit (reply lost in a reconnect) idempotent
        retention_ms = self.limits.retention_s * 1000
        args = [task.model_dump_json(exclude_none=True), accepted_by, task.id, score, self.limits.max_queue, nonce]
        args += [score - retention_ms, retention_ms]
        queue = self.keys.queue(agent, task.id)
        if self.c.cluster:
            started = time.monotonic()
            entry = await self._enqueue_on(queue, task.id)  # first: an entry without its task is dropped
            try:
                result = await self.c.write(self._submit, keys, [*args, "0"])
            except NotReplicated:
                raise  # stored, unconfirmed: the entry stays, in case the task survives
            except Exception:
                # Most likely not stored (the task's slot is failing over): take the entry back,
                # so that no worker spends the grace waiting for a task that never comes.
                with contextlib.suppress(Exception):
                    await self.c.write(self._end, [queue], [GROUP, entry, ""])
                raise
            if result == -1:  # not ours: take the entry back (one already read runs nothing)
                await self.c.write(self._end, [queue], [GROUP, entry, ""])
            elif time.monotonic() - started > ORPHAN_GRACE_S / 2:
                await self._enqueue_on(queue, task.id)  # a worker may have given up waiting for it
        else:
            result = await self.c.write(self._submit, [*keys, queue], [*args, "1"])
        if result == -1:
            raise TaskExists(f"task {task.id} exists")
        if result == -2:
            raise QueueFull(f"queue of agent {agent!r} is full")
        self.remember(task.id, "", task.snapshot())  # a worker of this node makes the first write
        await self._prune(score)

    async def _enqueue_on(self, queue: str, task_id: str) -> str:
        """Append ``task_id`` to ``queue``; the entry id."""
        entry = await self.c.write(self._enqueue, [queue], [task_id, self.limits.max_queue])
        if entry == -2:
            raise QueueFull(f"queue {queue!r} is full")
        return entry

    def remember(self, task_id: str, token: str, task: Task) -> None:
        """Keep this node's copy of a running task for the next ``apply`` (a compare-and-set)."""
        self._known[task_id] = (token, task)
        while len(self._known) > 4096:
            self._known.popitem(last=False)

    async def _prune(self, now_ms: int) -> None:
        # Ids of expired tasks linger in the global indexes; drop the ones past retention (a
        # bucket a second).
        if now_ms - self._pruned_at >= 1000:
            self._pruned_at = now_ms
            bucket, self._prune_turn = self._prune_turn, (self._prune_turn + 1) % self.keys.buckets
            cutoff = now_ms - self.limits.retention_s * 1000
            await self.c.each(
                [("zremrangebyscore", (self.keys.index(bucket, state=s), 0, cutoff), {}) for s in (None, *TaskState)]
            )

    @translate
    async def requeue(self, task: Task, agent: str) -> None:
        await self._enqueue_on(self.keys.queue(agent, task.id), task.id)

    @translate
    async def get(self, task_id: str) -> Task | None:
        raw = await self.r.hget(self.keys.task(task_id), "task")
        return None if raw is None else Task.model_validate_json(raw)

    @translate
    async def list(self, context_id=None, limit=50, cursor=None, owner=None, state=None):
        start = cursor_offset(cursor)
        keys = [self.keys.index(b, context_id, owner, state) for b in range(self.keys.buckets)]
        if len(keys) == 1:
            ids = await self.r.zrevrange(keys[0], start, start + limit)  # one extra: more?
        else:  # the first pages of every bucket, merged as one sorted set would order them
            pages = await self.c.each([("zrevrange", (k, 0, start + limit), {"withscores": True}) for k in keys])
            merged = sorted((item for page in pages for item in page), key=lambda m: (m[1], m[0]), reverse=True)
            ids = [member for member, _ in merged[start : start + limit + 1]]
        more = len(ids) > limit
        ids = ids[:limit]
        tasks = []
        if ids:
            raws = await self.c.each([("hget", (self.keys.task(tid), "task"), {}) for tid in ids])
            tasks = [Task.model_validate_json(raw) for raw in raws if raw is not None]
        return tasks, str(start + limit) if more else None

    @translate
    async def count(self, context_id=None, owner=None, state=None):
        keys = [self.keys.index(b, context_id, owner, state) for b in range(self.keys.buckets)]
        return sum(int(n) for n in await self.c.each([("zcard", (k,), {}) for k in keys]))

    @translate
    async def apply(self, task_id: str, event: TaskEvent) -> tuple[Task, str]:
        key, token = self.keys.task(task_id), uuid.uuid4().hex
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
            bucket = self.keys.bucket(task_id)
            keys = [key, self.keys.events(task_id), self.keys.finished(bucket), self.keys.lock(task_id)]
            if task.state is not current.state:
                left = self.keys.indexes(current, current.state)
                keys += [*left, *self.keys.indexes(task, task.state)]
                now_ms, retention_ms = int(time.time() * 1000), self.limits.retention_s * 1000
                args += [len(left), now_ms - retention_ms, retention_ms, now_ms]
            status, event_id = await self.c.write(self._apply, keys, args)
            if status == -1:
                raise TaskNotFound(f"task {task_id} not found")
            if status == 1:
                if not task.state.terminal:
                    self.remember(task_id, token, task)
                return task.snapshot(), event_id
            known = None  # another writer got there first: read it again

    @translate
    async def read_events(self, task_id: str, after: str | None, block_ms: int) -> list[StoredEvent]:
        if after is None and not await self.r.exists(self.keys.task(task_id)):
            raise TaskNotFound(f"task {task_id} not found")
        kwargs: dict[str, Any] = {"block": block_ms} if block_ms > 0 else {}
        got = await self.r.xread({self.keys.events(task_id): after or "0-0"}, count=500, **kwargs)
        return [StoredEvent(eid, EVENT_JSON.validate_json(f["e"])) for _, entries in got or [] for eid, f in entries]

    @translate
    async def read_finished(self, after: str | None, block_ms: int):
        """The buckets' finished feeds; the cursor is each bucket's last id, comma-joined."""
        feeds = [self.keys.finished(b) for b in range(self.keys.buckets)]
        if after is None:
            lasts = await self.c.each([("xrevrange", (f,), {"count": 1}) for f in feeds])
            cursor = [last[0][0] if last else "0-0" for last in lasts]
        else:
            cursor = after.split(",")
            if len(cursor) != len(feeds):
                cursor = ["0-0"] * len(feeds)  # a cursor of another layout: from the start
        if len(feeds) == 1 or block_ms <= 0:
            kwargs: dict[str, Any] = {"block": block_ms} if block_ms > 0 else {}
            if len(feeds) == 1:
                got = [await self.r.xread({feeds[0]: cursor[0]}, count=1000, **kwargs)]
            else:
                got = await self.c.each([("xread", ({f: c},), {"count": 1000}) for f, c in zip(feeds, cursor)])
        else:
            got = await self._fan_in(feeds, cursor, block_ms)
        out = []
        for i, reply in enumerate(got):
            for _, entries in reply or []:
                for eid, f in entries:
                    out.append(Finished(f["id"], TaskState(f["state"]), f["by"], f["at"], f.get("agent", "")))
                    cursor[i] = eid
        return out, ",".join(cursor)

    async def _fan_in(self, feeds: list[str], cursor: list[str], block_ms: int) -> list[Any]:
        """A blocking read of every bucket's feed at once, returning when any has entries; the
        reads still waiting carry over to the next call (cancelling one would cost its
        connection), so each bucket holds one connection, not one per call."""
        reads = []
        for feed, after in zip(feeds, cursor):
            read = self._feed_reads.get(feed)
            if read is None or read[0] != after:
                job = asyncio.create_task(self.r.xread({feed: after}, count=1000, block=block_ms))
                job.add_done_callback(_quiet)
                read = self._feed_reads[feed] = (after, job)
            reads.append(read[1])
        await asyncio.wait(reads, timeout=block_ms / 1000 + 1, return_when=asyncio.FIRST_COMPLETED)
        got, failed = [], []
        for feed, job in zip(feeds, reads):
            if job.done():
                del self._feed_reads[feed]  # every finished read at once, failed ones too
            if not job.done() or job.exception() is not None:
                failed += [job.exception()] if job.done() else []
                got.append(None)
                continue
            got.append(job.result())
        if failed and not any(got):  # nothing to hand out: the failure (translated by the caller)
            raise failed[0]
        return got  # a failed bucket's read is made again by the next call

    async def close(self) -> None:
        for _, job in self._feed_reads.values():
            job.cancel()
        await asyncio.gather(*(job for _, job in self._feed_reads.values()), return_exceptions=True)
        self._feed_reads.clear()

    @translate
    async def lock(self, task_id: str, owner: str, ttl_ms: int) -> bool:
        return bool(await self._lock(keys=[self.keys.lock(task_id)], args=[owner, ttl_ms]))

    @translate
    async def unlock(self, task_id: str, owner: str) -> None:
        await self._unlock(keys=[self.keys.lock(task_id)], args=[owner])


def _quiet(job: asyncio.Task) -> None:
    """Retrieve a carried-over read's failure (reported if a later call collects it)."""
    if not job.cancelled():
        job.exception()


class RedisKeyValue(KeyValue):
    def __init__(self, r: Any) -> None:
        self.r = r

    @translate
    async def get(self, key: str) -> str | None:
        return await self.r.get(f"il:kv:{key}")

    @translate
    async def set(self, key: str, value: str, ttl_s: int, *, only_new: bool = False) -> bool:
        return bool(await self.r.set(f"il:kv:{key}", value, ex=ttl_s, nx=only_new))

    @translate
    async def delete(self, key: str) -> None:
        await self.r.delete(f"il:kv:{key}")


class _RecordStore(RedisRecordStore):
    """The registry's Redis store, with transient failures reported as BackendUnavailable."""

    put_if_newer = translate(RedisRecordStore.put_if_newer)
    load = translate(RedisRecordStore.load)
    changes = translate(RedisRecordStore.changes)
    drop = translate(RedisRecordStore.drop)


class RedisBackend(Backend):
    name = "redis"
    shared = True  # every node on the same Redis sees the same state

    def __init__(self, url: str, limits: Limits | None = None) -> None:
        self.limits = limits or Limits()
        self.target = redis_client.parse(url)
        self.conn = Conn(self.target)
        self.r, self.keys = self.conn.r, self.conn.keys
        self.bus = RedisBus(self.conn, self.limits)
        self.tasks = RedisTaskStore(self.conn, self.limits)
        self.records = _RecordStore(self.r)
        self.kv = RedisKeyValue(self.r)
        self._take = self.r.register_script(TAKE)
        self._end_run = self.r.register_script(END_RUN)

    async def check(self) -> None:
        await redis_client.check(self.r, self.target)

    @translate
    async def take_run(self, delivery: Delivery, consumer: str, ttl_ms: int) -> tuple[Task | None, bool]:
        keys = [self.keys.task(delivery.task_id), self.keys.lock(delivery.task_id)]
        args = [consumer, ttl_ms, GROUP, delivery.entry_id]
        if not self.conn.cluster:
            keys.append(self.keys.queue(delivery.agent, delivery.task_id))
        raw, applied, locked = await self._take(keys=keys, args=args)
        if not raw and self.conn.cluster and delivery.attempt == 1:
            raw, applied, locked = await self._await_store(keys, args)
        if not raw:
            return None, False
        task = Task.model_validate_json(raw)
        if locked:
            if self.conn.cluster:
                await self.bus.extend(delivery, consumer)  # the entry's clock, on the queue's slot
            self.tasks.remember(task.id, applied, task.snapshot())  # this run's first write is one round trip
        return task, bool(locked)

    async def _await_store(self, keys: list[str], args: list[Any]) -> list[Any]:
        """Cluster: a task is enqueued before it is stored; give its store step the grace."""
        deadline, pause = time.monotonic() + ORPHAN_GRACE_S, 0.002
        while True:
            await asyncio.sleep(pause)
            got = await self._take(keys=keys, args=args)
            if got[0] or time.monotonic() >= deadline:
                return got
            pause = min(pause * 2, 0.25)

    @translate
    async def end_run(self, delivery: Delivery, consumer: str) -> None:
        queue, lock = self.keys.queue(delivery.agent, delivery.task_id), self.keys.lock(delivery.task_id)
        args = [GROUP, delivery.entry_id, consumer]
        if self.conn.cluster:  # two slots: ack and unlock at once (a lock left behind lapses)
            await asyncio.gather(
                self.conn.write(self._end_run, [queue], args), self.tasks.unlock(delivery.task_id, consumer)
            )
        else:
            await self.conn.write(self._end_run, [queue, lock], args)

    @translate
    async def ping(self) -> None:
        await self.r.ping()

    async def close(self) -> None:
        await self.tasks.close()
        await self.r.aclose()
