"""Who is calling: the ``Principal`` every face hands the runtime, and how to get it from a request.

Principals come from ``gateway.core.auth`` (JWTs, API keys), DID signatures (ANP callers, nodes,
workers) or, when the gateway authenticates nobody, are ``LOCAL``. The roof's authentication
middleware puts the caller in ``request.state.principal``; adapters read it with
``principal_of`` and act for it through ``Runtime.acting_for``.
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
