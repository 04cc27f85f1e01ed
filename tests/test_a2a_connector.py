"""The outbound A2AConnector against ``a2a-sdk`` server agents whose cards prefer different bindings,
speak 1.0 or 0.3, stream or not: completion, chunked artifacts, cancel propagation, input-required
continuation, remote failure, direct message replies and the binding actually used."""

from __future__ import annotations

import json

import aiohttp
import httpx
import pytest
import pytest_asyncio

from gateway.app import create_app
from protocols.a2a import mount
from protocols.a2a.client import parse_card
from protocols.a2a.connector import A2AConnector
from tests.conftest import serve_app, sse_json, test_config, wait_until
from tests.fixtures import a2a_remote
from tests.fixtures.a2a_remote import remote_agent
from tests.fixtures.a2a_support import V10

pytestmark = pytest.mark.asyncio(loop_scope="module")

REMOTES = [
    {"binding": "JSONRPC", "version": "1.0", "streaming": True},
    {"binding": "HTTP+JSON", "version": "1.0", "streaming": True},
    {"binding": "JSONRPC", "version": "0.3", "streaming": True},
    {"binding": "HTTP+JSON", "version": "0.3", "streaming": True},
    {"binding": "JSONRPC", "version": "1.0", "streaming": False},
    {"binding": "HTTP+JSON", "version": "0.3", "streaming": False},
]


class Setup:
    def __init__(self, url, options, calls):
        self.url, self.options, self.calls = url, options, calls


@pytest_asyncio.fixture(
    scope="module",
    loop_scope="module",
    params=REMOTES,
    ids=lambda o: f"{o['binding']}-{o['version']}-{'stream' if o['streaming'] else 'poll'}",
)
async def setup(request):
    calls: list[tuple[str, str, str | None, str | None]] = []

    async def sent(session, ctx, params: aiohttp.TraceRequestChunkSentParams) -> None:
        ctx.body = getattr(ctx, "body", b"") + params.chunk

    async def ended(session, ctx, params: aiohttp.TraceRequestEndParams) -> None:
        method = None
        if params.method == "POST" and getattr(ctx, "body", b""):
            try:
                method = json.loads(ctx.body).get("method")
            except ValueError:
                pass
        calls.append((params.method, params.url.path, params.headers.get("A2A-Version"), method))

    trace = aiohttp.TraceConfig()
    trace.on_request_chunk_sent.append(sent)
    trace.on_request_end.append(ended)
    async with remote_agent(**request.param) as remote:
        pooled = aiohttp.ClientSession(trace_configs=[trace])
        app = create_app(test_config(echo=False), workers=[A2AConnector("remote", remote, http=pooled)])
        mount(app)
        async with serve_app(app) as url:
            yield Setup(url, request.param, calls)
        await pooled.close()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def http(setup):
    async with httpx.AsyncClient(base_url=setup.url, timeout=30) as c:
        yield c


async def rpc(http, method, params):
    resp = await http.post(
        "/a2a/agents/remote", json={"jsonrpc": "2.0", "id": 1, "method": method, "params": params}, headers=V10
    )
    return resp.json()


def msg(text, mid, **meta):
    return {"messageId": mid, "role": "ROLE_USER", "parts": [{"text": text}], **({"metadata": meta} if meta else {})}


def joined(task):
    return "".join(p.get("text", "") for a in task.get("artifacts", []) for p in a["parts"])


def _op(options: dict, streaming: bool) -> tuple[str | None, str | None]:
    """(REST path, JSON-RPC method) the connector should use for a send to this remote."""
    if options["binding"] == "HTTP+JSON":
        prefix = "/rest/v1" if options["version"] == "0.3" else "/rest"
        return f"{prefix}/{'message:stream' if streaming else 'message:send'}", None
    names = {
        ("1.0", True): "SendStreamingMessage",
        ("1.0", False): "SendMessage",
        ("0.3", True): "message/stream",
        ("0.3", False): "message/send",
    }
    return None, names[(options["version"], streaming)]


def _check_call(setup, call, streaming: bool) -> None:
    path, method = _op(setup.options, streaming)
    assert call[2] == setup.options["version"]  # the A2A-Version header
    if path:
        assert call[1] == path
    else:
        assert call[3] == method


async def test_completes_with_chunked_artifact_and_uses_the_preferred_binding(setup, http):
    setup.calls.clear()
    task = (await rpc(http, "SendMessage", {"message": msg("abcdef", "c-1", chunks=3)}))["result"]["task"]
    assert task["status"]["state"] == "TASK_STATE_COMPLETED" and joined(task) == "abcdef"
    sends = [c for c in setup.calls if c[1] != "/.well-known/agent-card.json"]
    _check_call(setup, sends[0], streaming=False)  # a blocking client: a blocking SendMessage upstream


async def test_a_streaming_client_makes_the_connector_stream(setup, http):
    setup.calls.clear()
    body = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "SendStreamingMessage",
        "params": {"message": msg("abcdef", "c-1s", chunks=3)},
    }
    async with http.stream("POST", "/a2a/agents/remote", json=body, headers=V10) as resp:
        frames = [f["result"] for f in await sse_json(resp)]
    chunks = [f["artifactUpdate"] for f in frames if "artifactUpdate" in f]
    assert frames[-1]["statusUpdate"]["status"]["state"] == "TASK_STATE_COMPLETED"
    assert "".join(p["text"] for c in chunks for p in c["artifact"]["parts"]) == "abcdef"
    sends = [c for c in setup.calls if c[1] != "/.well-known/agent-card.json"]
    _check_call(setup, sends[0], streaming=setup.options["streaming"])
    if setup.options["streaming"]:  # the remote's chunks arrive as chunks
        assert len(chunks) == 3 and [c.get("append", False) for c in chunks] == [False, True, True]


async def test_large_artifacts_cross_in_one_event_and_one_reply(setup, http):
    """A 600 KB text arrives whole, streamed (one SSE line far over aiohttp's 128 KiB readline
    limit) and in a blocking reply alike."""
    text = "0123456789abcdef" * 40_000
    body = {"jsonrpc": "2.0", "id": 1, "method": "SendStreamingMessage", "params": {"message": msg(text, "c-big-s")}}
    async with http.stream("POST", "/a2a/agents/remote", json=body, headers=V10) as resp:
        frames = [f["result"] for f in await sse_json(resp)]
    assert frames[-1]["statusUpdate"]["status"]["state"] == "TASK_STATE_COMPLETED"
    assert (
        "".join(p["text"] for f in frames if "artifactUpdate" in f for p in f["artifactUpdate"]["artifact"]["parts"])
        == text
    )
    task = (await rpc(http, "SendMessage", {"message": msg(text, "c-big")}))["result"]["task"]
    assert task["status"]["state"] == "TASK_STATE_COMPLETED" and joined(task) == text


async def test_cancel_reaches_the_remote(setup, http):
    before = len(a2a_remote.CANCELED)
    task = (
        await rpc(
            http,
            "SendMessage",
            {"message": msg("slow", "c-2", delay_ms=30_000), "configuration": {"returnImmediately": True}},
        )
    )["result"]["task"]
    canceled = (await rpc(http, "CancelTask", {"id": task["id"]}))["result"]
    assert canceled["status"]["state"] == "TASK_STATE_CANCELED"

    async def reached():
        return len(a2a_remote.CANCELED) > before

    await wait_until(reached, timeout=10)


async def test_input_required_then_follow_up_reaches_the_same_remote_task(setup, http):
    first = (await rpc(http, "SendMessage", {"message": msg("start", "c-3", ask="name?")}))["result"]["task"]
    assert first["status"]["state"] == "TASK_STATE_INPUT_REQUIRED"
    assert first["status"]["message"]["parts"] == [{"text": "name?"}]
    assert "metadata" not in first["status"]["message"]  # the remote ids stay internal
    follow = {"messageId": "c-3b", "role": "ROLE_USER", "parts": [{"text": "ada"}], "taskId": first["id"]}
    second = (await rpc(http, "SendMessage", {"message": follow}))["result"]["task"]
    assert second["status"]["state"] == "TASK_STATE_COMPLETED" and joined(second) == "ada"


async def test_remote_failure_fails_the_task_with_its_text(setup, http):
    task = (await rpc(http, "SendMessage", {"message": msg("x", "c-4", fail="disk full")}))["result"]["task"]
    assert task["status"]["state"] == "TASK_STATE_FAILED"
    assert "disk full" in task["status"]["message"]["parts"][0]["text"]


async def test_direct_message_reply(setup, http):
    result = (await rpc(http, "SendMessage", {"message": msg("yo", "c-5", reply=True)}))["result"]
    assert result["message"]["parts"] == [{"text": "reply: yo"}]


async def test_parse_cards_of_both_versions():
    v10 = parse_card(
        {
            "name": "a",
            "supportedInterfaces": [
                {"url": "http://a/g", "protocolBinding": "GRPC", "protocolVersion": "1.0"},
                {"url": "http://a/r", "protocolBinding": "HTTP+JSON", "protocolVersion": "1.0"},
                {"url": "http://a/j", "protocolBinding": "JSONRPC", "protocolVersion": "0.3"},
            ],
            "capabilities": {"streaming": True},
        }
    )
    assert [(i.binding, i.version) for i in v10.interfaces] == [
        ("HTTP+JSON", "1.0"),
        ("JSONRPC", "0.3"),
    ] and v10.streaming
    v03 = parse_card(
        {
            "name": "b",
            "url": "http://b/",
            "preferredTransport": "JSONRPC",
            "protocolVersion": "0.3.0",
            "additionalInterfaces": [{"url": "http://b/rest", "transport": "HTTP+JSON"}],
            "capabilities": {},
        }
    )
    assert [(i.url, i.binding, i.version) for i in v03.interfaces] == [
        ("http://b/", "JSONRPC", "0.3"),
        ("http://b/rest", "HTTP+JSON", "0.3"),
    ]
    assert not v03.streaming


async def test_the_connector_uses_the_proxy_the_environment_names(monkeypatch):
    """HTTP_PROXY is honoured (as by the other connectors: the egress policy owns the choice) and
    NO_PROXY exempts a host: the card of an unresolvable host is fetched through a 'proxy' that is
    the remote agent (a loopback proxy, allowed as the operator's own, outside any gateway)."""
    from protocols.a2a.errors import RemoteAgentError

    async with remote_agent() as remote:
        monkeypatch.setenv("HTTP_PROXY", remote)
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        via_proxy = A2AConnector("remote", "http://agent.invalid/")
        try:
            assert (await via_proxy.remote_card()).interfaces
        finally:
            await via_proxy.aclose()

        monkeypatch.setenv("NO_PROXY", "agent.invalid")
        direct = A2AConnector("remote", "http://agent.invalid/")
        try:
            with pytest.raises(RemoteAgentError, match="agent unreachable") as refused:
                await direct.remote_card()
            assert "cannot fetch the agent card" in refused.value.detail  # what happened: for the log
        finally:
            await direct.aclose()


async def test_a_remote_reply_over_the_size_bound_fails_the_task_not_the_gateway(caplog):
    """A remote answering with more than MAX_REPLY_BYTES: the task fails (agent unreachable, the
    log says why), nothing is read past the bound, and the gateway keeps serving."""
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    from protocols.a2a.client import MAX_REPLY_BYTES

    async def card(request):
        base = str(request.base_url).rstrip("/")
        return JSONResponse(
            {
                "name": "huge",
                "supportedInterfaces": [{"url": base, "protocolBinding": "JSONRPC", "protocolVersion": "1.0"}],
                "capabilities": {},
            }
        )

    async def rpc_reply(request):
        return Response(
            b'{"jsonrpc": "2.0", "id": 1, "result": "' + b"x" * (MAX_REPLY_BYTES + 1) + b'"}',
            media_type="application/json",
        )

    remote_app = Starlette(
        routes=[Route("/.well-known/agent-card.json", card), Route("/", rpc_reply, methods=["POST"])]
    )
    async with serve_app(remote_app) as remote:
        app = create_app(test_config(echo=False), workers=[A2AConnector("huge", remote)])
        mount(app)
        async with serve_app(app) as url, httpx.AsyncClient(base_url=url, timeout=30) as client:
            resp = await client.post(
                "/a2a/agents/huge",
                json={
                    "jsonrpc": "2.0",
                    "id": 1,
                    "method": "SendMessage",
                    "params": {"message": msg("hi", "big-reply")},
                },
                headers=V10,
            )
            task = resp.json()["result"]["task"]
            assert task["status"]["state"] == "TASK_STATE_FAILED"
            assert "agent unreachable" in task["status"]["message"]["parts"][0]["text"]
            assert any("larger than" in str(getattr(r, "error", "")) for r in caplog.records)
            assert (await client.get("/healthz")).status_code == 200
