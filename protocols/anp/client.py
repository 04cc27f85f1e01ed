"""Outbound ANP: signed requests, bearer-token reuse, Agent Description and OpenRPC discovery.

``ANPSigner`` signs requests with the gateway's did:wba (RFC 9421, Ed25519 ``#key-1``) and keeps
the bearer token a server returns (``Authentication-Info``, or ``Authorization: Bearer``) per
origin until it expires. ``ANPClient.request`` sends the token when it has one and signs
otherwise; on a 401 it drops the token and signs once more (with the challenge's nonce, if the
server sent one). ``describe(ad_url)`` reads an Agent Description and its OpenRPC interfaces
(embedded ``content`` or fetched ``url``) into the remote's methods and JSON-RPC endpoints.

Errors (``RemoteError``): a JSON-RPC error the remote sent, or its DIDWba refusal (a 401 with a
``DIDWba`` challenge), is passed on in its own words; anything else (no connection, an HTTP
error, a reply that is not JSON, JSON-RPC or an Agent Description) is ``UNREACHABLE``, one text
whatever happened, with the detail in ``detail`` for the log. The HTTP client is the egress
policy's (``Egress.httpx_client``): checked, pinned addresses, bounded responses.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpx

from gateway.core.egress import UNREACHABLE
from gateway.core.httpsig import sign_request
from protocols.anp import telemetry
from protocols.anp.didwba import did_for_host
from registry.identity import Identity

MAX_INTERFACES = 16
MAX_DOCUMENT_BYTES = 1024 * 1024


class RemoteError(Exception):
    """The remote agent answered with an error (``code`` is the JSON-RPC code, or the HTTP status).
    The message is for the client; ``detail`` (what exactly happened) is for the log."""

    def __init__(
        self, message: str, *, code: int | None = None, retryable: bool = False, detail: str | None = None
    ) -> None:
        super().__init__(message)
        self.code, self.retryable, self.detail = code, retryable, detail or message


def _unreachable(detail: str, *, code: int | None = None, retryable: bool = True) -> RemoteError:
    return RemoteError(UNREACHABLE, code=code, retryable=retryable, detail=detail)


def _http_error(url: str, resp: httpx.Response) -> RemoteError:
    """A non-200 answer: the remote's DIDWba refusal in its words, else unreachable."""
    status = resp.status_code
    challenge = resp.headers.get("www-authenticate", "")
    if status == 401 and challenge.lower().startswith("didwba"):
        return RemoteError(f"HTTP 401{_reason(resp)}", code=status, detail=f"{url} refused the gateway's DID")
    return _unreachable(f"{url} answered HTTP {status}{_reason(resp)}", code=status, retryable=status >= 500)


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower()


class ANPSigner:
    """Signs outbound requests as ``did`` with ``identity`` (the gateway's node key)."""

    def __init__(self, identity: Identity, did: str) -> None:
        self.identity, self.did = identity, did
        self.keyid = f"{did}#key-1"
        self._tokens: dict[str, tuple[str, float]] = {}

    @classmethod
    def for_host(cls, identity: Identity, host: str) -> ANPSigner:
        """The signer for the gateway reachable at ``host[:port]`` (its did:wba document must be
        served there, at /.well-known/did.json, with the same node key)."""
        return cls(identity, did_for_host(host))

    def sign(self, method: str, url: str, body: bytes = b"", nonce: str | None = None) -> dict[str, str]:
        return sign_request(self.identity, self.keyid, method, url, body, nonce=nonce)

    def token(self, url: str) -> str | None:
        hit = self._tokens.get(_origin(url))
        if hit is None or hit[1] <= time.monotonic():
            return None
        return hit[0]

    def learn(self, url: str, headers: httpx.Headers) -> None:
        """Keep the bearer token a successful response carries."""
        info = headers.get("authentication-info")
        token, expires_in = None, 3600.0
        if info:
            pairs = re.findall(r'([A-Za-z_]+)=(?:"([^"]*)"|([^,\s]*))', info)
            fields = {k.lower(): quoted or bare for k, quoted, bare in pairs}
            if fields.get("token_type", "Bearer").lower() == "bearer":
                token = fields.get("access_token")
            try:
                expires_in = float(fields.get("expires_in", expires_in))
            except ValueError:
                pass
        if token is None:
            authz = headers.get("authorization", "")
            if authz[:7].lower() == "bearer ":
                token = authz[7:].strip()
        if token:
            # Renew a little early so a token never expires in flight.
            self._tokens[_origin(url)] = (token, time.monotonic() + max(0.0, expires_in * 0.9 - 5))

    def forget(self, url: str) -> None:
        self._tokens.pop(_origin(url), None)


@dataclass
class RemoteMethod:
    name: str
    description: str
    params: list[dict[str, Any]]
    server_url: str

    def string_param(self) -> str | None:
        """The parameter a plain text message goes to: the first required string one, else the first string one."""
        strings = [p for p in self.params if isinstance(p, dict) and (p.get("schema") or {}).get("type") == "string"]
        required = [p for p in strings if p.get("required")]
        chosen = (required or strings or [None])[0]
        return chosen.get("name") if chosen else None


@dataclass
class RemoteAgent:
    ad_url: str
    name: str
    description: str
    methods: dict[str, RemoteMethod] = field(default_factory=dict)


def _challenge_nonce(headers: httpx.Headers) -> str | None:
    m = re.search(r'nonce="([^"]+)"', headers.get("www-authenticate", ""))
    return m.group(1) if m else None


class ANPClient:
    """HTTP for one connector: a pooled httpx client and the signer."""

    def __init__(self, signer: ANPSigner, http: httpx.AsyncClient, *, timeout_s: float = 300.0) -> None:
        self.signer, self.http, self.timeout_s = signer, http, timeout_s

    async def request(
        self, method: str, url: str, body: bytes = b"", headers: dict[str, str] | None = None
    ) -> httpx.Response:
        """A DIDWba-authenticated request: the cached token, else a signature; one retry after a 401."""
        base = dict(headers or {})
        token = self.signer.token(url)
        auth = {"Authorization": f"Bearer {token}"} if token else self.signer.sign(method, url, body)
        resp = await self._send(method, url, body, {**base, **auth})
        if resp.status_code == 401:
            self.signer.forget(url)
            auth = self.signer.sign(method, url, body, nonce=_challenge_nonce(resp.headers))
            resp = await self._send(method, url, body, {**base, **auth})
        if resp.status_code < 400:
            self.signer.learn(url, resp.headers)
        return resp

    async def _send(self, method: str, url: str, body: bytes, headers: dict[str, str]) -> httpx.Response:
        try:
            return await self.http.request(method, url, content=body or None, headers=headers, timeout=self.timeout_s)
        except httpx.HTTPError as exc:
            raise _unreachable(f"{url} is unreachable ({exc.__class__.__name__}: {exc})") from None

    async def get_json(self, url: str) -> Any:
        resp = await self.request("GET", url, headers={"Accept": "application/json"})
        if resp.status_code != 200:
            raise _http_error(url, resp)
        if len(resp.content) > MAX_DOCUMENT_BYTES:
            raise _unreachable(f"{url} is larger than {MAX_DOCUMENT_BYTES} bytes", retryable=False)
        try:
            return resp.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise _unreachable(f"{url} is not JSON", retryable=False) from None

    async def call(self, url: str, method: str, params: dict[str, Any], rid: str, agent: str | None = None) -> Any:
        """One JSON-RPC call (a CLIENT span, ``telemetry``; ``agent`` is the remote agent's name);
        returns its result or raises RemoteError with the remote's message."""
        with telemetry.client_span(method, url, rid, agent) as span:
            try:
                return await self._call(url, method, params, rid)
            except RemoteError as exc:
                telemetry.failed(span, exc.code if exc.code is not None else type(exc).__name__, exc.detail[:200])
                raise

    async def _call(self, url: str, method: str, params: dict[str, Any], rid: str) -> Any:
        body = json.dumps(
            {"jsonrpc": "2.0", "id": rid, "method": method, "params": params}, separators=(",", ":")
        ).encode()
        resp = await self.request("POST", url, body, {"Content-Type": "application/json", "Accept": "application/json"})
        try:
            answer = resp.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            answer = None
        if isinstance(answer, dict) and isinstance(answer.get("error"), dict):
            err = answer["error"]
            text = str(err.get("message") or "error")[:500]
            if err.get("data") is not None:
                text += f" ({json.dumps(err['data'], ensure_ascii=False)[:500]})"
            raise RemoteError(text, code=err.get("code") if isinstance(err.get("code"), int) else None)
        if resp.status_code != 200:
            raise _http_error(url, resp)
        if not isinstance(answer, dict) or "result" not in answer:
            raise _unreachable(f"{url}: the answer is not a JSON-RPC response", retryable=False)
        return answer["result"]

    async def describe(self, ad_url: str) -> RemoteAgent:
        """The remote's methods from its Agent Description (OpenRPC interfaces, embedded or linked)."""
        ad = await self.get_json(ad_url)
        if not isinstance(ad, dict):
            raise _unreachable(f"{ad_url} is not an Agent Description", retryable=False)
        remote = RemoteAgent(ad_url, str(ad.get("name") or ""), str(ad.get("description") or ""))
        interfaces = ad.get("interfaces") if isinstance(ad.get("interfaces"), list) else []
        seen: set[str] = set()
        for entry in interfaces[:MAX_INTERFACES]:
            if not isinstance(entry, dict):
                continue
            doc, where = entry.get("content"), ad_url
            if not (isinstance(doc, dict) and "openrpc" in doc):
                url = entry.get("url")
                protocol = str(entry.get("protocol") or "").lower()
                if not isinstance(url, str) or protocol not in ("openrpc", "json-rpc 2.0", "jsonrpc"):
                    continue
                where = urljoin(ad_url, url)
                if where in seen:
                    continue
                seen.add(where)
                doc = await self.get_json(where)
            if isinstance(doc, dict) and isinstance(doc.get("methods"), list):
                self._add_methods(remote, doc, where)
        if not remote.methods:
            raise _unreachable(f"{ad_url} describes no JSON-RPC (OpenRPC) method", retryable=False)
        return remote

    @staticmethod
    def _add_methods(remote: RemoteAgent, doc: dict, where: str) -> None:
        servers = doc.get("servers") if isinstance(doc.get("servers"), list) else []
        server = next((s.get("url") for s in servers if isinstance(s, dict) and isinstance(s.get("url"), str)), None)
        if server is None:
            return
        server = urljoin(where, server)
        for m in doc["methods"]:
            if isinstance(m, dict) and isinstance(m.get("name"), str) and m["name"] not in remote.methods:
                params = m.get("params") if isinstance(m.get("params"), list) else []
                remote.methods[m["name"]] = RemoteMethod(
                    m["name"], str(m.get("description") or m.get("summary") or ""), params, server
                )


def _reason(resp: httpx.Response) -> str:
    challenge = resp.headers.get("www-authenticate")
    if challenge:
        return f": {challenge[:300]}"
    try:
        body = resp.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return ""
    if isinstance(body, dict):
        err = body.get("error")
        detail = body.get("detail") or (err.get("message") if isinstance(err, dict) else None)
        if detail:
            return f": {str(detail)[:300]}"
    return ""
