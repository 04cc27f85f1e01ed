"""``python -m bench.bus``: tasks through gateway -> bus -> echo worker -> result, both backends.

For each backend a real ``interlace serve`` process (in-process echo worker) takes
``POST /tasks?wait=true`` from concurrent clients; the same echo handler called directly in
this process is the baseline. Prints tasks/s, p50/p99 end-to-end latency and the ratio to the
direct call; each figure is the median-throughput run of ``--repeats``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil

from agents.echo import EchoWorker
from bench.common import RawHttp, Run, closed_loop, fmt_ms, gateway_process, median_run
from schemas import Message, Task, TextPart

BODY = {"agent": "echo", "message": {"role": "user", "parts": [{"kind": "text", "text": "benchmark payload"}]}}


async def direct(total: int, concurrency: int) -> Run:
    worker = EchoWorker()

    async def call(i: int) -> None:
        task = Task(history=[Message(role="user", parts=[TextPart(text="benchmark payload")])])
        async for _ in worker.handle(task):
            pass

    return await closed_loop(call, total, concurrency)


async def through_gateway(url: str, total: int, concurrency: int) -> Run:
    client = RawHttp(url)
    body = json.dumps(BODY).encode()

    async def call(i: int) -> None:
        status, payload = await client.request("POST", "/tasks?wait=true", body)
        if status != 200 or json.loads(payload)["status"]["state"] != "completed":
            raise RuntimeError(f"task failed: {status} {payload[:200]!r}")

    try:
        await closed_loop(call, min(200, total), concurrency)  # warm-up
        return await closed_loop(call, total, concurrency)
    finally:
        await client.close()


def backends(redis_url: str | None):
    yield "embedded", ()
    if redis_url:
        yield "redis", ("--redis", redis_url)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--redis", help="Redis URL to use (default: start a private redis-server if installed)")
    args = parser.parse_args()

    redis_proc = None
    redis_url = args.redis
    if redis_url is None and shutil.which("redis-server"):
        from tests.conftest import RedisProcess

        redis_proc = RedisProcess(appendfsync="everysec")  # Redis's default durability, as deployed
        redis_proc.start()
        redis_url = redis_proc.url
    try:
        print(f"{'backend':10} {'conc':>4} {'tasks/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'direct/s':>12} {'ratio':>8}")
        for c in args.concurrency:
            base = median_run([asyncio.run(direct(args.tasks, c)) for _ in range(args.repeats)])
            for name, flags in backends(redis_url):
                with gateway_process(*flags) as url:
                    runs = [asyncio.run(through_gateway(url, args.tasks, c)) for _ in range(args.repeats)]
                run = median_run(runs)
                print(
                    f"{name:10} {c:4d} {run.throughput:10.1f} {fmt_ms(run.p(50))} {fmt_ms(run.p(99))} "
                    f"{base.throughput:12.0f} {run.throughput / base.throughput:8.5f}"
                )
    finally:
        if redis_proc is not None:
            redis_proc.kill()
    if redis_url is None:
        print("redis: skipped (no redis-server installed and no --redis given)")


if __name__ == "__main__":
    main()
