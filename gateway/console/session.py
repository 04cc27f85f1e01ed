"""Who is using the console, and proof that a state change comes from its own pages.

A browser cannot attach ``Authorization`` to a page it navigates to, so with authentication
configured the console has a login page: the user pastes an API key or an access token, the
gateway's authenticator checks it exactly as on every other route, and the console sets a
session cookie that names the principal it proved (id, kind, groups), never the credential
itself. The cookie is ``HttpOnly``, ``SameSite=Strict``, ``Secure`` when the request came over
HTTPS, scoped to ``/ui``, signed with HMAC-SHA256 under a key this process draws at start (so a
restart signs everyone out), and expires after ``SESSION_S`` or with the token, whichever is
first. A request may also present ``Authorization: Bearer`` itself (scripts, tests).

Every state-changing request (``POST`` under ``/ui``) must carry ``X-CSRF-Token``: an HMAC of the
session (or of ``local`` on a gateway that authenticates nobody) that only the console's own
pages hold, since another site cannot read them. The gateway's cross-site guard refuses simple
cross-site POSTs as well.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass

from starlette.requests import Request

from gateway.core.auth import AuthError
from gateway.core.principal import Principal, presented_principal, principal_of

COOKIE = "interlace_console"
SESSION_S = 8 * 3600


@dataclass(frozen=True)
class Visitor:
    """A console user: the principal, and the session its CSRF token is bound to."""

    principal: Principal
    session: str  # the cookie value, "bearer:<digest>" or "local"


class Sessions:
    def __init__(self) -> None:
        self._key = secrets.token_bytes(32)

    def _sign(self, payload: bytes) -> str:
        return base64.urlsafe_b64encode(hmac.new(self._key, payload, hashlib.sha256).digest()).decode().rstrip("=")

    def issue(self, principal: Principal) -> str:
        """A cookie value for ``principal`` (its expiry: the session's or the token's, the earlier)."""
        expires = time.time() + SESSION_S
        token_exp = principal.claims.get("exp") if principal.claims else None
        if isinstance(token_exp, (int, float)):
            expires = min(expires, float(token_exp))
        body = {"id": principal.id, "kind": principal.kind, "groups": sorted(principal.groups), "exp": int(expires)}
        payload = base64.urlsafe_b64encode(json.dumps(body, separators=(",", ":")).encode()).decode().rstrip("=")
        return f"{payload}.{self._sign(payload.encode())}"

    def read(self, cookie: str | None) -> Principal | None:
        """The principal a valid, unexpired cookie names; None otherwise."""
        if not cookie or "." not in cookie or len(cookie) > 4096:
            return None
        payload, _, mac = cookie.rpartition(".")
        if not hmac.compare_digest(mac, self._sign(payload.encode())):
            return None
        try:
            body = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        except ValueError:
            return None
        if not isinstance(body, dict) or body.get("exp", 0) < time.time():
            return None
        return Principal(id=str(body["id"]), kind=str(body["kind"]), groups=frozenset(body.get("groups", ())))

    def csrf(self, session: str) -> str:
        return self._sign(b"csrf:" + session.encode())

    def check_csrf(self, request: Request, visitor: Visitor) -> bool:
        given = request.headers.get("x-csrf-token", "")
        return bool(given) and hmac.compare_digest(given, self.csrf(visitor.session))


async def visitor_of(request: Request, sessions: Sessions) -> Visitor | None:
    """The console's user for this request; None when it must sign in first. Raises AuthError for
    credentials presented in the request that are not valid."""
    authenticator = request.app.state.authenticator
    if authenticator is None:  # a loopback gateway that authenticates nobody: the local principal
        return Visitor(principal_of(request), "local")
    presented = request.headers.get("authorization") or request.headers.get("x-api-key")
    if presented:  # scripts and tests: the credentials every other route takes
        digest = hashlib.sha256(presented.encode()).hexdigest()[:32]
        return Visitor(await presented_principal(request), f"bearer:{digest}")
    cookie = request.cookies.get(COOKIE)
    principal = sessions.read(cookie)
    return Visitor(principal, cookie) if principal is not None else None


async def sign_in(request: Request, credential: str) -> Principal:
    """The principal an API key or access token proves (AuthError when it proves none)."""
    credential = credential.strip()
    if not credential:
        raise AuthError(401, "invalid_token", "paste an API key or an access token")
    return await request.app.state.authenticator.authenticate(f"Bearer {credential}")
