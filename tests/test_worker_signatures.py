"""Workers that reach the bus through a gateway sign their ``/bus`` calls with their agent's key
(gateway/worker_api.py): the gateway lets a signed worker use only its own agent's stream and
tasks, and, when callers are authenticated (any bind), refuses unsigned calls that bring no
worker token. Real gateways under uvicorn (declared bound to 0.0.0.0, served on
127.0.0.1), real ``WorkerRunner``s over ``HttpLink``, API keys for the caller."""

from __future__ import annotations

import asyncio
import contextlib

import httpx
import pytest
import yaml

from agents.echo import EchoWorker
from agents.links import HttpLink
from agents.worker import Worker, WorkerRunner
from gateway.core.auth import api_key_digest
from gateway.core.backends import Delivery
from gateway.core.http_client import StatusError
from gateway.core.httpsig import did_key_method, sign_request
from registry.identity import Identity
from schemas import Artifact, TaskState, TaskStatus, TaskStatusUpdate, TextPart
from tests.conftest import running_gateway, test_config

pytestmark = pytest.mark.timeout(60)

ALICE = {"Authorization": "Bearer k-alice-0123456789abcdef"}


class Mine(EchoWorker):
    agent = "mine"


class Slow(Worker):
    """Holds each task until it is cancelled (and says so)."""

    agent = "slow"

    def __init__(self) -> None:
        self.started, self.cancelled = asyncio.Event(), asyncio.Event()

    async def handle(self, task):
        self.started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
        yield task.artifact_event(Artifact(parts=[TextPart(text="never")]))


@contextlib.asynccontextmanager
async def secured_gateway(tmp_path, **overrides):
    keys = tmp_path / "keys.yaml"
    keys.write_text(
        yaml.safe_dump([{"principal": "alice", "key_sha256": api_key_digest(ALICE["Authorization"][7:]), "groups": []}])
    )
    config = test_config(
        **{"api_keys": str(keys), "host": "0.0.0.0", "admission": "open", "gossip": False, **overrides}
    )
    async with running_gateway(config) as (url, app):
        yield url


@contextlib.asynccontextmanager
async def signed_worker(url: str, worker: Worker):
    identity = Identity.generate()
    runner = WorkerRunner(worker, HttpLink(url, identity=identity), identity=identity, poll_ms=200, lock_ttl_ms=5_000)
    runner.start()
    try:
        async with asyncio.timeout(10):
            await runner.ready.wait()
        yield identity
    finally:
        await runner.stop(2)


async def submit(http: httpx.AsyncClient, agent: str, text: str = "hi", wait: bool = True) -> dict:
    message = {"role": "user", "parts": [{"kind": "text", "text": text}]}
    resp = await http.post(f"/tasks?wait={str(wait).lower()}", json={"agent": agent, "message": message})
    assert resp.status_code in (200, 202), resp.text
    return resp.json()


def refused(exc: pytest.ExceptionInfo, status: int, reason: str) -> None:
    resp = exc.value.response
    assert resp.status_code == status and reason in resp.json()["error"]["message"], resp.text


async def test_a_signed_worker_serves_its_own_agents_stream_and_nothing_else(tmp_path):
    async with secured_gateway(tmp_path) as url, httpx.AsyncClient(base_url=url, headers=ALICE, timeout=15) as http:
        async with signed_worker(url, Mine()) as identity:
            done = await submit(http, "mine", "signed work")
            assert done["status"]["state"] == "completed" and done["artifacts"][0]["parts"][0]["text"] == "signed work"
            echoed = await submit(http, "echo")  # the in-process echo agent's task
            link = HttpLink(url, identity=identity)
            try:
                assert [s.event.kind async for s in link.events(done["id"], None)][-1] == "status-update"
                with pytest.raises(StatusError) as exc:
                    await link.receive("echo", "intruder", 0, 1)
                refused(exc, 403, "not this worker's agent's")
                with pytest.raises(StatusError) as exc:  # its own stream, another agent's task
                    await link.begin(Delivery("mine", "0-1", echoed["id"], 1), "intruder", 5_000)
                refused(exc, 403, "is not routed to this worker's agent")
                failed = TaskStatusUpdate(
                    task_id=echoed["id"], context_id=echoed["context_id"], status=TaskStatus(state=TaskState.FAILED)
                )
                with pytest.raises(StatusError) as exc:
                    await link.emit(echoed["id"], failed)
                refused(exc, 403, "is not routed to this worker's agent")
                with pytest.raises(StatusError) as exc:
                    [s async for s in link.events(echoed["id"], None)]
                assert exc.value.response.status_code == 403
            finally:
                await link.close()


async def test_a_cancel_reaches_a_signed_workers_handler_through_bus_events(tmp_path):
    slow = Slow()
    async with secured_gateway(tmp_path) as url, httpx.AsyncClient(base_url=url, headers=ALICE, timeout=15) as http:
        async with signed_worker(url, slow):
            task = await submit(http, "slow", wait=False)
            async with asyncio.timeout(10):
                await slow.started.wait()
                assert (await http.post(f"/tasks/{task['id']}:cancel")).status_code == 200
                await slow.cancelled.wait()


async def test_unsigned_and_unregistered_workers_are_refused_under_required_authentication(tmp_path):
    body = {"agent": "echo", "consumer": "x", "block_ms": 0}
    async with secured_gateway(tmp_path) as url, httpx.AsyncClient(base_url=url, timeout=10) as http:
        unsigned = await http.post("/bus/receive", json=body)  # from loopback, but the bind is public
        assert unsigned.status_code == 401 and "sign /bus requests" in unsigned.json()["error"]["message"]
        stranger = HttpLink(url, identity=Identity.generate())  # a valid signature, no record
        with pytest.raises(StatusError) as exc:
            await stranger.receive("echo", "x", 0, 1)
        refused(exc, 401, "has no live record")
        await stranger.close()
        identity, raw = Identity.generate(), b'{"agent":"echo","consumer":"x","block_ms":0}'
        headers = sign_request(identity, did_key_method(identity.did), "POST", f"{url}/bus/receive", raw)
        tampered = await http.post("/bus/receive", content=raw.replace(b"echo", b"mine"), headers=headers)
        assert tampered.status_code == 401 and "Content-Digest" in tampered.json()["error"]["message"]
    async with secured_gateway(tmp_path, worker_token="s3cret") as url, httpx.AsyncClient(base_url=url) as http:
        assert (await http.post("/bus/receive", json=body)).status_code == 401
        ok = await http.post("/bus/receive", json=body, headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200 and ok.json() == {"deliveries": []}


async def test_with_callers_authenticated_a_loopback_client_is_no_worker_by_being_local(tmp_path):
    """Security review P12: /bus served any loopback client, so any local user (or a reverse proxy
    on the same host) could take any agent's tasks. With callers authenticated, being local is no
    credential, on a loopback bind too: sign, or present the worker token."""
    body = {"agent": "echo", "consumer": "x", "block_ms": 0}
    async with (
        secured_gateway(tmp_path, host="127.0.0.1") as url,
        httpx.AsyncClient(base_url=url, headers=ALICE) as http,
    ):
        unsigned = await http.post("/bus/receive", json=body)
        assert unsigned.status_code == 401 and "sign /bus requests" in unsigned.json()["error"]["message"]
        async with signed_worker(url, Mine()):
            assert (await submit(http, "mine"))["status"]["state"] == "completed"


async def test_on_a_loopback_gateway_unsigned_and_signed_workers_both_work():
    async with running_gateway(test_config(gossip=False)) as (url, _), httpx.AsyncClient(base_url=url) as http:
        unsigned = await http.post("/bus/receive", json={"agent": "echo", "consumer": "x", "block_ms": 0})
        assert unsigned.status_code == 200
        async with signed_worker(url, Mine()):
            assert (await submit(http, "mine"))["status"]["state"] == "completed"
