"""Real `interlace serve` nodes gossiping under CPU overload (issue 21).

    python -m bench.gossip_overload [--nodes 30] [--profile fast] [--hog-s 20] [--check]

N nodes on 127.0.0.1 join through the first; once membership is whole (every node sees every
node alive) and has run `--settle-s` more, `--hogs` busy-loop processes (default: one per core)
take the CPU for `--hog-s` seconds; then the run waits up to `--recover-s` for membership to be
whole again. It prints, per phase (join, settled, hog, after), the false suspect and dead marks
(every node is running, so every such mark is false; counted from the nodes' own member-event
logs), the time to converge and to recover, the highest health score and incarnation seen, the
load average, and any "Task exception was never retrieved" in the logs.

`--check` makes the exit status the verdict of issue 21's done-when: converged, at most
`--max-false-dead` dead marks during the hog, whole within `--recover-s` after it, no
unretrieved task exception. Every node and hog is a child of this process and is stopped on exit.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import httpx

from bench.common import REPO, free_port

HOG = "while True: pass"


class Cluster:
    """The node processes and hogs of one run; `close` stops them all."""

    def __init__(self, n: int, profile: str, logdir: Path) -> None:
        self.logdir = logdir
        self.ports = [free_port() for _ in range(n)]
        self.urls = [f"http://127.0.0.1:{p}" for p in self.ports]
        self.names = [f"node-{i:02d}" for i in range(n)]
        self.profile = profile
        self.procs: list[subprocess.Popen] = []
        self.hogs: list[subprocess.Popen] = []
        self.env = {**os.environ, "PYTHONPATH": str(REPO)}

    def start(self, i: int) -> None:
        args = [sys.executable, "-m", "gateway.cli", "serve", "--port", str(self.ports[i])]
        args += ["--node-id", self.names[i], "--gossip-profile", self.profile, "--no-echo", "--no-quotas"]
        args += ["--log-level", "info", "--data-dir", str(self.logdir / f"{self.names[i]}-data")]
        if i:
            args += ["--join", f"127.0.0.1:{self.ports[0]}"]
        with open(self.logdir / f"{self.names[i]}.log", "ab") as log:
            self.procs.append(subprocess.Popen(args, env=self.env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT))

    def hog(self, processes: int) -> None:
        self.hogs = [subprocess.Popen([sys.executable, "-c", HOG]) for _ in range(processes)]

    def stop_hogs(self) -> None:
        for proc in self.hogs:
            proc.kill()
            proc.wait()
        self.hogs = []

    def close(self) -> None:
        self.stop_hogs()
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


async def views(http: httpx.AsyncClient, urls: list[str]) -> list[dict | None]:
    async def one(url: str) -> dict | None:
        with contextlib.suppress(httpx.HTTPError, ValueError):
            return (await http.get(f"{url}/cluster/members")).json()
        return None

    return await asyncio.gather(*(one(u) for u in urls))


def whole(seen: list[dict | None], names: list[str]) -> bool:
    """Every node answered and sees every node alive."""
    for view in seen:
        if view is None:
            return False
        states = {m["id"]: m["state"] for m in view["members"]}
        if any(states.get(name) != "alive" for name in names):
            return False
    return True


async def wait_ready(http: httpx.AsyncClient, urls: list[str], timeout: float) -> float:
    """Seconds until every node answers /readyz (30 Python processes starting on 2 busy cores
    take a while); raises past `timeout`."""
    start = time.monotonic()
    pending = set(urls)
    while pending:
        if time.monotonic() - start > timeout:
            raise SystemExit(f"{len(pending)} nodes not ready after {timeout:g} s")
        for url in list(pending):
            with contextlib.suppress(httpx.HTTPError):
                if (await http.get(f"{url}/readyz", timeout=10)).status_code == 200:
                    pending.discard(url)
        await asyncio.sleep(0.2)
    return time.monotonic() - start


async def wait_whole(http: httpx.AsyncClient, cluster: Cluster, timeout: float, peak: Counter) -> float:
    """Seconds until membership is whole (inf past `timeout`); records peak health/incarnation."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        seen = await views(http, cluster.urls)
        note_peaks(seen, peak)
        if whole(seen, cluster.names):
            return time.monotonic() - start
        await asyncio.sleep(0.2)
    return float("inf")


def note_peaks(seen: list[dict | None], peak: Counter) -> None:
    for view in seen:
        if view is not None:
            peak["health"] = max(peak["health"], view["health"])
            peak["incarnation"] = max(peak["incarnation"], view["incarnation"])


async def observe(http: httpx.AsyncClient, cluster: Cluster, seconds: float, peak: Counter) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        note_peaks(await views(http, cluster.urls), peak)
        await asyncio.sleep(min(1.0, max(0.0, end - time.monotonic())))


def marks(logdir: Path, names: list[str]) -> list[tuple[float, str]]:
    """(wall time, "suspect" | "dead" | "left") of every member event about a node of the run."""
    out = []
    for name in names:
        path = logdir / f"{name}.log"
        for line in path.read_text(errors="replace").splitlines():
            if '"member ' not in line:
                continue
            with contextlib.suppress(ValueError, KeyError):
                rec = json.loads(line)
                state = rec["msg"].removeprefix("member ")
                if state in ("suspect", "dead", "left") and rec.get("member") in names:
                    ts = datetime.strptime(rec["ts"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).timestamp()
                    out.append((ts, state))
    return out


def unretrieved(logdir: Path, names: list[str]) -> int:
    return sum(
        (logdir / f"{n}.log").read_text(errors="replace").count("Task exception was never retrieved") for n in names
    )


async def run(args: argparse.Namespace) -> bool:
    logdir = Path(tempfile.mkdtemp(prefix="gossip-overload-"))
    cluster = Cluster(args.nodes, args.profile, logdir)
    peak: Counter = Counter()
    phases: list[tuple[str, float, float]] = []
    load: dict[str, float] = {"start": os.getloadavg()[0]}
    try:
        for i in range(args.nodes):
            cluster.start(i)
            await asyncio.sleep(args.start_gap_s)
        async with httpx.AsyncClient(timeout=2.0) as http:
            started = await wait_ready(http, cluster.urls, args.start_timeout_s)
            t0 = time.time()
            converged = await wait_whole(http, cluster, args.join_timeout_s, peak)
            t1 = time.time()
            phases.append(("join", t0, t1))
            await observe(http, cluster, args.settle_s, peak)
            t2 = time.time()
            phases.append(("settled", t1, t2))
            load["before hog"] = os.getloadavg()[0]
            cluster.hog(args.hogs)
            await observe(http, cluster, args.hog_s, peak)
            load["during hog"] = os.getloadavg()[0]
            cluster.stop_hogs()
            t3 = time.time()
            phases.append(("hog", t2, t3))
            recovered = await wait_whole(http, cluster, args.recover_s, peak)
            t4 = time.time()
            phases.append(("after", t3, t4))
            totals: Counter = Counter()
            for view in await views(http, cluster.urls):
                totals.update((view or {}).get("stats", {}))
    finally:
        cluster.close()
    events = marks(logdir, cluster.names)
    bad_tasks = unretrieved(logdir, cluster.names)
    print(
        f"{args.nodes} nodes, profile {args.profile}, {args.hogs} hog processes for {args.hog_s:g} s, "
        f"{os.cpu_count()} cores; load average (1 min): " + ", ".join(f"{k} {v:.1f}" for k, v in load.items())
    )
    print(f"{'phase':>8} {'seconds':>8} {'suspect':>8} {'dead':>6}")
    counts = {}
    for name, start, end in phases:
        c = Counter(state for ts, state in events if start <= ts < end)
        counts[name] = c
        print(f"{name:>8} {end - start:>8.1f} {c['suspect']:>8} {c['dead']:>6}")
    print(f"all nodes ready after {started:.1f} s; converged {converged:.1f} s later")
    print(f"whole again {recovered:.1f} s after the hog stopped")
    rate = args.nodes * (phases[-1][2] - phases[0][1])
    print(
        "gossip per node per second: "
        + ", ".join(f"{k.removeprefix('gossip.')} {v / rate:.1f}" for k, v in sorted(totals.items()) if "gossip." in k)
    )
    print(f"peak health score {peak['health']}, peak incarnation {peak['incarnation']}")
    print(f"'Task exception was never retrieved' in logs: {bad_tasks}; logs in {logdir}")
    return (
        converged < float("inf")
        and counts["hog"]["dead"] <= args.max_false_dead
        and recovered <= args.recover_s
        and bad_tasks == 0
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=30)
    parser.add_argument("--profile", default="fast")
    parser.add_argument("--hogs", type=int, default=os.cpu_count() or 2, help="busy-loop processes")
    parser.add_argument("--hog-s", type=float, default=20.0)
    parser.add_argument("--settle-s", type=float, default=10.0)
    parser.add_argument("--recover-s", type=float, default=10.0)
    parser.add_argument("--start-timeout-s", type=float, default=240.0)
    parser.add_argument("--join-timeout-s", type=float, default=60.0)
    parser.add_argument("--start-gap-s", type=float, default=0.1)
    parser.add_argument("--max-false-dead", type=int, default=0)
    parser.add_argument("--check", action="store_true", help="exit 1 unless the done-when holds")
    args = parser.parse_args()
    # A timeout's SIGTERM unwinds like Ctrl-C, so the nodes and hogs are stopped on the way out.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    ok = asyncio.run(run(args))
    if args.check:
        print("PASS" if ok else "FAIL")
        sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
