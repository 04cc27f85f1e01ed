"""Input-required results (2026-07-28 MRTR) through the gateway (protocols/mcp/mrtr.py,
request_state.py): a federated upstream's elicitation, sampling and roots, and an agent's
input-required task, become input-required results whose retries resume them, on any node.

Real components: the official ``mcp`` 2.3 client in auto mode (which drives the rounds with its
callbacks), the SDK-built fixture upstream (handshake era: it asks with server->client requests),
an agent that asks a question, two gateway nodes sharing a real redis-server, and raw httpx for
the attacks: a tampered, foreign-signed, expired, replayed, another caller's or another request's
``requestState`` is -32602 (HTTP 400) and changes nothing.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from collections.abc import AsyncIterator

import httpx
import mcp_types as types
import pytest
import pytest_asyncio
import yaml
from mcp import Client

from agents.worker import Worker
from gateway.app import create_app
from gateway.core.auth import api_key_digest
from protocols.mcp import MCPOptions, mount
from protocols.mcp.request_state import RequestStates
from registry.identity import Identity
from schemas import Artifact, Message, Task, TaskEvent, TaskState, TextPart
from tests.conftest import serve_app, test_config
from tests.fixtures.mcp_support import ModernRaw, UpstreamProcess, modern_meta

pytestmark = [
    pytest.mark.asyncio(loop_scope="module"),  # one cluster for the module
    pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::mcp.shared.exceptions.MCPDeprecationWarning"),
]

KEYS = {"alice": "k-alice-0123456789abcdef", "bob": "k-bob-0123456789abcdef"}
CAPS = {"elicitation": {"form": {}}, "sampling": {}, "roots": {}}
ELICIT = "everything__test_input_required_result_elicitation"


class AskingWorker(Worker):
    """An agent that asks which city before it answers (its task goes input-required)."""

    agent = "weather"
    description = "Tells the weather of a city; asks which city first."

    def skills(self) -> list[dict]:
        return [{"id": "weather", "name": "Weather", "description": "The weather of a city", "tags": ["weather"]}]

    async def handle(self, task: Task) -> AsyncIterator[TaskEvent]:
        user = [m for m in task.history if m.role == "user"]
        if len(user) == 1:
            question = Message(role="agent", parts=[TextPart(text="Which city?")])
            yield task.status_event(TaskState.INPUT_REQUIRED, question)
            return
        answer = Artifact(artifact_id="w", parts=[TextPart(text=f"Sunny in {user[-1].text()}")])
        yield task.artifact_event(answer, last_chunk=True)


@pytest.fixture(scope="module")
def upstream():
    with UpstreamProcess("everything") as up:
        yield up


@contextlib.asynccontextmanager
async def node(name: str, redis_url: str, keys: str, upstream_url: str) -> AsyncIterator[tuple[str, object]]:
    app = create_app(test_config(redis_url=redis_url, node_id=name, api_keys=keys), workers=[AskingWorker()])
    service = mount(app, MCPOptions(upstreams=(("everything", upstream_url),), call_timeout_s=20))
    async with serve_app(app) as base:
        async with asyncio.timeout(60):
            await asyncio.gather(*(c.first_attempt.wait() for c in service.upstreams.clients.values()))
        yield base + "/mcp", app


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def cluster(redis_server, upstream, tmp_path_factory):
    """Two gateway nodes (each its own node key) sharing one Redis: (url A, url B, app A)."""
    redis_server.flush()
    keys = tmp_path_factory.mktemp("keys") / "keys.yaml"
    keys.write_text(yaml.safe_dump([{"principal": p, "key_sha256": api_key_digest(k)} for p, k in KEYS.items()]))
    async with (
        node("node-a", redis_server.url, str(keys), upstream.url) as (url_a, app_a),
        node("node-b", redis_server.url, str(keys), upstream.url) as (url_b, _),
    ):
        yield url_a, url_b, app_a


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def http():
    async with httpx.AsyncClient(timeout=30) as client:
        yield client


def raw(http: httpx.AsyncClient, url: str, who: str = "alice") -> ModernRaw:
    return ModernRaw(WithKey(http, KEYS[who]), url)


class WithKey:
    """An httpx client that authenticates as one principal (ModernRaw only posts)."""

    def __init__(self, http: httpx.AsyncClient, key: str) -> None:
        self.http, self.key = http, key

    async def post(self, url, headers, content):
        return await self.http.post(url, headers={**headers, "Authorization": f"Bearer {self.key}"}, content=content)


async def call(r: ModernRaw, method: str, params: dict) -> tuple[int, dict]:
    resp, reply = await r.call(method, params, **{"io.modelcontextprotocol/clientCapabilities": CAPS})
    return resp.status_code, reply


def sdk_client(url: str, who: str = "alice", **callbacks) -> Client:
    import httpx2
    from mcp.client.streamable_http import streamable_http_client

    http = httpx2.AsyncClient(timeout=30, headers={"Authorization": f"Bearer {KEYS[who]}"})
    return Client(streamable_http_client(url, http_client=http), mode="auto", **callbacks)


async def accept_name(context, params) -> types.ElicitResult:
    return types.ElicitResult(action="accept", content={"name": "Ada", "color": "teal", "ok": True, "message": "Oslo"})


async def paris(context, params) -> types.CreateMessageResult:
    return types.CreateMessageResult(
        role="assistant", content=types.TextContent(text="Paris"), model="test-model", stop_reason="endTurn"
    )


async def roots(context) -> types.ListRootsResult:
    return types.ListRootsResult(roots=[types.Root(uri="file:///work/project", name="project")])


# ---- the official client drives the rounds -----------------------------------------------------


async def test_official_client_answers_an_upstreams_elicitation_sampling_and_roots(cluster):
    url, _, _ = cluster
    async with sdk_client(
        url, elicitation_callback=accept_name, sampling_callback=paris, list_roots_callback=roots
    ) as client:
        assert client.protocol_version == "2026-07-28"
        res = await client.call_tool(ELICIT, {})
        assert res.content[0].text == "Hello, Ada!"
        res = await client.call_tool("everything__test_input_required_result_sampling", {})
        assert res.content[0].text == "The model said: Paris"
        res = await client.call_tool("everything__test_input_required_result_list_roots", {})
        assert res.content[0].text == "roots: file:///work/project"
        res = await client.call_tool("everything__test_input_required_result_multi_round", {})
        assert res.content[0].text == "Ada likes teal"
        res = await client.call_tool("everything__test_input_required_result_multiple_inputs", {})
        assert res.content[0].text == "Paris, Ada (1 roots)"
        prompt = await client.get_prompt("everything__test_input_required_result_prompt", {})
        assert prompt.messages[0].content.text == "Context: None"


async def test_official_client_answers_an_agents_question(cluster):
    url, _, _ = cluster
    asked = []

    async def answer(context, params) -> types.ElicitResult:
        asked.append(params.message)
        return types.ElicitResult(action="accept", content={"message": "Oslo"})

    async with sdk_client(url, elicitation_callback=answer) as client:
        res = await client.call_tool("weather", {"message": "weather please"})
        assert res.content[-1].text == "Sunny in Oslo" and asked == ["Which city?"]
