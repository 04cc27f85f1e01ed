"""The inbound ANP face of the gateway: the did:wba document, Agent Descriptions, JSON-RPC.

  GET  /.well-known/did.json             the gateway's did:wba document (service -> /anp/ad.json)
  GET  /anp/ad.json                      the gateway's Agent Description (gateway-scope interface)
  GET  /anp/openrpc.json                 its OpenRPC document (send_message takes ``agent``)
  POST /anp/rpc                          JSON-RPC, gateway scope (DIDWba)
  GET  /anp/agents/{name}/ad.json        one routable agent's Agent Description
  GET  /anp/agents/{name}/openrpc.json   its OpenRPC document
  POST /anp/agents/{name}/rpc            JSON-RPC for that agent only (DIDWba)

JSON-RPC dispatch is jsonrpcserver with this adapter's own method table (``METHODS``) and the
call (``ANPCall``: runtime, scope, authenticated caller) as its context.

Who is asking, and what it sees: a JSON-RPC call must authenticate (DIDWba, ``auth.py``) and
acts for ``Principal.for_did(its DID)``. Agent Descriptions and OpenRPC documents need no
credentials, but crawlers (the ``anp`` SDK's ANPCrawler) sign every fetch: a fetch that presents
DIDWba credentials (an ``Authorization`` header, or RFC 9421 signature headers) is answered for
that DID once they verify (bad ones get the same 401 or 403 as a call), one that presents none
for the gateway's anonymous caller (``principal_of``: the local principal when the gateway
authenticates nobody). Either way the documents list only the agents that caller may call (the
policy), and an agent it may not call is unknown on every route: 404 for its documents and its
``rpc`` endpoint (which authenticates first, so that nobody learns which names exist), and the
JSON-RPC error of an unregistered agent when named in ``send_message``. ``routes(options)``
returns the routes (the app's default list uses it); ``mount(app, options)`` replaces them on a
built app, closes the DID resolver's client on shutdown, and has the app's registry connectors
(``app.state.connectors``) build ``anp`` connectors with the same options, so they sign as the
did:wba this face serves. Without options, both use ``ANPOptions.from_env()``.
"""

from __future__ import annotations

import functools
import json
import logging
from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urlsplit

from jsonrpcserver import Error, Success, async_dispatch
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from gateway.core import strict_json, tracing
from gateway.core.backends import BackendUnavailable, QueueFull, TaskNotFound
from gateway.core.egress import Egress
from gateway.core.http import configured_base_url, error_response, public_base_url, replace_routes
from gateway.core.httpsig import request_urls
from gateway.core.principal import Principal, principal_of
from gateway.core.quotas import QuotaExceeded
from gateway.core.runtime import ActingFor, NotCancelable, NotContinuable, Runtime, UnknownAgent
from protocols.anp import telemetry, wire
from protocols.anp.auth import AuthFailure, Caller, DidWbaAuth, HttpsResolver, challenge_headers, presents_credentials
from protocols.anp.connector import ANPConnector
from protocols.anp.didwba import DidError, did_for_host, gateway_document
from protocols.anp.options import ANPOptions
from protocols.anp.wire import RpcError
from registry.did_list import load_did_list
from schemas import InvalidTransition, Task

log = logging.getLogger("interlace.anp")

ROUTE_PREFIX = "anp"
JSON_TYPES = ("application/json", "application/json-rpc", "application/jsonrequest")


@dataclass
class ANPCall:
    """One JSON-RPC request: the runtime acting for the caller, the agent scope (None = gateway)
    and the caller's DID."""

    rt: ActingFor
    agent: str | None
    caller: str
    service: ANPService
    retry_after: int | None = None  # set when a method of the request was refused by a quota


class ANPService:
    def __init__(self, options: ANPOptions) -> None:
        self.options = options
        self._https = HttpsResolver() if options.resolve is None else None
        self.auth = DidWbaAuth(
            options.resolve or self._https,  # type: ignore[arg-type]
            window_s=options.window_s,
            skew_s=options.skew_s,
            token_ttl_s=options.token_ttl_s,
            cache_ttl_s=options.did_cache_ttl_s,
            allowed=load_did_list(options.callers) if options.callers else None,
        )
        self.created = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        self._documents: OrderedDict[tuple[str, str, str], dict] = OrderedDict()

    def use_egress(self, egress: Egress) -> None:
        """Fetch DID documents under the gateway's egress policy (taken before the first fetch)."""
        if self._https is not None and self._https.egress is None:
            self._https.egress = egress

    async def close(self) -> None:
        if self._https is not None:
            await self._https.aclose()

    # ---- addresses ----

    def base(self, request: Request) -> str:
        return public_base_url(request, self.options.public_url)

    def host(self, request: Request) -> str:
        return self.options.public_host or request.headers.get("host") or request.url.netloc

    def did(self, request: Request) -> str:
        return did_for_host(self.host(request))

    def request_urls(self, request: Request) -> list[str]:
        """The URLs a signature may name for this request: as addressed, and as configured."""
        return request_urls(str(request.url), configured_base_url(request, self.options.public_url))

    def domains(self, request: Request) -> list[str]:
        """Host names (no port) a legacy DIDWba header may be signed for."""
        names = [request.url.hostname or ""]
        if self.options.public_host:
            names.append(self.options.public_host.split(":")[0])
        configured = configured_base_url(request, self.options.public_url)
        if configured:
            names.append(urlsplit(configured).hostname or "")
        return [n.lower() for n in dict.fromkeys(names) if n]

    # ---- documents ----

    def did_document(self, request: Request) -> dict:
        rt: Runtime = request.app.state.runtime
        did = self.did(request)
        ad_url = self.base(request) + "/anp/ad.json"
        key = (did, ad_url, rt.identity.did)
        doc = self._documents.get(key)
        if doc is None:
            doc = gateway_document(rt.identity, did, ad_url, self.created)
            self._documents[key] = doc
            while len(self._documents) > 64:  # Host is the client's: bound what it can make us keep
                self._documents.popitem(last=False)
        return doc

    async def agent_about(self, rt: ActingFor, agent: str) -> tuple[str, str | None, str | None]:
        """(description, version, record DID) from the agent's live record."""
        records = rt.routable(agent)
        if not records:
            return "", None, None
        record = records[0]
        skills = "; ".join(f"{s.name}: {s.description}" if s.description else s.name for s in record.skills)
        text = record.description + (f" Skills: {skills}." if skills else "")
        return text.strip(), record.version, record.did

    async def openrpc(self, request: Request, rt: ActingFor, agent: str | None) -> dict:
        """The OpenRPC document of the gateway (``agent`` None) or of one agent, as ``rt``'s caller sees it."""
        base = self.base(request)
        if agent is None:
            known = await rt.known_agents()
            return wire.openrpc_document(
                title=self.options.name,
                description=self.options.description,
                rpc_url=f"{base}/anp/rpc",
                agents=known,
            )
        about, _, _ = await self.agent_about(rt, agent)
        return wire.openrpc_document(
            title=agent,
            description=about or f"The agent {agent!r}, reached through the gateway.",
            rpc_url=f"{base}/anp/agents/{quote(agent, safe='')}/rpc",
            agents=None,
        )

    async def agent_description(self, request: Request, rt: ActingFor, agent: str | None) -> dict:
        """The Agent Description of the gateway (``agent`` None) or of one agent, as ``rt``'s caller sees it."""
        base = self.base(request)
        did = self.did(request)
        openrpc = await self.openrpc(request, rt, agent)
        if agent is None:
            known = await rt.known_agents()
            agents = [{"name": a, "url": f"{base}/anp/agents/{quote(a, safe='')}/ad.json"} for a in known]
            return wire.agent_description(
                ad_url=f"{base}/anp/ad.json",
                openrpc_url=f"{base}/anp/openrpc.json",
                name=self.options.name,
                description=self.options.description,
                did=did,
                openrpc=openrpc,
                created=self.created,
                extra={"ad:agents": agents},
            )
        about, version, record_did = await self.agent_about(rt, agent)
        prefix = f"{base}/anp/agents/{quote(agent, safe='')}"
        return wire.agent_description(
            ad_url=f"{prefix}/ad.json",
            openrpc_url=f"{prefix}/openrpc.json",
            name=agent,
            description=about or f"The agent {agent!r}, reached through the gateway.",
            did=did,
            openrpc=openrpc,
            created=self.created,
            version=version,
            identifier=record_did,
        )


# ---- JSON-RPC methods ------------------------------------------------------------------------


def _method(fn):
    """Every failure becomes a JSON-RPC error (never a traceback, never jsonrpcserver's own);
    each call is a span named by its method (``telemetry``)."""

    @functools.wraps(fn)  # jsonrpcserver checks the params against fn's signature (via __wrapped__)
    async def wrapper(call: ANPCall, *args: Any, **kwargs: Any):
        with telemetry.server_span(fn.__name__, call.agent or kwargs.get("agent")) as span:
            try:
                return Success(await fn(call, *args, **kwargs))
            except Exception as exc:
                code, message, data = _error_of(exc, call, fn.__name__)
                telemetry.failed(span, code, message)
                return Error(code, message, data) if data is not None else Error(code, message)

    return wrapper


def _error_of(exc: Exception, call: ANPCall, method: str) -> tuple[int, str, Any]:
    """The JSON-RPC error (code, message, data) a method's failure is answered with."""
    if isinstance(exc, RpcError):
        return exc.code, exc.message, exc.data
    if isinstance(exc, TaskNotFound):
        return wire.TASK_NOT_FOUND, str(exc), None
    if isinstance(exc, UnknownAgent):
        return wire.UNKNOWN_AGENT, str(exc), None
    if isinstance(exc, (NotCancelable, NotContinuable, InvalidTransition)):
        return wire.NOT_CANCELABLE, str(exc), None
    if isinstance(exc, (BackendUnavailable, QueueFull)):
        return wire.UNAVAILABLE, f"service temporarily unavailable: {exc}", None
    if isinstance(exc, QuotaExceeded):
        call.retry_after = max(call.retry_after or 0, exc.retry_after)
        return wire.RATE_LIMITED, str(exc), {"retryAfter": exc.retry_after}
    if isinstance(exc, ValidationError):
        return -32602, "invalid params", None
    log.error("ANP method failed", exc_info=exc, extra={"method": method})
    return -32603, "internal error", None


async def _own_task(call: ANPCall, task_id: Any) -> Task:
    """A task of the caller's (the runtime's ownership) in this scope; anything else is 'not found'."""
    task_id = wire._string(task_id, "task_id", required=True)
    task = await call.rt.get(task_id)  # type: ignore[arg-type]
    if call.agent is not None:
        try:
            stream = await call.rt.resolve_agent(call.agent)
        except UnknownAgent:
            raise TaskNotFound(f"task {task_id} not found") from None
        if task.route is None or task.route.agent != stream:
            raise TaskNotFound(f"task {task_id} not found")
    tracing.record_task(task)  # the task a call names, on its span
    return task


def _wait(call: ANPCall, wait_s: Any) -> float:
    config = call.rt.config
    default = call.service.options.wait_s if call.service.options.wait_s is not None else config.wait_timeout_s
    return wire.wait_seconds(wait_s, default, config.max_wait_timeout_s)


@_method
async def send_message(
    call: ANPCall,
    message: Any = None,
    data: Any = None,
    task_id: Any = None,
    context_id: Any = None,
    metadata: Any = None,
    wait_s: Any = None,
    agent: Any = None,
) -> dict:
    msg = wire.user_message(message, data)
    wait = _wait(call, wait_s)
    agent = wire._string(agent, "agent")
    if call.agent is not None and agent not in (None, call.agent):
        raise RpcError(-32602, f"this endpoint serves {call.agent!r} only; use /anp/rpc to name another agent")
    if task_id is not None:
        task = await _own_task(call, task_id)
        task, _ = await call.rt.continue_task(task.id, msg)
    else:
        target = call.agent or agent
        if not target:
            raise RpcError(-32602, "agent is required: the name (or DID) of the agent to send the task to")
        task = await call.rt.submit(
            msg,
            agent=target,
            context_id=wire._string(context_id, "context_id"),
            metadata=wire.task_metadata(metadata),
        )
        tracing.record_task(task)
    task = await call.rt.wait(task.id, wait)
    if task.state in wire.ENDED:
        raise wire.ended_error(task)
    return wire.task_result(task)


@_method
async def get_task(call: ANPCall, task_id: Any = None, wait_s: Any = None) -> dict:
    task = await _own_task(call, task_id)
    if wait_s is not None:
        task = await call.rt.wait(task.id, _wait(call, wait_s))
    return wire.task_result(task)


@_method
async def cancel_task(call: ANPCall, task_id: Any = None) -> dict:
    task = await _own_task(call, task_id)
    return wire.task_result(await call.rt.cancel(task.id))


METHODS = {"send_message": send_message, "get_task": get_task, "cancel_task": cancel_task}


# ---- routes ----------------------------------------------------------------------------------


def _rpc_error(rid: Any, code: int, message: str, headers: dict[str, str]) -> JSONResponse:
    return JSONResponse({"jsonrpc": "2.0", "id": rid, "error": {"code": code, "message": message}}, headers=headers)


def build_routes(service: ANPService) -> list[BaseRoute]:
    async def known(request: Request, rt: ActingFor) -> str | None:
        """The agent the path names ("" for the gateway scope); None: not one ``rt``'s caller may call."""
        agent = request.path_params.get("agent")
        if agent is not None and agent not in await rt.known_agents():
            return None
        return agent or ""

    def not_found(request: Request) -> Response:
        return error_response(404, "not_found", f"no agent named {request.path_params.get('agent')!r}")

    async def authenticated(request: Request, body: bytes) -> Caller | Response:
        """The DIDWba caller of ``request``, or the refusal (401 with a challenge, or 403)."""
        domains = service.domains(request)
        rt: Runtime = request.app.state.runtime
        service.use_egress(rt.egress)
        try:
            return await service.auth.authenticate(
                rt.kv, request.method, service.request_urls(request), domains, request.headers, body
            )
        except AuthFailure as failure:
            log.info("ANP authentication failed", extra={"error": failure.error, "path": request.url.path})
            return error_response(
                failure.status,
                failure.error,
                failure.description,
                headers=challenge_headers(domains[0] if domains else "", failure) if failure.status == 401 else None,
            )

    async def reader(request: Request) -> tuple[ActingFor, dict[str, str]] | Response:
        """Who fetches a document (module docstring): the runtime acting for it, and the
        response headers its authentication adds (a bearer token to reuse), or the refusal."""
        rt: Runtime = request.app.state.runtime
        if not presents_credentials(request.headers):
            return rt.acting_for(principal_of(request)), {}
        caller = await authenticated(request, b"")
        if isinstance(caller, Response):
            return caller
        return rt.acting_for(Principal.for_did(caller.did)), caller.response_headers

    async def did_json(request: Request) -> Response:
        try:
            doc = service.did_document(request)
        except DidError as exc:
            return error_response(
                400, "invalid_host", f"no did:wba for this host: {exc}; set INTERLACE_ANP_PUBLIC_HOST"
            )
        return JSONResponse(doc, media_type="application/did+json", headers={"Cache-Control": "public, max-age=300"})

    async def ad_json(request: Request) -> Response:
        found = await reader(request)
        if isinstance(found, Response):
            return found
        rt, headers = found
        agent = await known(request, rt)
        if agent is None:
            return not_found(request)
        try:
            ad = await service.agent_description(request, rt, agent or None)
        except DidError as exc:
            return error_response(
                400, "invalid_host", f"no did:wba for this host: {exc}; set INTERLACE_ANP_PUBLIC_HOST"
            )
        return JSONResponse(ad, media_type="application/ld+json", headers=headers)

    async def openrpc_json(request: Request) -> Response:
        found = await reader(request)
        if isinstance(found, Response):
            return found
        rt, headers = found
        agent = await known(request, rt)
        if agent is None:
            return not_found(request)
        return JSONResponse(await service.openrpc(request, rt, agent or None), headers=headers)

    async def rpc(request: Request) -> Response:
        body = await request.body()
        caller = await authenticated(request, body)
        if isinstance(caller, Response):
            return caller
        rt = request.app.state.runtime.acting_for(Principal.for_did(caller.did))
        agent = await known(request, rt)
        if agent is None:
            return not_found(request)
        headers = caller.response_headers
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype and ctype not in JSON_TYPES:
            return _rpc_error(None, -32700, f"Content-Type {ctype!r} is not JSON", headers)
        try:
            parsed = strict_json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError):
            return _rpc_error(None, -32700, "Parse error: the body is not JSON", headers)
        if isinstance(parsed, list) and len(parsed) > service.options.max_batch:
            return _rpc_error(None, -32600, f"a batch holds at most {service.options.max_batch} requests", headers)
        call = ANPCall(rt, agent or None, caller.did, service)
        text = await async_dispatch("", methods=METHODS, context=call, deserializer=lambda _: parsed)
        status = 200
        if call.retry_after is not None:  # a quota refused a method: 429 for a single request
            headers = {**headers, "Retry-After": str(call.retry_after)}
            status = 200 if isinstance(parsed, list) else 429
        if not text:  # only notifications
            return Response(status_code=204, headers=headers)
        return Response(text, status_code=status, media_type="application/json", headers=headers)

    n = ROUTE_PREFIX
    return [
        Route("/.well-known/did.json", did_json, methods=["GET"], name=f"{n}:did"),
        Route("/anp/ad.json", ad_json, methods=["GET"], name=f"{n}:ad"),
        Route("/anp/openrpc.json", openrpc_json, methods=["GET"], name=f"{n}:openrpc"),
        Route("/anp/rpc", rpc, methods=["POST"], name=f"{n}:rpc"),
        Route("/anp/agents/{agent}/ad.json", ad_json, methods=["GET"], name=f"{n}:agent-ad"),
        Route("/anp/agents/{agent}/openrpc.json", openrpc_json, methods=["GET"], name=f"{n}:agent-openrpc"),
        Route("/anp/agents/{agent}/rpc", rpc, methods=["POST"], name=f"{n}:agent-rpc"),
    ]


def routes(options: ANPOptions | None = None) -> list[BaseRoute]:
    """The ANP routes with these options (default: ``ANPOptions.from_env()``)."""
    return build_routes(ANPService(options or ANPOptions.from_env()))


def mount(app: Starlette, options: ANPOptions | None = None) -> ANPService:
    """Serve ANP on ``app`` with these options (replacing any ANP routes it has)."""
    service = ANPService(options or ANPOptions.from_env())
    replace_routes(app, ROUTE_PREFIX, build_routes(service), service.close)
    supervisor = getattr(app.state, "connectors", None)
    if supervisor is not None:  # records with an anp endpoint get a connector signing as this gateway
        supervisor.factories["anp"] = functools.partial(ANPConnector.from_record, options=service.options)
    return service
