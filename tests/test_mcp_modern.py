"""``/mcp`` in the 2026-07-28 era (stateless), next to the sessions of 2025-11-25: the official
``mcp`` client in auto mode, server/discover, the modern answer shape, header validation and bad
input (refused before anything runs), Mcp-Param-* headers, per-request logging, -32021,
subscriptions/listen, and cancellation by closing the response stream. The gateway federates
the SDK-built fixture upstream (prefix naming) and has the echo agent."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json

import httpx
import httpx2
import pytest
import pytest_asyncio
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from gateway.core import sse
from tests.conftest import test_config, wait_until
from tests.fixtures.mcp_support import (
    ACCEPT,
    MODERN,
    ModernRaw,
    RawSession,
    UpstreamProcess,
    listening,
    mcp_gateway,
    modern_meta,
    next_message,
)

pytestmark = [
    pytest.mark.asyncio(loop_scope="module"),  # one gateway for the module: each test leaves it as it found it
    pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::mcp.shared.exceptions.MCPDeprecationWarning"),
]

SUBSCRIPTION = "io.modelcontextprotocol/subscriptionId"
SERVER_INFO = "io.modelcontextprotocol/serverInfo"


@pytest.fixture(scope="module")
def upstream():
    with UpstreamProcess("everything") as up:
        yield up


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def gw(upstream):
    async with mcp_gateway([("everything", upstream.url)]) as (url, service), httpx.AsyncClient(timeout=15) as http:
        yield ModernRaw(http, url), service


async def test_official_client_in_auto_mode_is_modern_without_fallback(gw):
    raw, _ = gw
    methods = []

    async def record(request: httpx2.Request) -> None:
        if request.method == "POST":
            methods.append(json.loads(request.content)["method"])

    async with (
        httpx2.AsyncClient(timeout=30, event_hooks={"request": [record]}) as http,
        Client(streamable_http_client(raw.url, http_client=http), mode="auto") as client,
    ):
        assert client.protocol_version == MODERN and client.server_info.name == "interlace"
        assert client.server_capabilities.tools.list_changed
        names = [t.name for t in (await client.list_tools()).tools]
        assert names[:3] == ["find_agents", "send_task", "echo"] and "everything__test_simple_text" in names
        res = await client.call_tool("everything__test_echo", {"text": "modern"})
        assert not res.is_error and res.content[0].text == "modern"
        res = await client.call_tool("echo", {"message": "to the agent"})
        assert res.content[0].text == "to the agent"
        res = await client.call_tool("everything__test_x_mcp_header", {"region": "eu-west1"})  # Mcp-Param-Region
        assert res.content[0].text == "region=eu-west1"
        assert (await client.read_resource("test://static-text")).contents[0].text.startswith("This is the content")
        prompt = await client.get_prompt("everything__test_prompt_with_arguments", {"arg1": "a", "arg2": "b"})
        assert "arg1='a'" in prompt.messages[0].content.text
    assert methods[0] == "server/discover" and "initialize" not in methods


async def test_discover_names_both_eras(gw):
    raw, _ = gw
    resp, reply = await raw.call("server/discover")
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("application/json")
    result = reply["result"]
    assert result["supportedVersions"] == [MODERN, "2025-11-25", "2025-06-18", "2025-03-26"]
    assert result["capabilities"]["tools"] == {"listChanged": True}
    assert result["capabilities"]["resources"] == {"subscribe": True, "listChanged": True}
    assert result["_meta"][SERVER_INFO]["name"] == "interlace" and result["resultType"] == "complete"
    assert result["cacheScope"] == "public" and result["ttlMs"] == 5000 and result["instructions"]


async def test_modern_answers_carry_their_shape(gw):
    raw, _ = gw
    for method, key in (
        ("tools/list", "tools"),
        ("prompts/list", "prompts"),
        ("resources/list", "resources"),
        ("resources/templates/list", "resourceTemplates"),
    ):
        _, reply = await raw.call(method)
        result = reply["result"]
        assert (
            result[key] and result["resultType"] == "complete" and result["_meta"][SERVER_INFO]["name"] == "interlace"
        )
        # Nobody is authenticated here: every caller sees the same lists.
        assert (result["ttlMs"], result["cacheScope"]) == (5000, "public")
    _, read = await raw.call("resources/read", {"uri": "test://static-text"})
    assert read["result"]["ttlMs"] == 0 and read["result"]["contents"][0]["text"].startswith("This is the content")
    _, called = await raw.call("tools/call", {"name": "echo", "arguments": {"message": "hi"}})
    assert called["result"]["resultType"] == "complete" and "ttlMs" not in called["result"]
    # Resource not found is -32602 with the URI now (-32002 is retired).
    resp, missing = await raw.call("resources/read", {"uri": "test://nothing/here"})
    assert resp.status_code == 400 and missing["error"]["code"] == -32602
    assert missing["error"]["data"] == {"uri": "test://nothing/here"}


@pytest.mark.parametrize("method", ["initialize", "ping", "logging/setLevel", "resources/subscribe", "nope/nope"])
async def test_methods_not_in_the_modern_era_are_404(gw, method):
    raw, _ = gw
    resp, reply = await raw.call(method, {"uri": "test://static-text", "level": "info"})
    assert resp.status_code == 404 and reply["error"]["code"] == -32601 and reply["id"] == raw.ids


async def test_get_delete_and_notifications(gw):
    raw, _ = gw
    for verb in ("GET", "DELETE"):
        resp = await raw.http.request(
            verb, raw.url, headers={"Accept": "text/event-stream", "MCP-Protocol-Version": MODERN}
        )
        assert resp.status_code == 405 and resp.headers["allow"] == "POST"
    note = {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 1, "_meta": modern_meta()}}
    assert (await raw.post(note)).status_code == 202
    answer = {"jsonrpc": "2.0", "id": 1, "result": {}}
    resp = await raw.http.post(raw.url, json=answer, headers={"Accept": ACCEPT, "MCP-Protocol-Version": MODERN})
    assert resp.status_code == 400 and resp.json()["error"]["code"] == -32600
    # A legacy session is untouched by all this.
    legacy = RawSession(raw.http, raw.url)
    await legacy.initialize()
    assert (await legacy.call("ping"))["result"] == {}


def b64(text: str) -> str:
    return f"=?base64?{base64.b64encode(text.encode()).decode()}?="


NO_META = object()
BAD_INPUT = [  # (envelope, header changes, expected code)
    (NO_META, {}, -32602),
    ({"io.modelcontextprotocol/clientCapabilities": {}}, {}, -32602),
    ({"io.modelcontextprotocol/protocolVersion": MODERN}, {}, -32602),
    (modern_meta(**{"io.modelcontextprotocol/clientCapabilities": None}), {}, -32602),
    (
        modern_meta(**{"io.modelcontextprotocol/protocolVersion": "2030-01-01"}),
        {"MCP-Protocol-Version": MODERN},
        -32020,
    ),
    (
        modern_meta(**{"io.modelcontextprotocol/protocolVersion": "2030-01-01"}),
        {"MCP-Protocol-Version": "2030-01-01"},
        -32022,
    ),
    (None, {"MCP-Protocol-Version": None}, -32020),
    (None, {"Mcp-Method": None}, -32020),
    (None, {"Mcp-Method": "TOOLS/CALL"}, -32020),
    (None, {"Mcp-Name": None}, -32020),
    (None, {"Mcp-Name": "everything__test_echo"}, -32020),
    (None, {"Mcp-Name": "=?base64?ZWNobw?="}, -32020),  # base64 without its padding
    (None, {"Mcp-Name": "e" * 9000}, -32020),
]


@pytest.mark.parametrize("meta,changes,code", BAD_INPUT)
async def test_bad_input_is_refused_before_anything_runs(gw, meta, changes, code):
    raw, service = gw
    body = raw.body("tools/call", {"name": "echo", "arguments": {"message": "must not run"}}, meta)
    if meta is NO_META:
        del body["params"]["_meta"]
    before, _ = await service.runtime.list_tasks()
    resp = await raw.post(body, changes)
    reply = resp.json()
    assert resp.status_code == 400 and reply["error"]["code"] == code and reply["id"] == body["id"], reply
    if code == -32022:
        assert reply["error"]["data"] == {
            "supported": [MODERN, "2025-11-25", "2025-06-18", "2025-03-26"],
            "requested": "2030-01-01",
        }
    assert "Traceback" not in resp.text
    after, _ = await service.runtime.list_tasks()
    assert after == before  # no task was sent to the agent


async def test_header_names_are_case_insensitive_and_mcp_name_may_be_base64(gw):
    raw, _ = gw
    body = raw.body("tools/call", {"name": "everything__test_echo", "arguments": {"text": "x"}})
    headers = {"accept": ACCEPT, "content-type": "application/json", "mcp-protocol-version": MODERN}
    headers.update({"MCP-METHOD": "tools/call", "mcp-name": b64("everything__test_echo")})
    resp = await raw.http.post(raw.url, headers=headers, content=json.dumps(body))
    assert resp.status_code == 200 and resp.json()["result"]["content"][0]["text"] == "x"


async def test_mcp_param_headers_mirror_marked_arguments(gw):
    raw, _ = gw
    tool = {"name": "everything__test_x_mcp_header"}
    _, ok = await raw.call("tools/call", {**tool, "arguments": {"region": "eu"}}, {"Mcp-Param-Region": "eu"})
    assert ok["result"]["content"][0]["text"] == "region=eu"
    args = {"arguments": {"region": "Zürich"}}
    _, ok = await raw.call("tools/call", {**tool, **args}, {"Mcp-Param-Region": b64("Zürich"), "Mcp-Param-Other": "x"})
    assert ok["result"]["content"][0]["text"] == "region=Zürich"
    for args, changes in (
        ({"region": "eu"}, {}),
        ({"region": "eu"}, {"Mcp-Param-Region": "us"}),
        ({}, {"Mcp-Param-Region": "eu"}),
        ({"region": "eu"}, {"Mcp-Param-Region": "=?base64?ZXU?="}),
    ):
        resp, refused = await raw.call("tools/call", {**tool, "arguments": args}, changes)
        assert resp.status_code == 400 and refused["error"]["code"] == -32020, (args, changes)


async def test_logs_only_at_the_level_a_request_asks_for(gw):
    raw, _ = gw
    call = {"name": "everything__test_logging_tool", "arguments": {}}
    resp, reply = await raw.call("tools/call", call)
    assert resp.headers["content-type"].startswith("application/json") and not reply["result"].get("isError")
    body = raw.body("tools/call", call, modern_meta(**{"io.modelcontextprotocol/logLevel": "info"}))
    resp = await raw.post(body)
    assert resp.headers["content-type"].startswith("text/event-stream") and resp.headers["x-accel-buffering"] == "no"
    events = await sse_events_of(resp)
    assert all(e.id is None for e in events)  # nothing is resumable in this era
    messages = [e.json() for e in events]
    assert [m["params"]["data"] for m in messages[:-1]] == ["logging tool started", "logging tool done"]
    assert messages[-1]["id"] == body["id"] and messages[-1]["result"]["resultType"] == "complete"
    quiet = raw.body("tools/call", call, modern_meta(**{"io.modelcontextprotocol/logLevel": "error"}))
    assert (await raw.post(quiet)).headers["content-type"].startswith("application/json")


async def sse_events_of(resp: httpx.Response) -> list[sse.Event]:
    async def chunks():
        yield resp.content

    return [e async for e in sse.read_events(chunks())]


async def test_progress_streams_before_the_answer(gw):
    raw, _ = gw
    params = {"name": "everything__test_tool_with_progress", "arguments": {}}
    body = raw.body("tools/call", params, modern_meta(progressToken="p1"))
    messages = [e.json() for e in await sse_events_of(await raw.post(body))]
    progress = [m["params"] for m in messages if m.get("method") == "notifications/progress"]
    assert [p["progress"] for p in progress] == [0, 50, 100] and {p["progressToken"] for p in progress} == {"p1"}
    assert messages[-1]["result"]["content"][0]["text"] == "Tool with progress executed successfully"


async def test_the_envelope_is_not_relayed_upstream(gw):
    """The gateway's upstream session is its own: a client's envelope describes the client to
    the gateway, so only its other _meta keys travel on (the progress token as the gateway's)."""
    raw, _ = gw
    params = {"name": "everything__test_request_meta", "arguments": {}}
    extra = {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", "progressToken": 1}
    _, reply = await raw.call("tools/call", params, **{**extra, "io.modelcontextprotocol/logLevel": "debug"})
    keys = json.loads(reply["result"]["content"][0]["text"])
    assert "traceparent" in keys and not [k for k in keys if k.startswith("io.modelcontextprotocol/")], keys


async def test_an_upstream_needing_an_undeclared_capability_is_minus_32021(gw):
    raw, _ = gw
    resp, reply = await raw.call("tools/call", {"name": "everything__test_missing_capability", "arguments": {}})
    assert resp.status_code == 400 and reply["error"]["code"] == -32021
    assert reply["error"]["data"] == {"requiredCapabilities": {"sampling": {}}}


async def test_listen_acknowledges_what_it_honors_and_sends_only_that(gw):
    raw, service = gw
    wanted = {
        "toolsListChanged": True,
        "promptsListChanged": False,
        "resourceSubscriptions": ["test://watched-resource"],
        "somethingNew": True,
    }
    async with listening(raw, wanted) as (sid, ack, events):
        assert ack["method"] == "notifications/subscriptions/acknowledged"
        assert ack["params"] == {
            "_meta": {SUBSCRIPTION: sid},
            "notifications": {"toolsListChanged": True, "resourceSubscriptions": ["test://watched-resource"]},
        }
        assert service.held == {"test://watched-resource": 1}
        await raw.call(
            "tools/call", {"name": "everything__test_trigger_prompt_change", "arguments": {}}
        )  # not asked for
        await raw.call("tools/call", {"name": "everything__test_trigger_tool_change", "arguments": {}})
        changed = await next_message(events)
        assert changed == {
            "jsonrpc": "2.0",
            "method": "notifications/tools/list_changed",
            "params": {"_meta": {SUBSCRIPTION: sid}},
        }
        await raw.call("tools/call", {"name": "everything__test_touch_resource", "arguments": {}})
        updated = await next_message(events)
        assert updated["method"] == "notifications/resources/updated"
        assert updated["params"] == {"uri": "test://watched-resource", "_meta": {SUBSCRIPTION: sid}}

    async def released() -> bool:  # the stream's end reached the gateway: it holds nothing more
        return not service.held and not service.listen.listeners

    await wait_until(released)


@pytest.mark.parametrize(
    "notifications",
    [
        None,
        [],
        {"toolsListChanged": "yes"},
        {"resourceSubscriptions": "test://watched-resource"},
        {"resourceSubscriptions": [1]},
    ],
)
async def test_a_malformed_listen_request_is_refused_and_holds_nothing(gw, notifications):
    raw, service = gw
    params = {} if notifications is None else {"notifications": notifications}
    resp, reply = await raw.call("subscriptions/listen", params)
    assert resp.status_code == 400 and reply["error"]["code"] == -32602
    assert not service.held and not service.listen.listeners


async def test_the_official_client_listens(gw):
    raw, _ = gw
    async with Client(raw.url, mode="auto") as client:
        async with client.listen(tools_list_changed=True) as sub:
            assert sub.honored.tools_list_changed
            await client.call_tool("everything__test_trigger_tool_change", {})
            event = await asyncio.wait_for(anext(aiter(sub)), 10)
            assert type(event).__name__ == "ToolsListChanged"


async def test_a_listen_stream_ends_gracefully_at_its_deadline(upstream):
    async with mcp_gateway([("everything", upstream.url)], sse_max_s=0.5) as (url, _), httpx.AsyncClient() as http:
        raw = ModernRaw(http, url)
        async with listening(raw, {"toolsListChanged": True}) as (sid, _, events):
            last = await next_message(events)
        assert last == {
            "jsonrpc": "2.0",
            "id": sid,
            "result": {
                "resultType": "complete",
                "_meta": {SUBSCRIPTION: sid, SERVER_INFO: last["result"]["_meta"][SERVER_INFO]},
            },
        }


async def cancelled_upstream(raw: ModernRaw) -> bool:
    _, reply = await raw.call("tools/call", {"name": "everything__test_cancelled", "arguments": {}})
    return reply["result"]["content"][0]["text"] == "cancelled"


async def test_closing_the_response_stream_cancels_the_call(gw):
    """Once the answer is a stream (a log message came first), and before anything was sent."""
    raw, _ = gw
    slow = {"name": "everything__test_slow", "arguments": {"seconds": 30}}
    body = raw.body("tools/call", slow, modern_meta(**{"io.modelcontextprotocol/logLevel": "info"}))
    async with raw.http.stream("POST", raw.url, headers=raw.headers(body), content=json.dumps(body)) as resp:
        first = await next_message(sse.read_events(resp.aiter_bytes()))
        assert first["params"]["data"] == "sleeping"  # the call is running upstream
    await wait_until(lambda: cancelled_upstream(raw), timeout=10)

    # Before anything was sent: the call is seen upstream through a listen stream (the fixture's
    # test_slow announces itself as a change of test://watched-resource when asked to).
    await raw.call("tools/call", {"name": "everything__test_slow", "arguments": {"seconds": 0}})  # resets the flag
    async with listening(raw, {"resourceSubscriptions": ["test://watched-resource"]}) as (_, _, events):
        quiet = {"name": "everything__test_slow", "arguments": {"seconds": 30, "announce": True}}
        call = asyncio.create_task(raw.call("tools/call", quiet))
        assert (await next_message(events))["method"] == "notifications/resources/updated"
        call.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await call
    await wait_until(lambda: cancelled_upstream(raw), timeout=10)


async def test_two_nodes_sharing_redis_answer_modern_requests_and_share_changes(redis_server, upstream):
    """No session: either node answers. A change only node B hears of (the upstream tells the
    session that made it) reaches a listen stream on node A through the shared change feed."""
    redis_server.flush()
    config = {"redis_url": redis_server.url}
    async with (
        mcp_gateway([("everything", upstream.url)], config=test_config(**config)) as (url_a, _),
        mcp_gateway([("everything", upstream.url)], config=test_config(**config)) as (url_b, _),
        httpx.AsyncClient(timeout=15) as http,
    ):
        a, b = ModernRaw(http, url_a), ModernRaw(http, url_b)
        for raw in (a, b, a):
            _, reply = await raw.call("tools/call", {"name": "everything__test_echo", "arguments": {"text": raw.url}})
            assert reply["result"]["content"][0]["text"] == raw.url
        async with listening(a, {"toolsListChanged": True, "promptsListChanged": True}) as (sid, _, events):
            await b.call("tools/call", {"name": "everything__test_trigger_prompt_change", "arguments": {}})
            changed = await next_message(events)
            assert changed["method"] == "notifications/prompts/list_changed"
            assert changed["params"]["_meta"] == {SUBSCRIPTION: sid}
