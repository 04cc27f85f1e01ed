"""``interlace worker model``: serve a local model as an agent on the bus.

  interlace worker model --model PATH [--backend auto|transformers|llamacpp]
                         [--device auto|cuda|cpu] [--dtype auto|bfloat16|float16|float32]
                         [--max-batch N] [--name AGENT] [--gateway URL | --redis URL]
                         [--key FILE] [--network NAME] [--metrics-port PORT] ...
  interlace worker model --backend openai --base-url URL --model NAME [--api-key-file FILE]
                         [--max-inflight N] ...    # an engine: vLLM, SGLang, llama.cpp, Ollama...

``gateway/cli.py`` wires it in with ``add_parser(kinds)`` (the ``worker`` sub-commands) and
``run(args, config)``. This module imports nothing heavy: torch and transformers load only in
``run``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time

from agents.serve import add_bus_flags  # light: torch and transformers load only in run()

log = logging.getLogger("interlace.model")


def _device(value: str) -> str:
    if value in ("auto", "cpu", "cuda") or (value.startswith("cuda:") and value[5:].isdigit()):
        return value
    raise argparse.ArgumentTypeError("use auto, cpu, cuda or cuda:N")


def add_parser(kinds: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``model`` to the ``worker`` sub-commands."""
    p = kinds.add_parser("model", help="a local model (transformers or llama.cpp) as an agent")
    p.add_argument(
        "--model",
        required=True,
        metavar="PATH",
        help="local model directory, .gguf file, or 'smollm2' (nothing is downloaded); "
        "with --backend openai, the model's name on the engine",
    )
    p.add_argument(
        "--backend",
        choices=["auto", "transformers", "llamacpp", "openai"],
        default="auto",
        help="auto: llama.cpp for a GGUF on CPU when installed, else transformers; "
        "openai: an OpenAI-compatible engine at --base-url",
    )
    p.add_argument("--base-url", metavar="URL", help="the engine's OpenAI-compatible API (--backend openai)")
    p.add_argument(
        "--api-key-file", metavar="FILE", help="a file holding the engine's API key (--backend openai; never logged)"
    )
    p.add_argument(
        "--max-inflight",
        type=int,
        default=8,
        help="requests sent to the engine at once (--backend openai); the rest wait on the bus",
    )
    p.add_argument("--device", type=_device, default="auto", help="auto (CUDA when available), cpu, cuda or cuda:N")
    p.add_argument(
        "--dtype",
        choices=["auto", "bfloat16", "float16", "float32"],
        default="auto",
        help="transformers weights: auto = bfloat16 on GPU, float32 on CPU",
    )
    p.add_argument("--max-batch", type=int, default=8, help="sequences decoded together (transformers backend)")
    p.add_argument("--max-tokens", type=int, default=256, help="default max_tokens of a request")
    p.add_argument("--max-tokens-limit", type=int, default=4096, help="largest max_tokens a request may ask for")
    p.add_argument("--context", type=int, help="context length (llama.cpp default 4096; transformers: the model's)")
    p.add_argument("--threads", type=int, help="CPU threads for the model")
    p.add_argument("--name", dest="agent_name", default="model", help="agent name (its bus stream); default 'model'")
    add_bus_flags(p)
    p.add_argument("--concurrency", type=int, help="tasks taken at once (default 2 x --max-batch; the rest queue)")
    p.add_argument("--metrics-port", type=int, default=0, help="serve Prometheus metrics on this port (0: off)")
    p.add_argument("--metrics-host", default="127.0.0.1", help="bind address of the metrics port")
    p.add_argument("--no-calibrate", dest="calibrate", action="store_false", help="skip the start-up speed measurement")
    return p


async def run(args: argparse.Namespace, config, link=None) -> int:
    """Load the model, then consume its bus stream until SIGINT/SIGTERM (like ``run_worker``).

    ``link`` (a ``WorkerLink``) lets the caller build the bus link the way ``run_worker`` does;
    by default it is an HttpLink to ``--gateway`` or a DirectLink on ``--redis``."""
    from prometheus_client import CollectorRegistry

    from agents.model.base import ModelError
    from agents.model.loader import load_backend
    from agents.model.metrics import ModelMetrics
    from agents.model.worker import ModelWorker

    if args.max_batch < 1 or args.max_tokens < 1 or args.max_tokens_limit < args.max_tokens:
        print(
            "interlace: --max-batch and --max-tokens must be >= 1, and --max-tokens-limit >= --max-tokens",
            file=sys.stderr,
        )
        return 2
    registry = CollectorRegistry()
    metrics = ModelMetrics(registry, args.agent_name)
    if args.backend == "openai":
        worker = await _engine_worker(args, metrics)
        if worker is None:
            return 2
        return await _serve(worker, args, config, link, registry, metrics)
    log.info("loading model", extra={"model": args.model, "backend": args.backend, "device": args.device})
    started = time.monotonic()
    try:
        backend = await asyncio.to_thread(
            load_backend,
            args.model,
            backend=args.backend,
            device=args.device,
            dtype=args.dtype,
            max_batch=args.max_batch,
            context=args.context,
            threads=args.threads,
            metrics=metrics,
        )
    except ModelError as exc:
        print(f"interlace: {exc}", file=sys.stderr)
        return 2
    log.info(
        "model loaded",
        extra={
            "model": backend.model_name,
            "backend": backend.kind,
            "device": backend.device,
            "seconds": round(time.monotonic() - started, 2),
        },
    )
    if backend.memory_bytes():
        metrics.watch_memory(backend.memory_bytes)
    worker = ModelWorker(
        backend,
        agent=args.agent_name,
        concurrency=args.concurrency,
        default_max_tokens=args.max_tokens,
        max_tokens_limit=args.max_tokens_limit,
        metrics=metrics,
    )
    try:
        return await _serve(worker, args, config, link, registry, metrics)
    finally:
        await backend.close()


async def _engine_worker(args: argparse.Namespace, metrics):
    """An EngineWorker for ``--backend openai``, or None (the reason printed) when misconfigured."""
    from agents.model.base import ModelError
    from agents.model.engine_worker import EngineWorker
    from agents.model.openai_api import OpenAIEngine

    if not args.base_url or args.max_inflight < 1:
        print("interlace: --backend openai needs --base-url URL, and --max-inflight >= 1", file=sys.stderr)
        return None
    api_key = None
    if args.api_key_file:
        try:
            with open(args.api_key_file, encoding="utf-8") as f:
                api_key = f.read().strip()
        except OSError as exc:
            print(f"interlace: cannot read --api-key-file: {exc.strerror}", file=sys.stderr)
            return None
    engine = OpenAIEngine(args.base_url, args.model, api_key=api_key, max_inflight=args.max_inflight, metrics=metrics)
    worker = EngineWorker(
        engine,
        agent=args.agent_name,
        default_max_tokens=args.max_tokens,
        max_tokens_limit=args.max_tokens_limit,
        metrics=metrics,
    )
    try:
        served = await worker.start()
    except ModelError as exc:
        await engine.close()
        print(f"interlace: {exc}", file=sys.stderr)
        return None
    log.info(
        "engine found" if served else "engine not answering yet; waiting for it",
        extra={"model": args.model, "base_url": args.base_url},
    )
    return worker


async def _serve(worker, args: argparse.Namespace, config, link, registry, metrics) -> int:
    """Calibrate, serve the metrics port, and run the worker until it is stopped."""
    from agents.model.metrics import serve
    from agents.serve import serve_worker

    if args.calibrate and metrics.ready:
        await worker.calibrate()
    site = None
    if args.metrics_port:
        site = await serve(registry, metrics, args.metrics_host, args.metrics_port)
        log.info("metrics served", extra={"port": args.metrics_port})
    try:
        return await serve_worker(worker, args, config, link)
    finally:
        if site is not None:
            await site.cleanup()
