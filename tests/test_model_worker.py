"""The model worker behind a live gateway (tiny random Llama, CPU, offline): the HTTP task API
end to end, streaming, batching across tasks, cancel, out-of-memory recovery, metrics, skills,
options, and the ``worker model`` command line."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import subprocess
import sys

import httpx
import pytest

pytest.importorskip("torch", reason="the model extra is not installed: pip install torch==2.13.0 '.[model]'")
pytest.importorskip("transformers", reason="the model extra is not installed: pip install '.[model]'")

from prometheus_client import CollectorRegistry, generate_latest  # noqa: E402

from agents.model.base import GenOptions, Prompt, Usage  # noqa: E402
from agents.model.cli import add_parser  # noqa: E402
from agents.model.hf import TransformersBackend  # noqa: E402
from agents.model.metrics import ModelMetrics  # noqa: E402
from agents.model.tiny import build_tiny_model  # noqa: E402
from agents.model.worker import ModelWorker  # noqa: E402
from agents.worker import TaskFailed  # noqa: E402
from gateway.core.runtime import UnknownAgent  # noqa: E402
from schemas import Message, Route, Task, TaskState, TextPart  # noqa: E402
from schemas.agent_record import record_from_card  # noqa: E402
from tests.conftest import free_port, interlace_cmd, running_gateway, subprocess_env, test_config, wait_until  # noqa: E402


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny-llama")


@pytest.fixture(scope="module")
def tiny(tiny_dir):
    backend = TransformersBackend.load(str(tiny_dir), device="cpu", model_name="tiny-llama")
    return backend.model, backend.tokenizer


@pytest.fixture
def worker(tiny):
    backend = TransformersBackend(tiny[0], tiny[1], max_batch=8, model_name="tiny-llama")
    return ModelWorker(backend, agent="model", max_tokens_limit=2048)


def ask(text: str, **meta) -> dict:
    return {"role": "user", "parts": [{"kind": "text", "text": text}], **({"metadata": meta} if meta else {})}


async def expected(tiny, text: str, max_tokens: int) -> str:
    """What the model answers alone (greedy), from a backend of its own."""
    backend = TransformersBackend(tiny[0], tiny[1], max_batch=1)
    out = [
        p
        async for p in backend.generate(
            Prompt(messages=[{"role": "user", "content": text}]), GenOptions(max_tokens=max_tokens), Usage()
        )
    ]
    await backend.close()
    return "".join(out)


@contextlib.asynccontextmanager
async def gateway_with(worker, **config):
    async with running_gateway(test_config(**config), workers=[worker]) as (url, app):
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            yield client, app
    await worker.backend.close()


# ---- options and the record ------------------------------------------------------------------


def _task(text="hi", task_meta=None, msg_meta=None, skill=None) -> Task:
    task = Task(metadata=task_meta or {}, route=Route(agent="model", skill=skill))
    task.history.append(Message(role="user", parts=[TextPart(text=text)], metadata=msg_meta))
    return task


def test_options_come_from_the_task_then_the_last_message(worker):
    options, prompt = worker.parse(
        _task(
            task_meta={"max_tokens": 5, "temperature": 0.5, "system": "Be brief."},
            msg_meta={"max_tokens": 7, "stop": "x", "seed": 3},
        )
    )
    assert (options.max_tokens, options.temperature, options.stop, options.seed) == (7, 0.5, ["x"], 3)
    # A2A metadata is a protobuf Struct: its integers arrive as doubles.
    options, _ = worker.parse(_task(msg_meta={"max_tokens": 7.0, "seed": 3.0}))
    assert (options.max_tokens, options.seed) == (7, 3) and isinstance(options.max_tokens, int)
    assert prompt.messages == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]
    _, raw = worker.parse(_task("Once upon", msg_meta={"skill": "text-generation"}))
    assert raw.text == "Once upon" and raw.messages is None
    _, summary = worker.parse(_task("Long text.", skill="summarise"))  # the router's choice wins
    assert summary.messages[-1]["content"].startswith("Summarise the following text") and summary.messages[-1][
        "content"
    ].endswith("Long text.")


@pytest.mark.parametrize(
    "meta, message",
    [
        ({"max_tokens": "ten"}, "'max_tokens' must be an integer"),
        ({"max_tokens": 0}, "'max_tokens' must be an integer in [1, 2048]"),
        ({"max_tokens": 7.5}, "'max_tokens' must be an integer"),
        ({"max_tokens": 10**6}, "'max_tokens' must be an integer"),
        ({"temperature": 9}, "'temperature' must be a number"),
        ({"temperature": True}, "'temperature' must be a number"),
        ({"stop": [1]}, "'stop' must be a string or a list"),
        ({"stop": ["a"] * 9}, "'stop' must be a string or a list"),
        ({"skill": "dance"}, "unknown skill 'dance'"),
        ({"system": 5}, "'system' must be a string"),
    ],
)
def test_bad_options_are_clear_errors(worker, meta, message):
    with pytest.raises(TaskFailed) as err:
        worker.parse(_task(msg_meta=meta))
    assert message in str(err.value)


async def test_skills_and_measured_hints_make_a_valid_agent_record(worker):
    hints = await worker.calibrate(tokens=8)
    assert hints["latency_ms_per_token"] >= 1 and hints["latency_first_token_ms"] >= 1 and hints["max_batch"] == 8
    assert all(type(v) is int for v in hints.values())  # records take no floats
    assert [s["id"] for s in worker.skills()] == ["chat", "text-generation", "summarize"]
    record = record_from_card(
        worker.card(), "did:key:z6MkhaXgBZDvotDkL5257faiztiGiC2QtKLGpbnnEGta2doK", 1, 60, "interlace", "node-a"
    )
    assert record.name == "model" and record.endpoints.bus == "model"
    assert [s.id for s in record.skills] == ["chat", "text-generation", "summarize"]
    assert record.cost == hints["cost"] == hints["latency_ms_per_token"] * 1000
    assert record.labels["model"] == "tiny-llama" and record.labels["model.backend"] == "transformers"
    assert record.labels["model.latency_ms_per_token"] == str(hints["latency_ms_per_token"])
    await worker.backend.close()


# ---- through the gateway ---------------------------------------------------------------------


@pytest.mark.parametrize("bus", ["embedded", "redis"])
async def test_http_task_api_end_to_end(worker, tiny, bus, request):
    config = {"redis_url": request.getfixturevalue("redis_server").url} if bus == "redis" else {}
    if bus == "redis":
        request.getfixturevalue("redis_server").flush()
    async with gateway_with(worker, **config) as (client, _):
        resp = await client.post(
            "/tasks?wait=true", json={"agent": "model", "message": ask("Hello!"), "metadata": {"max_tokens": 12}}
        )
        assert resp.status_code == 200, resp.text
        task = resp.json()
        assert task["status"]["state"] == "completed"
        [artifact] = task["artifacts"]
        assert artifact["name"] == "response"
        assert artifact["parts"] == [{"kind": "text", "text": await expected(tiny, "Hello!", 12)}]


async def test_tokens_stream_as_appended_chunks_of_one_artifact(worker):
    async with gateway_with(worker) as (client, app):
        rt = app.state.runtime
        task = await rt.submit(
            Message(
                role="user", parts=[TextPart(text="Stream please")], metadata={"max_tokens": 20, "ignore_eos": True}
            ),
            agent="model",
        )
        events = []

        async def follow():
            async for stored in rt.follow(task.id):
                events.append(stored.event)

        await asyncio.wait_for(follow(), 20)
        chunks = [e for e in events if e.kind == "artifact-update"]
        assert len(chunks) >= 2 and not chunks[0].append and all(c.append for c in chunks[1:])
        assert chunks[-1].last_chunk and not any(c.last_chunk for c in chunks[:-1])
        done = await rt.get(task.id)
        assert done.state is TaskState.COMPLETED
        assert "".join(c.artifact.parts[0].text for c in chunks) == done.artifacts[0].parts[0].text
        final = events[-1]
        assert final.kind == "status-update" and final.status.state is TaskState.COMPLETED
        assert (
            final.metadata["usage"]["completion_tokens"] == 20 and final.metadata["usage"]["finish_reason"] == "length"
        )


async def test_concurrent_tasks_share_forward_passes(worker, tiny):
    prompts = [
        "One",
        "Two words",
        "Three words here",
        "A much longer question about many different things",
        "Five",
        "Six",
    ]
    async with gateway_with(worker) as (client, _):
        resps = await asyncio.gather(
            *(
                client.post(
                    "/tasks?wait=true", json={"agent": "model", "message": ask(p, max_tokens=16, ignore_eos=True)}
                )
                for p in prompts
            )
        )
        assert all(r.json()["status"]["state"] == "completed" for r in resps)
        assert worker.backend.steps < len(prompts) * 16 / 2  # six tasks of 16 tokens, far fewer passes
    for prompt, resp in zip(prompts, resps):
        alone = TransformersBackend(tiny[0], tiny[1], max_batch=1)
        want = "".join(
            [
                p
                async for p in alone.generate(
                    Prompt(messages=[{"role": "user", "content": prompt}]), GenOptions(max_tokens=16, ignore_eos=True)
                )
            ]
        )
        assert resp.json()["artifacts"][0]["parts"][0]["text"] == want


async def test_cancel_through_the_gateway_frees_the_slot_and_the_worker_goes_on(worker, tiny):
    async with gateway_with(worker) as (client, app):
        rt = app.state.runtime
        task = await rt.submit(
            Message(
                role="user", parts=[TextPart(text="Go on forever")], metadata={"max_tokens": 2000, "ignore_eos": True}
            ),
            agent="model",
        )

        async def first_chunk():
            async for stored in rt.follow(task.id):
                if stored.event.kind == "artifact-update":
                    return

        await asyncio.wait_for(first_chunk(), 20)
        resp = await client.post(f"/tasks/{task.id}:cancel")
        assert resp.status_code == 200 and resp.json()["status"]["state"] == "canceled"

        async def idle():
            return worker.backend.active == 0 and worker.backend.waiting == 0

        await wait_until(idle, timeout=10, interval=0.005)
        assert worker.backend.steps < 2000
        resp = await client.post(
            "/tasks?wait=true", json={"agent": "model", "message": ask("Hello!"), "metadata": {"max_tokens": 6}}
        )
        assert resp.json()["status"]["state"] == "completed"
        assert resp.json()["artifacts"][0]["parts"][0]["text"] == await expected(tiny, "Hello!", 6)


async def test_out_of_memory_fails_the_task_clearly_and_the_worker_keeps_serving(worker, tiny, monkeypatch):
    import torch

    real, state = tiny[0].forward, {"armed": True}

    def forward(*args, **kwargs):
        if state["armed"]:
            state["armed"] = False
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return real(*args, **kwargs)

    monkeypatch.setattr(tiny[0], "forward", forward)
    async with gateway_with(worker) as (client, app):
        worker.metrics = worker.backend.metrics = ModelMetrics(app.state.runtime.metrics.registry, "model")
        failed = (await client.post("/tasks?wait=true", json={"agent": "model", "message": ask("Hello!")})).json()
        assert failed["status"]["state"] == "failed"
        note = failed["status"]["message"]["parts"][0]["text"]
        assert note.startswith("out of memory on cpu while prefilling 1 prompt") and "still serving" in note
        ok = (
            await client.post(
                "/tasks?wait=true", json={"agent": "model", "message": ask("Hello!"), "metadata": {"max_tokens": 5}}
            )
        ).json()
        assert ok["status"]["state"] == "completed"
        metrics = (await client.get("/metrics")).text
        assert 'interlace_model_requests_total{agent="model",outcome="oom"} 1.0' in metrics
        assert 'interlace_model_requests_total{agent="model",outcome="completed"} 1.0' in metrics


async def test_metrics_render_on_the_gateway_registry(worker):
    async with gateway_with(worker) as (client, app):
        worker.metrics = worker.backend.metrics = ModelMetrics(app.state.runtime.metrics.registry, "model")
        resp = await client.post(
            "/tasks?wait=true", json={"agent": "model", "message": ask("Hi", max_tokens=10, ignore_eos=True)}
        )
        assert resp.json()["status"]["state"] == "completed"
        text = (await client.get("/metrics")).text
    assert 'interlace_model_tokens_generated_total{agent="model"} 10.0' in text
    rate = next(line for line in text.splitlines() if line.startswith("interlace_model_tokens_per_second{"))
    assert float(rate.split()[-1]) > 0
    assert (
        'interlace_model_batch_size{agent="model"} 0.0' in text
        and 'interlace_model_queue_depth{agent="model"} 0.0' in text
    )
    assert "interlace_model_step_seconds_bucket" in text


def test_gpu_memory_gauge_reads_the_probe_at_scrape_time():
    registry = CollectorRegistry()
    metrics = ModelMetrics(registry, "gpu-model")
    memory = {"allocated": 1_000, "reserved": 4_000}
    metrics.watch_memory(lambda: dict(memory))
    memory["allocated"] = 2_500
    text = generate_latest(registry).decode()
    assert 'interlace_model_gpu_memory_bytes{agent="gpu-model",kind="allocated"} 2500.0' in text
    assert 'interlace_model_gpu_memory_bytes{agent="gpu-model",kind="reserved"} 4000.0' in text


# ---- the command line ------------------------------------------------------------------------


def test_add_parser_wires_into_the_worker_subcommands():
    root = argparse.ArgumentParser(prog="interlace")
    worker = root.add_subparsers(dest="command").add_parser("worker")
    add_parser(worker.add_subparsers(dest="kind"))
    args = root.parse_args(
        ["worker", "model", "--model", "/m", "--device", "cuda:1", "--max-batch", "4", "--redis", "redis://r:6379/0"]
    )
    assert (args.kind, args.model, args.device, args.max_batch, args.redis_url, args.agent_name) == (
        "model",
        "/m",
        "cuda:1",
        4,
        "redis://r:6379/0",
        "model",
    )
    with pytest.raises(SystemExit):
        root.parse_args(["worker", "model", "--model", "/m", "--device", "tpu"])


def test_cli_module_imports_nothing_heavy():
    code = "import sys, agents.model.cli; assert not {'torch', 'transformers'} & set(sys.modules), sorted(sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], env=subprocess_env(), capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--model", "/nonexistent/model"], "no model at '/nonexistent/model'"),
        (
            ["--model", "/nonexistent/model", "--key", "/nonexistent/key.json"],
            "cannot open key file /nonexistent/key.json",
        ),
    ],
)
def test_cli_bad_paths_are_clear_errors(flags, message):
    cmd = [*interlace_cmd("worker", "model"), *flags, "--gateway", "http://127.0.0.1:9"]
    out = subprocess.run(cmd, env=subprocess_env(), capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and message in out.stderr and "Traceback" not in out.stderr


@pytest.mark.parametrize("bus", ["gateway", "redis"])
async def test_cli_worker_serves_tasks_and_metrics(tiny_dir, bus, request):
    """``interlace worker model`` over HTTP or straight on Redis."""
    metrics_port, config = free_port(), test_config(echo=False)
    if bus == "redis":
        server = request.getfixturevalue("redis_server")
        server.flush()
        config = test_config(echo=False, redis_url=server.url)
    async with running_gateway(config) as (url, app):
        where = (
            ["--gateway", url]
            if bus == "gateway"
            else ["--redis", config.redis_url, "--visibility-timeout-ms", str(config.visibility_timeout_ms)]
        )
        cmd = [
            *interlace_cmd("worker", "model"),
            "--model",
            str(tiny_dir),
            *where,
            "--name",
            "tiny",
            "--max-batch",
            "4",
            "--metrics-port",
            str(metrics_port),
            "--threads",
            "1",
        ]
        proc = subprocess.Popen(cmd, env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:

            async def live():
                try:
                    return await app.state.runtime.resolve_agent("tiny")
                except UnknownAgent:
                    return None

            await wait_until(live, timeout=90, interval=0.1)
            async with httpx.AsyncClient(base_url=url, timeout=30) as client:
                resp = await client.post(
                    "/tasks?wait=true", json={"agent": "tiny", "message": ask("Hello!", max_tokens=8, ignore_eos=True)}
                )
                assert resp.json()["status"]["state"] == "completed"
                assert resp.json()["artifacts"][0]["parts"][0]["text"]
                scraped = (await client.get(f"http://127.0.0.1:{metrics_port}/metrics")).text
            # 8 tokens for the task plus the 16 of the start-up measurement
            assert 'interlace_model_tokens_generated_total{agent="tiny"} 24.0' in scraped
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                _, err = await asyncio.to_thread(proc.communicate, timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                _, err = proc.communicate()
        assert proc.returncode == 0, err[-2000:]
        assert (
            '"msg": "model loaded"' in err and '"msg": "model calibrated"' in err and '"msg": "worker stopped"' in err
        )
