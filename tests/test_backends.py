"""One behavioural suite for every backend: embedded, and real Redis as one server, as a 3-master
Redis Cluster and behind Sentinel (a primary and its replica)."""

import asyncio
import time

import pytest

from gateway.core.backends import QueueFull, TaskExists, TaskNotFound
from schemas import Artifact, InvalidTransition, Message, Route, Task, TaskState, TextPart
from tests.conftest import make_backend

S = TaskState


def new_task(context_id: str | None = None, agent: str = "echo") -> Task:
    task = Task(route=Route(agent=agent))
    if context_id:
        task.context_id = context_id
    task.history.append(Message(role="user", parts=[TextPart(text="hi")], task_id=task.id, context_id=task.context_id))
    return task


async def test_submit_get_and_list_by_context(backend):
    a, b, c = new_task("ctx-1"), new_task("ctx-1"), new_task("ctx-2")
    for t in (a, b, c):
        await backend.tasks.submit(t, "echo", "node-a")
    assert (await backend.tasks.get(a.id)) == a
    assert await backend.tasks.get("missing") is None
    page, cursor = await backend.tasks.list("ctx-1", limit=1)
    assert [t.id for t in page] == [b.id] and cursor is not None  # newest first
    page2, cursor2 = await backend.tasks.list("ctx-1", limit=1, cursor=cursor)
    assert [t.id for t in page2] == [a.id] and cursor2 is None
    everything, _ = await backend.tasks.list(limit=10)
    assert {t.id for t in everything} == {a.id, b.id, c.id}


async def test_submit_twice_is_refused(backend):
    task = new_task()
    await backend.tasks.submit(task, "echo", "n")
    with pytest.raises(TaskExists):
        await backend.tasks.submit(task, "echo", "n")
    assert await backend.bus.depth("echo") == 1


async def test_queue_bound_rejects_without_storing(backend):
    backend.limits.max_queue = 2
    for _ in range(2):
        await backend.tasks.submit(new_task(), "bounded", "n")
    extra = new_task()
    with pytest.raises(QueueFull):
        await backend.tasks.submit(extra, "bounded", "n")
    assert await backend.tasks.get(extra.id) is None
    assert await backend.bus.depth("bounded") == 2


async def test_apply_checks_transitions_and_appends_events(backend):
    task = new_task()
    await backend.tasks.submit(task, "echo", "n")
    stored, first = await backend.tasks.apply(task.id, task.status_event(S.WORKING))
    assert stored.state is S.WORKING
    art = Artifact(artifact_id="x", parts=[TextPart(text="a")])
    stored, second = await backend.tasks.apply(task.id, task.artifact_event(art))
    stored, third = await backend.tasks.apply(task.id, task.status_event(S.COMPLETED))
    with pytest.raises(InvalidTransition):
        await backend.tasks.apply(task.id, task.status_event(S.WORKING))
    assert (await backend.tasks.get(task.id)).state is S.COMPLETED  # unchanged by the refused event
    events = await backend.tasks.read_events(task.id, None, 0)
    assert [e.event_id for e in events] == [first, second, third]
    assert [e.event.kind for e in events] == ["status-update", "artifact-update", "status-update"]
    assert await backend.tasks.read_events(task.id, second, 0) == events[2:]
    with pytest.raises(TaskNotFound):
        await backend.tasks.apply("missing", task.status_event(S.WORKING))


async def test_subscriber_on_another_connection_sees_live_events(backend, backend_kind, backend_url):
    """Subscribe through a second backend object (for Redis: another client, as another process would)."""
    other = backend if backend_url is None else make_backend(backend_kind, backend_url)
    task = new_task()
    await backend.tasks.submit(task, "echo", "n")

    async def collect():
        return [e.event async for e in other.events(task.id)]

    reader = asyncio.create_task(collect())
    await asyncio.sleep(0)  # let the reader block first; correctness does not depend on it
    await backend.tasks.apply(task.id, task.status_event(S.WORKING))
    await backend.tasks.apply(task.id, task.status_event(S.COMPLETED))
    events = await asyncio.wait_for(reader, 10)
    assert [e.status.state for e in events] == [S.WORKING, S.COMPLETED]
    if other is not backend:
        await other.close()


async def test_writers_on_two_connections_never_overwrite_each_other(backend, backend_kind, backend_url):
    """Each event is judged against the task as stored, even when this connection wrote the task
    last and another one changed it since (Redis: two clients, as two gateways would be)."""
    other = backend if backend_url is None else make_backend(backend_kind, backend_url)
    task = new_task()
    await backend.tasks.submit(task, "echo", "n")
    await backend.tasks.apply(task.id, task.status_event(S.INPUT_REQUIRED))
    await other.tasks.apply(task.id, task.status_event(S.WORKING))  # the follow-up, on another node
    # input-required -> input-required is illegal, working -> input-required is not: judged on
    # the stored task, this asks again.
    stored, _ = await backend.tasks.apply(task.id, task.status_event(S.INPUT_REQUIRED))
    assert stored.state is S.INPUT_REQUIRED
    await other.tasks.apply(task.id, task.status_event(S.CANCELED))
    with pytest.raises(InvalidTransition):  # a stale copy must not let the completion overwrite the cancel
        await backend.tasks.apply(task.id, task.status_event(S.COMPLETED))
    assert (await other.tasks.get(task.id)).state is S.CANCELED
    states = [e.event.status.state for e in await other.tasks.read_events(task.id, None, 0)]
    assert states == [S.INPUT_REQUIRED, S.WORKING, S.INPUT_REQUIRED, S.CANCELED]
    if other is not backend:
        await other.close()


async def test_finished_feed(backend):
    _, cursor = await backend.tasks.read_finished(None, 0)
    task = new_task()
    await backend.tasks.submit(task, "echo", "node-a")
    await backend.tasks.apply(task.id, task.status_event(S.COMPLETED))
    batch, _ = await backend.tasks.read_finished(cursor, 2000)
    assert [(f.task_id, f.state, f.accepted_by, f.agent) for f in batch] == [(task.id, S.COMPLETED, "node-a", "echo")]


async def test_receive_ack_and_depth(backend):
    task = new_task()
    await backend.tasks.submit(task, "echo", "n")
    assert await backend.bus.depth("echo") == 1
    got = await backend.bus.receive("echo", "c1", block_ms=1000)
    assert [(d.task_id, d.attempt) for d in got] == [(task.id, 1)]
    assert await backend.bus.depth("echo") == 1  # in flight until acked
    assert await backend.bus.receive("echo", "c2", block_ms=50) == []
    await backend.bus.ack(got[0])
    assert await backend.bus.depth("echo") == 0


async def test_blocking_receive_wakes_on_submit(backend):
    task = new_task()
    waiter = asyncio.create_task(backend.bus.receive("echo", "c1", block_ms=5000))
    await asyncio.sleep(0.05)
    await backend.tasks.submit(task, "echo", "n")
    got = await asyncio.wait_for(waiter, 5)
    assert [d.task_id for d in got] == [task.id]


async def test_unacked_entry_is_redelivered_after_visibility_timeout(backend):
    task = new_task()
    await backend.tasks.submit(task, "echo", "n")
    first = await backend.bus.receive("echo", "dead-consumer", block_ms=1000)
    assert first
    # The consumer dies silently; another one gets the entry once the timeout has passed.
    again = await backend.bus.receive("echo", "live-consumer", block_ms=3000)
    assert [(d.task_id, d.entry_id, d.attempt) for d in again] == [(task.id, first[0].entry_id, 2)]


async def test_an_entry_its_own_consumer_let_go_comes_back_without_counting(backend):
    """A worker that lets an entry go because the bus failed under it gets it back as the same
    delivery: a bus outage must not use up a task's deliveries (the poison rule's count)."""
    task = new_task()
    await backend.tasks.submit(task, "echo", "n")
    (first,) = await backend.bus.receive("echo", "c1", block_ms=1000)
    again = await backend.bus.receive("echo", "c1", block_ms=3000)
    assert [(d.entry_id, d.attempt) for d in again] == [(first.entry_id, 1)]
    other = await backend.bus.receive("echo", "c2", block_ms=3000)  # c1 died holding it
    assert [(d.entry_id, d.attempt) for d in other] == [(first.entry_id, 2)]


async def test_extend_keeps_the_entry(backend):
    task = new_task()
    await backend.tasks.submit(task, "echo", "n")
    (d,) = await backend.bus.receive("echo", "c1", block_ms=1000)
    for _ in range(3):
        await asyncio.sleep(0.4)
        await backend.bus.extend(d, "c1")
    assert await backend.bus.receive("echo", "c2", block_ms=300) == []


async def test_run_lock_is_exclusive_and_expires(backend):
    task = new_task()
    await backend.tasks.submit(task, "echo", "n")
    assert await backend.tasks.lock(task.id, "a", 300)
    assert await backend.tasks.lock(task.id, "a", 300)  # refresh by the owner
    assert not await backend.tasks.lock(task.id, "b", 300)
    await asyncio.sleep(0.4)
    assert await backend.tasks.lock(task.id, "b", 300)
    await backend.tasks.unlock(task.id, "a")  # not the owner: no effect
    assert not await backend.tasks.lock(task.id, "a", 300)
    await backend.tasks.unlock(task.id, "b")
    assert await backend.tasks.lock(task.id, "a", 300)


async def test_requeue_continues_a_task(backend):
    task = new_task()
    await backend.tasks.submit(task, "echo", "n")
    (d,) = await backend.bus.receive("echo", "c", block_ms=1000)
    await backend.bus.ack(d)
    await backend.tasks.requeue(task, "echo")
    (d2,) = await backend.bus.receive("echo", "c", block_ms=1000)
    assert d2.task_id == task.id and d2.entry_id != d.entry_id


async def test_event_stream_is_bounded(backend):
    backend.limits.max_events_per_task = 50
    task = new_task()
    await backend.tasks.submit(task, "echo", "n")
    await backend.tasks.apply(task.id, task.status_event(S.WORKING))
    for _ in range(300):
        art = Artifact(artifact_id="a", parts=[TextPart(text="x")])
        await backend.tasks.apply(task.id, task.artifact_event(art, append=True))
    events = await backend.tasks.read_events(task.id, None, 0)
    assert len(events) < 300  # trimmed (Redis trims approximately, in whole nodes)
    assert (await backend.tasks.get(task.id)).artifacts[0].parts[0].text == "x" * 300


async def test_record_store_keeps_the_highest_seq_and_feeds_changes(backend):
    store = backend.records
    _, cursor = await store.load()
    assert await store.put_if_newer("did:key:a", 2, '{"seq": 2}')
    assert not await store.put_if_newer("did:key:a", 2, '{"seq": 2, "replay": 1}')
    assert not await store.put_if_newer("did:key:a", 1, '{"seq": 1}')
    assert await store.put_if_newer("did:key:a", 3, '{"seq": 3}')
    entries, _ = await store.load()
    assert entries == ['{"seq": 3}']
    changes, cursor = await store.changes(cursor, 1000)
    assert changes == ['{"seq": 2}', '{"seq": 3}']
    waiter = asyncio.create_task(store.changes(cursor, 5000))
    await asyncio.sleep(0.05)
    await store.put_if_newer("did:key:b", 1, '{"b": 1}')
    assert (await asyncio.wait_for(waiter, 5))[0] == ['{"b": 1}']
    await store.drop("did:key:a", 2)  # not the stored seq: kept
    await store.drop("did:key:b", 1)
    assert sorted((await store.load())[0]) == ['{"seq": 3}']


async def test_kv(backend):
    assert await backend.kv.set("k", "v", 10)
    assert not await backend.kv.set("k", "w", 10, only_new=True)
    assert await backend.kv.get("k") == "v"
    await backend.kv.delete("k")
    assert await backend.kv.get("k") is None


async def test_embedded_kv_write_costs_the_same_with_many_live_keys():
    """P16: a write scanned every key once 100k were live (6.8 ms a write). Compared loosely
    (1k vs 101k live keys), so only cost that grows with the number of keys fails."""
    from gateway.core.backends.embedded import EmbeddedKeyValue

    async def cost(live: int) -> float:
        kv = EmbeddedKeyValue()
        for i in range(live):
            await kv.set(f"k{i}", "v", 3600)
        start = time.perf_counter()
        for i in range(500):
            await kv.set(f"w{i}", "v", 3600)
        return time.perf_counter() - start

    small, large = await cost(1_000), await cost(101_000)
    assert large < 10 * small + 0.05, (small, large)


async def test_embedded_kv_drops_expired_keys_as_it_writes(monkeypatch):
    from gateway.core.backends import embedded

    clock = [1000.0]
    monkeypatch.setattr(embedded.time, "monotonic", lambda: clock[0])
    kv = embedded.EmbeddedKeyValue()
    for i in range(100):
        await kv.set(f"short{i}", "v", 5)
    await kv.set("renewed", "v", 5)
    await kv.set("long", "v", 60)
    clock[0] += 4
    await kv.set("renewed", "w", 5)  # re-written: lives 5 s from now
    clock[0] += 2
    await kv.set("trigger", "v", 60)  # a write sweeps what expired
    assert set(kv._data) == {"renewed", "long", "trigger"}
    assert await kv.get("renewed") == "w"
    clock[0] += 4
    await kv.set("trigger", "v", 60)
    assert set(kv._data) == {"long", "trigger"}
    assert await kv.get("renewed") is None


async def test_embedded_store_bounds_its_finished_tasks():
    from gateway.core.backends import EmbeddedBackend, Limits

    backend = EmbeddedBackend(Limits(max_finished_tasks=3))
    tasks = []
    for i in range(6):
        task = new_task("shared" if i % 2 else None)
        await backend.tasks.submit(task, "echo", "n")
        await backend.tasks.apply(task.id, task.status_event(S.COMPLETED))
        tasks.append(task)
    running = new_task()
    await backend.tasks.submit(running, "echo", "n")  # submitting prunes
    kept = [t.id for t in tasks if await backend.tasks.get(t.id) is not None]
    assert kept == [t.id for t in tasks[-3:]]  # the oldest finished ones went first
    assert await backend.tasks.get(running.id) is not None  # unfinished tasks are never dropped
    listed, _ = await backend.tasks.list(limit=10)
    assert [t.id for t in listed] == [running.id] + [t.id for t in reversed(tasks[-3:])]
    in_context, _ = await backend.tasks.list("shared", limit=10)  # the indexes forget them too
    assert [t.id for t in in_context] == [tasks[5].id, tasks[3].id]
    assert await backend.tasks.count("shared") == 2 and await backend.tasks.count(state=S.COMPLETED) == 3
    assert await backend.tasks.list(tasks[0].context_id) == ([], None)


async def test_embedded_store_keeps_finished_tasks_out_of_the_gc():
    """Finished tasks are kept serialized: the same task and events come back, and thousands of
    them add almost nothing for the garbage collector to scan (full passes stay short)."""
    import gc

    from gateway.core.backends import EmbeddedBackend

    backend = EmbeddedBackend()

    async def run_one(context_id: str = "ctx-gc") -> tuple[Task, list]:
        task = new_task(context_id)
        task.owner = "alice"
        await backend.tasks.submit(task, "echo", "n")
        applied = [
            task.status_event(S.WORKING),
            task.artifact_event(Artifact(artifact_id="a", parts=[TextPart(text="out")])),
            task.status_event(S.COMPLETED, Message(role="agent", parts=[TextPart(text="done")])),
        ]
        for ev in applied:
            final, _ = await backend.tasks.apply(task.id, ev)
        return final, applied

    final, applied = await run_one()
    assert await backend.tasks.get(final.id) == final
    assert [e.event for e in await backend.tasks.read_events(final.id, None, 0)] == applied
    listed, _ = await backend.tasks.list("ctx-gc", owner="alice")
    assert listed == [final]

    gc.collect()
    before = len(gc.get_objects())
    for i in range(2000):
        await run_one(f"ctx-{i}")  # each its own context, as tasks that name none
    gc.collect()
    per_task = (len(gc.get_objects()) - before) / 2000
    assert per_task < 10, f"{per_task:.1f} GC-tracked objects kept per finished task"  # 50 as objects


async def test_list_by_owner_scopes_tasks_and_contexts(backend):
    """Each owner lists only its own tasks, and a context id is per owner: B using A's context id
    neither sees A's tasks nor adds to A's listing; no owner (an admin) lists everyone's."""
    a1, a2, b1 = new_task("shared"), new_task("a-only"), new_task("shared")
    a1.owner = a2.owner = "https://issuer#alice"
    b1.owner = "bob"
    for t in (a1, a2, b1):
        await backend.tasks.submit(t, "echo", "n")
    alice, _ = await backend.tasks.list(owner="https://issuer#alice", limit=10)
    assert [t.id for t in alice] == [a2.id, a1.id]
    bob_shared, _ = await backend.tasks.list("shared", owner="bob", limit=10)
    assert [t.id for t in bob_shared] == [b1.id]
    alice_shared, _ = await backend.tasks.list("shared", owner="https://issuer#alice", limit=10)
    assert [t.id for t in alice_shared] == [a1.id]
    assert (await backend.tasks.list("a-only", owner="bob"))[0] == []
    everyone, _ = await backend.tasks.list("shared", limit=10)
    assert {t.id for t in everyone} == {a1.id, b1.id}
    page, cursor = await backend.tasks.list(owner="https://issuer#alice", limit=1)
    assert [t.id for t in page] == [a2.id] and cursor is not None
    assert (await backend.tasks.get(a1.id)).owner == "https://issuer#alice"


async def test_list_and_count_by_state(backend):
    """The state is an index like owner and context: a task moves between the listings of its
    states as it runs (rejoining one it left), and counts agree with the listings."""
    alice = "https://issuer#alice"
    done, paused, fresh, bobs = new_task("c1"), new_task("c1"), new_task("c2"), new_task("c1")
    done.owner = paused.owner = fresh.owner = alice
    bobs.owner = "bob"
    for t in (done, paused, fresh, bobs):
        await backend.tasks.submit(t, "echo", "n")
    for task, states in (
        (done, [S.WORKING, S.COMPLETED]),
        (paused, [S.WORKING, S.INPUT_REQUIRED, S.WORKING]),
        (bobs, [S.WORKING]),
    ):
        for state in states:
            await backend.tasks.apply(task.id, task.status_event(state))

    async def ids(**query) -> set[str]:
        page, _ = await backend.tasks.list(limit=10, **query)
        return {t.id for t in page}

    assert await ids(state=S.SUBMITTED) == {fresh.id}
    assert await ids(state=S.WORKING) == {paused.id, bobs.id}
    assert await ids(state=S.WORKING, owner=alice) == {paused.id}
    assert await ids(context_id="c1", owner="bob", state=S.WORKING) == {bobs.id}
    assert await ids(context_id="c1", state=S.COMPLETED) == {done.id}
    assert await ids(context_id="c2", state=S.COMPLETED) == set()
    assert await ids(state=S.INPUT_REQUIRED) == set()
    assert await backend.tasks.count(state=S.WORKING) == 2
    assert await backend.tasks.count("c1", owner=alice) == 2
    assert await backend.tasks.count(state=S.FAILED) == 0
    assert await backend.tasks.count() == 4
    first, cursor = await backend.tasks.list(state=S.WORKING, limit=1)
    second, end = await backend.tasks.list(state=S.WORKING, limit=1, cursor=cursor)
    assert {first[0].id, second[0].id} == {paused.id, bobs.id} and end is None


async def test_pages_of_a_state_skip_the_tasks_that_left_it(backend, backend_kind):
    tasks = [new_task("many") for _ in range(200)]
    for t in tasks:
        await backend.tasks.submit(t, "echo", "n")
    for t in tasks[::4] + tasks[1::4] + tasks[2::4]:  # three in four leave 'submitted'
        await backend.tasks.apply(t.id, t.status_event(S.WORKING))
    listed, cursor = [], None
    while True:
        page, cursor = await backend.tasks.list("many", limit=7, cursor=cursor, state=S.SUBMITTED)
        listed += [t.id for t in page]
        if cursor is None:
            break
    assert sorted(listed) == sorted(t.id for t in tasks[3::4])
    if backend_kind == "embedded":  # Redis orders tasks created in the same millisecond by id
        assert listed == [t.id for t in reversed(tasks[3::4])]
    assert await backend.tasks.count("many", state=S.SUBMITTED) == 50
    assert await backend.tasks.count("many", state=S.WORKING) == 150
