"""Shared benchmark helpers: percentiles, a closed-loop load driver, gateway subprocesses."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


@dataclass
class Run:
    ops: int
    seconds: float
    latencies: list[float]

    @property
    def throughput(self) -> float:
        return self.ops / self.seconds

    def p(self, q: float) -> float:
        return percentile(self.latencies, q)


LEGS = ("direct", "gateway")
TRACED_LEGS = (*LEGS, "traced")  # --trace: a second gateway exporting every span (100% sampled)


async def closed_loop(call: Callable[[int], Awaitable[None]], total: int, concurrency: int) -> Run:
    """``concurrency`` callers issue ``total`` calls back to back; latency of each is recorded."""
    latencies: list[float] = []
    counter = iter(range(total))

    async def caller():
        for i in counter:
            t0 = time.perf_counter()
            await call(i)
            latencies.append(time.perf_counter() - t0)

    start = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(concurrency)))
    return Run(total, time.perf_counter() - start, latencies)


async def interleaved_legs(
    leg: Callable[[str, int, int], Awaitable[dict]], calls: int, repeats: int, names: tuple[str, ...] = LEGS
) -> dict:
    """``leg(name, calls, concurrency)`` for each of ``names`` ("direct", "gateway", and "traced"
    with ``--trace``) at concurrency 1 (``calls``) and 32 (three times as many), interleaved so
    drift hits all alike; each figure is the median of ``repeats``. The result is what ``report``
    prints."""
    results: dict = {}
    for concurrency in (1, 32):
        n = calls if concurrency == 1 else calls * 3
        runs: dict[str, list[dict]] = {name: [] for name in names}
        for _ in range(repeats):
            for name, legs in runs.items():
                legs.append(await leg(name, n, concurrency))
        results[concurrency] = {
            name: {k: statistics.median(r[k] for r in rs) for k in ("rps", "p50", "p99")} for name, rs in runs.items()
        }
    return results


def median_run(runs: list[Run]) -> Run:
    """The run with the median throughput (machines are noisy: report medians of repeats)."""
    return sorted(runs, key=lambda r: r.throughput)[len(runs) // 2]


def fmt_ms(seconds: float) -> str:
    return f"{seconds * 1000:8.2f}"


@contextlib.contextmanager
def gateway_process(*args: str, env: dict[str, str] | None = None):
    """``interlace serve`` on a free port in a subprocess; yields its base URL once ready. Its
    quotas are off: one load generator is one caller, and measures the gateway, not its quota."""
    port = free_port()
    full_env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gateway.cli",
            "serve",
            "--port",
            str(port),
            "--log-level",
            "warning",
            "--no-quotas",
            *args,
        ],
        env=full_env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                    break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("gateway did not become ready")
            time.sleep(0.05)
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()


def median(values: list[float]) -> float:
    return statistics.median(values)


class RawHttp:
    """A minimal keep-alive HTTP/1.1 client (one connection per caller).

    httpx costs about 2 ms of CPU per request on this machine class, which made the load
    generator, not the gateway, the bottleneck on a 2-core box; this one costs a few µs.
    Only what the benchmarks need: requests with a body, responses with Content-Length.
    """

    def __init__(self, url: str) -> None:
        host_port = url.split("://", 1)[1].rstrip("/")
        self.host, port = host_port.split(":")
        self.port = int(port)
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def request(
        self, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
    ) -> tuple[int, bytes]:
        conn = self._idle.pop() if self._idle else await asyncio.open_connection(self.host, self.port)
        reader, writer = conn
        head = f"{method} {path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Length: {len(body)}\r\n"
        head += "".join(f"{k}: {v}\r\n" for k, v in (headers or {"Content-Type": "application/json"}).items())
        writer.write(head.encode() + b"\r\n" + body)
        status_line = await reader.readline()
        length, reusable = 0, True
        while (line := await reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            if name.lower() == "content-length":
                length = int(value)
            elif name.lower() == "connection" and "close" in value.lower():
                reusable = False  # the gateway closes a connection after its keep-alive limit
        payload = await reader.readexactly(length)
        if reusable:
            self._idle.append(conn)
        else:
            writer.close()
        return int(status_line.split()[1]), payload

    async def close(self) -> None:
        for _, writer in self._idle:
            writer.close()
        self._idle.clear()


class Processes:
    """The subprocesses of one benchmark (a peer, a gateway), stopped together on exit."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen] = []
        self.env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
        self.cwd = REPO  # where (and, with PYTHONPATH, from which checkout) the next process starts

    def start(
        self, args: list[str], port: int, what: str, timeout: float = 30, env: dict[str, str] | None = None
    ) -> str:
        """Run ``args`` (a server listening on ``port``; ``env``: more environment) and wait until
        it accepts connections."""
        env = {**self.env, **(env or {})}
        proc = subprocess.Popen(args, env=env, cwd=self.cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.procs.append(proc)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise SystemExit(f"{what} exited at start")
            try:
                with socket.create_connection(("127.0.0.1", port), 0.2):
                    return f"http://127.0.0.1:{port}"
            except OSError:
                time.sleep(0.05)
        raise SystemExit(f"{what} did not start")

    def __enter__(self) -> Processes:
        return self

    def __exit__(self, *exc) -> None:
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()


def package_version(distribution: str) -> str:
    try:
        from importlib.metadata import version

        return version(distribution)
    except Exception:
        return "?"


def report(results: dict) -> None:
    """Print the legs per concurrency and their ratios.

    ``results[concurrency][leg]`` is ``{"rps", "p50", "p99"}`` (milliseconds) for legs
    "direct" and "gateway", and "traced" (the gateway with tracing on) with ``--trace``."""
    print(f"{'concurrency':>11} {'path':>8} {'calls/s':>9} {'p50 ms':>8} {'p99 ms':>8}")
    for c, legs in results.items():
        for name, r in legs.items():
            print(f"{c:>11} {name:>8} {r['rps']:>9.0f} {r['p50']:>8.2f} {r['p99']:>8.2f}")
    for c, legs in results.items():
        d, g = legs["direct"], legs["gateway"]
        print(
            f"concurrency {c}: throughput ratio gateway/direct = {g['rps'] / d['rps']:.2f}x (target >= 0.5x); "
            f"p50 ratio = {g['p50'] / d['p50']:.2f}x (added {g['p50'] - d['p50']:.2f} ms); "
            f"p99 ratio = {g['p99'] / d['p99']:.2f}x"
        )
        if "traced" in legs:
            t = legs["traced"]
            print(
                f"concurrency {c}: tracing on (100% sampled, OTLP/HTTP export) vs off: throughput "
                f"{t['rps'] / g['rps']:.2f}x, p50 {t['p50'] - g['p50']:+.2f} ms, p99 {t['p99'] - g['p99']:+.2f} ms"
            )


def otlp_receiver(procs: Processes) -> dict[str, str]:
    """Start a real OTLP/HTTP receiver (oteltap, a dev dependency) on this machine; the
    environment that makes a gateway export every span to it."""
    port = free_port()
    # The receiver prints what it receives; the benchmark discards it.
    url = procs.start([sys.executable, "-m", "oteltap", "--port", str(port)], port, "OTLP receiver")
    return {
        "OTEL_EXPORTER_OTLP_ENDPOINT": url,
        "OTEL_TRACES_SAMPLER": "always_on",
        "OTEL_SERVICE_NAME": "interlace-bench",
    }


BENCH_KEY = "bench-key-0123456789abcdef0123456789"  # a throwaway API key for --auth runs


def api_key_file() -> str:
    """A key file granting ``BENCH_KEY`` (``--api-keys``), in a fresh temporary directory."""
    import tempfile

    import yaml

    from gateway.core.auth import api_key_digest

    path = Path(tempfile.mkdtemp(prefix="interlace-bench-")) / "keys.yaml"
    path.write_text(yaml.safe_dump([{"principal": "bench", "key_sha256": api_key_digest(BENCH_KEY), "groups": []}]))
    return str(path)
