"""``/bus``: the bus for workers that reach it through a gateway (``interlace worker --gateway``).

Each route is one method of ``WorkerLink`` served by a DirectLink on this gateway, so an HTTP
worker gets exactly the delivery semantics of an in-process one. Only loopback clients may use
it unless a worker token is configured, in which case every caller must present it.
"""

from __future__ import annotations

import hmac
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from agents.links import DirectLink
from gateway.core.backends import Delivery
from gateway.core.backends.base import EVENT_JSON
from gateway.core.http import HttpError, json_response, read_model

LOOPBACK = {"127.0.0.1", "::1", "localhost"}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DeliveryBody(_Strict):
    agent: str
    entry_id: str
    task_id: str
    attempt: int


class ReceiveBody(_Strict):
    agent: str = Field(min_length=1, max_length=256)
    consumer: str = Field(min_length=1, max_length=256)
    block_ms: int = Field(default=1000, ge=0, le=30_000)
    count: int = Field(default=1, ge=1, le=256)


class SettleBody(_Strict):
    delivery: DeliveryBody
    consumer: str
    ttl_ms: int = Field(default=30_000, ge=1000, le=600_000)


class EmitBody(_Strict):
    task_id: str
    event: dict[str, Any]


def _link(request: Request) -> DirectLink:
    rt = request.app.state.runtime
    token = rt.config.worker_token
    if token:
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
            raise HttpError(401, "unauthorized", "a valid worker token is required")
    elif (request.client.host if request.client else "") not in LOOPBACK:
        raise HttpError(403, "forbidden", "the worker API serves loopback clients unless a worker token is configured")
    return DirectLink(rt.backend, rt.registry)


def _delivery(body: DeliveryBody) -> Delivery:
    return Delivery(body.agent, body.entry_id, body.task_id, body.attempt)


async def receive(request: Request) -> Response:
    link = _link(request)
    body = await read_model(request, ReceiveBody)
    got = await link.receive(body.agent, body.consumer, body.block_ms, body.count)
    return json_response({"deliveries": [d.__dict__ for d in got]})


async def begin(request: Request) -> Response:
    link = _link(request)
    body = await read_model(request, SettleBody)
    task = await link.begin(_delivery(body.delivery), body.consumer, body.ttl_ms)
    return json_response({"task": task.model_dump(mode="json", exclude_none=True) if task else None})


async def heartbeat(request: Request) -> Response:
    link = _link(request)
    body = await read_model(request, SettleBody)
    return json_response({"owned": await link.heartbeat(_delivery(body.delivery), body.consumer, body.ttl_ms)})


async def emit(request: Request) -> Response:
    link = _link(request)
    body = await read_model(request, EmitBody)
    event = EVENT_JSON.validate_python(body.event)
    return json_response({"event_id": await link.emit(body.task_id, event)})


async def finish(request: Request) -> Response:
    link = _link(request)
    body = await read_model(request, SettleBody)
    await link.finish(_delivery(body.delivery), body.consumer)
    return json_response({})


async def release(request: Request) -> Response:
    link = _link(request)
    body = await read_model(request, SettleBody)
    await link.release(_delivery(body.delivery), body.consumer)
    return json_response({})


routes = [
    Route("/bus/receive", receive, methods=["POST"]),
    Route("/bus/begin", begin, methods=["POST"]),
    Route("/bus/heartbeat", heartbeat, methods=["POST"]),
    Route("/bus/emit", emit, methods=["POST"]),
    Route("/bus/finish", finish, methods=["POST"]),
    Route("/bus/release", release, methods=["POST"]),
]
