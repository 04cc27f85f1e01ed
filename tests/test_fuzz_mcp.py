"""Fuzzing ``/mcp`` and its JSON-RPC framing (protocols/mcp/wire.py): never a 5xx or a handler
that fails (-32603), every error a JSON-RPC error object with the request's id (null only when
the id cannot be known), and a refused request neither stores a task nor opens a session."""

from __future__ import annotations

import pytest

pytest.importorskip("hypothesis", reason="the fuzz suite needs Hypothesis: pip install -e '.[dev]'")

from hypothesis import example, given
from hypothesis import strategies as st

from protocols.mcp import wire
from tests.fixtures.fuzz import (
    TOO_DEEP,
    body_json,
    cross_site_refused,
    dumps,
    header_values,
    in_process,
    json_values,
    jsonrpc_error,
    maybe,
    no_server_error,
    objects,
    raw_bodies,
    request_id,
    scalars,
    sse_data,
    task_ids,
    texts,
)

ACCEPT = "application/json, text/event-stream"
VERSION = "2025-11-25"

ids = st.one_of(st.integers(-(2**63), 2**63), texts, st.none(), st.booleans(), st.floats(), st.just([1]))
arguments = objects(
    {
        "message": maybe(texts),
        "data": maybe(st.dictionaries(texts, json_values(max_leaves=3), max_size=2)),
        "query": maybe(texts),
        "agent_or_query": maybe(st.sampled_from(["echo", "no such agent", ""])),
        "task_id": maybe(texts),
    }
)
PARAMS = {
    "initialize": objects(
        {
            "protocolVersion": maybe(st.sampled_from([VERSION, "2026-07-28", "1999-01-01"])),
            "capabilities": maybe(st.just({})),
            "clientInfo": maybe(objects({"name": maybe(texts), "version": maybe(texts)})),
        }
    ),
    "ping": st.just({}),
    "tools/list": objects({"cursor": maybe(texts)}),
    "tools/call": objects(
        {
            "name": maybe(st.sampled_from(["echo", "find_agents", "send_task", "no_such_tool"])),
            "arguments": maybe(arguments),
            "_meta": maybe(objects({"progressToken": maybe(ids)})),
        }
    ),
    "resources/list": objects({"cursor": maybe(texts)}),
    "resources/templates/list": objects({"cursor": maybe(texts)}),
    "resources/read": objects({"uri": maybe(texts)}),
    "resources/subscribe": objects({"uri": maybe(texts)}),
    "resources/unsubscribe": objects({"uri": maybe(texts)}),
    "prompts/list": objects({"cursor": maybe(texts)}),
    "prompts/get": objects({"name": maybe(texts), "arguments": maybe(st.dictionaries(texts, texts, max_size=2))}),
    "completion/complete": objects(
        {
            "ref": maybe(objects({"type": maybe(st.sampled_from(["ref/prompt", "ref/resource"])), "name": texts})),
            "argument": maybe(objects({"name": maybe(texts), "value": maybe(texts)})),
        }
    ),
    "logging/setLevel": objects({"level": maybe(st.sampled_from([*wire.LOG_LEVELS, "loud"]))}),
    "notifications/cancelled": objects({"requestId": maybe(ids)}),
    "server/discover": st.just({}),
}
methods = st.sampled_from(sorted(PARAMS)) | texts


def request_for(method: str) -> st.SearchStrategy:
    """A JSON-RPC request for ``method`` with its params fuzzed from their shape."""
    return st.builds(
        lambda rid, params: {"jsonrpc": "2.0", "id": rid, "method": method, "params": params},
        ids,
        maybe(PARAMS.get(method, json_values(max_leaves=4))),
    )


envelopes = st.one_of(
    st.sampled_from(sorted(PARAMS)).flatmap(request_for),
    texts.flatmap(request_for),
    objects(
        {
            "jsonrpc": maybe(st.just("2.0")),
            "id": ids,
            "method": maybe(methods),
            "params": json_values(max_leaves=4),
            "result": json_values(max_leaves=2),
            "error": maybe(objects({"code": maybe(st.integers()), "message": maybe(texts)})),
        }
    ),
    st.lists(st.sampled_from(sorted(PARAMS)).flatmap(request_for), max_size=3),  # batches
)
HEADER_NAMES = ["mcp-protocol-version", "mcp-session-id", "accept", "content-type", "origin", "last-event-id"]
headers = st.dictionaries(st.sampled_from(HEADER_NAMES), header_values, max_size=4)


@pytest.fixture
async def gateway():
    async with in_process() as gateway:
        yield gateway


async def open_session(gateway) -> str:
    params = {"protocolVersion": VERSION, "capabilities": {}, "clientInfo": {"name": "fuzz", "version": "1"}}
    resp = await gateway.request("POST", "/mcp", json=wire.request(1, "initialize", params), headers={"Accept": ACCEPT})
    assert resp.status_code == 200, resp.text
    return resp.headers["mcp-session-id"]


def reply_of(resp) -> dict | None:
    """The JSON-RPC message a POST was answered with (the last one of an SSE reply), or None (202)."""
    if resp.status_code == 202 or (resp.status_code == 400 and not resp.content):
        return None  # a notification or response taken, or server/discover sent back to the handshake
    if resp.headers.get("content-type", "").startswith("text/event-stream"):
        messages = [m for m in sse_data(resp) if isinstance(m, dict) and ("result" in m or "error" in m)]
        assert messages, resp.text
        return messages[-1]
    return body_json(resp)


async def check_post(gateway, body: bytes, sent, hdrs: dict[str, str]) -> None:
    before_tasks = await task_ids(gateway.runtime)
    resp = await gateway.request("POST", "/mcp", content=body, headers=hdrs)
    no_server_error(resp)
    if cross_site_refused(resp):
        return
    reply = reply_of(resp)
    if reply is not None and "error" in reply:
        jsonrpc_error(reply, request_id(sent))
        assert await task_ids(gateway.runtime) == before_tasks, "a refused request stored a task"
        if isinstance(sent, dict) and sent.get("method") == "initialize":
            assert "mcp-session-id" not in resp.headers
    elif reply is not None:
        assert resp.status_code == 200 and reply.get("jsonrpc") == "2.0", reply
        assert reply["id"] == request_id(sent) and isinstance(reply["result"], dict), reply
    gateway.errors.check()


@given(body=raw_bodies, hdrs=headers)
@example(body=TOO_DEEP, hdrs={})
@example(
    body=dumps({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": "\ud800"}}), hdrs={}
)
async def test_any_body_any_headers(gateway, body, hdrs):
    try:
        sent = wire.parse(body)
    except wire.MCPError:
        sent = None
    await check_post(gateway, body, sent, hdrs)


@given(envelope=envelopes, hdrs=headers, in_session=st.booleans())
async def test_envelopes(gateway, envelope, hdrs, in_session):
    """Structurally valid JSON-RPC with fuzzed fields and params, with or without a session."""
    if in_session:
        hdrs = {"mcp-session-id": await open_session(gateway), "mcp-protocol-version": VERSION, **hdrs}
    await check_post(gateway, dumps(envelope), envelope, hdrs)


@given(
    method=st.sampled_from(sorted(PARAMS)).flatmap(request_for), accept=st.sampled_from([ACCEPT, "application/json"])
)
async def test_methods_in_a_session(gateway, method, accept):
    """Every method with its params fuzzed, in a good session: a result or a JSON-RPC error
    with the request's id (the request's own, not null: its envelope is valid)."""
    hdrs = {"mcp-session-id": await open_session(gateway), "mcp-protocol-version": VERSION, "accept": accept}
    await check_post(gateway, dumps(method), method, hdrs)


@given(method=st.sampled_from(["GET", "DELETE"]), hdrs=headers, in_session=st.booleans())
async def test_get_and_delete(gateway, method, hdrs, in_session):
    if in_session:
        hdrs = {"mcp-session-id": await open_session(gateway), **hdrs}
    if method == "GET" and hdrs.get("accept", "").find("text/event-stream") >= 0 and in_session:
        hdrs["last-event-id"] = hdrs.get("last-event-id") or "x-1"  # never an open-ended stream
    resp = await gateway.request(method, "/mcp", headers=hdrs)
    no_server_error(resp)
    if resp.status_code >= 400 and not cross_site_refused(resp):
        jsonrpc_error(body_json(resp), None)
    gateway.errors.check()


@given(value=json_values(scalars))
def test_classify(value):
    """The framing alone: a kind, or MCPError(INVALID_REQUEST); nothing else escapes."""
    try:
        kind = wire.classify(value)
    except wire.MCPError as exc:
        assert exc.code == wire.INVALID_REQUEST
    else:
        assert kind in ("request", "notification", "response")


@given(body=raw_bodies)
def test_parse(body):
    try:
        wire.parse(body)
    except wire.MCPError as exc:
        assert exc.code == wire.PARSE_ERROR
