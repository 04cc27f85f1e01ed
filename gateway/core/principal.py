"""Who is calling: the ``Principal`` every face hands the runtime, and how to get it from a request.

Principals come from ``gateway.core.auth`` (JWTs, API keys), DID signatures (ANP callers, nodes,
workers) or, when the gateway authenticates nobody, are ``LOCAL``. The roof's authentication
middleware puts the caller in ``request.state.principal``; adapters read it with
``principal_of`` and act for it through ``Runtime.acting_for``. An open route whose answer
depends on who asks (an A2A card) takes ``presented_principal`` instead.
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Iterable, Mapping
from typing import Any

from starlette.requests import HTTPConnection


@dataclasses.dataclass(frozen=True)
class Principal:
    """Who is calling. ``claims`` holds verified claims only (a read-only view), never a token."""

    id: str
    kind: str  # "jwt" | "api_key" | "did" | "anonymous" | "system" | "forwarded" (asserted by a trusted node)
    groups: frozenset[str] = frozenset()
    scopes: frozenset[str] = frozenset()
    claims: Mapping[str, Any] = dataclasses.field(
        default_factory=lambda: types.MappingProxyType({}), compare=False, hash=False, repr=False
    )
    unrestricted: bool = False  # LOCAL and SYSTEM: every right, whatever the admin group is called

    def is_admin(self, admin_group: str = "admin") -> bool:
        return self.unrestricted or admin_group in self.groups

    def has_scopes(self, scopes: Iterable[str]) -> bool:
        return self.unrestricted or set(scopes) <= self.scopes

    @classmethod
    def for_did(cls, did: str, groups: Iterable[str] = ()) -> Principal:
        """An ANP caller, node or worker, named by the DID its signature proved."""
        return cls(id=did, kind="did", groups=frozenset(groups))


LOCAL = Principal(id="local", kind="anonymous", unrestricted=True)
ANONYMOUS = Principal(id="anonymous", kind="anonymous")
# The gateway itself (push dispatch, forwarding, maintenance): never a caller's principal.
SYSTEM = Principal(id="system", kind="system", unrestricted=True)


def principal_of(request: HTTPConnection) -> Principal:
    """The caller of ``request`` (``LOCAL`` when the gateway authenticates nobody)."""
    return getattr(request.state, "principal", LOCAL)


async def presented_principal(request: HTTPConnection) -> Principal:
    """The caller of an open route whose answer depends on who asks (a discovery document, such
    as an A2A card): whoever the credentials it presents prove (``Authorization`` or
    ``X-API-Key``; a ``gateway.core.auth.AuthError`` when they are not valid, as on any other
    route), else ``principal_of(request)`` (anonymous, or the quick start's local principal).
    The roof keeps its authenticator in ``app.state.authenticator`` (None: it authenticates
    nobody)."""
    authenticator = getattr(request.app.state, "authenticator", None)
    authorization, api_key = request.headers.get("authorization"), request.headers.get("x-api-key")
    if authenticator is None or not (authorization or api_key):
        return principal_of(request)
    return await authenticator.authenticate(authorization, api_key)
