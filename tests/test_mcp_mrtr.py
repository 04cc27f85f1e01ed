"""Input-required results (2026-07-28 MRTR) through the gateway (protocols/mcp/mrtr.py,
request_state.py): a federated upstream's elicitation, sampling and roots, and an agent's
input-required task, become input-required results whose retries resume them, on any node.

Real components: the official ``mcp`` 2.3 client in auto mode (which drives the rounds with its
callbacks), the SDK-built fixture upstream (handshake era: it asks with server->client requests)
and a second SDK upstream in process (a resource template that asks), an agent that asks a
question, two gateway nodes sharing a real redis-server, and raw httpx for
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
from mcp.server.mcpserver import Context, MCPServer

from agents.worker import Worker
from gateway.app import create_app
from gateway.core.auth import api_key_digest
from protocols.mcp import MCPOptions, mount
from protocols.mcp.request_state import RequestStates
from protocols.mcp.wire import MCPError
from registry.identity import Identity
from schemas import Artifact, Message, Task, TaskEvent, TaskState, TextPart
from tests.conftest import serve_app, test_config
from tests.fixtures.mcp_support import ModernRaw, UpstreamProcess
from tests.fixtures.mcp_upstream import handshake_only

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


def asking_upstream() -> MCPServer:
    """A second SDK-built upstream, in process: a resource template whose read asks the user."""
    server = MCPServer("asking", version="1.0.0")

    @server.resource("test://ask/{topic}", name="ask", description="Asks which detail first", mime_type="text/plain")
    async def ask(topic: str, ctx: Context) -> str:
        schema = {"type": "object", "properties": {"detail": {"type": "string"}}, "required": ["detail"]}
        answer = await ctx.session.elicit(f"Which detail of {topic}?", schema, related_request_id=ctx.request_id)
        return f"{topic}: {(answer.content or {}).get('detail')}"

    return server


@contextlib.asynccontextmanager
async def node(name: str, redis_url: str, keys: str, upstreams: tuple) -> AsyncIterator[tuple[str, object]]:
    app = create_app(test_config(redis_url=redis_url, node_id=name, api_keys=keys), workers=[AskingWorker()])
    service = mount(app, MCPOptions(upstreams=upstreams, call_timeout_s=20))
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
    # a handshake-era server (its read asks through the session), as the gateway's discovery finds it
    async with serve_app(handshake_only(asking_upstream().streamable_http_app())) as asking:
        upstreams = (("everything", upstream.url), ("asking", asking + "/mcp"))
        async with (
            node("node-a", redis_server.url, str(keys), upstreams) as (url_a, app_a),
            node("node-b", redis_server.url, str(keys), upstreams) as (url_b, _),
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


# ---- any node resumes ---------------------------------------------------------------------------


def asked_keys(reply: dict) -> dict[str, str]:
    result = reply["result"]
    assert result["resultType"] == "input_required" and isinstance(result["requestState"], str), reply
    return {key: req["method"] for key, req in result["inputRequests"].items()}


def retry(params: dict, reply: dict, responses: dict | None) -> dict:
    out = {**params, "requestState": reply["result"]["requestState"]}
    if responses is not None:
        out["inputResponses"] = responses
    return out


def named(name: str) -> dict:
    return {"action": "accept", "content": {"name": name}}


async def test_each_round_may_reach_another_node(cluster, http):
    """Round 1 on A, its retry on B (which holds no call: A's parked call answers through Redis),
    round 2's state, minted by B, redeemed on A."""
    url_a, url_b, _ = cluster
    a, b = raw(http, url_a), raw(http, url_b)
    params = {"name": "everything__test_input_required_result_multi_round", "arguments": {}}
    _, first = await call(a, "tools/call", params)
    assert asked_keys(first) == {"step1": "elicitation/create"}
    assert first["result"]["inputRequests"]["step1"]["params"] == {
        "mode": "form",
        "message": "Step 1: What is your name?",
        "requestedSchema": {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]},
    }  # the key's name taken off
    _, second = await call(b, "tools/call", retry(params, first, {"step1": named("Bo")}))
    assert asked_keys(second) == {"step2": "elicitation/create"}
    colour = {"action": "accept", "content": {"color": "red"}}
    status, done = await call(a, "tools/call", retry(params, second, {"step2": colour}))
    assert status == 200 and done["result"]["content"][0]["text"] == "Bo likes red", done
    assert done["result"]["resultType"] == "complete"


async def test_an_agents_question_is_answered_on_another_node(cluster, http):
    url_a, url_b, _ = cluster
    a, b = raw(http, url_a), raw(http, url_b)
    params = {"name": "weather", "arguments": {"message": "weather please"}}
    _, asked = await call(a, "tools/call", params)
    assert asked_keys(asked) == {"input": "elicitation/create"}
    assert asked["result"]["inputRequests"]["input"]["params"]["message"] == "Which city?"
    # no answer: asked again (the task still waits); then answered on B
    _, again = await call(b, "tools/call", retry(params, asked, {"unrelated": {"action": "accept"}}))
    assert asked_keys(again) == {"input": "elicitation/create"}
    answer = {"input": {"action": "accept", "content": {"message": "Rome"}}}
    _, done = await call(b, "tools/call", retry(params, again, answer))
    assert done["result"]["content"][-1]["text"] == "Sunny in Rome", done


async def test_a_declined_question_cancels_the_agents_task(cluster, http):
    url_a, _, app_a = cluster
    a = raw(http, url_a)
    params = {"name": "weather", "arguments": {"message": "weather please"}}
    _, asked = await call(a, "tools/call", params)
    _, done = await call(a, "tools/call", retry(params, asked, {"input": {"action": "decline"}}))
    assert done["result"]["isError"] and "canceled" in done["result"]["content"][0]["text"]


async def test_a_client_without_elicitation_gets_the_task_to_continue(cluster, http):
    url_a, _, _ = cluster
    resp, reply = await raw(http, url_a).call("tools/call", {"name": "weather", "arguments": {"message": "hi"}})
    result = reply["result"]
    assert resp.status_code == 200 and result["resultType"] == "complete"
    assert result["structuredContent"]["state"] == "input-required" and result["structuredContent"]["task_id"]


async def test_only_what_the_client_declared_is_asked(cluster, http):
    """The upstream asks for elicitation and sampling at once; a client that declared sampling
    only is asked for sampling (the elicitation is refused upstream)."""
    url_a, _, _ = cluster
    a = raw(http, url_a)
    params = {"name": "everything__test_input_required_result_capabilities", "arguments": {}}
    meta = {"io.modelcontextprotocol/clientCapabilities": {"sampling": {}}}
    _, reply = await a.call("tools/call", params, **meta)
    assert asked_keys(reply) == {"greeting": "sampling/createMessage"}
    sampled = {"role": "assistant", "content": {"type": "text", "text": "hi"}, "model": "m", "stopReason": "endTurn"}
    _, done = await a.call("tools/call", retry(params, reply, {"greeting": sampled}), **meta)
    assert done["result"]["content"][0]["text"] == "answered: refused, ok"


async def test_lists_never_answer_input_required(cluster, http):
    url_a, _, _ = cluster
    for method in ("tools/list", "prompts/list"):
        _, reply = await call(raw(http, url_a), method, {})
        assert reply["result"]["resultType"] == "complete"


# ---- attacks: refused with -32602, and nothing changes ------------------------------------------


def tamper(state: str) -> list[str]:
    """Ways to alter a state: its payload changed (same signature), its signature changed, junk."""
    body, signature = state.split(".")
    payload = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    payload["x"]["r"] = 7
    changed = base64.urlsafe_b64encode(json.dumps(payload, separators=(",", ":")).encode()).decode().rstrip("=")
    middle = len(signature) // 2
    flipped = signature[:middle] + ("A" if signature[middle] != "A" else "B") + signature[middle + 1 :]
    return [f"{changed}.{signature}", f"{body}.{flipped}", state + "-TAMPERED", "not-a-state", body]


def forged(identity: Identity, state: str) -> str:
    """The same payload signed by a key that is no node of the cluster."""
    body = state.split(".")[0]
    payload = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    payload["iss"] = identity.did
    new = base64.urlsafe_b64encode(json.dumps(payload).encode()).decode().rstrip("=")
    signature = base64.urlsafe_b64encode(identity.sign(new.encode())).decode().rstrip("=")
    return f"{new}.{signature}"


async def refused(r: ModernRaw, params: dict) -> None:
    status, reply = await call(r, "tools/call", params)
    assert status == 400 and reply["error"]["code"] == -32602, reply
    assert reply["error"]["message"].startswith("Invalid requestState")


async def test_bad_states_are_refused_and_change_nothing(cluster, http):
    url_a, url_b, app_a = cluster
    a, b = raw(http, url_a), raw(http, url_b)
    params = {"name": ELICIT, "arguments": {}}
    _, first = await call(a, "tools/call", params)
    state = first["result"]["requestState"]
    answer = {"user_name": named("Cy")}
    for bad in tamper(state):
        await refused(b, {**params, "requestState": bad, "inputResponses": answer})
    await refused(a, {**params, "requestState": forged(Identity.generate(), state), "inputResponses": answer})
    runtime = app_a.state.runtime
    expired = RequestStates(runtime.identity, runtime.kv, trust_file=None, ttl_s=-5)
    lapsed = await expired.mint("alice", "tools/call", params, json.loads(_payload(state))["x"])
    await refused(a, {**params, "requestState": lapsed, "inputResponses": answer})
    await refused(raw(http, url_b, "bob"), retry(params, first, answer))  # another caller's
    other = {"name": "everything__test_input_required_result_tampered_state", "arguments": {}}
    await refused(a, retry(other, first, {"confirm": {"action": "accept", "content": {"ok": True}}}))
    await refused(a, retry({**params, "arguments": {"extra": 1}}, first, answer))  # other arguments
    # the genuine state still resumes the parked call, once
    _, done = await call(b, "tools/call", retry(params, first, answer))
    assert done["result"]["content"][0]["text"] == "Hello, Cy!", done
    for node in (a, b):  # replayed, on either node
        await refused(node, retry(params, first, answer))


def _payload(state: str) -> bytes:
    body = state.split(".")[0]
    return base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))


async def test_a_retry_without_responses_is_asked_again(cluster, http):
    url_a, url_b, _ = cluster
    params = {"name": ELICIT, "arguments": {}}
    _, first = await call(raw(http, url_a), "tools/call", params)
    _, again = await call(raw(http, url_b), "tools/call", retry(params, first, {"wrong_key": named("x")}))
    assert asked_keys(again) == {"user_name": "elicitation/create"}
    _, done = await call(raw(http, url_a), "tools/call", retry(params, again, {"user_name": named("Di")}))
    assert done["result"]["content"][0]["text"] == "Hello, Di!"


async def test_a_request_the_upstream_names_no_key_for_gets_the_gateways(cluster, http):
    url_a, url_b, _ = cluster
    params = {"name": "everything__test_elicitation", "arguments": {"message": "Your email?"}}
    _, first = await call(raw(http, url_a), "tools/call", params)
    assert asked_keys(first) == {"elicitation": "elicitation/create"}
    email = {"elicitation": {"action": "accept", "content": {"email": "eve@example.com"}}}
    _, done = await call(raw(http, url_b), "tools/call", retry(params, first, email))
    assert "eve@example.com" in done["result"]["content"][0]["text"], done


async def test_answers_sent_with_the_first_request_are_used(cluster, http):
    """A client may answer, without state, what it knows will be asked; unknown keys are ignored."""
    url_a, _, _ = cluster
    params = {"name": ELICIT, "arguments": {}, "inputResponses": {"user_name": named("Eve"), "other": {"x": 1}}}
    _, done = await call(raw(http, url_a), "tools/call", params)
    assert done["result"]["resultType"] == "complete" and done["result"]["content"][0]["text"] == "Hello, Eve!"


async def test_a_retry_for_a_call_no_node_holds_fails_at_once(cluster, http):
    """A genuine state whose parked call is gone (its node stopped): -32603, without waiting."""
    url_a, url_b, app_a = cluster
    params = {"name": ELICIT, "arguments": {}}
    runtime = app_a.state.runtime
    states = RequestStates(runtime.identity, runtime.kv, trust_file=None, ttl_s=60)
    state = await states.mint("alice", "tools/call", params, {"k": "x", "x": "no-such-call", "r": 1})
    async with asyncio.timeout(5):
        status, reply = await call(raw(http, url_b), "tools/call", {**params, "requestState": state})
    assert status == 200 and reply["error"]["code"] == -32603, reply


async def test_a_resource_read_asks_too(cluster, http):
    url_a, url_b, _ = cluster
    params = {"uri": "test://ask/weather"}
    _, first = await call(raw(http, url_a), "resources/read", params)
    assert asked_keys(first) == {"elicitation": "elicitation/create"}
    assert "ttlMs" not in first["result"]  # an input-required result is no cacheable answer
    detail = {"elicitation": {"action": "accept", "content": {"detail": "wind"}}}
    _, done = await call(raw(http, url_b), "resources/read", retry(params, first, detail))
    assert done["result"]["contents"][0]["text"] == "weather: wind", done
    assert done["result"]["ttlMs"] == 0


async def test_a_trust_file_decides_which_nodes_states_are_believed(cluster, tmp_path):
    """Without a trust file, the nodes sharing the store (each announces its DID there) are the
    cluster; with one, only the nodes it lists and this node itself."""
    _, _, app_a = cluster
    runtime = app_a.state.runtime
    params = {"name": ELICIT, "arguments": {}}
    other = Identity.generate()
    state = await RequestStates(other, runtime.kv, trust_file=None, ttl_s=60).mint("alice", "tools/call", params, {})
    listed = tmp_path / "trust.txt"
    listed.write_text(f"# the member nodes\n{runtime.identity.did}\n")
    strict = RequestStates(runtime.identity, runtime.kv, trust_file=str(listed), ttl_s=60)
    with pytest.raises(MCPError, match="not minted by a node of this cluster"):
        await strict.redeem(state, "alice", "tools/call", params)
    announced = RequestStates(runtime.identity, runtime.kv, trust_file=None, ttl_s=60)
    assert await announced.redeem(state, "alice", "tools/call", params) == {}


async def test_a_parked_call_counts_among_the_callers_open_streams(upstream, http, tmp_path):
    """Each parked upstream call holds a request open: past the quota of open streams, the next
    one is refused (429, -31029) and nothing is left parked for it; answering frees the place."""
    keys = tmp_path / "keys.yaml"
    keys.write_text(yaml.safe_dump([{"principal": "alice", "key_sha256": api_key_digest(KEYS["alice"])}]))
    app = create_app(test_config(api_keys=str(keys), quota_sse_streams=1))
    service = mount(app, MCPOptions(upstreams=(("everything", upstream.url),), call_timeout_s=20))
    async with serve_app(app) as base:
        async with asyncio.timeout(60):
            await asyncio.gather(*(c.first_attempt.wait() for c in service.upstreams.clients.values()))
        r = raw(http, base + "/mcp")
        params = {"name": ELICIT, "arguments": {}}
        _, first = await call(r, "tools/call", params)
        assert asked_keys(first) == {"user_name": "elicitation/create"}
        status, refused_one = await call(r, "tools/call", params)
        assert status == 429 and refused_one["error"]["code"] == -31029, refused_one
        assert len(service.parked.tasks) == 1
        _, done = await call(r, "tools/call", retry(params, first, {"user_name": named("Fay")}))
        assert done["result"]["content"][0]["text"] == "Hello, Fay!"
        _, again = await call(r, "tools/call", params)  # its place was given back
        assert asked_keys(again) == {"user_name": "elicitation/create"}
