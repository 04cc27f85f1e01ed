"""Slow clients against a real ``interlace serve`` (P14 and P15 of the security review).

Attackers trickle request heads (slowloris) or send most of a body and stall, over real sockets,
while a well-behaved client is timed on fresh connections and the gateway's resident memory is
sampled from /proc. The suite runs ``INTERLACE_SLOW_CLIENTS`` attackers (200 by default, to fit
two cores; set 1000 for the review's full figure) trickling heads and ``INTERLACE_SLOW_BODIES``
(100, as in the review) stalled bodies; the report lines (``-s``) give the figures.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from gateway.app import create_app
from tests.conftest import free_port, interlace_cmd, serve_app, stop_process, subprocess_env, test_config, wait_until

ATTACKERS = int(os.environ.get("INTERLACE_SLOW_CLIENTS", "200"))
BODIES = int(os.environ.get("INTERLACE_SLOW_BODIES", "100"))
MiB = 1024 * 1024

pytestmark = pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads memory from /proc")


def rss(pid: int) -> int:
    """Resident memory of a process, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


@contextlib.asynccontextmanager
async def gateway(*flags: str):
    """``interlace serve`` with ``flags``; yields (base URL, pid) once it answers."""
    port = free_port()
    proc = subprocess.Popen(
        interlace_cmd("serve", "--port", str(port), "--no-gossip", "--log-level", "error", *flags),
        env=subprocess_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(base_url=url, timeout=5) as client:
            async with asyncio.timeout(30):
                while True:
                    with contextlib.suppress(httpx.TransportError):
                        if (await client.get("/readyz")).status_code == 200:
                            break
                    await asyncio.sleep(0.05)
        yield url, proc.pid
    finally:
        stop_process(proc)


class Watch:
    """The gateway's peak resident memory while an attack runs (sampled every 50 ms)."""

    def __init__(self, pid: int) -> None:
        self.pid, self.base, self.peak = pid, rss(pid), 0
        self._task = asyncio.create_task(self._sample())

    async def _sample(self) -> None:
        while True:
            self.peak = max(self.peak, rss(self.pid))
            await asyncio.sleep(0.05)

    async def stop(self) -> int:
        """The growth over the memory before the attack, in bytes."""
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        return self.peak - self.base


async def good_client_latencies(url: str, rounds: int, spacing_s: float) -> list[float]:
    """Seconds a well-behaved client waits for a task's answer, each on a fresh connection."""
    out = []
    limits = httpx.Limits(max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=url, timeout=10, limits=limits) as client:
        for i in range(rounds):
            start = time.monotonic()
            message = {"role": "user", "parts": [{"kind": "text", "text": f"good {i}"}]}
            resp = await client.post("/tasks?wait=true", json={"agent": "echo", "message": message})
            out.append(time.monotonic() - start)
            assert resp.status_code == 200 and resp.json()["status"]["state"] == "completed"
            await asyncio.sleep(spacing_s)  # spread over the attack, not synchronisation
    return out


async def warm(url: str) -> None:
    await good_client_latencies(url, 20, 0)


@contextlib.asynccontextmanager
async def attackers(kind: str, url: str, count: int, arg: float):
    """tests/fixtures/slow_clients.py in its own process; yields once every connection is open,
    then a coroutine that waits for the outcome (the JSON line it prints)."""
    port = url.rsplit(":", 1)[1]
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.fixtures.slow_clients",
        kind,
        port,
        str(count),
        str(arg),
        env=subprocess_env(),
        stdout=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None

    async def outcome() -> list:
        return json.loads(await proc.stdout.readline())

    try:
        async with asyncio.timeout(60):
            assert await proc.stdout.readline() == b"ready\n"
        yield outcome
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()


@pytest.mark.timeout(180)
async def test_trickled_heads_neither_block_a_good_client_nor_grow_memory():
    """P14: ATTACKERS connections (the connection cap, so each good connection closes the one
    idle longest) trickle header lines past the head deadline."""
    header_timeout = 3.0
    flags = ("--header-timeout-s", str(header_timeout), "--max-connections", str(ATTACKERS))
    async with gateway(*flags) as (url, pid):
        await warm(url)
        watch = Watch(pid)
        async with attackers("heads", url, ATTACKERS, 0.5) as outcome:
            latencies = await good_client_latencies(url, 10, 0.2)
            async with asyncio.timeout(header_timeout + 20):
                lasted = await outcome()
        growth = await watch.stop()
    print(
        f"\nP14 {ATTACKERS} trickling heads: good client worst {max(latencies) * 1000:.0f} ms, "
        f"median {sorted(latencies)[len(latencies) // 2] * 1000:.0f} ms; gateway RSS +{growth / MiB:.1f} MiB; "
        f"attackers held at most {max(lasted):.1f} s"
    )
    assert max(latencies) < 1.0
    assert max(lasted) < header_timeout + 2  # the head deadline, not the attacker, ended them
    assert growth < ATTACKERS * 100 * 1024 + 32 * MiB  # the stated bound per connection, plus slack


@pytest.mark.timeout(180)
async def test_stalled_bodies_neither_block_a_good_client_nor_grow_memory_past_the_budget():
    """P15: BODIES connections each send 4 MiB - 1 of a 4 MiB body, then stall."""
    body_timeout, budget = 3.0, 32 * MiB
    flags = ("--body-timeout-s", str(body_timeout), "--max-buffered-body-bytes", str(budget))
    async with gateway(*flags) as (url, pid):
        await warm(url)
        watch = Watch(pid)
        async with attackers("bodies", url, BODIES, 4 * MiB - 1) as outcome:
            latencies = await good_client_latencies(url, 10, 0.2)
            async with asyncio.timeout(body_timeout + 30):
                statuses = sorted(set(await outcome()))
        growth = await watch.stop()
    print(
        f"\nP15 {BODIES} stalled 4 MiB bodies: good client worst {max(latencies) * 1000:.0f} ms; "
        f"gateway RSS +{growth / MiB:.1f} MiB (budget {budget // MiB} MiB); attackers got {statuses}"
    )
    assert max(latencies) < 1.0
    # The deadline or the budget ended every one ("closed": its 503 was lost to the reset of a
    # connection closed with unread data)
    assert set(statuses) <= {"408", "503", "closed"} and "408" in statuses
    assert growth < budget + BODIES * 512 * 1024 + 32 * MiB  # the budget, the per-connection buffers, slack


# ---- the bounds one by one, on an in-process gateway served as `interlace serve` serves it ---------


@contextlib.asynccontextmanager
async def bounded_gateway(**bounds):
    config = test_config(gossip=False, **bounds)
    async with serve_app(create_app(config), bounded=config) as url:
        yield url, int(url.rsplit(":", 1)[1])


async def response_head(reader: asyncio.StreamReader) -> bytes:
    async with asyncio.timeout(10):
        return await reader.readuntil(b"\r\n\r\n")


async def closed(reader: asyncio.StreamReader) -> bool:
    """Whether the gateway closed the connection (EOF once whatever it sent is read)."""
    async with asyncio.timeout(10):
        while await reader.read(65536):
            pass
    return True


async def test_a_head_past_the_deadline_gets_408_and_is_closed():
    async with bounded_gateway(header_timeout_s=0.5) as (_, port):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # never finished
        assert (await response_head(reader)).startswith(b"HTTP/1.1 408 ")
        assert await closed(reader)
        idle, _ = await asyncio.open_connection("127.0.0.1", port)  # says nothing at all
        assert await closed(idle)


async def test_a_head_too_large_gets_431_and_is_closed():
    async with bounded_gateway(max_header_bytes=4096) as (_, port):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 8192)
        assert (await response_head(reader)).startswith(b"HTTP/1.1 431 ")
        assert await closed(reader)


async def test_a_connection_serves_keepalive_max_requests_then_closes():
    async with bounded_gateway(keepalive_max_requests=2) as (_, port):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        heads = []
        for _ in range(2):
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            head = await response_head(reader)
            length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            await reader.readexactly(length)
            heads.append(head.lower())
        assert b"connection: close" not in heads[0] and b"connection: close" in heads[1]
        assert await closed(reader)


async def test_past_the_cap_the_longest_idle_connection_makes_way_and_busy_ones_never_do():
    async with bounded_gateway(max_connections=3) as (url, port):
        idle = [await asyncio.open_connection("127.0.0.1", port) for _ in range(3)]
        async with httpx.AsyncClient(base_url=url, limits=httpx.Limits(max_keepalive_connections=0)) as client:
            assert (await client.get("/healthz")).status_code == 200  # the 4th connection
        assert await closed(idle[0][0])  # idle longest: closed for it
        for _, writer in idle[1:]:
            writer.close()
        # Three connections busy with requests (tasks that take 10 s): a fourth is refused.
        busy = [await asyncio.open_connection("127.0.0.1", port) for _ in range(3)]
        slow = {"role": "user", "parts": [{"kind": "text", "text": "x"}], "metadata": {"delay_ms": 10000}}
        body = json.dumps({"agent": "echo", "message": slow}).encode()
        for _, writer in busy:
            writer.write(b"POST /tasks?wait=true HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n")
            writer.write(b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        async with httpx.AsyncClient(base_url=url) as client:

            async def refused() -> bool:
                return (await client.get("/healthz")).status_code == 503

            await wait_until(refused)
        for _, writer in busy:
            writer.close()


async def test_a_stalled_body_gets_408_and_a_body_past_the_budget_503():
    async with bounded_gateway(body_timeout_s=0.5, max_buffered_body_bytes=256 * 1024) as (url, port):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            b"POST /tasks HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{"
        )
        assert (await response_head(reader)).startswith(b"HTTP/1.1 408 ")
        assert await closed(reader)
        # One body holds the budget (past the 64 KiB each request has to itself) ...
        holder_r, holder_w = await asyncio.open_connection("127.0.0.1", port)
        holder_w.write(b"POST /tasks HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n" + b"x" * 300_000)
        await holder_w.drain()
        # ... so another large one is refused, and a small one still passes.
        async with httpx.AsyncClient(base_url=url, timeout=10) as client:

            async def busy() -> bool:
                resp = await client.post("/tasks", content=b"x" * 200_000)
                return resp.status_code == 503 and resp.json()["error"]["code"] == "server_busy"

            await wait_until(busy)
            small = await client.post(
                "/tasks?wait=true",
                json={"agent": "echo", "message": {"role": "user", "parts": [{"kind": "text", "text": "hi"}]}},
            )
            assert small.status_code == 200
        holder_w.close()


async def test_the_rest_of_a_body_answered_early_is_dropped_for_the_body_deadline_only():
    async with bounded_gateway(body_timeout_s=0.5, max_body_bytes=1024) as (url, port):
        async with httpx.AsyncClient(base_url=url, timeout=10) as client:  # sends it all, then reads
            assert (await client.post("/tasks", content=b"x" * 1_000_000)).status_code == 413
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST /tasks HTTP/1.1\r\nHost: x\r\nContent-Length: 100000000\r\n\r\n")
        assert (await response_head(reader)).startswith(b"HTTP/1.1 413 ")

        async def junk() -> None:  # a body nobody reads, sent slowly and forever
            with contextlib.suppress(ConnectionError):
                while True:
                    writer.write(b"x" * 100)
                    await asyncio.sleep(0.05)  # the attack's pace

        sender = asyncio.create_task(junk())
        try:
            assert await closed(reader)
        finally:
            sender.cancel()
