"""``python -m bench.bus``: tasks through gateway -> bus -> echo worker -> result, per backend.

For each backend (embedded; one Redis; a 3-master Redis Cluster) a real ``interlace serve``
process (in-process echo worker) takes ``POST /tasks?wait=true`` from concurrent clients; the
same echo handler called directly in this process is the baseline. Prints tasks/s, p50/p99
end-to-end latency and the ratio to the direct call, then the cluster's scale-out: tasks/s of
3 gateway processes sharing the cluster (clients spread over them) against one. Each figure is
the median-throughput run of ``--repeats``; the load average is printed with them (on a small
or shared machine, read the ratios).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil

from agents.echo import EchoWorker
from bench.common import RawHttp, Run, closed_loop, fmt_ms, gateway_process, median_run
from schemas import Message, Task, TextPart

BODY = {"agent": "echo", "message": {"role": "user", "parts": [{"kind": "text", "text": "benchmark payload"}]}}
DURABLE = ("--appendonly", "yes", "--appendfsync", "everysec")  # Redis's default durability, as deployed


async def direct(total: int, concurrency: int) -> Run:
    worker = EchoWorker()

    async def call(i: int) -> None:
        task = Task(history=[Message(role="user", parts=[TextPart(text="benchmark payload")])])
        async for _ in worker.handle(task):
            pass

    return await closed_loop(call, total, concurrency)


async def through_gateways(urls: list[str], total: int, concurrency: int) -> Run:
    """Closed-loop load spread round-robin over ``urls`` (one gateway or several)."""
    clients = [RawHttp(url) for url in urls]
    body = json.dumps(BODY).encode()

    async def call(i: int) -> None:
        status, payload = await clients[i % len(clients)].request("POST", "/tasks?wait=true", body)
        if status != 200 or json.loads(payload)["status"]["state"] != "completed":
            raise RuntimeError(f"task failed: {status} {payload[:200]!r}")

    try:
        await closed_loop(call, min(200, total), concurrency)  # warm-up
        return await closed_loop(call, total, concurrency)
    finally:
        for client in clients:
            await client.close()


@contextlib.contextmanager
def gateways(count: int, *flags: str):
    with contextlib.ExitStack() as stack:
        yield [stack.enter_context(gateway_process(*flags)) for _ in range(count)]


def measure(count: int, flags: tuple[str, ...], args, concurrency: int) -> Run:
    with gateways(count, *flags) as urls:
        return median_run([asyncio.run(through_gateways(urls, args.tasks, concurrency)) for _ in range(args.repeats)])


def load() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--redis", help="Redis URL to use (default: start a private redis-server if installed)")
    parser.add_argument("--cluster", help="Redis Cluster URL (default: start a private 3-master cluster)")
    parser.add_argument("--scale-gateways", type=int, default=3, help="gateways sharing the cluster (vs one)")
    args = parser.parse_args()

    with contextlib.ExitStack() as stack:
        legs: list[tuple[str, tuple[str, ...]]] = [("embedded", ())]
        redis_url, cluster_url = args.redis, args.cluster
        if shutil.which("redis-server"):
            from tests.conftest import RedisProcess
            from tests.redis_topologies import RedisCluster

            if redis_url is None:
                proc = RedisProcess(appendfsync="everysec")
                proc.start()
                stack.callback(proc.kill)
                redis_url = proc.url
            if cluster_url is None:
                cluster = RedisCluster(masters=3, extra=DURABLE)
                cluster.start()
                stack.callback(cluster.stop)
                cluster_url = cluster.url
        if redis_url:
            legs.append(("redis", ("--redis", redis_url)))
        if cluster_url:
            legs.append(("cluster", ("--redis", cluster_url)))

        print(f"load average at start: {load()}")
        print(f"{'backend':10} {'conc':>4} {'tasks/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'direct/s':>12} {'ratio':>8}")
        single: dict[int, float] = {}
        for c in args.concurrency:
            base = median_run([asyncio.run(direct(args.tasks, c)) for _ in range(args.repeats)])
            for name, flags in legs:
                run = measure(1, flags, args, c)
                if name == "redis":
                    single[c] = run.throughput
                vs = f"  cluster/redis {run.throughput / single[c]:.2f}" if name == "cluster" and c in single else ""
                print(
                    f"{name:10} {c:4d} {run.throughput:10.1f} {fmt_ms(run.p(50))} {fmt_ms(run.p(99))} "
                    f"{base.throughput:12.0f} {run.throughput / base.throughput:8.5f}{vs}"
                )
        if cluster_url:
            c, n = max(args.concurrency), args.scale_gateways
            one = measure(1, ("--redis", cluster_url), args, c)
            many = measure(n, ("--redis", cluster_url), args, c)
            print(
                f"cluster scale-out at c={c}: 1 gateway {one.throughput:.1f} tasks/s, {n} gateways "
                f"{many.throughput:.1f} tasks/s, ratio {many.throughput / one.throughput:.2f} "
                f"(p50 {fmt_ms(one.p(50)).strip()} vs {fmt_ms(many.p(50)).strip()} ms)"
            )
        print(f"load average at end: {load()}")
        if redis_url is None:
            print("redis: skipped (no redis-server installed and no --redis given)")


if __name__ == "__main__":
    main()
