"""The pooled outbound client (gateway/core/http_client.py) and the MCP upstream client on it, against
a real aiohttp server on 127.0.0.1: connections reused, a connection the server closes, bounded
timeouts, large bodies (streamed, and refused past the bound), SSE answers relayed as they come."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from gateway.core import sse
from gateway.core.egress import Egress
from gateway.core.http_client import Disconnected, PooledClient, TimedOut, TransportError
from protocols.mcp.client import Upstream, UpstreamClient, UpstreamTimeout
from tests.conftest import free_port, wait_until

LOOPBACK = Egress(("loopback",))


@contextlib.asynccontextmanager
async def serving(app: web.Application) -> AsyncIterator[str]:
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


@contextlib.asynccontextmanager
async def pooled(**kw) -> AsyncIterator[PooledClient]:
    client = PooledClient(LOOPBACK, **kw)
    try:
        yield client
    finally:
        await client.aclose()


# ---- the pooled client ---------------------------------------------------------------------------


async def test_connections_are_reused_and_json_bodies_round_trip():
    peers: list = []

    async def echo(request: web.Request) -> web.Response:
        peers.append(request.transport.get_extra_info("peername"))
        return web.json_response({"got": await request.json(), "auth": request.headers.get("Authorization")})

    app = web.Application()
    app.router.add_post("/echo", echo)
    async with asyncio.timeout(20), serving(app) as url, pooled(base_url=url, headers={"Authorization": "x"}) as http:
        for i in range(20):
            reply = await http.request("POST", "/echo", json={"i": i})
            assert reply.status_code == 200 and reply.json() == {"got": {"i": i}, "auth": "x"}
        await asyncio.gather(*(http.request("POST", "/echo", json={"i": i}) for i in range(8)))
    assert len(set(peers[:20])) == 1  # one keep-alive connection for back-to-back calls
    assert len(set(peers)) <= 8  # concurrent calls: at most one connection each


async def test_a_connection_closed_unanswered_is_disconnected_not_sent_and_a_broken_body_is_sent():
    async def hang_up(request: web.Request) -> web.Response:
        request.transport.close()  # the request was read, nothing answered
        raise asyncio.CancelledError  # aiohttp's handler ends with the connection

    async def cut(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "application/json", "Content-Length": "1000"})
        await resp.prepare(request)
        await resp.write(b'{"partial": ')
        request.transport.close()
        return resp

    app = web.Application()
    app.router.add_post("/hang-up", hang_up)
    app.router.add_post("/cut", cut)
    async with asyncio.timeout(20), serving(app) as url, pooled(base_url=url) as http:
        with pytest.raises(Disconnected) as exc:
            await http.request("POST", "/hang-up", json={})
        assert exc.value.sent is False
        with pytest.raises(TransportError) as broken:
            await http.request("POST", "/cut", json={})
        assert not isinstance(broken.value, Disconnected) or broken.value.sent is True


async def test_timeouts_are_bounded():
    release = asyncio.Event()

    async def silent(request: web.Request) -> web.Response:
        await release.wait()
        return web.json_response({})

    app = web.Application()
    app.router.add_post("/silent", silent)
    async with asyncio.timeout(20), serving(app) as url:
        async with pooled(base_url=url, timeout_s=0.3) as http:
            with pytest.raises(TimedOut):  # the client's default bound
                await http.request("POST", "/silent", json={})
            with pytest.raises(TimedOut):  # a call's own bound
                await http.request("POST", "/silent", json={}, timeout=0.2)
        async with pooled(base_url=url, connect_timeout_s=2.0) as http:
            closed = f"http://127.0.0.1:{free_port()}/x"
            with pytest.raises(TransportError, match="connection failed"):
                await http.request("POST", closed, json={})
        release.set()


async def test_large_bodies_are_read_whole_within_the_bound_and_streams_arrive_as_sent():
    big = json.dumps({"blob": "x" * 3_000_000}).encode()
    first_read = asyncio.Event()

    async def large(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})  # chunked, no length
        await resp.prepare(request)
        for i in range(0, len(big), 65536):
            await resp.write(big[i : i + 65536])
        return resp

    async def events(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(sse.encode({"n": 1}))
        await first_read.wait()  # the rest only once the client has the first event
        await resp.write(sse.encode({"n": 2}))
        return resp

    app = web.Application()
    app.router.add_get("/large", large)
    app.router.add_get("/events", events)
    async with asyncio.timeout(20), serving(app) as url, pooled(base_url=url) as http:
        assert (await http.request("GET", "/large")).content == big
        async with http.stream("GET", "/large") as resp:
            with pytest.raises(TransportError, match="larger than"):
                await resp.aread(max_bytes=1_000_000)
        async with http.stream("GET", "/events") as resp:
            seen = []
            async for event in sse.read_events(resp.aiter_bytes()):
                seen.append(event.json())
                first_read.set()
        assert seen == [{"n": 1}, {"n": 2}]


# ---- the MCP upstream client on it ---------------------------------------------------------------


class FakeUpstream:
    """A handshake-era MCP server in a few lines: JSON answers, SSE for ``slow_progress``, and a
    connection dropped unanswered once per ``flaky`` call."""

    def __init__(self) -> None:
        self.peers: list = []  # the connection of each tools/call
        self.cancelled: list = []
        self.dropped = 0
        self.release = asyncio.Event()  # ends the "hang" calls (the server waits for its handlers)
        self.app = web.Application()
        self.app.router.add_post("/mcp", self.post)
        self.app.router.add_get("/mcp", self.status(405))  # no GET stream
        self.app.router.add_delete("/mcp", self.status(200))

    @staticmethod
    def status(code: int):
        async def answer(_request: web.Request) -> web.Response:
            return web.Response(status=code)

        return answer

    async def post(self, request: web.Request) -> web.StreamResponse:
        msg = await request.json()
        method, rid = msg.get("method"), msg.get("id")
        if method == "tools/call":
            self.peers.append(request.transport.get_extra_info("peername"))
        if method == "notifications/cancelled":
            self.cancelled.append(msg["params"]["requestId"])
        if rid is None:
            return web.Response(status=202)
        if method == "initialize":
            result = {"protocolVersion": "2025-11-25", "capabilities": {"tools": {}}, "serverInfo": {"name": "f"}}
            return web.json_response({"jsonrpc": "2.0", "id": rid, "result": result}, headers={"Mcp-Session-Id": "s1"})
        name = msg["params"].get("name")
        if name == "flaky" and self.dropped == 0:
            self.dropped += 1
            request.transport.close()
            raise asyncio.CancelledError
        if name == "hang":
            await self.release.wait()
        if name == "slow_progress":
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await resp.prepare(request)
            note = {"progressToken": 1, "progress": 1}
            await resp.write(sse.encode({"jsonrpc": "2.0", "method": "notifications/progress", "params": note}))
            await resp.write(sse.encode({"jsonrpc": "2.0", "id": rid, "result": {"content": [], "big": "y" * 500_000}}))
            return resp
        return web.json_response({"jsonrpc": "2.0", "id": rid, "result": {"content": [{"type": "text", "text": name}]}})


@contextlib.asynccontextmanager
async def upstream_client() -> AsyncIterator[tuple[FakeUpstream, UpstreamClient]]:
    fake = FakeUpstream()

    async def ignore(_client, _msg) -> None:
        return None

    async with serving(fake.app) as url, pooled() as http:
        client = UpstreamClient(Upstream("fake", url + "/mcp"), http, on_notification=ignore)
        try:
            yield fake, client
        finally:
            fake.release.set()
            await client.close()


async def test_upstream_calls_share_one_connection_and_a_dropped_connection_is_retried_once():
    async with asyncio.timeout(20), upstream_client() as (fake, client):
        for i in range(10):
            assert (await client.request("tools/call", {"name": f"t{i}"}, timeout=5))["content"][0]["text"] == f"t{i}"
        # No connection per call: at most the two the handshake left pooled (its GET stream's
        # probe ran beside the first call), taken in turn.
        assert len(set(fake.peers)) <= 2
        assert (await client.request("tools/call", {"name": "flaky"}, timeout=5))["content"][0]["text"] == "flaky"
        assert fake.dropped == 1 and client.connected


async def test_an_upstream_sse_answer_relays_its_messages_first_and_a_silent_one_times_out_and_is_cancelled():
    relayed: list = []

    async def on_message(msg) -> None:
        relayed.append(msg["method"])

    async with asyncio.timeout(20), upstream_client() as (fake, client):
        result = await client.request("tools/call", {"name": "slow_progress"}, on_message=on_message, timeout=5)
        assert relayed == ["notifications/progress"] and len(result["big"]) == 500_000
        with pytest.raises(UpstreamTimeout):
            await client.request("tools/call", {"name": "hang"}, timeout=0.3)

        async def cancelled() -> bool:
            return bool(fake.cancelled)

        await wait_until(cancelled)  # notifications/cancelled goes up in the background
        assert client.connected  # a slow tool is not a lost upstream
