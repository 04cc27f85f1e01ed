"""The console's routes: one handler per page or action (see the package docstring)."""

from __future__ import annotations

import base64
import binascii
import json
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

from jinja2 import Environment, PackageLoader, select_autoescape
from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from gateway.console.series import Sampler
from gateway.console.session import COOKIE, SESSION_S, Sessions, Visitor, sign_in, visitor_of
from gateway.core import __version__, audit
from gateway.core.auth import AuthError
from gateway.core.backends import BackendUnavailable
from gateway.core.backends.base import TaskNotFound
from gateway.core.policy import Action, Target
from gateway.core.runtime import ActingFor
from gateway.core.sse import sse_response
from protocols.mcp.server import service_for
from registry.index import CapabilityQuery
from registry.service import stream_of
from schemas import DataPart, FilePart, Message, TaskState, TextPart

log = logging.getLogger("interlace.console")

PAGE = 50  # tasks per page
AGENTS_PAGE = 200
MAX_FILE_BYTES = 4 * 1024 * 1024  # what the playground sends at most
STATIC = Path(__file__).parent / "static"

Handler = Callable[[Request, Visitor], Awaitable[Response]]


class Console:
    def __init__(self) -> None:
        self.sessions = Sessions()
        self.sampler: Sampler | None = None
        loader = PackageLoader("gateway.console", "templates")
        self.templates = Environment(loader=loader, autoescape=select_autoescape())
        self.templates.filters["ago"] = _ago
        self.templates.filters["pretty"] = lambda v: json.dumps(v, indent=2, ensure_ascii=False, default=str)

    async def start(self, runtime) -> None:
        self.sampler = Sampler(runtime)
        self.sampler.start()

    async def stop(self) -> None:
        if self.sampler is not None:
            await self.sampler.stop()

    def routes(self) -> list[Route | Mount]:
        page, act = self._page, self._action
        return [
            Route("/ui", page(self.overview)),
            Route("/ui/", page(self.overview)),
            Route("/ui/login", self.login_form, methods=["GET"]),
            Route("/ui/login", self.login, methods=["POST"]),
            Route("/ui/logout", self.logout, methods=["POST"]),
            Route("/ui/agents", page(self.agents)),
            Route("/ui/agents/{did}", page(self.agent)),
            Route("/ui/agents/{did}/revoke", act(self.revoke, admin=True), methods=["POST"]),
            Route("/ui/tasks", page(self.tasks)),
            Route("/ui/tasks.json", page(self.tasks_json)),
            Route("/ui/tasks/{task_id}", page(self.task)),
            Route("/ui/tasks/{task_id}/events", page(self.task_events)),
            Route("/ui/tasks/{task_id}/files/{artifact}/{index:int}", page(self.task_file)),
            Route("/ui/tasks/{task_id}/cancel", act(self.cancel), methods=["POST"]),
            Route("/ui/tasks/{task_id}/continue", act(self.continue_task), methods=["POST"]),
            Route("/ui/routing", page(self.routing)),
            Route("/ui/playground", page(self.playground)),
            Route("/ui/playground", act(self.send), methods=["POST"]),
            Route("/ui/upstreams", page(self.upstreams)),
            Route("/ui/upstreams/{name}/repin", act(self.repin, admin=True), methods=["POST"]),
            Route("/ui/metrics", page(self.metrics)),
            Route("/ui/metrics.json", page(self.metrics_json)),
            Mount("/ui/static", StaticFiles(directory=STATIC), name="console-static"),
        ]

    # ---- who is asking ----------------------------------------------------------------------

    def _page(self, handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            try:
                visitor = await visitor_of(request, self.sessions)
            except AuthError as exc:
                return self._render(request, None, "login.html", error=exc.description, status=401)
            if visitor is None:
                return RedirectResponse(f"/ui/login?next={quote(request.url.path)}", 303)
            return await handler(request, visitor)

        return endpoint

    def _action(self, handler: Handler, admin: bool = False) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            try:
                visitor = await visitor_of(request, self.sessions)
            except AuthError as exc:
                return _error(401, exc.description)
            if visitor is None:
                return _error(401, "sign in first")
            if not self.sessions.check_csrf(request, visitor):
                return _error(403, "missing or wrong X-CSRF-Token: use the console's own pages")
            rt = request.app.state.runtime
            if admin and not visitor.principal.is_admin(rt.config.admin_group):
                audit.record(visitor.principal, "admin", request.url.path, "denied")
                return _error(403, f"this needs a principal of the {rt.config.admin_group!r} group")
            try:
                return await handler(request, visitor)
            except TaskNotFound:
                return _error(404, "no such task")
            except (ValueError, ValidationError) as exc:
                return _error(400, str(exc).splitlines()[0][:300])

        return endpoint

    def _render(self, request: Request, visitor: Visitor | None, template: str, status: int = 200, **ctx) -> Response:
        rt = request.app.state.runtime
        ctx.update(
            visitor=visitor,
            csrf=self.sessions.csrf(visitor.session) if visitor else "",
            admin=visitor is not None and visitor.principal.is_admin(rt.config.admin_group),
            signed_in=visitor is not None and visitor.session != "local",
            node=rt.node_id,
            version=__version__,
            path=request.url.path,
        )
        return HTMLResponse(self.templates.get_template(template).render(**ctx), status)

    # ---- sign in ----------------------------------------------------------------------------

    async def login_form(self, request: Request) -> Response:
        if request.app.state.authenticator is None:
            return RedirectResponse("/ui", 303)
        return self._render(request, None, "login.html", next=_next(request))

    async def login(self, request: Request) -> Response:
        if request.app.state.authenticator is None:
            return RedirectResponse("/ui", 303)
        form = await request.form()
        try:
            principal = await sign_in(request, str(form.get("credential", "")))
        except AuthError as exc:
            return self._render(request, None, "login.html", error=exc.description, next=_next(request), status=401)
        audit.record(principal, "console", "sign-in", "ok")
        resp = RedirectResponse(_next(request, str(form.get("next", "/ui"))), 303)
        resp.set_cookie(
            COOKIE,
            self.sessions.issue(principal),
            max_age=SESSION_S,
            path="/ui",
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
        return resp

    async def logout(self, request: Request) -> Response:
        resp = RedirectResponse("/ui/login", 303)
        resp.delete_cookie(COOKIE, path="/ui")
        return resp

    # ---- overview ---------------------------------------------------------------------------

    async def overview(self, request: Request, visitor: Visitor) -> Response:
        rt = request.app.state.runtime
        try:
            await rt.ready()
            ready = "ready"
        except BackendUnavailable as exc:
            ready = f"not ready: {exc}"
        cluster = request.app.state.cluster
        members = cluster.members_view() if cluster is not None else None
        acting = rt.acting_for(visitor.principal)
        failed, _ = await acting.list_tasks(limit=10, state=TaskState.FAILED)
        return self._render(
            request,
            visitor,
            "overview.html",
            did=rt.identity.did,
            network=rt.config.network,
            backend=rt.backend.name,
            ready=ready,
            members=members,
            agents=len(acting.routable()),
            failed=[_task_row(t) for t in failed],
        )

    # ---- agents -----------------------------------------------------------------------------

    def _rows(self, request: Request, acting: ActingFor, text: str | None = None) -> list[dict[str, Any]]:
        rt = request.app.state.runtime
        records = rt.registry.search(text=text) if text else rt.registry.live()
        records = [r for r in records if rt.may_call(acting.principal, r)]
        running = request.app.state.connectors.running()
        drift = _drift(request)
        now = time.time()
        rows = []
        for r in sorted(records, key=lambda r: (r.name, r.did)):
            stream = stream_of(r)
            stats = rt.capabilities.stats(r.did)  # the router's own view: latency EWMA and load
            protocols = [p for p in ("bus", "mcp", "a2a", "acp", "anp") if getattr(r.endpoints, p)]
            remote = [p for p in protocols if p != "bus"]
            rows.append(
                {
                    "record": r,
                    "protocols": protocols,
                    "lease_s": max(0, int(r.expires_at - now)),
                    "reachable": "bus" if "bus" in protocols else ("connector" if r.did in running else "no connector"),
                    "remote": remote,
                    "latency_ms": None if stats.latency_ewma_ms is None else round(stats.latency_ewma_ms, 1),
                    "load": stats.load,
                    "stream": stream,
                    "drift": drift.get(r.name, []) if r.endpoints.mcp else [],
                    "tags": sorted({t for s in r.skills for t in s.tags}),
                }
            )
        return rows

    async def agents(self, request: Request, visitor: Visitor) -> Response:
        rt = request.app.state.runtime
        q = request.query_params.get("q") or None
        offset = _int(request.query_params.get("offset"), 0)
        rows = self._rows(request, rt.acting_for(visitor.principal), q)
        page = rows[offset : offset + AGENTS_PAGE]
        for row in page:  # queue depth: one backend call per row shown, not per record held
            try:
                row["depth"] = await rt.backend.bus.depth(row["stream"])
            except BackendUnavailable:
                row["depth"] = None
        more = offset + AGENTS_PAGE if offset + AGENTS_PAGE < len(rows) else None
        return self._render(request, visitor, "agents.html", rows=page, total=len(rows), q=q or "", more=more)

    async def agent(self, request: Request, visitor: Visitor) -> Response:
        rt = request.app.state.runtime
        record = rt.registry.get(request.path_params["did"])
        if record is None or not rt.may_call(visitor.principal, record):
            return self._render(request, visitor, "missing.html", what="agent", status=404)
        tools = []
        if record.endpoints.mcp:
            tools = [t for t in service_for(request.app).upstreams.tools() if t.get("name", "").startswith(record.name)]
        return self._render(
            request,
            visitor,
            "agent.html",
            record=record,
            card=record.dump(),
            tools=tools,
            drift=_drift(request).get(record.name, []),
            revoked=rt.registry.revoked(record.did),
        )

    async def revoke(self, request: Request, visitor: Visitor) -> Response:
        rt, did = request.app.state.runtime, request.path_params["did"]
        if not rt.allows(visitor.principal, Action.ADMIN, Target(did=did)):
            audit.record(visitor.principal, "admin", did, "denied")
            return _error(403, "this gateway's policy does not let you administer that DID")
        dropped = rt.registry.get(did)
        await rt.registry.revoke(did, rt.identity)
        audit.record(visitor.principal, "admin", did, "ok")
        return JSONResponse({"revoked": did, "dropped": dropped.name if dropped is not None else None})

    # ---- tasks ------------------------------------------------------------------------------

    async def _task_page(self, request: Request, visitor: Visitor) -> dict[str, Any]:
        rt = request.app.state.runtime
        q = request.query_params
        state = TaskState(q["state"]) if q.get("state") in {s.value for s in TaskState} else None
        agent, principal, context = q.get("agent") or None, q.get("principal") or None, q.get("context") or None
        admin = visitor.principal.is_admin(rt.config.admin_group)
        cursor, shown, scanned = q.get("cursor") or None, [], 0
        while len(shown) < PAGE and scanned < 20:  # agent/principal filters scan at most 20 pages
            if admin and principal:  # an admin may look at one principal's tasks: its owner index
                tasks, cursor = await rt.backend.tasks.list(context, PAGE, cursor, principal, state)
            else:
                tasks, cursor = await rt.acting_for(visitor.principal).list_tasks(context, PAGE, cursor, state=state)
            scanned += 1
            shown += [
                t
                for t in tasks
                if (agent is None or (t.route and t.route.agent == agent))
                and (principal is None or t.owner == principal)
            ]
            if cursor is None:
                break
        return {
            "tasks": [_task_row(t) for t in shown[:PAGE]],
            "next": cursor,
            "filters": {"state": state.value if state else "", "agent": agent or "", "principal": principal or ""}
            | {"context": context or ""},
            "states": [s.value for s in TaskState],
        }

    async def tasks(self, request: Request, visitor: Visitor) -> Response:
        return self._render(request, visitor, "tasks.html", **await self._task_page(request, visitor))

    async def tasks_json(self, request: Request, visitor: Visitor) -> Response:
        page = await self._task_page(request, visitor)
        return JSONResponse({"tasks": page["tasks"], "next": page["next"]})

    async def task(self, request: Request, visitor: Visitor) -> Response:
        acting = request.app.state.runtime.acting_for(visitor.principal)
        try:
            task = await acting.get(request.path_params["task_id"])
        except TaskNotFound:
            return self._render(request, visitor, "missing.html", what="task", status=404)
        events = await acting.read_events(task.id)
        return self._render(
            request,
            visitor,
            "task.html",
            task=task,
            row=_task_row(task),
            artifacts=[_artifact_view(a) for a in task.artifacts],
            events=[_event_row(e) for e in events],
            last_event=events[-1].event_id if events else "",
            trace_id=_trace_id(task),
        )

    async def task_events(self, request: Request, visitor: Visitor) -> Response:
        acting = request.app.state.runtime.acting_for(visitor.principal)
        task_id = request.path_params["task_id"]
        try:
            await acting.get(task_id)
        except TaskNotFound:
            return _error(404, "no such task")
        after = request.query_params.get("after") or None

        async def stream():
            async for stored in acting.follow(task_id, after):
                yield stored.event_id, None, _event_row(stored)

        return sse_response(stream(), max_seconds=request.app.state.runtime.config.sse_max_s)

    async def task_file(self, request: Request, visitor: Visitor) -> Response:
        acting = request.app.state.runtime.acting_for(visitor.principal)
        try:
            task = await acting.get(request.path_params["task_id"])
        except TaskNotFound:
            return _error(404, "no such task")
        for artifact in task.artifacts:
            if artifact.artifact_id == request.path_params["artifact"]:
                index = request.path_params["index"]
                part = artifact.parts[index] if index < len(artifact.parts) else None
                if isinstance(part, FilePart) and part.bytes is not None:
                    name = (part.filename or f"{artifact.name or 'file'}-{index}").replace('"', "")
                    return Response(
                        base64.b64decode(part.bytes),
                        media_type=part.media_type or "application/octet-stream",
                        headers={"Content-Disposition": f'attachment; filename="{name}"'},
                    )
        return _error(404, "no such file")

    async def cancel(self, request: Request, visitor: Visitor) -> Response:
        acting = request.app.state.runtime.acting_for(visitor.principal)
        task = await acting.cancel(request.path_params["task_id"])
        return JSONResponse({"id": task.id, "state": task.state.value})

    async def continue_task(self, request: Request, visitor: Visitor) -> Response:
        acting = request.app.state.runtime.acting_for(visitor.principal)
        message = _message(await request.json())
        task, _ = await acting.continue_task(request.path_params["task_id"], message)
        return JSONResponse({"id": task.id, "state": task.state.value})

    # ---- routing and playground -------------------------------------------------------------

    async def routing(self, request: Request, visitor: Visitor) -> Response:
        q = request.query_params
        result, error = None, None
        if q.get("text") or q.get("tags") or q.get("skill"):
            try:
                query = CapabilityQuery(
                    text=q.get("text") or None,
                    skill=q.get("skill") or None,
                    tags=[t.strip() for t in q.get("tags", "").split(",") if t.strip()],
                )
                result = request.app.state.runtime.acting_for(visitor.principal).explain_route(query, limit=10)
            except ValidationError as exc:
                error = str(exc).splitlines()[0]
        return self._render(request, visitor, "routing.html", result=result, error=error, q=dict(q))

    async def playground(self, request: Request, visitor: Visitor) -> Response:
        acting = request.app.state.runtime.acting_for(visitor.principal)
        names = sorted({r.name for r in acting.routable()})
        return self._render(request, visitor, "playground.html", agents=names, chosen=request.query_params.get("agent"))

    async def send(self, request: Request, visitor: Visitor) -> Response:
        body = await request.json()
        agent = body.get("agent")
        if not isinstance(agent, str) or not agent:
            raise ValueError("choose an agent")
        acting = request.app.state.runtime.acting_for(visitor.principal)
        task = await acting.submit(_message(body), agent=agent, metadata={"interlace.stream": True})
        return JSONResponse({"id": task.id, "url": f"/ui/tasks/{task.id}"}, 201)

    # ---- MCP upstreams ----------------------------------------------------------------------

    async def upstreams(self, request: Request, visitor: Visitor) -> Response:
        svc = service_for(request.app)
        visible = svc.visible_to(request.app.state.runtime.acting_for(visitor.principal))
        admin = visitor.principal.is_admin(request.app.state.runtime.config.admin_group)
        views = []
        for status in sorted(svc.upstreams.status(), key=lambda s: s["name"]):
            name, client = status["name"], svc.upstreams.clients[status["name"]]
            catalog = {
                kind: [
                    str(i.get(key))
                    for i in client.catalog.get(kind, [])
                    if visible is None or visible(name, kind[:-1], str(i.get(key)))
                ]
                for kind, key in (("tools", "name"), ("prompts", "name"), ("resources", "uri"))
            }
            if visible is not None and not any(catalog.values()):
                continue  # nothing of it is the visitor's to use
            views.append(
                {
                    "name": name,
                    "url": status["url"],
                    "era": status["era"],
                    "catalog": catalog,
                    # a stdio server's command line and stderr may hold what only operators should read
                    "process": _process(status) if admin else None,
                }
            )
        drift = svc.upstreams.quarantined() if admin else []
        return self._render(request, visitor, "upstreams.html", upstreams=views, drift=drift)

    async def repin(self, request: Request, visitor: Visitor) -> Response:
        name = request.path_params["name"]
        body = await request.json() if request.headers.get("content-length", "0") != "0" else {}
        tool = body.get("tool") if isinstance(body, dict) else None
        done = await service_for(request.app).upstreams.repin(name, tool)
        audit.record(visitor.principal, "admin", f"{name}:{tool or '*'}", "ok" if done else "nothing")
        return JSONResponse({"repinned": done})

    # ---- metrics ----------------------------------------------------------------------------

    async def metrics(self, request: Request, visitor: Visitor) -> Response:
        return self._render(request, visitor, "metrics.html")

    async def metrics_json(self, request: Request, visitor: Visitor) -> Response:
        rt = request.app.state.runtime
        mine = {stream_of(r) for r in rt.acting_for(visitor.principal).routable()}
        points = list(self.sampler.points) if self.sampler else []
        shown = [{"t": p["t"], "agents": {a: v for a, v in p["agents"].items() if a in mine}} for p in points]
        return JSONResponse({"interval_s": self.sampler.interval_s if self.sampler else 5, "points": shown})


# ---- views of the canonical model ------------------------------------------------------------


def _task_row(task) -> dict[str, Any]:
    message = task.status.message
    note = " ".join(p.text for p in message.parts if isinstance(p, TextPart)) if message else ""
    return {
        "id": task.id,
        "state": task.state.value,
        "agent": task.route.agent if task.route else "",
        "reason": task.route.reason if task.route else "",
        "owner": task.owner or "",
        "context": task.context_id,
        "created": task.created_at,
        "updated": task.status.timestamp,
        "note": note[:200],
    }


def _process(status: dict[str, Any]) -> dict[str, Any] | None:
    """A stdio upstream's process, from its ``UpstreamSet.status()`` entry; the stderr tail as one text."""
    if status.get("transport") != "stdio":
        return None
    process = {k: v for k, v in status.items() if k not in _CONNECTION and k != "stderr_tail"}
    return {**process, "stderr": "\n".join(status["stderr_tail"])}


_CONNECTION = ("name", "url", "era", "protocol_version", "connected", "last_error")  # the rest: the process


def _artifact_view(artifact) -> dict[str, Any]:
    parts = []
    for i, part in enumerate(artifact.parts):
        if isinstance(part, TextPart):
            parts.append({"kind": "text", "text": part.text})
        elif isinstance(part, DataPart):
            parts.append({"kind": "data", "data": part.data})
        elif isinstance(part, FilePart):
            name = part.filename or f"file-{i}"
            parts.append({"kind": "file", "index": i, "name": name, "type": part.media_type, "url": part.url})
    return {"id": artifact.artifact_id, "name": artifact.name or artifact.artifact_id, "parts": parts}


def _event_row(stored) -> dict[str, Any]:
    ev = stored.event
    row: dict[str, Any] = {"id": stored.event_id, "kind": ev.kind}
    if ev.kind == "status-update":
        row["state"] = ev.status.state.value
        msg = ev.status.message
        row["text"] = " ".join(p.text for p in msg.parts if isinstance(p, TextPart)) if msg else ""
        row["final"] = ev.final
    else:
        row["artifact"] = ev.artifact.name or ev.artifact.artifact_id
        row["text"] = "".join(p.text for p in ev.artifact.parts if isinstance(p, TextPart))
        row["append"] = ev.append
    return row


def _message(body: Any) -> Message:
    """The playground's message: text, optional JSON data, optional file (base64)."""
    if not isinstance(body, dict):
        raise ValueError("send a JSON object")
    parts: list = []
    if body.get("text"):
        parts.append(TextPart(text=str(body["text"])))
    if body.get("data") not in (None, ""):
        data = body["data"]
        if isinstance(data, str):
            try:
                data = json.loads(data)
            except ValueError:
                raise ValueError("the JSON data is not valid JSON") from None
        parts.append(DataPart(data=data))
    file = body.get("file")
    if isinstance(file, dict) and file.get("bytes"):
        try:
            raw = base64.b64decode(file["bytes"], validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("the file is not valid base64") from None
        if len(raw) > MAX_FILE_BYTES:
            raise ValueError(f"files up to {MAX_FILE_BYTES // (1024 * 1024)} MiB")
        parts.append(FilePart(bytes=file["bytes"], media_type=file.get("type") or None, filename=file.get("name")))
    if not parts:
        raise ValueError("write a message, JSON data or attach a file")
    return Message(role="user", parts=parts)


def _trace_id(task) -> str | None:
    """The task's trace id (W3C ``traceparent``: version-traceid-spanid-flags), when tracing is on."""
    parts = (task.trace or {}).get("traceparent", "").split("-")
    return parts[1] if len(parts) == 4 else None


def _drift(request: Request) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for q in service_for(request.app).upstreams.quarantined():
        out.setdefault(q["upstream"], []).append(q)
    return out


def _error(status: int, message: str) -> Response:
    return JSONResponse({"error": {"code": "console", "message": message}}, status)


def _int(raw: str | None, default: int) -> int:
    try:
        return max(0, int(raw)) if raw else default
    except ValueError:
        return default


def _next(request: Request, given: str | None = None) -> str:
    """Where to go after signing in: a path under /ui only (never another site)."""
    target = given or request.query_params.get("next") or "/ui"
    safe = target.startswith("/ui") and not any(bad in target for bad in ("//", "\\", ".."))
    return target if safe else "/ui"


def _ago(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 60} min {seconds % 60} s" if seconds >= 60 else f"{seconds} s"
