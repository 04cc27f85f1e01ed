"""Signed envelopes for node-to-node gossip.

Every packet a gateway sends to another (SWIM messages, registry record transfers) travels in
one envelope, signed by the sending node's Ed25519 ``did:key``:

    {"network": "interlace", "from": "did:key:z6Mk...", "node": "node-a",
     "addr": "http://10.0.0.1:8080", "sent_at": 1767225600123, "kind": "swim",
     "payload": [...], "signature": "<base64url Ed25519 over RFC 8785 of all the other fields>"}

``sent_at`` is in unix milliseconds (integers only: JCS needs no float rules then). A receiver
refuses, with a stable reason code (``EnvelopeRejected.code``):

| code            | when                                                              |
|-----------------|-------------------------------------------------------------------|
| `malformed`     | not an object of exactly these fields with these types            |
| `wrong_network` | ``network`` is not the receiver's: two federations never mix      |
| `bad_signature` | the signature does not verify for ``from`` (or ``from`` is no did:key) |
| `untrusted`     | an allowlist is configured and ``from`` is not on it              |
| `stale`         | ``sent_at`` is further than ``max_age_ms`` from the receiver's clock (either way) |
| `replayed`      | the same signed envelope was already accepted within that window  |

The signature covers ``addr`` and ``node``, so a packet cannot be re-addressed by a relay: SWIM
answers go to the address the sender signed.
"""

from __future__ import annotations

import hashlib
import re
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import rfc8785

from registry.identity import BadSignature, Identity, InvalidDid, b64url_encode, verify

__all__ = ["ADDR", "Envelope", "EnvelopeRejected", "ReplayCache", "open_envelope", "seal"]

KINDS = frozenset({"swim", "records"})
_FIELDS = frozenset({"network", "from", "node", "addr", "sent_at", "kind", "payload", "signature"})
ADDR = re.compile(r"^https?://[^\s/?#]+(/[^\s?#]*)?$")  # a base URL; a path prefix is allowed
_MAX_STR = 256


class EnvelopeRejected(Exception):
    """An envelope is refused; ``code`` is short, stable and machine-readable."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class Envelope:
    """An accepted envelope: who sent what."""

    network: str
    sender: str  # the node's did:key
    node: str  # the node's member id
    addr: str  # the node's advertised base URL (SWIM answers go there)
    sent_at: int
    kind: str
    payload: Any


def _signed_bytes(body: dict[str, Any]) -> bytes:
    return rfc8785.dumps({k: v for k, v in body.items() if k != "signature"})


def seal(
    identity: Identity, *, network: str, node: str, addr: str, kind: str, payload: Any, sent_at: int
) -> dict[str, Any]:
    """The signed envelope (a JSON object) carrying ``payload``."""
    body = {
        "network": network,
        "from": identity.did,
        "node": node,
        "addr": addr,
        "sent_at": sent_at,
        "kind": kind,
        "payload": payload,
    }
    body["signature"] = b64url_encode(identity.sign(_signed_bytes(body)))
    return body


class ReplayCache:
    """Signatures of envelopes accepted within the freshness window (bounded)."""

    def __init__(self, max_entries: int = 200_000) -> None:
        self._seen: OrderedDict[bytes, int] = OrderedDict()  # digest -> sent_at
        self._max = max_entries

    def check_and_add(self, signature: str, sent_at: int, oldest_ms: int) -> bool:
        """False when this signature was seen already; forgets entries older than ``oldest_ms``."""
        seen = self._seen
        while seen:
            digest, at = next(iter(seen.items()))
            if at >= oldest_ms and len(seen) < self._max:
                break
            seen.popitem(last=False)
        key = hashlib.sha256(signature.encode()).digest()[:16]
        if key in seen:
            return False
        seen[key] = sent_at
        return True


def _shape(data: Any) -> None:
    if not isinstance(data, dict) or set(data) != _FIELDS:
        raise EnvelopeRejected("malformed", f"an envelope has exactly the fields {sorted(_FIELDS)}")
    for name in ("network", "from", "node", "addr", "kind", "signature"):
        value = data[name]
        if not isinstance(value, str) or not value or len(value) > _MAX_STR:
            raise EnvelopeRejected("malformed", f"{name} must be a non-empty string of at most {_MAX_STR} characters")
    if type(data["sent_at"]) is not int:
        raise EnvelopeRejected("malformed", "sent_at must be an integer (unix milliseconds)")
    if data["kind"] not in KINDS:
        raise EnvelopeRejected("malformed", f"kind must be one of {sorted(KINDS)}")
    if not ADDR.match(data["addr"]):
        raise EnvelopeRejected("malformed", "addr must be a base URL like http://host:port")


def open_envelope(
    data: Any,
    *,
    network: str,
    now_ms: int,
    max_age_ms: int,
    trusted: frozenset[str] | None = None,
    replay: ReplayCache | None = None,
) -> Envelope:
    """Check an envelope received from the network; raise EnvelopeRejected (see the table).

    The order matters for cost: cheap checks first, the signature before anything that trusts
    the content, and the replay cache last so that only authentic envelopes fill it.
    """
    _shape(data)
    if data["network"] != network:
        raise EnvelopeRejected("wrong_network", f"packet is for network {data['network']!r}, not {network!r}")
    if trusted is not None and data["from"] not in trusted:
        raise EnvelopeRejected("untrusted", f"{data['from']} is not on this node's trust list")
    try:
        body = _signed_bytes(data)
    except Exception:  # rfc8785 refuses what JSON allows but JCS does not (e.g. huge ints)
        raise EnvelopeRejected("malformed", "the envelope has no canonical (RFC 8785) form") from None
    try:
        verify(data["from"], body, data["signature"])
    except (BadSignature, InvalidDid) as exc:
        raise EnvelopeRejected("bad_signature", str(exc)) from None
    sent_at = data["sent_at"]
    if abs(now_ms - sent_at) > max_age_ms:
        raise EnvelopeRejected("stale", f"sent_at {sent_at} is over {max_age_ms} ms from now ({now_ms})")
    if replay is not None and not replay.check_and_add(data["signature"], sent_at, now_ms - max_age_ms):
        raise EnvelopeRejected("replayed", "this envelope was already received")
    return Envelope(data["network"], data["from"], data["node"], data["addr"], sent_at, data["kind"], data["payload"])
