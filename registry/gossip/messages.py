"""Wire messages of the SWIM + Lifeguard membership protocol.

Every message is a small frozen dataclass whose fields are JSON scalars (or, for push/pull,
lists of them), so a transport can sign and send a packet as plain JSON. A *packet* is a list of
messages handled in order: the protocol message(s) (ping, ack, ...) then piggybacked broadcasts,
the way memberlist builds compound messages. Messages are immutable: the simulator hands one
object to several nodes, and a node may re-broadcast the message it received.

| message    | paper mechanism                                                          |
|------------|--------------------------------------------------------------------------|
| `Ping`     | SWIM direct probe                                                        |
| `Ack`      | SWIM probe answer (also relayed by an indirect-probe helper)             |
| `PingReq`  | SWIM indirect probe through k helpers                                    |
| `Nack`     | Lifeguard: a helper saying "I asked, the target did not answer"          |
| `Alive`    | SWIM suspicion subprotocol: alive / refutation with a higher incarnation |
| `Suspect`  | SWIM suspicion subprotocol; Lifeguard counts distinct accusers           |
| `Dead`     | SWIM confirm (faulty); `accuser == node` means a graceful leave          |
| `PushPull` | memberlist full state exchange (join and periodic anti-entropy)          |
| `UserMsg`  | an opaque payload of the layer above, disseminated like `Alive` & co.    |
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

__all__ = [
    "Ack",
    "Alive",
    "Dead",
    "Message",
    "MemberState",
    "Nack",
    "Ping",
    "PingReq",
    "PushPull",
    "Suspect",
    "UserMsg",
    "WireError",
    "decode_packet",
    "encode_packet",
    "wire_size",
]

#: One member as carried by `PushPull`: (node id, address, incarnation, state value).
MemberState = tuple[str, str, int, str]

_STATES = frozenset({"alive", "suspect", "dead", "left"})


class WireError(ValueError):
    """A packet that does not decode into known, well-typed messages."""


# Broadcasts (the messages that get queued and re-sent) memoise their encoded size in `_size`,
# which is no protocol field: it is never encoded, compared or set by callers.
_SIZE = field(default=-1, init=False, repr=False, compare=False)


@dataclass(frozen=True, slots=True)
class Ping:
    """SWIM ping. `target` is the node id the sender means to reach; a node acks only pings
    addressed to itself, so a reused address never answers for a node that is gone."""

    TYPE: ClassVar[str] = "ping"
    seq: int
    target: str


@dataclass(frozen=True, slots=True)
class Ack:
    """SWIM ack of the ping (or of the indirect probe) with sequence number `seq`."""

    TYPE: ClassVar[str] = "ack"
    seq: int


@dataclass(frozen=True, slots=True)
class Nack:
    """Lifeguard nack: the helper of indirect probe `seq` got no ack from the target in time.
    A prober that expected nacks and did not get them blames its own health (LHM)."""

    TYPE: ClassVar[str] = "nack"
    seq: int


@dataclass(frozen=True, slots=True)
class PingReq:
    """SWIM ping-req: ask the receiver to ping `target` at `target_addr` and relay the ack as
    `Ack(seq)`, or (Lifeguard) to answer `Nack(seq)` when the target stays silent."""

    TYPE: ClassVar[str] = "ping-req"
    seq: int
    target: str
    target_addr: str


@dataclass(frozen=True, slots=True)
class Alive:
    """`node` is alive at `addr` with `incarnation`; a higher incarnation overrides suspicion
    (SWIM section 4.2), which is how a suspected node refutes."""

    TYPE: ClassVar[str] = "alive"
    node: str
    addr: str
    incarnation: int
    _size: int = _SIZE


@dataclass(frozen=True, slots=True)
class Suspect:
    """`accuser` suspects `node` at `incarnation` (SWIM suspicion). Lifeguard counts distinct
    accusers as independent confirmations that shorten the suspicion timeout."""

    TYPE: ClassVar[str] = "suspect"
    node: str
    incarnation: int
    accuser: str
    _size: int = _SIZE


@dataclass(frozen=True, slots=True)
class Dead:
    """`node` is faulty at `incarnation` (SWIM confirm). When `accuser == node` the node left
    gracefully (memberlist's convention), and members record it as left, not dead."""

    TYPE: ClassVar[str] = "dead"
    node: str
    incarnation: int
    accuser: str
    _size: int = _SIZE


@dataclass(frozen=True, slots=True)
class PushPull:
    """Full state exchange (memberlist push/pull): the sender's member table plus the layer
    above's state. `reply` is false on the request and true on the answer; `join` marks the
    exchange a new node makes with its seeds."""

    TYPE: ClassVar[str] = "push-pull"
    join: bool
    reply: bool
    members: tuple[MemberState, ...]
    user_state: Any


@dataclass(frozen=True, slots=True)
class UserMsg:
    """An opaque JSON payload of the layer above, spread with the same retransmit-limited
    piggybacking as membership updates. A newer message with the same `key` replaces an
    older one still queued for dissemination."""

    TYPE: ClassVar[str] = "user"
    key: str
    payload: Any
    _size: int = _SIZE


Message = Ping | Ack | Nack | PingReq | Alive | Suspect | Dead | PushPull | UserMsg

_TYPES: dict[str, type] = {cls.TYPE: cls for cls in (Ping, Ack, Nack, PingReq, Alive, Suspect, Dead, PushPull, UserMsg)}
_FIELDS: dict[type, tuple[str, ...]] = {
    cls: tuple(f.name for f in fields(cls) if f.name != "_size") for cls in _TYPES.values()
}
#: The Python type each scalar field must have on the wire; `Any` fields are not listed.
_SCALARS = {
    "seq": int,
    "incarnation": int,
    "target": str,
    "target_addr": str,
    "node": str,
    "addr": str,
    "accuser": str,
    "key": str,
    "join": bool,
    "reply": bool,
}


def _to_wire(msg: Message) -> dict[str, Any]:
    out: dict[str, Any] = {"type": msg.TYPE}
    for name in _FIELDS[type(msg)]:
        out[name] = getattr(msg, name)
    return out


def encode_packet(packet: list[Message]) -> list[dict[str, Any]]:
    """The JSON-serialisable form of a packet (tuples become JSON arrays when dumped)."""
    return [_to_wire(m) for m in packet]


def _member_state(entry: Any) -> MemberState:
    if (
        not isinstance(entry, (list, tuple))
        or len(entry) != 4
        or not isinstance(entry[0], str)
        or not isinstance(entry[1], str)
        or type(entry[2]) is not int
        or not isinstance(entry[3], str)  # a list or an object is unhashable: not `in` a set
        or entry[3] not in _STATES
    ):
        raise WireError(f"bad push-pull member entry: {entry!r}")
    return (entry[0], entry[1], entry[2], entry[3])


def _from_wire(obj: Any) -> Message:
    if not isinstance(obj, dict):
        raise WireError("a message must be a JSON object")
    kind = obj.get("type")
    cls = _TYPES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise WireError(f"unknown message type {obj.get('type')!r}")
    names = _FIELDS[cls]
    if set(obj) != {"type", *names}:
        raise WireError(f"{cls.TYPE}: fields must be exactly {sorted(names)}")
    values = {}
    for name in names:
        value = obj[name]
        want = _SCALARS.get(name)
        if want is not None and type(value) is not want:
            raise WireError(f"{cls.TYPE}.{name} must be {want.__name__}")
        values[name] = value
    if cls is PushPull:
        if not isinstance(values["members"], (list, tuple)):
            raise WireError("push-pull.members must be an array")
        values["members"] = tuple(_member_state(e) for e in values["members"])
    return cls(**values)


def decode_packet(obj: Any, max_messages: int = 256) -> list[Message]:
    """Parse and type-check a packet received from the network; raise `WireError`."""
    if not isinstance(obj, list) or not obj or len(obj) > max_messages:
        raise WireError(f"a packet is a non-empty array of at most {max_messages} messages")
    return [_from_wire(m) for m in obj]


def wire_size(msg: Alive | Suspect | Dead | UserMsg) -> int:
    """Bytes of the compact JSON encoding of a broadcast (for packet budgets), computed once per
    message object: a re-broadcast message is the object that arrived."""
    if msg._size < 0:
        object.__setattr__(msg, "_size", len(json.dumps(_to_wire(msg), separators=(",", ":"))))
    return msg._size
