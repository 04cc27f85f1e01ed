"""Authentication seam benchmark: what ``Authenticator.authenticate`` costs per call.

    python -m bench.auth [--calls 20000]

Against the test suite's authorization server (tests/fixtures/oauth_server.py) on a loopback
port, measured in this run: a first validation (signature, claims) of distinct tokens per
algorithm, a cached token (the hot path: one SHA-256 and one dict lookup), and an API key; each
also as a ratio to the cached call.
"""

from __future__ import annotations

import argparse
import asyncio
import time

import httpx

from gateway.core.auth import Authenticator, AuthMode, api_key_digest
from tests.fixtures.oauth_server import running_oauth_server

AUD = "http://127.0.0.1:8080"


async def per_call_us(auth: Authenticator, headers: list[str]) -> float:
    start = time.perf_counter()
    for h in headers:
        await auth.authenticate(h)
    return (time.perf_counter() - start) / len(headers) * 1e6


async def main(calls: int) -> None:
    import tempfile

    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as keys:
        keys.write(f"- {{principal: ci, key_sha256: {api_key_digest('k' * 43)}, groups: [builders]}}\n")
        keys.flush()
        async with running_oauth_server() as idp, httpx.AsyncClient() as http:
            auth = Authenticator(
                mode=AuthMode.REQUIRED,
                issuer=idp.issuer,
                audience=AUD,
                api_keys=keys.name,
                http=http,
                cache_size=calls + 10,
            )
            await auth.refresh()
            one = f"Bearer {idp.issue(aud=AUD, scope='mcp tasks', groups=['dev'])}"
            await auth.authenticate(one)
            cached = await per_call_us(auth, [one] * calls)
            print(f"cached token:       {cached:8.2f} us/call  (1.0x)")
            for alg in ("RS256", "ES256", "EdDSA"):
                fresh = [
                    f"Bearer {idp.issue(alg=alg, aud=AUD, sub=f'u{i}', groups=['dev'])}"
                    for i in range(min(calls, 2000))
                ]
                first = await per_call_us(auth, fresh)
                print(f"first validation {alg:5s} {first:8.2f} us/call  ({first / cached:.1f}x the cached call)")
            api = await per_call_us(auth, [f"Bearer {'k' * 43}"] * calls)
            print(f"API key (1 in file): {api:8.2f} us/call  ({api / cached:.1f}x the cached call)")
            await auth.aclose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=20_000)
    asyncio.run(main(parser.parse_args().calls))
