"""A small ACP REST client for the outbound connector: pooled httpx, JSON bodies with a
Content-Type (some ACP servers refuse a body without one), SSE run streams.

Errors become ``RemoteACPError`` with the remote's ACP error ``code`` and ``message`` when it sent
one; ``retryable`` marks failures that say nothing about the request (connection, 5xx).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx

from gateway.core.sse import read_events

JSON = {"Content-Type": "application/json", "Accept": "application/json"}
SSE = {"Content-Type": "application/json", "Accept": "text/event-stream"}


class RemoteACPError(Exception):
    def __init__(
        self, message: str, *, status: int | None = None, code: str | None = None, retryable: bool = False
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.retryable = status, code, retryable


def _describe(exc: httpx.HTTPError) -> str:
    kind = exc.__class__.__name__
    return f"{kind}: {exc}" if str(exc) else kind


def _error(resp: httpx.Response, body: bytes) -> RemoteACPError:
    code, message = None, body[:300].decode("utf-8", "replace") or resp.reason_phrase
    try:
        data = json.loads(body)
        if isinstance(data, dict):
            err = data.get("error") if isinstance(data.get("error"), dict) else data
            code = err.get("code") if isinstance(err.get("code"), str) else None
            message = str(err.get("message") or err.get("detail") or message)
    except ValueError:
        pass
    return RemoteACPError(
        f"HTTP {resp.status_code}: {message}", status=resp.status_code, code=code, retryable=resp.status_code >= 500
    )


class ACPClient:
    def __init__(self, http: httpx.AsyncClient, base_url: str, headers: dict[str, str] | None = None) -> None:
        self.http, self.base, self.headers = http, base_url.rstrip("/"), headers or {}

    async def _json(self, method: str, path: str, body: Any = None, timeout: float | None = None) -> Any:
        kw: dict[str, Any] = {"headers": {**JSON, **self.headers}}
        if body is not None:
            kw["content"] = json.dumps(body)
        if timeout is not None:
            kw["timeout"] = timeout
        try:
            resp = await self.http.request(method, self.base + path, **kw)
        except httpx.HTTPError as exc:
            raise RemoteACPError(f"cannot reach {self.base}: {_describe(exc)}", retryable=True) from None
        if resp.status_code >= 400:
            raise _error(resp, resp.content)
        try:
            return resp.json()
        except ValueError:
            raise RemoteACPError(f"{method} {path} did not answer JSON", status=resp.status_code) from None

    async def agent(self, name: str) -> dict[str, Any]:
        return await self._json("GET", f"/agents/{name}")

    async def get_run(self, run_id: str) -> dict[str, Any]:
        return await self._json("GET", f"/runs/{run_id}")

    async def cancel(self, run_id: str, timeout: float = 5.0) -> dict[str, Any]:
        return await self._json("POST", f"/runs/{run_id}/cancel", {}, timeout=timeout)

    def create_stream(
        self, agent: str, messages: list[dict[str, Any]], session_id: str | None
    ) -> AsyncIterator[dict[str, Any]]:
        body: dict[str, Any] = {"agent_name": agent, "input": messages, "mode": "stream"}
        if session_id:
            body["session_id"] = session_id
        return self._stream("/runs", body)

    def resume_stream(self, run_id: str, message: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        body = {"run_id": run_id, "await_resume": {"type": "message", "message": message}, "mode": "stream"}
        return self._stream(f"/runs/{run_id}", body)

    async def _stream(self, path: str, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """The run's ACP events. The first item is ``{"type": "interlace.run_id", "run_id"}`` when
        the response names the run in its ``Run-ID`` header (before any event arrives). A server
        that answers a Run as JSON instead of a stream yields one ``run.<status>`` event."""
        started = False
        try:
            async with self.http.stream(
                "POST", self.base + path, content=json.dumps(body), headers={**SSE, **self.headers}
            ) as resp:
                started = True
                if resp.status_code >= 400:
                    raise _error(resp, await resp.aread())
                if resp.headers.get("run-id"):
                    yield {"type": "interlace.run_id", "run_id": resp.headers["run-id"]}
                if not resp.headers.get("content-type", "").startswith("text/event-stream"):
                    run = json.loads(await resp.aread())
                    yield {"type": f"run.{run.get('status')}", "run": run}
                    return
                async for sse in read_events(resp.aiter_bytes()):
                    if not sse.data:
                        continue
                    event = json.loads(sse.data)
                    if isinstance(event, dict):
                        yield event
        except httpx.HTTPError as exc:
            what = f"the stream from {self.base} broke" if started else f"cannot reach {self.base}"
            raise RemoteACPError(f"{what}: {_describe(exc)}", retryable=True) from None
        except ValueError as exc:
            raise RemoteACPError(f"{self.base} sent a malformed event: {exc}") from None
