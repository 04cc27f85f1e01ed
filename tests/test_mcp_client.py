"""The official Python `mcp` client (2.3.0) against the gateway: high-level Client in legacy and
auto mode (the 2026-07-28 era in depth: tests/test_mcp_modern.py), the low-level ClientSession,
and the relays (sampling, elicitation, progress, logging), resources, prompts, completion,
pagination and SSE resumption."""

from __future__ import annotations

import asyncio
import json

import httpx
import mcp_types as types
import pytest
from mcp import Client, ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from tests.conftest import wait_until
from tests.fixtures.mcp_support import RawSession, UpstreamProcess, mcp_gateway, sse_ids, sse_messages

pytestmark = pytest.mark.filterwarnings(
    "ignore::DeprecationWarning", "ignore::mcp.shared.exceptions.MCPDeprecationWarning"
)


@pytest.fixture(scope="module")
def upstream():
    with UpstreamProcess("everything") as up:
        yield up


@pytest.fixture
async def gw(upstream):
    async with mcp_gateway([("everything", upstream.url)]) as (url, server):
        yield url, server


async def test_legacy_client_lists_and_calls_tools(gw):
    url, _ = gw
    async with Client(url, mode="legacy") as client:
        assert client.protocol_version == "2025-11-25"
        names = [t.name for t in (await client.list_tools()).tools]
        assert names[:3] == ["find_agents", "send_task", "echo"]
        assert "everything__test_simple_text" in names and "test_simple_text" not in names  # prefix by default
        res = await client.call_tool("everything__test_echo", {"text": "hi"})
        assert not res.is_error and res.content[0].text == "hi" and res.structured_content == {"result": "hi"}
        res = await client.call_tool("everything__test_image_content", {})
        assert res.content[0].type == "image" and res.content[0].mime_type == "image/png"
        res = await client.call_tool("everything__test_error_handling", {})
        assert res.is_error
        res = await client.call_tool("echo", {"message": "to the agent"})
        assert not res.is_error and res.content[0].text == "to the agent"


async def test_auto_mode_is_modern_and_legacy_mode_keeps_its_session(gw):
    """The same gateway, both eras: auto mode's server/discover probe is answered (no fallback to
    initialize), legacy mode still opens a 2025-11-25 session; both see the same tools."""
    url, _ = gw
    seen = {}
    for mode, version in (("auto", "2026-07-28"), ("legacy", "2025-11-25")):
        async with Client(url, mode=mode) as client:
            assert client.protocol_version == version and client.server_info.name == "interlace"
            assert client.server_capabilities.tools is not None
            res = await client.call_tool("everything__test_simple_text", {})
            assert res.content[0].text == "This is a simple text response for testing."
            seen[mode] = [t.name for t in (await client.list_tools()).tools]
    assert seen["auto"] == seen["legacy"]
    async with httpx.AsyncClient(timeout=10) as http:
        meta = {
            "io.modelcontextprotocol/protocolVersion": "2026-07-28",
            "io.modelcontextprotocol/clientCapabilities": {},
        }
        resp = await http.post(
            url,
            json={"jsonrpc": "2.0", "id": 1, "method": "server/discover", "params": {"_meta": meta}},
            headers={
                "Accept": "application/json, text/event-stream",
                "MCP-Protocol-Version": "2026-07-28",
                "Mcp-Method": "server/discover",
            },
        )
        assert resp.status_code == 200 and "2026-07-28" in resp.json()["result"]["supportedVersions"]
        assert "mcp-session-id" not in resp.headers


async def test_lowlevel_client_session(gw):
    url, _ = gw
    async with streamable_http_client(url) as streams, ClientSession(streams[0], streams[1]) as session:
        init = await session.initialize()
        assert init.protocol_version == "2025-11-25" and init.server_info.name == "interlace"
        tools = await session.list_tools()
        assert "everything__test_echo" in {t.name for t in tools.tools}
        res = await session.call_tool("everything__test_echo", {"text": "low level"})
        assert res.content[0].text == "low level"
        assert (await session.send_ping()) is not None


async def test_sampling_and_elicitation_are_relayed_to_the_client(gw):
    url, _ = gw
    seen = {}

    async def sampling(context, params: types.CreateMessageRequestParams):
        seen["sampling"] = params.messages[0].content.text
        return types.CreateMessageResult(role="assistant", content=types.TextContent(text="four"), model="stub")

    async def elicitation(context, params):
        seen["elicitation"] = params.message
        return types.ElicitResult(action="accept", content={"username": "ada", "email": "ada@example.com"})

    async with Client(url, mode="legacy", sampling_callback=sampling, elicitation_callback=elicitation) as client:
        res = await client.call_tool("everything__test_sampling", {"prompt": "2+2?"})
        assert res.content[0].text == "LLM response: four" and seen["sampling"] == "2+2?"
        res = await client.call_tool("everything__test_elicitation", {"message": "who are you?"})
        assert "ada@example.com" in res.content[0].text and seen["elicitation"] == "who are you?"


async def test_upstream_withdrawing_its_request_cancels_it_at_the_client(gw):
    url, _ = gw
    state = {"cancelled": False}
    started = asyncio.Event()

    async def elicitation(context, params):
        started.set()
        try:
            await asyncio.Event().wait()  # a user who never answers
        except BaseException:
            state["cancelled"] = True
            raise

    async with Client(url, mode="legacy", elicitation_callback=elicitation) as client:
        res = await client.call_tool("everything__test_elicitation_gives_up", {})
        assert res.content[0].text.startswith("gave up")
        assert started.is_set()
        await wait_until(lambda: asyncio.sleep(0, result=state["cancelled"]), timeout=5)


async def test_sampling_refused_when_the_client_lacks_the_capability(gw):
    url, _ = gw
    async with Client(url, mode="legacy") as client:
        # The gateway answers the upstream's sampling request with an error; this upstream (the
        # SDK's MCPServer) turns it into the call's JSON-RPC error, which is relayed as is.
        with pytest.raises(MCPError, match="did not declare the sampling capability"):
            await client.call_tool("everything__test_sampling", {"prompt": "x"})


async def test_progress_and_logging_are_relayed(gw):
    url, _ = gw
    logs, progress = [], []

    async def on_log(params: types.LoggingMessageNotificationParams):
        logs.append((params.level, params.data))

    async def on_progress(value, total, message):
        progress.append(value)

    async with Client(url, mode="legacy", logging_callback=on_log) as client:
        await client.set_logging_level("debug")
        res = await client.call_tool("everything__test_tool_with_logging", {})
        assert not res.is_error
        assert [d for _, d in logs] == ["Tool execution started", "Tool processing data", "Tool execution completed"]
        res = await client.call_tool("everything__test_tool_with_progress", {}, progress_callback=on_progress)
        assert progress == [0, 50, 100]
        logs.clear()
        await client.set_logging_level("error")  # info messages are filtered out per session
        await client.call_tool("everything__test_tool_with_logging", {})
        assert logs == []


async def test_resources_prompts_and_completion(gw):
    url, _ = gw
    async with Client(url, mode="legacy") as client:
        uris = {str(r.uri) for r in (await client.list_resources()).resources}
        assert {"test://static-text", "test://static-binary", "test://watched-resource"} <= uris
        templates = (await client.list_resource_templates()).resource_templates
        assert [t.uri_template for t in templates] == ["test://template/{id}/data"]
        rr = await client.read_resource("test://template/42/data")
        assert json.loads(rr.contents[0].text)["id"] == "42"
        rr = await client.read_resource("test://static-binary")
        assert rr.contents[0].blob
        prompts = {p.name for p in (await client.list_prompts()).prompts}
        assert "everything__test_prompt_with_arguments" in prompts
        gp = await client.get_prompt("everything__test_prompt_with_arguments", {"arg1": "a", "arg2": "b"})
        assert "arg1='a'" in gp.messages[0].content.text
        done = await client.complete(
            types.PromptReference(name="everything__test_prompt_with_arguments"), {"name": "arg1", "value": "par"}
        )
        assert done.completion.values == ["paris", "park", "party"]
        await client.subscribe_resource("test://watched-resource")
        await client.unsubscribe_resource("test://watched-resource")


async def test_pagination_with_opaque_cursors(upstream):
    async with (
        mcp_gateway([("everything", upstream.url)], page_size=5) as (url, _),
        httpx.AsyncClient(timeout=10) as http,
    ):
        raw = RawSession(http, url)
        await raw.initialize()
        names, cursor, pages = [], None, 0
        while True:
            reply = await raw.call("tools/list", {"cursor": cursor} if cursor else {})
            page = reply["result"]
            assert len(page["tools"]) <= 5
            names += [t["name"] for t in page["tools"]]
            pages += 1
            cursor = page.get("nextCursor")
            if not cursor:
                break
        assert pages >= 4 and len(names) == len(set(names)) and "everything__test_mutate_tool" in names
        bad = await raw.call("tools/list", {"cursor": "not-a-cursor"})
        assert bad["error"]["code"] == -32602
        async with Client(url, mode="legacy") as client:  # the official client follows cursors too
            first = await client.list_tools()
            assert first.next_cursor and len(first.tools) == 5


async def test_sse_stream_resumes_with_last_event_id(gw):
    url, _ = gw
    async with httpx.AsyncClient(timeout=10) as http:
        raw = RawSession(http, url)
        await raw.initialize()
        body = {
            "jsonrpc": "2.0",
            "id": 7,
            "method": "tools/call",
            "params": {
                "name": "everything__test_tool_with_progress",
                "arguments": {},
                "_meta": {"progressToken": "p1"},
            },
        }
        first_id = None
        async with http.stream("POST", url, headers=raw.headers(), json=body) as resp:
            assert resp.headers["content-type"].startswith("text/event-stream")
            event_id = None
            async for line in resp.aiter_lines():
                if line.startswith("id:"):
                    event_id = line[3:].strip()
                if line.startswith("data:") and "notifications/progress" in line:
                    first_id = event_id
                    break  # drop the connection mid-call: not a cancellation
        assert first_id and first_id.endswith("-1")
        resp = await http.get(url, headers={**raw.headers(Accept="text/event-stream"), "Last-Event-ID": first_id})
        assert resp.status_code == 200
        ids, messages = await sse_ids(resp.content), await sse_messages(resp.content)
        assert first_id not in ids and len(set(ids)) == len(ids)
        assert [m["params"]["progress"] for m in messages if m.get("method") == "notifications/progress"] == [50, 100]
        assert messages[-1]["id"] == 7 and not messages[-1]["result"].get("isError")
        bad = await http.get(url, headers={**raw.headers(Accept="text/event-stream"), "Last-Event-ID": "nope-3"})
        assert bad.status_code == 400


async def test_upstream_stream_closed_mid_call_is_resumed(gw):
    """The upstream closes its SSE stream after a priming event (SSE polling); the gateway resumes
    it with GET + Last-Event-ID and its client sees one uninterrupted call."""
    url, _ = gw
    logs = []

    async def on_log(params):
        logs.append(params.data)

    async with Client(url, mode="legacy", logging_callback=on_log) as client:
        res = await client.call_tool("everything__test_reconnection", {})
        assert not res.is_error and res.content[0].text == "Reconnection test completed"
        assert logs == ["before the stream closes", "after the stream closed"]


async def test_get_stream_and_delete(gw):
    url, _ = gw
    async with httpx.AsyncClient(timeout=10) as http:
        raw = RawSession(http, url)
        await raw.initialize()
        async with http.stream("GET", url, headers=raw.headers(Accept="text/event-stream")) as resp:
            assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/event-stream")
            second = await http.get(url, headers=raw.headers(Accept="text/event-stream"))
            assert second.status_code == 409  # one GET stream per session
        assert (await http.delete(url, headers=raw.headers())).status_code == 200
        reply = await raw.post({"jsonrpc": "2.0", "id": 1, "method": "ping"})
        assert reply.status_code == 404
        assert (await http.delete(url, headers=raw.headers())).status_code == 404


async def test_one_pooled_upstream_session_serves_every_client(gw):
    url, server = gw
    upstream = server.upstreams.clients["everything"]
    sid, generation = upstream.session_id, upstream.generation
    async with Client(url, mode="legacy") as first, Client(url, mode="legacy") as second:
        results = await asyncio.gather(
            *(c.call_tool("everything__test_echo", {"text": str(i)}) for i in range(20) for c in (first, second))
        )
        assert sorted(r.content[0].text for r in results) == sorted(str(i) for i in range(20) for _ in (0, 1))
        await first.send_ping()
    assert upstream.session_id == sid and upstream.generation == generation == 1
