"""MCP federation overhead: tools/call through the gateway vs. the same call made directly to the
upstream (an `mcp`-SDK server, tests/fixtures/mcp_upstream.py, tool ``test_echo``), per era.

Eras: ``legacy`` (a 2025-11-25 session: initialize once, then every call carries its
``Mcp-Session-Id``) and ``modern`` (2026-07-28, stateless: each call carries its ``_meta``
envelope and the mirrored headers, no session). The upstream and the gateway run as separate
processes on this machine; two closed-loop load generators drive both, legs interleaved and
repeated (median reported), at concurrency 1 and 32:

* ``wrk`` (external, C; ``apt-get install wrk``): each connection posts the same call back to
  back for ``--duration`` seconds; a Lua script checks every reply echoes the text. A legacy
  session is opened here (in Python) and its id written into the script.
* ``python``: an aiohttp client (a few tens of µs per call: the generator must not be what is
  measured on a small machine), ``--calls`` calls per leg at concurrency 1, three times as many
  at 32, each reply parsed (JSON or SSE) and checked.

Prints, per generator and era, throughput, p50/p99 and the CPU time per call of the process that
answers (the upstream for the direct leg, the gateway for the other) per leg, and the ratios. Targets: gateway
>= 0.7x direct throughput with < 0.5 ms added p50 at concurrency 1, >= 0.5x at 32. The load
average is printed before and after (on a shared machine the figures are only as quiet as it).

    python -m bench.mcp [--eras legacy,modern] [--generators wrk,python] [--duration 15]
                        [--calls 1000] [--repeats 3] [--auth] [--trace] [--compare DIR]

``--trace`` adds a gateway with tracing on (every span sampled, exported over OTLP/HTTP to a real
receiver on this machine), measured as the leg ``traced``: the cost of tracing.
``--compare DIR`` also runs a gateway from another checkout (e.g. ``git archive main`` unpacked in
DIR), federating the same upstream, measured as the leg ``compared``, interleaved with the other
two: a before/after under the same conditions, drift included.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp

from bench.common import (
    BENCH_KEY,
    REPO,
    Processes,
    api_key_file,
    free_port,
    otlp_receiver,
    package_version,
    percentile,
)

ACCEPT = "application/json, text/event-stream"
LEGACY, MODERN = "2025-11-25", "2026-07-28"
ERAS = ("legacy", "modern")
GENERATORS = ("wrk", "python")


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


# ---- the call, per era ------------------------------------------------------------------------------


class Target:
    """One MCP endpoint (direct or the gateway) in one era: the request to send for a call."""

    def __init__(self, url: str, era: str, key: str | None) -> None:
        self.url, self.era, self.sid = url, era, None
        self.auth = {"Authorization": f"Bearer {key}"} if key else {}

    def body(self, rid: int, text: str) -> dict:
        params: dict = {"name": "test_echo", "arguments": {"text": text}}
        if self.era == "modern":
            params["_meta"] = {
                "io.modelcontextprotocol/protocolVersion": MODERN,
                "io.modelcontextprotocol/clientCapabilities": {},
                "io.modelcontextprotocol/clientInfo": {"name": "bench", "version": "1"},
            }
        return {"jsonrpc": "2.0", "id": rid, "method": "tools/call", "params": params}

    def headers(self) -> dict[str, str]:
        h = {"Accept": ACCEPT, "Content-Type": "application/json", **self.auth}
        if self.era == "modern":
            h.update({"MCP-Protocol-Version": MODERN, "Mcp-Method": "tools/call", "Mcp-Name": "test_echo"})
        elif self.sid:
            h.update({"Mcp-Session-Id": self.sid, "MCP-Protocol-Version": LEGACY})
        return h

    async def open(self, http: aiohttp.ClientSession) -> None:
        """A legacy session's handshake (a modern target has nothing to open)."""
        if self.era != "legacy":
            return
        init = {
            "jsonrpc": "2.0",
            "id": 0,
            "method": "initialize",
            "params": {"protocolVersion": LEGACY, "capabilities": {}, "clientInfo": {"name": "bench", "version": "1"}},
        }
        async with http.post(self.url, json=init, headers=self.headers()) as resp:
            resp.raise_for_status()
            self.sid = resp.headers["mcp-session-id"]
            await resp.read()
        done = {"jsonrpc": "2.0", "method": "notifications/initialized"}
        async with http.post(self.url, json=done, headers=self.headers()) as resp:
            await resp.read()

    async def close(self, http: aiohttp.ClientSession) -> None:
        if self.sid:
            async with http.delete(self.url, headers=self.headers()) as resp:
                await resp.read()


def answer(payload: bytes, ctype: str) -> dict:
    """The JSON-RPC answer of a reply: the JSON body, or an SSE stream's last message."""
    if ctype.startswith("text/event-stream"):
        data = [line[5:].strip() for line in payload.split(b"\n") if line.startswith(b"data:") and line[5:].strip()]
        return json.loads(data[-1])
    return json.loads(payload)


# ---- the Python generator -----------------------------------------------------------------------------


async def python_leg(target: Target, calls: int, concurrency: int) -> dict[str, float]:
    """``calls`` calls by ``concurrency`` callers on fresh keep-alive connections."""
    headers = target.headers()
    latencies: list[float] = []
    counter = iter(range(calls))
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as http:

        async def caller() -> None:
            for i in counter:
                text = f"m{i}"
                body = json.dumps(target.body(i + 1, text))
                t0 = time.perf_counter()
                async with http.post(target.url, data=body, headers=headers) as resp:
                    payload = await resp.read()
                    ctype = resp.headers.get("Content-Type", "")
                latencies.append(time.perf_counter() - t0)
                msg = answer(payload, ctype)
                if msg.get("result", {}).get("content", [{}])[0].get("text") != text:
                    raise RuntimeError(f"unexpected reply: {msg}")

        start = time.perf_counter()
        await asyncio.gather(*(caller() for _ in range(concurrency)))
        seconds = time.perf_counter() - start
    p50, p99 = percentile(latencies, 50) * 1000, percentile(latencies, 99) * 1000
    return {"rps": calls / seconds, "p50": p50, "p99": p99, "calls": calls}


# ---- wrk ------------------------------------------------------------------------------------------------

WRK_SCRIPT = """
local threads = {}
function setup(thread) table.insert(threads, thread) end
wrk.method = "POST"
%(headers)s
-- A request id is never reused within a session (a legacy server may mix up replies otherwise).
sent = 0
function request()
  sent = sent + 1
  return wrk.format(nil, nil, nil, string.format(%(body)s, sent))
end
bad = 0
function response(status, headers, body)
  if status ~= 200 or not string.find(body, %(expect)s, 1, true) then bad = bad + 1 end
end
function done(summary, latency, requests)
  local b = 0
  for _, t in ipairs(threads) do b = b + t:get("bad") end
  local e = summary.errors
  io.write(string.format('{"requests":%%d,"duration_us":%%d,"p50_us":%%d,"p99_us":%%d,"bad":%%d,"errors":%%d}\\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99), b,
    e.connect + e.read + e.write + e.status + e.timeout))
end
"""


def wrk_script(target: Target, directory: Path, name: str) -> Path:
    """The Lua script that makes wrk send ``target``'s call, each with an id of its own (wrk runs
    one thread: a counter is unique), and check each reply."""
    body = json.dumps(target.body(0, "wrk-echo")).replace('"id": 0,', '"id": %d,', 1)
    headers = "\n".join(f"wrk.headers[{json.dumps(k)}] = {json.dumps(v)}" for k, v in target.headers().items())
    path = directory / f"{name}.lua"
    path.write_text(WRK_SCRIPT % {"body": json.dumps(body), "headers": headers, "expect": json.dumps('"wrk-echo"')})
    return path


async def wrk_leg(script: Path, url: str, duration: float, concurrency: int) -> dict[str, float]:
    proc = await asyncio.create_subprocess_exec(
        "wrk",
        "-t1",
        f"-c{concurrency}",
        f"-d{max(1, round(duration))}s",
        "--timeout",
        "10s",
        "-s",
        str(script),
        url,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    out, err = await proc.communicate()
    lines = [line for line in out.decode().splitlines() if line.startswith('{"requests"')]
    if proc.returncode or not lines:
        raise RuntimeError(f"wrk failed: {out.decode()[-2000:]} {err.decode()[-2000:]}")
    r = json.loads(lines[-1])
    if r["bad"] or r["errors"]:
        raise RuntimeError(f"wrk saw {r['bad']} wrong replies and {r['errors']} errors against {url}")
    rps = r["requests"] / (r["duration_us"] / 1e6)
    return {"rps": rps, "p50": r["p50_us"] / 1000, "p99": r["p99_us"] / 1000, "calls": r["requests"]}


# ---- legs, interleaved ----------------------------------------------------------------------------------

Leg = Callable[[str, int], Awaitable[dict[str, float]]]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (Linux: /proc; elsewhere 0)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def interleaved(leg: Leg, repeats: int, pids: dict[str, int]) -> dict:
    """``leg(path, concurrency)`` for each path of ``pids`` ("direct", "gateway", "compared") at
    concurrency 1 and 32, interleaved so drift hits all alike; each figure is the median of
    ``repeats``. ``cpu`` is the CPU time per call of the process that answers the leg
    (``pids[path]``: the upstream, a gateway), which a loaded machine disturbs far less than
    throughput."""
    results: dict = {}
    for concurrency in (1, 32):
        runs: dict[str, list[dict]] = {path: [] for path in pids}
        for _ in range(repeats):
            for path, legs in runs.items():
                before = cpu_seconds(pids[path])
                r = await leg(path, concurrency)
                r["cpu"] = (cpu_seconds(pids[path]) - before) * 1000 / r.pop("calls")
                legs.append(r)
        results[concurrency] = {
            path: {k: statistics.median(r[k] for r in rs) for k in ("rps", "p50", "p99", "cpu")}
            for path, rs in runs.items()
        }
    return results


async def measure(urls: dict[str, str], args: argparse.Namespace, pids: dict[str, int]) -> dict:
    key = BENCH_KEY if args.auth else None
    out: dict = {}
    calls = {1: args.calls, 32: args.calls * 3}
    async with aiohttp.ClientSession() as http:
        for era in args.eras:
            targets = {path: Target(url, era, None if path == "direct" else key) for path, url in urls.items()}
            for t in targets.values():
                await t.open(http)
                await python_leg(t, 300, 8)  # warm up connections, caches and the upstream pool
            if "python" in args.generators:
                out[("python", era)] = await interleaved(
                    lambda path, c, targets=targets: python_leg(targets[path], calls[c], c), args.repeats, pids
                )
            if "wrk" in args.generators:
                with tempfile.TemporaryDirectory(prefix="bench-mcp-") as tmp:
                    scripts = {p: wrk_script(t, Path(tmp), p) for p, t in targets.items()}
                    out[("wrk", era)] = await interleaved(
                        lambda path, c, targets=targets, scripts=scripts: wrk_leg(
                            scripts[path], targets[path].url, args.duration, c
                        ),
                        args.repeats,
                        pids,
                    )
            for t in targets.values():
                await t.close(http)
    return out


def report(results: dict) -> None:
    for (generator, era), legs in results.items():
        print(f"\n[{generator}, {era} era]")
        print(f"{'concurrency':>11} {'path':>8} {'calls/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'CPU ms/call':>12}")
        for c, paths in legs.items():
            for name, r in paths.items():
                print(f"{c:>11} {name:>8} {r['rps']:>9.0f} {r['p50']:>8.2f} {r['p99']:>8.2f} {r['cpu']:>12.2f}")
        for c, paths in legs.items():
            d = paths["direct"]
            target = "target >= 0.7x, < 0.5 ms added" if c == 1 else "target >= 0.5x"
            for name in (n for n in paths if n != "direct"):
                ratio, added = paths[name]["rps"] / d["rps"], paths[name]["p50"] - d["p50"]
                print(f"concurrency {c}: {name}/direct = {ratio:.2f}x, added p50 {added:+.2f} ms ({target})")
            g = paths["gateway"]
            for name in (n for n in paths if n not in ("direct", "gateway")):
                o = paths[name]
                print(
                    f"concurrency {c}: gateway vs {name}: throughput {g['rps'] / o['rps']:.2f}x, "
                    f"p50 {g['p50'] - o['p50']:+.2f} ms, CPU per call {g['cpu']:.2f} vs {o['cpu']:.2f} ms"
                )


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--eras", default=",".join(ERAS), help="comma-separated: legacy, modern")
    parser.add_argument("--generators", default=",".join(GENERATORS), help="comma-separated: wrk, python")
    parser.add_argument("--duration", type=float, default=15.0, help="seconds per wrk leg")
    parser.add_argument("--calls", type=int, default=1000, help="python: calls per leg at concurrency 1 (x3 at 32)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--auth", action="store_true", help="the gateway requires an API key (sent by the client)")
    parser.add_argument("--trace", action="store_true", help="a leg through a gateway with tracing on (100%% sampled)")
    parser.add_argument("--compare", metavar="DIR", help="also measure a gateway run from this checkout")
    parser.add_argument("--serve-gateway", nargs=3, metavar=("PORT", "UPSTREAM", "KEYS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_gateway:
        port, upstream, keys = args.serve_gateway
        serve_gateway(int(port), upstream, keys or None)
        return
    args.eras = [e for e in args.eras.split(",") if e]
    args.generators = [g for g in args.generators.split(",") if g]
    if not set(args.eras) <= set(ERAS) or not set(args.generators) <= set(GENERATORS):
        parser.error(f"eras are {ERAS}, generators {GENERATORS}")
    if "wrk" in args.generators and shutil.which("wrk") is None:
        print("wrk is not installed (apt-get install wrk): the wrk legs are skipped")
        args.generators.remove("wrk")
    up_port = free_port()
    trees = {"gateway": REPO}
    if args.trace:
        trees["traced"] = REPO
    if args.compare:
        trees["compared"] = Path(args.compare).resolve()
    with Processes() as procs:
        # The upstream serves both eras (the direct leg of each era needs it), so the gateway's
        # era discovery speaks 2026-07-28 to it whatever era its own client speaks.
        upstream = (
            procs.start(
                [sys.executable, str(REPO / "tests/fixtures/mcp_upstream.py"), "--port", str(up_port), "--era", "dual"],
                up_port,
                "upstream",
            )
            + "/mcp"
        )
        urls, pids = {"direct": upstream}, {"direct": procs.procs[-1].pid}
        keys = api_key_file() if args.auth else ""
        for path, tree in trees.items():
            port = free_port()
            procs.env["PYTHONPATH"], procs.cwd = str(tree), tree  # the gateway's code is that checkout's
            command = [sys.executable, "-m", "bench.mcp", "--serve-gateway", str(port), upstream, keys]
            env = otlp_receiver(procs) if path == "traced" else None
            urls[path], pids[path] = procs.start(command, port, path, env=env) + "/mcp", procs.procs[-1].pid
        gateways = ", ".join(f"{p}: {t}" for p, t in trees.items())
        print(
            f"MCP tools/call test_echo: direct to the upstream (mcp SDK {package_version('mcp')}) vs. through the "
            f"gateway ({gateways}){' (API key required)' if args.auth else ''}; "
            f"median of {args.repeats} runs; wrk {args.duration:g} s per leg, python {args.calls} calls per leg "
            f"at concurrency 1, {args.calls * 3} at 32; load average {load_average()} ({os.cpu_count()} CPUs)"
        )
        results = asyncio.run(measure(urls, args, pids))
        report(results)
        print(f"\nload average after: {load_average()}")


if __name__ == "__main__":
    main()
