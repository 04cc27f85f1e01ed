"""The A2A HTTP+JSON binding at ``/a2a/rest`` and ``/a2a/agents/{name}/rest``.

1.0 paths (``/message:send``, ``/tasks/{id}`` ...) speak 1.0 ProtoJSON and need ``A2A-Version: 1.x``
(a missing header means 0.3, which has no such paths: VersionNotSupportedError, as the SDK does).
0.3 paths live under ``/v1`` and speak the 0.3 proto's JSON. Responses are ``application/json``;
errors are google.rpc.Status bodies with the A2A ErrorInfo (plus ``type`` on the 0.3 face).
Tenant-prefixed paths (``/{tenant}/...``) are not served.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway.core.sse import sse_response
from protocols.a2a import telemetry
from protocols.a2a.errors import A2AError, CallerRefusedError, InvalidParamsError, VersionNotSupportedError
from protocols.a2a.jsonrpc import negotiate, parse_json, refusal_headers
from protocols.a2a.service import A2ACall, A2AService, map_runtime_error
from protocols.a2a.wire import V03_REST, V10, Dialect, integer

CallFor = Callable[[Request, Dialect], A2ACall]
Op = Callable[[A2AService, A2ACall, Request], Awaitable[Any]]


async def _body(request: Request, *, optional: bool = False) -> dict[str, Any]:
    raw = await request.body()
    if not raw.strip():
        if optional:
            return {}
        raise InvalidParamsError("a JSON request body is required")
    body = parse_json(raw, request, InvalidParamsError)
    if not isinstance(body, dict):
        raise InvalidParamsError("request body must be a JSON object")
    return body


def _tid(request: Request) -> str:
    return request.path_params["task_id"]


async def _send(s: A2AService, c: A2ACall, r: Request) -> Any:
    return await s.send(c, await _body(r))


async def _stream(s: A2AService, c: A2ACall, r: Request) -> AsyncIterator[Any]:
    return await s.open_stream(c, await _body(r))


async def _get(s: A2AService, c: A2ACall, r: Request) -> Any:
    return await s.get_task(c, _tid(r), integer(dict(r.query_params), "historyLength", "query"))


async def _list(s: A2AService, c: A2ACall, r: Request) -> Any:
    return await s.list_tasks(c, dict(r.query_params))


async def _cancel(s: A2AService, c: A2ACall, r: Request) -> Any:
    await _body(r, optional=True)
    return await s.cancel(c, _tid(r))


async def _subscribe(s: A2AService, c: A2ACall, r: Request) -> AsyncIterator[Any]:
    if r.method == "POST":
        await _body(r, optional=True)
    return await s.open_subscribe(c, _tid(r))


async def _push_create(s: A2AService, c: A2ACall, r: Request) -> Any:
    cfg = c.dialect.push_create_in(await _body(r), _tid(r))
    if cfg.task_id != _tid(r):
        raise InvalidParamsError("taskId in the body does not match the path")
    return await s.push_create(c, cfg)


async def _push_list(s: A2AService, c: A2ACall, r: Request) -> Any:
    return await s.push_list(c, _tid(r))


async def _push_get(s: A2AService, c: A2ACall, r: Request) -> Any:
    return await s.push_get(c, _tid(r), r.path_params["config_id"])


async def _push_delete(s: A2AService, c: A2ACall, r: Request) -> Any:
    await s.push_delete(c, _tid(r), r.path_params["config_id"])
    return {}


async def _extended_card(s: A2AService, c: A2ACall, r: Request) -> Any:
    return await s.card(c, extended=True, legacy=c.dialect.version == "0.3")


async def _card_v03(s: A2AService, c: A2ACall, r: Request) -> Any:
    try:
        return await s.card(c, extended=s.extended_card_available(c.rt), legacy=True)
    except CallerRefusedError:  # an anonymous caller (--allow-anonymous) gets the public card
        return await s.card(c, legacy=True)


STREAMING: set[Op] = {_stream, _subscribe}

# (path, methods, operation); colon routes come before the plain /tasks/{task_id} route.
_TABLE: list[tuple[str, list[str], Op]] = [
    ("/message:send", ["POST"], _send),
    ("/message:stream", ["POST"], _stream),
    ("/tasks", ["GET"], _list),
    ("/tasks/{task_id}:cancel", ["POST"], _cancel),
    ("/tasks/{task_id}:subscribe", ["GET", "POST"], _subscribe),
    ("/tasks/{task_id}/pushNotificationConfigs", ["POST"], _push_create),
    ("/tasks/{task_id}/pushNotificationConfigs", ["GET"], _push_list),
    ("/tasks/{task_id}/pushNotificationConfigs/{config_id}", ["GET"], _push_get),
    ("/tasks/{task_id}/pushNotificationConfigs/{config_id}", ["DELETE"], _push_delete),
    ("/tasks/{task_id}", ["GET"], _get),
]
_TABLE_V03: list[tuple[str, list[str], Op]] = [(f"/v1{p}", m, op) for p, m, op in _TABLE] + [
    ("/v1/card", ["GET"], _card_v03),
]
_TABLE_V10 = _TABLE + [("/extendedAgentCard", ["GET"], _extended_card)]


# The A2A operation each is (its 1.0 method name: span names, gateway.core.tracing).
_NAMES: dict[Op, str] = {
    _send: "SendMessage",
    _stream: "SendStreamingMessage",
    _get: "GetTask",
    _list: "ListTasks",
    _cancel: "CancelTask",
    _subscribe: "SubscribeToTask",
    _push_create: "CreateTaskPushNotificationConfig",
    _push_get: "GetTaskPushNotificationConfig",
    _push_list: "ListTaskPushNotificationConfigs",
    _push_delete: "DeleteTaskPushNotificationConfig",
    _extended_card: "GetExtendedAgentCard",
    _card_v03: "GetAgentCard",
}


def _endpoint(service: A2AService, op: Op, legacy_path: bool, call_for: CallFor):
    async def endpoint(request: Request) -> Response:
        version = "0.3" if legacy_path else "1.0"
        try:
            negotiated = negotiate(request)
            if not legacy_path and negotiated != "1.0":
                raise VersionNotSupportedError(
                    "A2A version '0.3' (a missing or empty A2A-Version header) is served under /v1; "
                    "send A2A-Version: 1.0"
                )
            call = call_for(request, V03_REST if legacy_path else V10)
            named = {"id": request.path_params["task_id"]} if "task_id" in request.path_params else None
            with telemetry.server_span(_NAMES[op], version, named, agent=request.path_params.get("agent")) as span:
                if op not in STREAMING:
                    result = await op(service, call, request)
                    telemetry.answered(span, result)
                    return JSONResponse(result)
                release = call.rt.open_stream()  # before anything the stream is for happens
                try:
                    result = await op(service, call, request)
                except BaseException:
                    release()
                    raise
            return sse_response(_frames(result, version), max_seconds=call.rt.config.sse_max_s, release=release)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            err = map_runtime_error(exc)
            return JSONResponse(err.rest(version), status_code=err.http, headers=refusal_headers(err))

    return endpoint


async def _frames(items: AsyncIterator[Any], version: str) -> AsyncIterator[tuple[None, str | None, Any]]:
    try:
        async for item in items:
            yield None, None, item
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        err: A2AError = map_runtime_error(exc)
        yield None, "error", err.rest(version)


def routes(service: A2AService, prefix: str, call_for: CallFor, name: str) -> list[Route]:
    out = []
    for legacy, table in ((False, _TABLE_V10), (True, _TABLE_V03)):
        for path, methods, op in table:
            out.append(
                Route(
                    prefix + path,
                    _endpoint(service, op, legacy, call_for),
                    methods=methods,
                    name=f"{name}{path}:{methods[0]}",
                )
            )
    return out
