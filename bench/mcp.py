"""MCP federation overhead: tools/call through the gateway vs. the same call made directly to the
upstream (an `mcp`-SDK server, tests/fixtures/mcp_upstream.py, tool ``test_echo``).

Both run as separate processes on this machine; one load client drives both in the same run, at
concurrency 1 and 32, each leg repeated (median reported). Prints throughput and p50/p99 per
leg, and the ratios (targets: gateway >= 0.5x direct throughput; added p50 at concurrency 1 < 2 ms).
With ``--trace``, a second gateway with tracing on (every span sampled, exported over OTLP/HTTP to
a real receiver on this machine) is a third leg, and the cost of tracing is printed.

    python -m bench.mcp [--calls 1000] [--repeats 3] [--auth] [--trace]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time

import httpx

from bench.common import (
    BENCH_KEY,
    LEGS,
    REPO,
    TRACED_LEGS,
    Processes,
    api_key_file,
    free_port,
    interleaved_legs,
    otlp_receiver,
    package_version,
    percentile,
)
from bench.common import report as common_report

ACCEPT = "application/json, text/event-stream"


def serve_gateway(port: int, upstream: str, api_keys: str | None) -> None:
    """The gateway process: embedded backend, the upstream federated as ``echo-server``."""
    from gateway.app import create_app
    from gateway.cli import serve_app
    from gateway.core.config import Config
    from protocols.mcp import MCPOptions, mount

    # One load generator is one caller: measure the gateway, not the quotas it would meet.
    config = Config(port=port, log_level="warning", api_keys=api_keys, quotas=False)
    app = create_app(config)
    mount(app, MCPOptions(upstreams=(("up", upstream),), naming="pass-through"))
    serve_app(app, config)


class Session:
    """A minimal MCP client for load: one session, JSON or SSE replies."""

    def __init__(self, http: httpx.AsyncClient, url: str, key: str | None = None) -> None:
        self.http, self.url, self.sid, self.ids = http, url, None, 0
        self.auth = {"Authorization": f"Bearer {key}"} if key else {}

    def headers(self) -> dict[str, str]:
        h = {"Accept": ACCEPT, "Content-Type": "application/json", **self.auth}
        if self.sid:
            h.update({"Mcp-Session-Id": self.sid, "MCP-Protocol-Version": "2025-11-25"})
        return h

    async def open(self) -> None:
        resp = await self.http.post(
            self.url,
            headers=self.headers(),
            json={
                "jsonrpc": "2.0",
                "id": 0,
                "method": "initialize",
                "params": {
                    "protocolVersion": "2025-11-25",
                    "capabilities": {},
                    "clientInfo": {"name": "bench", "version": "1"},
                },
            },
        )
        resp.raise_for_status()
        self.sid = resp.headers["mcp-session-id"]
        await self.http.post(
            self.url, headers=self.headers(), json={"jsonrpc": "2.0", "method": "notifications/initialized"}
        )

    async def call(self, text: str) -> None:
        self.ids += 1
        body = {
            "jsonrpc": "2.0",
            "id": self.ids,
            "method": "tools/call",
            "params": {"name": "test_echo", "arguments": {"text": text}},
        }
        for attempt in range(2):
            try:
                resp = await self.http.post(self.url, headers=self.headers(), content=json.dumps(body))
                break
            except (httpx.RemoteProtocolError, httpx.ReadError):
                if attempt:  # a keep-alive connection the server had just closed: once is retried
                    raise
        if resp.headers.get("content-type", "").startswith("text/event-stream"):
            data = [line[5:].strip() for line in resp.text.split("\n") if line.startswith("data:") and line[5:].strip()]
            msg = json.loads(data[-1])
        else:
            msg = resp.json()
        if msg.get("result", {}).get("content", [{}])[0].get("text") != text:
            raise RuntimeError(f"unexpected reply: {msg}")

    async def close(self) -> None:
        await self.http.delete(self.url, headers=self.headers())


async def leg(session: Session, calls: int, concurrency: int) -> dict[str, float]:
    latencies: list[float] = []
    counter = iter(range(calls))

    async def worker() -> None:
        for i in counter:
            t0 = time.perf_counter()
            await session.call(f"m{i}")
            latencies.append(time.perf_counter() - t0)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    seconds = time.perf_counter() - start
    return {"rps": calls / seconds, "p50": percentile(latencies, 50) * 1000, "p99": percentile(latencies, 99) * 1000}


async def measure(
    direct_url: str, gateway_url: str, calls: int, repeats: int, auth: bool, traced_url: str | None = None
) -> dict:
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64, keepalive_expiry=2.0)
    async with httpx.AsyncClient(timeout=60, limits=limits) as http:
        key = BENCH_KEY if auth else None
        sessions = {"direct": Session(http, direct_url), "gateway": Session(http, gateway_url, key)}
        if traced_url is not None:
            sessions["traced"] = Session(http, traced_url, key)
        for s in sessions.values():
            await s.open()
            await leg(s, 200, 8)  # warm up connections, caches and the upstream pool
        results = await interleaved_legs(
            lambda name, n, concurrency: leg(sessions[name], n, concurrency),
            calls,
            repeats,
            TRACED_LEGS if traced_url else LEGS,
        )
        for s in sessions.values():
            await s.close()
    return results


def report(results: dict) -> None:
    common_report(results)
    added = results[1]["gateway"]["p50"] - results[1]["direct"]["p50"]
    print(f"added p50 at concurrency 1: {added:.2f} ms (target < 2 ms)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=1000, help="calls per leg at concurrency 1 (x3 at 32)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--auth", action="store_true", help="the gateway requires an API key (sent by the client)")
    parser.add_argument("--trace", action="store_true", help="a third leg: a gateway with tracing on (100%% sampled)")
    parser.add_argument("--serve-gateway", nargs=3, metavar=("PORT", "UPSTREAM", "KEYS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_gateway:
        port, upstream, keys = args.serve_gateway
        serve_gateway(int(port), upstream, keys or None)
        return
    up_port, gw_port = free_port(), free_port()
    with Processes() as procs:
        upstream = (
            procs.start(
                [sys.executable, str(REPO / "tests/fixtures/mcp_upstream.py"), "--port", str(up_port)],
                up_port,
                "upstream",
            )
            + "/mcp"
        )
        keys = api_key_file() if args.auth else ""

        def gateway(port: int, what: str, env: dict[str, str] | None = None) -> str:
            command = [sys.executable, "-m", "bench.mcp", "--serve-gateway", str(port), upstream, keys]
            return procs.start(command, port, what, env=env) + "/mcp"

        plain = gateway(gw_port, "gateway")
        traced = gateway(free_port(), "traced gateway", otlp_receiver(procs)) if args.trace else None
        print(
            f"MCP tools/call test_echo: direct to the upstream (mcp SDK {package_version('mcp')}) "
            f"vs. through the gateway{' (API key required)' if args.auth else ''}"
            f"{' and through one with tracing on' if args.trace else ''}; "
            f"median of {args.repeats} runs, {args.calls} calls per run at concurrency 1, {args.calls * 3} at 32"
        )
        report(asyncio.run(measure(upstream, plain, args.calls, args.repeats, args.auth, traced)))


if __name__ == "__main__":
    main()
