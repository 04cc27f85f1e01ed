"""Probe P13 of the security review as a regression test: a 50 MB body to ``/tasks`` (declared by
Content-Length, or chunked with no length) is answered 413 at once, the server reads no more
than the limit of it, and its memory does not grow by the body's size.

A real uvicorn on loopback and a raw socket: an HTTP client library would insist on sending the
whole body before it reads the answer."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

from tests.conftest import running_gateway, test_config

BODY_BYTES = 50 * 1024 * 1024
CHUNK = b"x" * (64 * 1024)
LIMIT = 4 * 1024 * 1024  # the default max_body_bytes


def rss_bytes() -> int:
    """This process's resident memory (the gateway runs in it)."""
    status = Path("/proc/self/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1)) * 1024


def request_head(extra: str) -> bytes:
    return f"POST /tasks HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n{extra}\r\n".encode()


async def status_of(reader: asyncio.StreamReader) -> int:
    line = await reader.readline()
    return int(line.split()[1])


async def test_declared_50_mb_body_is_413_before_any_of_it_is_sent():
    async with running_gateway(test_config()) as (url, _):
        host, port = url.removeprefix("http://").split(":")
        before = rss_bytes()
        async with asyncio.timeout(10):
            reader, writer = await asyncio.open_connection(host, int(port))
            writer.write(request_head(f"Content-Length: {BODY_BYTES}\r\n"))
            await writer.drain()
            assert await status_of(reader) == 413  # not one byte of the body was sent
            writer.close()
        assert rss_bytes() - before < 16 * 1024 * 1024


async def test_chunked_50_mb_body_is_413_after_the_limit():
    async with running_gateway(test_config()) as (url, _):
        host, port = url.removeprefix("http://").split(":")
        before = rss_bytes()
        async with asyncio.timeout(30):
            reader, writer = await asyncio.open_connection(host, int(port))
            writer.write(request_head("Transfer-Encoding: chunked\r\n"))
            answer = asyncio.create_task(status_of(reader))
            sent = 0
            try:
                while sent < BODY_BYTES and not answer.done():
                    writer.write(b"%x\r\n%s\r\n" % (len(CHUNK), CHUNK))
                    await writer.drain()
                    sent += len(CHUNK)
            except ConnectionError:  # the server answered and closed: the rest is refused
                pass
            assert await answer == 413
            writer.close()
        # Sent: the limit, plus what the socket buffers took before the answer was read.
        assert sent < BODY_BYTES / 2, f"the whole body went out ({sent} bytes) before the 413"
        assert rss_bytes() - before < 16 * 1024 * 1024 + LIMIT
