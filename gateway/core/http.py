"""HTTP plumbing shared by every route: JSON errors, body parsing, body limits, routing, base URLs."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable
from typing import Any

from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Match, Route, Router, get_route_path
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.types import Message as AsgiMessage

from gateway.core import strict_json


class HttpError(Exception):
    """An error with its HTTP status and a stable machine-readable code."""

    def __init__(self, status: int, code: str, message: str, *, retry_after: int | None = None, **details: Any) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.details = status, code, message, details
        self.headers = {"Retry-After": str(retry_after)} if retry_after is not None else None


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None, **details: Any
) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message, **details}}, status_code=status, headers=headers)


async def read_json(request: Request) -> Any:
    body = await request.body()
    try:
        return strict_json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise HttpError(400, "invalid_json", f"request body is not valid JSON: {exc}") from None


def validation_errors(exc: ValidationError) -> list[dict[str, Any]]:
    """Pydantic errors without the echoed input (it may be large or secret)."""
    return [{"loc": list(e["loc"]), "msg": e["msg"]} for e in exc.errors(include_url=False, include_input=False)]


async def read_model(request: Request, model: type[BaseModel]) -> Any:
    data = await read_json(request)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise HttpError(
            400, "invalid_request", "request body does not match the schema", errors=validation_errors(exc)
        ) from None


class BodyTooLarge(Exception):
    """A request body over the limit."""


async def buffered_body(scope: Scope, receive: Receive, max_bytes: int) -> tuple[bytes, Receive] | None:
    """The whole request body and a ``receive`` that replays it to the app; None when the client
    disconnected. Raises BodyTooLarge past ``max_bytes`` (declared or read)."""
    declared = dict(scope["headers"]).get(b"content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise BodyTooLarge()
    chunks, size = [], 0
    while True:
        msg = await receive()
        if msg["type"] == "http.disconnect":
            return None
        chunk = msg.get("body", b"")
        size += len(chunk)
        if size > max_bytes:
            raise BodyTooLarge()
        chunks.append(chunk)
        if not msg.get("more_body"):
            break
    body, replayed = b"".join(chunks), False

    async def replay() -> AsgiMessage:
        nonlocal replayed
        if not replayed:
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return body, replay


def too_large(max_bytes: int) -> Response:
    return error_response(413, "payload_too_large", f"request body exceeds {max_bytes} bytes")


class BodyLimit:
    """Answer 413 to a request body over ``max_bytes`` before any route sees it.

    The body is read here (routes read whole JSON bodies anyway) and replayed to the app, so a
    body without Content-Length, or one that lies about it, is bounded too.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            return await self.app(scope, receive, send)
        try:
            got = await buffered_body(scope, receive, self.max_bytes)
        except BodyTooLarge:
            return await too_large(self.max_bytes)(scope, receive, send)
        if got is not None:
            await self.app(scope, got[1], send)


class BodyBudget:
    """Bytes of request bodies held in memory at once, across requests.

    The first ``free_each`` bytes of each request are its own, so a small request is never
    refused; what a request buffers past them is drawn from ``total``, until it ends.
    """

    def __init__(self, total: int, free_each: int = 64 * 1024) -> None:
        self.total, self.free_each, self.used = total, free_each, 0


class ServerBusy(Exception):
    """A request body would pass the budget of bodies buffered at once."""


class BodyTimeout(Exception):
    """A request body did not arrive within its deadline."""


class BodyGuard:
    """Bound how every request body is read, whoever reads it (``BodyLimit``, or the caller
    authentication reading a signed request's body before it): the body must arrive within
    ``timeout_s`` of the request reaching the app (408), and the bytes read count against the
    ``budget`` until the request ends (503 past it). A client that sends most of a body and then
    stalls (P15 of the security review: 100 connections x 4 MiB - 1) so holds at most the budget,
    and only for the deadline. Only the reading of the body is timed: a response may stream for
    as long as it likes.
    """

    def __init__(self, app: ASGIApp, timeout_s: float | None, budget: BodyBudget | None) -> None:
        self.app, self.timeout_s, self.budget = app, timeout_s, budget

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        loop = asyncio.get_running_loop()
        deadline = None if self.timeout_s is None else loop.time() + self.timeout_s
        budget, size, drawn, complete, started = self.budget, 0, 0, False, False

        async def guarded() -> AsgiMessage:
            nonlocal size, drawn, complete
            if complete:  # the body is read: what follows is the disconnect, whenever it comes
                return await receive()
            try:
                async with asyncio.timeout_at(deadline):
                    msg = await receive()
            except TimeoutError:
                raise BodyTimeout() from None
            complete = msg["type"] != "http.request" or not msg.get("more_body")
            size += len(msg.get("body", b""))
            if budget is not None:
                need = max(0, size - budget.free_each) - drawn
                if need and budget.used + need > budget.total:
                    raise ServerBusy()
                budget.used += need
                drawn += need
            return msg

        async def watched(msg: AsgiMessage) -> None:
            nonlocal started
            started = started or msg["type"] == "http.response.start"
            await send(msg)

        try:
            await self.app(scope, guarded, watched)
        except (BodyTimeout, ServerBusy) as exc:
            if started:
                raise
            await _refusal(exc, self.timeout_s)(scope, receive, send)
        finally:
            if budget is not None:
                budget.used -= drawn


def _refusal(exc: Exception, timeout_s: float | None) -> Response:
    """Either refusal closes the connection: the client stalled, or the gateway is short of memory
    for bodies and will not spend time reading the rest of this one (413, a client's mistake,
    is answered on an open connection: gateway/serving.py drops the rest of the body)."""
    close = {"Connection": "close"}
    if isinstance(exc, BodyTimeout):
        message = f"the request body did not arrive within {timeout_s:g} s"
        return error_response(408, "request_timeout", message, close)
    busy = "too many request bodies are being received"
    return error_response(503, "server_busy", busy, {**close, "Retry-After": "1"})


# Content types a browser sends cross-site without a CORS preflight (Fetch "CORS-safelisted").
_SIMPLE_TYPES = ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data")


class CrossSiteGuard:
    """403 for a browser's cross-site request that needs no CORS preflight (request forgery).

    A page on another origin can make a browser POST ``text/plain``, a form or multipart to a
    gateway the browser can reach (a loopback one included) with no preflight; any other
    request from a foreign origin is preflighted, and the gateway answers no CORS. So a request
    is refused when it changes state, carries an ``Origin`` whose host is not the request's
    ``Host``, and has no ``Content-Type`` or a CORS-safelisted one. Clients that are not browsers
    send no ``Origin`` (the acp-sdk client sends no ``Content-Type`` either) and pass.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] not in ("GET", "HEAD", "OPTIONS"):
            headers = dict(scope["headers"])
            origin = headers.get(b"origin")
            if origin is not None and _foreign(origin, headers.get(b"host", b"")):
                ctype = headers.get(b"content-type", b"").split(b";")[0].strip().lower().decode("latin-1")
                if not ctype or ctype in _SIMPLE_TYPES:
                    resp = error_response(403, "cross_site_request", "cross-site request refused")
                    return await resp(scope, receive, send)
        await self.app(scope, receive, send)


def _foreign(origin: bytes, host: bytes) -> bool:
    """Whether ``origin`` (scheme://host[:port], or "null") names another host than ``host``."""
    netloc = origin.decode("latin-1").partition("://")[2]
    return not netloc or netloc.lower() != host.decode("latin-1").lower()


def configured_base_url(request: Request, adapter_url: str | None = None) -> str | None:
    """The public base URL an operator configured: the adapter's own, else ``--public-url``."""
    return adapter_url or getattr(request.app.state.runtime.config, "public_url", None)


def public_base_url(request: Request, adapter_url: str | None = None) -> str:
    """The base URL clients reach the gateway at (configured, else the request's); no trailing slash."""
    return (configured_base_url(request, adapter_url) or str(request.base_url)).rstrip("/")


def json_response(model: BaseModel | dict, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    data = model.model_dump(mode="json", exclude_none=True) if isinstance(model, BaseModel) else model
    return JSONResponse(data, status_code=status, headers=headers)


class IndexedRouter(Router):
    """A Router that looks for a request's route only among those that share its first path
    segment (or have a parameter there), keeping their order.

    Starlette tries every route in turn: with the ~90 routes of a gateway, a request for one of the
    last ones (/tasks, /bus/...) spent ~45 µs in regex matching. Only the search for a full match
    is indexed; partial matches (405), slash redirects and 404s fall back to ``Router.app``, which
    also finds routes added after the index was built (it is rebuilt when the route count changes,
    and ``replace_routes`` drops it).
    """

    _index: dict[str, list[BaseRoute]] | None = None
    _indexed_count = -1
    _anywhere: list[BaseRoute] = []

    def invalidate(self) -> None:
        self._index = None

    @staticmethod
    def _first(path: str) -> str:
        return path.split("/", 2)[1] if path.startswith("/") else ""

    def _segment(self, route: BaseRoute) -> str | None:
        """The literal first segment of a route's path; None when any request path may match."""
        first = self._first(route.path) if isinstance(route, Route) else "{"
        return None if "{" in first else first

    def _candidates(self, path: str) -> list[BaseRoute]:
        if self._index is None or self._indexed_count != len(self.routes):
            keys = [self._segment(r) for r in self.routes]
            self._index = {
                k: [r for r, rk in zip(self.routes, keys) if rk in (k, None)] for k in set(keys) if k is not None
            }
            self._anywhere = [r for r, k in zip(self.routes, keys) if k is None]
            self._indexed_count = len(self.routes)
        return self._index.get(self._first(path), self._anywhere)

    async def app(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            for route in self._candidates(get_route_path(scope)):
                match, child_scope = route.matches(scope)
                if match is Match.FULL:
                    scope.setdefault("router", self)
                    scope["route"] = route
                    scope.update(child_scope)
                    await route.handle(scope, receive, send)
                    return
        await super().app(scope, receive, send)


def replace_routes(
    app: Any, prefix: str, routes: list, on_shutdown: Callable[[], Awaitable[None]] | None = None
) -> None:
    """Swap the routes an adapter mounted (their names start with ``prefix:``) for ``routes``,
    and run ``on_shutdown`` when the app stops. The adapters' ``mount_*`` use it to apply options."""
    kept = [r for r in app.router.routes if not str(getattr(r, "name", "") or "").startswith(prefix + ":")]
    app.router.routes[:] = list(routes) + kept
    if isinstance(app.router, IndexedRouter):
        app.router.invalidate()
    if on_shutdown is None:
        return
    inner = app.router.lifespan_context

    @contextlib.asynccontextmanager
    async def lifespan(a):
        async with inner(a) as state:
            try:
                yield state
            finally:
                await on_shutdown()

    app.router.lifespan_context = lifespan
