"""DIDWba request signatures: RFC 9421 HTTP Message Signatures and the legacy ``DIDWba`` header.

RFC 9421 as ANP uses it: ``Signature-Input: sig1=("@method" "@target-uri" "@authority"
"content-digest");created=..;expires=..;nonce="..";keyid="did:wba:...#key-1"``, ``Signature:
sig1=:<base64>:`` and an RFC 9530 ``Content-Digest`` over the body. The signature base is built
from the covered components and the ``@signature-params`` line, which is the member's own text
from ``Signature-Input`` (RFC 9421 section 2.3), so a verifier never re-serializes it. Supported
components: ``@method @target-uri @authority @scheme @path @query @request-target`` and plain
header fields; component parameters (``;sf``, ``;req`` ...) are not.

Legacy header: ``Authorization: DIDWba v="1.1", did="..", nonce="..", timestamp="..",
verification_method="key-1", signature="<base64url>"``, signed over SHA-256 of the JCS of
``{nonce, timestamp, aud|service: <host without port>, did}`` (``aud`` from v1.1 on, ``service``
in v1.0 and in headers without ``v``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import rfc8785

from registry.identity import Identity

DEFAULT_COMPONENTS = ("@method", "@target-uri", "@authority", "content-digest")
ACCEPT_SIGNATURE = 'sig1=("@method" "@target-uri" "@authority" "content-digest");created;expires;nonce;keyid'
_MAX_HEADER = 8192
_LABEL = r"[a-z*][a-z0-9_*.-]{0,63}"
_PARAM = re.compile(
    r'\s*;\s*([a-z*][a-z0-9_.*-]*)(?:=("(?:[^"\\]|\\.)*"|-?[0-9]{1,15}|[A-Za-z*][A-Za-z0-9_:/.*%+-]*))?'
)
_MEMBER_INPUT = re.compile(rf'({_LABEL})=(\((?:\s*"[^"]*")*\s*\))(.*)', re.S)  # component parameters unsupported
_MEMBER_SIG = re.compile(rf"({_LABEL})=:([A-Za-z0-9+/]*={{0,2}}):")
_LEGACY_FIELD = re.compile(r'([A-Za-z_]+)\s*=\s*"([^"]*)"')


class SignatureError(ValueError):
    """A malformed or unverifiable signature header; ``error`` is the DIDWba error code."""

    def __init__(self, error: str, message: str) -> None:
        super().__init__(message)
        self.error = error


# ---- RFC 9530 Content-Digest -----------------------------------------------------------------


def content_digest(body: bytes) -> str:
    return "sha-256=:" + base64.b64encode(hashlib.sha256(body).digest()).decode() + ":"


def check_content_digest(header: str | None, body: bytes) -> None:
    """Every supported digest in the header matches the body, and there is at least one."""
    if not header:
        raise SignatureError("invalid_request", "Content-Digest is missing for a request with a body")
    checked = 0
    for member in header.split(","):
        m = re.fullmatch(r"\s*([a-z0-9-]+)=:([A-Za-z0-9+/]*={0,2}):\s*", member)
        if not m:
            raise SignatureError("invalid_request", "Content-Digest is malformed")
        algo = {"sha-256": hashlib.sha256, "sha-512": hashlib.sha512}.get(m.group(1))
        if algo is None:
            continue
        try:
            given = base64.b64decode(m.group(2), validate=True)
        except (binascii.Error, ValueError):
            raise SignatureError("invalid_request", "Content-Digest is not base64") from None
        if given != algo(body).digest():
            raise SignatureError("invalid_signature", "Content-Digest does not match the body")
        checked += 1
    if not checked:
        raise SignatureError("invalid_request", "Content-Digest has no sha-256 or sha-512 digest")


# ---- RFC 9421 --------------------------------------------------------------------------------


@dataclass
class SignedRequest:
    """One signature of a request: its label, covered components, parameters and bytes."""

    label: str
    components: list[str]
    params: dict[str, Any]
    params_text: str  # the member's value as sent: the @signature-params line
    signature: bytes

    @property
    def keyid(self) -> str:
        keyid = self.params.get("keyid")
        if not isinstance(keyid, str) or "#" not in keyid:
            raise SignatureError(
                "invalid_verification_method", "Signature-Input keyid must be a DID URL (did#fragment)"
            )
        return keyid

    @property
    def did(self) -> str:
        return self.keyid.split("#", 1)[0]


def _split(text: str) -> list[str]:
    """Top-level members of a structured-field dictionary (commas inside quotes or parens kept)."""
    out, buf, depth, quoted, escaped = [], [], 0, False, False
    for ch in text:
        if quoted:
            escaped, quoted = (False, True) if escaped else (ch == "\\", ch != '"')
        elif ch == '"':
            quoted = True
        elif ch in "()":
            depth += 1 if ch == "(" else -1
        elif ch == "," and depth == 0:
            out.append("".join(buf).strip())
            buf = []
            continue
        buf.append(ch)
    out.append("".join(buf).strip())
    if quoted or depth:
        raise SignatureError("invalid_request", "Signature-Input or Signature is malformed")
    return out


def _params(text: str) -> dict[str, Any]:
    params: dict[str, Any] = {}
    pos = 0
    while pos < len(text):
        m = _PARAM.match(text, pos)
        if not m or m.end() == pos:
            raise SignatureError("invalid_request", "Signature-Input parameters are malformed")
        pos = m.end()
        name, raw = m.group(1), m.group(2)
        if raw is None:
            params[name] = True
        elif raw.startswith('"'):
            params[name] = re.sub(r"\\(.)", r"\1", raw[1:-1])
        elif re.fullmatch(r"-?[0-9]+", raw):
            params[name] = int(raw)
        else:
            params[name] = raw
    return params


def parse_signature(headers: Mapping[str, str]) -> SignedRequest:
    """The first signature whose label appears in both Signature-Input and Signature."""
    sig_input, sig = headers.get("signature-input"), headers.get("signature")
    if not sig_input or not sig:
        raise SignatureError("invalid_request", "both Signature-Input and Signature are required")
    if len(sig_input) > _MAX_HEADER or len(sig) > _MAX_HEADER:
        raise SignatureError("invalid_request", "signature headers are too long")
    values = {}
    for member in _split(sig):
        m = _MEMBER_SIG.fullmatch(member)
        if not m:
            raise SignatureError("invalid_request", "Signature is malformed")
        try:
            values[m.group(1)] = base64.b64decode(m.group(2), validate=True)
        except (binascii.Error, ValueError):
            raise SignatureError("invalid_request", "Signature is not base64") from None
    for member in _split(sig_input):
        m = _MEMBER_INPUT.fullmatch(member)
        if not m:
            raise SignatureError("invalid_request", "Signature-Input is malformed")
        label, inner, params_text = m.group(1), m.group(2), m.group(3)
        if label not in values:
            continue
        components = re.findall(r'"([^"]*)"', inner)
        if not components:
            raise SignatureError("invalid_request", "Signature-Input covers no components")
        return SignedRequest(label, components, _params(params_text), member[len(label) + 1 :], values[label])
    raise SignatureError("invalid_request", "no Signature-Input member has a matching Signature")


def _component(name: str, method: str, url: str, headers: Mapping[str, str]) -> str:
    parts = urlsplit(url)
    if name == "@method":
        return method.upper()
    if name == "@target-uri":
        return url
    if name == "@authority":
        return parts.netloc
    if name == "@scheme":
        return parts.scheme
    if name == "@path":
        return parts.path or "/"
    if name == "@query":
        return "?" + parts.query
    if name == "@request-target":
        return (parts.path or "/") + ("?" + parts.query if parts.query else "")
    if name.startswith("@"):
        raise SignatureError("invalid_request", f"derived component {name[:40]!r} is not supported")
    if name != name.lower() or not name:
        raise SignatureError("invalid_request", "header component names are lower case")
    value = headers.get(name)
    if value is None:
        raise SignatureError("invalid_request", f"covered header {name[:40]!r} is not in the request")
    return value.strip()


def signature_base(components: list[str], params_text: str, method: str, url: str, headers: Mapping[str, str]) -> bytes:
    lines = [f'"{c}": {_component(c, method, url, headers)}' for c in components]
    lines.append(f'"@signature-params": {params_text}')
    return "\n".join(lines).encode()


def sign_request(
    identity: Identity,
    keyid: str,
    method: str,
    url: str,
    body: bytes = b"",
    *,
    nonce: str | None = None,
    created: int | None = None,
    lifetime_s: int = 300,
) -> dict[str, str]:
    """RFC 9421 headers for an outbound request, signed with the Ed25519 ``identity``."""
    created = int(time.time()) if created is None else created
    nonce = nonce or secrets.token_hex(16)
    headers: dict[str, str] = {}
    components = ["@method", "@target-uri", "@authority"]
    if body:
        headers["Content-Digest"] = content_digest(body)
        components.append("content-digest")
    inner = "(" + " ".join(f'"{c}"' for c in components) + ")"
    params_text = f'{inner};created={created};expires={created + lifetime_s};nonce="{nonce}";keyid="{keyid}"'
    base = signature_base(components, params_text, method, url, {k.lower(): v for k, v in headers.items()})
    headers["Signature-Input"] = f"sig1={params_text}"
    headers["Signature"] = "sig1=:" + base64.b64encode(identity.sign(base)).decode() + ":"
    return headers


# ---- legacy DIDWba Authorization header --------------------------------------------------------


@dataclass
class LegacyAuth:
    did: str
    nonce: str
    timestamp: str
    verification_method: str
    signature: str
    version: str | None = None
    fields: dict[str, str] = field(default_factory=dict)

    def domain_fields(self) -> list[str]:
        """Which member names the domain may be signed under, most likely first (aud, then service)."""
        try:
            newer = self.version is not None and float(self.version) >= 1.1
        except ValueError:
            newer = False
        return ["aud", "service"] if newer or self.version is None else ["service", "aud"]

    def signed_content(self, domain: str, domain_field: str) -> bytes:
        data = {"nonce": self.nonce, "timestamp": self.timestamp, domain_field: domain, "did": self.did}
        return hashlib.sha256(rfc8785.dumps(data)).digest()


def parse_legacy(header: str) -> LegacyAuth:
    if len(header) > _MAX_HEADER:
        raise SignatureError("invalid_request", "Authorization header is too long")
    scheme, _, rest = header.strip().partition(" ")
    if scheme.lower() != "didwba":
        raise SignatureError("invalid_request", "Authorization scheme is not DIDWba")
    fields = {k.lower(): v for k, v in _LEGACY_FIELD.findall(rest)}
    missing = [f for f in ("did", "nonce", "timestamp", "verification_method", "signature") if not fields.get(f)]
    if missing:
        raise SignatureError("invalid_request", f"DIDWba header lacks {', '.join(missing)}")
    return LegacyAuth(
        did=fields["did"],
        nonce=fields["nonce"],
        timestamp=fields["timestamp"],
        verification_method=fields["verification_method"],
        signature=fields["signature"],
        version=fields.get("v"),
        fields=fields,
    )


def legacy_header(
    identity: Identity,
    did: str,
    domain: str,
    *,
    version: str = "1.1",
    nonce: str | None = None,
    timestamp: str | None = None,
) -> str:
    """A legacy ``DIDWba`` Authorization header signed with ``identity`` (#key-1)."""
    auth = LegacyAuth(
        did=did,
        nonce=nonce or secrets.token_hex(16),
        timestamp=timestamp or time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        verification_method="key-1",
        signature="",
        version=version,
    )
    content = auth.signed_content(domain, auth.domain_fields()[0])
    signature = base64.urlsafe_b64encode(identity.sign(content)).rstrip(b"=").decode()
    return (
        f'DIDWba v="{version}", did="{did}", nonce="{auth.nonce}", timestamp="{auth.timestamp}", '
        f'verification_method="key-1", signature="{signature}"'
    )
