"""A small ACP REST client for the outbound connector: pooled httpx, JSON bodies with a
Content-Type (some ACP servers refuse a body without one), SSE run streams.

Errors become ``RemoteACPError`` with the remote's ACP error ``code`` and ``message`` when it sent
one; anything else (no connection, an HTTP error without an ACP error body, a reply that is not
JSON) is ``UNREACHABLE``, one text whatever happened, with the detail in ``detail`` for the log.
``retryable`` marks failures that say nothing about the request (connection, 5xx). The client
is the egress policy's (``Egress.httpx_client``), so every response is bounded.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx

from gateway.core import tracing
from gateway.core.egress import UNREACHABLE
from gateway.core.sse import read_events
from protocols.acp import telemetry

JSON = {"Content-Type": "application/json", "Accept": "application/json"}
SSE = {"Content-Type": "application/json", "Accept": "text/event-stream"}


class RemoteACPError(Exception):
    """The message is for the client; ``detail`` (what exactly happened) is for the log."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        retryable: bool = False,
        detail: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.retryable, self.detail = status, code, retryable, detail or message


def _unreachable(detail: str, *, status: int | None = None, retryable: bool = True) -> RemoteACPError:
    return RemoteACPError(UNREACHABLE, status=status, retryable=retryable, detail=detail)


def _describe(exc: httpx.HTTPError) -> str:
    kind = exc.__class__.__name__
    return f"{kind}: {exc}" if str(exc) else kind


def _error(url: str, resp: httpx.Response, body: bytes) -> RemoteACPError:
    """An error reply: the agent's own ACP error (``{code, message}``, maybe under ``error``), else unreachable."""
    status = resp.status_code
    try:
        data = json.loads(body)
    except ValueError:
        data = None
    err = (data.get("error") if isinstance(data.get("error"), dict) else data) if isinstance(data, dict) else None
    message = (err.get("message") or err.get("detail")) if isinstance(err, dict) else None
    if not message:
        return _unreachable(f"{url} answered HTTP {status}", status=status, retryable=status >= 500)
    code = err.get("code") if isinstance(err.get("code"), str) else None  # type: ignore[union-attr]
    return RemoteACPError(
        f"the remote agent answered: {message}",
        status=status,
        code=code,
        retryable=status >= 500,
        detail=f"{url} answered HTTP {status}: {message}",
    )


class ACPClient:
    def __init__(self, http: httpx.AsyncClient, base_url: str, headers: dict[str, str] | None = None) -> None:
        self.http, self.base, self.headers = http, base_url.rstrip("/"), headers or {}

    async def _json(self, method: str, route: str, path: str, body: Any = None, timeout: float | None = None) -> Any:
        """One exchange: ``route`` is the path's template (the span's name), ``path`` the path."""
        url = self.base + path
        with telemetry.client_span(method, route, url):
            return await self._exchange(method, url, body, timeout)

    async def _exchange(self, method: str, url: str, body: Any, timeout: float | None) -> Any:
        kw: dict[str, Any] = {"headers": {**JSON, **self.headers}}
        if body is not None:
            kw["content"] = json.dumps(body)
        if timeout is not None:
            kw["timeout"] = timeout
        try:
            resp = await self.http.request(method, url, **kw)
        except httpx.HTTPError as exc:
            raise _unreachable(f"cannot reach {url}: {_describe(exc)}") from None
        if resp.status_code >= 400:
            raise _error(url, resp, resp.content)
        try:
            return resp.json()
        except ValueError:
            raise _unreachable(
                f"{method} {url} did not answer JSON", status=resp.status_code, retryable=False
            ) from None

    async def agent(self, name: str) -> dict[str, Any]:
        return await self._json("GET", "/agents/{name}", f"/agents/{name}")

    async def get_run(self, run_id: str) -> dict[str, Any]:
        return await self._json("GET", "/runs/{run_id}", f"/runs/{run_id}")

    async def cancel(self, run_id: str, timeout: float = 5.0) -> dict[str, Any]:
        return await self._json("POST", "/runs/{run_id}/cancel", f"/runs/{run_id}/cancel", {}, timeout=timeout)

    def create_stream(
        self, agent: str, messages: list[dict[str, Any]], session_id: str | None
    ) -> AsyncIterator[dict[str, Any]]:
        body: dict[str, Any] = {"agent_name": agent, "input": messages, "mode": "stream"}
        if session_id:
            body["session_id"] = session_id
        return self._stream("/runs", "/runs", body, agent)

    def resume_stream(
        self, run_id: str, message: dict[str, Any], agent: str | None = None
    ) -> AsyncIterator[dict[str, Any]]:
        body = {"run_id": run_id, "await_resume": {"type": "message", "message": message}, "mode": "stream"}
        return self._stream("/runs/{run_id}", f"/runs/{run_id}", body, agent)

    async def _stream(
        self, route: str, path: str, body: dict[str, Any], agent: str | None
    ) -> AsyncIterator[dict[str, Any]]:
        # The stream's span is not made current: it lives across this generator's yields.
        span = telemetry.start_client("POST", route, self.base + path, agent)
        try:
            async for event in self._stream_traced(path, body, tracing.headers_of(span)):
                yield event
        except RemoteACPError as exc:
            tracing.fail(span, exc.code or type(exc).__name__, exc.detail[:200])
            raise
        finally:
            span.end()

    async def _stream_traced(
        self, path: str, body: dict[str, Any], trace: dict[str, str]
    ) -> AsyncIterator[dict[str, Any]]:
        """The run's ACP events. The first item is ``{"type": "interlace.run_id", "run_id"}`` when
        the response names the run in its ``Run-ID`` header (before any event arrives). A server
        that answers a Run as JSON instead of a stream yields one ``run.<status>`` event."""
        started, url = False, self.base + path
        headers = {**SSE, **self.headers, **trace}
        try:
            async with self.http.stream("POST", url, content=json.dumps(body), headers=headers) as resp:
                started = True
                if resp.status_code >= 400:
                    raise _error(url, resp, await resp.aread())
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
            what = f"the stream from {url} broke" if started else f"cannot reach {url}"
            raise _unreachable(f"{what}: {_describe(exc)}") from None
        except ValueError as exc:
            raise _unreachable(f"{url} sent a malformed event: {exc}", retryable=False) from None
