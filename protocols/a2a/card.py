"""Agent cards: building, signing (detached JWS, EdDSA over the RFC 8785 form) and HTTP caching.

A card is built per request from the routable agents and the public base URL, so cards stay
right behind a proxy. Signing follows A2A 1.0 §8.4: the JWS payload is the JCS form of the card
without ``signatures`` and with empty strings, lists and objects dropped (as the SDKs do); the
protected header is ``{"alg": "EdDSA", "kid", "jku", "typ": "JOSE"}``. The legacy 0.3 fields
(``url``, ``preferredTransport`` ...) are added after signing, as the Python SDK does, because
a 1.0 verifier never sees them.

Security (A2A 1.0 §4.5, §7.4): with caller authentication configured the card declares how to
authenticate (``security_declaration``): ``bearer`` (an HTTP Bearer JWT from the OIDC issuer) and
``oidc`` (the issuer's discovery URL) when an issuer is configured, ``apiKey`` (header
``X-API-Key``) when API keys are; each is one alternative in ``securityRequirements``. The 0.3
form (``add_legacy_fields``) adds ``security`` and merges the OpenAPI-style keys (``type``, ``in``)
into each scheme beside the 1.0 ones, as the Python SDK's dual cards do; the values are the same,
so a 1.3 SDK that reads the 0.3 keys parses the very scheme that was signed.

Caching: a weak ETag over the served bytes, ``Last-Modified`` (when this node first served that
content to that caller), ``Cache-Control: public, max-age=N`` (``private`` for a card made for an
authenticated caller: cards list what their caller may call), ``Vary: Authorization,
X-API-Key``; ``If-None-Match`` / ``If-Modified-Since`` get 304.
"""

from __future__ import annotations

import email.utils
import hashlib
import json
import time
from typing import Any

import rfc8785
from starlette.requests import Request
from starlette.responses import Response

from registry.identity import Identity, b64url_encode

JSONRPC, HTTP_JSON = "JSONRPC", "HTTP+JSON"
API_KEY_HEADER = "X-API-Key"
# 1.0 scheme key -> (0.3 ``type``, 1.0 field renamed in 0.3: (1.0 name, 0.3 name))
_V03_SCHEME = {
    "httpAuthSecurityScheme": ("http", None),
    "openIdConnectSecurityScheme": ("openIdConnect", None),
    "apiKeySecurityScheme": ("apiKey", ("location", "in")),
}


def _clean(value: Any) -> Any:
    if isinstance(value, dict):
        out = {k: c for k, v in value.items() if (c := _clean(v)) is not None}
        return out or None
    if isinstance(value, list):
        out_list = [c for v in value if (c := _clean(v)) is not None]
        return out_list or None
    if value == "" and isinstance(value, str):
        return None
    return value


def canonical_bytes(card: dict[str, Any]) -> bytes:
    body = {k: v for k, v in card.items() if k != "signatures"}
    return rfc8785.dumps(_clean(body) or {})


def verification_method(identity: Identity) -> str:
    return f"{identity.did}#{identity.did[len('did:key:') :]}"


def jwks(identity: Identity) -> dict[str, Any]:
    return {
        "keys": [
            {
                "kty": "OKP",
                "crv": "Ed25519",
                "x": b64url_encode(bytes(identity.verify_key)),
                "kid": verification_method(identity),
                "alg": "EdDSA",
                "use": "sig",
            }
        ]
    }


def sign_card(card: dict[str, Any], identity: Identity, jku: str | None = None) -> dict[str, Any]:
    header: dict[str, Any] = {"alg": "EdDSA", "kid": verification_method(identity), "typ": "JOSE"}
    if jku:
        header["jku"] = jku
    protected = b64url_encode(json.dumps(header, separators=(",", ":"), sort_keys=True).encode())
    signing_input = f"{protected}.{b64url_encode(canonical_bytes(card))}".encode("ascii")
    signature = b64url_encode(identity.sign(signing_input))
    return {**card, "signatures": [{"protected": protected, "signature": signature}]}


def build_card(
    *,
    name: str,
    description: str,
    version: str,
    rpc_url: str,
    rest_url: str,
    skills: list[dict[str, Any]],
    input_modes: list[str],
    output_modes: list[str],
    streaming: bool,
    push: bool,
    extended: bool,
    v03: bool,
    provider: dict[str, str] | None = None,
    documentation_url: str | None = None,
) -> dict[str, Any]:
    interfaces = [
        {"url": rpc_url, "protocolBinding": JSONRPC, "protocolVersion": "1.0"},
        {"url": rest_url, "protocolBinding": HTTP_JSON, "protocolVersion": "1.0"},
    ]
    if v03:
        interfaces += [
            {"url": rpc_url, "protocolBinding": JSONRPC, "protocolVersion": "0.3"},
            {"url": rest_url, "protocolBinding": HTTP_JSON, "protocolVersion": "0.3"},
        ]
    card: dict[str, Any] = {
        "name": name,
        "description": description,
        "supportedInterfaces": interfaces,
        "version": version,
        "capabilities": {"streaming": streaming, "pushNotifications": push, "extendedAgentCard": extended},
        "defaultInputModes": input_modes,
        "defaultOutputModes": output_modes,
        "skills": skills,
    }
    if provider:
        card["provider"] = provider
    if documentation_url:
        card["documentationUrl"] = documentation_url
    return card


def security_declaration(issuer: str | None, api_keys: bool) -> dict[str, Any]:
    """The card's ``securitySchemes`` and ``securityRequirements`` (1.0 names); empty without auth."""
    schemes: dict[str, Any] = {}
    if issuer:
        schemes["bearer"] = {
            "httpAuthSecurityScheme": {
                "scheme": "Bearer",
                "bearerFormat": "JWT",
                "description": f"A JWT issued by {issuer}",
            }
        }
        schemes["oidc"] = {
            "openIdConnectSecurityScheme": {
                "openIdConnectUrl": issuer.rstrip("/") + "/.well-known/openid-configuration",
                "description": "Tokens from this OpenID Connect issuer, sent as Authorization: Bearer",
            }
        }
    if api_keys:
        schemes["apiKey"] = {
            "apiKeySecurityScheme": {
                "location": "header",
                "name": API_KEY_HEADER,
                "description": f"An API key in {API_KEY_HEADER} (Authorization: Bearer <key> works too)",
            }
        }
    if not schemes:
        return {}
    # Alternatives: any one scheme will do. No scopes are needed, so each list is empty.
    return {"securitySchemes": schemes, "securityRequirements": [{"schemes": {n: {"list": []}}} for n in schemes]}


def _legacy_security(card: dict[str, Any]) -> dict[str, Any]:
    """0.3 ``security`` plus each scheme with the OpenAPI-style keys merged in (module docstring)."""
    schemes: dict[str, Any] = {}
    for name, scheme in card.get("securitySchemes", {}).items():
        merged = dict(scheme)
        for key, fields in scheme.items():
            if key in _V03_SCHEME:
                kind, renamed = _V03_SCHEME[key]
                merged["type"] = kind
                merged.update(fields)
                if renamed:
                    merged[renamed[1]] = merged.pop(renamed[0])
        schemes[name] = merged
    requirements = card.get("securityRequirements", [])
    security = [{n: list(s.get("list", [])) for n, s in r.get("schemes", {}).items()} for r in requirements]
    return {"securitySchemes": schemes, "security": security} if schemes else {}


def add_legacy_fields(card: dict[str, Any], rpc_url: str, rest_url: str) -> dict[str, Any]:
    """The 0.3 top-level fields, so 0.3 clients can read the card (a strict 1.0 schema refuses them)."""
    return {
        **card,
        "url": rpc_url,
        "preferredTransport": JSONRPC,
        "additionalInterfaces": [{"url": rpc_url, "transport": JSONRPC}, {"url": rest_url, "transport": HTTP_JSON}],
        "protocolVersion": "0.3.0",
        "supportsAuthenticatedExtendedCard": bool(card["capabilities"].get("extendedAgentCard")),
        **_legacy_security(card),
    }


def skill_for_agent(name: str) -> dict[str, Any]:
    return {
        "id": name,
        "name": name,
        "description": f"Tasks routed to the agent {name!r}",
        "tags": ["agent", name],
    }


class CardCache:
    """Remembers when each card's content last changed, for Last-Modified; answers conditional GETs."""

    def __init__(self, max_age_s: int, max_entries: int = 4096) -> None:
        self.max_age_s = max_age_s
        self.max_entries = max_entries
        self._seen: dict[str, tuple[str, float]] = {}  # key -> (etag, first served at)
        self._signed: dict[str, dict[str, Any]] = {}  # unsigned content hash -> signed card

    def signed(self, card: dict[str, Any], identity: Identity, jku: str | None) -> dict[str, Any]:
        digest = hashlib.sha256(canonical_bytes(card) + (jku or "").encode()).hexdigest()
        got = self._signed.get(digest)
        if got is None:
            if len(self._signed) >= self.max_entries:
                self._signed.clear()
            got = self._signed[digest] = sign_card(card, identity, jku)
        return got

    def response(self, request: Request, key: str, card: dict[str, Any], *, private: bool = False) -> Response:
        """``card`` as a cacheable response; ``key`` names the card (and whom it is for), and
        ``private``: it was made for an authenticated caller, so no shared cache may keep it."""
        body = json.dumps(card, separators=(",", ":"), ensure_ascii=False).encode()
        etag = 'W/"' + hashlib.sha256(body).hexdigest()[:32] + '"'
        seen = self._seen.get(key)
        if seen is None or seen[0] != etag:
            if len(self._seen) >= self.max_entries:
                self._seen.clear()
            seen = self._seen[key] = (etag, float(int(time.time())))
        last_modified = seen[1]
        headers = {
            "Cache-Control": f"{'private' if private else 'public'}, max-age={self.max_age_s}",
            "ETag": etag,
            "Last-Modified": email.utils.formatdate(last_modified, usegmt=True),
            "Vary": "Accept-Encoding, Authorization, X-API-Key",  # a card lists what its caller may call
        }
        if _not_modified(request, etag, last_modified):
            return Response(status_code=304, headers=headers)
        return Response(body, media_type="application/json", headers=headers)


def _not_modified(request: Request, etag: str, last_modified: float) -> bool:
    inm = request.headers.get("if-none-match")
    if inm is not None:
        tags = {t.strip().removeprefix("W/") for t in inm.split(",")}
        return "*" in tags or etag.removeprefix("W/") in tags
    ims = request.headers.get("if-modified-since")
    if ims:
        try:
            since = email.utils.parsedate_to_datetime(ims).timestamp()
        except (TypeError, ValueError):
            return False
        return last_modified <= since
    return False
