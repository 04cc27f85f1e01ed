"""A task that asked for input, continued on every face that follows it afterwards.

The agent is a bus worker (echo) or a remote a2a-sdk agent behind the A2A connector; the task is
started over A2A (whose message metadata says ``ask``) and continued over MCP ``send_task`` with a
progress token, A2A SendStreamingMessage, ACP resume in stream mode and ``POST /tasks``. Each
must see the follow-up's answer, never stop at the old input-required event (issue 12, item 1).
"""

from __future__ import annotations

import uuid

import httpx
import pytest
import pytest_asyncio
from mcp import Client

from agents.echo import EchoWorker
from gateway.app import create_app
from protocols import a2a, acp, mcp
from protocols.a2a.connector import A2AConnector
from tests.conftest import serve_app, sse_json, test_config
from tests.fixtures.a2a_remote import remote_agent
from tests.fixtures.a2a_support import V10

pytestmark = [
    pytest.mark.asyncio(loop_scope="module"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::mcp.shared.exceptions.MCPDeprecationWarning"),
]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def url():
    async with remote_agent(binding="JSONRPC", version="1.0", streaming=True) as remote:
        app = create_app(test_config(echo=False), workers=[EchoWorker(), A2AConnector("remote", remote)])
        mcp.mount(app, mcp.MCPOptions(call_timeout_s=10))
        a2a.mount(app)
        acp.mount(app)
        async with serve_app(app) as base:
            yield base


@pytest_asyncio.fixture(loop_scope="module")
async def http(url):
    async with httpx.AsyncClient(base_url=url, timeout=20) as c:
        yield c


def a2a_message(text: str, **extra) -> dict:
    return {"messageId": uuid.uuid4().hex, "role": "ROLE_USER", "parts": [{"text": text}], **extra}


async def asked(http: httpx.AsyncClient, agent: str) -> str:
    """Start a task on ``agent`` that asks "Which city?"; its id, once it waits for input."""
    body = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "SendMessage",
        "params": {"message": a2a_message("weather", metadata={"ask": "Which city?"})},
    }
    task = (await http.post(f"/a2a/agents/{agent}", json=body, headers=V10)).json()["result"]["task"]
    assert task["status"]["state"] == "TASK_STATE_INPUT_REQUIRED"
    return task["id"]


async def state(http: httpx.AsyncClient, task_id: str) -> str:
    return (await http.get(f"/tasks/{task_id}")).json()["status"]["state"]


AGENTS = ["echo", "remote"]


@pytest.mark.parametrize("agent", AGENTS)
async def test_mcp_send_task_with_a_progress_token_returns_the_follow_ups_answer(url, http, agent):
    task_id = await asked(http, agent)
    progress: list[str] = []

    async def on_progress(value, total, message):
        progress.append(message)

    async with Client(url + "/mcp", mode="legacy") as client:
        res = await client.call_tool(
            "send_task",
            {"agent_or_query": agent, "message": "Paris", "task_id": task_id},
            progress_callback=on_progress,
        )
    assert not res.is_error, res.content
    assert [c.text for c in res.content] == ["Paris"]
    assert "Which city?" not in progress  # the old question is not replayed as progress
    assert await state(http, task_id) == "completed"


@pytest.mark.parametrize("agent", AGENTS)
async def test_a2a_streaming_continue_streams_to_completion(http, agent):
    task_id = await asked(http, agent)
    body = {
        "jsonrpc": "2.0",
        "id": 2,
        "method": "SendStreamingMessage",
        "params": {"message": a2a_message("Paris", taskId=task_id)},
    }
    async with http.stream("POST", f"/a2a/agents/{agent}", json=body, headers=V10) as resp:
        frames = await sse_json(resp)
    states = [f["result"]["statusUpdate"]["status"]["state"] for f in frames if "statusUpdate" in f["result"]]
    assert states[-1] == "TASK_STATE_COMPLETED" and "TASK_STATE_INPUT_REQUIRED" not in states
    assert await state(http, task_id) == "completed"


@pytest.mark.parametrize("agent", AGENTS)
async def test_acp_stream_resume_streams_to_completion(http, agent):
    task_id = await asked(http, agent)
    resume = {"await_resume": {"type": "message", "message": {"parts": [{"content": "Paris"}]}}, "mode": "stream"}
    async with http.stream("POST", f"/acp/runs/{task_id}", json=resume) as resp:
        events = await sse_json(resp)
    types = [e["type"] for e in events]
    assert types[-1] == "run.completed" and "run.awaiting" not in types, types
    assert await state(http, task_id) == "completed"


@pytest.mark.parametrize("agent", AGENTS)
async def test_tasks_api_continue_waits_for_the_follow_ups_answer(http, agent):
    task_id = await asked(http, agent)
    body = {"task_id": task_id, "message": {"role": "user", "parts": [{"kind": "text", "text": "Paris"}]}}
    task = (await http.post("/tasks?wait=true", json=body)).json()
    assert task["status"]["state"] == "completed"
    assert [p["text"] for a in task["artifacts"] for p in a["parts"]] == ["Paris"]
