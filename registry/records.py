"""Signing and checking agent records, tombstones and revocations.

Only the checks that need nothing but the record live here: its signature and, given the
caller's network and clock, its freshness. Checks against stored state (a higher ``seq`` than
the one held) belong to the store.

Ed25519 cannot recover a signer's key from a signature, so a record signed by some key other
than the one its DID names is indistinguishable from a tampered one at verification time
(``bad_signature``); ``did_mismatch`` is raised where the mismatch is known, when signing.
"""

from __future__ import annotations

from registry.identity import BadSignature, Identity, InvalidDid, b64url_encode, verify
from schemas.agent_record import AgentRecord, Revocation, SignedModel, Tombstone, canonical_bytes, signer_of


class RecordRejected(Exception):
    """A record, tombstone or revocation is refused; ``reason_code`` is short, stable and
    machine-readable; ``details`` are facts a client can act on (sent with the error)."""

    def __init__(self, reason_code: str, message: str, **details: object) -> None:
        super().__init__(f"{reason_code}: {message}")
        self.reason_code = reason_code
        self.message = message
        self.details = details


def sign(model: SignedModel, identity: Identity) -> SignedModel:
    """A copy of ``model`` carrying ``identity``'s signature over its canonical bytes."""
    if identity.did != signer_of(model):
        raise RecordRejected("did_mismatch", f"{identity.did} cannot sign for {signer_of(model)}")
    signature = identity.sign(canonical_bytes(model))
    return model.model_copy(update={"signature": b64url_encode(signature)})


def verify_signature(model: AgentRecord | Tombstone | Revocation) -> None:
    """Raise RecordRejected unless its signer's key (``signer_of``) signed exactly this content."""
    if model.signature is None:
        raise RecordRejected("unsigned", f"no signature on the record of {model.did}")
    try:
        verify(signer_of(model), canonical_bytes(model), model.signature)
    except InvalidDid as e:
        raise RecordRejected("malformed_did", str(e)) from None
    except BadSignature as e:
        raise RecordRejected("bad_signature", str(e)) from None


def check_fresh(
    record: AgentRecord | Tombstone | Revocation,
    network: str,
    now: int,
    skew_s: int,
    *,
    max_age_s: int | None = None,
) -> None:
    """Raise RecordRejected unless the record belongs to ``network`` and is current at ``now``.

    ``skew_s`` tolerates clocks that disagree, in both directions. ``stale`` applies only when
    ``max_age_s`` is given: the register path passes the skew window so a captured registration
    cannot be replayed long after it was signed, while gossip relays omit it (records legitimately
    travel for their whole lease) and rely on ``seq`` and expiry instead. Tombstones never expire.
    """
    issued = record.issued_at
    if record.network != network:
        raise RecordRejected("wrong_network", f"for network {record.network!r}, not {network!r}")
    if issued > now + skew_s:
        raise RecordRejected("issued_in_future", f"issued_at {issued} > now {now} + skew {skew_s}s")
    if isinstance(record, AgentRecord) and record.expires_at + skew_s <= now:
        raise RecordRejected("expired", f"expired at {record.expires_at}, now {now}, skew {skew_s}s")
    if max_age_s is not None and issued + max_age_s < now:
        raise RecordRejected("stale", f"issued_at {issued} is over {max_age_s}s before now {now}")
