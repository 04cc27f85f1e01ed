"""Traces across protocols (gateway/core/tracing.py), read from the OpenTelemetry SDK's in-memory
exporter: one trace per request from the inbound face through the runtime, the bus, the worker
and the outbound connector, whatever process or node each runs on.

* MCP (2026-07-28, trace context in ``params._meta``) -> an A2A agent through the A2A connector;
  the agent is another gateway, which continues the trace from the connector's HTTP headers.
* A2A (``traceparent`` header) -> a bus worker on another gateway node, across a real Redis:
  the context travels stored with the task.
* A task forwarded between gossiping nodes (the forwarding connector's request to the agent's
  home node): one trace id end to end.
* A worker of its own process (over ``/bus``) continues the trace of the task it takes.
* ACP (``traceparent`` header) -> the ACP connector -> another gateway's ACP face -> its worker,
  and the internal API -> the ANP connector (signed JSON-RPC) -> another gateway's ANP face -> its
  worker: one trace id, each face's SERVER span and each connector's CLIENT span in the tree.
* A follow-up that continues a task waiting for input (A2A, ACP resume, MCP send_task, the
  internal API) is traced under its own request's trace, linked to the task's first one; the
  worker's run for it continues the follow-up's trace, and both backends keep the task's new
  context.
* Once against a real OTLP/HTTP receiver: ``interlace serve``, configured by OTEL_* alone.
* Off (the default), nothing is traced and tasks carry no context; the backends (both) store
  and hand out the context a task carries.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess

import httpx
import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from agents.echo import EchoWorker
from agents.links import HttpLink
from agents.worker import WorkerRunner
from gateway.app import create_app
from gateway.core import tracing
from protocols.a2a.connector import A2AConnector
from protocols.acp.connector import ACPConnector
from schemas import Message, Route, Task, TaskState, TextPart
from tests.conftest import (
    free_port,
    interlace_cmd,
    serve_app,
    stop_process,
    subprocess_env,
    test_config,
    wait_until,
)
from tests.fixtures.anp_support import LocalResolver, anp_gateway, make_caller, signer, two_gateways
from tests.fixtures.mcp_support import ModernRaw

pytestmark = pytest.mark.timeout(60)

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{CALLER_SPAN}-01"
FOLLOW_UP_TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
FOLLOW_UP_SPAN = "b7ad6b7169203331"
FOLLOW_UP = f"00-{FOLLOW_UP_TRACE_ID}-{FOLLOW_UP_SPAN}-01"
A2A = {"A2A-Version": "1.0"}


@pytest.fixture
def spans():
    """Tracing on, into an in-memory exporter, for the gateways this test builds."""
    provider = TracerProvider()
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.install(provider)
    yield exporter
    tracing.reset()
    provider.shutdown()


def hex_id(n: int, width: int) -> str:
    return format(n, f"0{width}x")


def named(spans: list[ReadableSpan], name: str) -> ReadableSpan:
    found = [s for s in spans if s.name == name]
    assert len(found) == 1, f"{name}: {[s.name for s in spans]}"
    return found[0]


def child(spans: list[ReadableSpan], parent: ReadableSpan, name: str) -> ReadableSpan:
    """The one span named ``name`` whose parent is ``parent``."""
    found = [s for s in spans if s.name == name and s.parent and s.parent.span_id == parent.context.span_id]
    assert len(found) == 1, f"{name} under {parent.name}: {[(s.name, s.parent and s.parent.span_id) for s in spans]}"
    return found[0]


async def finished(exporter: InMemorySpanExporter, name: str, count: int = 1) -> list[ReadableSpan]:
    """The spans ended so far, once ``count`` spans named ``name`` are among them."""

    async def ended():
        spans = list(exporter.get_finished_spans())
        return spans if sum(s.name == name for s in spans) >= count else None

    return await wait_until(ended, timeout=15)


async def test_mcp_call_to_an_a2a_agent_is_one_trace(spans):
    remote = create_app(test_config(), workers=[EchoWorker()])  # the A2A agent: a gateway's echo
    async with serve_app(remote) as remote_url:
        gateway = create_app(test_config(echo=False), workers=[A2AConnector("remote", f"{remote_url}/a2a/agents/echo")])
        async with serve_app(gateway) as url, httpx.AsyncClient(timeout=20) as http:
            raw = ModernRaw(http, f"{url}/mcp")
            params = {"name": "remote", "arguments": {"message": "hello"}}
            async with asyncio.timeout(30):
                resp, answer = await raw.call("tools/call", params, traceparent=TRACEPARENT)
            assert resp.status_code == 200 and not answer["result"].get("isError"), answer
            assert "hello" in str(answer["result"]["content"])
            ended = await finished(spans, "process echo")

    ours = [s for s in ended if hex_id(s.context.trace_id, 32) == TRACE_ID]
    server = named(ours, "tools/call remote")
    assert server.kind is SpanKind.SERVER
    assert hex_id(server.parent.span_id, 16) == CALLER_SPAN  # parented on params._meta.traceparent
    assert server.attributes["mcp.method.name"] == "tools/call"
    assert server.attributes["gen_ai.tool.name"] == "remote"
    assert server.attributes["gen_ai.operation.name"] == "execute_tool"
    assert server.attributes["mcp.protocol.version"] == "2026-07-28"
    assert server.attributes["jsonrpc.request.id"] == "1"

    invoke = child(ours, server, "invoke_agent remote")
    assert invoke.kind is SpanKind.CLIENT
    assert invoke.attributes["gen_ai.operation.name"] == "invoke_agent"
    assert invoke.attributes["gen_ai.agent.name"] == "remote"
    assert invoke.attributes["interlace.route.reason"] == "named by the client"
    task_id = invoke.attributes["interlace.task.id"]

    worker = child(ours, invoke, "process remote")  # the connector, through the bus
    assert worker.kind is SpanKind.CONSUMER
    assert worker.attributes["interlace.task.id"] == task_id
    sends = [s for s in ours if s.parent and s.parent.span_id == worker.context.span_id]
    send = next(s for s in sends if s.name in ("SendMessage", "SendStreamingMessage"))
    assert send.kind is SpanKind.CLIENT
    assert send.attributes["a2a.method.name"] == send.name
    assert send.attributes["server.address"] == "127.0.0.1"

    # The remote gateway continued the trace from the connector's traceparent header.
    remote_server = child(ours, send, send.name)
    assert remote_server.kind is SpanKind.SERVER
    assert remote_server.attributes["gen_ai.agent.name"] == "echo"
    assert remote_server.attributes["a2a.protocol.version"] == "1.0"
    remote_invoke = child(ours, remote_server, "invoke_agent echo")
    assert remote_server.attributes["a2a.task.id"] == remote_invoke.attributes["interlace.task.id"]
    child(ours, remote_invoke, "process echo")
    if send.name == "SendMessage":
        assert send.attributes["a2a.task.id"] == remote_invoke.attributes["interlace.task.id"]


async def test_a2a_call_to_a_bus_worker_on_another_node_over_redis(spans, redis_server):
    redis_server.flush()
    node_a = create_app(test_config(redis_url=redis_server.url, node_id="node-a", gossip=False), workers=[EchoWorker()])
    node_b = create_app(test_config(redis_url=redis_server.url, node_id="node-b", gossip=False), workers=[])
    async with serve_app(node_a), serve_app(node_b) as url_b, httpx.AsyncClient(base_url=url_b, timeout=20) as b:
        body = {
            "jsonrpc": "2.0",
            "id": 7,
            "method": "SendMessage",
            "params": {
                "message": {"messageId": "m-1", "role": "ROLE_USER", "parts": [{"text": "via b"}]},
                "metadata": {"agent": "echo"},
            },
        }
        async with asyncio.timeout(30):
            reply = (await b.post("/a2a", json=body, headers={**A2A, "traceparent": TRACEPARENT})).json()
        task = reply["result"]["task"]
        assert task["status"]["state"] == "TASK_STATE_COMPLETED"
        stored = await node_b.state.runtime.backend.tasks.get(task["id"])  # as Redis keeps it
        ended = await finished(spans, "process echo")

    ours = [s for s in ended if hex_id(s.context.trace_id, 32) == TRACE_ID]
    server = named(ours, "SendMessage")
    assert server.kind is SpanKind.SERVER
    assert hex_id(server.parent.span_id, 16) == CALLER_SPAN  # the traceparent header
    assert server.attributes["a2a.method.name"] == "SendMessage"
    assert server.attributes["a2a.message.id"] == "m-1"
    assert server.attributes["jsonrpc.request.id"] == "7"
    assert server.attributes["a2a.task.id"] == task["id"]
    assert server.attributes["a2a.task.state"] == "TASK_STATE_COMPLETED"
    invoke = child(ours, server, "invoke_agent echo")
    assert invoke.attributes["interlace.task.id"] == task["id"]
    assert invoke.attributes["gen_ai.agent.name"] == "echo"
    # The worker of node A took the task from Redis and continued the context stored with it.
    worker = child(ours, invoke, "process echo")
    assert worker.kind is SpanKind.CONSUMER
    assert worker.attributes["interlace.task.id"] == task["id"]
    assert worker.attributes["messaging.destination.name"] == "echo"
    assert stored.trace["traceparent"] == f"00-{TRACE_ID}-{hex_id(invoke.context.span_id, 16)}-01"


async def test_a_forwarded_call_between_gossiping_nodes_is_one_trace(spans):
    port_a, port_b = free_port(), free_port()
    fast = dict(gossip_profile="fast", network="tracing-test")
    node_a = create_app(test_config(node_id="node-a", port=port_a, **fast), workers=[EchoWorker()])
    node_b = create_app(test_config(node_id="node-b", port=port_b, join=f"127.0.0.1:{port_a}", **fast), workers=[])
    async with (
        serve_app(node_a, port_a),
        serve_app(node_b, port_b) as url_b,
        httpx.AsyncClient(base_url=url_b, timeout=20) as b,
    ):
        await wait_until(lambda: _names_include(b, "echo"), timeout=20)
        body = {"agent": "echo", "message": {"role": "user", "parts": [{"kind": "text", "text": "far"}]}}
        async with asyncio.timeout(30):
            resp = await b.post("/tasks?wait=true", json=body, headers={"traceparent": TRACEPARENT})
        assert resp.status_code in (200, 201), resp.text
        done = resp.json()
        assert done["status"]["state"] == "completed", done
        ended = await finished(spans, "process echo")

    ours = [s for s in ended if hex_id(s.context.trace_id, 32) == TRACE_ID]
    first = next(s for s in ours if s.name.startswith("invoke_agent") and hex_id(s.parent.span_id, 16) == CALLER_SPAN)
    assert first.attributes["interlace.task.id"] == done["id"]
    forward = next(s for s in ours if s.parent and s.parent.span_id == first.context.span_id)
    assert forward.kind is SpanKind.CONSUMER  # node B's forwarding connector took it from B's bus
    home = child(ours, forward, "invoke_agent echo")  # node A accepted the forwarded task
    assert home.attributes["interlace.task.id"] != done["id"]
    child(ours, home, "process echo")


async def test_a_worker_of_its_own_process_continues_the_trace(spans):
    """A worker that reaches the bus over HTTP (``/bus``, as ``interlace worker`` does) gets the
    task with its trace context, and its run joins the caller's trace."""
    async with serve_app(create_app(test_config(echo=False, gossip=False))) as url:
        runner = WorkerRunner(EchoWorker(), HttpLink(url), poll_ms=200, lock_ttl_ms=5_000)
        runner.start()
        try:
            async with httpx.AsyncClient(base_url=url, timeout=20) as http, asyncio.timeout(30):
                await runner.ready.wait()
                body = {"agent": "echo", "message": {"role": "user", "parts": [{"kind": "text", "text": "hi"}]}}
                done = (await http.post("/tasks?wait=true", json=body, headers={"traceparent": TRACEPARENT})).json()
                assert done["status"]["state"] == "completed", done
                ended = await finished(spans, "process echo")
        finally:
            await runner.stop(2)
    ours = [s for s in ended if hex_id(s.context.trace_id, 32) == TRACE_ID]
    invoke = named(ours, "invoke_agent echo")
    assert hex_id(invoke.parent.span_id, 16) == CALLER_SPAN  # the internal API's traceparent header
    assert child(ours, invoke, "process echo").attributes["interlace.task.id"] == done["id"]


async def test_acp_face_to_a_remote_acp_agent_is_one_trace(spans):
    """ACP create_run (traceparent header) -> the ACP connector -> another gateway's ACP face ->
    its echo worker."""
    remote = create_app(test_config(), workers=[EchoWorker()])
    async with serve_app(remote) as remote_url:
        gateway = create_app(test_config(echo=False), workers=[ACPConnector("far", f"{remote_url}/acp/agents/echo")])
        async with serve_app(gateway) as url, httpx.AsyncClient(base_url=url, timeout=20) as http:
            body = {"agent_name": "far", "input": [{"role": "user", "parts": [{"content": "hello"}]}], "mode": "sync"}
            async with asyncio.timeout(30):
                resp = await http.post("/acp/runs", json=body, headers={"traceparent": TRACEPARENT})
            assert resp.status_code == 200 and resp.json()["status"] == "completed", resp.text
            ended = await finished(spans, "process echo")

    ours = [s for s in ended if hex_id(s.context.trace_id, 32) == TRACE_ID]
    # Parented on the traceparent header (the remote gateway's span of the same name is further down).
    (server,) = [s for s in ours if s.name == "POST /acp/runs" and hex_id(s.parent.span_id, 16) == CALLER_SPAN]
    assert server.kind is SpanKind.SERVER
    assert server.attributes["http.route"] == "/acp/runs"
    assert server.attributes["http.response.status_code"] == 200
    assert server.attributes["gen_ai.operation.name"] == "invoke_agent"
    assert server.attributes["gen_ai.agent.name"] == "far"
    invoke = child(ours, server, "invoke_agent far")
    assert server.attributes["interlace.task.id"] == invoke.attributes["interlace.task.id"]
    worker = child(ours, invoke, "process far")  # the connector, through the bus
    send = child(ours, worker, "POST /runs")
    assert send.kind is SpanKind.CLIENT
    assert send.attributes["gen_ai.agent.name"] == "echo" and send.attributes["url.template"] == "/runs"
    assert send.attributes["server.address"] == "127.0.0.1"
    # The remote gateway's ACP face continued the trace from the connector's traceparent header.
    remote_server = child(ours, send, "POST /acp/runs")
    assert remote_server.kind is SpanKind.SERVER and remote_server.attributes["gen_ai.agent.name"] == "echo"
    remote_invoke = child(ours, remote_server, "invoke_agent echo")
    assert remote_server.attributes["interlace.task.id"] == remote_invoke.attributes["interlace.task.id"]
    child(ours, remote_invoke, "process echo")


async def test_anp_connector_to_a_remote_anp_face_is_one_trace(spans, tmp_path):
    """The internal API (traceparent header) -> the ANP connector (signed JSON-RPC) -> another
    gateway's ANP face -> its echo worker."""
    async with two_gateways(tmp_path) as (_, _, _, url), httpx.AsyncClient(base_url=url, timeout=20) as http:
        body = {"agent": "far-echo", "message": {"role": "user", "parts": [{"kind": "text", "text": "hi"}]}}
        async with asyncio.timeout(30):
            resp = await http.post("/tasks?wait=true", json=body, headers={"traceparent": TRACEPARENT})
        assert resp.json()["status"]["state"] == "completed", resp.text
        ended = await finished(spans, "process echo")

    ours = [s for s in ended if hex_id(s.context.trace_id, 32) == TRACE_ID]
    invoke = named(ours, "invoke_agent far-echo")
    assert hex_id(invoke.parent.span_id, 16) == CALLER_SPAN
    worker = child(ours, invoke, "process far-echo")
    send = child(ours, worker, "send_message")  # the connector's call
    assert send.kind is SpanKind.CLIENT
    assert send.attributes["rpc.system.name"] == "jsonrpc" and send.attributes["rpc.method"] == "send_message"
    assert send.attributes["jsonrpc.request.id"] == invoke.attributes["interlace.task.id"]
    assert send.attributes["server.address"] == "localhost"
    # The remote gateway's ANP face continued the trace from the connector's traceparent header.
    remote_server = child(ours, send, "send_message")
    assert remote_server.kind is SpanKind.SERVER
    assert remote_server.attributes["gen_ai.operation.name"] == "invoke_agent"
    assert remote_server.attributes["gen_ai.agent.name"] == "echo"
    remote_invoke = child(ours, remote_server, "invoke_agent echo")
    assert remote_server.attributes["interlace.task.id"] == remote_invoke.attributes["interlace.task.id"]
    child(ours, remote_invoke, "process echo")


async def test_failed_acp_and_anp_requests_mark_their_spans(spans, tmp_path):
    """An ACP error (its code) and a JSON-RPC error of the ANP face (its code) set ``error.type``
    on the face's SERVER span, in the caller's trace."""
    alice = make_caller(tmp_path, "alice")
    async with (
        anp_gateway(resolve=LocalResolver(alice)) as (url, _),
        httpx.AsyncClient(base_url=url, timeout=10) as http,
    ):
        missing = "/acp/runs/00000000-0000-4000-8000-000000000000"
        assert (await http.get(missing, headers={"traceparent": TRACEPARENT})).status_code == 404
        body = {"jsonrpc": "2.0", "id": 1, "method": "get_task", "params": {"task_id": "nope"}}
        auth = signer(alice)
        headers = auth.get_auth_header(f"{url}/anp/rpc", force_new=True, method="POST", body=json.dumps(body).encode())
        resp = await http.post("/anp/rpc", content=json.dumps(body), headers={**headers, "traceparent": TRACEPARENT})
        code = resp.json()["error"]["code"]
    ended = [s for s in await finished(spans, "get_task") if hex_id(s.context.trace_id, 32) == TRACE_ID]
    acp_span = named(ended, "GET /acp/runs/{run_id}")
    assert acp_span.kind is SpanKind.SERVER and acp_span.attributes["error.type"] == "not_found"
    assert acp_span.attributes["http.response.status_code"] == 404
    anp_span = named(ended, "get_task")
    assert anp_span.kind is SpanKind.SERVER and anp_span.attributes["rpc.method"] == "get_task"
    assert anp_span.attributes["error.type"] == anp_span.attributes["rpc.response.status_code"] == str(code)


def _ask(text: str) -> dict:
    return {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "SendMessage",
        "params": {
            "message": {"messageId": text, "role": "ROLE_USER", "parts": [{"text": text}], "metadata": {"ask": "?"}},
            "metadata": {"agent": "echo"},
        },
    }


async def _follow_up(http: httpx.AsyncClient, face: str, task_id: str) -> None:
    """Continue ``task_id`` over ``face``, in the follow-up trace; returns once it completed."""
    headers = {"traceparent": FOLLOW_UP}
    if face == "a2a":
        message = {"messageId": "f-1", "role": "ROLE_USER", "parts": [{"text": "Paris"}], "taskId": task_id}
        body = {"jsonrpc": "2.0", "id": 2, "method": "SendMessage", "params": {"message": message}}
        resp = await http.post("/a2a", json=body, headers={**A2A, **headers})
    elif face == "acp":
        body = {"await_resume": {"type": "message", "message": {"parts": [{"content": "Paris"}]}}, "mode": "sync"}
        resp = await http.post(f"/acp/runs/{task_id}", json=body, headers=headers)
    elif face == "mcp":  # the send_task tool; trace context in params._meta (2026-07-28)
        arguments = {"agent_or_query": "echo", "message": "Paris", "task_id": task_id}
        raw = ModernRaw(http, str(http.base_url.join("/mcp")))
        resp, answer = await raw.call(
            "tools/call", {"name": "send_task", "arguments": arguments}, traceparent=FOLLOW_UP
        )
        assert not answer["result"].get("isError"), answer
    else:
        body = {"task_id": task_id, "message": {"role": "user", "parts": [{"kind": "text", "text": "Paris"}]}}
        resp = await http.post("/tasks?wait=true", json=body, headers=headers)
    assert resp.status_code == 200, resp.text
    assert (await http.get(f"/tasks/{task_id}")).json()["status"]["state"] == "completed"


@pytest.mark.parametrize("face", ["a2a", "acp", "mcp", "tasks"])
async def test_a_follow_up_is_traced_in_its_own_trace_linked_to_the_tasks_first(spans, face):
    app = create_app(test_config())
    async with serve_app(app) as url, httpx.AsyncClient(base_url=url, timeout=20) as http, asyncio.timeout(30):
        reply = (await http.post("/a2a", json=_ask("weather"), headers={**A2A, "traceparent": TRACEPARENT})).json()
        task = reply["result"]["task"]
        assert task["status"]["state"] == "TASK_STATE_INPUT_REQUIRED", reply
        await finished(spans, "process echo")
        await _follow_up(http, face, task["id"])
        ended = await finished(spans, "process echo", 2)
        stored = await app.state.runtime.backend.tasks.get(task["id"])

    first = [s for s in ended if hex_id(s.context.trace_id, 32) == TRACE_ID]
    first_invoke = named(first, "invoke_agent echo")
    child(first, first_invoke, "process echo")  # the run that asked

    ours = [s for s in ended if hex_id(s.context.trace_id, 32) == FOLLOW_UP_TRACE_ID]
    invoke = named(ours, "invoke_agent echo")
    assert invoke.kind is SpanKind.CLIENT and invoke.attributes["interlace.task.id"] == task["id"]
    (link,) = invoke.links  # to the task's first trace: the span that accepted it
    assert link.context.trace_id == first_invoke.context.trace_id
    assert link.context.span_id == first_invoke.context.span_id
    # Under the follow-up request: its face's SERVER span (the internal API has none), then the caller.
    parent = next((s for s in ours if s.context.span_id == invoke.parent.span_id), None)
    if face == "tasks":
        assert parent is None and hex_id(invoke.parent.span_id, 16) == FOLLOW_UP_SPAN
    else:
        assert parent is not None and parent.kind is SpanKind.SERVER
        assert (
            parent.name == {"a2a": "SendMessage", "acp": "POST /acp/runs/{run_id}", "mcp": "tools/call send_task"}[face]
        )
        assert hex_id(parent.parent.span_id, 16) == FOLLOW_UP_SPAN
    # The worker's run for the follow-up continues the follow-up's trace.
    child(ours, invoke, "process echo")
    assert stored.trace["traceparent"] == f"00-{FOLLOW_UP_TRACE_ID}-{hex_id(invoke.context.span_id, 16)}-01"


@pytest.mark.parametrize("backend_kind", ["embedded", "redis"])
async def test_both_backends_keep_the_context_a_follow_up_gives_a_task(backend):
    first, follow_up = {"traceparent": TRACEPARENT}, {"traceparent": FOLLOW_UP}
    message = Message(role="user", parts=[TextPart(text="x")])
    task = Task(history=[message], route=Route(agent="a"), trace=first)
    await backend.tasks.submit(task, "a", "node")
    for state in (TaskState.WORKING, TaskState.INPUT_REQUIRED):
        task, _ = await backend.tasks.apply(task.id, task.status_event(state))
    resume = task.status_event(TaskState.WORKING, message)
    resume.trace = follow_up
    task, event_id = await backend.tasks.apply(task.id, resume)
    assert task.trace == follow_up and (await backend.tasks.get(task.id)).trace == follow_up
    (stored,) = [e for e in await backend.tasks.read_events(task.id, None, 0) if e.event_id == event_id]
    assert "trace" not in stored.event.dump()  # the context is the task's: events never carry it out


async def _names_include(http: httpx.AsyncClient, name: str) -> bool:
    listed = (await http.get("/registry/agents")).json()
    agents = listed.get("agents", listed) if isinstance(listed, dict) else listed
    return any(a.get("name") == name for a in agents)


async def test_off_by_default_nothing_is_traced_and_tasks_carry_no_context():
    assert not tracing.ON
    assert tracing.span("x") is tracing.NO_SPAN and tracing.carrier() is None
    async with serve_app(create_app(test_config())) as url, httpx.AsyncClient(base_url=url, timeout=20) as http:
        body = {"agent": "echo", "message": {"role": "user", "parts": [{"kind": "text", "text": "hi"}]}}
        done = (await http.post("/tasks?wait=true", json=body, headers={"traceparent": TRACEPARENT})).json()
    assert done["status"]["state"] == "completed" and "trace" not in done


@pytest.mark.parametrize("backend_kind", ["embedded", "redis"])
async def test_both_backends_keep_the_context_a_task_carries(backend):
    carried = {"traceparent": TRACEPARENT, "tracestate": "vendor=1"}
    message = Message(role="user", parts=[TextPart(text="x")])
    task = Task(history=[message], route=Route(agent="a"), trace=carried)
    await backend.tasks.submit(task, "a", "node")
    (delivery,) = await backend.bus.receive("a", "c1", block_ms=1000)
    taken, locked = await backend.take_run(delivery, "c1", 5_000)
    assert locked and taken.trace == carried
    assert (await backend.tasks.get(task.id)).trace == carried


async def test_a_gateway_exports_its_spans_to_a_real_otlp_receiver():
    """``interlace serve`` configured only by OTEL_* variables sends its spans over OTLP/HTTP to a
    real receiver (oteltap, from PyPI: an embeddable OTLP/HTTP protobuf receiver)."""
    from oteltap import OtelTapHttpProtobufReceiver, OtelTapHttpProtobufReceiverSettings

    tap_port, port = free_port(), free_port()
    env = subprocess_env(
        OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{tap_port}",
        OTEL_SERVICE_NAME="interlace-test",
        OTEL_BSP_SCHEDULE_DELAY="50",  # export within 50 ms, not the default 5 s
    )
    async with OtelTapHttpProtobufReceiver(OtelTapHttpProtobufReceiverSettings(http_port=tap_port)) as tap:
        proc = subprocess.Popen(
            interlace_cmd("serve", "--port", str(port), "--no-gossip"),
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:

                async def up():
                    with contextlib.suppress(httpx.HTTPError):
                        return (await http.get("/readyz")).status_code == 200

                await wait_until(up, timeout=30)

                def ours(name: str):
                    return lambda span: span.name == name and span.trace_id.hex() == TRACE_ID

                # oteltap hands a span only to those already waiting for it: wait, then call.
                names = ("SendMessage", "invoke_agent echo", "process echo")
                waits = [asyncio.ensure_future(tap.await_trace(ours(name), timeout=20)) for name in names]
                body = {
                    "jsonrpc": "2.0",
                    "id": 1,
                    "method": "SendMessage",
                    "params": {
                        "message": {"messageId": "m-2", "role": "ROLE_USER", "parts": [{"text": "hi"}]},
                        "metadata": {"agent": "echo"},
                    },
                }
                reply = (await http.post("/a2a", json=body, headers={**A2A, "traceparent": TRACEPARENT})).json()
                assert reply["result"]["task"]["status"]["state"] == "TASK_STATE_COMPLETED"
            server, invoke, worker = await asyncio.gather(*waits)
        finally:
            stop_process(proc)
    assert server.parent_span_id.hex() == CALLER_SPAN
    assert invoke.parent_span_id == server.span_id and worker.parent_span_id == invoke.span_id
    attributes = {a.key: a.value.string_value for a in invoke.attributes}
    assert attributes["interlace.task.id"] == reply["result"]["task"]["id"]
