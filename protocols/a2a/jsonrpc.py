"""The A2A JSON-RPC binding (1.0 method names and the 0.3 ones) at ``/a2a`` and ``/a2a/agents/{name}``.

A small hand-written dispatcher instead of jsonrpcserver: A2A needs things jsonrpcserver cannot
express -- streaming methods answer with an SSE stream of JSON-RPC responses, the method table
and the error shape depend on the ``A2A-Version`` header, errors carry A2A ``data`` arrays with
codes outside jsonrpcserver's set, and handlers need the HTTP request (headers, path scope).
The method table is explicit (``METHODS``); nothing is registered globally.

Version: ``A2A-Version`` header (or ``?A2A-Version=``); missing or empty means 0.3 (spec §3.6).
1.x requests use the 1.0 table; 0.3 requests the 0.3 table; a 1.0 method sent as 0.3 gets
VersionNotSupportedError (-32009), as the reference SDK answers; other versions get -32009.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gateway.core import strict_json
from gateway.core.sse import sse_response
from protocols.a2a import telemetry
from protocols.a2a.errors import (
    A2AError,
    CallerRefusedError,
    ContentTypeNotSupportedError,
    InvalidParamsError,
    InvalidRequestError,
    JSONParseError,
    MethodNotFoundError,
    RateLimitedError,
    VersionNotSupportedError,
)
from protocols.a2a.service import A2ACall, A2AService, map_runtime_error
from protocols.a2a.wire import V03, V10, Dialect, integer

Handler = Callable[[A2AService, A2ACall, dict], Awaitable[Any]]


def _params_id(params: dict) -> Any:
    return params.get("id")


async def _send(s: A2AService, c: A2ACall, p: dict) -> Any:
    return await s.send(c, p)


async def _stream(s: A2AService, c: A2ACall, p: dict) -> AsyncIterator[Any]:
    return await s.open_stream(c, p)


async def _get(s: A2AService, c: A2ACall, p: dict) -> Any:
    return await s.get_task(c, _params_id(p), integer(p, "historyLength", "params"))


async def _list(s: A2AService, c: A2ACall, p: dict) -> Any:
    return await s.list_tasks(c, p)


async def _cancel(s: A2AService, c: A2ACall, p: dict) -> Any:
    return await s.cancel(c, _params_id(p))


async def _subscribe(s: A2AService, c: A2ACall, p: dict) -> AsyncIterator[Any]:
    return await s.open_subscribe(c, _params_id(p))


async def _push_create(s: A2AService, c: A2ACall, p: dict) -> Any:
    return await s.push_create(c, c.dialect.push_create_in(p))


async def _push_get(s: A2AService, c: A2ACall, p: dict) -> Any:
    return await s.push_get(c, *c.dialect.push_get_params(p))


async def _push_list(s: A2AService, c: A2ACall, p: dict) -> Any:
    return await s.push_list(c, c.dialect.push_list_params(p))


async def _push_delete(s: A2AService, c: A2ACall, p: dict) -> Any:
    await s.push_delete(c, *c.dialect.push_get_params(p))
    return {} if c.dialect.version == "1.0" else None


async def _extended_card(s: A2AService, c: A2ACall, p: dict) -> Any:
    card = await s.card(c, extended=True, legacy=c.dialect.version == "0.3")
    return card


STREAMING = {"SendStreamingMessage", "SubscribeToTask", "message/stream", "tasks/resubscribe"}

METHODS: dict[str, dict[str, Handler]] = {
    "1.0": {
        "SendMessage": _send,
        "SendStreamingMessage": _stream,
        "GetTask": _get,
        "ListTasks": _list,
        "CancelTask": _cancel,
        "SubscribeToTask": _subscribe,
        "CreateTaskPushNotificationConfig": _push_create,
        "GetTaskPushNotificationConfig": _push_get,
        "ListTaskPushNotificationConfigs": _push_list,
        "DeleteTaskPushNotificationConfig": _push_delete,
        "GetExtendedAgentCard": _extended_card,
    },
    "0.3": {
        "message/send": _send,
        "message/stream": _stream,
        "tasks/get": _get,
        "tasks/cancel": _cancel,
        "tasks/resubscribe": _subscribe,
        "tasks/pushNotificationConfig/set": _push_create,
        "tasks/pushNotificationConfig/get": _push_get,
        "tasks/pushNotificationConfig/list": _push_list,
        "tasks/pushNotificationConfig/delete": _push_delete,
        "agent/getAuthenticatedExtendedCard": _extended_card,
    },
}
DIALECTS: dict[str, Dialect] = {"1.0": V10, "0.3": V03}
OPERATIONS = {handler: name for name, handler in METHODS["1.0"].items()}  # the 1.0 name of each (traces)
JSON_TYPES = ("application/json", "application/a2a+json", "application/json-rpc", "application/jsonrequest")


def parse_json(raw: bytes, request: Request, invalid: type[A2AError]) -> Any:
    """A JSON request body; ContentTypeNotSupportedError for a declared non-JSON type."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype and ctype not in JSON_TYPES:
        raise ContentTypeNotSupportedError(f"Content-Type {ctype!r} is not supported; send application/json")
    try:
        return strict_json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise invalid("request body is not valid JSON") from None


def negotiate(request: Request) -> str:
    """The request's protocol version, "1.0" or "0.3"; VersionNotSupportedError otherwise."""
    raw = request.headers.get("a2a-version")
    if raw is None:
        raw = request.query_params.get("A2A-Version", "")
    raw = raw.strip()
    if not raw:
        return "0.3"
    parts = raw.split(".")
    try:
        major, minor = int(parts[0]), int(parts[1]) if len(parts) > 1 else 0
    except ValueError:
        raise VersionNotSupportedError(
            f"A2A version {raw!r} is not supported; this server speaks 1.0 and 0.3"
        ) from None
    if major == 1:
        return "1.0"
    if (major, minor) == (0, 3):
        return "0.3"
    raise VersionNotSupportedError(f"A2A version {raw!r} is not supported; this server speaks 1.0 and 0.3")


def _error(rid: Any, err: A2AError, version: str) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": rid, "error": err.jsonrpc(version)}


def _guess_version(request: Request) -> str:
    try:
        return negotiate(request)
    except VersionNotSupportedError:
        return "1.0"


async def handle(service: A2AService, request: Request, call_for: Callable[[Dialect], A2ACall]) -> Response:
    rid: Any = None
    version = _guess_version(request)
    try:
        envelope = parse_json(await request.body(), request, JSONParseError)
        if not isinstance(envelope, dict):
            raise InvalidRequestError("a JSON-RPC request is an object (batches are not supported)")
        rid = envelope.get("id")
        if not isinstance(rid, (str, int, type(None))) or isinstance(rid, bool):
            rid = None
            raise InvalidRequestError("id must be a string, a number or null")
        method = envelope.get("method")
        if envelope.get("jsonrpc") != "2.0" or not isinstance(method, str):
            raise InvalidRequestError("a JSON-RPC 2.0 request has jsonrpc '2.0' and a string method")
        version = negotiate(request)
        handler = METHODS[version].get(method)
        if handler is None:
            if version == "0.3" and method in METHODS["1.0"]:
                raise VersionNotSupportedError(
                    f"A2A version '0.3' (a missing or empty A2A-Version header) does not have {method}; "
                    "send A2A-Version: 1.0"
                )
            hint = " (an A2A 0.3 method; send A2A-Version: 0.3)" if method in METHODS["0.3"] else ""
            raise MethodNotFoundError(f"Method {method!r} not found{hint}")
        params = envelope.get("params", {})
        if params is None:
            params = {}
        if not isinstance(params, dict):
            raise InvalidParamsError("params must be an object")
        call = call_for(DIALECTS[version])
        name, agent = OPERATIONS.get(handler, method), request.path_params.get("agent")
        with telemetry.server_span(name, version, params, request_id=rid, agent=agent) as span:
            if method not in STREAMING:
                result = await handler(service, call, params)
                telemetry.answered(span, result)
                return JSONResponse({"jsonrpc": "2.0", "id": rid, "result": result})
            release = call.rt.open_stream()  # before anything the stream is for happens
            try:
                result = await handler(service, call, params)
            except BaseException:
                release()
                raise
        frames = _frames(rid, result, version)
        return sse_response(frames, max_seconds=call.rt.config.sse_max_s, keepalive_s=15.0, release=release)
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        err = map_runtime_error(exc)
        status = err.http if isinstance(err, REFUSALS) else 200  # a refusal is HTTP's (errors.py)
        return JSONResponse(_error(rid, err, version), status_code=status, headers=refusal_headers(err))


REFUSALS = (CallerRefusedError, RateLimitedError)  # the failures A2A leaves to the transport


def refusal_headers(err: A2AError) -> dict[str, str] | None:
    """The RFC 6750 challenge that goes with a 401, the ``Retry-After`` of a 429 (both bindings)."""
    if isinstance(err, CallerRefusedError) and err.http == 401:
        return {"WWW-Authenticate": "Bearer"}
    if isinstance(err, RateLimitedError):
        return {"Retry-After": str(err.retry_after)}
    return None


async def _frames(rid: Any, items: AsyncIterator[Any], version: str) -> AsyncIterator[tuple[None, None, Any]]:
    try:
        async for item in items:
            yield None, None, {"jsonrpc": "2.0", "id": rid, "result": item}
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        yield None, None, _error(rid, map_runtime_error(exc), version)
