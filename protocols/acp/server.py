"""The inbound ACP face of the gateway: REST routes under ``/acp``.

  GET  /acp/ping                          liveness: ``{}``
  GET  /acp/agents?limit=10&offset=0      manifests of the live agents the caller may call (from their records)
  GET  /acp/agents/{name}                 one manifest (by name or DID)
  POST /acp/runs                          create a run: mode sync (200 Run), async (202 Run), stream (SSE)
  GET  /acp/runs/{run_id}                 the run
  POST /acp/runs/{run_id}                 resume an awaiting run (``await_resume``), same three modes
  POST /acp/runs/{run_id}/cancel          202 Run; 403 when the run is finished
  GET  /acp/runs/{run_id}/events          ``{"events": [...]}``, replayed from the task's event log
  GET  /acp/sessions/{session_id}         ``{"id", "history": [resource URLs], "state"}``
  GET  /acp/runs/{run_id}/messages/{i}    one message of a session's history (the URLs above)

Every route acts for the caller (``Runtime.acting_for``): an agent the policy does not let it
call is unknown (404 ``not_found``, as an unregistered one) for ``/agents`` and ``/runs`` alike.

Creating, resuming, reading and cancelling a run answer with a ``Run-ID`` header (in every mode;
for a stream it comes before the first event). Bodies are read as JSON whatever the
Content-Type (the SDK client sends none). Errors are ACP error bodies
``{"code", "message", "data"}``: ``not_found`` 404, ``invalid_input`` 422, and ``server_error``
with 403 (resume or cancel of a run in the wrong state), 429 (the caller is past one of its
quotas: ``Retry-After``, and ``data.retry_after``), 503 (bus unavailable) or 500. A stream
that breaks after it started ends with an ``error`` event. Nothing a client sends reaches it as
a traceback.

``routes(options)`` returns the routes (the app's default list uses it); ``mount(app, options)``
replaces them on a built app. Without options, both use ``ACPOptions.from_env()``.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Match, Route

from gateway.core import tracing
from gateway.core.backends import BackendUnavailable, QueueFull, TaskNotFound
from gateway.core.http import HttpError, public_base_url, read_json, replace_routes
from gateway.core.principal import principal_of
from gateway.core.quotas import QuotaExceeded
from gateway.core.runtime import ActingFor, NotCancelable, NotContinuable, UnknownAgent
from gateway.core.settings import load_settings
from gateway.core.sse import sse_response
from protocols.acp import telemetry, wire
from protocols.acp.wire import EventMapper, RunCreate, RunResume, WireError
from registry.service import PROTOCOLS
from schemas import STREAM_HINT, Task
from schemas.agent_record import AgentRecord

log = logging.getLogger("interlace.acp")

ROUTE_PREFIX = "acp"
MAX_SESSION_RUNS = 1_000
MAX_REPLAY_EVENTS = 100_000


@dataclass
class ACPOptions:
    """Settings of the ACP face (``routes(options)``/``mount(app, options)``); ``from_env`` also
    reads them from ``INTERLACE_ACP_<FIELD>``."""

    public_url: str | None = None  # base URL clients reach the gateway at; else from the request
    sync_timeout_s: float | None = None  # how long a sync run waits; default config.max_wait_timeout_s

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> ACPOptions:
        return load_settings(cls, "INTERLACE_ACP_", overrides, env)


class ACPError(Exception):
    def __init__(self, status: int, code: str, message: str, data: Any = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.data = status, code, message, data


def not_found(message: str) -> ACPError:
    return ACPError(404, "not_found", message)


def invalid(message: str, data: Any = None) -> ACPError:
    return ACPError(422, "invalid_input", message, data)


def acp_error(
    status: int, code: str, message: str, data: Any = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse({"code": code, "message": message, "data": data}, status_code=status, headers=headers)


def refusal_body(path: str, http_status: int, message: str) -> dict[str, Any] | None:
    """The body a request to ``/acp`` refused by the gateway's caller authentication gets: ACP's
    own error object (the acp-sdk client parses it into an ACPError); None for other paths."""
    if path != "/acp" and not path.startswith("/acp/"):
        return None
    code = {401: "unauthorized", 403: "forbidden"}.get(http_status, "server_error")
    return {"code": code, "message": message, "data": None}


def _error_for(exc: Exception) -> ACPError:
    if isinstance(exc, ACPError):
        return exc
    if isinstance(exc, (TaskNotFound, UnknownAgent)):
        return not_found(str(exc))
    if isinstance(exc, WireError):
        return invalid(str(exc))
    if isinstance(exc, ValidationError):
        return invalid("the request does not match the ACP schema", {"errors": wire.validation_detail(exc)})
    if isinstance(exc, HttpError):
        return invalid(exc.message)
    if isinstance(exc, (NotCancelable, NotContinuable)):
        return ACPError(403, "server_error", str(exc))
    if isinstance(exc, (BackendUnavailable, QueueFull)):
        return ACPError(503, "server_error", str(exc))
    if isinstance(exc, QuotaExceeded):
        return ACPError(429, "server_error", str(exc), {"retry_after": exc.retry_after})
    log.error("unhandled error in the ACP adapter", exc_info=exc)
    return ACPError(500, "server_error", "internal error")


Handler = Callable[[Request], Awaitable[Response]]


def guarded(handler: Handler, method: str, route: str) -> Handler:
    """Every failure becomes an ACP error body with its status; each request is a span named by
    its route (``telemetry``)."""

    @functools.wraps(handler)
    async def run(request: Request) -> Response:
        with telemetry.server_span(method, route) as span:
            try:
                response = await handler(request)
            except Exception as exc:
                err = _error_for(exc)
                headers = None
                if err.status == 503:
                    headers = {"Retry-After": "1"}
                elif err.status == 429:
                    headers = {"Retry-After": str(err.data["retry_after"])}
                telemetry.answered(span, err.status, err.code, err.message)
                return acp_error(err.status, err.code, err.message, err.data, headers)
            telemetry.answered(span, response.status_code)
            return response

    return run


async def _body(request: Request) -> Any:
    data = await read_json(request)  # any Content-Type, or none
    if not isinstance(data, dict):
        raise invalid("the request body must be a JSON object")
    return data


def _integer(request: Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise invalid(f"{name} must be an integer") from None
    if not low <= value <= high:
        raise invalid(f"{name} must be between {low} and {high}")
    return value


def manifest_out(record: AgentRecord) -> dict[str, Any]:
    """An agent record as an ACP AgentManifest."""

    def unique(items: Any) -> list:
        return list(dict.fromkeys(items))

    skills = record.skills
    interlace = {
        "did": record.did,
        "version": record.version,
        "skills": [s.id for s in skills],
        "protocols": [p for p in PROTOCOLS if getattr(record.endpoints, p) is not None],
    }
    if record.labels:
        interlace["labels"] = dict(record.labels)
    examples = unique(e for s in skills for e in s.examples)
    if examples:
        interlace["examples"] = examples
    metadata: dict[str, Any] = {
        "annotations": {"interlace": interlace},
        "capabilities": [{"name": s.name, "description": s.description} for s in skills],
    }
    tags = unique(t for s in skills for t in s.tags)
    if tags:
        metadata["tags"] = tags
    return {
        "name": record.name,
        "description": record.description,
        "input_content_types": unique(m for s in skills for m in s.input_modes),
        "output_content_types": unique(m for s in skills for m in s.output_modes),
        "metadata": metadata,
    }


def _sse(
    events: AsyncIterator[dict[str, Any]], rt: ActingFor, run_id: str, release: Callable[[], None] | None
) -> Response:
    async def frames() -> AsyncIterator[tuple[None, None, dict[str, Any]]]:
        async for ev in events:
            yield None, None, ev

    resp = sse_response(frames(), max_seconds=rt.config.sse_max_s, release=release)
    resp.headers["Run-ID"] = run_id
    return resp


class ACPService:
    def __init__(self, options: ACPOptions) -> None:
        self.options = options

    # ---- helpers -----------------------------------------------------------------------------

    def base(self, request: Request) -> str:
        return public_base_url(request, self.options.public_url)

    def _timeout(self, rt: ActingFor) -> float:
        return self.options.sync_timeout_s or rt.config.max_wait_timeout_s

    @staticmethod
    async def task(rt: ActingFor, run_id: str) -> Task:
        task_id = wire.from_uuid(run_id)
        if task_id is None:
            raise not_found(f"Run {run_id} not found")
        try:
            task = await rt.get(task_id)
        except TaskNotFound:
            raise not_found(f"Run {run_id} not found") from None
        tracing.record_task(task)  # the run a request names, on its span
        return task

    @staticmethod
    async def _events(rt: ActingFor, task: Task, after: str | None, *, created: bool) -> AsyncIterator[dict[str, Any]]:
        mapper = EventMapper(task)
        if created:
            yield mapper.created()
        try:
            async for stored in rt.follow(task.id, after):
                for ev in mapper.feed(stored.event):
                    yield ev
        except Exception as exc:  # the stream has started: say so in the stream, then end it
            err = _error_for(exc)
            yield {"type": "error", "error": {"code": err.code, "message": err.message, "data": err.data}}

    @staticmethod
    @contextlib.contextmanager
    def _stream_place(rt: ActingFor, mode: str) -> Iterator[Callable[[], None] | None]:
        """The caller's place among its open streams, for a run in stream mode (taken before
        the run starts: a refusal starts nothing); given back unless a stream response took it."""
        release = rt.open_stream() if mode == "stream" else None
        try:
            yield release
        except BaseException:
            if release is not None:
                release()
            raise

    async def _respond(
        self,
        rt: ActingFor,
        task: Task,
        mode: str,
        after: str | None,
        *,
        created: bool,
        release: Callable[[], None] | None = None,
    ) -> Response:
        run_id = wire.as_uuid(task.id) or task.id
        headers = {"Run-ID": run_id}
        if mode == "stream":
            return _sse(self._events(rt, task, after, created=created), rt, run_id, release)
        if mode == "async":
            return JSONResponse(wire.run_out(task), status_code=202, headers=headers)
        task = await rt.wait(task.id, self._timeout(rt))
        return JSONResponse(wire.run_out(task), headers=headers)

    # ---- endpoints ---------------------------------------------------------------------------

    async def ping(self, request: Request) -> Response:
        return JSONResponse({})

    async def agents(self, request: Request) -> Response:
        rt = _runtime(request)
        limit = _integer(request, "limit", 10, 1, 1000)
        offset = _integer(request, "offset", 0, 0, 2**31)
        names = (await rt.known_agents())[offset : offset + limit]
        records = [rt.routable(n) for n in names]
        return JSONResponse({"agents": [manifest_out(r[0]) for r in records if r]})

    async def agent(self, request: Request) -> Response:
        rt = _runtime(request)
        name = request.path_params["name"]
        records = rt.routable(name)
        if not records:
            raise not_found(f"Agent {name} not found")
        return JSONResponse(manifest_out(records[0]))

    async def create_run(self, request: Request) -> Response:
        rt = _runtime(request)
        req = RunCreate.model_validate(await _body(request))
        session_id = req.session.id if req.session is not None else req.session_id
        if (
            req.session is not None
            and req.session_id
            and wire.from_uuid(req.session_id) != wire.from_uuid(req.session.id)
        ):
            raise invalid("session_id does not match session.id")
        message = wire.message_in(req.input)
        metadata = {STREAM_HINT: True} if req.mode != "sync" else {}
        context_id = wire.from_uuid(session_id) if session_id else None
        await rt.resolve_agent(req.agent_name)  # an unknown agent leaves nothing behind
        with self._stream_place(rt, req.mode) as release:
            task = await rt.submit(message, agent=req.agent_name, context_id=context_id, metadata=metadata)
            tracing.record_task(task)
            if req.session is not None and (req.session.history or req.session.state):  # once the run is on
                carried = {"history": req.session.history, "state": req.session.state}
                await rt.kv.set(_session_key(rt, context_id or ""), json.dumps(carried), int(rt.config.retention_s))
            return await self._respond(rt, task, req.mode, None, created=True, release=release)

    async def read_run(self, request: Request) -> Response:
        rt = _runtime(request)
        task = await self.task(rt, request.path_params["run_id"])
        return JSONResponse(wire.run_out(task), headers={"Run-ID": wire.as_uuid(task.id) or task.id})

    async def resume_run(self, request: Request) -> Response:
        rt = _runtime(request)
        task = await self.task(rt, request.path_params["run_id"])
        req = RunResume.model_validate(await _body(request))
        if req.run_id is not None and wire.from_uuid(req.run_id) != task.id:
            raise invalid("run_id in the body does not match the run in the path")
        status = wire.run_status(task.state)
        if not task.state.interrupted:
            raise ACPError(
                403, "server_error", f"Run {request.path_params['run_id']} has no await request (it is {status})"
            )
        if req.await_resume.type != "message":
            raise ACPError(
                403, "server_error", f"Run {request.path_params['run_id']} is expecting resume of type message"
            )
        if req.await_resume.message is None:
            raise invalid("await_resume.message is required")
        message = wire.resume_in(req.await_resume.message)
        with self._stream_place(rt, req.mode) as release:
            try:
                resumed, after = await rt.continue_task(task.id, message)
            except NotContinuable as exc:
                raise ACPError(403, "server_error", str(exc)) from None
            if req.mode == "stream":
                return await self._respond(rt, task, "stream", after, created=False, release=release)
            return await self._respond(rt, resumed, req.mode, after, created=False)

    async def cancel_run(self, request: Request) -> Response:
        rt = _runtime(request)
        task = await self.task(rt, request.path_params["run_id"])
        try:
            task = await rt.cancel(task.id)
        except NotCancelable:
            current = await rt.get(task.id)
            raise ACPError(
                403, "server_error", f"Run in terminal status {wire.run_status(current.state)} can't be cancelled"
            ) from None
        return JSONResponse(wire.run_out(task), status_code=202, headers={"Run-ID": wire.as_uuid(task.id) or task.id})

    async def run_events(self, request: Request) -> Response:
        rt = _runtime(request)
        task = await self.task(rt, request.path_params["run_id"])
        mapper = EventMapper(wire.initial(task))
        events, after, seen = [mapper.created()], None, 0
        while seen < MAX_REPLAY_EVENTS:
            batch = await rt.read_events(task.id, after)
            if not batch:
                break
            for stored in batch:
                events += mapper.feed(stored.event)
            after, seen = batch[-1].event_id, seen + len(batch)
        return JSONResponse({"events": events})

    async def _session_runs(self, rt: ActingFor, context_id: str) -> list[Task]:
        tasks, cursor = [], None
        while len(tasks) < MAX_SESSION_RUNS:
            batch, cursor = await rt.list_tasks(context_id, 200, cursor)
            tasks += batch
            if cursor is None:
                break
        return list(reversed(tasks))  # oldest first

    async def session(self, request: Request) -> Response:
        rt = _runtime(request)
        raw = request.path_params["session_id"]
        context_id = wire.from_uuid(raw)
        if context_id is None:
            raise not_found(f"Session {raw} not found")
        tasks = await self._session_runs(rt, context_id)
        stored = await rt.kv.get(_session_key(rt, context_id))
        if not tasks and stored is None:
            raise not_found(f"Session {raw} not found")
        carried = json.loads(stored) if stored else {}
        base = self.base(request)
        ours = [
            f"{base}/acp/runs/{wire.as_uuid(t.id) or t.id}/messages/{i}"
            for t in tasks
            for i in range(len(wire.session_messages(t)))
        ]
        history = [u for u in carried.get("history", []) if u not in ours] + ours
        return JSONResponse({"id": str(uuid.UUID(raw)), "history": history, "state": carried.get("state")})

    async def message(self, request: Request) -> Response:
        rt = _runtime(request)
        task = await self.task(rt, request.path_params["run_id"])
        messages = wire.session_messages(task)
        index = request.path_params["index"]
        if not 0 <= index < len(messages):
            raise not_found(f"Run {request.path_params['run_id']} has no message {index}")
        return JSONResponse(messages[index])


def _runtime(request: Request) -> ActingFor:
    """The runtime acting for the request's caller: runs and sessions are the caller's own."""
    return request.app.state.runtime.acting_for(principal_of(request))


def _session_key(rt: ActingFor, context_id: str) -> str:
    return rt.private_key(f"acp:session:{context_id}")


def build_routes(service: ACPService) -> list[BaseRoute]:
    n = ROUTE_PREFIX

    def route(path: str, handler: Handler, method: str, name: str) -> Route:
        template = path.replace(":int}", "}")  # the span's http.route: no Starlette converters
        return Route(path, guarded(handler, method, template), methods=[method], name=f"{n}:{name}")

    routes: list[BaseRoute] = [
        route("/acp/ping", service.ping, "GET", "ping"),
        route("/acp/agents", service.agents, "GET", "agents"),
        route("/acp/agents/{name}", service.agent, "GET", "agent"),
        route("/acp/runs", service.create_run, "POST", "runs"),
        route("/acp/runs/{run_id}", service.read_run, "GET", "run"),
        route("/acp/runs/{run_id}", service.resume_run, "POST", "resume"),
        route("/acp/runs/{run_id}/cancel", service.cancel_run, "POST", "cancel"),
        route("/acp/runs/{run_id}/events", service.run_events, "GET", "events"),
        route("/acp/runs/{run_id}/messages/{index:int}", service.message, "GET", "message"),
        route("/acp/sessions/{session_id}", service.session, "GET", "session"),
    ]
    known = list(routes)

    async def fallback(request: Request) -> Response:
        """Anything else under /acp: an ACP error body rather than the gateway's own."""
        if any(r.matches(request.scope)[0] is Match.PARTIAL for r in known):
            return acp_error(405, "server_error", f"method {request.method} is not allowed on {request.url.path}")
        return acp_error(404, "not_found", f"no ACP endpoint at {request.url.path}")

    methods = ["GET", "POST", "PUT", "PATCH", "DELETE"]
    routes.append(Route("/acp/{rest:path}", fallback, methods=methods, name=f"{n}:fallback"))
    return routes


def routes(options: ACPOptions | None = None) -> list[BaseRoute]:
    """The ACP routes with these options (default: ``ACPOptions.from_env()``)."""
    return build_routes(ACPService(options or ACPOptions.from_env()))


def mount(app: Starlette, options: ACPOptions | None = None) -> ACPService:
    """Serve ACP on ``app`` with these options (replacing any ACP routes it has)."""
    service = ACPService(options or ACPOptions.from_env())
    replace_routes(app, ROUTE_PREFIX, build_routes(service))
    return service
