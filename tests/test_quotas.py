"""Per-principal quotas (gateway/core/quotas.py): the counts, then each face's 429 with
``Retry-After`` in its own shape, with nothing started by a refused request."""

from __future__ import annotations

import contextlib
import uuid

import httpx
import pytest

from agents.echo import EchoWorker
from gateway.core import quotas
from gateway.core.principal import SYSTEM, Principal
from gateway.core.quotas import QuotaExceeded, QuotaLimits, Quotas
from schemas import Message, TextPart
from tests.conftest import running_gateway, test_config, wait_until
from tests.fixtures.a2a_support import V10
from tests.fixtures.anp_support import LocalResolver, anp_gateway, make_caller, signed_post, signer
from tests.fixtures.mcp_support import ACCEPT, ModernRaw, RawSession

ALICE, BOB = Principal(id="alice", kind="api_key"), Principal(id="bob", kind="api_key")
ROOMY = dict(tasks_per_s=1000.0, task_burst=1000, concurrent_tasks=1000, mcp_sessions=1000, sse_streams=1000)


@pytest.fixture
def clock(monkeypatch):
    now = [1000.0]
    monkeypatch.setattr(quotas.time, "monotonic", lambda: now[0])
    return now


def test_concurrent_tasks_count_until_final_and_a_refused_task_gives_its_place_back():
    q = Quotas(QuotaLimits(**{**ROOMY, "concurrent_tasks": 2}))
    for task_id in ("t1", "t2"):
        with q.task(ALICE) as claim:
            claim.bind(task_id)
    with pytest.raises(QuotaExceeded) as refused, q.task(ALICE):
        pass
    assert refused.value.retry_after == 1
    with q.task(BOB) as claim:  # another caller's count is its own
        claim.bind("t3")
    q.task_final("t1")
    with pytest.raises(RuntimeError), q.task(ALICE):  # the task was not accepted: not counted
        raise RuntimeError("the backend refused it")
    with q.task(ALICE) as claim:
        claim.bind("t4")
    q.task_final("t1")  # again (a feed entry read twice): no effect
    with pytest.raises(QuotaExceeded), q.task(ALICE):
        pass


def test_task_rate_is_a_token_bucket(clock):
    q = Quotas(QuotaLimits(**{**ROOMY, "tasks_per_s": 0.5, "task_burst": 2}))
    for _ in range(2):
        with q.task(ALICE):
            pass
    with pytest.raises(QuotaExceeded) as refused, q.task(ALICE):
        pass
    assert refused.value.retry_after == 2 and "0.5 tasks a second" in str(refused.value)
    clock[0] += 2
    with q.task(ALICE):
        pass


def test_the_gateway_itself_and_a_gateway_without_quotas_are_never_counted():
    for q, who in ((Quotas(QuotaLimits(0.1, 0, 0, 0, 0)), SYSTEM), (Quotas(None), ALICE)):
        for _ in range(5):
            with q.task(who) as claim:
                claim.bind("t")
            q.stream(who)()
            with q.session(who, 60) as opened:
                opened("s")


def test_streams_are_counted_until_closed_once():
    q = Quotas(QuotaLimits(**{**ROOMY, "sse_streams": 2}))
    first, second = q.stream(ALICE), q.stream(ALICE)
    with pytest.raises(QuotaExceeded):
        q.stream(ALICE)
    first()
    first()  # closing twice frees one place, not two
    third = q.stream(ALICE)
    with pytest.raises(QuotaExceeded):
        q.stream(ALICE)
    second(), third()


def test_sessions_count_until_ended_or_unused_for_their_lifetime(clock):
    q = Quotas(QuotaLimits(**{**ROOMY, "mcp_sessions": 2}))
    for sid in ("s1", "s2"):
        with q.session(ALICE, 60) as opened:
            opened(sid)
    with pytest.raises(QuotaExceeded) as refused, q.session(ALICE, 60):
        pass
    assert refused.value.retry_after == 60  # when the first one lapses
    with pytest.raises(RuntimeError), q.session(BOB, 60):  # creating it failed: nothing counted
        raise RuntimeError
    q.end_session("s1")
    with q.session(ALICE, 60) as opened:
        opened("s3")
    clock[0] += 50
    q.session_used("s2", 60)  # s2 lives on, s3 lapses at 60
    clock[0] += 11
    with q.session(ALICE, 60) as opened:
        opened("s4")
    with pytest.raises(QuotaExceeded), q.session(ALICE, 60):
        pass


# ---- each face's 429 ------------------------------------------------------------------------------

# No task may start (none in the bucket: retry in 2 s), no stream open, one MCP session.
TIGHT = dict(quota_tasks_per_s=0.5, quota_task_burst=0, quota_sse_streams=0, quota_mcp_sessions=1)


def user(text: str) -> dict:
    return {"role": "user", "parts": [{"kind": "text", "text": text}]}


@contextlib.asynccontextmanager
async def tight_gateway():
    async with running_gateway(test_config(gossip=False, **TIGHT)) as (url, app):
        async with httpx.AsyncClient(base_url=url, timeout=10) as http:
            yield http, app.state.runtime


async def system_task(runtime) -> str:
    """A task the gateway itself starts (quotas never count it; the local caller sees it)."""
    task = await runtime.submit(Message(role="user", parts=[TextPart(text="x")]), agent="echo")
    return task.id


async def test_tasks_api_answers_429_rate_limited():
    async with tight_gateway() as (http, runtime):
        resp = await http.post("/tasks", json={"agent": "echo", "message": user("x")})
        assert resp.status_code == 429 and resp.headers["retry-after"] == "2"
        assert resp.json()["error"]["code"] == "rate_limited"
        events = await http.get(f"/tasks/{await system_task(runtime)}/events")
        assert events.status_code == 429 and events.headers["retry-after"] == "1"
        assert await runtime.backend.tasks.count() == 1  # only the gateway's own


async def test_a2a_answers_429_with_retry_info_on_both_bindings():
    async with tight_gateway() as (http, runtime):
        message = {"messageId": "m1", "role": "ROLE_USER", "parts": [{"text": "x"}]}
        for method in ("SendMessage", "SendStreamingMessage"):
            body = {"jsonrpc": "2.0", "id": 7, "method": method, "params": {"message": message}}
            resp = await http.post("/a2a", json=body, headers=V10)
            assert resp.status_code == 429 and int(resp.headers["retry-after"]) >= 1, method
            error = resp.json()["error"]
            assert resp.json()["id"] == 7 and error["code"] == -32000
            assert error["data"][0]["@type"] == "type.googleapis.com/google.rpc.RetryInfo"
        resp = await http.post("/a2a/rest/message:send", json={"message": message}, headers=V10)
        assert resp.status_code == 429 and resp.headers["retry-after"] == "2"
        error = resp.json()["error"]
        assert error["status"] == "RESOURCE_EXHAUSTED" and error["details"][0]["retryDelay"] == "2s"
        task_id = await system_task(runtime)
        resp = await http.get(f"/a2a/rest/tasks/{task_id}:subscribe", headers=V10)
        assert resp.status_code == 429 and resp.json()["error"]["details"][0]["retryDelay"] == "1s"
        assert await runtime.backend.tasks.count() == 1


async def test_acp_answers_429_in_its_error_shape():
    async with tight_gateway() as (http, runtime):
        session = {"id": str(uuid.uuid4()), "history": ["http://elsewhere.invalid/resources/1"], "state": None}
        for mode, retry in (("sync", 2), ("stream", 1)):
            run = {"agent_name": "echo", "input": [{"parts": [{"content": "x"}]}], "mode": mode, "session": session}
            resp = await http.post("/acp/runs", json=run)
            assert resp.status_code == 429 and resp.headers["retry-after"] == str(retry), mode
            assert resp.json() == {
                "code": "server_error",
                "message": resp.json()["message"],
                "data": {"retry_after": retry},
            }
        assert await runtime.backend.tasks.count() == 0
        assert (await http.get(f"/acp/sessions/{session['id']}")).status_code == 404  # nothing carried


async def test_mcp_answers_429_with_its_json_rpc_error():
    async with tight_gateway() as (http, runtime):
        url = str(http.base_url).rstrip("/") + "/mcp"
        first = RawSession(http, url)
        await first.initialize()
        second = await http.post(
            url,
            headers={"Accept": ACCEPT, "Content-Type": "application/json"},
            json={
                "jsonrpc": "2.0",
                "id": 0,
                "method": "initialize",
                "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "x"}},
            },
        )
        assert second.status_code == 429 and "mcp-session-id" not in second.headers
        assert second.json()["error"]["code"] == -31029 and int(second.headers["retry-after"]) > 1000
        call = {
            "jsonrpc": "2.0",
            "id": 5,
            "method": "tools/call",
            "params": {"name": "echo", "arguments": {"message": "x"}},
        }
        resp = await first.post(call)
        assert resp.status_code == 429 and resp.headers["retry-after"] == "2"
        assert resp.json()["id"] == 5 and resp.json()["error"]["data"] == {"retryAfter": 2}
        stream = await http.get(url, headers=first.headers(Accept="text/event-stream"))
        assert stream.status_code == 429 and stream.json()["error"]["code"] == -31029
        await http.delete(url, headers=first.headers())  # ends the session: its place is free
        await RawSession(http, url).initialize()
        assert await runtime.backend.tasks.count() == 0


async def test_mcp_2026_answers_429_with_the_same_code_outside_the_range_that_revision_reserves():
    """A stateless request a task quota refuses, and a listen stream past the quota of open
    streams: 429, Retry-After, -31029 as in the handshake era (2026-07-28 keeps -32020..-32099)."""
    async with tight_gateway() as (http, runtime):
        modern = ModernRaw(http, str(http.base_url).rstrip("/") + "/mcp")
        resp, reply = await modern.call("tools/call", {"name": "echo", "arguments": {"message": "x"}})
        assert resp.status_code == 429 and resp.headers["retry-after"] == "2"
        assert reply["error"]["code"] == -31029 and reply["error"]["data"] == {"retryAfter": 2}
        resp, reply = await modern.call("subscriptions/listen", {"notifications": {"toolsListChanged": True}})
        assert resp.status_code == 429 and reply["error"]["code"] == -31029 and "retry-after" in resp.headers
        assert await runtime.backend.tasks.count() == 0


async def test_anp_answers_429_with_its_json_rpc_error(tmp_path):
    alice = make_caller(tmp_path, "alice")
    config = test_config(gossip=False, **TIGHT)
    async with anp_gateway(config, workers=[EchoWorker()], resolve=LocalResolver(alice)) as (url, app):
        async with httpx.AsyncClient(timeout=10) as http:
            body = {"jsonrpc": "2.0", "id": 3, "method": "send_message", "params": {"message": "x"}}
            resp = await signed_post(http, signer(alice), f"{url}/anp/agents/echo/rpc", body)
            assert resp.status_code == 429 and resp.headers["retry-after"] == "2"
            assert resp.json()["error"] == {
                "code": -32029,
                "message": resp.json()["error"]["message"],
                "data": {"retryAfter": 2},
            }
            batch = await signed_post(http, signer(alice), f"{url}/anp/agents/echo/rpc", [body])
            assert batch.status_code == 200 and batch.headers["retry-after"] == "2"
            assert batch.json()[0]["error"]["code"] == -32029
        assert await app.state.runtime.backend.tasks.count() == 0


async def test_a_task_that_ends_gives_its_place_back_and_streams_theirs():
    config = test_config(gossip=False, quota_concurrent_tasks=1, quota_sse_streams=1)
    async with running_gateway(config) as (url, _), httpx.AsyncClient(base_url=url, timeout=10) as http:
        slow = {"agent": "echo", "message": {**user("x"), "metadata": {"delay_ms": 10_000}}}
        task = (await http.post("/tasks", json=slow)).json()
        assert (await http.post("/tasks", json=slow)).status_code == 429
        async with http.stream("GET", f"/tasks/{task['id']}/events") as events:
            assert events.status_code == 200
            assert (await http.get(f"/tasks/{task['id']}/events")).status_code == 429
            await http.post(f"/tasks/{task['id']}:cancel")
            async for _ in events.aiter_bytes():  # the stream ends with the task
                pass

        async def accepted() -> bool:  # once the finished feed has been read
            resp = await http.post("/tasks?wait=true", json={"agent": "echo", "message": user("y")})
            return resp.status_code == 200

        await wait_until(accepted)

        async def streams() -> bool:  # once the first stream's response has ended on the server
            return (await http.get(f"/tasks/{task['id']}/events")).status_code == 200

        await wait_until(streams)
