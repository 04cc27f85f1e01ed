"""The internal HTTP API on the canonical model: submit, get, list, follow and cancel tasks.

POST /route                 dry run of capability routing: {text?, skill?, tags?, ...} -> ranked candidates
POST /tasks                 {agent | query, message, context_id?, metadata?}   ?wait=true[&timeout=S]
                            or {task_id, message} to continue a task that waits for input
GET  /tasks                 ?context_id=&state=&limit=&cursor= (indexed by owner, context and state)
GET  /tasks/{id}
GET  /tasks/{id}/events     SSE of status/artifact events; resumes after Last-Event-ID
POST /tasks/{id}:cancel

Every route acts for the authenticated caller (``Runtime.acting_for``): a task belongs to whoever
submitted it, and another caller's task is a 404 like one that does not exist. A caller past one
of its quotas (``gateway.core.quotas``) gets 429 ``rate_limited`` with ``Retry-After``.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.core.http import HttpError, json_response, read_model
from gateway.core.principal import principal_of
from gateway.core.runtime import ActingFor
from gateway.core.sse import sse_response
from registry.index import CapabilityQuery
from schemas import Message, TaskState


class SubmitRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    agent: str | None = Field(default=None, min_length=1, max_length=256)
    query: CapabilityQuery | None = None
    task_id: str | None = Field(default=None, max_length=128)
    message: Message
    context_id: str | None = Field(default=None, max_length=128)
    metadata: dict[str, Any] | None = None


def _runtime(request: Request) -> ActingFor:
    return request.app.state.runtime.acting_for(principal_of(request))


def _flag(request: Request, name: str) -> bool:
    return request.query_params.get(name, "").lower() in ("1", "true", "yes")


def _number(request: Request, name: str, default: float, low: float, high: float) -> float:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise HttpError(400, "invalid_request", f"query parameter {name!r} must be a number") from None
    if not low <= value <= high:
        raise HttpError(400, "invalid_request", f"query parameter {name!r} must be within [{low}, {high}]")
    return value


async def submit(request: Request) -> Response:
    rt = _runtime(request)
    body: SubmitRequest = await read_model(request, SubmitRequest)
    if body.message.role != "user":
        raise HttpError(400, "invalid_request", "a submitted message has role 'user'")
    wait = _flag(request, "wait")
    timeout = _number(request, "timeout", rt.config.wait_timeout_s, 0, rt.config.max_wait_timeout_s)
    if sum(x is not None for x in (body.task_id, body.agent, body.query)) != 1:
        raise HttpError(
            400,
            "invalid_request",
            "give exactly one of 'agent' (name or DID), 'query' (capabilities) or 'task_id' (to continue)",
        )
    if body.task_id:
        task, _ = await rt.continue_task(body.task_id, body.message)
    else:
        task = await rt.submit(
            body.message, agent=body.agent, query=body.query, context_id=body.context_id, metadata=body.metadata
        )
    if wait:
        task = await rt.wait(task.id, timeout)
    done = task.state.terminal or task.state.interrupted
    return json_response(task, 200 if done else 202, headers={"Location": f"/tasks/{task.id}"})


async def get_task(request: Request) -> Response:
    return json_response(await _runtime(request).get(request.path_params["task_id"]))


def _state(request: Request) -> TaskState | None:
    raw = request.query_params.get("state")
    if not raw:
        return None
    try:
        return TaskState(raw)
    except ValueError:
        states = ", ".join(s.value for s in TaskState)
        raise HttpError(400, "invalid_request", f"query parameter 'state' must be one of {states}") from None


def _cursor(request: Request) -> str | None:
    raw = request.query_params.get("cursor")
    if raw and not (raw.isascii() and raw.isdigit() and len(raw) <= 9):
        raise HttpError(400, "invalid_request", "query parameter 'cursor' is not one this API gave")
    return raw or None


async def list_tasks(request: Request) -> Response:
    limit = int(_number(request, "limit", 50, 1, 500))
    tasks, cursor = await _runtime(request).list_tasks(
        request.query_params.get("context_id"), limit, _cursor(request), state=_state(request)
    )
    return json_response(
        {"tasks": [t.model_dump(mode="json", exclude_none=True) for t in tasks], "next_cursor": cursor}
    )


async def task_events(request: Request) -> Response:
    rt = _runtime(request)
    task = await rt.get(request.path_params["task_id"])
    after = request.headers.get("last-event-id") or request.query_params.get("after")

    async def events():
        async for stored in rt.follow(task.id, after):
            yield stored.event_id, stored.event.kind, stored.event.model_dump(mode="json", exclude_none=True)

    return sse_response(events(), max_seconds=rt.config.sse_max_s, release=rt.open_stream())


async def route(request: Request) -> Response:
    """Dry run of capability routing: the ranked candidates and why, or the closest near misses."""
    query: CapabilityQuery = await read_model(request, CapabilityQuery)
    limit = int(_number(request, "limit", 5, 1, 50))
    return json_response(_runtime(request).explain_route(query, limit))


async def cancel(request: Request) -> Response:
    return json_response(await _runtime(request).cancel(request.path_params["task_id"]))


routes = [
    Route("/route", route, methods=["POST"]),
    Route("/tasks", submit, methods=["POST"]),
    Route("/tasks", list_tasks, methods=["GET"]),
    Route("/tasks/{task_id}:cancel", cancel, methods=["POST"]),
    Route("/tasks/{task_id}/events", task_events, methods=["GET"]),
    Route("/tasks/{task_id}", get_task, methods=["GET"]),
]
