"""docker-compose.yml, running: what the README promises of it, end to end (issue 18).

The tests run in file order against one stack (``tests/compose/conftest.py``); the last one takes
it down. A signed agent running on the host registers at gateway-1 and is called by the official
MCP client at gateway-2 and the official A2A client at gateway-3; a killed gateway leaves the
others serving and comes back with its node key; Redis restarted under load loses no accepted
task; ``down -v`` leaves nothing behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import time

import httpx
import pytest
from a2a.client import (
    A2ACardResolver,
    AuthInterceptor,
    ClientCallContext,
    ClientConfig,
    ClientFactory,
    InMemoryContextCredentialStore,
)
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client

from registry.identity import Identity
from tests.compose.conftest import (
    FIGURES,
    GATEWAYS,
    Stack,
    compose,
    docker,
    echo_task,
    first_answer,
    health,
    inspect,
)
from tests.conftest import interlace_cmd, stop_process, subprocess_env, wait_until
from tests.fixtures.a2a_support import as_dict, message, request, texts

# Each test's own waits are bounded; this bounds one test with the stack's start in its setup.
pytestmark = pytest.mark.timeout(600)

SIGNED_AGENT = "signed-echo"
SERVICES = ("redis", "gateway-1", "gateway-2", "gateway-3", "echo-worker", "model-worker")


def test_every_service_runs_confined_and_healthy(stack: Stack):
    async def all_healthy():
        return all(health(s) in ("healthy", "running") for s in SERVICES)

    # The model worker's check passes once SmolLM2 is loaded and calibrated.
    asyncio.run(wait_until(all_healthy, timeout=240, interval=1))
    for service in SERVICES:
        host = inspect(service)["HostConfig"]
        assert host["RestartPolicy"]["Name"] == "unless-stopped", service
        assert host["Memory"] > 0 and host["NanoCpus"] > 0, f"{service} has no resource limits"
    for service in ("gateway-1", "echo-worker", "model-worker"):
        host = inspect(service)["HostConfig"]
        assert host["ReadonlyRootfs"] and host["CapDrop"] == ["ALL"], service
    # Redis and the workers are on the internal network only, and no port of Redis is published.
    assert not inspect("redis")["HostConfig"]["PortBindings"]
    for service in ("redis", "echo-worker", "model-worker"):
        networks = list(inspect(service)["NetworkSettings"]["Networks"])
        assert len(networks) == 1 and networks[0].endswith("_backend"), (service, networks)
        assert json.loads(docker("network", "inspect", networks[0]).stdout)[0]["Internal"], networks[0]


async def test_the_gateways_and_their_console_require_an_api_key_and_answer_with_one(stack: Stack):
    for gateway, url in GATEWAYS.items():
        async with httpx.AsyncClient(base_url=url, timeout=30) as anonymous:
            assert (await anonymous.get("/healthz")).status_code == 200
            refused = await anonymous.post("/tasks", json=echo_task("no key"))
            assert refused.status_code == 401 and "Bearer" in refused.headers["www-authenticate"], gateway
            wrong = await anonymous.post("/tasks", json=echo_task("x"), headers={"Authorization": "Bearer nope"})
            assert wrong.status_code == 401, gateway
        async with stack.client(gateway) as client:
            done = await client.post("/tasks?wait=true", json=echo_task(f"via {gateway}"))
            assert done.json()["artifacts"][0]["parts"][0]["text"] == f"via {gateway}"
            # The console is on the same port, behind the same key.
            console = await client.get("/ui")
            assert console.status_code == 200 and console.headers["content-type"].startswith("text/html"), gateway


@pytest.fixture(scope="module")
def signed_agent(stack: Stack, tmp_path_factory):
    """An echo worker on the host with a key of its own, registered at gateway-1 (registration
    token) and serving its tasks through gateway-1's /bus (each call signed with its key)."""
    key = tmp_path_factory.mktemp("agent") / "agent.key"
    identity = Identity.generate()
    identity.save(key)
    log = tmp_path_factory.mktemp("agent-log") / "worker.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            interlace_cmd(
                "worker", "echo", "--gateway", GATEWAYS["gateway-1"], "--key", str(key), "--name", SIGNED_AGENT
            ),
            env=subprocess_env(INTERLACE_WORKER_TOKEN=stack.registration_token),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        yield identity
    finally:
        stop_process(proc)
        print(f"\n--- {SIGNED_AGENT} worker log ---\n{log.read_text()[-3000:]}")


async def registered(stack: Stack, gateway: str, did: str) -> bool:
    async with stack.client(gateway) as client:
        records = (await client.get("/registry/agents", params={"limit": 500})).json()
    return any(r["did"] == did for r in records["agents"])


async def test_a_signed_agent_registered_at_one_gateway_answers_mcp_at_another_and_a2a_at_the_third(
    stack: Stack, signed_agent: Identity
):
    async def seen_everywhere():
        return all([await registered(stack, g, signed_agent.did) for g in GATEWAYS])

    await wait_until(seen_everywhere, timeout=30, interval=0.2)
    headers = {"Authorization": f"Bearer {stack.api_key}"}
    async with asyncio.timeout(60), httpx.AsyncClient(headers=headers, timeout=30) as http:
        url = f"{GATEWAYS['gateway-2']}/mcp"
        async with streamable_http_client(url, http_client=http) as (read, write, *_):
            async with ClientSession(read, write) as session:
                await session.initialize()
                assert SIGNED_AGENT in [tool.name for tool in (await session.list_tools()).tools]
                result = await session.call_tool(SIGNED_AGENT, {"message": "hello over MCP"})
                assert not result.is_error and result.content[0].text == "hello over MCP"
    credentials = InMemoryContextCredentialStore()
    await credentials.set_credentials("suite", "apiKey", stack.api_key)
    async with asyncio.timeout(60), httpx.AsyncClient(timeout=30) as http:
        resolver = A2ACardResolver(http, f"{GATEWAYS['gateway-3']}/a2a/agents/{SIGNED_AGENT}")
        card = await resolver.get_agent_card(http_kwargs={"headers": {"X-API-Key": stack.api_key}})
        client = ClientFactory(ClientConfig(httpx_client=http, streaming=False)).create(
            card, interceptors=[AuthInterceptor(credentials)]
        )
        context = ClientCallContext(state={"sessionId": "suite"})
        events = [as_dict(e) async for e in client.send_message(request(message("hello over A2A")), context=context)]
    task = events[-1]["task"]
    assert task["status"]["state"] == "TASK_STATE_COMPLETED" and texts(task) == "hello over A2A"


async def test_the_model_worker_answers_on_cpu(stack: Stack):
    body = {**echo_task("Say hello."), "agent": "model", "metadata": {"max_tokens": 16}}
    async with stack.client("gateway-3", timeout=120) as client:
        done = (await client.post("/tasks?wait=true&timeout=100", json=body)).json()
    assert done["status"]["state"] == "completed", done
    answer = "".join(p.get("text", "") for a in done["artifacts"] for p in a["parts"])
    assert answer.strip(), done


async def node_keys(stack: Stack, gateway: str) -> dict:
    """The key set that signs the gateway's A2A cards: its node key (node.key)."""
    async with stack.client(gateway) as client:
        return (await client.get("/a2a/jwks.json")).json()


async def test_docker_kill_of_a_gateway_leaves_the_others_serving(stack: Stack, signed_agent: Identity):
    keys = await node_keys(stack, "gateway-2")
    docker("kill", inspect("gateway-2")["Id"])
    with pytest.raises(httpx.TransportError):
        async with stack.client("gateway-2", timeout=5) as client:
            await client.get("/healthz")
    for gateway in ("gateway-1", "gateway-3"):
        for agent in ("echo", SIGNED_AGENT):
            async with stack.client(gateway) as client:
                done = await client.post("/tasks?wait=true&timeout=20", json=echo_task(f"{agent} at {gateway}", agent))
            assert done.json()["artifacts"][0]["parts"][0]["text"] == f"{agent} at {gateway}"
    # Started again, it is the same node: its key is in its volume.
    compose("start", "gateway-2")
    await first_answer(stack, "gateway-2", "echo", timeout=60)
    assert await node_keys(stack, "gateway-2") == keys


async def test_a_gateway_whose_process_ends_is_restarted_by_its_policy(stack: Stack):
    # `docker kill` above is an operator's stop, which no restart policy undoes; a process that
    # ends by itself (here: made to, with SIGTERM to the container's first process) is restarted.
    service = "gateway-3"
    before = inspect(service)["RestartCount"]
    docker("exec", inspect(service)["Id"], "sh", "-c", "kill 1")

    async def restarted() -> bool:
        return inspect(service)["RestartCount"] > before

    await wait_until(restarted, timeout=60, interval=0.5)
    await first_answer(stack, service, "echo", timeout=60)


async def test_a_redis_restart_under_load_loses_no_accepted_task(stack: Stack):
    accepted: list[tuple[str, str]] = []  # (gateway, task id) of every submission answered 2xx
    refused: dict[str, int] = {}  # what the others got: a status, or the transport error
    restarted = asyncio.Event()

    async def submitter(gateway: str) -> None:
        async with stack.client(gateway, timeout=15) as client:
            after_restart = 0
            while after_restart < 25:
                try:
                    resp = await client.post("/tasks", json=echo_task(f"load {len(accepted)}"))
                except httpx.TransportError as exc:
                    refused[type(exc).__name__] = refused.get(type(exc).__name__, 0) + 1
                    await asyncio.sleep(0.1)  # the gateway is reconnecting: pace the retries
                    continue
                if resp.status_code in (200, 201, 202):
                    accepted.append((gateway, resp.json()["id"]))
                    after_restart += restarted.is_set()
                else:
                    refused[str(resp.status_code)] = refused.get(str(resp.status_code), 0) + 1
                    await asyncio.sleep(0.1)

    async def loaded() -> bool:
        return len(accepted) >= 40

    async def restart_redis() -> None:
        await wait_until(loaded, timeout=60, interval=0.05)
        await asyncio.to_thread(docker, "restart", inspect("redis")["Id"])
        restarted.set()

    async with asyncio.timeout(240):
        await asyncio.gather(restart_redis(), *(submitter(g) for g in ("gateway-1", "gateway-3") for _ in range(4)))
    FIGURES["tasks accepted around the Redis restart"] = len(accepted)

    async def unfinished() -> list[dict]:
        out = []
        async with stack.client("gateway-2") as client:
            for gateway, task_id in accepted:
                task = (await client.get(f"/tasks/{task_id}")).json()
                if task.get("status", {}).get("state") != "completed":
                    out.append({"gateway": gateway, "id": task_id, "task": task})
        return out

    async def all_completed() -> bool:
        return not await unfinished()

    started = time.monotonic()
    with contextlib.suppress(AssertionError):  # what is left is reported below
        await wait_until(all_completed, timeout=120, interval=1)
    left = await unfinished()
    FIGURES["seconds for the accepted tasks to finish after the load"] = time.monotonic() - started
    assert not left, f"{len(left)} of {len(accepted)} accepted tasks did not complete ({refused}): {left[:3]}"


def test_down_v_leaves_nothing_running(stack: Stack):
    compose("down", "-v", "--remove-orphans")
    label = f"label=com.docker.compose.project={stack.project}"
    assert docker("ps", "-aq", "--filter", label).stdout.split() == []
    assert docker("volume", "ls", "-q", "--filter", label).stdout.split() == []
    assert docker("network", "ls", "-q", "--filter", label).stdout.split() == []
