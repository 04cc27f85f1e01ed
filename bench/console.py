"""How long the console's pages take with a full store: 1,000 agents and 10,000 tasks.

  python -m bench.console [--agents 1000] [--tasks 10000] [--repeats 7]

A gateway (embedded backend, in this process) gets ``--agents`` signed records through its
registry API and ``--tasks`` finished tasks through the task API (the echo agent), then each
page is fetched ``--repeats`` times; the figure is the median time to the full response (the
server's rendering plus the transfer, as a browser's first byte to last). The target is 300 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time

import httpx

PAGES = [
    "/ui",
    "/ui/agents",
    "/ui/tasks",
    "/ui/tasks?state=completed",
    "/ui/tasks?agent=echo",
    "/ui/tasks/{task}",
    "/ui/routing?text=translate+text",
    "/ui/playground",
    "/ui/upstreams",
    "/ui/metrics",
    "/ui/tasks.json",
]


def record(i: int):
    from registry.identity import Identity
    from registry.records import sign
    from schemas.agent_record import AgentRecord

    who = Identity.generate()
    now = int(time.time())
    skill = {"id": f"skill-{i}", "name": f"Skill {i}", "description": f"translate text kind {i}", "tags": ["bench"]}
    body = {
        "did": who.did,
        "name": f"agent-{i:04d}",
        "version": "1",
        "skills": [skill],
        "endpoints": {"a2a": f"http://127.0.0.1:9/a2a/{i}"},
        "home_node": "elsewhere",
        "seq": 1,
        "issued_at": now,
        "expires_at": now + 3600,
        "network": "interlace",
    }
    return sign(AgentRecord.model_validate(body), who).dump()


async def run(agents: int, tasks: int, repeats: int) -> int:
    from gateway.app import create_app
    from tests.conftest import serve_app, test_config

    config = test_config(quotas=False, registry_write_rate=1e9, registry_write_burst=10**9, max_lease_s=86_400)
    app = create_app(config)
    async with serve_app(app) as url, httpx.AsyncClient(base_url=url, timeout=120) as http:
        started = time.monotonic()
        for i in range(agents):
            resp = await http.post("/registry/agents", json=record(i))
            assert resp.status_code in (200, 201), resp.text
        body = {"agent": "echo", "message": {"role": "user", "parts": [{"kind": "text", "text": "bench"}]}}
        sem = asyncio.Semaphore(32)

        async def one() -> str:
            async with sem:
                return (await http.post("/tasks?wait=true", json=body)).json()["id"]

        ids = await asyncio.gather(*(one() for _ in range(tasks)))
        print(f"store: {agents} agents, {tasks} tasks (filled in {time.monotonic() - started:.0f} s)")
        print(f"{'page':<36} {'median ms':>10} {'max ms':>8}")
        worst = 0.0
        for page in PAGES:
            path = page.format(task=ids[-1])
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                resp = await http.get(path)
                times.append((time.perf_counter() - t0) * 1000)
                assert resp.status_code == 200, (path, resp.status_code)
            median = statistics.median(times)
            worst = max(worst, median)
            print(f"{path[:36]:<36} {median:>10.1f} {max(times):>8.1f}")
        print(f"slowest page median: {worst:.1f} ms (target < 300 ms)")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.console", description=__doc__.split("\n\n")[0])
    parser.add_argument("--agents", type=int, default=1000)
    parser.add_argument("--tasks", type=int, default=10000)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args(argv)
    return asyncio.run(run(args.agents, args.tasks, args.repeats))


if __name__ == "__main__":
    sys.exit(main())
