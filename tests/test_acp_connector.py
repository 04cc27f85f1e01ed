"""The outbound ACPConnector against agents served by the official ``acp-sdk`` server (its own
environment, a subprocess on a free port): completion, streamed parts, artifacts and MIME types,
await/resume of the same remote run, cancel reaching the remote run, remote failure, sessions,
an unreachable agent, the Content-Type it sends, and the official client through two hops."""

from __future__ import annotations

import base64
import json

import httpx
import pytest
import pytest_asyncio

from protocols.acp.connector import ACPConnector
from registry.identity import Identity
from registry.records import sign
from schemas.agent_record import record_from_card
from tests.conftest import free_port, running_gateway, test_config, wait_until
from tests.fixtures import acp_support
from tests.fixtures.acp_support import run_sdk_client, sdk_server, stream, text_of

acp_python = acp_support.acp_python  # the fixture, used by name

# The first use builds the acp-sdk environment (pip, about a minute): more than the suite's 120 s
# default may be needed for that test; every wait inside the tests has its own bound.
pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(600)]

REMOTE_AGENTS = ["chunks", "awaiting", "slow", "failer", "files", "sessioned"]


class _CutStream(httpx.AsyncByteStream):
    """A run's SSE body that breaks right after its first event (a dropped connection)."""

    def __init__(self, inner: httpx.AsyncByteStream) -> None:
        self.inner = inner

    async def __aiter__(self):
        async for chunk in self.inner:
            yield chunk
            if b"run.created" in chunk:
                raise httpx.ReadError("connection dropped (test)")

    async def aclose(self) -> None:
        await self.inner.aclose()


class CutStreams(httpx.AsyncBaseTransport):
    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        resp = await self.inner.handle_async_request(request)
        if resp.headers.get("content-type", "").startswith("text/event-stream"):
            resp.stream = _CutStream(resp.stream)  # type: ignore[arg-type]
        return resp

    async def aclose(self) -> None:
        await self.inner.aclose()


class Setup:
    def __init__(self, gateway: str, remote: str, calls: list, acp_python, app):
        self.gateway, self.remote, self.calls, self.acp_python, self.app = gateway, remote, calls, acp_python, app


def echo_record(identity: Identity, remote: str):
    """A signed record as a remote ACP agent registers it: an acp endpoint, no bus."""
    card = {
        "name": "remote-echo",
        "description": "the SDK's echo, over ACP",
        "version": "1",
        "skills": [{"id": "echo", "name": "Echo", "description": "echoes"}],
        "endpoints": {"acp": f"{remote}/agents/echo"},
    }
    return sign(record_from_card(card, identity.did, 1, 600, "interlace", "elsewhere"), identity)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def setup(acp_python):
    calls: list[dict] = []

    async def on_request(req: httpx.Request) -> None:
        calls.append({"method": req.method, "path": req.url.path, "content_type": req.headers.get("content-type")})

    async def on_response(resp: httpx.Response) -> None:
        if resp.headers.get("run-id"):
            calls.append({"run_id": resp.headers["run-id"], "path": resp.request.url.path})

    async with sdk_server(acp_python, free_port()) as remote:
        pooled = httpx.AsyncClient(timeout=30, event_hooks={"request": [on_request], "response": [on_response]})
        connectors = [ACPConnector(name, remote, http=pooled) for name in REMOTE_AGENTS]
        connectors.append(ACPConnector("down", f"http://127.0.0.1:{free_port()}", http=pooled))
        cutting = httpx.AsyncClient(timeout=30, transport=CutStreams())
        connectors.append(ACPConnector("cut", f"{remote}/agents/chunks", http=cutting))
        async with running_gateway(test_config(echo=False), workers=connectors) as (url, app):
            yield Setup(url, remote, calls, acp_python, app)
        await pooled.aclose()
        await cutting.aclose()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def http(setup):
    async with httpx.AsyncClient(base_url=setup.gateway, timeout=30) as c:
        yield c


def body(agent, text="hello", mode="sync", **extra):
    return {"agent_name": agent, "input": [{"parts": [{"content": text}]}], "mode": mode, **extra}


def remote_run_ids(setup) -> list[str]:
    return [c["run_id"] for c in setup.calls if "run_id" in c]


async def test_the_connector_sends_json_with_a_content_type(setup, http):
    setup.calls.clear()
    run = (await http.post("/acp/runs", json=body("chunks", "over there"))).json()
    assert run["status"] == "completed" and text_of(run) == "over there"
    posts = [c for c in setup.calls if c.get("method") == "POST"]
    assert posts and posts[0]["path"] == "/runs" and all(c["content_type"] == "application/json" for c in posts)


async def test_an_agent_registered_with_an_acp_endpoint_is_run_over_acp(setup, http):
    agent = Identity.generate()
    resp = await http.post("/registry/agents", json=echo_record(agent, setup.remote).dump())
    assert resp.status_code == 201, resp.text
    assert setup.app.state.connectors.running() == {agent.did: "acp"}  # the gateway's supervisor made the connector
    run = (await http.post("/acp/runs", json=body("remote-echo", "over there"))).json()
    assert run["status"] == "completed" and text_of(run) == "over there"
    manifest = (await http.get("/acp/agents/remote-echo")).json()
    assert manifest["description"] == "the SDK's echo, over ACP" and manifest["metadata"]["annotations"]["interlace"][
        "protocols"
    ] == ["acp"]


async def test_streamed_parts_arrive_as_chunks(setup, http):
    resp, events = await stream(http, "/acp/runs", body("chunks", "abcdef", mode="stream"))
    parts = [e["part"]["content"] for e in events if e["type"] == "message.part"]
    assert parts == ["ab", "cd", "ef"] and events[-1]["type"] == "run.completed"
    assert text_of(events[-1]["run"]) == "abcdef"


async def test_artifacts_and_mime_types_come_through(setup, http):
    run = (await http.post("/acp/runs", json=body("files"))).json()
    assert run["status"] == "completed"
    parts = [p for m in run["output"] for p in m["parts"]]
    by_type = {p["content_type"]: p for p in parts if not p.get("name")}
    named = [p for p in parts if p.get("name")]
    assert named == [
        {"name": "report.txt", "content_type": "text/plain", "content": "the report", "content_encoding": "plain"}
    ]
    assert by_type["image/png"]["content_encoding"] == "base64"
    assert base64.b64decode(by_type["image/png"]["content"]).startswith(b"\x89PNG")
    assert json.loads(by_type["application/json"]["content"]) == {"a": 1}
    assert by_type["text/markdown"]["content"] == "# title"


async def test_awaiting_resumes_the_same_remote_run(setup, http):
    setup.calls.clear()
    run = (await http.post("/acp/runs", json=body("awaiting"))).json()
    assert run["status"] == "awaiting"
    assert run["await_request"]["message"]["parts"][0]["content"] == "which config?"
    [remote_run] = remote_run_ids(setup)
    resume = {"await_resume": {"type": "message", "message": {"parts": [{"content": "cfg=42"}]}}, "mode": "sync"}
    done = (await http.post(f"/acp/runs/{run['run_id']}", json=resume)).json()
    assert done["status"] == "completed" and text_of(done) == "got: cfg=42"
    assert any(c.get("method") == "POST" and c["path"] == f"/runs/{remote_run}" for c in setup.calls)


async def test_cancel_reaches_the_remote_run(setup, http):
    setup.calls.clear()
    run = (await http.post("/acp/runs", json=body("slow", mode="async"))).json()

    async def remote_named():
        return remote_run_ids(setup)

    [remote_run] = await wait_until(remote_named)
    resp = await http.post(f"/acp/runs/{run['run_id']}/cancel")
    assert resp.status_code == 202 and resp.json()["status"] == "cancelled"
    async with httpx.AsyncClient(base_url=setup.remote, timeout=5) as direct:

        async def remote_cancelled():
            return (await direct.get(f"/runs/{remote_run}")).json()["status"] == "cancelled"

        await wait_until(remote_cancelled)
    assert any(
        c.get("path") == f"/runs/{remote_run}/cancel" and c["content_type"] == "application/json" for c in setup.calls
    )


async def test_a_remote_failure_fails_the_run_with_its_message(setup, http):
    run = (await http.post("/acp/runs", json=body("failer"))).json()
    assert run["status"] == "failed" and "boom" in run["error"]["message"]


async def test_the_session_is_carried_to_the_remote(setup, http):
    first = (await http.post("/acp/runs", json=body("sessioned"))).json()
    assert text_of(first) == "history=0"
    again = (await http.post("/acp/runs", json=body("sessioned", session_id=first["session_id"]))).json()
    assert text_of(again) == "history=2"  # the remote kept the first run's input and output


async def test_an_unreachable_agent_fails_clearly(setup, http):
    run = (await http.post("/acp/runs", json=body("down"))).json()
    assert run["status"] == "failed" and "'down': agent unreachable" in run["error"]["message"]


async def test_a_stream_that_breaks_is_settled_by_polling_the_run(setup, http):
    run = (await http.post("/acp/runs", json=body("cut", "abcdef"))).json()
    assert run["status"] == "completed" and text_of(run) == "abcdef"  # read from the polled run's output


async def test_the_official_client_through_the_gateway_to_the_official_server(setup):
    got = await run_sdk_client(setup.acp_python, f"{setup.gateway}/acp", "remote_echo", agent="chunks")
    result = got["remote_echo"]
    assert result.get("raised") is None, result
    assert result["run"]["status"] == "completed" and result["text"] == "through two hops"
