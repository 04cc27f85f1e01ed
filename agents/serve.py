"""Run one worker process until SIGINT/SIGTERM: the shared tail of every ``interlace worker``."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal

from agents.links import DirectLink, HttpLink, WorkerLink
from agents.worker import Worker, WorkerRunner
from gateway.core.config import Config
from registry.identity import Identity

log = logging.getLogger("interlace.worker")


def add_bus_flags(parser: argparse.ArgumentParser) -> None:
    """The flags every ``interlace worker`` takes to reach the bus and register (read by serve_worker)."""
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--gateway", metavar="URL", help="reach the bus through this gateway (default http://127.0.0.1:8080)"
    )
    where.add_argument("--redis", dest="redis_url", metavar="URL", help="consume from this Redis directly")
    parser.add_argument("--token", help="worker token of the gateway (env INTERLACE_WORKER_TOKEN)")
    parser.add_argument("--key", metavar="FILE", help="the agent's key file (interlace keys new); a fresh key if unset")
    parser.add_argument("--network", help="registry network (default interlace; env INTERLACE_NETWORK)")
    parser.add_argument("--visibility-timeout-ms", type=int, help="must match the gateway's")
    parser.add_argument("--log-level", choices=["debug", "info", "warning", "error"])


async def serve_worker(worker: Worker, args: argparse.Namespace, config: Config, link: WorkerLink | None = None) -> int:
    """Consume ``worker``'s stream through ``--redis`` (directly) or ``--gateway`` (its /bus API,
    each call signed with the agent's key). 0 after a signal; 1, with the reason logged, when the
    configuration cannot work or the consuming loop died."""
    identity = Identity.load(args.key) if args.key else Identity.generate()
    backend = None
    if link is None and args.redis_url:
        from gateway.core.backends import BackendMisconfigured, Limits, open_backend
        from registry.service import Registry

        backend = open_backend(args.redis_url, Limits(visibility_timeout_ms=config.visibility_timeout_ms))
        try:
            await backend.check()
        except BackendMisconfigured as exc:
            log.error("the bus's configuration cannot work", extra={"agent": worker.agent, "error": str(exc)})
            await backend.close()
            return 1
        link = DirectLink(backend, Registry(backend.records, config.network, skew_s=config.skew_s))
    elif link is None:
        link = HttpLink(args.gateway or "http://127.0.0.1:8080", args.token or config.worker_token, identity)
    runner = WorkerRunner(
        worker,
        link,
        lock_ttl_ms=config.visibility_timeout_ms,
        identity=identity,
        network=config.network,
        lease_s=config.lease_s,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    job = runner.start()
    log.info("worker started", extra={"agent": worker.agent, "consumer": runner.consumer, "did": runner.identity.did})
    stopped = asyncio.create_task(stop.wait())
    await asyncio.wait([job, stopped], return_when=asyncio.FIRST_COMPLETED)
    stopped.cancel()
    died = runner.died  # the loop ended on an error it cannot retry (the runner logged why)
    await runner.stop(config.shutdown_grace_s)
    if backend is not None:
        await backend.close()
    log.info("worker stopped", extra={"agent": worker.agent})
    return 1 if died else 0
