"""A2A connector overhead: SendMessage through the gateway to a remote ``a2a-sdk`` echo agent vs. the
same SendMessage sent directly to that agent (tests/fixtures/a2a_remote.py, JSON-RPC, A2A 1.0).

The agent and the gateway (embedded backend, the agent behind an A2AConnector as ``remote``) run
as separate processes on this machine; one load client drives both in the same run, at
concurrency 1 and 32, legs interleaved and repeated (median reported). Prints throughput,
p50/p99 per leg and the ratios (target: gateway >= 0.5x direct throughput). With ``--trace``, a
second gateway with tracing on (every span sampled, exported over OTLP/HTTP to a real receiver on
this machine) is a third leg, and the cost of tracing is printed.

    python -m bench.a2a [--calls 600] [--repeats 5] [--connector auto|stream|send] [--auth] [--trace]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

from bench.common import (
    BENCH_KEY,
    LEGS,
    REPO,
    TRACED_LEGS,
    Processes,
    RawHttp,
    api_key_file,
    closed_loop,
    free_port,
    interleaved_legs,
    otlp_receiver,
    package_version,
    report,
)

HEADERS = {"Content-Type": "application/json", "A2A-Version": "1.0"}


def serve_gateway(port: int, remote: str, streaming: bool | None, api_keys: str | None) -> None:
    from gateway.app import create_app
    from gateway.cli import serve_app
    from gateway.core.config import Config
    from protocols import a2a
    from protocols.a2a.connector import A2AConnector

    # One load generator is one caller: measure the gateway, not the quotas it would meet.
    config = Config(host="127.0.0.1", port=port, echo=False, log_level="warning", api_keys=api_keys, quotas=False)
    app = create_app(config, workers=[A2AConnector("remote", remote, streaming=streaming)])
    a2a.mount(app)
    serve_app(app, config)


class Caller:
    def __init__(self, base: str, path: str, headers: dict[str, str]) -> None:
        self.http, self.path, self.ids, self.headers = RawHttp(base), path, 0, headers

    async def call(self, i: int) -> None:
        self.ids += 1
        text = f"m{i}-{self.ids}"
        body = {
            "jsonrpc": "2.0",
            "id": self.ids,
            "method": "SendMessage",
            "params": {"message": {"messageId": f"b-{self.ids}-{i}", "role": "ROLE_USER", "parts": [{"text": text}]}},
        }
        status, payload = await self.http.request("POST", self.path, json.dumps(body).encode(), self.headers)
        task = json.loads(payload).get("result", {}).get("task", {}) if status == 200 else {}
        got = "".join(p.get("text", "") for a in task.get("artifacts", []) for p in a.get("parts", []))
        if task.get("status", {}).get("state") != "TASK_STATE_COMPLETED" or got != text:
            raise RuntimeError(f"unexpected reply ({status}): {payload[:600]!r}")


async def leg(base: str, path: str, headers: dict[str, str], calls: int, concurrency: int) -> dict[str, float]:
    """One run on fresh keep-alive connections (servers close connections idle for 5 s)."""
    caller = Caller(base, path, headers)
    try:
        run = await closed_loop(caller.call, calls, concurrency)
    finally:
        await caller.http.close()
    return {"rps": run.throughput, "p50": run.p(50) * 1000, "p99": run.p(99) * 1000}


async def measure(direct: str, gateway: str, calls: int, repeats: int, auth: bool, traced: str | None = None) -> dict:
    gateway_headers = {**HEADERS, "Authorization": f"Bearer {BENCH_KEY}"} if auth else HEADERS
    targets = {"direct": (direct, "/", HEADERS), "gateway": (gateway, "/a2a/agents/remote", gateway_headers)}
    if traced is not None:
        targets["traced"] = (traced, "/a2a/agents/remote", gateway_headers)
    for base, path, headers in targets.values():
        await leg(base, path, headers, 100, 8)  # warm up the servers and the connector's pool
    return await interleaved_legs(
        lambda name, n, concurrency: leg(*targets[name], n, concurrency),
        calls,
        repeats,
        TRACED_LEGS if traced else LEGS,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=600, help="calls per leg at concurrency 1 (x3 at 32)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--connector",
        choices=["auto", "stream", "send"],
        default="auto",
        help="how the connector calls the agent: auto (streams only for clients that follow the task; "
        "a blocking SendMessage here), always SendStreamingMessage, or always SendMessage",
    )
    parser.add_argument("--auth", action="store_true", help="the gateway requires an API key (sent by the client)")
    parser.add_argument("--trace", action="store_true", help="a third leg: a gateway with tracing on (100%% sampled)")
    parser.add_argument("--serve-gateway", nargs=4, metavar=("PORT", "REMOTE", "MODE", "KEYS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_gateway:
        port, remote, mode, keys = args.serve_gateway
        serve_gateway(int(port), remote, {"auto": None, "stream": True, "send": False}[mode], keys or None)
        return
    remote_port, gw_port = free_port(), free_port()
    with Processes() as procs:
        remote = procs.start(
            [sys.executable, str(REPO / "tests/fixtures/a2a_remote.py"), "--port", str(remote_port)],
            remote_port,
            "remote agent",
        )
        keys = api_key_file() if args.auth else ""

        def gateway(port: int, what: str, env: dict[str, str] | None = None) -> str:
            command = [sys.executable, "-m", "bench.a2a", "--serve-gateway", str(port), remote, args.connector, keys]
            return procs.start(command, port, what, env=env)

        plain = gateway(gw_port, "gateway")
        traced = gateway(free_port(), "traced gateway", otlp_receiver(procs)) if args.trace else None
        print(
            f"A2A SendMessage to an a2a-sdk {package_version('a2a-sdk')} echo agent: direct vs. through the gateway "
            f"(connector: {args.connector}{'; API key required' if args.auth else ''})"
            f"{' and through one with tracing on' if args.trace else ''}; "
            f"median of {args.repeats} runs, {args.calls} calls per run at concurrency 1, {args.calls * 3} at 32"
        )
        report(asyncio.run(measure(remote, plain, args.calls, args.repeats, args.auth, traced)))


if __name__ == "__main__":
    main()
