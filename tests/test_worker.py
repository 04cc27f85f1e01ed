"""The worker runtime on both backends: run, stream, fail, cancel, shut down, redeliver."""

import asyncio

import pytest

from agents.echo import EchoWorker
from agents.links import DirectLink
from agents.worker import Worker, WorkerRunner
from registry.service import Registry
from schemas import Artifact, Message, Route, Task, TaskState, TaskStatusUpdate, TextPart

S = TaskState


class Probe(Worker):
    """Records what happened to its handler so tests can assert on it."""

    agent = "probe"

    def __init__(self, hold: bool = True) -> None:
        self.started = asyncio.Event()
        self.cancelled = asyncio.Event()
        self.release = asyncio.Event()
        self.runs: list[str] = []
        if not hold:
            self.release.set()

    async def handle(self, task):
        self.runs.append(task.id)
        self.started.set()
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
        yield task.artifact_event(Artifact(parts=[TextPart(text="done")]))


async def submit(backend, agent="echo", text="hello", **meta) -> Task:
    task = Task(route=Route(agent=agent))
    task.history.append(
        Message(
            role="user", parts=[TextPart(text=text)], metadata=meta or None, task_id=task.id, context_id=task.context_id
        )
    )
    await backend.tasks.submit(task, agent, "test")
    return task


async def final(backend, task_id) -> list:
    events = []
    async for stored in backend.events(task_id):
        events.append(stored.event)
    return events


def link(backend) -> DirectLink:
    return DirectLink(backend, Registry(backend.records, "interlace"))


def runner(backend, worker, **kw) -> WorkerRunner:
    return WorkerRunner(worker, link(backend), lock_ttl_ms=backend.limits.visibility_timeout_ms, poll_ms=200, **kw)


async def test_echo_completes_with_the_same_parts(backend):
    r = runner(backend, EchoWorker())
    r.start()
    task = await submit(backend, text="ping")
    events = await asyncio.wait_for(final(backend, task.id), 10)
    assert [e.kind for e in events] == ["status-update", "artifact-update", "status-update"]
    done = await backend.tasks.get(task.id)
    assert done.state is S.COMPLETED and done.artifacts[0].parts == [TextPart(text="ping")]
    await asyncio.wait_for(_drained(backend, "echo"), 10)  # acked right after the final event
    await r.stop(1)


async def test_streamed_chunks_rebuild_the_text(backend):
    r = runner(backend, EchoWorker())
    r.start()
    task = await submit(backend, text="abcdefghij", chunks=4)
    events = await asyncio.wait_for(final(backend, task.id), 10)
    chunks = [e for e in events if e.kind == "artifact-update"]
    assert len(chunks) == 4 and chunks[-1].last_chunk and all(c.append for c in chunks[1:])
    assert "".join(c.artifact.parts[0].text for c in chunks) == "abcdefghij"
    assert (await backend.tasks.get(task.id)).artifacts[0].parts == [TextPart(text="abcdefghij")]
    await r.stop(1)


async def test_handler_failure_fails_the_task_without_a_traceback(backend):
    class Broken(Worker):
        agent = "broken"

        async def handle(self, task):
            raise RuntimeError("secret internal detail")
            yield

    r = runner(backend, Broken())
    r.start()
    task = await submit(backend, agent="broken")
    await asyncio.wait_for(final(backend, task.id), 10)
    done = await backend.tasks.get(task.id)
    assert done.state is S.FAILED
    text = done.status.message.parts[0].text
    assert text == "broken failed: RuntimeError" and "secret" not in text
    await r.stop(1)


async def test_task_failed_message_reaches_the_client(backend):
    r = runner(backend, EchoWorker())
    r.start()
    task = await submit(backend, fail="no such thing")
    await asyncio.wait_for(final(backend, task.id), 10)
    done = await backend.tasks.get(task.id)
    assert done.state is S.FAILED and done.status.message.parts[0].text == "no such thing"
    await r.stop(1)


async def test_cancel_reaches_the_running_handler(backend):
    probe = Probe()
    r = runner(backend, probe)
    r.start()
    task = await submit(backend, agent="probe")
    await asyncio.wait_for(probe.started.wait(), 10)
    current = await backend.tasks.get(task.id)
    await backend.tasks.apply(task.id, current.status_event(S.CANCELED))
    await asyncio.wait_for(probe.cancelled.wait(), 10)
    assert (await backend.tasks.get(task.id)).state is S.CANCELED
    await asyncio.wait_for(_drained(backend, "probe"), 10)  # canceled entries are acked
    await r.stop(1)


async def _drained(backend, agent):
    while await backend.bus.depth(agent):
        await asyncio.sleep(0.02)


async def test_shutdown_leaves_running_task_pending_for_another_worker(backend):
    first = Probe()
    r1 = runner(backend, first)
    r1.start()
    task = await submit(backend, agent="probe")
    await asyncio.wait_for(first.started.wait(), 10)
    await r1.stop(grace_s=0.1)  # the handler does not finish in time
    assert first.cancelled.is_set()
    assert (await backend.tasks.get(task.id)).state is S.WORKING
    assert await backend.bus.depth("probe") == 1  # not acked: nothing lost

    second = Probe(hold=False)
    r2 = runner(backend, second)
    r2.start()
    events = await asyncio.wait_for(final(backend, task.id), 15)
    assert events[-1].status.state is S.COMPLETED
    assert second.runs == [task.id]
    # Exactly one terminal event from the client's point of view.
    terminal = [e for e in events if isinstance(e, TaskStatusUpdate) and e.status.state.terminal]
    assert len(terminal) == 1
    attempts = [e.metadata for e in events if isinstance(e, TaskStatusUpdate) and e.metadata]
    assert attempts == [{"attempt": 2}]
    await r2.stop(1)


async def test_graceful_stop_lets_running_handlers_finish(backend):
    probe = Probe()
    r = runner(backend, probe)
    r.start()
    task = await submit(backend, agent="probe")
    await asyncio.wait_for(probe.started.wait(), 10)
    stopping = asyncio.create_task(r.stop(grace_s=10))
    await asyncio.sleep(0.05)
    probe.release.set()
    await asyncio.wait_for(stopping, 10)
    assert (await backend.tasks.get(task.id)).state is S.COMPLETED
    assert await backend.bus.depth("probe") == 0


async def test_a_run_whose_lock_is_taken_is_stopped_and_left_pending(backend):
    """The heartbeat finds the run lock held by someone else: the handler is stopped, the task
    is left as it was and its entry stays pending (not acked) for whoever holds the lock."""
    probe = Probe()
    r = WorkerRunner(probe, link(backend), lock_ttl_ms=300, poll_ms=200)  # a heartbeat every 100 ms
    r.start()
    task = await submit(backend, agent="probe")
    await asyncio.wait_for(probe.started.wait(), 10)
    await backend.tasks.unlock(task.id, r.consumer)
    assert await backend.tasks.lock(task.id, "thief", 60_000)
    await asyncio.wait_for(probe.cancelled.wait(), 10)
    assert (await backend.tasks.get(task.id)).state is S.WORKING
    assert await backend.bus.depth("probe") == 1
    assert not await backend.tasks.lock(task.id, r.consumer, 1000)  # still the thief's
    await r.stop(1)


async def test_redelivered_finished_task_is_not_run_again(backend):
    probe = Probe(hold=False)
    task = await submit(backend, agent="probe")
    (d,) = await backend.bus.receive("probe", "crashed-after-finishing", block_ms=1000)
    current = await backend.tasks.get(task.id)
    current = (await backend.tasks.apply(task.id, current.status_event(S.WORKING)))[0]
    await backend.tasks.apply(task.id, current.status_event(S.COMPLETED))
    # The consumer died before its ack; the entry comes back after the visibility timeout.
    r = runner(backend, probe)
    r.start()
    await asyncio.wait_for(_drained(backend, "probe"), 10)
    assert probe.runs == []
    assert await backend.tasks.lock(task.id, "anyone", 1000)  # settled without keeping its run lock
    await r.stop(1)


async def test_runner_registers_its_signed_record_and_deregisters_on_stop(backend):
    registry = Registry(backend.records, "interlace")
    await registry.start()
    r = WorkerRunner(EchoWorker(), DirectLink(backend, registry), lease_s=2, poll_ms=100)
    r.start()
    await asyncio.wait_for(r.ready.wait(), 10)
    (record,) = registry.by_name("echo")
    assert record.did == r.identity.did and record.endpoints.bus == "echo"
    first_seq = record.seq
    while registry.get(r.identity.did).seq == first_seq:  # re-signed before the 2 s lease ends
        await asyncio.sleep(0.05)
    assert registry.get(r.identity.did).expires_at > record.expires_at - 2
    await r.stop(1)
    assert registry.by_name("echo") == []
    await registry.stop()


async def test_locked_task_is_not_run_twice_at_once(backend):
    probe = Probe(hold=False)
    task = await submit(backend, agent="probe")
    assert await backend.tasks.lock(task.id, "someone-else", 60_000)  # a live worker runs it
    (d,) = await backend.bus.receive("probe", "me", block_ms=1000)
    assert await link(backend).begin(d, "me", 1000) is None
    assert probe.runs == [] and await backend.bus.depth("probe") == 1


async def test_poison_task_fails_after_max_deliveries(backend):
    backend.limits.max_deliveries = 2
    task = await submit(backend, agent="probe")
    direct = link(backend)
    for attempt in (1, 2, 3):
        (d,) = await backend.bus.receive("probe", f"c{attempt}", block_ms=3000)
        assert d.attempt == attempt
        began = await direct.begin(d, f"c{attempt}", 100)
        if attempt < 3:
            assert began is not None
            await asyncio.sleep(0.15)  # let the lock lapse, as a crashed worker's would
    assert began is None
    done = await backend.tasks.get(task.id)
    assert done.state is S.FAILED and "gave up after 2 deliveries" in done.status.message.parts[0].text
    assert await backend.bus.depth("probe") == 0
    assert await backend.tasks.lock(task.id, "anyone", 1000)


@pytest.mark.parametrize("n", [50])
async def test_many_concurrent_tasks_all_complete_once(backend, n):
    runners = [runner(backend, EchoWorker()) for _ in range(2)]
    for r in runners:
        r.start()
    tasks = [await submit(backend, text=f"t{i}") for i in range(n)]
    results = await asyncio.wait_for(asyncio.gather(*(final(backend, t.id) for t in tasks)), 30)
    for t, events in zip(tasks, results):
        assert sum(1 for e in events if e.kind == "status-update" and e.status.state.terminal) == 1
        assert (await backend.tasks.get(t.id)).artifacts[0].parts[0].text == t.history[0].parts[0].text
    for r in runners:
        await r.stop(1)
