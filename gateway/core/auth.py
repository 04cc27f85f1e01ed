"""The authentication seam: every surface turns a request's credentials into one ``Principal``.

``Authenticator.authenticate(authorization, api_key, audience=...)`` is the only entry point.
It knows nothing of protocols: a refusal is an ``AuthError`` carrying the HTTP status, the
RFC 6750 ``error`` and the scopes needed, and each face builds its own challenge from it
(MCP adds ``resource_metadata``, A2A its binding's error, ACP and ``/tasks`` a plain
``WWW-Authenticate: Bearer``).

Credentials, in order:

- ``Authorization: Bearer <value>``; else ``X-API-Key: <value>`` (API keys only). Any other
  scheme is a 401: presented credentials are never silently downgraded to anonymous.
- A bearer value shaped like a JWT (three base64url segments) is checked against the OIDC
  issuer when one is configured: algorithms RS256, ES256 and EdDSA only (``none`` and every
  ``HS*`` refused before any key is looked up, so a token "signed" with the issuer's public key
  as an HMAC secret never reaches a verifier), ``iss`` exact, ``aud`` (string or list) holding
  the expected audience (RFC 8707 canonical form: scheme and host case-insensitive, no trailing
  slash), ``exp`` and ``sub`` required, ``exp``/``nbf``/``iat`` with ``leeway_s`` of clock skew,
  RSA keys of at least 2048 bits. Header parameters that name other keys (``jku``, ``x5u``,
  ``jwk``) are ignored: keys come only from the issuer's ``jwks_uri``.
- Anything else is looked up among the API keys (SHA-256 digests, compared in constant time).

Principal ids are stable and their namespaces disjoint: a JWT caller is ``{iss}#{sub}`` (OIDC
Core 5.7: only the pair identifies a user; an issuer URL has no fragment, so ``#`` cannot be
ambiguous), an API key its configured ``principal`` name (no ``:``, ``#`` or spaces, never
``local`` or ``anonymous``), a DID caller its DID, the loopback quick start ``local``.

Keys: the issuer's discovery document (``{issuer}/.well-known/openid-configuration``, else
RFC 8414 ``/.well-known/oauth-authorization-server``) names the ``jwks_uri``; the key set is
fetched with async httpx (never blocking the loop), kept for ``jwks_max_age_s`` (then refreshed
in the background while the old keys keep serving), and refetched when a token names an unknown
``kid``, at most once per ``min_refresh_s``, all concurrent callers sharing one fetch. Validated
tokens are cached (LRU of ``cache_size`` entries keyed by the token's SHA-256) until their
``exp``: a repeated token costs one hash and one dict lookup. A key removed from the JWKS stops
new validations at once; tokens already cached stay valid until they expire.

Modes (``Config.effective_auth()`` picks one): ``local`` (loopback, nothing configured: every
request is ``LOCAL``, with every right), ``required`` (credentials or 401), ``optional``
(``--allow-anonymous`` with credentials configured: callers without any are ``ANONYMOUS``, who
has no rights of its own; bad credentials are still refused).
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import enum
import hashlib
import hmac
import logging
import re
import secrets
import time
import types
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import jwt
import yaml

from gateway.core.egress import Egress
from gateway.core.principal import ANONYMOUS, LOCAL, Principal
from gateway.core.settings import yaml_problem

log = logging.getLogger("interlace.auth")

ALGORITHMS = ("RS256", "ES256", "EdDSA")
_KEY_TYPES = {("RSA", None): "RS256", ("EC", "P-256"): "ES256", ("OKP", "Ed25519"): "EdDSA"}
_JWT_SHAPE = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
_NAME = re.compile(r"[^\s:#]+")
_SHA256_HEX = re.compile(r"[0-9a-fA-F]{64}")
MAX_TOKEN_CHARS = 16 * 1024
MAX_DOCUMENT_BYTES = 512 * 1024  # discovery documents and key sets


class AuthMode(enum.StrEnum):
    LOCAL = "local"  # loopback with nothing configured: everyone is LOCAL
    REQUIRED = "required"  # no credentials: 401
    OPTIONAL = "optional"  # no credentials: ANONYMOUS; bad credentials: 401


class AuthError(Exception):
    """A refusal, with what a face needs for its own challenge.

    ``status`` 401 (``error`` None: no credentials; ``"invalid_token"``: bad ones), 403
    (``"insufficient_scope"``, ``scopes`` = what is needed) or 503 (the issuer's keys could not be
    fetched: no challenge, the client's token may be fine).
    """

    def __init__(self, status: int, error: str | None, description: str, scopes: Iterable[str] = ()) -> None:
        super().__init__(description)
        self.status, self.error, self.description = status, error, description
        self.scopes = tuple(scopes)

    def challenge(self, scheme: str = "Bearer", **params: str | None) -> str:
        """An RFC 6750 ``WWW-Authenticate`` value; ``params`` (realm, resource_metadata...) go first."""
        fields = {**params}
        if self.error:
            fields["error"] = self.error
            fields["error_description"] = self.description
        if self.scopes:
            fields["scope"] = " ".join(self.scopes)
        parts = [f'{k}="{_quotable(v)}"' for k, v in fields.items() if v is not None]
        return f"{scheme} {', '.join(parts)}" if parts else scheme


def _quotable(value: str) -> str:
    # RFC 6750 3: %x20-21 / %x23-5B / %x5D-7E, so no quote, no backslash, nothing unprintable.
    return "".join(c if " " <= c <= "~" and c not in '"\\' else "'" if c == '"' else "?" for c in value)


def _missing() -> AuthError:
    return AuthError(401, None, "authentication required: send Authorization: Bearer <token or API key>")


def _invalid(description: str) -> AuthError:
    return AuthError(401, "invalid_token", description)


def require_scopes(principal: Principal, scopes: Iterable[str]) -> None:
    """403 ``insufficient_scope`` naming every scope the operation needs, unless all are held."""
    scopes = tuple(scopes)
    if not principal.has_scopes(scopes):
        raise AuthError(403, "insufficient_scope", "the token lacks a scope this operation needs", scopes)


# ---- API keys ---------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ApiKey:
    digest: bytes  # SHA-256 of the key
    principal: Principal


def load_api_keys(path: str | Path) -> tuple[ApiKey, ...]:
    """Parse a YAML list of ``{principal, key_sha256, groups, scopes}``; ValueError names the problem."""
    try:
        data = yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        raise ValueError(f"cannot read the API key file {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ValueError(f"the API key file {path} is not valid YAML{yaml_problem(exc)}") from None
    if not isinstance(data, list):
        raise ValueError(f"the API key file {path} must be a YAML list of {{principal, key_sha256, groups}}")
    keys: list[ApiKey] = []
    seen: set[bytes] = set()
    for i, entry in enumerate(data):
        where = f"{path}, entry {i + 1}"
        if not isinstance(entry, dict):
            raise ValueError(f"{where}: expected a mapping with principal, key_sha256 and groups")
        unknown = set(entry) - {"principal", "key_sha256", "groups", "scopes"}
        if unknown:
            raise ValueError(f"{where}: unknown field(s) {', '.join(sorted(map(str, unknown)))}")
        name, digest = entry.get("principal"), entry.get("key_sha256")
        if not isinstance(name, str) or not _NAME.fullmatch(name) or name in (LOCAL.id, ANONYMOUS.id):
            raise ValueError(
                f"{where}: principal must be a name without spaces, ':' or '#' (and not 'local' or 'anonymous')"
            )
        if not isinstance(digest, str) or not _SHA256_HEX.fullmatch(digest):
            raise ValueError(f"{where}: key_sha256 must be 64 hex digits (sha256sum of the key)")
        groups, scopes = entry.get("groups") or [], entry.get("scopes") or []
        for field, value in (("groups", groups), ("scopes", scopes)):
            if not isinstance(value, list) or not all(isinstance(g, str) and g for g in value):
                raise ValueError(f"{where}: {field} must be a list of names")
        raw = bytes.fromhex(digest)
        if raw in seen:
            raise ValueError(f"{where}: the same key appears twice")
        seen.add(raw)
        keys.append(ApiKey(raw, Principal(id=name, kind="api_key", groups=frozenset(groups), scopes=frozenset(scopes))))
    return tuple(keys)


# ---- the authenticator ------------------------------------------------------------------------


@lru_cache(maxsize=256)
def canonical_audience(uri: str) -> str:
    """RFC 8707 comparison form: lower-case scheme and host, no fragment, no trailing slash."""
    parts = urlsplit(uri.strip())
    if not parts.scheme or not parts.netloc:
        return uri.strip().rstrip("/")
    return urlunsplit((parts.scheme.lower(), parts.netloc.lower(), parts.path.rstrip("/"), parts.query, ""))


def _same_issuer(a: str, b: str) -> bool:
    """Exact, except that a root issuer with and without its trailing slash is one server."""
    return a == b or (a.rstrip("/") == b.rstrip("/") and urlsplit(a).path in ("", "/"))


def _claim(claims: Mapping[str, Any], path: str) -> Any:
    value: Any = claims
    for part in path.split("."):  # "realm_access.roles" reaches into nested claims
        if not isinstance(value, Mapping):
            return None
        value = value.get(part)
    return value


def _names(value: Any) -> set[str]:
    if isinstance(value, str):
        return set(value.split())
    if isinstance(value, list | tuple):
        return {v for v in value if isinstance(v, str) and v}
    return set()


@dataclasses.dataclass
class _Cached:
    principal: Principal
    exp: float
    audiences: frozenset[str]


class Authenticator:
    """Turns credentials into a Principal (see the module docstring for the rules)."""

    def __init__(
        self,
        *,
        mode: AuthMode = AuthMode.REQUIRED,
        issuer: str | None = None,
        audience: str | None = None,
        api_keys: str | Path | None = None,
        admin_group: str = "admin",
        groups_claims: Iterable[str] = ("groups", "roles"),
        leeway_s: float = 60.0,
        http: httpx.AsyncClient | None = None,
        egress: Egress | None = None,
        cache_size: int = 10_000,
        min_refresh_s: float = 30.0,
        jwks_max_age_s: float = 3600.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if issuer and not audience:
            raise ValueError("an issuer needs an audience: the URL tokens must be issued for")
        self.mode, self.issuer, self.audience = AuthMode(mode), issuer, audience
        self.admin_group, self.groups_claims = admin_group, tuple(groups_claims)
        self.leeway_s, self.cache_size = leeway_s, cache_size
        self.min_refresh_s, self.jwks_max_age_s, self.clock = min_refresh_s, jwks_max_age_s, clock
        self.api_keys_file = Path(api_keys) if api_keys else None
        self._api_keys: tuple[ApiKey, ...] = load_api_keys(self.api_keys_file) if self.api_keys_file else ()
        self._http, self._own_http = http, http is None
        # Discovery and keys are fetched under the gateway's egress policy; the issuer's host is the operator's.
        self._egress = (egress or Egress()).allowing(issuer)
        self._cache: OrderedDict[bytes, _Cached] = OrderedDict()
        self._keys: dict[str | None, jwt.PyJWK] = {}
        self._keys_at = 0.0  # monotonic time of the last good key set (0: none yet)
        self._attempt_at = float("-inf")  # monotonic time of the last fetch attempt
        self._fetch: asyncio.Task | None = None
        self._expected_iss: str | None = None  # the discovery document's spelling of the issuer
        self._jwks_uri: str | None = None
        self.metadata: dict[str, Any] | None = None  # the issuer's discovery document, once fetched
        self.stats = {"jwks_fetches": 0, "validations": 0, "cache_hits": 0}

    @classmethod
    def from_config(cls, config: Any, http: httpx.AsyncClient | None = None, **kw: Any) -> Authenticator:
        """From ``gateway.core.config.Config`` (its ``effective_auth`` and ``effective_audience``)."""
        return cls(
            mode=config.effective_auth(),
            issuer=config.auth_issuer,
            audience=config.effective_audience(),
            api_keys=config.api_keys,
            admin_group=config.admin_group,
            http=http,
            **kw,
        )

    # ---- the entry point ----

    async def authenticate(
        self, authorization: str | None, api_key: str | None = None, *, audience: str | None = None
    ) -> Principal:
        """The caller of a request with these ``Authorization`` / ``X-API-Key`` header values.

        ``audience`` overrides the configured one (MCP: its resource URL, RFC 8707).
        Raises AuthError.
        """
        if self.mode is AuthMode.LOCAL:
            return LOCAL
        if authorization:
            scheme, _, value = authorization.strip().partition(" ")
            value = value.strip()
            if scheme.lower() != "bearer":
                raise AuthError(
                    401,
                    None,
                    f"unsupported authorization scheme {scheme[:20]!r}: send Authorization: Bearer <token or API key>",
                )
            if not value:
                raise _invalid("the bearer value is empty")
            if len(value) > MAX_TOKEN_CHARS:
                raise _invalid(f"the bearer value is longer than {MAX_TOKEN_CHARS} characters")
            if self.issuer and _JWT_SHAPE.fullmatch(value):
                return await self._token(value, audience or self.audience)
            principal = self._api_key(value)
            if principal is None:
                raise _invalid(
                    "the bearer value is neither a valid token nor a known API key"
                    if self.issuer
                    else "unknown API key"
                )
            return principal
        if api_key:
            principal = self._api_key(api_key.strip())
            if principal is None:
                raise _invalid("unknown API key")
            return principal
        if self.mode is AuthMode.OPTIONAL:
            return ANONYMOUS
        raise _missing()

    def is_admin(self, principal: Principal) -> bool:
        """Whether ``principal`` is in the configured admin group (or is LOCAL)."""
        return principal.is_admin(self.admin_group)

    # ---- API keys ----

    def _api_key(self, value: str) -> Principal | None:
        digest = hashlib.sha256(value.encode()).digest()
        found = None
        for key in self._api_keys:  # every entry compared: the time taken says nothing about which matched
            if hmac.compare_digest(key.digest, digest):
                found = key.principal
        return found

    def reload(self) -> int:
        """Re-read the API key file; on a file that does not parse, keep the last good keys, log, raise."""
        if self.api_keys_file is None:
            return 0
        try:
            keys = load_api_keys(self.api_keys_file)
        except ValueError as exc:
            log.error("API keys not reloaded, keeping the last good set", extra={"reason": str(exc)})
            raise
        self._api_keys = keys
        log.info("API keys reloaded", extra={"keys": len(keys)})
        return len(keys)

    # ---- JWTs ----

    async def _token(self, token: str, audience: str | None) -> Principal:
        if not audience:
            raise ValueError("no audience to check tokens against")
        expected = canonical_audience(audience)
        fingerprint = hashlib.sha256(token.encode()).digest()
        hit = self._cache.get(fingerprint)
        if hit is not None:
            if self.clock() < hit.exp:
                if expected in hit.audiences:
                    self._cache.move_to_end(fingerprint)
                    self.stats["cache_hits"] += 1
                    return hit.principal
                raise _invalid(f"the token's audience does not include {audience}")
            del self._cache[fingerprint]
        principal, exp, audiences = await self._validate(token, audience, expected)
        self._cache[fingerprint] = _Cached(principal, exp, audiences)
        if len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return principal

    async def _validate(self, token: str, audience: str, expected: str) -> tuple[Principal, float, frozenset[str]]:
        self.stats["validations"] += 1
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise _invalid(f"malformed token: {exc}") from None
        alg = header.get("alg")
        if not isinstance(alg, str) or alg.lower() == "none":
            raise _invalid("unsigned tokens (alg none) are refused")
        if alg.upper().startswith("HS"):
            raise _invalid(f"symmetric algorithm {alg} refused: tokens must be signed with the issuer's private key")
        if alg not in ALGORITHMS:
            raise _invalid(f"algorithm {alg[:20]} refused: accepted are {', '.join(ALGORITHMS)}")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise _invalid("malformed token: kid must be a string")
        key = await self._key(kid, alg)
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[alg],
                issuer=self._expected_iss,
                leeway=self.leeway_s,
                options={"require": ["exp", "iss", "sub"], "verify_aud": False, "enforce_minimum_key_length": True},
            )
        except jwt.ExpiredSignatureError:
            raise _invalid("the token has expired") from None
        except jwt.ImmatureSignatureError as exc:
            raise _invalid(
                f"the token is not valid yet ({'iat' if 'iat' in str(exc) else 'nbf'} is in the future)"
            ) from None
        except jwt.InvalidIssuerError:
            raise _invalid(f"the token was not issued by {self._expected_iss}") from None
        except jwt.MissingRequiredClaimError as exc:
            raise _invalid(f"the token has no {exc.claim!r} claim") from None
        except jwt.InvalidSignatureError:
            raise _invalid("the token's signature does not verify") from None
        except jwt.InvalidKeyError as exc:
            raise _invalid(f"the issuer's key is refused: {exc}") from None
        except jwt.PyJWTError as exc:
            raise _invalid(f"malformed token: {exc}") from None
        audiences = frozenset(canonical_audience(a) for a in _names(claims.get("aud")))
        if expected not in audiences:
            raise _invalid(f"the token's audience does not include {audience}")
        sub = claims["sub"]
        if not isinstance(sub, str) or not sub:
            raise _invalid("the token's sub claim must be a non-empty string")
        groups: set[str] = set()
        for path in self.groups_claims:
            groups |= _names(_claim(claims, path))
        scopes = _names(claims.get("scope")) | _names(claims.get("scp"))
        principal = Principal(
            id=f"{claims['iss']}#{sub}",
            kind="jwt",
            groups=frozenset(groups),
            scopes=frozenset(scopes),
            claims=types.MappingProxyType(claims),
        )
        return principal, float(claims["exp"]), audiences

    # ---- keys ----

    async def _key(self, kid: str | None, alg: str) -> jwt.PyJWK:
        now = time.monotonic()
        if not self._keys_at:
            await self._refresh(min(self.min_refresh_s, 5.0))
        elif (
            now - self._keys_at > self.jwks_max_age_s
            and self._fetch is None
            and now - self._attempt_at >= self.min_refresh_s
        ):
            self._start_fetch()  # stale: refresh in the background, keep serving the keys we have
        key = self._pick(kid, alg)
        if key is None and self._keys_at:
            await self._refresh(self.min_refresh_s)  # an unknown kid: maybe the issuer rotated
            key = self._pick(kid, alg)
        if key is None:
            if not self._keys_at:
                raise AuthError(503, None, "the token issuer's keys could not be fetched; try again later")
            raise _invalid(f"no key {kid!r} at the issuer" if kid else "the token names no key (kid)")
        if key.algorithm_name != alg:
            raise _invalid(f"key {kid!r} is for {key.algorithm_name}, not {alg}")
        return key

    def _pick(self, kid: str | None, alg: str) -> jwt.PyJWK | None:
        if kid is not None:
            return self._keys.get(kid)
        matching = [k for k in self._keys.values() if k.algorithm_name == alg]
        return matching[0] if len(matching) == 1 else None  # no kid: only if unambiguous

    async def _refresh(self, min_interval: float) -> None:
        """Fetch the key set unless one was tried less than ``min_interval`` ago; share a fetch in flight."""
        if self._fetch is None:
            if time.monotonic() - self._attempt_at < min_interval:
                return
            self._start_fetch()
        assert self._fetch is not None
        await asyncio.shield(self._fetch)  # a cancelled caller does not cancel the others' fetch

    def _start_fetch(self) -> None:
        self._attempt_at = time.monotonic()
        self._fetch = asyncio.get_running_loop().create_task(self._fetch_keys())
        self._fetch.add_done_callback(self._fetched)

    def _fetched(self, task: asyncio.Task) -> None:
        self._fetch = None

    async def refresh(self) -> None:
        """Fetch the issuer's keys now (at start-up, say), unless a fetch is already under way."""
        await self._refresh(0.0)

    async def _fetch_keys(self) -> None:
        try:
            if self._jwks_uri is None:
                await self._discover()
            assert self._jwks_uri is not None
            jwks = await self._get_json(self._jwks_uri)
            self.stats["jwks_fetches"] += 1
            keys = self._parse_jwks(jwks)
        except Exception as exc:  # noqa: BLE001 - any failure leaves the old keys (or a 503) in place
            log.warning("token issuer keys not fetched", extra={"issuer": self.issuer, "reason": str(exc)})
            return
        if not keys:
            log.warning("the token issuer's key set has no usable key", extra={"issuer": self.issuer})
            return
        self._keys, self._keys_at = keys, time.monotonic()
        log.info("token issuer keys fetched", extra={"issuer": self.issuer, "kids": sorted(map(str, keys))})

    async def _discover(self) -> None:
        assert self.issuer is not None
        base = self.issuer.rstrip("/")
        parts = urlsplit(base)
        urls = [
            f"{base}/.well-known/openid-configuration",
            f"{parts.scheme}://{parts.netloc}/.well-known/oauth-authorization-server{parts.path}",
        ]
        problems = []
        for url in urls:
            try:
                doc = await self._get_json(url)
            except (httpx.HTTPError, ValueError) as exc:
                problems.append(f"{url}: {exc}")
                continue
            iss, jwks_uri = doc.get("issuer"), doc.get("jwks_uri")
            if not isinstance(iss, str) or not _same_issuer(iss, self.issuer):
                raise ValueError(f"{url} names issuer {iss!r}, not {self.issuer!r}")
            if not isinstance(jwks_uri, str) or urlsplit(jwks_uri).scheme not in ("http", "https"):
                raise ValueError(f"{url} has no jwks_uri")
            self.metadata, self._expected_iss, self._jwks_uri = doc, iss, jwks_uri
            return
        raise ValueError("no discovery document: " + "; ".join(problems))

    async def _get_json(self, url: str) -> dict[str, Any]:
        if self._http is None:
            self._http = self._egress.httpx_client(timeout=10.0)
        resp = await self._http.get(url, headers={"Accept": "application/json"})
        if resp.status_code != 200:
            raise ValueError(f"HTTP {resp.status_code}")
        if len(resp.content) > MAX_DOCUMENT_BYTES:
            raise ValueError(f"larger than {MAX_DOCUMENT_BYTES} bytes")
        doc = resp.json()
        if not isinstance(doc, dict):
            raise ValueError("not a JSON object")
        return doc

    def _parse_jwks(self, jwks: dict[str, Any]) -> dict[str | None, jwt.PyJWK]:
        keys: dict[str | None, jwt.PyJWK] = {}
        for jwk in jwks.get("keys") or []:
            if not isinstance(jwk, dict) or jwk.get("use", "sig") != "sig":
                continue
            alg = _KEY_TYPES.get((jwk.get("kty"), jwk.get("crv") if jwk.get("kty") != "RSA" else None))
            if alg is None or jwk.get("alg", alg) != alg:
                continue  # a key type or algorithm this gateway does not accept
            try:
                key = jwt.PyJWK(jwk, alg)
            except jwt.PyJWTError as exc:
                log.warning("unusable key in the issuer's key set", extra={"kid": jwk.get("kid"), "reason": str(exc)})
                continue
            kid = jwk.get("kid")
            keys[kid if isinstance(kid, str) else None] = key
        return keys

    async def aclose(self) -> None:
        if self._fetch is not None:
            self._fetch.cancel()
        if self._own_http and self._http is not None:
            await self._http.aclose()


def api_key_digest(key: str) -> str:
    """The ``key_sha256`` of an API key, as the key file stores it."""
    return hashlib.sha256(key.encode()).hexdigest()


def new_api_key() -> str:
    """A fresh random API key (256 bits, URL-safe)."""
    return base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode()
