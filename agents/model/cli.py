"""``interlace worker model``: serve a local model as an agent on the bus.

  interlace worker model --model PATH [--backend auto|transformers|llamacpp]
                         [--device auto|cuda|cpu] [--dtype auto|bfloat16|float16|float32]
                         [--max-batch N] [--name AGENT] [--gateway URL | --redis URL]
                         [--key FILE] [--network NAME] [--metrics-port PORT] ...

``gateway/cli.py`` wires it in with ``add_parser(kinds)`` (the ``worker`` sub-commands) and
``run(args, config)``. Until then ``python -m agents.model.cli --model PATH ...`` runs the same
thing. This module imports nothing heavy: torch and transformers load only in ``run``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
import time

log = logging.getLogger("interlace.model")


def _device(value: str) -> str:
    if value in ("auto", "cpu", "cuda") or (value.startswith("cuda:") and value[5:].isdigit()):
        return value
    raise argparse.ArgumentTypeError("use auto, cpu, cuda or cuda:N")


def add_parser(kinds: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``model`` to the ``worker`` sub-commands."""
    p = kinds.add_parser("model", help="a local model (transformers or llama.cpp) as an agent")
    p.add_argument("--model", required=True, metavar="PATH", help="local model directory, .gguf file, or 'smollm2' (nothing is downloaded)")
    p.add_argument("--backend", choices=["auto", "transformers", "llamacpp"], default="auto", help="auto: llama.cpp for a GGUF on CPU when installed, else transformers")
    p.add_argument("--device", type=_device, default="auto", help="auto (CUDA when available), cpu, cuda or cuda:N")
    p.add_argument("--dtype", choices=["auto", "bfloat16", "float16", "float32"], default="auto", help="transformers weights: auto = bfloat16 on GPU, float32 on CPU")
    p.add_argument("--max-batch", type=int, default=8, help="sequences decoded together (transformers backend)")
    p.add_argument("--max-tokens", type=int, default=256, help="default max_tokens of a request")
    p.add_argument("--max-tokens-limit", type=int, default=4096, help="largest max_tokens a request may ask for")
    p.add_argument("--context", type=int, help="context length (llama.cpp default 4096; transformers: the model's)")
    p.add_argument("--threads", type=int, help="CPU threads for the model")
    p.add_argument("--name", dest="agent_name", default="model", help="agent name (its bus stream); default 'model'")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--gateway", metavar="URL", help="reach the bus through this gateway (default http://127.0.0.1:8080)")
    where.add_argument("--redis", dest="redis_url", metavar="URL", help="consume from this Redis directly")
    p.add_argument("--token", help="worker token of the gateway (env INTERLACE_WORKER_TOKEN)")
    p.add_argument("--key", metavar="FILE", help="the agent's key file (interlace keys new); a fresh key if unset")
    p.add_argument("--network", help="registry network (default interlace; env INTERLACE_NETWORK)")
    p.add_argument("--concurrency", type=int, help="tasks taken at once (default 2 x --max-batch; the rest queue)")
    p.add_argument("--visibility-timeout-ms", type=int, help="must match the gateway's")
    p.add_argument("--metrics-port", type=int, default=0, help="serve Prometheus metrics on this port (0: off)")
    p.add_argument("--metrics-host", default="127.0.0.1", help="bind address of the metrics port")
    p.add_argument("--no-calibrate", dest="calibrate", action="store_false", help="skip the start-up speed measurement")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    return p


async def run(args: argparse.Namespace, config, link=None) -> int:
    """Load the model, then consume its bus stream until SIGINT/SIGTERM (like ``run_worker``).

    ``link`` (a ``WorkerLink``) lets the caller build the bus link the way ``run_worker`` does;
    by default it is an HttpLink to ``--gateway`` or a DirectLink on ``--redis``."""
    from prometheus_client import CollectorRegistry, start_http_server

    from agents.links import DirectLink, HttpLink
    from agents.model.base import ModelError
    from agents.model.loader import load_backend
    from agents.model.metrics import ModelMetrics
    from agents.model.worker import ModelWorker
    from agents.worker import WorkerRunner
    from registry.identity import Identity, KeyFileError

    if args.max_batch < 1 or args.max_tokens < 1 or args.max_tokens_limit < args.max_tokens:
        print("interlace: --max-batch and --max-tokens must be >= 1, and --max-tokens-limit >= --max-tokens", file=sys.stderr)
        return 2
    try:
        identity = Identity.load(args.key) if args.key else None
    except KeyFileError as exc:
        print(f"interlace: {exc}", file=sys.stderr)
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
        extra={"model": backend.model_name, "backend": backend.kind, "device": backend.device, "seconds": round(time.monotonic() - started, 2)},
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
    bus = None  # a Redis backend this function opened (and so closes)
    if link is None and args.redis_url:
        from gateway.backends import Limits, open_backend
        from registry.service import Registry

        bus = open_backend(args.redis_url, Limits(visibility_timeout_ms=config.visibility_timeout_ms))
        link = DirectLink(bus, Registry(bus.records, config.network, skew_s=config.skew_s))
    elif link is None:
        link = HttpLink(args.gateway or "http://127.0.0.1:8080", args.token or config.worker_token)
    runner = WorkerRunner(
        worker, link, lock_ttl_ms=config.visibility_timeout_ms, identity=identity,
        network=config.network, lease_s=config.lease_s,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    job = runner.start()
    log.info("worker started", extra={"agent": worker.agent, "consumer": runner.consumer, "skills": [s["id"] for s in worker.skills()]})
    await asyncio.wait([job, asyncio.create_task(stop.wait())], return_when=asyncio.FIRST_COMPLETED)
    await runner.stop(config.shutdown_grace_s)
    if bus is not None:
        await bus.close()
    await backend.close()
    log.info("worker stopped", extra={"agent": worker.agent})
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m agents.model.cli ARGS`` = ``interlace worker model ARGS``."""
    from gateway import logs
    from gateway.config import Config

    root = argparse.ArgumentParser(prog="interlace worker")
    add_parser(root.add_subparsers(dest="kind", required=True))
    args = root.parse_args(["model", *(sys.argv[1:] if argv is None else argv)])
    flags = {k: v for k, v in vars(args).items() if k != "kind"}
    try:
        config = Config.load(flags)
    except ValueError as exc:
        print(f"interlace: {exc}", file=sys.stderr)
        return 2
    logs.setup(config.log_level)
    return asyncio.run(run(args, config))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
