"""Who is calling, on every route: the roof's use of the core authentication seam.

With authentication configured (``--auth-issuer`` and/or ``--api-keys``; see
``gateway.core.auth``), every request passes ``CallerAuthentication`` before any route sees it:
its principal is put in ``request.state.principal``, or it is refused with 401 (no or bad
credentials) or 503 (the issuer's keys cannot be fetched) and an RFC 6750 ``WWW-Authenticate``
challenge. On a loopback bind with nothing configured the middleware is not installed and every
request is ``LOCAL`` (``gateway.core.principal.principal_of``), so the quick start costs nothing.

Routes that need no caller credentials, or check their own:

- open: ``/healthz``, ``/readyz``, ``/metrics`` and the public discovery documents
  (``/.well-known/*``: the gateway's A2A card, did.json, RFC 9728 metadata; per-agent A2A cards
  and the key set that signs them, ``/a2a/jwks.json``);
- their own authentication: ``/gossip/*`` (envelopes signed by node keys), ``/bus/*`` (workers:
  their agent's signature, the worker token or loopback, see ``gateway.worker_api``), registry
  writes (agent-signed records plus the admission policy; the registration token travels as
  ``Authorization: Bearer`` there), ``/anp/*`` (DIDWba) and the console, ``/ui`` (a session
  cookie from its sign-in page, or the same credentials as everywhere; ``gateway.console``).

Requests from other gateway nodes (a task forwarded to the node its agent lives at: submit,
follow, continue, cancel; see ``gateway.cluster``) carry no caller credentials: they are signed
with the sending node's ``did:key`` (RFC 9421, ``gateway.core.httpsig``) and name the task's
original owner in ``Interlace-On-Behalf-Of: {"id": ..., "groups": [...]}``, which the signature
must cover. ``NodeSignatures`` accepts such a request only from a trusted node (``--trust`` when
given, else a live gossip member: ``Cluster.trusts``); its principal is then the asserted owner
(kind ``forwarded``, the node's DID in its claims; never ``system``, the gateway's own), or the
node itself (``Principal.for_did``) when it asserts none. A signed request is judged by its
signature alone: a bad, expired, replayed or untrusted one is a 401, whatever else it carries.
On a request without a signature ``Interlace-On-Behalf-Of`` means nothing: the caller is
whoever its credentials say.

MCP is an OAuth 2.1 resource server (MCP authorization, 2025-11-25 and 2026-07-28): its resource
is ``{public base}/mcp``, tokens must name it as their audience (RFC 8707), and with an issuer
configured ``/.well-known/oauth-protected-resource/mcp`` (and the root form) serves RFC 9728
metadata that every 401 on ``/mcp`` points at (``resource_metadata``).

Refusal bodies: MCP's are the MCP SDK's resource-server shape; an adapter may give its own paths
its binding's shape through a ``Refusal`` renderer passed to the middleware (A2A does: JSON-RPC
errors and ``google.rpc.Status``; ACP its ``{code, message, data}`` error); every other refusal is
``{"error": {"code", "message"}}``.
The challenge headers are the same everywhere.
"""

from __future__ import annotations

import json
import logging
import types
from collections.abc import Callable, Sequence
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.core.auth import Authenticator, AuthError
from gateway.core.http import BodyTooLarge, buffered_body, public_base_url, too_large
from gateway.core.httpsig import DidKeyRequests, SignatureError, is_signed, request_urls
from gateway.core.principal import ANONYMOUS, SYSTEM, Principal

log = logging.getLogger("interlace.authn")

MCP_PATH = "/mcp"
PRM_PATHS = ("/.well-known/oauth-protected-resource/mcp", "/.well-known/oauth-protected-resource")
_OPEN = ("/healthz", "/readyz", "/metrics", "/a2a/jwks.json")
_OWN_AUTH_PREFIXES = ("/gossip/", "/bus/", "/anp/", "/ui/")
ON_BEHALF_OF = "interlace-on-behalf-of"  # the owner a node asserts (JSON), covered by its signature
_MAX_ASSERTED_GROUPS = 64

# (path, HTTP status, description) -> the refusal body for that path, or None: not one of mine.
Refusal = Callable[[str, int, str], dict[str, Any] | None]


def needs_credentials(method: str, path: str) -> bool:
    """Whether a request must present caller credentials (see the module docstring)."""
    if path in _OPEN or path.startswith("/.well-known/") or path.endswith("/.well-known/agent-card.json"):
        return False
    if path.startswith(_OWN_AUTH_PREFIXES) or path in ("/anp", "/ui"):
        return False
    return not (path.startswith("/registry/agents") and method in ("POST", "DELETE"))


def mcp_resource(request: Request) -> str:
    """The MCP endpoint's resource identifier (RFC 8707 / RFC 9728 ``resource``)."""
    return public_base_url(request) + MCP_PATH


def on_behalf_of(principal_id: str, groups: Sequence[str] = ()) -> dict[str, str]:
    """The header a node sends to assert a task's owner (see the module docstring)."""
    return {ON_BEHALF_OF: json.dumps({"id": principal_id, "groups": sorted(groups)}, separators=(",", ":"))}


class NodeSignatures:
    """Requests signed by other gateway nodes (module docstring). ``trusts(did)`` says whether
    a node DID may assert owners here; None: this gateway trusts no node (it does not gossip)."""

    def __init__(
        self,
        verifier: DidKeyRequests,
        trusts: Callable[[str], bool] | None,
        *,
        public_url: str | None = None,
        max_body_bytes: int = 4 * 1024 * 1024,
    ) -> None:
        self.verifier, self.trusts, self.public_url, self.max_body_bytes = verifier, trusts, public_url, max_body_bytes

    async def principal(self, request: Request, body: bytes) -> Principal:
        """The principal of a signed request; AuthError (401) when it may not be believed."""
        urls = request_urls(str(request.url), self.public_url)
        try:
            did = await self.verifier.verify(request.method, urls, request.headers, body, must_cover=[ON_BEHALF_OF])
        except SignatureError as exc:
            raise AuthError(401, "invalid_token", f"the request signature is refused: {exc}") from None
        if self.trusts is None or not self.trusts(did):
            raise AuthError(401, "invalid_token", f"{did} is not a trusted gateway node")
        asserted = request.headers.get(ON_BEHALF_OF)
        if asserted is None:
            return Principal.for_did(did)
        owner_id, groups = _asserted_owner(asserted)
        return Principal(id=owner_id, kind="forwarded", groups=groups, claims=types.MappingProxyType({"node": did}))


def _asserted_owner(value: str) -> tuple[str, frozenset[str]]:
    try:
        data = json.loads(value)
    except ValueError:
        data = None
    owner_id = data.get("id") if isinstance(data, dict) else None
    groups = data.get("groups", []) if isinstance(data, dict) else None
    if (
        not isinstance(owner_id, str)
        or not 0 < len(owner_id) <= 512
        or owner_id == SYSTEM.id  # the home's own tasks are no one else's
        or not isinstance(groups, list)
        or len(groups) > _MAX_ASSERTED_GROUPS
        or not all(isinstance(g, str) and g for g in groups)
    ):
        raise AuthError(401, "invalid_token", 'Interlace-On-Behalf-Of must be {"id": "...", "groups": ["..."]}')
    return owner_id, frozenset(groups)


class CallerAuthentication:
    """ASGI middleware: authenticate every request that needs credentials (module docstring)."""

    def __init__(
        self,
        app: ASGIApp,
        authenticator: Authenticator,
        refusals: Sequence[Refusal] = (),
        nodes: NodeSignatures | None = None,
    ) -> None:
        self.app, self.auth, self.refusals, self.nodes = app, authenticator, tuple(refusals), nodes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not needs_credentials(scope["method"], scope["path"]):
            # Whoever calls an open or self-authenticating route is nobody in particular (such a
            # route names its own principal, as ANP does for a DID), never the quick start's LOCAL.
            scope.setdefault("state", {})["principal"] = ANONYMOUS
            return await self.app(scope, receive, send)
        request = Request(scope)
        is_mcp = scope["path"] == MCP_PATH or scope["path"].startswith(MCP_PATH + "/")
        try:
            if is_signed(request.headers):
                principal, receive = await self._node(request, receive)
            else:
                principal = await self.auth.authenticate(
                    request.headers.get("authorization"),
                    request.headers.get("x-api-key"),
                    audience=mcp_resource(request) if is_mcp else None,
                )
        except AuthError as exc:
            return await self._refuse(exc, request, is_mcp)(scope, receive, send)
        except BodyTooLarge:  # only a signed request's body is read here (self.nodes is set)
            return await too_large(self.nodes.max_body_bytes)(scope, receive, send)
        if principal is None:
            return  # the client went away while its body was read
        scope.setdefault("state", {})["principal"] = principal
        await self.app(scope, receive, send)

    async def _node(self, request: Request, receive: Receive) -> tuple[Principal | None, Receive]:
        """A signed request: its body is read here (the signature covers its digest) and replayed."""
        if self.nodes is None:
            raise AuthError(401, "invalid_token", "this gateway accepts no signed requests here")
        body = b""
        if request.method not in ("GET", "HEAD", "OPTIONS"):
            got = await buffered_body(request.scope, receive, self.nodes.max_body_bytes)
            if got is None:
                return None, receive
            body, receive = got
        try:
            return await self.nodes.principal(request, body), receive
        except AuthError as exc:
            log.info("signed request refused", extra={"path": request.url.path, "reason": exc.description})
            raise

    def _refuse(self, exc: AuthError, request: Request, is_mcp: bool) -> Response:
        headers = {}
        if exc.status != 503:  # the issuer is down: the client's token may be fine, no challenge
            params: dict[str, Any] = {}
            if is_mcp and self.auth.issuer:
                params["resource_metadata"] = public_base_url(request) + PRM_PATHS[0]
            headers["WWW-Authenticate"] = exc.challenge(**params)
        else:
            headers["Retry-After"] = "5"
        if is_mcp:  # the shape the MCP SDK's resource servers answer with
            body: dict[str, Any] | None = {"error": exc.error or "unauthorized", "error_description": exc.description}
        else:
            body = next(
                (b for r in self.refusals if (b := r(request.scope["path"], exc.status, exc.description)) is not None),
                None,
            )
        if body is None:
            code = {401: "unauthorized", 403: "forbidden", 503: "unavailable"}.get(exc.status, "unauthorized")
            body = {"error": {"code": code, "message": exc.description}}
        return JSONResponse(body, status_code=exc.status, headers=headers)


def protected_resource_routes(authenticator: Authenticator) -> list[Route]:
    """RFC 9728 metadata of the MCP resource, when an issuer is configured (it must name one)."""
    if not authenticator.issuer:
        return []

    async def metadata(request: Request) -> Response:
        return JSONResponse(
            {
                "resource": mcp_resource(request),
                "authorization_servers": [authenticator.issuer],
                "bearer_methods_supported": ["header"],
                "resource_name": "Interlace gateway (MCP)",
            }
        )

    return [Route(path, metadata, methods=["GET"]) for path in PRM_PATHS]
