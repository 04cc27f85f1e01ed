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
* Once against a real OTLP/HTTP receiver: ``interlace serve``, configured by OTEL_* alone.
* Off (the default), nothing is traced and tasks carry no context; the backends (both) store
  and hand out the context a task carries.
"""

from __future__ import annotations

import asyncio
import contextlib
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
from schemas import Message, Route, Task, TextPart
from tests.conftest import (
    free_port,
    interlace_cmd,
    serve_app,
    stop_process,
    subprocess_env,
    test_config,
    wait_until,
)
from tests.fixtures.mcp_support import ModernRaw

pytestmark = pytest.mark.timeout(60)

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{CALLER_SPAN}-01"
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
