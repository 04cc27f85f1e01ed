"""Task ownership on every face, with two principals, on both backends (security review P1-P3).

Alice (an API key) starts a task holding a secret that waits for input; Bob (another API key)
tries to read, list, follow, cancel and continue it, join its context, and read, overwrite and
delete its push configs, over ``/tasks``, A2A (JSON-RPC 1.0 and 0.3, HTTP+JSON), ACP and MCP.
Every attempt gets the face's own not-found answer (existence is never revealed) and changes
nothing; Alice and an admin still see the task afterwards. ANP's DID callers are covered by
``test_anp_server`` and by the cross-face check below (an API key cannot see a DID's task).
"""

from __future__ import annotations

import json
import uuid

import httpx
import pytest
import pytest_asyncio
import yaml
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client

from gateway.app import create_app
from gateway.core import audit
from gateway.core.auth import api_key_digest
from protocols import a2a, acp, mcp
from tests.conftest import serve_app, test_config

pytestmark = [
    pytest.mark.asyncio(loop_scope="module"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::mcp.shared.exceptions.MCPDeprecationWarning"),
]

KEYS = {"alice": "k-alice-0123456789abcdef", "bob": "k-bob-0123456789abcdef", "ops": "k-ops-0123456789abcdef"}
SECRET = "alice-secret-7f3a"
V10 = {"A2A-Version": "1.0"}


@pytest_asyncio.fixture(scope="module", loop_scope="module", params=["embedded", "redis"])
async def url(request, tmp_path_factory):
    keys = tmp_path_factory.mktemp("keys") / "keys.yaml"
    rows = [
        {"principal": p, "key_sha256": api_key_digest(k), "groups": ["admin"] if p == "ops" else []}
        for p, k in KEYS.items()
    ]
    keys.write_text(yaml.safe_dump(rows))
    redis_url = None
    if request.param == "redis":
        server = request.getfixturevalue("redis_server")
        server.flush()
        redis_url = server.url
    app = create_app(test_config(api_keys=str(keys), redis_url=redis_url))
    mcp.mount(app, mcp.MCPOptions(call_timeout_s=10))
    a2a.mount(app)
    acp.mount(app)
    async with serve_app(app) as base:
        yield base


def client(url: str, who: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=url, timeout=20, headers={"Authorization": f"Bearer {KEYS[who]}"})


@pytest_asyncio.fixture(loop_scope="module")
async def alice(url):
    async with client(url, "alice") as c:
        yield c


@pytest_asyncio.fixture(loop_scope="module")
async def bob(url):
    async with client(url, "bob") as c:
        yield c


async def asked(http: httpx.AsyncClient, context_id: str | None = None) -> dict:
    """A task of the caller's holding SECRET that waits for input (the echo agent asks)."""
    message = {"role": "user", "parts": [{"kind": "text", "text": SECRET}], "metadata": {"ask": "More?"}}
    body = {"agent": "echo", "message": message, **({"context_id": context_id} if context_id else {})}
    resp = await http.post("/tasks?wait=true", json=body)
    assert resp.status_code == 200 and resp.json()["status"]["state"] == "input-required", resp.text
    return resp.json()


async def rpc(http: httpx.AsyncClient, method: str, params: dict, path: str = "/a2a", headers=V10) -> dict:
    body = {"jsonrpc": "2.0", "id": 1, "method": method, "params": params}
    return (await http.post(path, json=body, headers=headers)).json()


async def still_alices(alice: httpx.AsyncClient, task_id: str) -> None:
    resp = await alice.get(f"/tasks/{task_id}")
    assert resp.status_code == 200 and resp.json()["status"]["state"] == "input-required"
    assert resp.json()["owner"] == "alice"


async def test_tasks_api(url, alice, bob):
    task = await asked(alice)
    tid = task["id"]
    for method, path, body in [
        ("GET", f"/tasks/{tid}", None),
        ("GET", f"/tasks/{tid}/events", None),
        ("POST", f"/tasks/{tid}:cancel", None),
        ("POST", "/tasks", {"task_id": tid, "message": {"role": "user", "parts": [{"kind": "text", "text": "x"}]}}),
    ]:
        resp = await bob.request(method, path, json=body)
        assert resp.status_code == 404 and resp.json()["error"]["code"] == "not_found", (path, resp.text)
        assert SECRET not in resp.text
    listed = (await bob.get("/tasks", params={"limit": 500})).json()["tasks"]
    assert tid not in {t["id"] for t in listed} and SECRET not in str(listed)
    # Bob "joins" Alice's context: he gets a task in his own context of that name, nothing of hers.
    mine = await asked(bob, context_id=task["context_id"])
    ctx = (await bob.get("/tasks", params={"context_id": task["context_id"]})).json()["tasks"]
    assert [t["id"] for t in ctx] == [mine["id"]]
    alices_ctx = (await alice.get("/tasks", params={"context_id": task["context_id"]})).json()["tasks"]
    assert [t["id"] for t in alices_ctx] == [tid]
    await still_alices(alice, tid)
    async with client(url, "ops") as ops:  # an admin sees and lists everyone's
        assert (await ops.get(f"/tasks/{tid}")).status_code == 200
        everyone = (await ops.get("/tasks", params={"context_id": task["context_id"]})).json()["tasks"]
        assert {t["id"] for t in everyone} == {tid, mine["id"]}


async def test_a2a_jsonrpc_rest_and_v03(alice, bob):
    tid = (await asked(alice))["id"]
    not_found = -32001
    for method, params in [
        ("GetTask", {"id": tid}),
        ("CancelTask", {"id": tid}),
        (
            "SendMessage",
            {"message": {"messageId": uuid.uuid4().hex, "role": "ROLE_USER", "taskId": tid, "parts": [{"text": "x"}]}},
        ),
        ("GetTaskPushNotificationConfig", {"taskId": tid, "id": "c1"}),
        ("ListTaskPushNotificationConfigs", {"taskId": tid}),
    ]:
        out = await rpc(bob, method, params)
        assert out["error"]["code"] == not_found, (method, out)
    for method, params in [("tasks/get", {"id": tid}), ("tasks/cancel", {"id": tid})]:  # A2A 0.3
        out = await rpc(bob, method, params, headers={})
        assert out["error"]["code"] == not_found, (method, out)
    sub = await bob.post(
        "/a2a", json={"jsonrpc": "2.0", "id": 1, "method": "SubscribeToTask", "params": {"id": tid}}, headers=V10
    )
    assert str(not_found) in sub.text and SECRET not in sub.text
    listed = (await rpc(bob, "ListTasks", {}))["result"]["tasks"]
    assert tid not in {t["id"] for t in listed}
    for method, path in [
        ("GET", f"/a2a/rest/tasks/{tid}"),
        ("POST", f"/a2a/rest/tasks/{tid}:cancel"),
        ("GET", f"/a2a/rest/v1/tasks/{tid}"),
    ]:
        resp = await bob.request(method, path, headers=V10 if "/v1/" not in path else {})
        assert resp.status_code == 404 and SECRET not in resp.text, (path, resp.text)
    await still_alices(alice, tid)


async def test_a2a_push_configs_are_the_owners_and_their_credentials_write_only(alice, bob):
    tid = (await asked(alice))["id"]
    config = {
        "taskId": tid,
        "id": "c1",
        "url": "https://hooks.example/a",
        "token": "t",
        "authentication": {"scheme": "Bearer", "credentials": "push-cred-1"},
    }
    created = (await rpc(alice, "CreateTaskPushNotificationConfig", config))["result"]
    assert created["authentication"] == {"scheme": "Bearer"}  # stored, never returned
    got = (await rpc(alice, "GetTaskPushNotificationConfig", {"taskId": tid, "id": "c1"}))["result"]
    listed = (await rpc(alice, "ListTaskPushNotificationConfigs", {"taskId": tid}))["result"]
    legacy = (await rpc(alice, "tasks/pushNotificationConfig/list", {"id": tid}, headers={}))["result"]
    assert "push-cred-1" not in str([got, listed, legacy])
    hijack = {**config, "url": "https://bob.example/steal"}
    assert (await rpc(bob, "CreateTaskPushNotificationConfig", hijack))["error"]["code"] == -32001
    assert (await rpc(bob, "DeleteTaskPushNotificationConfig", {"taskId": tid, "id": "c1"}))["error"]["code"] == -32001
    rest = await bob.delete(f"/a2a/rest/tasks/{tid}/pushNotificationConfigs/c1", headers=V10)
    assert rest.status_code == 404
    kept = (await rpc(alice, "GetTaskPushNotificationConfig", {"taskId": tid, "id": "c1"}))["result"]
    assert kept["url"] == "https://hooks.example/a"
    await rpc(alice, "CancelTask", {"id": tid})


async def test_acp_runs_and_sessions(alice, bob):
    session = str(uuid.uuid4())
    body = {
        "agent_name": "echo",
        "session_id": session,
        "mode": "sync",
        "input": [{"role": "user", "parts": [{"content": SECRET, "content_type": "text/plain"}]}],
    }
    run = (await alice.post("/acp/runs", json=body)).json()
    rid = run["run_id"]
    for method, path, payload in [
        ("GET", f"/acp/runs/{rid}", None),
        ("GET", f"/acp/runs/{rid}/events", None),
        ("POST", f"/acp/runs/{rid}/cancel", None),
        (
            "POST",
            f"/acp/runs/{rid}",
            {
                "run_id": rid,
                "mode": "sync",
                "await_resume": {
                    "type": "message",
                    "message": {"role": "user", "parts": [{"content": "x", "content_type": "text/plain"}]},
                },
            },
        ),
        ("GET", f"/acp/runs/{rid}/messages/0", None),
        ("GET", f"/acp/sessions/{session}", None),
    ]:
        resp = await bob.request(method, path, json=payload)
        assert resp.status_code == 404 and SECRET not in resp.text, (path, resp.text)
    assert (await alice.get(f"/acp/sessions/{session}")).status_code == 200
    assert (await alice.get(f"/acp/runs/{rid}")).json()["output"]


async def test_mcp_sessions_and_send_task(url, alice, bob):
    tid = (await asked(alice))["id"]
    async with (
        streamable_http_client(f"{url}/mcp", http_client=bob) as (read, write, *_),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        result = await session.call_tool("send_task", {"agent_or_query": "echo", "task_id": tid, "message": "x"})
        assert result.is_error and "not found" in result.content[0].text and SECRET not in str(result)
    # Alice's session id is useless to Bob (a session belongs to the caller that opened it).
    init = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
    }
    accept = {"Accept": "application/json, text/event-stream", "MCP-Protocol-Version": "2025-11-25"}
    sid = (await alice.post("/mcp", json=init, headers=accept)).headers["mcp-session-id"]
    call = {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}
    assert (await bob.post("/mcp", json=call, headers={**accept, "Mcp-Session-Id": sid})).status_code == 404
    assert (await alice.post("/mcp", json=call, headers={**accept, "Mcp-Session-Id": sid})).status_code == 200
    await still_alices(alice, tid)


async def test_the_audit_log_records_who_did_what_and_never_a_secret(alice, bob, tmp_path):
    handler = audit.to_file(str(tmp_path / "audit.jsonl"))
    try:
        tid = (await asked(alice))["id"]
        assert (await bob.post(f"/tasks/{tid}:cancel")).status_code == 404
        assert (await alice.post(f"/tasks/{tid}:cancel")).status_code == 200
    finally:
        audit.log.removeHandler(handler)
        audit.log.propagate = True
        handler.close()
    lines = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    mine = [(r["principal"], r["action"], r["target"], r["outcome"]) for r in lines if r.get("task_id") == tid]
    assert mine == [
        ("alice", "call", "echo", "ok"),
        ("bob", "cancel", "echo", "not_found"),
        ("alice", "cancel", "echo", "ok"),
    ]
    text = (tmp_path / "audit.jsonl").read_text()
    assert SECRET not in text and not any(k in text for k in KEYS.values())
