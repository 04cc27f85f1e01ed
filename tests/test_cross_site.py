"""A browser's cross-site request forgery (security review P5) is refused on every route of a
loopback gateway: a page on another origin can make a browser POST ``text/plain``, a form or
multipart without a CORS preflight. Non-browser clients (no ``Origin``; the acp-sdk client sends
no ``Content-Type`` either) and same-origin requests keep working."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.conftest import running_gateway

EVIL = "http://evil.example"
TASK = {"agent": "echo", "message": {"role": "user", "parts": [{"kind": "text", "text": "hi"}]}}
A2A = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "SendMessage",
    "params": {"message": {"messageId": "m", "role": "ROLE_USER", "parts": [{"text": "hi"}]}},
}
# (path, JSON body) of every state-changing face
FACES = [
    ("/tasks?wait=true", TASK),
    ("/route", {"text": "echo"}),
    ("/acp/runs", {"agent_name": "echo", "input": [{"parts": [{"content": "hi"}]}]}),
    ("/registry/agents", {"did": "did:key:z6Mkx"}),
    ("/a2a", A2A),
    ("/a2a/agents/echo", A2A),
    ("/a2a/rest/message:send", A2A["params"]),
    ("/mcp", {"jsonrpc": "2.0", "id": 1, "method": "ping"}),
    ("/anp/rpc", {"jsonrpc": "2.0", "id": 1, "method": "list_agents"}),
    ("/bus/receive", {"agent": "echo", "consumer": "x", "block_ms": 0, "count": 1}),
]


@pytest.fixture
async def gw():
    async with running_gateway() as (url, app):
        async with httpx.AsyncClient(base_url=url, timeout=20) as http:
            yield http, app


async def stored_tasks(app) -> int:
    tasks, _ = await app.state.runtime.list_tasks(limit=500)
    return len(tasks)


@pytest.mark.parametrize("ctype", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; b=x", None])
@pytest.mark.parametrize("path, body", FACES, ids=[p for p, _ in FACES])
async def test_a_cross_site_simple_request_is_refused_and_changes_nothing(gw, path, body, ctype):
    http, app = gw
    headers = {"Origin": EVIL, **({"Content-Type": ctype} if ctype else {})}
    resp = await http.post(path, content=json.dumps(body), headers=headers)
    assert resp.status_code == 403 and resp.json()["error"]["code"] == "cross_site_request", resp.text
    assert await stored_tasks(app) == 0


async def test_an_opaque_origin_is_foreign_too(gw):
    http, app = gw
    resp = await http.post("/tasks", content=json.dumps(TASK), headers={"Origin": "null", "Content-Type": "text/plain"})
    assert resp.status_code == 403 and await stored_tasks(app) == 0


async def test_same_origin_and_non_browser_clients_pass(gw):
    http, _ = gw
    same = {"Origin": str(http.base_url).rstrip("/"), "Content-Type": "text/plain"}
    assert (await http.post("/tasks?wait=true", content=json.dumps(TASK), headers=same)).status_code == 200
    assert (await http.post("/tasks?wait=true", content=json.dumps(TASK))).status_code == 200  # no Content-Type
    acp = await http.post("/acp/runs", content=json.dumps(FACES[2][1]))  # as the acp-sdk client sends it
    assert acp.status_code == 200


async def test_reads_from_a_foreign_origin_are_not_blocked_by_the_guard(gw):
    http, _ = gw  # a browser cannot read the answer without CORS, which the gateway does not grant
    resp = await http.get("/healthz", headers={"Origin": EVIL})
    assert resp.status_code == 200 and "access-control-allow-origin" not in resp.headers
