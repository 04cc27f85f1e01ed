"""DIDWba authentication of inbound requests, and DID resolution with a cache.

``DidWbaAuth.authenticate`` accepts, in this order:

1. ``Authorization: Bearer <token>``: a token this gateway issued (any node: tokens live in the
   shared key/value store, ``anp:token:<sha256>``) and that has not expired;
2. RFC 9421 ``Signature-Input`` / ``Signature`` (+ ``Content-Digest`` for a body);
3. the legacy ``Authorization: DIDWba ...`` header, its domain signed as ``aud`` (v1.1) or
   ``service`` (v1.0, or no ``v``): both are tried, so either generation verifies.

For 2 and 3: the time (``created``/``expires``, or ``timestamp``) must be within ``window_s`` in the
past and ``skew_s`` in the future; the caller's DID document is resolved (``resolve``: HTTPS by
default, under the gateway's egress policy, so a DID naming an internal host:port is never
fetched; cached), must be the DID's and pass its e1/k1 binding, and the key must be listed under
``authentication``; the signature must verify for one of the request URLs the gateway answers to
(the URL as requested, and the configured public one); the nonce is then claimed with ``set(...,
only_new=True)`` in the shared store, so a nonce is accepted once across all nodes. Success issues
a random bearer token (``Authentication-Info`` and ``Authorization: Bearer``) the client may reuse
until it expires. Every failure is an ``AuthFailure`` that the routes answer with 401 and a
``WWW-Authenticate: DIDWba`` challenge (plus ``Accept-Signature``), never with a 5xx: an
unreachable or invalid DID document is ``invalid_did``. Why a document could not be resolved
(refused, no connection, an HTTP status, not JSON) is logged, never told: the caller chooses the
host and port, and the answer would make the gateway a port scanner.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import secrets
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import httpx

from gateway.core import httpsig
from gateway.core.egress import Egress
from gateway.core.httpsig import SignatureError
from protocols.anp import httpsig as didwba_sig
from protocols.anp.didwba import (
    DidError,
    PublicKey,
    authorized,
    b64url_decode_lenient,
    check_document,
    document_url,
    find_method,
    key_of,
)

log = logging.getLogger("interlace.anp.auth")

Resolve = Callable[[str], Awaitable[dict]]
MAX_DOCUMENT_BYTES = 256 * 1024


class DidResolutionError(Exception):
    """The DID document could not be fetched or is not JSON."""


class AuthFailure(Exception):
    """Authentication failed; ``error`` is the DIDWba challenge's error code."""

    def __init__(self, error: str, description: str, status: int = 401) -> None:
        super().__init__(description)
        self.error, self.description, self.status = error, description, status


# ---- resolution ------------------------------------------------------------------------------


class HttpsResolver:
    """Fetch ``https://<host>/.../did.json`` under an egress policy (checked, pinned addresses; no
    redirects), bounded in time and size. ``egress``: the gateway's, which the ANP service sets
    before the first resolution; None: only public addresses."""

    def __init__(
        self,
        *,
        timeout_s: float = 5.0,
        verify: Any = True,
        max_bytes: int = MAX_DOCUMENT_BYTES,
        egress: Egress | None = None,
    ) -> None:
        self.timeout_s, self.verify, self.max_bytes, self.egress = timeout_s, verify, max_bytes, egress
        self._http: httpx.AsyncClient | None = None

    def _client(self) -> httpx.AsyncClient:
        if self._http is None:
            self._http = (self.egress or Egress()).httpx_client(
                timeout=httpx.Timeout(self.timeout_s),
                verify=self.verify,
                limits=httpx.Limits(max_connections=32, max_keepalive_connections=8),
                headers={"Accept": "application/did+json, application/json"},
            )
        return self._http

    async def __call__(self, did: str) -> dict:
        try:
            url = document_url(did)
        except DidError as exc:
            raise DidResolutionError(str(exc)) from None
        try:
            async with asyncio.timeout(self.timeout_s):
                async with self._client().stream("GET", url) as resp:
                    if resp.status_code != 200:
                        raise DidResolutionError(f"{url} answered HTTP {resp.status_code}")
                    body = bytearray()
                    async for chunk in resp.aiter_bytes():
                        body += chunk
                        if len(body) > self.max_bytes:
                            raise DidResolutionError(f"{url} is larger than {self.max_bytes} bytes")
        except (httpx.HTTPError, OSError, TimeoutError) as exc:
            raise DidResolutionError(f"{url} could not be fetched ({exc.__class__.__name__}: {exc})") from None
        try:
            return json.loads(bytes(body))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise DidResolutionError(f"{url} is not JSON") from None

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.aclose()
            self._http = None


class CachedResolver:
    """A bounded TTL cache in front of a resolver; concurrent misses share one resolution."""

    def __init__(
        self, resolve: Resolve, *, ttl_s: float = 300.0, max_entries: int = 10_000, refresh_after_s: float = 30.0
    ) -> None:
        self.resolve, self.ttl_s, self.max_entries, self.refresh_after_s = resolve, ttl_s, max_entries, refresh_after_s
        self._cache: OrderedDict[str, tuple[float, dict]] = OrderedDict()
        self._inflight: dict[str, asyncio.Future] = {}

    async def get(self, did: str, *, refresh: bool = False) -> tuple[dict, bool]:
        """(document, fresh): ``refresh`` re-fetches unless the cached copy is younger than
        ``refresh_after_s`` (so failing signatures cannot make the gateway fetch without end)."""
        now = time.monotonic()
        hit = self._cache.get(did)
        if hit is not None and now - hit[0] < self.ttl_s and not (refresh and now - hit[0] >= self.refresh_after_s):
            self._cache.move_to_end(did)
            return hit[1], False
        fut = self._inflight.get(did)
        if fut is None:
            fut = asyncio.ensure_future(self.resolve(did))
            self._inflight[did] = fut
            fut.add_done_callback(lambda _f, d=did: self._inflight.pop(d, None))
        try:
            doc = await asyncio.shield(fut)
        except DidResolutionError:
            raise
        except Exception as exc:  # a pluggable resolver's own failure is still "could not resolve"
            raise DidResolutionError(f"resolver failed ({exc.__class__.__name__})") from None
        self._cache[did] = (time.monotonic(), doc)
        self._cache.move_to_end(did)
        while len(self._cache) > self.max_entries:
            self._cache.popitem(last=False)
        return doc, True

    def forget(self, did: str) -> None:
        self._cache.pop(did, None)


# ---- authentication ----------------------------------------------------------------------------


@dataclass
class Caller:
    """An authenticated caller and the headers to add to the response."""

    did: str
    scheme: str  # bearer | http_signatures | legacy_didwba
    response_headers: dict[str, str] = field(default_factory=dict)


def presents_credentials(headers: Mapping[str, str]) -> bool:
    """Whether a request carries anything ``DidWbaAuth.authenticate`` would judge."""
    return bool(headers.get("authorization") or headers.get("signature-input") or headers.get("signature"))


def challenge_headers(realm: str, failure: AuthFailure) -> dict[str, str]:
    desc = failure.description.replace('"', "'").replace("\\", "/")[:300]
    realm = realm.replace('"', "")
    return {
        "WWW-Authenticate": f'DIDWba realm="{realm}", error="{failure.error}", error_description="{desc}"',
        "Accept-Signature": didwba_sig.ACCEPT_SIGNATURE,
    }


def _hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


class DidWbaAuth:
    def __init__(
        self,
        resolve: Resolve,
        *,
        window_s: int = 300,
        skew_s: int = 60,
        token_ttl_s: int = 3600,
        cache_ttl_s: float = 300.0,
        allowed: frozenset[str] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.resolver = CachedResolver(resolve, ttl_s=cache_ttl_s)
        self.allowed = allowed  # caller DIDs let in (checked before any DID document is fetched); None: any
        self.window_s, self.skew_s, self.token_ttl_s, self.clock = window_s, skew_s, token_ttl_s, clock

    async def authenticate(
        self, kv: Any, method: str, urls: list[str], domains: list[str], headers: Mapping[str, str], body: bytes
    ) -> Caller:
        """The caller, or AuthFailure. ``urls``: the request URL as the gateway may have been
        addressed; ``domains``: host names (no port) a legacy header may be signed for."""
        authz = (headers.get("authorization") or "").strip()
        if authz[:7].lower() == "bearer ":
            return await self._bearer(kv, authz[7:].strip())
        if headers.get("signature-input") or headers.get("signature"):
            return await self._http_signature(kv, method, urls, headers, body)
        if authz[:7].lower() == "didwba ":
            return await self._legacy(kv, authz, domains)
        if authz:
            raise AuthFailure(
                "invalid_request", "unsupported Authorization scheme; use DIDWba or HTTP Message Signatures"
            )
        raise AuthFailure("invalid_request", "missing authentication: sign the request with DIDWba")

    # ---- bearer tokens ----

    async def _bearer(self, kv: Any, token: str) -> Caller:
        if not token or len(token) > 256:
            raise AuthFailure("invalid_access_token", "malformed bearer token")
        did = await kv.get(f"anp:token:{_hash(token)}")
        if did is None:
            raise AuthFailure("invalid_access_token", "unknown or expired access token; sign the request again")
        self._check_allowed(did)  # the allowlist may have changed since the token was issued
        return Caller(did=did, scheme="bearer")

    def _check_allowed(self, did: str) -> None:
        if self.allowed is not None and did not in self.allowed:
            raise AuthFailure("forbidden", f"{did} is not allowed to call this gateway", status=403)

    async def _issue(self, kv: Any, did: str, scheme: str) -> Caller:
        token = secrets.token_urlsafe(32)
        await kv.set(f"anp:token:{_hash(token)}", did, self.token_ttl_s)
        return Caller(
            did=did,
            scheme=scheme,
            response_headers={
                "Authentication-Info": f'access_token="{token}", token_type="Bearer", expires_in={self.token_ttl_s}',
                "Authorization": f"Bearer {token}",
            },
        )

    # ---- shared steps ----

    def _check_time(self, created: float, expires: float | None = None) -> None:
        try:
            httpsig.check_time(created, expires, now=self.clock(), window_s=self.window_s, skew_s=self.skew_s)
        except SignatureError as exc:
            raise AuthFailure(exc.error, str(exc)) from None

    async def _key(self, did: str, method_id: str, refresh: bool = False) -> tuple[PublicKey, bool]:
        """The caller's authentication key, from its (cached) DID document."""
        if not did.startswith("did:wba:"):
            raise AuthFailure("invalid_did", "only did:wba callers are supported")
        self._check_allowed(did)
        try:
            doc, fresh = await self.resolver.get(did, refresh=refresh)
            check_document(doc, did)
        except DidResolutionError as exc:
            log.info("DID resolution failed", extra={"did": did, "error": str(exc)})
            raise AuthFailure("invalid_did", "the DID document could not be resolved") from None
        except DidError as exc:
            self.resolver.forget(did)
            raise AuthFailure("invalid_did", f"the DID document is not valid: {exc}") from None
        method = find_method(doc, method_id)
        if method is None or not authorized(doc, "authentication", method_id):
            raise AuthFailure("invalid_verification_method", f"{method_id} is not an authentication key of {did}")
        try:
            return key_of(method), fresh
        except DidError as exc:
            raise AuthFailure("invalid_verification_method", str(exc)) from None

    async def _verified(self, did: str, method_id: str, check: Callable[[PublicKey], bool]) -> None:
        """Verify with the cached document; on failure retry once with a re-fetched one (key rotation)."""
        key, fresh = await self._key(did, method_id)
        if check(key):
            return
        if not fresh:
            key, fresh = await self._key(did, method_id, refresh=True)
            if fresh and check(key):
                return
        raise AuthFailure("invalid_signature", "the signature does not verify")

    async def _claim_nonce(self, kv: Any, did: str, nonce: Any) -> None:
        try:
            await httpsig.claim_nonce(kv, "anp", did, nonce, self.window_s + self.skew_s + 60)
        except SignatureError as exc:
            raise AuthFailure(exc.error, str(exc)) from None

    # ---- RFC 9421 ----

    async def _http_signature(
        self, kv: Any, method: str, urls: list[str], headers: Mapping[str, str], body: bytes
    ) -> Caller:
        try:
            sig = httpsig.checked(headers, body, now=self.clock(), window_s=self.window_s, skew_s=self.skew_s)
            keyid, did = sig.keyid, sig.did
        except SignatureError as exc:
            raise AuthFailure(exc.error, str(exc)) from None

        def check(key: PublicKey) -> bool:
            for url in urls:
                try:
                    base = httpsig.signature_base(sig.components, sig.params_text, method, url, headers)
                except SignatureError:
                    return False
                if key.verify(base, sig.signature):
                    return True
            return False

        try:
            await self._verified(did, keyid, check)
        except SignatureError as exc:
            raise AuthFailure(exc.error, str(exc)) from None
        await self._claim_nonce(kv, did, sig.params["nonce"])
        return await self._issue(kv, did, "http_signatures")

    # ---- legacy DIDWba header ----

    async def _legacy(self, kv: Any, header: str, domains: list[str]) -> Caller:
        try:
            auth = didwba_sig.parse_legacy(header)
        except SignatureError as exc:
            raise AuthFailure(exc.error, str(exc)) from None
        try:
            created = datetime.fromisoformat(auth.timestamp.replace("Z", "+00:00"))
            if created.tzinfo is None:
                raise ValueError
        except ValueError:
            raise AuthFailure("invalid_timestamp", "timestamp is not an ISO 8601 UTC time") from None
        self._check_time(created.timestamp())
        fragment = auth.verification_method
        method_id = fragment if fragment.startswith("did:") else f"{auth.did}#{fragment.lstrip('#')}"
        try:
            signature = b64url_decode_lenient(auth.signature)
        except DidError:
            raise AuthFailure("invalid_signature", "the signature is not base64url") from None

        def check(key: PublicKey) -> bool:
            return any(
                key.verify(auth.signed_content(domain, name), signature)
                for domain in domains
                for name in auth.domain_fields()
            )

        await self._verified(auth.did, method_id, check)
        await self._claim_nonce(kv, auth.did, auth.nonce)
        return await self._issue(kv, auth.did, "legacy_didwba")
