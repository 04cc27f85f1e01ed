"""MCP tasks through the gateway (protocols/mcp/tasks_ext.py): a long-running agent behind the
gateway as a first-class MCP task, in both eras, for two principals.

The 2026-07-28 extension (``io.modelcontextprotocol/tasks``) and the 2025-11-25 tasks utility
are driven with raw httpx: the official ``mcp`` 2.3 client has no task surface (its ``auto``
mode, declaring nothing, gets the plain synchronous result, checked too). The agent is an
in-process worker the test holds (``HeldWorker``): its task runs until the test releases it, or
asks a question first. A federated upstream's tool declaring ``execution.taskSupport`` runs as
a task the gateway holds (the conformance kit's ``tasks-*`` scenarios cover the rest of that
path, tests/test_mcp_conformance.py).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import httpx
import httpx2
import pytest
import yaml
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from agents.worker import Worker
from gateway.app import create_app
from gateway.core import sse
from gateway.core.auth import api_key_digest
from protocols.mcp import MCPOptions, mount
from protocols.mcp.tasks_ext import EXTENSION, RELATED
from schemas import Artifact, DataPart, Message, Task, TaskState, TextPart
from tests.conftest import serve_app, test_config, wait_until
from tests.fixtures.mcp_support import ModernRaw, RawSession, UpstreamProcess, listening, mcp_gateway, modern_meta

pytestmark = pytest.mark.filterwarnings(
    "ignore::DeprecationWarning", "ignore::mcp.shared.exceptions.MCPDeprecationWarning"
)

KEYS = {"alice": "k-alice-0123456789abcdef", "bob": "k-bob-0123456789abcdef"}
TASKS = {"io.modelcontextprotocol/clientCapabilities": {"extensions": {EXTENSION: {}}}}


class HeldWorker(Worker):
    """Holds each task until ``release()`` (data ``hold``), or asks ``data.ask`` first and then
    answers with the follow-up's text; else answers with the message's text at once."""

    agent = "held"

    def __init__(self) -> None:
        self.gate = asyncio.Event()

    def release(self) -> None:
        self.gate.set()

    async def handle(self, task: Task):
        user = [m for m in task.history if m.role == "user"]
        data = next((p.data for p in user[0].parts if isinstance(p, DataPart)), {})
        if data.get("ask") and len(user) == 1:
            question = Message(role="agent", parts=[TextPart(text=data["ask"])])
            yield task.status_event(TaskState.INPUT_REQUIRED, question)
            return
        if data.get("hold"):
            yield task.status_event(TaskState.WORKING, Message(role="agent", parts=[TextPart(text="holding")]))
            await self.gate.wait()
        yield task.artifact_event(Artifact(name="answer", parts=[TextPart(text=user[-1].text())]), last_chunk=True)


@pytest.fixture
async def env(tmp_path):
    """A gateway with the held agent, API keys for alice and bob, and pages of 3 (tools/list:
    the meta tools and held)."""
    keys = tmp_path / "keys.yaml"
    keys.write_text(yaml.safe_dump([{"principal": p, "key_sha256": api_key_digest(k)} for p, k in KEYS.items()]))
    worker = HeldWorker()
    app = create_app(test_config(api_keys=str(keys)), workers=[worker])
    server = mount(app, MCPOptions(call_timeout_s=10, page_size=3))
    async with serve_app(app) as base:
        yield base + "/mcp", worker, server


@pytest.fixture
async def http(env) -> AsyncIterator[dict[str, httpx.AsyncClient]]:
    clients = {who: httpx.AsyncClient(timeout=15, headers={"Authorization": f"Bearer {k}"}) for who, k in KEYS.items()}
    yield clients
    for c in clients.values():
        await c.aclose()


def modern(env, http, who: str = "alice") -> ModernRaw:
    return ModernRaw(http[who], env[0])


async def ask(raw: ModernRaw, method: str, params: dict, *, tasks: bool = True) -> tuple[int, dict]:
    """A 2026-07-28 request declaring the extension (or not); (HTTP status, JSON-RPC answer)."""
    resp, reply = await raw.call(method, params, **(TASKS if tasks else {}))
    return resp.status_code, reply


async def poll(raw: ModernRaw, task_id: str, until: set[str]) -> dict:
    """tasks/get until the status is one of ``until`` (bounded)."""
    seen: dict = {}

    async def reached() -> bool:
        _, reply = await ask(raw, "tasks/get", {"taskId": task_id})
        seen.update(reply["result"])
        return seen["status"] in until

    await wait_until(reached, timeout=15, interval=0.05)
    return seen


# ---- 2026-07-28: the extension ----------------------------------------------------------------------


async def test_discover_advertises_the_extension_and_a_session_the_legacy_capability(env, http):
    raw = modern(env, http)
    _, reply = await ask(raw, "server/discover", {})
    caps = reply["result"]["capabilities"]
    assert caps["extensions"] == {EXTENSION: {}} and "tasks" not in caps
    session = RawSession(http["alice"], env[0])
    init = await session.initialize()
    assert init["capabilities"]["tasks"] == {"list": {}, "cancel": {}, "requests": {"tools": {"call": {}}}}
    tools = {t["name"]: t for t in (await session.call("tools/list"))["result"]["tools"]}
    assert tools["held"]["execution"] == {"taskSupport": "optional"} and "execution" not in tools["find_agents"]


async def test_an_agent_call_is_its_canonical_task_polled_to_completion(env, http):
    url, worker, server = env
    raw = modern(env, http)
    status, reply = await ask(raw, "tools/call", {"name": "held", "arguments": {"message": "hi", "data": {"hold": 1}}})
    created = reply["result"]
    assert status == 200 and created["resultType"] == "task" and created["status"] == "working"
    assert {"result", "error", "inputRequests", "task", "ttl", "pollInterval"}.isdisjoint(created)
    assert created["ttlMs"] == 3_600_000 and created["pollIntervalMs"] == 500
    task_id = created["taskId"]
    canonical = await server.runtime.get(task_id)  # one task: the canonical one, owned by alice
    assert canonical.owner == "alice" and canonical.route.agent == "held"
    _, got = await ask(raw, "tasks/get", {"taskId": task_id})
    assert got["result"]["status"] == "working" and got["result"]["resultType"] == "complete"
    assert "result" not in got["result"]
    worker.release()
    done = await poll(raw, task_id, {"completed"})
    assert done["result"] == {"content": [{"type": "text", "text": "hi"}]}
    assert done["createdAt"] <= done["lastUpdatedAt"]


async def test_input_required_is_an_elicitation_answered_with_tasks_update(env, http):
    raw = modern(env, http)
    args = {"message": "paint it", "data": {"ask": "Which colour?"}}
    _, reply = await ask(raw, "tools/call", {"name": "held", "arguments": args})
    task_id = reply["result"]["taskId"]
    waiting = await poll(raw, task_id, {"input_required"})
    [(key, request)] = waiting["inputRequests"].items()
    assert request["method"] == "elicitation/create" and request["params"]["message"] == "Which colour?"
    assert waiting["statusMessage"] == "Which colour?"
    status, ack = await ask(raw, "tasks/update", {"taskId": task_id, "inputResponses": {"other": {}}})
    assert status == 200 and ack["result"] == {"resultType": "complete", "_meta": ack["result"]["_meta"]}
    _, ack = await ask(
        raw,
        "tasks/update",
        {"taskId": task_id, "inputResponses": {key: {"action": "accept", "content": {"message": "blue"}}}},
    )
    assert "error" not in ack
    done = await poll(raw, task_id, {"completed"})
    assert done["result"]["content"] == [{"type": "text", "text": "blue"}]


async def test_cancel_acks_and_the_canonical_task_is_canceled(env, http):
    _, _, server = env
    raw = modern(env, http)
    _, reply = await ask(raw, "tools/call", {"name": "held", "arguments": {"message": "x", "data": {"hold": 1}}})
    task_id = reply["result"]["taskId"]
    _, ack = await ask(raw, "tasks/cancel", {"taskId": task_id})
    assert set(ack["result"]) == {"resultType", "_meta"}
    assert (await poll(raw, task_id, {"cancelled"}))["status"] == "cancelled"
    assert (await server.runtime.get(task_id)).state is TaskState.CANCELED
    _, again = await ask(raw, "tasks/cancel", {"taskId": task_id})  # terminal: still an ack
    assert "error" not in again


async def test_another_principal_is_told_the_task_does_not_exist(env, http):
    raw, intruder = modern(env, http), modern(env, http, "bob")
    _, reply = await ask(raw, "tools/call", {"name": "held", "arguments": {"message": "x", "data": {"hold": 1}}})
    task_id = reply["result"]["taskId"]
    _, unknown = await ask(intruder, "tasks/get", {"taskId": "no-such-task"})
    for method, params in (
        ("tasks/get", {"taskId": task_id}),
        ("tasks/cancel", {"taskId": task_id}),
        ("tasks/update", {"taskId": task_id, "inputResponses": {}}),
    ):
        status, refused = await ask(intruder, method, params)
        assert status == 400 and refused["error"]["code"] == unknown["error"]["code"] == -32602, (method, refused)
    async with listening(intruder, {"taskIds": [task_id]}, **TASKS) as (_, ack, _):
        assert "taskIds" not in ack["params"]["notifications"]
    _, mine = await ask(raw, "tasks/get", {"taskId": task_id})
    assert mine["result"]["status"] == "working"  # bob's cancel did nothing
    await ask(raw, "tasks/cancel", {"taskId": task_id})


async def test_bad_requests_get_the_extensions_errors(env, http):
    raw = modern(env, http)
    status, reply = await ask(raw, "tasks/get", {"taskId": "x"}, tasks=False)
    assert status == 400 and reply["error"]["code"] == -32021
    assert reply["error"]["data"] == {"requiredCapabilities": {"extensions": {EXTENSION: {}}}}
    for method in ("tasks/result", "tasks/list"):  # the 2025-11-25 methods do not exist here
        status, reply = await ask(raw, method, {"taskId": "x"} if method == "tasks/result" else {})
        assert status == 404 and reply["error"]["code"] == -32601
    status, reply = await ask(raw, "tasks/get", {"taskId": "unknown"})
    assert status == 400 and reply["error"]["code"] == -32602
    body = raw.body("tasks/get", {"taskId": "a"}, modern_meta(**TASKS))
    resp = await raw.post(body, {"Mcp-Name": "b"})
    assert resp.status_code == 400 and resp.json()["error"]["code"] == -32020
    status, reply = await ask(raw, "tasks/update", {"taskId": "unknown", "inputResponses": []})
    assert status == 400 and reply["error"]["code"] == -32602
    _, reply = await ask(raw, "tools/call", {"name": "held", "arguments": {"message": "now"}}, tasks=False)
    assert reply["result"]["content"] == [{"type": "text", "text": "now"}]  # no extension: synchronous
    async with (
        httpx2.AsyncClient(timeout=15, headers={"Authorization": f"Bearer {KEYS['alice']}"}) as sdk_http,
        Client(streamable_http_client(env[0], http_client=sdk_http), mode="auto") as client,
    ):
        result = await client.call_tool("held", {"message": "sdk"})  # the official client: plain result
        assert result.content[0].text == "sdk"


async def test_listen_streams_task_notifications_of_the_callers_tasks(env, http):
    _, worker, _ = env
    raw = modern(env, http)
    _, reply = await ask(raw, "tools/call", {"name": "held", "arguments": {"message": "later", "data": {"hold": 1}}})
    task_id = reply["result"]["taskId"]
    body = raw.body("subscriptions/listen", {"notifications": {"taskIds": [task_id]}})
    resp = await raw.post(body)
    assert resp.status_code == 400 and resp.json()["error"]["code"] == -32021  # the extension is not declared
    async with listening(raw, {"taskIds": [task_id, "not-mine"]}, **TASKS) as (sub, ack, events):
        assert ack["params"]["notifications"] == {"taskIds": [task_id]}
        first = (await asyncio.wait_for(anext(events), 10)).json()
        assert first["method"] == "notifications/tasks" and first["params"]["status"] == "working"
        assert first["params"]["_meta"]["io.modelcontextprotocol/subscriptionId"] == sub
        worker.release()
        last = (await asyncio.wait_for(anext(events), 10)).json()
        assert last["params"]["status"] == "completed"
        assert last["params"]["result"]["content"] == [{"type": "text", "text": "later"}]


# ---- 2025-11-25: the tasks utility ---------------------------------------------------------------


async def test_legacy_task_listed_result_blocks_and_status_is_notified(env, http):
    url, worker, _ = env
    session = RawSession(http["alice"], url)
    await session.initialize()
    ids = []
    for n in range(4):
        args = {"message": f"m{n}", "data": {"hold": 1}}
        reply = await session.call("tools/call", {"name": "held", "arguments": args, "task": {"ttl": 60_000}})
        task = reply["result"]["task"]
        assert task["status"] == "working" and task["ttl"] == 60_000 and task["pollInterval"] == 500
        ids.append(task["taskId"])
    page = (await session.call("tasks/list"))["result"]
    assert [t["taskId"] for t in page["tasks"]] == ids[::-1][:3]  # newest first, pages of 3
    rest = (await session.call("tasks/list", {"cursor": page["nextCursor"]}))["result"]
    assert [t["taskId"] for t in rest["tasks"]] == ids[:1] and "nextCursor" not in rest
    bob = RawSession(http["bob"], url)
    await bob.initialize()
    assert (await bob.call("tasks/list"))["result"] == {"tasks": []}
    assert (await bob.call("tasks/get", {"taskId": ids[0]}))["error"]["code"] == -32602

    async with http["alice"].stream("GET", url, headers=session.headers(Accept="text/event-stream")) as stream:
        events = sse.read_events(stream.aiter_bytes())
        await asyncio.wait_for(anext(events), 10)  # priming event
        blocked = asyncio.create_task(session.call("tasks/result", {"taskId": ids[0]}))
        assert (await session.call("tasks/get", {"taskId": ids[0]}))["result"]["status"] == "working"
        assert not blocked.done()  # tasks/result waits for the task to end
        worker.release()
        result = (await asyncio.wait_for(blocked, 15))["result"]
        assert result["content"] == [{"type": "text", "text": "m0"}]
        assert result["_meta"][RELATED] == {"taskId": ids[0]}

        async def completed() -> bool:
            event = await asyncio.wait_for(anext(events), 10)
            note = json.loads(event.data) if event.data.strip() else {}
            return note.get("method") == "notifications/tasks/status" and note["params"]["status"] == "completed"

        await wait_until(completed, timeout=15, interval=0)
    got = (await session.call("tasks/get", {"taskId": ids[1]}))["result"]
    assert got["status"] == "completed" and "ttl" in got and "ttlMs" not in got


async def result_answering(session: RawSession, task_id: str, answer: dict) -> tuple[list[dict], dict]:
    """2025-11-25 ``tasks/result`` read as a stream, each request the gateway asks on it answered
    with ``answer``: (the requests asked, the result)."""
    body = {"jsonrpc": "2.0", "id": "r1", "method": "tasks/result", "params": {"taskId": task_id}}
    asked = []
    async with session.http.stream("POST", session.url, headers=session.headers(), content=json.dumps(body)) as resp:
        async with asyncio.timeout(15):
            async for event in sse.read_events(resp.aiter_bytes()):
                msg = event.json() if event.data.strip() else {}
                if "method" in msg and "id" in msg:
                    asked.append(msg)
                    await session.post({"jsonrpc": "2.0", "id": msg["id"], "result": answer})
                elif msg.get("id") == "r1":
                    return asked, msg["result"]
    raise AssertionError("tasks/result ended without its answer")


async def test_legacy_input_is_asked_on_the_tasks_result_stream(env, http):
    session = RawSession(http["alice"], env[0])
    await session.initialize({"elicitation": {}})
    args = {"message": "q", "data": {"ask": "Your name?"}}
    reply = await session.call("tools/call", {"name": "held", "arguments": args, "task": {}})
    task_id = reply["result"]["task"]["taskId"]
    [asked], result = await result_answering(session, task_id, {"action": "accept", "content": {"message": "Ada"}})
    assert asked["method"] == "elicitation/create" and asked["params"]["message"] == "Your name?"
    assert asked["params"]["_meta"][RELATED] == {"taskId": task_id}
    assert result["content"] == [{"type": "text", "text": "Ada"}]


async def test_legacy_cancel_and_bad_requests(env, http):
    url, _, _ = env
    session = RawSession(http["alice"], url)
    await session.initialize()
    reply = await session.call(
        "tools/call", {"name": "held", "arguments": {"message": "x", "data": {"hold": 1}}, "task": {}}
    )
    task_id = reply["result"]["task"]["taskId"]
    cancelled = (await session.call("tasks/cancel", {"taskId": task_id}))["result"]
    assert cancelled["taskId"] == task_id and cancelled["status"] == "cancelled"
    assert (await session.call("tasks/cancel", {"taskId": task_id}))["error"]["code"] == -32602  # terminal
    for bad in ({"ttl": -1}, {"ttl": "soon"}, {"ttl": 1.5}, "yes"):
        reply = await session.call("tools/call", {"name": "held", "arguments": {"message": "x"}, "task": bad})
        assert reply["error"]["code"] == -32602, bad
    reply = await session.call("tools/call", {"name": "find_agents", "arguments": {"query": ""}, "task": {}})
    assert reply["error"]["code"] == -32601  # a tool without task support
    assert (await session.call("tasks/list", {"cursor": "bogus"}))["error"]["code"] == -32602
    assert (await session.call("tasks/result", {"taskId": "unknown"}))["error"]["code"] == -32602
    assert (await session.call("tasks/update", {"taskId": task_id}))["error"]["code"] == -32601  # the extension's
    args = {"message": "q", "data": {"ask": "Sure?"}}
    task_id = (await session.call("tools/call", {"name": "held", "arguments": args, "task": {}}))["result"]["task"][
        "taskId"
    ]

    async def waiting() -> bool:
        return (await session.call("tasks/get", {"taskId": task_id}))["result"]["status"] == "input_required"

    await wait_until(waiting, timeout=15, interval=0.05)
    reply = await session.call("tasks/result", {"taskId": task_id})  # this session declared no elicitation
    assert reply["error"]["code"] == -32600 and "elicitation" in reply["error"]["message"]

    older = RawSession(http["alice"], url)
    resp = await older.http.post(
        url,
        headers=older.headers(),
        json={
            "jsonrpc": "2.0",
            "id": 0,
            "method": "initialize",
            "params": {
                "protocolVersion": "2025-06-18",
                "capabilities": {},
                "clientInfo": {"name": "old", "version": "1"},
            },
        },
    )
    older.sid = resp.headers["mcp-session-id"]
    assert "tasks" not in resp.json()["result"]["capabilities"]
    reply = await older.call("tools/call", {"name": "held", "arguments": {"message": "sync"}, "task": {}})
    assert reply["result"]["content"] == [{"type": "text", "text": "sync"}]  # no tasks in 2025-06-18
    assert (await older.call("tasks/get", {"taskId": task_id}))["error"]["code"] == -32601


# ---- a federated upstream's tool, run as the gateway's task ------------------------------------------


async def test_upstream_tool_runs_as_a_gateway_task_with_its_elicitation_as_input(tmp_path):
    with UpstreamProcess("up") as upstream:
        app = create_app(test_config())
        server = mount(app, MCPOptions(upstreams=(("up", upstream.url),), naming="pass-through", call_timeout_s=10))
        async with serve_app(app) as base, httpx.AsyncClient(timeout=15) as http:
            async with asyncio.timeout(60):
                await asyncio.gather(*(c.first_attempt.wait() for c in server.upstreams.clients.values()))
            raw = ModernRaw(http, base + "/mcp")
            _, reply = await ask(raw, "tools/call", {"name": "confirm_delete", "arguments": {"filename": "a.txt"}})
            task_id = reply["result"]["taskId"]
            waiting = await poll(raw, task_id, {"input_required"})
            [(key, request)] = waiting["inputRequests"].items()
            assert request["method"] == "elicitation/create" and "a.txt" in request["params"]["message"]
            answer = {"action": "accept", "content": {"confirm": True}}
            await ask(raw, "tasks/update", {"taskId": task_id, "inputResponses": {key: answer}})
            done = await poll(raw, task_id, {"completed"})
            assert done["result"]["content"][0]["text"] == "Deleted a.txt"
            _, reply = await ask(raw, "tools/call", {"name": "failing_job", "arguments": {}}, tasks=False)
            assert reply["error"]["code"] == -32021  # it runs only as a task
            _, reply = await ask(raw, "tools/call", {"name": "protocol_error_job", "arguments": {}})
            failed = await poll(raw, reply["result"]["taskId"], {"failed"})
            assert failed["error"]["code"] == -32603 and "result" not in failed

            session = RawSession(http, base + "/mcp")  # 2025-11-25: asked on tasks/result's stream
            await session.initialize({"elicitation": {}})
            args = {"filename": "c.txt"}
            reply = await session.call("tools/call", {"name": "confirm_delete", "arguments": args, "task": {}})
            task_id = reply["result"]["task"]["taskId"]
            [asked], result = await result_answering(
                session, task_id, {"action": "accept", "content": {"confirm": True}}
            )
            assert asked["method"] == "elicitation/create" and asked["params"]["message"] == "Delete c.txt?"
            assert asked["params"]["_meta"][RELATED] == {"taskId": task_id}
            assert result["content"][0]["text"] == "Deleted c.txt" and result["_meta"][RELATED] == {"taskId": task_id}


async def test_a_task_made_on_one_node_is_answered_polled_and_cancelled_on_another(redis_server):
    """Two nodes sharing Redis: the record is shared, answers and cancellations reach the node
    running the upstream call through the mailbox."""
    redis_server.flush()
    config = test_config(redis_url=redis_server.url)
    with UpstreamProcess("up") as upstream:
        async with (
            mcp_gateway([("up", upstream.url)], config=config, naming="pass-through") as (url_a, node_a),
            mcp_gateway([("up", upstream.url)], config=config, naming="pass-through") as (url_b, _),
            httpx.AsyncClient(timeout=15) as http,
        ):
            a, b = ModernRaw(http, url_a), ModernRaw(http, url_b)
            _, reply = await ask(a, "tools/call", {"name": "confirm_delete", "arguments": {"filename": "b.txt"}})
            task_id = reply["result"]["taskId"]
            waiting = await poll(b, task_id, {"input_required"})
            [key] = waiting["inputRequests"]
            answer = {"action": "accept", "content": {"confirm": False}}
            await ask(b, "tasks/update", {"taskId": task_id, "inputResponses": {key: answer}})
            assert (await poll(b, task_id, {"completed"}))["result"]["content"][0]["text"] == "Kept b.txt"
            _, reply = await ask(a, "tools/call", {"name": "slow_compute", "arguments": {"seconds": 60}})
            task_id = reply["result"]["taskId"]
            _, ack = await ask(b, "tasks/cancel", {"taskId": task_id})
            assert "error" not in ack
            assert (await poll(a, task_id, {"cancelled", "completed"}))["status"] == "cancelled"

            async def stopped() -> bool:  # node A stopped the upstream call
                return task_id not in node_a.tasks.jobs

            await wait_until(stopped, timeout=10)
