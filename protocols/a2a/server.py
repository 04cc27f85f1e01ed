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

Cards are open (no credentials needed) but list only what their caller may call: a card request
that presents credentials (``Authorization`` / ``X-API-Key``, as the a2a-sdk client sends them on
every request) is for that caller, one without is anonymous, and bad credentials get a 401 with
a ``WWW-Authenticate`` challenge (``presented_principal``). An agent the caller may not call has
no card (404, as an unknown agent). A card made for an authenticated caller is ``Cache-Control:
private``, and every card varies on ``Authorization`` and ``X-API-Key``.

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

from gateway.core.auth import AuthError
from gateway.core.http import error_response, public_base_url, replace_routes
from gateway.core.principal import Principal, presented_principal, principal_of
from gateway.core.runtime import UnknownAgent
from protocols.a2a import jsonrpc, rest
from protocols.a2a.card import jwks
from protocols.a2a.errors import CallerRefusedError
from protocols.a2a.service import A2ACall, A2AOptions, A2AService
from protocols.a2a.wire import V10, Dialect

ROUTE_PREFIX = "a2a"


def build_routes(service: A2AService) -> list[BaseRoute]:
    def call_for(request: Request, dialect: Dialect, principal: Principal | None = None) -> A2ACall:
        base = public_base_url(request, service.options.public_url)
        agent = request.path_params.get("agent")
        return A2ACall(request.app.state.runtime, agent, dialect, base, principal or principal_of(request))

    async def card(request: Request) -> Response:
        """The gateway's card, or one agent's, for whoever asks (module docstring)."""
        try:
            principal = await presented_principal(request)
        except AuthError as exc:
            return _refused(exc)
        call = call_for(request, V10, principal)
        try:
            body = await service.card(call)
        except UnknownAgent:
            return error_response(404, "not_found", f"no agent named {call.agent!r}")
        key = f"{'gateway' if call.agent is None else f'agent:{call.agent}'}@{principal.id}"
        return service.cards.response(request, key, body, private=principal.kind != "anonymous")

    async def key_set(request: Request) -> Response:
        key = service.identity(request.app.state.runtime)
        return JSONResponse(jwks(key), headers={"Cache-Control": "public, max-age=3600"})

    async def rpc(request: Request) -> Response:
        return await jsonrpc.handle(service, request, lambda d: call_for(request, d))

    n = ROUTE_PREFIX
    return [
        Route("/.well-known/agent-card.json", card, methods=["GET"], name=f"{n}:card"),
        Route("/a2a/.well-known/agent-card.json", card, methods=["GET"], name=f"{n}:card2"),
        Route("/a2a/jwks.json", key_set, methods=["GET"], name=f"{n}:jwks"),
        Route("/a2a", rpc, methods=["POST"], name=f"{n}:rpc"),
        Route("/a2a/", rpc, methods=["POST"], name=f"{n}:rpc/"),  # clients that join "/" onto the interface URL
        *rest.routes(service, "/a2a/rest", call_for, f"{n}:rest"),
        Route("/a2a/agents/{agent}/.well-known/agent-card.json", card, methods=["GET"], name=f"{n}:agent-card"),
        Route("/a2a/agents/{agent}", rpc, methods=["POST"], name=f"{n}:agent-rpc"),
        Route("/a2a/agents/{agent}/", rpc, methods=["POST"], name=f"{n}:agent-rpc/"),
        *rest.routes(service, "/a2a/agents/{agent}/rest", call_for, f"{n}:agent-rest"),
    ]


def _refused(exc: AuthError) -> Response:
    """A card request with bad credentials: refused as the gateway refuses them anywhere."""
    if exc.status == 503:  # the issuer is down: the client's token may be fine, no challenge
        return error_response(503, "unavailable", exc.description, headers={"Retry-After": "5"})
    code = "forbidden" if exc.status == 403 else "unauthorized"
    return error_response(exc.status, code, exc.description, headers={"WWW-Authenticate": exc.challenge()})


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
