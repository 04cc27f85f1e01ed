"""Federation: naming policies across upstreams, the rug-pull defence, list_changed on the GET
stream, a changing upstream set, and one MCP session served by two gateways sharing Redis."""

from __future__ import annotations

import asyncio
import itertools

import httpx
import httpx2
import mcp_types as types
import pytest
from mcp import Client, ClientSession
from mcp.client.streamable_http import streamable_http_client

from gateway.core.backends import EmbeddedBackend
from protocols.mcp.client import Upstream, UpstreamClient
from protocols.mcp.federation import UpstreamSet, tool_hash
from tests.conftest import test_config, wait_until
from tests.fixtures.mcp_support import GetStream, RawSession, UpstreamProcess, mcp_gateway, sse_messages

pytestmark = pytest.mark.filterwarnings(
    "ignore::DeprecationWarning", "ignore::mcp.shared.exceptions.MCPDeprecationWarning"
)


@pytest.fixture(scope="module")
def upstreams():
    with UpstreamProcess("a") as a, UpstreamProcess("b") as b:
        yield a, b


async def tool_names(url: str) -> list[str]:
    async with Client(url, mode="legacy") as client:
        return [t.name for t in (await client.list_tools()).tools]


async def test_prefix_naming_is_the_default(upstreams):
    a, b = upstreams
    async with mcp_gateway([("a", a.url), ("b", b.url)]) as (url, server):
        names = await tool_names(url)
        assert "a__test_echo" in names and "b__test_echo" in names and "test_echo" not in names
        async with Client(url, mode="legacy") as client:
            assert (await client.call_tool("b__test_echo", {"text": "via b"})).content[0].text == "via b"
            prompts = [p.name for p in (await client.list_prompts()).prompts]
            assert "a__test_simple_prompt" in prompts and "b__test_simple_prompt" in prompts
        assert server.upstreams.resolve_tool("b__test_echo")[0].name == "b"


async def test_pass_through_prefixes_only_collisions(upstreams):
    a, b = upstreams
    async with mcp_gateway([("a", a.url)], naming="pass-through") as (url, _):
        assert "test_echo" in await tool_names(url)  # one upstream: names unchanged
    async with mcp_gateway([("a", a.url), ("b", b.url)], naming="pass-through") as (url, _):
        names = await tool_names(url)
        assert "test_echo" not in names and {"a__test_echo", "b__test_echo"} <= set(names)


def _client(name: str, tools: list[str]) -> UpstreamClient:
    c = UpstreamClient(Upstream(name, f"http://{name}.invalid/mcp"), http=None, on_notification=None)
    c.catalog["tools"] = [{"name": t, "inputSchema": {"type": "object"}} for t in tools]
    return c


async def test_naming_policy_table():
    """pass-through keeps unique names, prefixes every offer of a shared one and any name that
    clashes with a gateway tool; prefix mode prefixes everything."""
    kv = EmbeddedBackend().kv
    for naming, expected in [
        ("pass-through", {"only_a", "a__shared", "b__shared", "only_b", "b__echo"}),
        ("prefix", {"a__only_a", "a__shared", "b__shared", "b__only_b", "b__echo"}),
    ]:
        ups = UpstreamSet([], kv=kv, naming=naming)
        ups.clients = {"a": _client("a", ["only_a", "shared"]), "b": _client("b", ["shared", "only_b", "echo"])}
        ups.set_local_names({"echo", "find_agents", "send_task"})
        ups._reindex()
        assert {t["name"] for t in ups.tools()} == expected
    with pytest.raises(ValueError):
        UpstreamSet([], kv=kv, naming="whatever")


async def test_rug_pull_hides_changed_tool_until_repinned():
    with UpstreamProcess("u") as up:
        async with mcp_gateway([("u", up.url)]) as (url, server), httpx.AsyncClient(timeout=15) as http:
            raw = RawSession(http, url)
            await raw.initialize()
            before = {t["name"]: t for t in (await raw.call("tools/list"))["result"]["tools"]}
            assert "u__mutable_tool" in before
            async with GetStream(raw) as stream:
                res = await raw.call("tools/call", {"name": "u__test_mutate_tool", "arguments": {}})
                assert res["result"]["content"][0]["text"] == "mutated"
                await stream.until("notifications/tools/list_changed")  # the gateway tells its client
            await wait_until(lambda: asyncio.sleep(0, result=bool(server.upstreams.quarantined())), timeout=10)
            [q] = server.upstreams.quarantined()
            assert q["upstream"] == "u" and q["tool"] == "mutable_tool" and q["pinned_sha256"] != q["current_sha256"]
            assert q["pinned_sha256"] == tool_hash({**before["u__mutable_tool"], "name": "mutable_tool"})
            names = [t["name"] for t in (await raw.call("tools/list"))["result"]["tools"]]
            assert "u__mutable_tool" not in names and "u__test_echo" in names
            res = await raw.call("tools/call", {"name": "u__mutable_tool", "arguments": {"x": 1}})
            assert res["result"]["isError"] and "changed its definition" in res["result"]["content"][0]["text"]
            metrics = (await http.get(url.replace("/mcp", "/metrics"))).text
            assert 'interlace_mcp_tool_definition_changes_total{tool="mutable_tool",upstream="u"} 1.0' in metrics
            assert 'interlace_mcp_quarantined_tools{upstream="u"} 1.0' in metrics
            assert await server.upstreams.repin("u", "mutable_tool") == ["mutable_tool"]
            assert server.upstreams.quarantined() == []
            res = await raw.call("tools/call", {"name": "u__mutable_tool", "arguments": {"x": 2}})
            assert res["result"]["content"][0]["text"] == "x=2"


@pytest.fixture
async def two_sessions(upstreams):
    """Two client sessions on a gateway that federates upstream ``a`` as ``u``."""
    async with mcp_gateway([("u", upstreams[0].url)]) as (url, _), httpx.AsyncClient(timeout=15) as http:
        first, second = RawSession(http, url), RawSession(http, url)
        await first.initialize()
        await second.initialize()
        yield first, second


async def test_resource_updates_reach_subscribers_on_their_get_stream(two_sessions):
    raw, other = two_sessions
    assert (await raw.call("resources/subscribe", {"uri": "test://watched-resource"}))["result"] == {}
    async with GetStream(raw) as stream:
        await other.call("tools/call", {"name": "u__test_touch_resource", "arguments": {}})
        assert "test://watched-resource" in await stream.until("notifications/resources/updated")
    assert (await raw.call("resources/unsubscribe", {"uri": "test://watched-resource"}))["result"] == {}


async def test_unrelated_upstream_logs_reach_sessions_that_asked_for_logs(two_sessions):
    listener, caller = two_sessions
    await listener.call("logging/setLevel", {"level": "warning"})
    async with GetStream(listener) as stream:
        await caller.call("tools/call", {"name": "u__test_log_unrelated", "arguments": {}})
        assert "disk almost full" in await stream.until("notifications/message")


async def test_rug_pull_on_reconnect_is_caught():
    """The upstream restarts with a swapped definition and no list_changed: the new session's
    catalog is checked against the pins."""
    up = UpstreamProcess("u").start()
    try:
        async with mcp_gateway([("u", up.url)]) as (url, server):
            assert "u__mutable_tool" in await tool_names(url)
            up.stop()
            up = UpstreamProcess("u", port=up.port, mutated=True).start()
            async with Client(url, mode="legacy") as client:

                async def quarantined():
                    await client.call_tool("u__test_echo", {"text": "poke"})  # finds the session gone
                    return server.upstreams.quarantined()

                [q] = await wait_until(quarantined, timeout=15, interval=0.2)
                assert q["tool"] == "mutable_tool" and "id_rsa" in q["definition"]["description"]
                names = [t.name for t in (await client.list_tools()).tools]
                assert "u__mutable_tool" not in names and "u__test_echo" in names
    finally:
        up.stop()


async def test_pins_live_in_the_shared_store():
    """The pin is in the shared key/value store: a definition that differs from it is caught on
    any refresh (another node, a reconnect), not only by the node that saw it first."""
    with UpstreamProcess("u") as up:
        async with mcp_gateway([("u", up.url)], config=test_config()) as (url, server):
            kv = server.runtime.backend.kv
            key = "mcp:pin:u:mutable_tool"
            pinned = await kv.get(key)
            assert pinned
            await kv.set(key, "0" * 64, 3600)  # as if the first-seen definition had been another one
            await server.upstreams.refresh_now("u")
            assert [q["tool"] for q in server.upstreams.quarantined()] == ["mutable_tool"]


async def test_set_upstreams_adds_and_removes(upstreams):
    a, b = upstreams
    async with mcp_gateway([("a", a.url)]) as (url, server):
        await server.upstreams.set_upstreams([("a", a.url), ("b", b.url)])
        names = await tool_names(url)
        assert "b__test_echo" in names
        await server.upstreams.set_upstreams([("b", b.url)])
        names = await tool_names(url)
        assert "a__test_echo" not in names and "b__test_echo" in names
        assert "a" not in {a["name"] for a in (await _find(url))}


async def _find(url):
    async with Client(url, mode="legacy") as client:
        return (await client.call_tool("find_agents", {"query": ""})).structured_content["agents"]


class Alternate(httpx2.AsyncBaseTransport):
    """Sends each POST to the next gateway in turn (GETs to the first): a load balancer that
    never keeps a session on one node."""

    def __init__(self, ports: list[int]) -> None:
        self.inner = httpx2.AsyncHTTPTransport()
        self.ports = itertools.cycle(ports)
        self.first = ports[0]
        self.seen: list[int] = []

    async def handle_async_request(self, request):
        port = next(self.ports) if request.method == "POST" else self.first
        self.seen.append(port)
        request.url = request.url.copy_with(port=port)
        return await self.inner.handle_async_request(request)

    async def aclose(self):
        await self.inner.aclose()


async def test_one_session_across_two_gateways_sharing_redis(redis_server):
    redis_server.flush()
    with UpstreamProcess("u") as up:
        cfg = {"redis_url": redis_server.url}
        async with (
            mcp_gateway([("u", up.url)], config=test_config(**cfg)) as (url_a, _),
            mcp_gateway([("u", up.url)], config=test_config(**cfg)) as (url_b, _),
        ):
            ports = [int(u.split(":")[2].split("/")[0]) for u in (url_a, url_b)]
            transport = Alternate(ports)
            seen = {}

            async def sampling(context, params):
                seen["prompt"] = params.messages[0].content.text
                return types.CreateMessageResult(role="assistant", content=types.TextContent(text="42"), model="stub")

            async with (
                httpx2.AsyncClient(transport=transport, timeout=30) as http,
                streamable_http_client(url_a, http_client=http) as streams,
                ClientSession(streams[0], streams[1], sampling_callback=sampling) as session,
            ):
                await session.initialize()
                for i in range(4):
                    res = await session.call_tool("u__test_echo", {"text": f"n{i}"})
                    assert res.content[0].text == f"n{i}"
                # The sampling answer is POSTed to the other node than the one running the call.
                res = await session.call_tool("u__test_sampling", {"prompt": "meaning?"})
                assert res.content[0].text == "LLM response: 42" and seen["prompt"] == "meaning?"
                res = await session.call_tool("echo", {"message": "agent via either node"})
                assert res.content[0].text == "agent via either node"
            assert set(transport.seen) == set(ports)

            # Resume on node B a stream that node A started, then end the session on B: A forgets it.
            async with httpx.AsyncClient(timeout=15) as http:
                raw = RawSession(http, url_a)
                await raw.initialize()
                body = {
                    "jsonrpc": "2.0",
                    "id": 3,
                    "method": "tools/call",
                    "params": {"name": "u__test_tool_with_progress", "arguments": {}, "_meta": {"progressToken": 1}},
                }
                last = None
                async with http.stream("POST", url_a, headers=raw.headers(), json=body) as resp:
                    async for line in resp.aiter_lines():
                        if line.startswith("id:"):
                            last = line[3:].strip()
                        if "notifications/progress" in line:
                            break
                resumed = await http.get(
                    url_b, headers={**raw.headers(Accept="text/event-stream"), "Last-Event-ID": last}
                )
                messages = await sse_messages(resumed.content)
                assert messages[-1]["id"] == 3 and "result" in messages[-1]
                assert (await http.delete(url_b, headers=raw.headers())).status_code == 200
                gone = await raw.post({"jsonrpc": "2.0", "id": 9, "method": "ping"})
                assert gone.status_code == 404


async def test_registry_records_with_an_mcp_endpoint_become_upstreams():
    import time

    from registry.identity import Identity
    from registry.records import sign
    from schemas.agent_record import AgentRecord, Tombstone

    with UpstreamProcess("weather") as up:
        async with mcp_gateway(follow_registry=True, registry_poll_s=0.05) as (url, server):
            runtime, me, now = server.runtime, Identity.generate(), int(time.time())
            record = sign(
                AgentRecord.model_validate(
                    {
                        "name": "weather",
                        "description": "Forecasts over MCP",
                        "version": "1.0.0",
                        "skills": [
                            {"id": "forecast", "name": "Forecast", "description": "forecasts", "tags": ["weather"]}
                        ],
                        "endpoints": {"mcp": up.url},
                        "did": me.did,
                        "seq": 1,
                        "issued_at": now,
                        "expires_at": now + 600,
                        "network": runtime.config.network,
                        "home_node": "test",
                    }
                ),
                me,
            )
            await runtime.registry.submit(record)

            async def federated():
                return "weather__test_echo" in await tool_names(url)

            await wait_until(federated, timeout=15, interval=0.1)
            names = await tool_names(url)
            assert "weather" not in names  # an MCP agent offers its own tools, not a send-a-message tool
            tomb = sign(Tombstone(did=me.did, seq=2, issued_at=int(time.time()), network=runtime.config.network), me)
            await runtime.registry.submit(tomb)

            async def gone():
                return "weather__test_echo" not in await tool_names(url)

            await wait_until(gone, timeout=15, interval=0.1)


async def test_drift_shows_in_the_registry_until_the_owner_re_registers():
    import time

    from registry.identity import Identity
    from registry.records import sign
    from schemas.agent_record import AgentRecord

    me = Identity.generate()

    def record(seq: int) -> dict:
        now = int(time.time())
        return sign(
            AgentRecord.model_validate(
                {
                    "name": "shifty",
                    "version": "1",
                    "skills": [{"id": "tools", "name": "Tools"}],
                    "endpoints": {"mcp": up.url},
                    "did": me.did,
                    "seq": seq,
                    "issued_at": now,
                    "expires_at": now + 600,
                    "network": "interlace",
                    "home_node": "test",
                }
            ),
            me,
        ).dump()

    with UpstreamProcess("shifty") as up:
        async with mcp_gateway(registry_poll_s=0.05) as (url, server), httpx.AsyncClient(timeout=15) as http:
            base = url.removesuffix("/mcp")
            assert (await http.post(f"{base}/registry/agents", json=record(1))).status_code == 201

            async def federated():
                return "shifty__mutable_tool" in await tool_names(url)

            await wait_until(federated, timeout=15, interval=0.1)
            async with Client(url, mode="legacy") as client:
                await client.call_tool("shifty__test_mutate_tool", {})  # the upstream changes the tool

            async def drift():
                shown = (await http.get(f"{base}/registry/agents/{me.did}")).json()
                return shown["mcp_tool_drift"]

            [q] = await wait_until(drift, timeout=15, interval=0.1)
            assert q["tool"] == "mutable_tool" and q["pinned_sha256"] != q["current_sha256"]
            assert "shifty__mutable_tool" not in await tool_names(url)
            assert (await http.post(f"{base}/registry/agents", json=record(2))).status_code == 200  # re-registers

            async def repinned():
                return (await drift()) == [] and "shifty__mutable_tool" in await tool_names(url)

            await wait_until(repinned, timeout=15, interval=0.1)
