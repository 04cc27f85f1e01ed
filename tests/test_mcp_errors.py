"""Bad input and failing upstreams at /mcp: protocol-correct errors, never a traceback, and the
gateway stays up."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from mcp import Client

from agents.worker import Worker
from schemas import Artifact, TextPart
from tests.conftest import free_port, running_gateway, test_config, wait_until
from tests.fixtures.mcp_support import ACCEPT, RawSession, UpstreamProcess, mcp_gateway

pytestmark = pytest.mark.filterwarnings(
    "ignore::DeprecationWarning", "ignore::mcp.shared.exceptions.MCPDeprecationWarning"
)


@pytest.fixture
async def raw():
    async with mcp_gateway() as (url, _), httpx.AsyncClient(timeout=10) as http:
        session = RawSession(http, url)
        await session.initialize()
        yield session


def no_traceback(resp: httpx.Response) -> None:
    assert "Traceback" not in resp.text and 'File "' not in resp.text


async def test_parse_error(raw):
    resp = await raw.post(b'{"jsonrpc": "2.0", "id": 1, "method": ')
    assert resp.status_code == 400 and resp.json()["error"]["code"] == -32700
    no_traceback(resp)


@pytest.mark.parametrize(
    "body",
    [
        [{"jsonrpc": "2.0", "id": 1, "method": "ping"}],  # batch (removed in 2025-06-18)
        {"jsonrpc": "1.0", "id": 1, "method": "ping"},
        {"jsonrpc": "2.0", "id": None, "method": "ping"},
        {"jsonrpc": "2.0", "id": 1, "method": 5},
        {"jsonrpc": "2.0", "id": 1, "method": "ping", "params": [1]},
        {"jsonrpc": "2.0", "id": 1},
        42,
    ],
)
async def test_invalid_request(raw, body):
    resp = await raw.post(body)
    assert resp.status_code == 400 and resp.json()["error"]["code"] == -32600


async def test_unknown_method(raw):
    reply = await raw.call("tools/frobnicate")
    assert reply["error"]["code"] == -32601


@pytest.mark.parametrize(
    "method,params",
    [
        ("tools/call", {}),
        ("tools/call", {"name": 3}),
        ("tools/call", {"name": "echo", "arguments": [1]}),
        ("tools/call", {"name": "no_such_tool", "arguments": {}}),
        ("prompts/get", {"name": "no_such_prompt"}),
        ("logging/setLevel", {"level": "loud"}),
        (
            "completion/complete",
            {"ref": {"type": "ref/prompt", "name": "nope"}, "argument": {"name": "a", "value": ""}},
        ),
        ("resources/read", {}),
    ],
)
async def test_invalid_params(raw, method, params):
    reply = await raw.call(method, params)
    assert reply["error"]["code"] == -32602, reply


async def test_unknown_resource(raw):
    reply = await raw.call("resources/read", {"uri": "test://nothing"})
    assert reply["error"]["code"] == -32002 and reply["error"]["data"] == {"uri": "test://nothing"}


async def test_bad_tool_arguments_are_tool_errors(raw):
    reply = await raw.call("tools/call", {"name": "echo", "arguments": {"message": 5}})
    assert reply["result"]["isError"] is True and "message" in reply["result"]["content"][0]["text"]


async def test_missing_and_unknown_session(raw):
    ping = {"jsonrpc": "2.0", "id": 1, "method": "ping"}
    resp = await raw.http.post(raw.url, json=ping, headers={"Accept": ACCEPT})
    assert resp.status_code == 400 and resp.json()["error"]["code"] == -32600
    resp = await raw.http.post(raw.url, json=ping, headers={"Accept": ACCEPT, "Mcp-Session-Id": "0" * 32})
    assert resp.status_code == 404
    resp = await raw.http.get(raw.url, headers={"Accept": "text/event-stream"})
    assert resp.status_code == 405 and resp.headers["allow"] == "POST"  # GET belongs to a session


async def test_session_ids_are_random_visible_ascii(raw):
    other = RawSession(raw.http, raw.url)
    await other.initialize()
    for sid in (raw.sid, other.sid):
        assert len(sid) == 32 and all(0x21 <= ord(c) <= 0x7E for c in sid)
    assert raw.sid != other.sid


async def test_protocol_version_header(raw):
    ping = {"jsonrpc": "2.0", "id": 1, "method": "ping"}
    assert (await raw.post(ping, **{"MCP-Protocol-Version": "1999-01-01"})).status_code == 400
    assert (await raw.post(ping, **{"MCP-Protocol-Version": "2026-07-28"})).status_code == 400
    for version in ("2025-03-26", "2025-06-18", "2025-11-25"):
        assert (await raw.post(ping, **{"MCP-Protocol-Version": version})).status_code == 200
    headers = raw.headers()
    del headers["MCP-Protocol-Version"]  # absent: assumed 2025-03-26, accepted
    assert (await raw.http.post(raw.url, json=ping, headers=headers)).status_code == 200


async def test_initialize_negotiates_versions(raw):
    for asked, got in (("2025-03-26", "2025-03-26"), ("2025-06-18", "2025-06-18"), ("2099-01-01", "2025-11-25")):
        resp = await raw.http.post(
            raw.url,
            headers={"Accept": ACCEPT},
            json={
                "jsonrpc": "2.0",
                "id": 1,
                "method": "initialize",
                "params": {"protocolVersion": asked, "capabilities": {}, "clientInfo": {"name": "x", "version": "1"}},
            },
        )
        assert resp.json()["result"]["protocolVersion"] == got
    resp = await raw.http.post(
        raw.url, headers={"Accept": ACCEPT}, json={"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {}}
    )
    assert resp.json()["error"]["code"] == -32602 and "mcp-session-id" not in resp.headers


async def test_notifications_and_responses_get_202(raw):
    assert (await raw.post({"jsonrpc": "2.0", "method": "notifications/initialized"})).status_code == 202
    assert (
        await raw.post({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 99}})
    ).status_code == 202
    assert (await raw.post({"jsonrpc": "2.0", "id": "nobody-asked", "result": {}})).status_code == 202


async def test_foreign_origin_and_host(raw):
    ping = {"jsonrpc": "2.0", "id": 1, "method": "ping"}
    resp = await raw.post(ping, Origin="http://evil.example.com")
    assert resp.status_code == 403
    port = raw.url.split(":")[2].split("/")[0]
    assert (await raw.post(ping, Origin=f"http://localhost:{port}")).status_code == 200
    resp = await raw.post(ping, Host="evil.example.com")
    assert resp.status_code == 421
    resp = await raw.http.get(
        raw.url, headers={**raw.headers(Accept="text/event-stream"), "Origin": "https://evil.example.com"}
    )
    assert resp.status_code == 403


async def test_allowed_hosts_are_configurable():
    async with mcp_gateway(allowed_hosts=("gateway.internal:*",), allowed_origins=("https://app.example.com",)) as (
        url,
        _,
    ):
        async with httpx.AsyncClient(timeout=10) as http:
            body = {
                "jsonrpc": "2.0",
                "id": 1,
                "method": "initialize",
                "params": {
                    "protocolVersion": "2025-11-25",
                    "capabilities": {},
                    "clientInfo": {"name": "x", "version": "1"},
                },
            }
            assert (await http.post(url, json=body, headers={"Accept": ACCEPT})).status_code == 421
            ok = await http.post(
                url,
                json=body,
                headers={"Accept": ACCEPT, "Host": "gateway.internal:8080", "Origin": "https://app.example.com"},
            )
            assert ok.status_code == 200


async def test_oversize_body_413():
    from tests.conftest import test_config

    async with mcp_gateway(config=test_config(max_body_bytes=2048)) as (url, _), httpx.AsyncClient(timeout=10) as http:
        raw = RawSession(http, url)
        await raw.initialize()
        resp = await raw.post(
            {
                "jsonrpc": "2.0",
                "id": 1,
                "method": "tools/call",
                "params": {"name": "echo", "arguments": {"message": "x" * 5000}},
            }
        )
        assert resp.status_code == 413


async def test_not_acceptable_and_wrong_content_type(raw):
    ping = {"jsonrpc": "2.0", "id": 1, "method": "ping"}
    assert (await raw.post(ping, Accept="text/html")).status_code == 406
    assert (await raw.post(ping, **{"Content-Type": "text/plain"})).status_code == 415
    resp = await raw.http.get(raw.url, headers=raw.headers(Accept="application/json"))
    assert resp.status_code == 406
    assert (await raw.http.put(raw.url, headers=raw.headers())).status_code == 405


async def test_upstream_down_gives_a_tool_error_and_the_gateway_stays_up():
    up = UpstreamProcess("flaky").start()
    try:
        async with mcp_gateway([("flaky", up.url)]) as (url, server):
            async with Client(url, mode="legacy") as client:
                assert (await client.call_tool("flaky__test_echo", {"text": "up"})).content[0].text == "up"
                up.stop()
                res = await client.call_tool("flaky__test_echo", {"text": "down?"})
                assert res.is_error and res.content[0].text == "upstream 'flaky': agent unreachable"
                await client.send_ping()
                res = await client.call_tool("echo", {"message": "still serving"})
                assert res.content[0].text == "still serving"
    finally:
        up.stop()


async def test_upstream_never_reachable():
    async with mcp_gateway([("ghost", f"http://127.0.0.1:{free_port()}/mcp")]) as (url, server):
        async with Client(url, mode="legacy") as client:
            names = [t.name for t in (await client.list_tools()).tools]
            assert not any(n.startswith("ghost__") for n in names)
            assert "connection failed" in server.upstreams.clients["ghost"].last_error


async def test_hanging_upstream_times_out_and_is_cancelled_upstream():
    with UpstreamProcess("slow") as up:
        async with mcp_gateway([("slow", up.url)], call_timeout_s=0.5) as (url, _):
            async with Client(url, mode="legacy") as client:
                res = await client.call_tool("slow__test_slow", {"seconds": 30})
                assert res.is_error and "did not answer" in res.content[0].text

                async def cancelled():
                    r = await client.call_tool("slow__test_cancelled", {})
                    return r.content[0].text == "cancelled"

                await wait_until(cancelled, timeout=10, interval=0.1)


async def test_client_cancellation_is_sent_upstream():
    with UpstreamProcess("slow") as up:
        async with mcp_gateway([("slow", up.url)]) as (url, _), httpx.AsyncClient(timeout=10) as http:
            raw = RawSession(http, url)
            await raw.initialize()
            body = {
                "jsonrpc": "2.0",
                "id": 41,
                "method": "tools/call",
                "params": {"name": "slow__test_slow", "arguments": {"seconds": 30}},
            }
            async with http.stream("POST", url, headers=raw.headers(), json=body) as resp:
                async for line in resp.aiter_lines():
                    if "notifications/message" in line:  # the upstream runs the call now
                        await raw.post(
                            {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 41}}
                        )
                    if '"id":41' in line:
                        assert "cancelled" in line.lower()
                        break

            async def cancelled():
                r = await raw.call("tools/call", {"name": "slow__test_cancelled", "arguments": {}})
                return r["result"]["content"][0]["text"] == "cancelled"

            await wait_until(cancelled, timeout=10, interval=0.1)


class Blocker(Worker):
    """Holds each task until released: its queue fills."""

    agent = "blocker"
    concurrency = 1

    def __init__(self) -> None:
        self.started, self.release = asyncio.Event(), asyncio.Event()

    async def handle(self, task):
        self.started.set()
        await self.release.wait()
        yield task.artifact_event(Artifact(parts=[TextPart(text="done")]))


async def test_a_full_queue_is_a_clear_error_to_retry():
    worker = Blocker()
    async with running_gateway(test_config(max_queue=1, echo=False), workers=[worker]) as (url, app):
        async with httpx.AsyncClient(timeout=15) as http:
            raw = RawSession(http, f"{url}/mcp")
            await raw.initialize()
            first = asyncio.create_task(raw.call("tools/call", {"name": "blocker", "arguments": {"message": "one"}}))
            async with asyncio.timeout(10):
                await worker.started.wait()  # taken: the queue holds its one entry
            reply = await raw.call("tools/call", {"name": "blocker", "arguments": {"message": "two"}})
            error = reply["error"]
            assert error["code"] == -32603 and "full" in error["message"] and error["data"] == {"retryAfter": 1}
            assert await app.state.runtime.backend.tasks.count() == 1  # the refused call stored nothing
            worker.release.set()
            async with asyncio.timeout(10):
                assert "result" in await first
