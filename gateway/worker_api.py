"""``/bus``: the bus for workers that reach it through a gateway (``interlace worker --gateway``).

Each route is one method of ``WorkerLink`` served by a DirectLink on this gateway, so an HTTP
worker gets exactly the delivery semantics of an in-process one:

  POST /bus/receive | /bus/begin | /bus/heartbeat | /bus/emit | /bus/finish | /bus/release
  GET  /bus/events/{task_id}     SSE of a task's events (the runner's cancel watch)

Who may call (the first that applies decides):

1. a request signed with an agent's ``did:key`` (RFC 9421, ``gateway.core.httpsig``; ``HttpLink``
   signs with the worker's identity): the DID must have a live record in the registry, and the
   worker may use only the streams of its agent (``registry.service.stream_of``: its name's, which
   the name's owner and the replicas it names share; a stranger's record under the name is not
   live, ``registry.names``, so its DID gets a 401 here): receive from it, and begin,
   heartbeat, finish, release, emit to and follow only deliveries and tasks routed to it. A bad,
   expired or replayed signature, or a DID without a live record, is a 401; another agent's
   stream or task a 403;
2. with a worker token configured (``--worker-token``), an unsigned caller must present it
   (``Authorization: Bearer``), else 401;
3. otherwise loopback clients only (403 for others), and none at all when callers are
   authenticated (``--auth-issuer``/``--api-keys``): any local user, or a reverse proxy on the
   same host, is a loopback client (security review P12), so there an unsigned call without the
   token is a 401.

Token and loopback callers may use every stream, as before workers signed their calls.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from agents.links import DirectLink
from gateway.core.auth import AuthMode
from gateway.core.backends import Delivery
from gateway.core.backends.base import EVENT_JSON
from gateway.core.http import HttpError, json_response, read_model
from gateway.core.httpsig import DidKeyRequests, SignatureError, is_signed, request_urls
from gateway.core.runtime import Runtime
from gateway.core.sse import sse_response
from registry.service import stream_of

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


@dataclass
class _Caller:
    """A worker let in, and the streams it may use (None: every stream)."""

    link: DirectLink
    streams: frozenset[str] | None

    def check_stream(self, stream: str) -> None:
        if self.streams is not None and stream not in self.streams:
            raise HttpError(403, "forbidden", f"stream {stream[:256]!r} is not this worker's agent's")

    async def check_task(self, task_id: str) -> None:
        """A task this worker may touch: routed to its stream (an unknown one: nothing to touch)."""
        if self.streams is None:
            return
        task = await self.link.backend.tasks.get(task_id)
        if task is not None and (task.route is None or task.route.agent not in self.streams):
            raise HttpError(403, "forbidden", f"task {task_id[:64]} is not routed to this worker's agent")


async def _caller(request: Request) -> _Caller:
    """Who is calling, by the rules of the module docstring."""
    rt: Runtime = request.app.state.runtime
    link = DirectLink(rt.backend, rt.registry)
    if is_signed(request.headers):
        return _Caller(link, await _signed_streams(request, rt))
    token = rt.config.worker_token
    if token:
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
            raise HttpError(
                401, "unauthorized", "a valid worker token or a request signed with the agent's key is required"
            )
    elif rt.config.effective_auth() is not AuthMode.LOCAL:
        raise HttpError(
            401, "unauthorized", "sign /bus requests with the agent's key (or configure and present a worker token)"
        )
    elif (request.client.host if request.client else "") not in LOOPBACK:
        raise HttpError(403, "forbidden", "the worker API serves loopback clients unless a worker token is configured")
    return _Caller(link, None)


async def _signed_streams(request: Request, rt: Runtime) -> frozenset[str]:
    """The streams of the agent whose key signed the request; 401 when it may not be believed."""
    verifier: DidKeyRequests = request.app.state.signed_requests
    urls = request_urls(str(request.url), rt.config.public_url)
    try:
        did = await verifier.verify(request.method, urls, request.headers, await request.body())
    except SignatureError as exc:
        raise HttpError(401, "unauthorized", f"the request signature is refused: {exc}") from None
    record = rt.registry.get(did)
    if record is None:
        raise HttpError(401, "unauthorized", f"{did} has no live record in the registry: register the agent first")
    return frozenset({stream_of(record)})


def _delivery(body: DeliveryBody) -> Delivery:
    return Delivery(body.agent, body.entry_id, body.task_id, body.attempt)


async def _settling(request: Request) -> tuple[_Caller, SettleBody]:
    caller = await _caller(request)
    body = await read_model(request, SettleBody)
    caller.check_stream(body.delivery.agent)
    await caller.check_task(body.delivery.task_id)
    return caller, body


async def receive(request: Request) -> Response:
    caller = await _caller(request)
    body = await read_model(request, ReceiveBody)
    caller.check_stream(body.agent)
    got = await caller.link.receive(body.agent, body.consumer, body.block_ms, body.count)
    return json_response({"deliveries": [d.__dict__ for d in got]})


async def begin(request: Request) -> Response:
    caller, body = await _settling(request)
    task = await caller.link.begin(_delivery(body.delivery), body.consumer, body.ttl_ms)
    return json_response({"task": task.model_dump(mode="json", exclude_none=True) if task else None})


async def heartbeat(request: Request) -> Response:
    caller, body = await _settling(request)
    return json_response({"owned": await caller.link.heartbeat(_delivery(body.delivery), body.consumer, body.ttl_ms)})


async def emit(request: Request) -> Response:
    caller = await _caller(request)
    body = await read_model(request, EmitBody)
    await caller.check_task(body.task_id)
    event = EVENT_JSON.validate_python(body.event)
    return json_response({"event_id": await caller.link.emit(body.task_id, event)})


async def finish(request: Request) -> Response:
    caller, body = await _settling(request)
    await caller.link.finish(_delivery(body.delivery), body.consumer)
    return json_response({})


async def release(request: Request) -> Response:
    caller, body = await _settling(request)
    await caller.link.release(_delivery(body.delivery), body.consumer)
    return json_response({})


async def events(request: Request) -> Response:
    caller = await _caller(request)
    rt: Runtime = request.app.state.runtime
    task = await rt.get(request.path_params["task_id"])  # 404 for an unknown task
    await caller.check_task(task.id)
    after = request.headers.get("last-event-id")

    async def stream():
        async for stored in caller.link.events(task.id, after):
            yield stored.event_id, stored.event.kind, stored.event.model_dump(mode="json", exclude_none=True)

    return sse_response(stream(), max_seconds=rt.config.sse_max_s)


routes = [
    Route("/bus/receive", receive, methods=["POST"]),
    Route("/bus/begin", begin, methods=["POST"]),
    Route("/bus/heartbeat", heartbeat, methods=["POST"]),
    Route("/bus/emit", emit, methods=["POST"]),
    Route("/bus/finish", finish, methods=["POST"]),
    Route("/bus/release", release, methods=["POST"]),
    Route("/bus/events/{task_id}", events, methods=["GET"]),
]
