"""Who holds an agent name: a claim computed from the signed records that carry the name.

A name belongs to the DID that claimed it first, and to the replicas that DID's record names,
until all their records are gone. The claim of a name is a pure function of the records that
carry it (``claim_of``), so every node that holds the same records agrees on it, whatever order
they arrived in:

* each record claims its name since its claim time, ``claimed_at`` (absent: ``issued_at``);
* the owner is the record with the earliest claim time, ties broken by the smaller DID (string
  order); its group is its DID plus the DIDs its ``replicas`` list names;
* records of the name outside that group are held but not live: they are neither listed nor
  routed to, and their agents may not use the name's queue.

The registry (``registry.service``) admits records so that the first registrant is that owner:

* a direct registration never moves a name: a DID outside the owner's group gets
  ``name_taken``, and so does a record whose claim time would put it before the owner;
* a DID's claim time is fixed while it holds the name: a renewal repeats it (``claim_mismatch``,
  which names the time to repeat), and a new claim starts within the clock-skew window of the
  node it is made at (``claim_stale``), so no one claims a name in the past;
* a record relayed by gossip (or written by a node that shares the store) is kept when it is in
  the group of the claim it makes with the records held: two nodes that each admitted a different
  first registrant (a partition, or two registrations racing the gossip) converge on the earlier
  claim, ties to the smaller DID; the later claimant's records are refused or held back
  everywhere, and its renewals get ``name_taken``.

When the owner's record expires or is deregistered while members of its group live, the name
stays with the group: the registry keeps the owner's last record as the name's *anchor* (it
claims, it is not live) until the owner returns or the last member's record is gone. A node that
never held the owner's record (it expired before reaching the node, or the node restarted since)
sees the members' own claims instead; give every member's record the same ``replicas`` list (the
whole group) and the group holds the name whichever member holds it. A revoked owner's record
anchors nothing: its consent no longer counts.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

from schemas.agent_record import AgentRecord


@dataclasses.dataclass(frozen=True, slots=True)
class Claim:
    """A name's holder: its owner's DID and claim time, and the DIDs of its group."""

    owner: str
    since: int
    members: frozenset[str]


def claim_time(record: AgentRecord) -> int:
    return record.issued_at if record.claimed_at is None else record.claimed_at


def claim_of(records: Iterable[AgentRecord]) -> Claim | None:
    """The claim that ``records`` (every record and anchor of one name) make; None if none."""
    owner = min(records, key=lambda r: (claim_time(r), r.did), default=None)
    if owner is None:
        return None
    return Claim(owner.did, claim_time(owner), frozenset({owner.did, *(owner.replicas or ())}))
