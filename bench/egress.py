"""Egress benchmark: what the egress policy (gateway/core/egress.py) adds to outbound HTTP.

    python -m bench.egress [--requests 2000]

Against a uvicorn server on loopback, measured in this run, each as a ratio to the same client
without the policy (a plain ``httpx.AsyncClient`` / ``aiohttp.ClientSession``):

* a new connection per request (keep-alive off): the resolution and the check of every new
  connection, for a literal address and for a name (``localhost``, through the system resolver);
* pooled connections (the common case): the per-request check of literal hosts, the response
  bound (httpx) and the middleware (aiohttp).

Times are CPU time of this process (client and server), the fastest of alternating rounds; the
added time per request is the difference of the two.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Awaitable, Callable

import aiohttp
import httpx
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

from gateway.core.egress import Egress
from tests.conftest import serve_app


async def ok(request):
    return JSONResponse({"ok": True})


async def mean_us(call: Callable[[], Awaitable[object]], n: int) -> float:
    """CPU µs per call of this process (the client and the loopback server): unlike wall time,
    not inflated by whatever else the machine runs."""
    start = time.process_time()
    for _ in range(n):
        await call()
    return (time.process_time() - start) / n * 1e6


async def paired(plain: Callable[[], Awaitable[object]], checked: Callable[[], Awaitable[object]], n: int):
    """(plain, checked) µs per call: rounds of each in turn, the fastest round of each (the one
    least disturbed by whatever else the machine runs)."""
    rounds = 20
    await mean_us(plain, 50), await mean_us(checked, 50)  # warm up
    a, b = [], []
    for _ in range(rounds):
        a.append(await mean_us(plain, max(1, n // rounds)))
        b.append(await mean_us(checked, max(1, n // rounds)))
    return min(a), min(b)


def line(what: str, plain: float, egress: float) -> None:
    print(f"{what:<52} egress/plain {egress / plain:5.2f}   (+{egress - plain:6.1f} µs per request)")


async def main(requests: int) -> None:
    egress = Egress(["loopback"])
    async with serve_app(Starlette(routes=[Route("/", ok)])) as url:
        port = url.rsplit(":", 1)[1]
        for host in ("127.0.0.1", "localhost"):
            fresh = httpx.Limits(max_keepalive_connections=0)
            async with httpx.AsyncClient(limits=fresh) as plain, egress.httpx_client(limits=fresh) as checked:
                u = f"http://{host}:{port}/"
                line(
                    f"httpx, a new connection per request ({host})",
                    *await paired(lambda h=plain, u=u: h.get(u), lambda h=checked, u=u: h.get(u), requests),
                )
        target = f"http://127.0.0.1:{port}/"
        async with httpx.AsyncClient() as plain, egress.httpx_client() as checked:
            pooled, b = await paired(lambda: plain.get(target), lambda: checked.get(target), requests)
        line("httpx, pooled", pooled, b)

        async def fetch(session: aiohttp.ClientSession) -> None:
            async with session.get(target) as resp:
                await resp.read()

        timeout = aiohttp.ClientTimeout(total=10)
        async with (
            aiohttp.ClientSession(timeout=timeout) as plain_session,
            egress.aiohttp_session(target, timeout=timeout) as checked_session,
        ):
            line(
                "aiohttp, pooled", *await paired(lambda: fetch(plain_session), lambda: fetch(checked_session), requests)
            )
        for what, host in (("a literal address", "127.0.0.1"), ("a name: getaddrinfo + check", "localhost")):
            alone = await mean_us(lambda h=host: egress.addresses(h, 80), requests)
            print(f"the check alone, {what:<30} {alone / pooled:5.3f} of a pooled httpx request ({alone:.1f} µs)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=2000)
    asyncio.run(main(parser.parse_args().requests))
