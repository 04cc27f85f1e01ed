"""``interlace worker model``: serve a local model as an agent on the bus.

  interlace worker model --model PATH [--backend auto|transformers|llamacpp]
                         [--device auto|cuda|cpu] [--dtype auto|bfloat16|float16|float32]
                         [--max-batch N] [--name AGENT] [--gateway URL | --redis URL]
                         [--key FILE] [--network NAME] [--metrics-port PORT] ...

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
        help="local model directory, .gguf file, or 'smollm2' (nothing is downloaded)",
    )
    p.add_argument(
        "--backend",
        choices=["auto", "transformers", "llamacpp"],
        default="auto",
        help="auto: llama.cpp for a GGUF on CPU when installed, else transformers",
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
    from prometheus_client import CollectorRegistry, start_http_server

    from agents.model.base import ModelError
    from agents.model.loader import load_backend
    from agents.model.metrics import ModelMetrics
    from agents.model.worker import ModelWorker
    from agents.serve import serve_worker

    if args.max_batch < 1 or args.max_tokens < 1 or args.max_tokens_limit < args.max_tokens:
        print(
            "interlace: --max-batch and --max-tokens must be >= 1, and --max-tokens-limit >= --max-tokens",
            file=sys.stderr,
        )
        return 2
    registry = CollectorRegistry()
    metrics = ModelMetrics(registry, args.agent_name)
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
    if args.calibrate:
        await worker.calibrate()
    if args.metrics_port:
        start_http_server(args.metrics_port, addr=args.metrics_host, registry=registry)
        log.info("metrics served", extra={"port": args.metrics_port})
    try:
        return await serve_worker(worker, args, config, link)
    finally:
        await backend.close()
