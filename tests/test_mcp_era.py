"""Era translation in federation: the gateway discovers each upstream's era (server/discover, then
initialize) and speaks it, whichever era its own client speaks. Real SDK servers upstream
(tests/fixtures/mcp_modern_upstream.py, tests/fixtures/mcp_upstream.py) and real SDK clients."""

from __future__ import annotations

import asyncio
import contextlib
import json

import httpx
import mcp_types as types
import pytest
from mcp import Client
from mcp.shared.exceptions import MCPError
from starlette.responses import JSONResponse

from tests.conftest import free_port, serve_app, wait_until
from tests.fixtures import mcp_modern_upstream, mcp_upstream
from tests.fixtures.mcp_support import GetStream, ModernRaw, RawSession, listening, mcp_gateway, next_message

pytestmark = pytest.mark.filterwarnings(
    "ignore::DeprecationWarning", "ignore::mcp.shared.exceptions.MCPDeprecationWarning"
)


@contextlib.asynccontextmanager
async def gateway_over(app, name: str, **options):
    """A gateway federating ``app`` (served in this loop) as ``name``: (its /mcp URL, the service)."""
    async with serve_app(app) as upstream, mcp_gateway([(name, upstream + "/mcp")], **options) as (url, service):
        yield url, service


@pytest.fixture
async def modern_gw():
    async with gateway_over(mcp_modern_upstream.app(), "modern") as gw:
        yield gw


def recording(app, seen: list[str]):
    """``app``, noting the JSON-RPC method of each POST it is sent."""

    async def asgi(scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "POST":
            return await app(scope, receive, send)
        first = await receive()
        with contextlib.suppress(ValueError):
            seen.append(json.loads(first.get("body") or b"{}").get("method"))
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return first
            return await receive()

        await app(scope, replay, send)

    return asgi


async def sampling(context, params: types.CreateMessageRequestParams):
    return types.CreateMessageResult(
        role="assistant", content=types.TextContent(text=f"nice ({params.messages[0].content.text})"), model="stub"
    )


async def elicitation(context, params):
    return types.ElicitResult(action="accept", content={"name": "Ada"})


async def roots(context):
    return types.ListRootsResult(roots=[types.Root(uri="file:///work/a"), types.Root(uri="file:///work/b")])


async def test_a_modern_upstream_is_discovered_and_spoken(modern_gw):
    url, service = modern_gw
    client = service.upstreams.clients["modern"]
    assert (client.era, client.protocol_version, client.session_id) == ("modern", "2026-07-28", None)
    assert client.server_info["name"] == "modern-upstream"
    assert service.upstreams.status() == [
        {
            "name": "modern",
            "url": client.url,
            "era": "modern",
            "protocol_version": "2026-07-28",
            "connected": True,
            "last_error": None,
        }
    ]
    async with Client(url, mode="legacy") as legacy:
        names = {t.name for t in (await legacy.list_tools()).tools}
        assert {"modern__echo", "modern__greet", "modern__locate"} <= names
        res = await legacy.call_tool("modern__echo", {"text": "hi"})
        assert not res.is_error and res.content[0].text == "hi"
        # the envelope goes upstream (the gateway's own, not its client's)
        res = await legacy.call_tool("modern__seen_meta", {})
        assert json.loads(res.content[0].text) == [
            "io.modelcontextprotocol/clientCapabilities",
            "io.modelcontextprotocol/clientInfo",
            "io.modelcontextprotocol/logLevel",
            "io.modelcontextprotocol/protocolVersion",
        ]
        # x-mcp-header arguments are mirrored (the SDK refuses a call without them), plain or base64
        for region in ("eu-west-1", "Zürich "):
            res = await legacy.call_tool("modern__locate", {"region": region})
            assert not res.is_error and res.content[0].text == f"region={region}"
        read = await legacy.read_resource("test://watched")
        assert read.contents[0].text == "watched content"
        with pytest.raises(MCPError) as missing:  # the handshake era's code for it
            await legacy.read_resource("test://nope")
        assert (missing.value.error.code, missing.value.error.data) == (-32002, {"uri": "test://nope"})
    async with Client(url) as modern:  # and the modern era's
        with pytest.raises(MCPError) as missing:
            await modern.read_resource("test://nope")
        assert (missing.value.error.code, missing.value.error.data) == (-32602, {"uri": "test://nope"})


async def test_progress_and_logs_of_a_modern_upstream_reach_a_legacy_client(modern_gw):
    url, _ = modern_gw
    logs, progress = [], []

    async def on_log(params: types.LoggingMessageNotificationParams):
        logs.append((params.level, params.data))

    async def on_progress(value, total, message):
        progress.append((value, total))

    async with Client(url, mode="legacy", logging_callback=on_log) as legacy:
        await legacy.set_logging_level("info")
        res = await legacy.call_tool("modern__work", {}, progress_callback=on_progress)
        assert res.content[0].text == "worked"
        assert progress == [(1, 2), (2, 2)] and logs == [("info", "working")]
        logs.clear()
        await legacy.set_logging_level("error")  # filtered per session, as for a handshake-era upstream
        await legacy.call_tool("modern__work", {})
        assert logs == []


async def test_a_legacy_client_answers_a_modern_upstreams_input_requests(modern_gw):
    """input_required results become server->client requests on the legacy client's session; the
    gateway retries upstream with the answers and the requestState, over as many rounds as needed."""
    url, _ = modern_gw
    metas = []

    async def recording_elicitation(context, params):
        metas.append(params.meta)
        return await elicitation(context, params)

    async with Client(
        url,
        mode="legacy",
        sampling_callback=sampling,
        elicitation_callback=recording_elicitation,
        list_roots_callback=roots,
    ) as legacy:
        res = await legacy.call_tool("modern__greet", {})
        assert res.content[0].text == "Hello, Ada"
        assert metas == [None]  # the key the gateway passes along internally is not the session's business
        res = await legacy.call_tool("modern__ask_llm", {"prompt": "the sky"})
        assert res.content[0].text == "LLM says: nice (the sky)"
        res = await legacy.call_tool("modern__count_roots", {})
        assert res.content[0].text == "2 roots: file:///work/a, file:///work/b"
        res = await legacy.call_tool("modern__greet_and_ask", {})  # two rounds: elicitation, then sampling
        assert res.content[0].text == "Ada: nice (Say something nice about Ada)"


async def test_a_refused_input_request_ends_the_call(modern_gw):
    url, _ = modern_gw
    async with Client(url, mode="legacy") as legacy:  # declares no elicitation: the gateway refuses it
        # as with a handshake-era upstream (tests/test_mcp_client.py), the refusal is the call's error
        with pytest.raises(MCPError, match="did not declare the elicitation capability"):
            await legacy.call_tool("modern__greet", {})


async def test_listen_notifications_of_a_modern_upstream_reach_legacy_sessions_and_modern_listeners(modern_gw):
    url, service = modern_gw
    async with httpx.AsyncClient(timeout=15) as http:
        raw = RawSession(http, url)
        await raw.initialize()
        assert (await raw.call("resources/subscribe", {"uri": "test://watched"}))["result"] == {}
        modern = ModernRaw(http, url)
        wanted = {"toolsListChanged": True, "resourceSubscriptions": ["test://watched"]}
        async with GetStream(raw) as stream, listening(modern, wanted) as (_, ack, events):
            assert ack["method"] == "notifications/subscriptions/acknowledged"
            await raw.call("tools/call", {"name": "modern__touch", "arguments": {}})
            updated = json.loads(await stream.until("notifications/resources/updated"))
            assert updated["params"]["uri"] == "test://watched"
            heard = await next_message(events)
            assert (heard["method"], heard["params"]["uri"]) == ("notifications/resources/updated", "test://watched")

            await raw.call("tools/call", {"name": "modern__add_tool", "arguments": {}})
            await stream.until("notifications/tools/list_changed")
            heard = await next_message(events)
            assert heard["method"] == "notifications/tools/list_changed"
            listed = (await raw.call("tools/list"))["result"]["tools"]
            assert "modern__added" in {t["name"] for t in listed}
        # the last subscriber gone, the upstream's listen stream drops the resource
        assert (await raw.call("resources/unsubscribe", {"uri": "test://watched"}))["result"] == {}
        client = service.upstreams.clients["modern"]
        await wait_until(lambda: asyncio.sleep(0, result=not client.modern.subscribed))


async def test_a_modern_client_through_a_modern_upstream(modern_gw):
    url, _ = modern_gw
    async with Client(url) as modern:  # auto mode: discovers the gateway's modern era
        assert modern.protocol_version == "2026-07-28"
        res = await modern.call_tool("modern__echo", {"text": "both modern"})
        assert res.content[0].text == "both modern"
        res = await modern.call_tool("modern__locate", {"region": "ap-south"})
        assert res.content[0].text == "region=ap-south"
        # the upstream's input request needs a capability this client did not declare: -32021
        with pytest.raises(MCPError) as refused:
            await modern.call_tool("modern__greet", {})
        assert refused.value.error.code == -32021
    # input-required results both sides of the gateway (mrtr.py on its modern face)
    async with Client(
        url, sampling_callback=sampling, elicitation_callback=elicitation, list_roots_callback=roots
    ) as modern:
        assert (await modern.call_tool("modern__greet", {})).content[0].text == "Hello, Ada"
        assert (await modern.call_tool("modern__count_roots", {})).content[0].text.startswith("2 roots")
        res = await modern.call_tool("modern__greet_and_ask", {})
        assert res.content[0].text == "Ada: nice (Say something nice about Ada)"
    # the upstream's own key names the request the gateway's client is asked
    async with httpx.AsyncClient(timeout=15) as http:
        caps = {"io.modelcontextprotocol/clientCapabilities": {"elicitation": {}}}
        _, reply = await ModernRaw(http, url).call("tools/call", {"name": "modern__greet", "arguments": {}}, **caps)
        assert reply["result"]["resultType"] == "input_required"
        assert list(reply["result"]["inputRequests"]) == ["tests.fixtures.mcp_modern_upstream:ask_name"]


async def test_a_legacy_upstream_is_found_by_falling_back_and_serves_a_modern_client():
    seen: list[str] = []
    upstream = mcp_upstream.build("legacy-upstream").streamable_http_app(event_store=mcp_upstream.MemoryEventStore())
    async with gateway_over(recording(mcp_upstream.handshake_only(upstream), seen), "old") as (url, service):
        client = service.upstreams.clients["old"]
        assert client.era == "legacy" and client.protocol_version == "2025-11-25" and client.session_id
        assert seen[:3] == ["server/discover", "initialize", "notifications/initialized"]
        async with Client(url) as modern:
            assert modern.protocol_version == "2026-07-28"
            res = await modern.call_tool("old__test_echo", {"text": "across eras"})
            assert res.content[0].text == "across eras"
        # the legacy upstream's GET stream feeds the modern clients' listen streams
        async with httpx.AsyncClient(timeout=15) as http:
            raw = ModernRaw(http, url)
            async with listening(raw, {"toolsListChanged": True}) as (_, _ack, events):
                _, reply = await raw.call("tools/call", {"name": "old__test_trigger_tool_change", "arguments": {}})
                assert "error" not in reply
                assert (await next_message(events))["method"] == "notifications/tools/list_changed"


async def test_an_upstream_that_lies_about_its_era_fails_clearly():
    async with gateway_over(mcp_modern_upstream.liar(), "liar") as (url, service):
        client = service.upstreams.clients["liar"]
        assert client.era == "modern" and not client.connected
        assert client.last_error == (
            "announced 2026-07-28 in server/discover, then answered tools/list with: "
            "-32022 Unsupported protocol version"
        )
        assert service.upstreams.m_up.labels("liar")._value.get() == 0
        assert service.upstreams.status()[0]["connected"] is False
        async with Client(url, mode="legacy") as legacy:
            assert not any(t.name.startswith("liar__") for t in (await legacy.list_tools()).tools)


async def test_an_upstream_of_only_later_revisions_is_incompatible():
    """-32022 naming no revision the gateway speaks is no reason to try initialize: it is said so."""

    async def future_only(scope, receive, send):
        if scope["type"] == "http":
            error = {"code": -32022, "message": "Unsupported protocol version", "data": {"supported": ["2030-01-01"]}}
            await JSONResponse({"jsonrpc": "2.0", "id": None, "error": error}, status_code=400)(scope, receive, send)

    seen: list[str] = []
    async with gateway_over(recording(future_only, seen), "future") as (_, service):
        client = service.upstreams.clients["future"]
        assert client.last_error == "speaks only protocol versions ['2030-01-01']" and client.era is None
        assert "initialize" not in seen


async def test_an_upstreams_era_can_be_pinned():
    """A dual-era server is spoken modern when discovered; pinned ``legacy``, it gets the handshake
    (for tools that still ask through a session); pinned ``modern``, a handshake-only one is down."""
    dual = mcp_upstream.build("dual").streamable_http_app(event_store=mcp_upstream.MemoryEventStore())
    legacy_only = mcp_upstream.handshake_only(
        mcp_upstream.build("old").streamable_http_app(event_store=mcp_upstream.MemoryEventStore())
    )
    async with serve_app(dual) as dual_url, serve_app(legacy_only) as old_url:
        pinned = [
            {"name": "auto", "url": dual_url + "/mcp"},
            {"name": "pinned", "url": dual_url + "/mcp", "era": "legacy"},
            {"name": "wrong", "url": old_url + "/mcp", "era": "modern"},
        ]
        async with mcp_gateway(pinned) as (url, service):
            eras = {s["name"]: (s["era"], s["connected"]) for s in service.upstreams.status()}
            assert eras == {"auto": ("modern", True), "pinned": ("legacy", True), "wrong": (None, False)}
            wrong = service.upstreams.clients["wrong"]
            assert wrong.last_error == "is pinned to 2026-07-28 and does not answer server/discover for it"
            async with Client(url, mode="legacy", elicitation_callback=elicitation) as legacy:
                res = await legacy.call_tool("pinned__test_elicitation", {"message": "name?"})
                assert res.content[0].text == 'User response: action=accept, content={"name": "Ada"}'


async def test_a_modern_upstreams_resource_subscriptions_outlive_its_restart():
    port = free_port()
    async with contextlib.AsyncExitStack() as first:
        upstream = await first.enter_async_context(serve_app(mcp_modern_upstream.app(), port, grace_s=0.2))
        async with (
            mcp_gateway([("modern", upstream + "/mcp")]) as (url, service),
            httpx.AsyncClient(timeout=15) as http,
        ):
            raw = RawSession(http, url)
            await raw.initialize()
            assert (await raw.call("resources/subscribe", {"uri": "test://watched"}))["result"] == {}
            wire = service.upstreams.clients["modern"].modern
            assert wire.listening.is_set()
            await first.aclose()  # the upstream stops: its listen stream ends
            await wait_until(lambda: asyncio.sleep(0, result=not wire.listening.is_set()))
            async with serve_app(mcp_modern_upstream.app(), port, grace_s=0.2), GetStream(raw) as stream:
                async with asyncio.timeout(20):
                    await wire.listening.wait()  # listening again, the same filter
                await raw.call("tools/call", {"name": "modern__touch", "arguments": {}})
                updated = json.loads(await stream.until("notifications/resources/updated"))
                assert updated["params"]["uri"] == "test://watched"


async def test_a_call_to_a_modern_upstream_is_cancelled_by_closing_its_stream():
    async with gateway_over(mcp_modern_upstream.app(), "modern", call_timeout_s=1.0) as (url, _):
        async with Client(url, mode="legacy") as legacy:
            res = await legacy.call_tool("modern__hang", {})
            assert res.is_error and "did not answer" in res.content[0].text

            async def cancelled():
                return (await legacy.call_tool("modern__hang_ended", {})).content[0].text == "cancelled"

            await wait_until(cancelled, timeout=10, interval=0.1)
