"""Routable agents as MCP tools: one test per row of the mapping table in protocols/mcp/__init__.py,
plus the meta tools find_agents and send_task."""

from __future__ import annotations

import asyncio
import base64
import json

import httpx
import pytest
from mcp import Client
from pydantic import TypeAdapter

from agents.echo import EchoWorker
from agents.worker import TaskFailed, Worker
from gateway.app import create_app
from protocols.mcp import MCPOptions, mount
from schemas import Artifact, DataPart, Message, Part, TaskState, TextPart
from tests.conftest import serve_app, test_config, wait_until
from tests.fixtures.mcp_support import GetStream, ModernRaw, RawSession

pytestmark = pytest.mark.filterwarnings(
    "ignore::DeprecationWarning", "ignore::mcp.shared.exceptions.MCPDeprecationWarning"
)
PART = TypeAdapter(Part)


class PartsWorker(Worker):
    """Answers with the parts listed in its data part's ``reply`` (else echoes); ``ask``,
    ``delay_ms`` and ``fail`` as the echo agent has them. Records every message it gets."""

    agent = "parts"

    def __init__(self) -> None:
        self.seen: list[Message] = []

    async def handle(self, task):
        user = [m for m in task.history if m.role == "user"]
        msg = user[-1]
        self.seen.append(msg)
        data = next((p.data for p in msg.parts if isinstance(p, DataPart)), {})
        if data.get("ask") and len(user) == 1:
            q = Message(role="agent", parts=[TextPart(text=data["ask"])])
            yield task.status_event(TaskState.INPUT_REQUIRED, q)
            return
        if data.get("delay_ms"):
            yield task.status_event(TaskState.WORKING, Message(role="agent", parts=[TextPart(text="thinking")]))
            await asyncio.sleep(data["delay_ms"] / 1000)
        if data.get("fail"):
            raise TaskFailed(data["fail"])
        parts = [PART.validate_python(p) for p in data.get("reply", [])] or msg.parts
        yield task.artifact_event(Artifact(name="answer", parts=parts), last_chunk=True)


@pytest.fixture
async def env():
    """A gateway running the echo agent and the parts agent; yields (raw session, worker, server)."""
    worker = PartsWorker()
    app = create_app(test_config(), workers=[EchoWorker(), worker])
    server = mount(app, MCPOptions(call_timeout_s=5))
    async with serve_app(app) as base, httpx.AsyncClient(timeout=15) as http:
        raw = RawSession(http, base + "/mcp")
        await raw.initialize()
        yield raw, worker, server


async def call(raw: RawSession, name: str, args: dict) -> dict:
    reply = await raw.call("tools/call", {"name": name, "arguments": args})
    assert "result" in reply, reply
    return reply["result"]


async def test_one_tool_per_agent_plus_meta_tools(env):
    raw, _, server = env
    tools = {t["name"]: t for t in (await raw.call("tools/list"))["result"]["tools"]}
    assert {"find_agents", "send_task", "echo", "parts"} <= set(tools)
    assert tools["parts"]["inputSchema"]["required"] == ["message"]
    assert set(tools["parts"]["inputSchema"]["properties"]) == {"message", "data"}
    [echo] = server.runtime.registry.by_name("echo")  # the tool says what the agent's record says
    assert tools["echo"]["description"].startswith(echo.description)


async def test_message_becomes_a_text_part_and_data_a_data_part(env):
    raw, worker, _ = env
    await call(raw, "parts", {"message": "hello", "data": {"k": 1}})
    msg = worker.seen[-1]
    assert msg.role == "user"
    assert isinstance(msg.parts[0], TextPart) and msg.parts[0].text == "hello"
    assert isinstance(msg.parts[1], DataPart) and msg.parts[1].data == {"k": 1}


async def test_text_part_becomes_text_content(env):
    raw, _, _ = env
    res = await call(raw, "echo", {"message": "plain"})
    assert res == {"content": [{"type": "text", "text": "plain"}]}


async def test_data_parts_become_json_text_and_structured_content(env):
    raw, _, _ = env
    res = await call(raw, "parts", {"message": "x", "data": {"reply": [{"kind": "data", "data": {"a": 1}}]}})
    assert res["content"] == [{"type": "text", "text": '{"a": 1}'}] and res["structuredContent"] == {"a": 1}
    res = await call(
        raw,
        "parts",
        {"message": "x", "data": {"reply": [{"kind": "data", "data": {"a": 1}}, {"kind": "data", "data": [2]}]}},
    )
    assert res["structuredContent"] == {"data": [{"a": 1}, [2]]}


async def test_file_parts_become_image_audio_resource_and_links(env):
    raw, _, _ = env
    png, wav, blob = (
        base64.b64encode(b"\x89PNG").decode(),
        base64.b64encode(b"RIFF").decode(),
        base64.b64encode(b"\x00\x01").decode(),
    )
    reply = [
        {"kind": "file", "bytes": png, "media_type": "image/png"},
        {"kind": "file", "bytes": wav, "media_type": "audio/wav"},
        {"kind": "file", "bytes": base64.b64encode(b"notes").decode(), "media_type": "text/plain", "filename": "n.txt"},
        {"kind": "file", "bytes": blob, "media_type": "application/pdf", "filename": "doc.pdf"},
        {
            "kind": "file",
            "url": "https://example.com/a.bin",
            "media_type": "application/octet-stream",
            "filename": "a.bin",
        },
    ]
    res = await call(raw, "parts", {"message": "files", "data": {"reply": reply}})
    image, audio, text, pdf, link = res["content"]
    assert image == {"type": "image", "data": png, "mimeType": "image/png"}
    assert audio == {"type": "audio", "data": wav, "mimeType": "audio/wav"}
    assert (
        text["type"] == "resource"
        and text["resource"]["text"] == "notes"
        and text["resource"]["uri"].endswith("/n.txt")
    )
    assert pdf["type"] == "resource" and pdf["resource"] == {
        "uri": pdf["resource"]["uri"],
        "mimeType": "application/pdf",
        "blob": blob,
    }
    assert link == {
        "type": "resource_link",
        "uri": "https://example.com/a.bin",
        "name": "a.bin",
        "mimeType": "application/octet-stream",
    }


async def test_failed_task_is_a_tool_error(env):
    raw, _, _ = env
    res = await call(raw, "parts", {"message": "x", "data": {"fail": "the model is on fire"}})
    assert res["isError"] is True and res["content"][0]["text"] == "the model is on fire"


async def test_input_required_returns_the_question_and_send_task_continues(env):
    raw, worker, _ = env
    res = await call(raw, "parts", {"message": "book a table", "data": {"ask": "for how many?"}})
    assert not res.get("isError") and res["content"][-1]["text"] == "for how many?"
    task_id = res["structuredContent"]["task_id"]
    assert res["structuredContent"]["state"] == "input-required"
    res = await call(raw, "send_task", {"agent_or_query": "parts", "message": "four", "task_id": task_id})
    assert res["content"] == [{"type": "text", "text": "four"}]
    res = await call(raw, "send_task", {"agent_or_query": "parts", "message": "again", "task_id": task_id})
    assert res["isError"] and "only a task that waits for input" in res["content"][0]["text"]


async def test_task_not_final_in_time_is_canceled(env):
    raw, _, server = env
    server.agent_tools.wait_s = 0.3
    res = await call(raw, "parts", {"message": "slow", "data": {"delay_ms": 5000}})
    assert res["isError"] and "did not finish in time" in res["content"][0]["text"]
    tasks, _ = await server.runtime.backend.tasks.list()
    assert tasks[0].state is TaskState.CANCELED


async def test_cancel_notification_cancels_the_task(env):
    raw, _, server = env
    body = {
        "jsonrpc": "2.0",
        "id": 5,
        "method": "tools/call",
        "params": {"name": "parts", "arguments": {"message": "slow", "data": {"delay_ms": 5000}}},
    }
    call_task = asyncio.create_task(raw.post(body))

    async def working():
        tasks, _ = await server.runtime.backend.tasks.list()
        return tasks and tasks[0].state is TaskState.WORKING

    await wait_until(working, timeout=5)
    await raw.post({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 5}})
    resp = await asyncio.wait_for(call_task, 5)
    assert resp.json()["error"]["code"] == -32800
    tasks, _ = await server.runtime.backend.tasks.list()
    await wait_until(lambda: _state(server, tasks[0].id, TaskState.CANCELED), timeout=5)


async def test_closing_a_modern_request_cancels_the_task(env):
    """2026-07-28 has no notifications/cancelled on HTTP: closing the connection is the signal."""
    raw, _, server = env
    modern = ModernRaw(raw.http, raw.url)
    body = modern.body("tools/call", {"name": "parts", "arguments": {"message": "slow", "data": {"delay_ms": 5000}}})
    call_task = asyncio.create_task(modern.post(body))

    async def working():
        tasks, _ = await server.runtime.backend.tasks.list()
        return tasks and tasks[0].state is TaskState.WORKING

    await wait_until(working, timeout=5)
    call_task.cancel()  # the client gives up: its connection closes
    tasks, _ = await server.runtime.backend.tasks.list()
    await wait_until(lambda: _state(server, tasks[0].id, TaskState.CANCELED), timeout=5)


async def _state(server, task_id, state):
    return (await server.runtime.get(task_id)).state is state


async def test_progress_token_turns_task_events_into_progress(env):
    raw, _, _ = env
    url = raw.url
    progress = []

    async def on_progress(value, total, message):
        progress.append((value, message))

    async with Client(url, mode="legacy") as client:
        res = await client.call_tool("parts", {"message": "p", "data": {"delay_ms": 10}}, progress_callback=on_progress)
        assert res.content[0].text == "p"
    values = [v for v, _ in progress]
    assert values == sorted(values) and len(values) >= 3
    assert "thinking" in [m for _, m in progress]


async def test_find_agents_and_send_task_by_query(env):
    raw, _, _ = env
    res = await call(raw, "find_agents", {"query": "echo"})
    assert [a["name"] for a in res["structuredContent"]["agents"]] == ["echo"]
    res = await call(raw, "find_agents", {"query": ""})
    assert {a["name"] for a in res["structuredContent"]["agents"]} == {"echo", "parts"}
    res = await call(raw, "find_agents", {"query": "replies"})  # a word of the echo agent's record description
    assert [a["name"] for a in res["structuredContent"]["agents"]] == ["echo"]
    res = await call(raw, "send_task", {"agent_or_query": "the echo agent please", "message": "routed"})
    assert res["content"] == [{"type": "text", "text": "routed"}]
    res = await call(raw, "send_task", {"agent_or_query": "zzz", "message": "nobody"})
    assert res["isError"] and "no agent matches" in res["content"][0]["text"]
    res = await call(raw, "send_task", {"message": "no target"})
    assert res["isError"]
    assert json.loads(json.dumps(res))  # plain JSON


async def test_new_agent_announces_tools_list_changed():
    app = create_app(test_config(), workers=[EchoWorker()])
    mount(app, MCPOptions(agents_poll_s=0.05))
    async with serve_app(app) as base, httpx.AsyncClient(timeout=15) as http:
        raw = RawSession(http, base + "/mcp")
        await raw.initialize()
        async with GetStream(raw) as stream:
            await wait_until(lambda: asyncio.sleep(0, result=raw.sid in app.state.mcp.get_streams))
            await asyncio.sleep(0.2)  # let the watcher record the current agent set first
            runtime = app.state.runtime
            known = runtime.known_agents

            async def with_weather(**caller):  # an agent registers elsewhere and becomes routable
                return sorted({*await known(**caller), "weather"})

            runtime.known_agents = with_weather
            await stream.until("notifications/tools/list_changed")
        names = [t["name"] for t in (await raw.call("tools/list"))["result"]["tools"]]
        assert "weather" in names


async def test_agent_whose_home_is_down_leaves_every_list_at_the_runtimes_signal():
    """An agent the runtime cannot route to (the cluster says its home node is down) leaves
    tools/list, find_agents, the A2A card and ACP /agents; the change is announced with
    tools/list_changed at the runtime's signal (the poll is an hour), and undone the same way."""
    app = create_app(test_config(), workers=[EchoWorker(), PartsWorker()])
    mount(app, MCPOptions(agents_poll_s=3600))
    async with serve_app(app) as base, httpx.AsyncClient(timeout=15) as http:
        raw = RawSession(http, base + "/mcp")
        await raw.initialize()
        runtime = app.state.runtime
        down: set[str] = set()
        runtime.reachable = lambda record: record.name not in down  # as the cluster decides

        async def listed() -> dict[str, set[str]]:
            found = await call(raw, "find_agents", {"query": ""})
            card = (await http.get(f"{base}/.well-known/agent-card.json")).json()
            return {
                "tools": {t["name"] for t in (await raw.call("tools/list"))["result"]["tools"]},
                "find_agents": {a["name"] for a in found["structuredContent"]["agents"]},
                "a2a": {s["id"] for s in card["skills"]},
                "acp": {a["name"] for a in (await http.get(f"{base}/acp/agents")).json()["agents"]},
            }

        async with GetStream(raw) as stream:
            await wait_until(lambda: asyncio.sleep(0, result=raw.sid in app.state.mcp.get_streams))
            assert all({"echo", "parts"} <= names for names in (await listed()).values())

            down.add("parts")
            runtime.agents_changed()
            await stream.until("notifications/tools/list_changed", timeout=5)
            now = await listed()
            assert all("parts" not in names and "echo" in names for names in now.values()), now
            assert (await http.get(f"{base}/a2a/agents/parts/.well-known/agent-card.json")).status_code == 404
            assert (await http.get(f"{base}/acp/agents/parts")).status_code == 404
            gone = await raw.call("tools/call", {"name": "parts", "arguments": {"message": "x"}})
            assert "Unknown tool" in gone["error"]["message"]

            down.clear()
            runtime.agents_changed()
            await stream.until("notifications/tools/list_changed", timeout=5)
            assert all({"echo", "parts"} <= names for names in (await listed()).values())
