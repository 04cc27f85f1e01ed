"""The Starlette application factory: routes, error mapping, limits and the runtime's lifespan."""

from __future__ import annotations

import contextlib
import logging

from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from agents.echo import EchoWorker
from gateway import __version__, openapi, registry_api, revocations_api, tasks_api, worker_api
from gateway.authn import CallerAuthentication, NodeSignatures, protected_resource_routes
from gateway.cluster import Cluster
from gateway.cluster import routes as cluster_routes
from gateway.connectors import RegistryConnectors
from gateway.console import Console
from gateway.core import tracing
from gateway.core.auth import Authenticator, AuthMode
from gateway.core.backends import Backend, BackendUnavailable, InvalidCursor, QueueFull, TaskExists, TaskNotFound
from gateway.core.config import Config
from gateway.core.hangup import off_hangup, on_hangup
from gateway.core.http import (
    BodyBudget,
    BodyGuard,
    BodyLimit,
    CrossSiteGuard,
    HttpError,
    IndexedRouter,
    error_response,
    validation_errors,
)
from gateway.core.httpsig import DidKeyRequests
from gateway.core.quotas import QuotaExceeded, TokenBucket
from gateway.core.runtime import NoMatch, NotCancelable, NotContinuable, Runtime, UnknownAgent
from gateway.supervisor import Supervisor
from protocols import a2a, acp, anp
from protocols.a2a.server import refusal_body as a2a_refusal
from protocols.acp.server import refusal_body as acp_refusal
from protocols.mcp import routes as mcp_routes
from protocols.mcp.server import service_for as mcp_service_for
from protocols.mcp.server import tool_drift as mcp_tool_drift
from registry.did_list import load_did_list
from schemas import InvalidTransition

log = logging.getLogger("interlace.app")


async def healthz(request: Request) -> Response:
    rt: Runtime = request.app.state.runtime
    return JSONResponse({"status": "ok", "version": __version__, "node": rt.node_id, "network": rt.config.network})


async def readyz(request: Request) -> Response:
    rt: Runtime = request.app.state.runtime
    try:
        await rt.ready()
    except BackendUnavailable as exc:
        return error_response(503, "not_ready", str(exc), headers={"Retry-After": "1"})
    waiting = request.app.state.supervisor.not_serving()
    if waiting:
        note = f"agents not serving (registration failing, or their loop died): {', '.join(waiting)}"
        return error_response(503, "not_ready", note, headers={"Retry-After": "1"})
    return JSONResponse({"status": "ready", "backend": rt.backend.name})


async def metrics(request: Request) -> Response:
    rt: Runtime = request.app.state.runtime
    try:
        await rt.measure_queue_depths()
    except BackendUnavailable:
        pass  # serve the counters we have; depth gauges keep their last value
    return Response(rt.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")


# Each typed error becomes one HTTP status with a stable code; nothing else reaches a client.
_STATUS: list[tuple[type[Exception], int]] = [
    (TaskNotFound, 404),
    (UnknownAgent, 404),
    (NoMatch, 404),
    (NotCancelable, 409),
    (NotContinuable, 409),
    (TaskExists, 409),
    (InvalidTransition, 409),
    (InvalidCursor, 400),
]


async def _typed_error(request: Request, exc: Exception) -> Response:
    if isinstance(exc, HTTPException):  # Starlette's own 404 / 405
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return error_response(exc.status_code, code, str(exc.detail), headers=exc.headers)
    if isinstance(exc, HttpError):
        return error_response(exc.status, exc.code, exc.message, headers=exc.headers, **exc.details)
    if isinstance(exc, NoMatch):  # never a random agent: say what came closest and why not
        closest = [c.model_dump(mode="json") for c in exc.result.closest]
        return error_response(404, exc.code, str(exc), closest=closest)
    if isinstance(exc, (BackendUnavailable, QueueFull)):
        return error_response(503, exc.code, str(exc), headers={"Retry-After": "1"})
    if isinstance(exc, QuotaExceeded):
        return error_response(429, exc.code, str(exc), headers=exc.headers)
    if isinstance(exc, ValidationError):
        return error_response(400, "invalid_request", "invalid payload", errors=validation_errors(exc))
    for kind, status in _STATUS:
        if isinstance(exc, kind):
            return error_response(status, getattr(exc, "code", "error"), str(exc))
    log.error("unhandled error", exc_info=exc, extra={"path": request.url.path})
    return error_response(500, "internal", "internal error")


def create_app(
    config: Config | None = None, *, backend: Backend | None = None, workers: list | None = None
) -> Starlette:
    """Build a gateway. ``workers`` defaults to the echo agent when ``config.echo`` is set."""
    config = config or Config.load()
    if workers is None:
        workers = [EchoWorker()] if config.echo else []
    runtime = Runtime(config, backend)
    supervisor = Supervisor(runtime)
    connectors = RegistryConnectors(supervisor)
    cluster = Cluster(supervisor) if config.gossip else None
    # Who is calling (gateway/authn.py); none on a loopback bind with nothing configured.
    authenticator = (
        Authenticator.from_config(config, egress=runtime.egress)
        if config.effective_auth() is not AuthMode.LOCAL
        else None
    )
    # Requests signed by other nodes (forwarded tasks) and by workers (/bus): one nonce store.
    signed_requests = DidKeyRequests(runtime.kv)
    console = Console()

    def reload_api_keys() -> None:
        with contextlib.suppress(ValueError):  # logged by reload: the last good keys stay in force
            authenticator.reload()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        await runtime.start()
        await console.start(runtime)
        await supervisor.start_agents(workers)
        connectors.start()
        mcp = mcp_service_for(app)  # the one protocols.mcp.mount configured, or one from the environment
        await mcp.start()
        if cluster is not None:
            await cluster.start()
        if authenticator is not None and authenticator.issuer:
            await authenticator.refresh()  # the issuer's keys before the first token (logs, never raises)
        if authenticator is not None and authenticator.api_keys_file:
            on_hangup(reload_api_keys)  # SIGHUP re-reads the API key file, as it does the policy
        log.info(
            "gateway started",
            extra={"node": runtime.node_id, "backend": runtime.backend.name, "did": runtime.identity.did},
        )
        try:
            yield
        finally:
            try:
                if cluster is not None:
                    await cluster.stop()  # leave the federation first: peers stop routing here
            finally:
                await mcp.stop()
                await connectors.stop()
                await supervisor.stop_all()
                await console.stop()
                await runtime.stop()
                if authenticator is not None:
                    off_hangup(reload_api_keys)
                    await authenticator.aclose()
            log.info("gateway stopped", extra={"node": runtime.node_id})

    routes = [
        *mcp_routes(),  # /mcp (protocols.mcp.mount sets options)
        *a2a.routes(),  # /a2a, agent cards (protocols.a2a.mount sets options)
        *anp.routes(),  # /.well-known/did.json, /anp (protocols.anp.mount sets options)
        *acp.routes(),  # /acp (protocols.acp.mount sets options)
        Route("/healthz", healthz),
        Route("/readyz", readyz),
        Route("/metrics", metrics),
        Route("/openapi.json", openapi.serve),
        *registry_api.routes,
        *revocations_api.routes,  # operators revoke agent DIDs (admin)
        *tasks_api.routes,
        *worker_api.routes,
        *cluster_routes,  # /gossip, /cluster (federation)
        *console.routes(),  # /ui: the operator's console
    ]
    handlers = {
        exc: _typed_error
        for exc in (Exception, HTTPException, HttpError, ValidationError, BackendUnavailable, QueueFull, QuotaExceeded)
    }
    for kind, _ in _STATUS:
        handlers[kind] = _typed_error
    middleware = [Middleware(CrossSiteGuard), Middleware(BodyLimit, max_bytes=config.max_body_bytes)]
    if authenticator is not None:  # outermost: refuse before a body is read
        refusals = [a2a_refusal, acp_refusal]  # refusals in the A2A binding's and ACP's own shapes
        nodes = NodeSignatures(
            signed_requests,
            cluster.trusts if cluster is not None else None,
            public_url=config.public_url,
            max_body_bytes=config.max_body_bytes,
        )
        middleware.insert(
            0, Middleware(CallerAuthentication, authenticator=authenticator, refusals=refusals, nodes=nodes)
        )
        routes += protected_resource_routes(authenticator)
    # Outermost: every reader of a request body (the authentication of signed requests too) is bounded.
    budget = BodyBudget(config.max_buffered_body_bytes)
    middleware.insert(0, Middleware(BodyGuard, timeout_s=config.body_timeout_s, budget=budget))
    if tracing.configure():  # outermost: a caller's trace context covers everything its request causes
        middleware.insert(0, Middleware(tracing.InboundContext))
    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers=handlers, middleware=middleware)
    app.router = IndexedRouter(routes, lifespan=lifespan)  # before the first request builds the stack
    app.state.runtime = runtime
    app.state.connectors = connectors  # an adapter's mount may bind its connector factory to its options
    app.state.cluster = cluster
    app.state.supervisor = supervisor  # /readyz: not ready while an agent run here cannot serve
    app.state.console = console
    app.state.authenticator = authenticator  # open routes whose answer depends on who asks (principal.py)
    app.state.signed_requests = signed_requests  # /bus verifies workers' signatures with it
    app.state.registry_writes = TokenBucket(config.registry_write_rate, config.registry_write_burst)
    app.state.allowlist = load_did_list(config.allowlist)
    app.state.record_annotations = [mcp_tool_drift(app)]  # facts added to GET /registry/agents/{did}
    return app
