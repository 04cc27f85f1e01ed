"""The transformers backend on a tiny random Llama: loading, continuous batching, streaming,
stop strings, sampling, cancel promptness and out-of-memory recovery (CPU, offline)."""

from __future__ import annotations

import asyncio

import pytest

torch = pytest.importorskip("torch", reason="the model extra is not installed: pip install torch==2.13.0 '.[model]'")
pytest.importorskip("transformers", reason="the model extra is not installed: pip install '.[model]'")

from agents.model.base import GenOptions, ModelError, ModelOOM, Prompt, PromptTooLong, TextStream, Usage  # noqa: E402
from agents.model.hf import TransformersBackend  # noqa: E402
from agents.model.loader import load_backend, resolve  # noqa: E402
from agents.model.tiny import build_tiny_model  # noqa: E402

PROMPTS = [
    "a",
    "Hello there",
    "What are the primary colors of paint? Tell me more about them",
    "The quick brown fox jumps over the lazy dog. Pack my box with five dozen liquor jugs, please.",
    "Summarise",
]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny-llama")


@pytest.fixture(scope="module")
def tiny(tiny_dir):
    """The model and tokenizer, loaded once through the worker's own loader."""
    backend = load_backend(str(tiny_dir), backend="transformers", device="cpu", max_batch=8)
    assert backend.kind == "transformers" and backend.device == "cpu" and backend.dtype == "float32"
    return backend.model, backend.tokenizer


def make(tiny, max_batch: int = 8) -> TransformersBackend:
    model, tokenizer = tiny
    return TransformersBackend(model, tokenizer, max_batch=max_batch, model_name="tiny")


async def collect(backend, prompt: str, **opts) -> tuple[str, Usage, list[str]]:
    usage, pieces = Usage(), []
    options = GenOptions(**{"max_tokens": 24, "ignore_eos": True, **opts})
    async for piece in backend.generate(Prompt(text=prompt), options, usage):
        pieces.append(piece)
    return "".join(pieces), usage, pieces


def reference(tiny, prompt: str, n: int) -> str:
    """Unbatched greedy decoding the slow, obvious way: the whole sequence, no cache, each step."""
    model, tokenizer = tiny
    ids = tokenizer(prompt).input_ids
    out = []
    with torch.inference_mode():
        for _ in range(n):
            out.append(int(model(torch.tensor([ids + out])).logits[0, -1].argmax()))
    return tokenizer.decode(out, skip_special_tokens=True)


def test_resolve_rejects_what_is_not_a_local_model(tmp_path, tiny_dir):
    with pytest.raises(ModelError, match="nothing is downloaded"):
        resolve("HuggingFaceTB/SmolLM2-135M-Instruct")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="neither a config.json"):
        resolve(str(tmp_path / "empty"))
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(ModelError, match="not a .gguf"):
        resolve(str(tmp_path / "weights.bin"))
    source = resolve(str(tiny_dir))
    assert source.gguf_file is None and source.name == "tiny-llama"
    with pytest.raises(ModelError, match="llamacpp backend needs a .gguf"):
        load_backend(str(tiny_dir), backend="llamacpp")


async def test_batched_greedy_equals_unbatched(tiny):
    """Five prompts of different lengths decoded together give exactly the unbatched tokens."""
    batched = make(tiny, max_batch=8)
    together = await asyncio.gather(*(collect(batched, p) for p in PROMPTS))
    assert batched.prefills == 1  # one shared prefill ...
    assert batched.steps == 24  # ... then 23 shared decode passes for 5 x 24 tokens
    single = make(tiny, max_batch=1)
    alone = [await collect(single, p) for p in PROMPTS]
    assert single.steps == 5 * 24
    for prompt, (text, usage, _), (text1, usage1, _) in zip(PROMPTS, together, alone):
        assert text == text1 == reference(tiny, prompt, 24)
        assert usage.completion_tokens == usage1.completion_tokens == 24
        assert usage.finish_reason == "length"
    await batched.close()
    await single.close()


async def test_requests_joining_a_running_batch_match_unbatched(tiny):
    """Continuous batching: newcomers merge into a batch that is already decoding."""
    backend = make(tiny, max_batch=4)
    first_piece = asyncio.Event()
    usage = Usage()

    async def long_one():
        out = []
        async for piece in backend.generate(Prompt(text=PROMPTS[3]), GenOptions(max_tokens=40, ignore_eos=True), usage):
            out.append(piece)
            if usage.completion_tokens >= 5:
                first_piece.set()
        return "".join(out)

    runner = asyncio.create_task(long_one())
    await asyncio.wait_for(first_piece.wait(), 10)
    late = await asyncio.gather(*(collect(backend, p, max_tokens=16) for p in PROMPTS[:3]))
    assert await asyncio.wait_for(runner, 20) == reference(tiny, PROMPTS[3], 40)
    for prompt, (text, _, _) in zip(PROMPTS[:3], late):
        assert text == reference(tiny, prompt, 16)
    assert backend.prefills == 2 and backend.steps < 40 + 16
    await backend.close()


async def test_more_requests_than_slots_queue_and_all_finish(tiny):
    backend = make(tiny, max_batch=2)
    results = await asyncio.wait_for(asyncio.gather(*(collect(backend, p, max_tokens=8) for p in PROMPTS)), 30)
    assert [u.completion_tokens for _, u, _ in results] == [8] * 5
    assert backend.active == 0 and backend.waiting == 0
    await backend.close()


async def test_chat_template_and_eos(tiny):
    backend = make(tiny)
    prompt = Prompt(messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"}])
    ids = backend.encode(prompt)
    text = backend.tokenizer.decode(ids)
    assert text == "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n"
    # Without ignore_eos, generation ends at the end-of-turn token whenever the model emits it.
    usage = Usage()
    async for _ in backend.generate(prompt, GenOptions(max_tokens=200), usage):
        pass
    assert usage.finish_reason in ("stop", "length") and usage.prompt_tokens == len(ids)
    await backend.close()


async def test_stop_strings_end_generation_before_the_stop(tiny):
    backend = make(tiny)
    full, _, _ = await collect(backend, PROMPTS[1], max_tokens=40)
    stop = next(full[i : i + 3] for i in range(8, len(full) - 3) if "\ufffd" not in full[i : i + 3])
    cut, usage, pieces = await collect(backend, PROMPTS[1], max_tokens=40, stop=[stop, "never-appears"])
    assert cut == full[: full.index(stop)]
    assert usage.finish_reason == "stop" and usage.completion_tokens < 40
    assert not any(stop in p for p in pieces)
    await backend.close()


def test_text_stream_holds_back_partial_stops_and_split_characters():
    stream = TextStream(lambda ids: "".join(chr(i) for i in ids), stop=["END"])
    assert [stream.push(ord(c)) for c in "aEN"] == ["a", "", ""]
    assert stream.push(ord("x")) == "ENx"  # not a stop after all: released
    assert [stream.push(ord(c)) for c in "END"] == ["", "", ""] and stream.stopped
    assert stream.finish() == ""
    raw = "é".encode()  # a two-byte character split over two byte tokens
    stream = TextStream(lambda ids: bytes(ids).decode("utf-8", errors="replace"))
    assert stream.push(raw[0]) == "" and stream.push(raw[1]) == "é" and stream.finish() == ""


async def test_sampling_is_reproducible_with_a_seed(tiny):
    backend = make(tiny)
    a, b, c = await asyncio.gather(
        collect(backend, PROMPTS[2], temperature=1.0, top_p=0.9, seed=7),
        collect(backend, PROMPTS[2], temperature=1.0, top_p=0.9, seed=7),
        collect(backend, PROMPTS[2], temperature=1.0, top_p=0.9, seed=8),
    )
    assert a[0] == b[0] != c[0]
    assert a[0] != reference(tiny, PROMPTS[2], 24)  # sampled, not greedy
    await backend.close()


async def test_prompt_longer_than_the_context_is_refused(tiny):
    backend = make(tiny)
    backend.context_length = 16
    with pytest.raises(PromptTooLong, match="context is 16"):
        await collect(backend, PROMPTS[3])
    # max_tokens is capped by the room left in the context.
    _, usage, _ = await collect(backend, "Hello", max_tokens=100)
    assert usage.prompt_tokens + usage.completion_tokens == 16 and usage.finish_reason == "length"
    await backend.close()


async def test_cancel_frees_the_slot_within_one_step(tiny):
    backend = make(tiny, max_batch=4)
    usages = [Usage() for _ in range(3)]
    started = asyncio.Event()

    async def consume(i: int):
        async for _ in backend.generate(
            Prompt(text=PROMPTS[i]), GenOptions(max_tokens=400, ignore_eos=True), usages[i]
        ):
            if i == 1 and usages[i].completion_tokens >= 3:
                started.set()

    jobs = [asyncio.create_task(consume(i)) for i in range(3)]
    await asyncio.wait_for(started.wait(), 10)
    jobs[1].cancel()
    with pytest.raises(asyncio.CancelledError):
        await jobs[1]
    canceled = usages[1]
    assert canceled.finish_reason == "canceled" and canceled.cancel_step is not None

    async def freed():
        while canceled.freed_step is None:
            await asyncio.sleep(0.001)

    await asyncio.wait_for(freed(), 5)
    assert canceled.freed_step - canceled.cancel_step <= 1
    assert backend.active == 2
    # A waiting request that is canceled leaves the queue without ever running.
    backend.max_batch = 2
    waiter = asyncio.create_task(collect(backend, "queued", max_tokens=5))
    await asyncio.sleep(0)  # let it enqueue
    assert backend.waiting == 1
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    for job in (jobs[0], jobs[2]):
        job.cancel()
    await asyncio.gather(jobs[0], jobs[2], return_exceptions=True)

    async def drained():
        while backend.active or backend.waiting:
            await asyncio.sleep(0.001)

    await asyncio.wait_for(drained(), 5)
    # ... and the engine keeps serving.
    text, usage, _ = await collect(backend, PROMPTS[0], max_tokens=6)
    assert usage.completion_tokens == 6 and text == reference(tiny, PROMPTS[0], 6)
    await backend.close()


def _inject(monkeypatch, model, should_fail, error):
    real = model.forward
    calls = {"n": 0}

    def forward(*args, **kwargs):
        calls["n"] += 1
        if should_fail(calls["n"], kwargs):
            raise error
        return real(*args, **kwargs)

    monkeypatch.setattr(model, "forward", forward)
    return calls


@pytest.mark.parametrize(
    "error", [torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), MemoryError()]
)
async def test_out_of_memory_in_prefill_fails_only_the_newcomers(tiny, monkeypatch, error):
    backend = make(tiny)
    running = asyncio.create_task(collect(backend, PROMPTS[1], max_tokens=30))
    while backend.active == 0:
        await asyncio.sleep(0.001)
    # The next prefill (input longer than one token) runs out of memory.
    _inject(monkeypatch, tiny[0], lambda n, kw: kw["input_ids"].shape[1] > 1, error)
    with pytest.raises(ModelOOM, match="out of memory on cpu while prefilling 1 prompt"):
        await collect(backend, PROMPTS[2])
    monkeypatch.undo()
    text, usage, _ = await asyncio.wait_for(running, 10)
    assert usage.completion_tokens == 30 and text == reference(tiny, PROMPTS[1], 30)
    text, _, _ = await collect(backend, PROMPTS[0], max_tokens=5)
    assert text == reference(tiny, PROMPTS[0], 5)
    await backend.close()


async def test_out_of_memory_in_decode_fails_the_batch_and_the_engine_keeps_serving(tiny, monkeypatch):
    backend = make(tiny)
    calls = _inject(monkeypatch, tiny[0], lambda n, kw: n == 4, torch.OutOfMemoryError("CUDA out of memory."))
    results = await asyncio.gather(*(collect(backend, p, max_tokens=20) for p in PROMPTS[:2]), return_exceptions=True)
    assert all(isinstance(r, ModelOOM) and "decoding a batch of 2" in str(r) for r in results)
    assert calls["n"] == 4 and backend.active == 0
    text, usage, _ = await collect(backend, PROMPTS[2], max_tokens=7)
    assert usage.completion_tokens == 7 and text == reference(tiny, PROMPTS[2], 7)
    await backend.close()
