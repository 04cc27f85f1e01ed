"""Failover under load, on real Redis processes: a Redis Cluster master SIGKILLed (its replica
takes over, the crashed node comes back as the replica) and a Sentinel switching primaries.
Clients of a live gateway keep submitting throughout: each answer is 202, or 503 (or the
caller's quota's 429) with Retry-After, never a 500; and every accepted task completes,
exactly once (one terminal event, ``completed``). The URL asks for ``replicas=1``: a write is
acknowledged once a replica has it, so the switch loses none that was acknowledged."""

import asyncio

import httpx
import pytest

from schemas import TaskStatusUpdate
from tests.conftest import running_gateway, test_config
from tests.redis_topologies import RedisCluster, RedisSentinel, cli, wait_for

pytestmark = pytest.mark.failover

CLIENTS = 6
BEFORE, AFTER = 60, 60  # tasks accepted before the switch starts, and after it is over


async def _submit_until(url: str, stop: asyncio.Event, accepted: list[str], refused: list[int]) -> None:
    body = {"agent": "echo", "message": {"role": "user", "parts": [{"kind": "text", "text": "x"}]}}
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        while not stop.is_set():
            resp = await client.post("/tasks", json=body)
            if resp.status_code == 202:
                accepted.append(resp.json()["id"])
            elif resp.status_code in (429, 503) and "retry-after" in resp.headers:
                # 503 while the bus fails over; 429 when this caller's running tasks hit the
                # quota because the switch held their completion up
                refused.append(resp.status_code)
                await asyncio.sleep(0.05)  # as a client honouring Retry-After would, only sooner
            else:
                raise AssertionError(f"{resp.status_code} {resp.text[:300]}")


async def _until(predicate, timeout: float, what: str) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.05)


async def _run_through_a_switch(redis_url: str, switch) -> dict:
    """Load a gateway (in-process echo agent) on ``redis_url``, call ``switch`` (blocking) in
    the middle, and check every accepted task; returns the counts."""
    accepted: list[str] = []
    refused: list[int] = []
    stop = asyncio.Event()
    async with running_gateway(test_config(redis_url=redis_url)) as (url, app):
        backend = app.state.runtime.backend
        clients = [asyncio.create_task(_submit_until(url, stop, accepted, refused)) for _ in range(CLIENTS)]
        try:
            await _until(lambda: len(accepted) >= BEFORE, 30, "load before the switch")
            await asyncio.to_thread(switch)
            after = len(accepted)
            await _until(lambda: len(accepted) >= after + AFTER, 60, "load after the switch")
        finally:
            stop.set()
            await asyncio.gather(*clients)

        async def settled(task_id: str) -> list[str]:
            while True:
                try:
                    events = await backend.tasks.read_events(task_id, None, 0)
                except Exception:  # the backend catching up after the switch
                    await asyncio.sleep(0.1)
                    continue
                finals = [
                    (e.event.status.state.value, _text(e.event))
                    for e in events
                    if isinstance(e.event, TaskStatusUpdate) and e.event.status.state.terminal
                ]
                if finals:
                    return finals
                await asyncio.sleep(0.05)

        async with asyncio.timeout(90):
            finals = await asyncio.gather(*(settled(t) for t in accepted))
    assert len(set(accepted)) == len(accepted)
    wrong = [f for f in finals if [state for state, _ in f] != ["completed"]]
    assert not wrong, wrong  # every accepted task: one terminal event, completed
    return {"accepted": len(accepted), "refused_503": refused.count(503), "refused_429": refused.count(429)}


def _text(event: TaskStatusUpdate) -> str:
    message = event.status.message
    return " ".join(getattr(p, "text", "") for p in message.parts) if message else ""


async def test_cluster_master_killed_under_load_loses_no_accepted_task():
    cluster = RedisCluster(masters=3, replicas=1)
    await asyncio.to_thread(cluster.start)
    try:

        def switch() -> None:
            victim = cluster.masters()[0]
            cluster.kill(victim)  # SIGKILL: its replica must take over
            wait_for(lambda: len(cluster.masters()) == 3 and cluster.healthy(), 30, "the replica's promotion")
            cluster.restart(victim)  # back as the new master's replica: writes are confirmed again
            wait_for(lambda: cluster.healthy() and _replicas_synced(cluster), 30, "the old master to resync")

        counts = await _run_through_a_switch(f"{cluster.url}?replicas=1", switch)
        assert counts["accepted"] >= BEFORE + AFTER
    finally:
        cluster.stop()


def _replicas_synced(cluster: RedisCluster) -> bool:
    return all("connected_slaves:1" in cli(p, "INFO", "replication", timeout=1) for p in cluster.masters())


async def test_sentinel_failover_under_load_loses_no_accepted_task():
    sentinel = RedisSentinel()
    await asyncio.to_thread(sentinel.start)
    try:

        def switch() -> None:
            new = sentinel.failover()
            wait_for(lambda: "connected_slaves:1" in cli(new, "INFO", "replication"), 30, "the old primary to follow")

        counts = await _run_through_a_switch(f"{sentinel.url}?replicas=1", switch)
        assert counts["accepted"] >= BEFORE + AFTER
    finally:
        sentinel.stop()
