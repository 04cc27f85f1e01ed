"""The pooled outbound HTTP client of the hot paths (MCP upstreams, remote workers' ``/bus`` link).

One ``aiohttp`` session on the egress policy (``Egress.aiohttp_session``: checked and pinned
addresses, no redirects, the environment's proxy per destination) with a keep-alive pool. aiohttp
rather than httpx: a request costs about a quarter of the CPU (0.2 vs 0.7 ms per call measured on
the benchmark machine), which was most of what the gateway added to a relayed MCP call.

- ``request`` sends one request and reads its whole body; ``stream`` yields the response with
  its body unread (``aiter_bytes`` for an event stream read as it arrives, ``aread`` for the
  rest). A body that is not an event stream is bounded (``MAX_RESPONSE_BYTES``, and
  ``BODY_TIMEOUT_S`` of reading: ``gateway.core.egress.bounded``); an event stream is bounded
  per line by its reader (``gateway.core.sse``) and by its caller's lifetime.
- Timeouts: ``connect_timeout_s`` for a connection (waiting for a free one in the pool
  included), ``timeout_s`` for a whole request unless the call gives its own (None: the caller
  bounds it, e.g. with ``asyncio.timeout``).
- Idle connections are dropped after ``keepalive_s``, before a typical server's keep-alive
  timeout (uvicorn: 5 s), so a request rarely meets a connection the server is closing; one that
  does raises ``Disconnected`` with ``sent`` False when nothing was read of it (safe to send
  again).
- ``sign``: given, each request's headers are extended with what it returns for (method, URL,
  body bytes, headers): the body is serialised here, so what is signed is what is sent.

Errors are ``TransportError`` (``ConnectFailed``, ``Disconnected``, ``TimedOut``; ``StatusError``
from ``raise_for_status``), whatever the library underneath raised; the message is for the log
(callers tell clients ``UNREACHABLE``).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
from multidict import CIMultiDictProxy

from gateway.core.egress import MAX_RESPONSE_BYTES, Egress, EgressRefused, ResponseTooLarge, bounded

Signer = Callable[[str, str, bytes, Mapping[str, str]], Mapping[str, str]]


class TransportError(Exception):
    """No response, or a broken one; the message says what happened (for the log)."""


class ConnectFailed(TransportError):
    """No connection could be made (refused, unresolvable, or refused by the egress policy)."""


class Disconnected(TransportError):
    """The connection closed or broke; ``sent``: the response had started (False: nothing of it
    was read, so a pooled connection the server had just closed; sending again is safe)."""

    def __init__(self, detail: str, *, sent: bool) -> None:
        super().__init__(detail)
        self.sent = sent


class TimedOut(TransportError):
    """A connect, request or body-reading bound of this client passed."""


class StatusError(TransportError):
    """``raise_for_status``: the server answered an HTTP error; ``response`` is its reply (its
    body empty when it was not read)."""

    def __init__(self, response: Reply) -> None:
        super().__init__(f"answered HTTP {response.status_code}")
        self.response = response


def _translate(exc: BaseException, *, started: bool) -> TransportError:
    if isinstance(exc, TransportError):
        return exc
    text = f"{exc.__class__.__name__}: {exc}" if str(exc) else exc.__class__.__name__
    if isinstance(exc, (TimeoutError, aiohttp.ServerTimeoutError)):
        return TimedOut(f"timed out ({text})")
    if isinstance(exc, ResponseTooLarge):
        return TransportError(str(exc))
    if isinstance(exc, (aiohttp.ClientConnectorError, EgressRefused)):
        return ConnectFailed(f"connection failed ({text})")
    if isinstance(exc, (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError, aiohttp.ClientPayloadError)):
        return Disconnected(text, sent=started)
    return TransportError(text)


_ERRORS = (aiohttp.ClientError, TimeoutError, ResponseTooLarge, OSError)


class Response:
    """A response whose body is read on demand (once)."""

    def __init__(self, resp: aiohttp.ClientResponse) -> None:
        self._resp = resp
        self.status_code: int = resp.status
        self.headers: CIMultiDictProxy[str] = resp.headers
        self.content_type = resp.headers.get("Content-Type", "")

    def raise_for_status(self) -> None:
        if self.status_code >= 400:
            raise StatusError(Reply(self.status_code, self.headers, b""))

    async def aiter_bytes(self) -> AsyncIterator[bytes]:
        """The body as it arrives (unbounded in total: an event stream's reader bounds it)."""
        try:
            async for chunk in self._resp.content.iter_any():
                yield chunk
        except _ERRORS as exc:
            raise _translate(exc, started=True) from None

    async def aread(self, max_bytes: int = MAX_RESPONSE_BYTES) -> bytes:
        """The whole body, bounded in size and reading time."""
        if (self._resp.content_length or 0) > max_bytes:
            raise TransportError(f"the response is larger than {max_bytes} bytes ({self._resp.content_length})")
        try:
            return b"".join([chunk async for chunk in bounded(self._resp.content.iter_any(), max_bytes)])
        except _ERRORS as exc:
            raise _translate(exc, started=True) from None


@dataclass
class Reply:
    """A response read whole."""

    status_code: int
    headers: CIMultiDictProxy[str]
    content: bytes

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", errors="replace")

    def json(self) -> Any:
        return json.loads(self.content)

    def raise_for_status(self) -> None:
        if self.status_code >= 400:
            raise StatusError(self)


class PooledClient:
    """One pooled session; ``base_url`` prefixes relative paths, ``headers`` go on every request."""

    def __init__(
        self,
        egress: Egress,
        *,
        base_url: str = "",
        headers: Mapping[str, str] | None = None,
        limit: int = 100,
        keepalive_s: float = 2.0,
        connect_timeout_s: float = 10.0,
        timeout_s: float | None = None,
        sign: Signer | None = None,
    ) -> None:
        self.egress, self.base_url = egress, base_url.rstrip("/")
        self.headers = dict(headers or {})
        self.sign = sign
        self._default = aiohttp.ClientTimeout(total=timeout_s, connect=connect_timeout_s)
        self._connect_timeout_s = connect_timeout_s
        self._limit, self._keepalive_s = limit, keepalive_s
        self._session: aiohttp.ClientSession | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        # Made on first use: aiohttp binds a session to the running event loop.
        if self._session is None or self._session.closed:
            self._session = self.egress.aiohttp_session(
                None, limit=self._limit, keepalive_timeout=self._keepalive_s, timeout=self._default
            )
        return self._session

    def _prepare(
        self, method: str, url: str, json_body: Any, content: bytes | None, headers: Mapping[str, str] | None
    ) -> tuple[str, bytes | None, dict[str, str]]:
        url = url if "://" in url else self.base_url + url
        h = {**self.headers, **(headers or {})}
        if json_body is not None:
            content = json.dumps(json_body, separators=(",", ":")).encode()
            h.setdefault("Content-Type", "application/json")
        if self.sign is not None:
            h.update(self.sign(method, url, content or b"", h))
        return url, content, h

    def _timeout(self, timeout: Any) -> dict[str, aiohttp.ClientTimeout]:
        if timeout is ...:
            return {}  # the session's default (``timeout_s``)
        return {"timeout": aiohttp.ClientTimeout(total=timeout, connect=self._connect_timeout_s)}

    @contextlib.asynccontextmanager
    async def stream(
        self,
        method: str,
        url: str,
        *,
        json: Any = None,
        content: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: Any = ...,
    ) -> AsyncIterator[Response]:
        """The response, its body unread; the connection goes back to the pool (or is closed,
        when its body was not read to the end) on leaving."""
        url, body, h = self._prepare(method, url, json, content, headers)
        try:
            resp = await self.session.request(
                method, url, data=body, headers=h, proxy=self.egress.proxy_for(url), **self._timeout(timeout)
            )
        except _ERRORS as exc:
            raise _translate(exc, started=False) from None
        try:
            yield Response(resp)
        finally:
            resp.release()

    async def request(
        self,
        method: str,
        url: str,
        *,
        json: Any = None,
        content: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: Any = ...,
    ) -> Reply:
        """One request, its body read whole (bounded)."""
        async with self.stream(method, url, json=json, content=content, headers=headers, timeout=timeout) as resp:
            return Reply(resp.status_code, resp.headers, await resp.aread())

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
