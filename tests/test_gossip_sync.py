"""Registry anti-entropy (registry/gossip/sync.py) against a recording stand-in for the transport:
a push/pull sends exactly what the peer lacks, relayed records are judged by the registry before
they are relayed (a squatter on a name included), fresh local writes become rumours with their
origin, and revocations travel both ways from trusted nodes only."""

from __future__ import annotations

import asyncio
import functools
import time
from types import SimpleNamespace

import pytest

from gateway.registry_api import relay_refusal
from registry.gossip.sync import RegistrySync
from registry.identity import Identity
from registry.records import sign
from registry.service import Registry
from registry.store import MemoryRecordStore
from schemas.agent_record import AgentRecord, Revocation, Tombstone

NET = "interlace"


class FakeGossip:
    """What RegistrySync uses of HttpGossip, recording instead of sending."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str, dict]] = []
        self.broadcasts: list[tuple[str, dict]] = []
        self.current_sender = SimpleNamespace(addr="http://peer:1", node="peer", sender="did:key:peer")
        self.node = SimpleNamespace(broadcast=lambda key, payload: self.broadcasts.append((key, payload)))
        self.handlers = {}

    def on_kind(self, kind, handler):
        self.handlers[kind] = handler

    def send(self, addr, kind, payload):
        self.sent.append((addr, kind, payload))

    def wake(self):
        pass


def record(identity: Identity, seq: int, *, ttl: int = 600, issued_at: int | None = None, **extra) -> AgentRecord:
    now = int(time.time()) if issued_at is None else issued_at
    name = extra.pop("name", f"agent-{identity.did[-8:]}")  # names belong to one DID each
    data = {
        "did": identity.did,
        "name": name,
        "version": "1",
        "skills": [{"id": "s", "name": "s"}],
        "endpoints": {"bus": name},
        "home_node": "node-x",
        "seq": seq,
        "issued_at": now,
        "expires_at": now + ttl,
        "network": NET,
        **extra,
    }
    return sign(AgentRecord.model_validate(data), identity)


def tombstone(identity: Identity, seq: int) -> Tombstone:
    return sign(Tombstone(did=identity.did, seq=seq, issued_at=int(time.time()), network=NET), identity)


async def until(condition, timeout: float = 5.0) -> None:
    """Poll a condition on state that has no event to await (bounded)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


@pytest.fixture
async def node():
    registry = Registry(MemoryRecordStore(), NET, skew_s=60)
    await registry.start()
    sync = RegistrySync(registry, "me")
    gossip = FakeGossip()
    sync.attach(gossip)
    await sync.start()
    yield SimpleNamespace(registry=registry, sync=sync, gossip=gossip)
    await sync.stop()
    await registry.stop()


async def test_push_pull_sends_only_what_the_peer_lacks_or_holds_older(node):
    same, newer, fresh, gone, short = (Identity.generate() for _ in range(5))
    await node.registry.submit(record(same, 5))
    await node.registry.submit(record(newer, 3))
    await node.registry.submit(record(fresh, 1))
    await node.registry.submit(record(gone, 1))
    await node.registry.submit(tombstone(gone, 7))
    await node.registry.submit(record(short, 1, issued_at=int(time.time()) - 100, ttl=90), relayed=True)
    await until(lambda: len(node.sync.origin) == 5)  # the store feed has caught up
    node.gossip.sent.clear()

    peer = {same.did: 5, newer.did: 1, gone.did: 2, "did:key:z6MkSomeoneElse": 9}
    node.sync.merge_remote_state({"digest": peer}, join=False)
    [(addr, kind, payload)] = node.gossip.sent
    assert (addr, kind) == ("http://peer:1", "records")
    sent = {(e["record"]["did"], e["record"]["seq"], e["record"].get("type", "record")) for e in payload["entries"]}
    # not `same` (equal seq), not `short` (its lease ran out), nothing for the DID only the peer has
    assert sent == {(newer.did, 3, "record"), (fresh.did, 1, "record"), (gone.did, 7, "tombstone")}
    assert all(e["origin"] == "me" for e in payload["entries"])
    assert node.sync.local_state(join=True) == {"digest": node.registry.digest()}

    node.gossip.sent.clear()
    node.sync.merge_remote_state({"digest": node.registry.digest()}, join=False)
    assert node.gossip.sent == []  # in sync: nothing moves
    for junk in (None, [], {"digest": "nope"}):
        node.sync.merge_remote_state(junk, join=False)
    assert node.gossip.sent == []


async def test_relayed_records_are_judged_before_they_are_relayed(node):
    agent = Identity.generate()
    good = record(agent, 2)
    altered = good.model_copy(update={"seq": 3, "description": "altered"})  # signature no longer matches
    foreign = record(Identity.generate(), 1, network="elsewhere")

    assert node.sync.notify_user(agent.did, {"record": altered.dump(), "origin": "evil"}) is False
    node.gossip.handlers["records"](
        SimpleNamespace(
            node="peer",
            sender="did:key:peer",
            payload={"entries": [{"record": foreign.dump(), "origin": "peer"}, {"record": {"did": "x"}}, "junk"]},
        )
    )
    assert node.sync.notify_user(agent.did, {"record": good.dump(), "origin": "node-c"}) is False
    await until(lambda: node.sync.stats["accepted"] == 1)
    stats = node.sync.stats
    assert stats["rejected.bad_signature"] == 1 and stats["rejected.wrong_network"] == 1
    assert stats["rejected.malformed"] == 2
    assert node.registry.get(agent.did).description == "" and node.registry.get(agent.did).seq == 2
    assert node.registry.get(foreign.did) is None

    # Accepted: relayed onward from the store feed, with the origin it came with.
    await until(lambda: any(k == agent.did for k, _ in node.gossip.broadcasts))
    [(key, payload)] = node.gossip.broadcasts
    assert payload == {"record": good.dump(), "origin": "node-c"} and node.sync.origin[agent.did] == "node-c"

    # The same record again (or an older one) is no news.
    node.sync.notify_user(agent.did, {"record": good.dump(), "origin": "node-c"})
    node.sync.notify_user(agent.did, {"record": record(agent, 1).dump(), "origin": "node-c"})
    await until(lambda: node.sync.stats["duplicate"] == 2)
    assert len(node.gossip.broadcasts) == 1


async def test_local_writes_become_rumours_with_this_node_as_origin(node):
    agent = Identity.generate()
    await node.registry.submit(record(agent, 1))
    await until(lambda: node.gossip.broadcasts)
    [(key, payload)] = node.gossip.broadcasts
    assert key == agent.did and payload["origin"] == "me" and payload["record"]["seq"] == 1
    await node.registry.submit(tombstone(agent, 2))
    await until(lambda: len(node.gossip.broadcasts) == 2)
    assert node.gossip.broadcasts[-1][1]["record"]["type"] == "tombstone"


async def test_a_relayed_squatter_is_refused_and_never_relayed(node):
    owner, squatter = Identity.generate(), Identity.generate()
    await node.registry.submit(record(owner, 1, name="echo", issued_at=int(time.time()) - 5))
    await until(lambda: len(node.gossip.broadcasts) == 1)
    node.sync.notify_user(squatter.did, {"record": record(squatter, 1, name="echo").dump(), "origin": "evil"})
    await until(lambda: node.sync.stats["rejected.name_taken"] == 1)
    assert [r.did for r in node.registry.by_name("echo")] == [owner.did]
    assert [key for key, _ in node.gossip.broadcasts] == [owner.did]


async def test_revocations_travel_as_rumours_and_in_push_pull_from_trusted_nodes_only(node):
    agent, trusted, stranger = (Identity.generate() for _ in range(3))
    node.registry.revokers = lambda did: did == trusted.did
    await node.registry.submit(record(agent, 1))

    def revocation(by: Identity, seq: int) -> dict:
        body = Revocation(did=agent.did, revoked=True, node=by.did, seq=seq, issued_at=int(time.time()), network=NET)
        return {"record": sign(body, by).dump(), "origin": "peer"}

    node.sync.notify_user(f"revoked:{agent.did}", revocation(stranger, 1))
    await until(lambda: node.sync.stats["rejected.untrusted_node"] == 1)
    assert node.registry.get(agent.did) is not None
    node.sync.notify_user(f"revoked:{agent.did}", revocation(trusted, 2))
    await until(lambda: node.registry.revoked(agent.did))
    assert node.registry.get(agent.did) is None
    await until(lambda: any(key == f"revoked:{agent.did}" for key, _ in node.gossip.broadcasts))  # relayed onward
    node.gossip.sent.clear()
    node.sync.merge_remote_state({"digest": {}}, join=False)
    [(_, _, payload)] = node.gossip.sent
    assert [e["record"].get("type") for e in payload["entries"]] == ["revocation"]  # the record is gone
    node.gossip.sent.clear()
    node.sync.merge_remote_state({"digest": node.registry.digest()}, join=False)
    assert node.gossip.sent == []


@pytest.mark.parametrize(
    "admission, trusted, refused",
    [
        ("open", None, None),
        ("allowlist", None, "not_allowed"),
        ("token", None, "untrusted_node"),  # no trust list: no relayed records at all
        ("token", frozenset({"did:key:other"}), "untrusted_node"),
        ("token", frozenset({"did:key:peer"}), None),
    ],
)
async def test_relayed_records_pass_this_nodes_admission(admission, trusted, refused):
    """Security review P18: records relayed by gossip skipped admission. Now the allowlist applies
    to them, and a token network takes them only from the nodes of its trust list."""
    listed, stranger, third = Identity.generate(), Identity.generate(), Identity.generate()
    registry = Registry(MemoryRecordStore(), NET, skew_s=60)
    await registry.start()
    sync = RegistrySync(registry, "me", functools.partial(relay_refusal, admission, frozenset({listed.did}), trusted))
    gossip = FakeGossip()  # relaying node: did:key:peer
    sync.attach(gossip)
    await sync.start()
    try:
        entries = [{"record": record(who, 1).dump(), "origin": "peer"} for who in (listed, stranger)]
        gossip.handlers["records"](SimpleNamespace(node="peer", sender="did:key:peer", payload={"entries": entries}))
        sync.notify_user(third.did, {"record": record(third, 1).dump(), "origin": "peer"})  # and a rumour
        await until(lambda: sum(n for k, n in sync.stats.items() if k == "accepted" or k.startswith("rejected.")) == 3)
        stored = {did for did in (listed.did, stranger.did, third.did) if registry.get(did) is not None}
        if refused is None:
            assert stored == {listed.did, stranger.did, third.did}
        elif refused == "not_allowed":  # the allowlist judges the agent's DID, whoever relays it
            assert stored == {listed.did} and sync.stats["rejected.not_allowed"] == 2
        else:
            assert stored == set() and sync.stats[f"rejected.{refused}"] == 3
    finally:
        await sync.stop()
        await registry.stop()
