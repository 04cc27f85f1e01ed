"""DIDWba request signatures: the legacy ``DIDWba`` header, and the RFC 9421 form ANP asks for.

RFC 9421 itself (parsing, signature bases, signing, ``Content-Digest``) is
``gateway.core.httpsig``, shared with node and worker signatures; ANP signs ``@method
@target-uri @authority`` (+ ``content-digest``) with ``keyid="did:wba:...#key-1"`` and announces
that in ``Accept-Signature`` (``ACCEPT_SIGNATURE``).

Legacy header: ``Authorization: DIDWba v="1.1", did="..", nonce="..", timestamp="..",
verification_method="key-1", signature="<base64url>"``, signed over SHA-256 of the JCS of
``{nonce, timestamp, aud|service: <host without port>, did}`` (``aud`` from v1.1 on, ``service``
in v1.0 and in headers without ``v``).
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
import time
from dataclasses import dataclass, field

import rfc8785

from gateway.core.httpsig import SignatureError
from registry.identity import Identity

ACCEPT_SIGNATURE = 'sig1=("@method" "@target-uri" "@authority" "content-digest");created;expires;nonce;keyid'
_MAX_HEADER = 8192
_LEGACY_FIELD = re.compile(r'([A-Za-z_]+)\s*=\s*"([^"]*)"')


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
