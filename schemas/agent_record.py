"""Signed agent records, tombstones and revocations: what the registry stores and gossips.

A record (or tombstone) is signed by the agent's own key over ``canonical_bytes`` (RFC 8785 JCS
of the model without ``signature``), so gateways can relay it but never alter it; a revocation
is signed the same way by the gateway node that issued it (``node``). Two implementations must
produce the same bytes from the same JSON, which is why the models admit integers and strings
only: floats have no portable canonical form, and pydantic's usual coercions (1.0 -> 1, 1 -> "1",
true -> 1) would let two different JSON documents parse to one model. Validation is strict and
any float anywhere in the input is refused with a message that says so.
"""

from __future__ import annotations

import time
from typing import Annotated, Any, Literal, TypeVar

import rfc8785
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    model_validator,
)

MAX_SAFE_INT = 2**53 - 1  # JCS (and JavaScript) integers are exact only up to here

_S = StringConstraints
Slug = Annotated[str, _S(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")]
LabelKey = Annotated[str, _S(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._/-]*$")]
Name = Annotated[str, _S(min_length=1, max_length=128)]
Text = Annotated[str, _S(max_length=4096)]
Short = Annotated[str, _S(min_length=1, max_length=256)]
Did = Annotated[str, _S(max_length=256, pattern=r"^did:[a-z0-9]+:[A-Za-z0-9._:%-]+$")]
Url = Annotated[str, _S(max_length=2048, pattern=r"^https?://\S+$")]
MediaType = Annotated[str, _S(min_length=3, max_length=128, pattern=r"^[\w.+-]+/[\w.+*-]+$")]
Signature = Annotated[str, _S(pattern=r"^[A-Za-z0-9_-]{86}$")]  # 64 bytes, unpadded base64url
Count = Annotated[int, Field(ge=0, le=MAX_SAFE_INT)]
Timestamp = Annotated[int, Field(ge=0, le=MAX_SAFE_INT)]  # unix seconds


class CardError(ValueError):
    """A human-written agent card cannot become a record; the message lists every problem."""


def _reject_floats(data: Any) -> None:
    """Raise on the first float in a JSON-like tree (iterative: nesting depth cannot blow up)."""
    stack: list[tuple[str, Any]] = [("", data)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, float):
            raise ValueError(
                f"floating-point numbers are not allowed (found {value!r} at "
                f"{path or 'top level'}); use integers (e.g. micro-units) or strings"
            )
        if isinstance(value, dict):
            stack.extend((f"{path}.{k}" if path else str(k), v) for k, v in value.items())
        elif isinstance(value, list | tuple):
            stack.extend((f"{path}[{i}]", v) for i, v in enumerate(value))


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _no_floats(cls, data: Any) -> Any:
        _reject_floats(data)
        return data

    def dump(self) -> dict[str, Any]:
        """The JSON form (absent optionals omitted), as sent on the wire."""
        return self.model_dump(mode="json", exclude_none=True)


class Skill(_Strict):
    id: Slug
    name: Name
    description: Text = ""
    tags: Annotated[list[Slug], Field(max_length=32)] = []
    input_modes: Annotated[list[MediaType], Field(min_length=1, max_length=16)] = ["text/plain"]
    output_modes: Annotated[list[MediaType], Field(min_length=1, max_length=16)] = ["text/plain"]
    examples: Annotated[list[Text], Field(max_length=16)] = []


class Endpoints(_Strict):
    """Where the agent is reached: a URL per protocol it speaks, or a bus stream name."""

    mcp: Url | None = None
    a2a: Url | None = None
    acp: Url | None = None
    anp: Url | None = None
    bus: Slug | None = None

    @model_validator(mode="after")
    def _at_least_one(self) -> Endpoints:
        if not any(v is not None for v in (self.mcp, self.a2a, self.acp, self.anp, self.bus)):
            raise ValueError("an agent needs at least one endpoint (mcp, a2a, acp, anp or bus)")
        return self


class AgentRecord(_Strict):
    """An agent's signed, leased record.

    Names belong to someone (``registry.names``): ``name`` is held by the DID that claimed it
    first, whose record may name ``replicas``, the DIDs it lets register under the same name and
    share its queue (the bus stream named after it; a ``bus`` endpoint, when given, must be that
    stream). ``claimed_at`` is when this DID's claim on ``name`` began: kept the same across
    renewals (absent: ``issued_at``, a claim that starts again with every renewal), it decides
    which of two claims on one name wins when gateway nodes saw different first registrants.
    A record that names replicas must carry it, or its group's claim would drift later with every
    renewal and pass to one of its replicas.
    """

    did: Did
    name: Slug  # names agent streams and URL paths (/a2a/agents/{name})
    description: Text = ""
    version: Annotated[str, _S(min_length=1, max_length=64)]
    skills: Annotated[list[Skill], Field(min_length=1, max_length=64)]
    endpoints: Endpoints
    cost: Count | None = None
    labels: Annotated[dict[LabelKey, Short], Field(max_length=64)] = {}
    home_node: Short
    seq: Count
    issued_at: Timestamp
    expires_at: Timestamp
    network: Slug
    replicas: Annotated[list[Did], Field(max_length=64)] | None = None
    claimed_at: Timestamp | None = None
    signature: Signature | None = None

    @model_validator(mode="after")
    def _consistent(self) -> AgentRecord:
        if self.expires_at <= self.issued_at:
            raise ValueError("expires_at must be after issued_at")
        if self.endpoints.bus is not None and self.endpoints.bus != self.name:
            raise ValueError(
                f"endpoints.bus must be the agent's name ({self.name!r}): a name's queue is the name's own"
            )
        if self.claimed_at is not None and self.claimed_at > self.issued_at:
            raise ValueError("claimed_at cannot be after issued_at")
        if self.replicas is not None:
            if len(self.replicas) != len(set(self.replicas)) or self.did in self.replicas:
                raise ValueError("replicas must be distinct DIDs other than the record's own")
            if self.claimed_at is None:
                raise ValueError("a record that names replicas must carry claimed_at (see AgentRecord)")
        ids = [s.id for s in self.skills]
        if len(ids) != len(set(ids)):
            raise ValueError(f"skill ids must be unique, got {ids}")
        return self


class Tombstone(_Strict):
    """A signed deregistration: replaces the agent's record when its seq is higher."""

    type: Literal["tombstone"] = "tombstone"
    did: Did
    seq: Count
    issued_at: Timestamp
    network: Slug
    signature: Signature | None = None


class Revocation(_Strict):
    """An operator's revocation of an agent DID (``revoked``), or its lifting (``revoked`` false),
    signed by the gateway node that issued it. Per revoked DID the highest ``seq`` holds."""

    type: Literal["revocation"] = "revocation"
    did: Did  # the agent revoked
    revoked: bool
    node: Did  # the node that signs it
    seq: Count
    issued_at: Timestamp
    network: Slug
    signature: Signature | None = None


SignedModel = TypeVar("SignedModel", AgentRecord, Tombstone, Revocation)


def signer_of(model: AgentRecord | Tombstone | Revocation) -> str:
    """The DID whose key signs ``model``: the agent's, or for a revocation the issuing node's."""
    return model.node if isinstance(model, Revocation) else model.did


def canonical_bytes(model: AgentRecord | Tombstone | Revocation) -> bytes:
    """The signed bytes: RFC 8785 JCS of the JSON form without ``signature``."""
    return rfc8785.dumps(model.model_dump(mode="json", exclude={"signature"}, exclude_none=True))


CARD_FIELDS = ("name", "description", "version", "skills", "endpoints", "cost", "labels", "replicas")


def record_from_card(
    card: dict[str, Any],
    did: str,
    seq: int,
    ttl: int,
    network: str,
    home_node: str,
    *,
    now: int | None = None,
    claimed_at: int | None = None,
) -> AgentRecord:
    """Build an unsigned record from an agent card (the dict loaded from agent.yaml).

    The record is valid from ``now`` (default: the current time) for ``ttl`` seconds, and claims
    its name since ``claimed_at`` (default: ``now``; a renewal passes its claim's start).
    Raises CardError naming each bad field.
    """
    if not isinstance(card, dict):
        raise CardError(f"an agent card is a mapping, got {type(card).__name__}")
    unknown = sorted(str(k) for k in card if k not in CARD_FIELDS)
    if unknown:
        raise CardError(f"unknown agent card field(s) {unknown}; allowed: {list(CARD_FIELDS)}")
    if not isinstance(ttl, int) or isinstance(ttl, bool) or ttl <= 0:
        raise CardError(f"ttl must be a positive integer number of seconds, got {ttl!r}")
    now = int(time.time()) if now is None else now
    fields = {k: card[k] for k in CARD_FIELDS if card.get(k) is not None}
    try:
        return AgentRecord.model_validate(
            fields
            | dict(
                did=did,
                seq=seq,
                issued_at=now,
                expires_at=now + ttl,
                network=network,
                home_node=home_node,
                claimed_at=now if claimed_at is None else claimed_at,
            )
        )
    except ValidationError as e:
        problems = "; ".join(
            f"{'.'.join(map(str, err['loc'])) or 'card'}: " + err["msg"].removeprefix("Value error, ")
            for err in e.errors()
        )
        raise CardError(f"invalid agent card: {problems}") from None
