"""Faults with real processes: a worker killed mid-task, Redis restarted under load."""

import asyncio
import contextlib
import signal
import subprocess

import httpx
import pytest

from registry.identity import Identity
from tests.conftest import RedisProcess, interlace_cmd, running_gateway, stop_process, subprocess_env, test_config


def start_worker(*where: str) -> subprocess.Popen:
    return subprocess.Popen(
        interlace_cmd("worker", "echo", *where, "--visibility-timeout-ms", "1000", "--log-level", "warning"),
        env=subprocess_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


async def events_of(client: httpx.AsyncClient, task_id: str) -> list[dict]:
    import json

    out = []
    async with client.stream("GET", f"/tasks/{task_id}/events") as s:
        async for line in s.aiter_lines():
            if line.startswith("data: "):
                out.append(json.loads(line[6:]))
    return out


async def wait_for_state(client, task_id, state, timeout=15.0):
    async def check():
        while (await client.get(f"/tasks/{task_id}")).json()["status"]["state"] != state:
            await asyncio.sleep(0.02)

    await asyncio.wait_for(check(), timeout)


@pytest.mark.parametrize("mode", ["redis-direct", "embedded-over-http"])
async def test_worker_killed_mid_task_is_completed_once_by_another(mode, redis_server, tmp_path):
    redis_server.flush()
    config = test_config(echo=False, redis_url=redis_server.url if mode == "redis-direct" else None)
    async with running_gateway(config) as (url, _):
        where = ("--redis", redis_server.url) if mode == "redis-direct" else ("--gateway", url)
        # The replacement is the same agent (its key): a new key would be a stranger to the name
        # "echo" while the killed worker's record lives on.
        key = tmp_path / "echo.key"
        Identity.generate().save(key)
        where += ("--key", str(key))
        first = start_worker(*where)
        second = None
        try:
            async with httpx.AsyncClient(base_url=url, timeout=20) as client:

                async def echo_routable():
                    while (
                        await client.post("/tasks", json={"agent": "echo", "message": _msg("warm")})
                    ).status_code != 202:
                        await asyncio.sleep(0.05)

                await asyncio.wait_for(echo_routable(), 20)
                resp = await client.post("/tasks", json={"agent": "echo", "message": _msg("survive", delay_ms=2500)})
                task_id = resp.json()["id"]
                await wait_for_state(client, task_id, "working")
                first.send_signal(signal.SIGKILL)
                first.wait(5)
                second = start_worker(*where)
                await wait_for_state(client, task_id, "completed", timeout=30)
                events = await events_of(client, task_id)
                terminal = [
                    e
                    for e in events
                    if e["kind"] == "status-update"
                    and e["status"]["state"] in ("completed", "failed", "canceled", "rejected")
                ]
                assert [e["status"]["state"] for e in terminal] == ["completed"]
                # The second worker ran it. Over HTTP the dead worker's last long-poll may still have
                # claimed the entry once on its behalf, which costs one more visibility timeout.
                attempts = [e["metadata"]["attempt"] for e in events if e.get("metadata")]
                assert len(attempts) == 1 and attempts[0] >= 2
                task = (await client.get(f"/tasks/{task_id}")).json()
                assert task["artifacts"][0]["parts"] == [{"kind": "text", "text": "survive"}]
        finally:
            for proc in (first, second):
                if proc is not None:
                    stop_process(proc)


def _msg(text, **meta):
    return {"role": "user", "parts": [{"kind": "text", "text": text}], **({"metadata": meta} if meta else {})}


async def test_redis_restart_under_load_loses_no_accepted_task():
    redis = RedisProcess()
    redis.start()
    try:
        async with running_gateway(test_config(redis_url=redis.url)) as (url, _):
            async with httpx.AsyncClient(base_url=url, timeout=10) as client:
                accepted: list[str] = []
                refused = 0

                async def submit_one(i):
                    nonlocal refused
                    with contextlib.suppress(httpx.TransportError):
                        r = await client.post("/tasks", json={"agent": "echo", "message": _msg(f"t{i}", delay_ms=50)})
                        if r.status_code == 202:
                            accepted.append(r.json()["id"])
                            return
                        assert r.status_code == 503 and r.json()["error"]["code"] == "unavailable", r.text
                        refused += 1

                for i in range(30):
                    await submit_one(i)
                redis.kill()

                async def not_ready():
                    while (await client.get("/readyz")).status_code != 503:
                        await asyncio.sleep(0.05)

                await asyncio.wait_for(not_ready(), 10)
                for i in range(30, 40):
                    await submit_one(i)  # refused with 503 while Redis is down
                assert refused >= 10
                redis.start()  # same port and AOF directory

                async def ready():
                    while (await client.get("/readyz")).status_code != 200:
                        await asyncio.sleep(0.05)

                await asyncio.wait_for(ready(), 15)
                for i in range(40, 60):
                    await submit_one(i)
                assert len(accepted) == 50

                async def all_completed():
                    while True:
                        states = []
                        for t in accepted:
                            resp = await client.get(f"/tasks/{t}")
                            assert resp.status_code == 200, resp.text  # never lost (404)
                            states.append(resp.json()["status"]["state"])
                        if all(s == "completed" for s in states):
                            return
                        await asyncio.sleep(0.1)

                await asyncio.wait_for(all_completed(), 45)
    finally:
        redis.kill()
