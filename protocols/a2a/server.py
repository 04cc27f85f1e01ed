"""The inbound A2A face of the gateway: cards, JSON-RPC and HTTP+JSON routes.

  GET  /.well-known/agent-card.json                 the gateway's card (skills = routable agents)
  GET  /a2a/.well-known/agent-card.json             the same card, for clients given ``<base>/a2a``
  GET  /a2a/jwks.json                               the card-signing key (JWK Set; the JWS ``jku``)
  POST /a2a                                         JSON-RPC, gateway scope (routing rule: service.py)
  *    /a2a/rest/...                                HTTP+JSON, gateway scope (1.0 paths; 0.3 under /v1)
  GET  /a2a/agents/{name}/.well-known/agent-card.json   one agent's card
  POST /a2a/agents/{name}                           JSON-RPC for that agent only
  *    /a2a/agents/{name}/rest/...                  HTTP+JSON for that agent only

With caller authentication configured, the gateway refuses unauthenticated calls before they get
here; ``refusal_body`` gives those refusals the binding's own shape (errors.CallerRefusedError).

``routes(options)`` returns the routes (the app's default list uses it); ``mount(app, options)``
replaces them on a built app and closes the adapter's clients on shutdown. Without options, both
use ``A2AOptions.from_env()``.
"""

from __future__ import annotations

from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from gateway.core.http import public_base_url, replace_routes
from gateway.core.principal import principal_of
from protocols.a2a import jsonrpc, rest
from protocols.a2a.card import jwks
from protocols.a2a.errors import CallerRefusedError
from protocols.a2a.service import A2ACall, A2AOptions, A2AService
from protocols.a2a.wire import V10, Dialect

ROUTE_PREFIX = "a2a"


def build_routes(service: A2AService) -> list[BaseRoute]:
    def call_for(request: Request, dialect: Dialect) -> A2ACall:
        base = public_base_url(request, service.options.public_url)
        agent = request.path_params.get("agent")
        return A2ACall(request.app.state.runtime, agent, dialect, base, principal_of(request))

    async def gateway_card(request: Request) -> Response:
        call = call_for(request, V10)
        return service.cards.response(request, "gateway", await service.card(call))

    async def agent_card(request: Request) -> Response:
        call = call_for(request, V10)
        if not await service.agent_exists(call.rt, call.agent or ""):
            return JSONResponse(
                {"error": {"code": "not_found", "message": f"no agent named {call.agent!r}"}}, status_code=404
            )
        return service.cards.response(request, f"agent:{call.agent}", await service.card(call))

    async def key_set(request: Request) -> Response:
        key = service.identity(request.app.state.runtime)
        return JSONResponse(jwks(key), headers={"Cache-Control": "public, max-age=3600"})

    async def rpc(request: Request) -> Response:
        return await jsonrpc.handle(service, request, lambda d: call_for(request, d))

    n = ROUTE_PREFIX
    return [
        Route("/.well-known/agent-card.json", gateway_card, methods=["GET"], name=f"{n}:card"),
        Route("/a2a/.well-known/agent-card.json", gateway_card, methods=["GET"], name=f"{n}:card2"),
        Route("/a2a/jwks.json", key_set, methods=["GET"], name=f"{n}:jwks"),
        Route("/a2a", rpc, methods=["POST"], name=f"{n}:rpc"),
        Route("/a2a/", rpc, methods=["POST"], name=f"{n}:rpc/"),  # clients that join "/" onto the interface URL
        *rest.routes(service, "/a2a/rest", call_for, f"{n}:rest"),
        Route("/a2a/agents/{agent}/.well-known/agent-card.json", agent_card, methods=["GET"], name=f"{n}:agent-card"),
        Route("/a2a/agents/{agent}", rpc, methods=["POST"], name=f"{n}:agent-rpc"),
        Route("/a2a/agents/{agent}/", rpc, methods=["POST"], name=f"{n}:agent-rpc/"),
        *rest.routes(service, "/a2a/agents/{agent}/rest", call_for, f"{n}:agent-rest"),
    ]


def refusal_body(path: str, http_status: int, message: str) -> dict[str, Any] | None:
    """The body a refused request to the A2A path ``path`` gets, in its binding's shape; None elsewhere.

    JSON-RPC answers with ``id`` null: a refusal comes before the request body is read.
    """
    if path != "/a2a" and not path.startswith("/a2a/"):
        return None
    err = CallerRefusedError(http_status, message)
    parts = path.strip("/").split("/")  # a2a[/agents/{name}][/rest/...]
    rest_at = 3 if len(parts) > 2 and parts[1] == "agents" else 1
    if len(parts) > rest_at and parts[rest_at] == "rest":
        return err.rest("1.0")
    if len(parts) <= rest_at:
        return {"jsonrpc": "2.0", "id": None, "error": err.jsonrpc("1.0")}
    return None  # not an A2A endpoint (cards and the key set are open): the gateway's own shape


def routes(options: A2AOptions | None = None) -> list[BaseRoute]:
    """The A2A routes with these options (default: ``A2AOptions.from_env()``)."""
    return build_routes(A2AService(options or A2AOptions.from_env()))


def mount(app: Starlette, options: A2AOptions | None = None) -> A2AService:
    """Serve A2A on ``app`` with these options (replacing any A2A routes it has)."""
    service = A2AService(options or A2AOptions.from_env())
    replace_routes(app, ROUTE_PREFIX, build_routes(service), service.close)
    return service
