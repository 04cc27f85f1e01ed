"""The Redis backend past one Redis: configuration errors said at start-up, transient errors
answered 503 + Retry-After, a worker whose loop dies exits non-zero saying why, /readyz while
in-process agents cannot register, and a hot agent's queue over several streams."""

import asyncio
import subprocess

import httpx
import pytest
from redis import exceptions as rexc

from gateway.core.backends import BackendMisconfigured, BackendUnavailable
from gateway.core.backends.redis_client import transient
from tests.conftest import interlace_cmd, make_backend, running_gateway, subprocess_env, test_config, wait_until
from tests.test_backends import new_task


def _plain_url_of(cluster) -> str:
    """One node of the cluster addressed as if it were a lone Redis (the configuration mistake)."""
    return cluster.url.replace("redis+cluster://", "redis://").split(",")[0]


async def test_a_plain_url_at_a_cluster_node_is_a_startup_error(redis_cluster):
    backend = make_backend("redis", _plain_url_of(redis_cluster))
    try:
        with pytest.raises(BackendMisconfigured, match="redis\\+cluster://"):
            await backend.check()
        # Unchecked, what the node answers (MOVED) is reported as unavailable, never as a crash.
        with pytest.raises(BackendUnavailable):
            for _ in range(20):  # some ids hash to this node's own slots: one that does not
                await backend.tasks.get(new_task().id)
    finally:
        await backend.close()


async def test_a_cluster_url_at_a_lone_redis_is_a_startup_error(redis_server):
    url = redis_server.url.replace("redis://", "redis+cluster://").rsplit("/", 1)[0]
    backend = make_backend("redis-cluster", url)
    try:
        with pytest.raises(BackendMisconfigured, match="not a Redis Cluster node"):
            await backend.check()
    finally:
        await backend.close()


async def test_a_gateway_on_a_misconfigured_url_fails_start_up_at_once(redis_cluster):
    from gateway.core.runtime import Runtime

    runtime = Runtime(test_config(redis_url=_plain_url_of(redis_cluster)))
    async with asyncio.timeout(10):  # not the registry feed's 30 s
        with pytest.raises(BackendMisconfigured):
            await runtime.start()
    await runtime.backend.close()


@pytest.mark.parametrize(
    "exc",
    [
        rexc.ConnectionError("refused"),
        rexc.TimeoutError("slow"),
        rexc.BusyLoadingError("LOADING"),
        rexc.ClusterDownError("CLUSTERDOWN The cluster is down"),
        rexc.MasterDownError("MASTERDOWN Link with MASTER is down"),
        rexc.TryAgainError("TRYAGAIN"),
        rexc.MovedError("3999 127.0.0.1:6381"),
        rexc.AskError("3999 127.0.0.1:6381"),
        rexc.ReadOnlyError("READONLY You can't write against a read only replica."),
        rexc.SlotNotCoveredError("slot 12 not covered"),
        rexc.ResponseError("UNBLOCKED force unblock from blocking operation, instance state changed"),
        rexc.ResponseError("NOREPLICAS Not enough good replicas to write."),
        rexc.ResponseError(
            "Command # 2 (WAIT 1 1000) of pipeline caused error: ('WAIT cannot be used with replica instances."
        ),
        rexc.ResponseError("Command # 1 (EVALSHA x) of pipeline caused error: UNBLOCKED force unblock"),
        ConnectionResetError(),
    ],
    ids=lambda e: e.__class__.__name__ + ":" + str(e).split(" ")[0],
)
def test_every_transient_redis_error_is_unavailable(exc):
    assert transient(exc)


@pytest.mark.parametrize(
    "exc", [rexc.ResponseError("WRONGTYPE Operation against a key"), rexc.ClusterCrossSlotError("CROSSSLOT")]
)
def test_errors_a_retry_cannot_cure_are_not_unavailable(exc):
    assert not transient(exc)


async def test_tasks_api_answers_503_with_retry_after_when_redis_is_away():
    """A gateway on a cluster whose nodes stopped answering: 503 + Retry-After, never a 500."""
    from tests.redis_topologies import RedisCluster

    cluster = RedisCluster(masters=3)
    cluster.start()
    try:
        config = test_config(redis_url=cluster.url, echo=False)
        async with running_gateway(config) as (url, _):
            for port in list(cluster.procs):
                cluster.kill(port)
            async with httpx.AsyncClient(base_url=url, timeout=30) as client:
                listed = await client.get("/tasks")
                assert listed.status_code == 503 and "retry-after" in listed.headers
                ready = await client.get("/readyz")
                assert ready.status_code == 503
    finally:
        cluster.stop()


async def test_worker_whose_loop_dies_exits_non_zero_and_says_why(redis_server):
    """A queue key of the wrong type is no outage a retry cures: the loop dies, the process
    exits 1 and its log names the error (it used to exit 0 in silence)."""
    redis_server.flush()
    backend = make_backend("redis", redis_server.url)
    try:
        await backend.r.set(backend.keys.queue("echo"), "not a stream")
    finally:
        await backend.close()
    done = await asyncio.to_thread(
        subprocess.run,
        interlace_cmd("worker", "echo", "--redis", redis_server.url, "--log-level", "warning"),
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert "worker loop died" in done.stderr and "WRONGTYPE" in done.stderr


async def test_worker_on_a_misconfigured_url_exits_non_zero_and_says_why(redis_cluster):
    done = await asyncio.to_thread(
        subprocess.run,
        interlace_cmd("worker", "echo", "--redis", _plain_url_of(redis_cluster), "--log-level", "warning"),
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1 and "redis+cluster://" in done.stderr


async def test_readyz_is_not_ready_while_an_in_process_agent_cannot_register():
    from agents.echo import EchoWorker

    # A lease longer than the registry takes: every registration of the agent is refused.
    for config, expected in ((test_config(lease_s=120, max_lease_s=60), 503), (test_config(), 200)):
        async with running_gateway(config, workers=[]) as (url, app):
            runner = app.state.supervisor.start(EchoWorker())
            async with httpx.AsyncClient(base_url=url, timeout=10) as client:
                if expected == 200:
                    await asyncio.wait_for(runner.ready.wait(), 10)
                ready = await client.get("/readyz")
                assert ready.status_code == expected
                if expected == 503:
                    assert "echo" in ready.json()["error"]["message"] and ready.headers["retry-after"] == "1"


async def test_readyz_is_not_ready_when_an_in_process_agents_loop_died(redis_server):
    redis_server.flush()
    backend = make_backend("redis", redis_server.url)
    try:
        await backend.r.set(backend.keys.queue("echo"), "not a stream")  # no outage: a loop-killing error
    finally:
        await backend.close()
    async with running_gateway(test_config(redis_url=redis_server.url)) as (url, _):
        async with httpx.AsyncClient(base_url=url, timeout=10) as client:

            async def refused():
                ready = await client.get("/readyz")
                return ready.status_code == 503 and "echo" in ready.json()["error"]["message"]

            await wait_until(refused)


async def test_readyz_is_ready_when_an_in_process_agents_name_is_held_by_another(redis_server):
    """Two gateways on one Redis, each with an echo agent of its own key: the second one's name
    belongs to the first one's record, and tasks go there; both gateways are ready."""
    redis_server.flush()
    async with running_gateway(test_config(redis_url=redis_server.url)) as (first, _):
        async with running_gateway(test_config(redis_url=redis_server.url)) as (second, _):
            async with httpx.AsyncClient(timeout=10) as client:
                for url in (first, second):
                    assert (await client.get(f"{url}/readyz")).status_code == 200


@pytest.mark.parametrize("kind", ["redis", "redis-cluster"])
async def test_a_hot_agents_queue_spans_several_streams(kind, request):
    from tests.conftest import REDIS_KINDS

    server = request.getfixturevalue(REDIS_KINDS[kind])
    server.flush()
    backend = make_backend(kind, f"{server.url}?queue_shards=4")
    try:
        tasks = [new_task(agent="hot") for _ in range(40)]
        for task in tasks:
            await backend.tasks.submit(task, "hot", "n")
        streams = backend.keys.queues("hot")
        lengths = [await backend.r.xlen(s) for s in streams]
        assert len(streams) == 4 and all(lengths) and sum(lengths) == 40  # every stream holds some
        assert await backend.bus.depth("hot") == 40
        seen = []
        async with asyncio.timeout(20):
            while len(seen) < 40:
                for d in await backend.bus.receive("hot", "c1", block_ms=500, count=8):
                    task, locked = await backend.take_run(d, "c1", 5_000)
                    assert locked and task.id == d.task_id
                    await backend.end_run(d, "c1")
                    seen.append(d.task_id)
        assert sorted(seen) == sorted(t.id for t in tasks)
        assert await backend.bus.depth("hot") == 0
    finally:
        await backend.close()


async def test_on_a_cluster_a_task_enqueued_before_it_is_stored_is_waited_for(redis_cluster, monkeypatch):
    """A cluster submit enqueues first, then stores: a worker that is faster than the store
    waits for it; an entry whose task never comes (its gateway died between) is dropped."""
    from gateway.core.backends import redis as redis_backend

    redis_cluster.flush()
    backend = make_backend("redis-cluster", redis_cluster.url)
    try:
        late, never = new_task(), new_task()
        for task in (late, never):  # the first half of a submit each
            await backend.tasks._enqueue_on(backend.keys.queue("echo", task.id), task.id)
        got = await backend.bus.receive("echo", "c", block_ms=1000, count=2)
        by_task = {d.task_id: d for d in got}
        taking = asyncio.create_task(backend.take_run(by_task[late.id], "c", 5_000))
        await backend.tasks.submit(late, "echo", "n")  # the store lands (and enqueues again)
        task, locked = await asyncio.wait_for(taking, 10)
        assert task.id == late.id and locked
        monkeypatch.setattr(redis_backend, "ORPHAN_GRACE_S", 0.3)
        assert await asyncio.wait_for(backend.take_run(by_task[never.id], "c", 5_000), 10) == (None, False)
    finally:
        await backend.close()
