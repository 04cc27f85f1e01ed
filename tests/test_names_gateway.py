"""Names that belong to someone, through a live gateway: probe P11 of the security review as
regression tests (a squatter on ``echo``; a message that names no agent), replicas sharing a
name's queue while strangers cannot reach it, operators' revocations, the lease cap, the CLI."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import time
from collections.abc import AsyncIterator

import httpx
import pytest
import yaml
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from agents.links import HttpLink
from agents.worker import Worker, WorkerRunner
from gateway.core.http_client import StatusError
from registry.identity import Identity
from registry.records import sign
from schemas import Artifact, Task, TextPart
from schemas.agent_record import AgentRecord
from tests.conftest import running_gateway, serve_app, test_config
from tests.fixtures.a2a_support import V10
from tests.test_registry import cli

pytestmark = pytest.mark.timeout(120)

NET = "interlace"


class Capture:
    """A loopback HTTP server standing in for a hostile endpoint: it records every request."""

    def __init__(self) -> None:
        self.requests: list[str] = []

        async def anything(request: Request) -> JSONResponse:
            self.requests.append(f"{request.method} {request.url.path}")
            return JSONResponse({})

        self.app = Starlette(routes=[Route("/{path:path}", anything, methods=["GET", "POST"])])


@contextlib.asynccontextmanager
async def capture_server() -> AsyncIterator[tuple[str, Capture]]:
    capture = Capture()
    async with serve_app(capture.app) as url:
        yield url, capture


def signed(identity: Identity, name: str, *, endpoints: dict, seq: int = 1, ttl: int = 600, **extra) -> dict:
    now = int(time.time())
    data = {
        "did": identity.did,
        "name": name,
        "version": "1",
        "skills": [{"id": name, "name": name, "description": "the same skills as the real one"}],
        "endpoints": endpoints,
        "home_node": "elsewhere",
        "seq": seq,
        "issued_at": now,
        "expires_at": now + ttl,
        "network": NET,
        **extra,
    }
    return sign(AgentRecord.model_validate(data), identity).dump()


def text_message(text: str) -> dict:
    return {"role": "user", "parts": [{"kind": "text", "text": text}]}


# ---- P11: a second record named echo ----------------------------------------------------------


async def test_p11_a_squatter_on_echo_is_refused_and_gets_none_of_its_tasks():
    async with capture_server() as (capture_url, capture), running_gateway() as (url, app):
        async with httpx.AsyncClient(base_url=url, timeout=30) as http:
            squatter = Identity.generate()
            resp = await http.post("/registry/agents", json=signed(squatter, "echo", endpoints={"a2a": capture_url}))
            assert resp.status_code == 409 and resp.json()["error"]["code"] == "name_taken", resp.text
            # nor may it point a record of its own name at echo's queue
            sideways = signed(squatter, "echo-2", endpoints={"a2a": capture_url})
            sideways["endpoints"]["bus"] = "echo"
            resp = await http.post("/registry/agents", json=sideways)
            assert resp.status_code == 400 and resp.json()["error"]["code"] == "invalid_record"
            assert [r["did"] for r in (await http.get("/registry/agents")).json()["agents"]] == [
                app.state.runtime.registry.by_name("echo")[0].did
            ]

            async def one(i: int) -> dict:
                body = {"agent": "echo", "message": text_message(f"secret {i}")}
                return (await http.post("/tasks?wait=true&timeout=20", json=body)).json()

            done = await asyncio.gather(*(one(i) for i in range(100)))
            assert all(t["status"]["state"] == "completed" for t in done)
            assert [t["artifacts"][0]["parts"][0]["text"] for t in done] == [f"secret {i}" for i in range(100)]
            assert capture.requests == []  # none of the 100 reached the squatter's endpoint


# ---- P11: a message that names no agent -------------------------------------------------------


async def test_p11_a_message_naming_no_agent_is_routed_by_its_text_or_refused():
    async with running_gateway() as (url, app):
        async with httpx.AsyncClient(base_url=url, timeout=30) as http:
            first = Identity.generate()  # sorts before echo: it used to get every unnamed message
            assert (
                await http.post("/registry/agents", json=signed(first, "0aaa", endpoints={"bus": "0aaa"}))
            ).is_success

            async def send(text: str) -> dict:
                msg = {"messageId": f"m-{text}", "role": "ROLE_USER", "parts": [{"text": text}]}
                payload = {"jsonrpc": "2.0", "id": 1, "method": "SendMessage", "params": {"message": msg}}
                return (await http.post("/a2a", json=payload, headers=V10)).json()

            unmatched = await send("qqq zzz")
            assert unmatched["error"]["code"] == -32602 and "names no agent" in unmatched["error"]["message"]
            empty = {"messageId": "m-data", "role": "ROLE_USER", "parts": [{"data": {"x": 1}}]}
            no_text = await http.post(
                "/a2a",
                json={"jsonrpc": "2.0", "id": 2, "method": "SendMessage", "params": {"message": empty}},
                headers=V10,
            )
            assert no_text.json()["error"]["code"] == -32602
            rest = await http.post(
                "/a2a/rest/message:send",
                json={"message": {"messageId": "m-rest", "role": "ROLE_USER", "parts": [{"text": "qqq"}]}},
                headers=V10,
            )
            assert rest.status_code == 400 and rest.json()["error"]["status"] == "INVALID_ARGUMENT", rest.text

            matched = await send("echo")  # the echo agent's skill
            task_id = matched["result"]["task"]["id"]
            assert (await http.get(f"/tasks/{task_id}")).json()["route"]["agent"] == "echo"
            routed = {t["route"]["agent"] for t in (await http.get("/tasks", params={"limit": 100})).json()["tasks"]}
            assert routed == {"echo"}  # nothing ever went to 0aaa
            assert await app.state.runtime.backend.bus.depth("0aaa") == 0


# ---- replicas share the queue, strangers never --------------------------------------------------


class Twin(Worker):
    """Answers with its label, so a test sees which record's worker ran a task."""

    agent = "twin"
    concurrency = 2

    def __init__(self, label: str, replicas: list[str] | None = None) -> None:
        self.label, self.replicas = label, replicas

    def card(self) -> dict:
        return {**super().card(), **({"replicas": self.replicas} if self.replicas else {})}

    async def handle(self, task: Task):
        await asyncio.sleep(0.02)  # long enough that both workers take turns
        yield task.artifact_event(Artifact(parts=[TextPart(text=self.label)]), last_chunk=True)


async def test_a_replica_named_by_the_owner_shares_the_queue_and_a_stranger_never_does():
    owner, replica, stranger = (Identity.generate() for _ in range(3))
    async with running_gateway(test_config(echo=False)) as (url, app):
        registry = app.state.runtime.registry

        def runner(worker: Worker, identity: Identity) -> WorkerRunner:
            link = HttpLink(url, identity=identity)
            return WorkerRunner(worker, link, identity=identity, poll_ms=200, lock_ttl_ms=5_000, network=NET)

        runners = [runner(Twin("owner", [replica.did]), owner)]
        runners[0].start()
        try:
            await asyncio.wait_for(runners[0].ready.wait(), 10)
            since = registry.claim("twin").since
            async with asyncio.timeout(3):  # a replica's claim starts after its owner's
                while int(time.time()) <= since:
                    await asyncio.sleep(0.05)
            runners.append(runner(Twin("replica"), replica))
            runners[1].start()
            await asyncio.wait_for(runners[1].ready.wait(), 10)
            async with httpx.AsyncClient(base_url=url, timeout=30) as http:
                refused = await http.post("/registry/agents", json=signed(stranger, "twin", endpoints={"bus": "twin"}))
                assert refused.status_code == 409 and refused.json()["error"]["code"] == "name_taken"
                runners.append(runner(Twin("stranger"), stranger))  # it tries anyway, over /bus
                runners[2].start()
                with pytest.raises(StatusError) as info:
                    await HttpLink(url, identity=stranger).receive("twin", "x", 10, 1)
                assert info.value.response.status_code == 401
                assert {r.did for r in registry.by_name("twin")} == {owner.did, replica.did}

                async def one(i: int) -> str:
                    body = {"agent": "twin", "message": text_message(str(i))}
                    task = (await http.post("/tasks?wait=true&timeout=20", json=body)).json()
                    assert task["status"]["state"] == "completed", task
                    return task["artifacts"][0]["parts"][0]["text"]

                served = await asyncio.gather(*(one(i) for i in range(40)))
                assert set(served) == {"owner", "replica"}, served
        finally:
            for r in runners:
                await r.stop(2)


# ---- revocations, the lease cap and the CLI ---------------------------------------------------


async def test_revocations_need_an_admin(tmp_path):
    keys = tmp_path / "keys.yaml"

    def entry(principal: str, key: str, groups: list[str]) -> dict:
        return {"principal": principal, "key_sha256": hashlib.sha256(key.encode()).hexdigest(), "groups": groups}

    keys.write_text(yaml.safe_dump([entry("ops", "ops-key", ["admin"]), entry("dev", "dev-key", ["dev"])]))
    agent = Identity.generate()
    async with running_gateway(test_config(api_keys=str(keys))) as (url, _):
        async with httpx.AsyncClient(base_url=url, timeout=10) as http:
            assert (await http.post("/registry/agents", json=signed(agent, "w", endpoints={"bus": "w"}))).is_success
            body = {"did": agent.did}
            anonymous = await http.post("/registry/revocations", json=body)
            dev = await http.post("/registry/revocations", json=body, headers={"Authorization": "Bearer dev-key"})
            assert (anonymous.status_code, dev.status_code) == (401, 403)
            assert dev.json()["error"]["code"] == "forbidden"
            ops = {"Authorization": "Bearer ops-key"}
            assert (await http.get(f"/registry/agents/{agent.did}", headers=ops)).status_code == 200
            done = await http.post("/registry/revocations", json=body, headers=ops)
            assert done.status_code == 201 and done.json()["dropped"] == "w" and done.json()["revoked"] is True
            assert (await http.get(f"/registry/agents/{agent.did}", headers=ops)).status_code == 404
            again = await http.post("/registry/agents", json=signed(agent, "w", endpoints={"bus": "w"}, seq=2))
            assert again.status_code == 403 and again.json()["error"]["code"] == "revoked"
            listed = (await http.get("/registry/revocations", headers=ops)).json()["revocations"]
            assert [r["did"] for r in listed] == [agent.did]
            bad = await http.post("/registry/revocations", json={"did": "nope"}, headers=ops)
            assert bad.status_code == 400
            assert (await http.delete(f"/registry/revocations/{agent.did}", headers=ops)).json()["revoked"] is False
            assert (await http.delete(f"/registry/revocations/{agent.did}", headers=ops)).status_code == 404
            back = await http.post("/registry/agents", json=signed(agent, "w", endpoints={"bus": "w"}, seq=3))
            assert back.status_code == 201


async def test_cli_revoke_unrevoke_lease_cap_and_names(tmp_path):
    key, other = tmp_path / "a.key", tmp_path / "b.key"
    card = tmp_path / "agent.yaml"
    card.write_text("name: weather\nversion: '1'\nskills: [{id: f, name: F}]\nendpoints: {a2a: http://127.0.0.1:9/a}\n")
    async with running_gateway(test_config(max_lease_s=7200)) as (url, _):
        common = ("--gateway", url)
        did = (await cli("keys", "new", str(key)))[1].strip()
        await cli("keys", "new", str(other))
        register = ("agent", "register", "--key", str(key), "--card", str(card), *common)
        rc, out, err = await cli(*register)
        assert rc == 0, err
        first = json.loads(out)
        rc, out, err = await cli(*register)  # a renewal keeps its claim on the name
        assert rc == 0 and json.loads(out)["result"] == "updated", err
        async with httpx.AsyncClient(base_url=url, timeout=10) as http:
            stored = (await http.get(f"/registry/agents/{did}")).json()
        assert stored["claimed_at"] == first["expires_at"] - 3600  # the first registration's
        rc, _, err = await cli("agent", "register", "--key", str(other), "--card", str(card), *common)
        assert rc == 1 and "409 name_taken" in err
        rc, _, err = await cli(*register, "--ttl", "7201")
        assert rc == 1 and "400 lease_too_long" in err and "7200" in err

        rc, out, err = await cli("agent", "revoke", did, *common)  # loopback, no auth: the local admin
        assert rc == 0 and json.loads(out)["revoked"] is True, err
        rc, out, _ = await cli("agent", "revocations", *common)
        assert [r["did"] for r in json.loads(out)["revocations"]] == [did]
        rc, _, err = await cli(*register)
        assert rc == 1 and "403 revoked" in err
        rc, out, err = await cli("agent", "unrevoke", did, *common)
        assert rc == 0 and json.loads(out)["revoked"] is False, err
        rc, out, err = await cli(*register)
        assert rc == 0 and json.loads(out)["result"] == "created", err
