"""``interlace mcp stdio --gateway URL [--token-file FILE]``: a stdio MCP server that relays to a
gateway's ``/mcp``, for hosts that only launch stdio servers (they then get every agent and
federated tool the caller may use).

It relays the transport and nothing else; the gateway does the protocol. Each line the host
writes on stdin is POSTed to ``/mcp`` with the caller's credentials (``Authorization: Bearer``
and the token file's first line, read once at start: the gateway's API key or a JWT, see
``gateway.core.auth``), and what the gateway answers (a JSON body, or each message of the SSE
stream) is written to stdout, one message a line. The handshake era: ``initialize`` is relayed
first and alone, its ``Mcp-Session-Id`` and negotiated version go on every later request, and the
session's GET stream (resumed with ``Last-Event-ID``) brings the gateway's own notifications and
requests; the host's answers to those are POSTed like any message; end of stdin deletes the
session and ends the bridge. A 2026-07-28 request (its ``_meta`` names the version) goes without
a session, with its mirrored headers (``MCP-Protocol-Version``, ``Mcp-Method``, ``Mcp-Name``).

A request the gateway refuses or cannot answer (401, 403, unreachable, a lost session) gets a
JSON-RPC error naming the HTTP status; a notification that fails is logged on stderr, where
hosts show a server's log. Requests run concurrently, as the host sends them.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import sys
from typing import Any

import httpx

from gateway.core import sse
from gateway.core.config import read_secret

log = logging.getLogger("interlace.mcp.bridge")

META_VERSION = "io.modelcontextprotocol/protocolVersion"
NAME_FIELDS = {"tools/call": "name", "prompts/get": "name", "resources/read": "uri"}
BRIDGE_ERROR = -32603


class Bridge:
    def __init__(self, url: str, token: str | None, out: Any) -> None:
        self.url, self.token, self.out = url, token, out
        self.http = httpx.AsyncClient(timeout=httpx.Timeout(30.0, read=None))
        self.session_id: str | None = None
        self.version: str | None = None
        self._write_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task] = set()
        self._listener: asyncio.Task | None = None

    # ---- out ---------------------------------------------------------------------------------

    async def write(self, msg: Any) -> None:
        line = json.dumps(msg, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"
        async with self._write_lock:
            self.out.write(line)
            await self.out.drain()

    async def fail(self, msg: dict[str, Any], why: str) -> None:
        """Answer the host's request ``msg`` with an error (a notification or response: log it)."""
        if "method" in msg and "id" in msg:
            await self.write({"jsonrpc": "2.0", "id": msg["id"], "error": {"code": BRIDGE_ERROR, "message": why}})
        else:
            log.warning("message not relayed", extra={"reason": why})

    # ---- in ----------------------------------------------------------------------------------

    def headers(self, msg: dict[str, Any]) -> dict[str, str]:
        h = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
        if self.token:
            h["Authorization"] = f"Bearer {self.token}"
        params = msg.get("params") if isinstance(msg.get("params"), dict) else {}
        meta = params.get("_meta") if isinstance(params.get("_meta"), dict) else {}
        if isinstance(meta.get(META_VERSION), str):  # 2026-07-28: no session, mirrored headers
            h["MCP-Protocol-Version"] = meta[META_VERSION]
            h["Mcp-Method"] = str(msg.get("method"))
            name = params.get(NAME_FIELDS.get(msg.get("method"), ""))
            if isinstance(name, str):
                h["Mcp-Name"] = name if name.isascii() and name.isprintable() else _encoded(name)
        elif self.session_id:
            h["Mcp-Session-Id"] = self.session_id
            h["MCP-Protocol-Version"] = self.version or ""
        return h

    async def relay(self, msg: dict[str, Any]) -> None:
        """POST one message of the host's; write what comes back."""
        try:
            async with self.http.stream("POST", self.url, json=msg, headers=self.headers(msg)) as resp:
                if resp.status_code == 202:
                    return
                ctype = resp.headers.get("content-type", "")
                if resp.status_code >= 400 and not ctype.startswith(("application/json", "text/event-stream")):
                    await self.fail(msg, f"the gateway answered HTTP {resp.status_code}")
                    return
                if msg.get("method") == "initialize" and resp.status_code == 200:
                    self.session_id = resp.headers.get("mcp-session-id")
                if ctype.startswith("text/event-stream"):
                    async for event in sse.read_events(resp.aiter_bytes()):
                        if event.data.strip():
                            await self.write(json.loads(event.data))
                    return
                body = json.loads(await resp.aread())
        except (httpx.HTTPError, OSError, ValueError, sse.LineTooLong) as exc:
            await self.fail(msg, f"the gateway cannot be reached ({exc.__class__.__name__})")
            return
        if isinstance(body, dict) and "jsonrpc" in body:
            if msg.get("method") == "initialize" and isinstance(body.get("result"), dict):
                self.version = body["result"].get("protocolVersion")
            await self.write(body)
        else:
            await self.fail(msg, f"the gateway answered HTTP {resp.status_code}")

    async def listen(self) -> None:
        """The session's GET stream: the gateway's own notifications and requests."""
        last_id, backoff = None, 0.5
        while self.session_id:
            headers = {**self.headers({}), "Accept": "text/event-stream"}
            if last_id:
                headers["Last-Event-ID"] = last_id
            try:
                async with self.http.stream("GET", self.url, headers=headers) as resp:
                    if resp.status_code in (404, 405):
                        return  # no such stream (or the session is gone: the next POST says so)
                    if resp.status_code == 200:
                        backoff = 0.5
                        async for event in sse.read_events(resp.aiter_bytes()):
                            last_id = event.id or last_id
                            if event.data.strip():
                                await self.write(json.loads(event.data))
            except (httpx.HTTPError, OSError, ValueError, sse.LineTooLong) as exc:
                log.info("GET stream ended", extra={"reason": exc.__class__.__name__})
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 30.0)

    async def run(self, lines: asyncio.StreamReader) -> None:
        try:
            while line := await lines.readline():
                if not line.strip():
                    continue
                try:
                    msg = json.loads(line)
                except ValueError:
                    await self.write(
                        {"jsonrpc": "2.0", "id": None, "error": {"code": -32700, "message": "Parse error"}}
                    )
                    continue
                if not isinstance(msg, dict):
                    await self.write({"jsonrpc": "2.0", "id": None, "error": {"code": -32600, "message": "Invalid"}})
                    continue
                if msg.get("method") == "initialize":
                    await self.relay(msg)  # alone: later requests need its session
                    continue
                if msg.get("method") == "notifications/initialized":
                    await self.relay(msg)
                    if self.session_id and self._listener is None:
                        self._listener = asyncio.create_task(self.listen())
                    continue
                task = asyncio.create_task(self.relay(msg))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        finally:
            await self.close()

    async def close(self) -> None:
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5.0)
        for task in [*self._tasks, self._listener]:
            if task is not None:
                task.cancel()
        if self.session_id:
            with contextlib.suppress(httpx.HTTPError, OSError):
                await self.http.delete(self.url, headers=self.headers({}), timeout=2.0)
        await self.http.aclose()


def _error(code: int, message: str) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": None, "error": {"code": code, "message": message}}


def _encoded(value: str) -> str:
    return f"=?base64?{base64.b64encode(value.encode()).decode()}?="


def mcp_url(gateway: str) -> str:
    """The gateway's MCP endpoint: ``URL`` itself when it ends in ``/mcp``, else ``URL/mcp``."""
    gateway = gateway.rstrip("/")
    return gateway if gateway.endswith("/mcp") else gateway + "/mcp"


async def serve(gateway: str, token_file: str | None) -> int:
    token = read_secret(token_file) if token_file else os.environ.get("INTERLACE_TOKEN") or None
    loop = asyncio.get_running_loop()
    lines = asyncio.StreamReader(limit=64 * 1024 * 1024)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(lines), sys.stdin)
    transport, protocol = await loop.connect_write_pipe(asyncio.streams.FlowControlMixin, sys.stdout)
    out = asyncio.StreamWriter(transport, protocol, None, loop)
    await Bridge(mcp_url(gateway), token, out).run(lines)
    return 0
