"""Names belong to someone (registry/names.py), revocations and the lease cap, in the registry
itself on both backends: direct writes, records relayed by gossip, and two nodes that each saw a
different first registrant."""

from __future__ import annotations

import asyncio
import time

import pytest

from gateway.core.backends import EmbeddedBackend
from registry.identity import Identity
from registry.records import RecordRejected, sign
from registry.service import Registry, stream_of
from schemas.agent_record import AgentRecord, Revocation, Tombstone
from tests.conftest import FAST

NET = "interlace"


class Clock:
    """A registry clock the test moves (leases run out without waiting for them)."""

    def __init__(self) -> None:
        self.now = float(int(time.time()))

    def __call__(self) -> float:
        return self.now


def record(
    identity: Identity,
    name: str,
    seq: int = 1,
    *,
    now: int,
    claimed_at: int | None = None,
    replicas: list[Identity] | None = None,
    ttl: int = 600,
) -> AgentRecord:
    data = {
        "did": identity.did,
        "name": name,
        "version": "1",
        "skills": [{"id": "s", "name": "s"}],
        "endpoints": {"bus": name},
        "home_node": "test",
        "seq": seq,
        "issued_at": now,
        "expires_at": now + ttl,
        "network": NET,
    }
    if claimed_at is not None:
        data["claimed_at"] = claimed_at
    if replicas is not None:
        data["replicas"] = [r.did for r in replicas]
        data.setdefault("claimed_at", now)
    return sign(AgentRecord.model_validate(data), identity)


async def refused(registry: Registry, model, code: str, **kw) -> RecordRejected:
    with pytest.raises(RecordRejected) as info:
        await registry.submit(model, **kw)
    assert info.value.reason_code == code, info.value
    return info.value


async def until(condition, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def registry(backend, clock):
    reg = Registry(backend.records, NET, skew_s=60, max_lease_s=3600, clock=clock)
    changes: list[tuple[str, AgentRecord | None]] = []
    reg.subscribe(lambda did, rec: changes.append((did, rec)))
    reg.changes = changes  # type: ignore[attr-defined]
    await reg.start()
    yield reg
    await reg.stop()


def dids(records: list[AgentRecord]) -> set[str]:
    return {r.did for r in records}


# ---- one node ---------------------------------------------------------------------------------


async def test_a_name_belongs_to_its_first_registrant(registry, clock):
    now = int(clock.now)
    owner, stranger = Identity.generate(), Identity.generate()
    await registry.submit(record(owner, "echo", now=now))
    error = await refused(registry, record(stranger, "echo", now=now), "name_taken")
    assert "echo" in error.message
    assert dids(registry.by_name("echo")) == {owner.did} and registry.get(stranger.did) is None
    # the owner renews; the stranger keeps being refused, also with an earlier claim time
    await registry.submit(record(owner, "echo", 2, now=now, claimed_at=now))
    await refused(registry, record(stranger, "echo", now=now, claimed_at=now - 30), "name_taken")
    assert registry.claim("echo").owner == owner.did


async def test_replicas_named_by_the_owner_share_the_name_and_its_queue(registry, clock):
    now = int(clock.now)
    owner, replica, stranger = (Identity.generate() for _ in range(3))
    await registry.submit(record(owner, "twin", now=now, replicas=[replica]))
    await registry.submit(record(replica, "twin", now=now + 1))  # joins after its owner
    await refused(registry, record(stranger, "twin", now=now), "name_taken")
    members = registry.by_name("twin")
    assert dids(members) == {owner.did, replica.did} and {stream_of(r) for r in members} == {"twin"}
    # The owner drops the replica from its list: the replica's record stays held, but is no
    # longer live (listeners are told), and its renewals are refused.
    await registry.submit(record(owner, "twin", 2, now=now, claimed_at=now, replicas=[]))
    assert dids(registry.by_name("twin")) == {owner.did} and registry.get(replica.did) is None
    assert (replica.did, None) in registry.changes[-2:]
    await refused(registry, record(replica, "twin", 2, now=now + 1), "name_taken")


async def test_a_bus_endpoint_cannot_point_at_another_name():
    owner = Identity.generate()
    data = record(owner, "evil", now=int(time.time())).model_dump(mode="json", exclude={"signature"})
    data["endpoints"] = {"bus": "echo"}
    with pytest.raises(ValueError, match="endpoints.bus must be the agent's name"):
        AgentRecord.model_validate(data)


async def test_the_name_stays_with_the_group_while_a_replica_outlives_the_owner(registry, clock):
    now = int(clock.now)
    owner, replica, stranger = (Identity.generate() for _ in range(3))
    await registry.submit(record(owner, "twin", now=now, replicas=[replica], ttl=30))
    await registry.submit(record(replica, "twin", now=now + 1, ttl=300))
    clock.now += 60  # the owner's lease ran out; the replica's did not
    await until(lambda: registry.seq_of(owner.did) is None)
    assert dids(registry.by_name("twin")) == {replica.did}
    assert registry.claim("twin").owner == owner.did  # its last record anchors the name
    later = int(clock.now)
    await refused(registry, record(stranger, "twin", now=later), "name_taken")
    # the owner comes back: it repeats its claim (a fresh one is told which), and leads again
    error = await refused(registry, record(owner, "twin", 2, now=later, replicas=[replica]), "claim_mismatch")
    assert error.details == {"claimed_at": now}
    await registry.submit(record(owner, "twin", 3, now=later, claimed_at=now, replicas=[replica]))
    assert dids(registry.by_name("twin")) == {owner.did, replica.did}
    # every member gone: the name is free
    await registry.submit(sign(Tombstone(did=owner.did, seq=4, issued_at=later, network=NET), owner))
    await registry.submit(sign(Tombstone(did=replica.did, seq=2, issued_at=later, network=NET), replica))
    assert registry.claim("twin") is None
    await registry.submit(record(stranger, "twin", now=later))
    assert dids(registry.by_name("twin")) == {stranger.did}


async def test_claims_cannot_be_dated_back(registry, clock):
    now = int(clock.now)
    owner, replica = Identity.generate(), Identity.generate()
    # a new claim starts now (within the skew window), whatever it says
    error = await refused(registry, record(owner, "old", now=now, claimed_at=now - 3600), "claim_stale")
    assert error.details == {"claimed_at": None}
    await registry.submit(record(owner, "old", now=now, replicas=[replica]))
    # a renewal repeats its claim time: earlier or later is refused and told the one to sign
    for other in (now - 10, now + 5):
        error = await refused(registry, record(owner, "old", 2, now=now + 10, claimed_at=other), "claim_mismatch")
        assert error.details == {"claimed_at": now}
    # a replica cannot claim from before its owner (it would take the name over)
    await refused(registry, record(replica, "old", now=now, claimed_at=now - 30), "name_taken")
    assert registry.claim("old").owner == owner.did
    # records without claimed_at (older clients) renew freely: each renewal claims anew
    solo = Identity.generate()
    await registry.submit(record(solo, "solo", now=now))
    await registry.submit(record(solo, "solo", 2, now=now + 5))


async def test_a_lease_over_the_cap_is_refused(registry, clock):
    now = int(clock.now)
    me = Identity.generate()
    error = await refused(registry, record(me, "long", now=now, ttl=3601), "lease_too_long")
    assert error.details == {"max_lease_s": 3600}
    await refused(registry, record(me, "long", now=now, ttl=2**40), "lease_too_long", relayed=True)
    assert await registry.submit(record(me, "long", now=now, ttl=3600)) == "created"


# ---- relayed records and two nodes ------------------------------------------------------------


async def test_a_relayed_squatter_does_not_take_the_name(registry, clock):
    now = int(clock.now)
    owner, squatter = Identity.generate(), Identity.generate()
    await registry.submit(record(owner, "echo", now=now - 20, claimed_at=now - 20))
    await refused(registry, record(squatter, "echo", now=now), "name_taken", relayed=True)
    assert dids(registry.by_name("echo")) == {owner.did}


async def two_nodes(clock: Clock) -> tuple[Registry, Registry]:
    nodes = tuple(Registry(EmbeddedBackend(FAST).records, NET, skew_s=60, clock=clock) for _ in range(2))
    for node in nodes:
        await node.start()
    return nodes  # type: ignore[return-value]


@pytest.mark.parametrize("later_first", [True, False])
async def test_nodes_that_saw_different_first_registrants_converge_on_the_earlier_claim(clock, later_first):
    """A partition: node A admits X, node B admits Y a little later; each then relays its record
    to the other. Both end with X's claim, whichever record moves first; Y's records are refused
    (A) or held back (B), and Y's renewals at B are refused."""
    a, b = await two_nodes(clock)
    try:
        now = int(clock.now)
        x, y = Identity.generate(), Identity.generate()
        at_a, at_b = record(x, "echo", now=now - 10, claimed_at=now - 10), record(y, "echo", now=now)
        await a.submit(at_a)
        await b.submit(at_b)
        if later_first:
            await refused(a, at_b, "name_taken", relayed=True)
            await b.submit(at_a, relayed=True)
        else:
            await b.submit(at_a, relayed=True)
            await refused(a, at_b, "name_taken", relayed=True)
        for node in (a, b):
            assert node.claim("echo").owner == x.did
            assert dids(node.by_name("echo")) == {x.did} and node.get(y.did) is None
        await refused(b, record(y, "echo", 2, now=now), "name_taken")
    finally:
        await a.stop()
        await b.stop()


async def test_equal_claim_times_go_to_the_smaller_did(clock):
    a, b = await two_nodes(clock)
    try:
        now = int(clock.now)
        first, second = sorted((Identity.generate(), Identity.generate()), key=lambda i: i.did)
        await a.submit(record(first, "tie", now=now))
        await b.submit(record(second, "tie", now=now))
        await b.submit(record(first, "tie", now=now), relayed=True)
        await refused(a, record(second, "tie", now=now), "name_taken", relayed=True)
        assert a.claim("tie") == b.claim("tie") and a.claim("tie").owner == first.did
    finally:
        await a.stop()
        await b.stop()


async def test_a_replica_that_ties_its_owner_joins_only_behind_it(registry, clock):
    """Equal claim times go by DID: a replica whose DID sorts first would lead, so it is refused."""
    now = int(clock.now)
    owner, replica = Identity.generate(), Identity.generate()
    await registry.submit(record(owner, "pair", now=now, replicas=[replica]))
    attempt = record(replica, "pair", now=now, claimed_at=now)
    if replica.did < owner.did:  # the replica would become the owner: refused
        await refused(registry, attempt, "name_taken")
    else:
        await registry.submit(attempt)
    assert registry.claim("pair").owner == owner.did


# ---- revocations ------------------------------------------------------------------------------


async def test_a_revoked_did_is_dropped_and_cannot_register_until_unrevoked(registry, clock):
    now = int(clock.now)
    node, agent = Identity.generate(), Identity.generate()
    await registry.submit(record(agent, "bad", now=now))
    revocation = await registry.revoke(agent.did, node)
    assert revocation.node == node.did and revocation.revoked and registry.revoked(agent.did)
    assert registry.get(agent.did) is None and registry.by_name("bad") == []
    assert registry.changes[-1] == (agent.did, None)
    await refused(registry, record(agent, "bad", 2, now=now), "revoked")
    await refused(registry, record(agent, "bad", 2, now=now), "revoked", relayed=True)
    assert registry.digest()[f"revoked:{agent.did}"] == revocation.seq
    lifted = await registry.revoke(agent.did, node, revoked=False)
    assert lifted.seq > revocation.seq and not registry.revoked(agent.did)
    assert await registry.submit(record(agent, "bad", 3, now=now)) == "created"


async def test_relayed_revocations_count_only_from_trusted_nodes(registry, clock):
    now = int(clock.now)
    trusted, stranger, agent = (Identity.generate() for _ in range(3))
    registry.revokers = lambda did: did == trusted.did
    await registry.submit(record(agent, "bad", now=now))

    def revocation(by: Identity, seq: int, revoked: bool = True) -> Revocation:
        return sign(Revocation(did=agent.did, revoked=revoked, node=by.did, seq=seq, issued_at=now, network=NET), by)

    await refused(registry, revocation(stranger, 5), "untrusted_node", relayed=True)
    forged = revocation(trusted, 5).model_copy(update={"revoked": False})
    await refused(registry, forged, "bad_signature", relayed=True)
    assert registry.get(agent.did) is not None
    assert await registry.submit(revocation(trusted, 5), relayed=True) == "revoked"
    assert registry.get(agent.did) is None
    await refused(registry, revocation(trusted, 4, revoked=False), "stale_seq", relayed=True)  # older: ignored
    assert registry.revoked(agent.did)


async def test_a_second_node_on_the_same_store_follows_revocations(backend, registry, clock):
    other = Registry(backend.records, NET, skew_s=60, clock=clock)
    await other.start()
    try:
        now = int(clock.now)
        agent = Identity.generate()
        await registry.submit(record(agent, "bad", now=now))
        await until(lambda: other.get(agent.did) is not None)
        await registry.revoke(agent.did, Identity.generate())
        await until(lambda: other.revoked(agent.did) and other.get(agent.did) is None)
        await refused(other, record(agent, "bad", 2, now=now), "revoked")
    finally:
        await other.stop()
