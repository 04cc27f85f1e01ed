"""Unit tests of the SWIM + Lifeguard state machine (registry/gossip), driven by hand.

One node is driven directly through tick/receive; its peers are simulated by a responder
function that answers (or ignores) what the node sends.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable
from dataclasses import replace

import pytest

from registry.gossip.messages import (
    Ack,
    Alive,
    Dead,
    Message,
    Nack,
    Ping,
    PingReq,
    PushPull,
    Suspect,
    UserMsg,
    WireError,
    decode_packet,
    encode_packet,
)
from registry.gossip.queue import BroadcastQueue, retransmit_limit
from registry.gossip.swim import (
    Delegate,
    MemberEvent,
    Output,
    State,
    Suspicion,
    SwimConfig,
    SwimNode,
    push_pull_scale,
    suspicion_timeout,
)

SELF = "did:test:self"
LAN = SwimConfig()

Responder = Callable[[str, Message], list[Message]]


def peer(i: int) -> tuple[str, str]:
    return f"did:test:{i}", f"10.0.0.{i}:7946"


def make_node(n_peers: int = 9, config: SwimConfig = LAN, delegate: Delegate | None = None) -> SwimNode:
    node = SwimNode(SELF, "10.0.0.254:7946", config, rng=random.Random(7), delegate=delegate)
    node.start(0.0, known=[peer(i) for i in range(n_peers)])
    return node


def messages(outs: list[Output], cls: type) -> list[tuple[str, Message]]:
    return [(to, m) for out in outs for to, pkt in out.sends for m in pkt if isinstance(m, cls)]


def events(outs: list[Output]) -> list[MemberEvent]:
    return [e for out in outs for e in out.events]


def ack_pings(to: str, msg: Message) -> list[Message]:
    return [Ack(msg.seq)] if isinstance(msg, Ping) else []


def silent(to: str, msg: Message) -> list[Message]:
    return []


def drive(node: SwimNode, until: float, respond: Responder = ack_pings) -> list[Output]:
    """Tick the node at each deadline up to `until`; feed back what `respond` answers (with
    zero latency) to each message it sends."""
    outs: list[Output] = []
    ids = {m.addr: m.id for m in node.members.values()}
    while (t := node.next_deadline()) <= until:
        pending = [node.tick(t)]
        while pending:
            out = pending.pop()
            outs.append(out)
            for to, pkt in out.sends:
                for msg in pkt:
                    reply = respond(to, msg)
                    if reply:
                        pending.append(node.receive(t, to, reply, sender=ids[to]))
    return outs


# ---------------------------------------------------------------------- formulas and config


@pytest.mark.parametrize(
    "n, lo, hi, retransmits, push_pull",
    [
        (10, 4, 24, 8, 30),
        (100, 8, 48, 12, 90),
        (1000, 12, 72, 16, 180),
        (10_000, 16, 96, 20, 300),
    ],
)
def test_formulas_match_memberlist_reference_table(n, lo, hi, retransmits, push_pull):
    """discovery-routing-models.md 1.3, computed for LAN defaults."""
    low = suspicion_timeout(LAN.suspicion_mult, n, LAN.probe_interval)
    assert low == pytest.approx(lo)
    assert LAN.suspicion_max_timeout_mult * low == pytest.approx(hi)
    assert retransmit_limit(LAN.retransmit_mult, n) == retransmits
    assert push_pull_scale(LAN.push_pull_interval, n) == pytest.approx(push_pull)


def test_lan_defaults_and_fast_profile():
    assert (
        LAN.probe_interval,
        LAN.probe_timeout,
        LAN.indirect_checks,
        LAN.suspicion_mult,
        LAN.suspicion_max_timeout_mult,
        LAN.awareness_max_multiplier,
        LAN.retransmit_mult,
        LAN.gossip_interval,
        LAN.gossip_nodes,
    ) == (1.0, 0.5, 3, 4, 6, 8, 4, 0.2, 3)
    fast = SwimConfig.fast()
    assert fast.probe_interval == pytest.approx(0.1)
    assert fast.gossip_interval == pytest.approx(0.02)
    assert fast.probe_timeout / fast.probe_interval == LAN.probe_timeout / LAN.probe_interval
    assert (fast.suspicion_mult, fast.retransmit_mult) == (LAN.suspicion_mult, LAN.retransmit_mult)


# ---------------------------------------------------------------------- refutation


def test_suspected_node_refutes_on_the_ack_of_the_buddy_ping():
    """Lifeguard buddy system + SWIM refutation: the Suspect comes first in the probe packet, so
    the ack already carries Alive with a higher incarnation; refuting raises local health."""
    node = make_node()
    out = node.receive(1.0, peer(0)[1], [Suspect(SELF, 0, peer(0)[0]), Ping(77, SELF)], sender=peer(0)[0])
    assert node.incarnation == 1
    assert node.awareness.score == 1
    [(to, packet)] = out.sends
    assert to == peer(0)[1]
    assert packet[0] == Ack(77)
    assert Alive(SELF, node.addr, 1) in packet
    assert node.members[SELF].state is State.ALIVE


def test_refutation_outnumbers_dead_and_stale_alive_claims():
    node = make_node()
    node.receive(1.0, peer(0)[1], [Dead(SELF, 4, peer(0)[0])], sender=peer(0)[0])
    assert node.incarnation == 5
    node.receive(2.0, peer(0)[1], [Alive(SELF, node.addr, 9)], sender=peer(0)[0])  # a previous life's story
    assert node.incarnation == 10
    node.receive(3.0, peer(0)[1], [Alive(SELF, node.addr, 10), Suspect(SELF, 3, peer(1)[0])], sender=peer(0)[0])
    assert node.incarnation == 10  # our own news, and an outdated accusation: nothing to do


# ---------------------------------------------------------------------- Lifeguard suspicion


def test_suspicion_timer_formula():
    """memberlist suspicion.go: max, then max - log(n+1)/log(k+1) * (max - min), floor min."""
    s = Suspicion("a", k=2, min_timeout=4.0, max_timeout=24.0, start=10.0)
    assert s.deadline == 34.0
    assert not s.confirm("a")  # the first accuser is not a confirmation
    assert s.confirm("b")
    expected = 24.0 - math.log(2) / math.log(3) * 20.0
    assert s.deadline == pytest.approx(10.0 + math.floor(1000 * expected) / 1000)
    assert not s.confirm("b")
    assert s.confirm("c")
    assert s.deadline == 14.0
    assert not s.confirm("d")  # k reached
    assert Suspicion("a", k=0, min_timeout=4.0, max_timeout=24.0, start=0.0).deadline == 4.0


def _suspect_peer1(confirmers: list[int]) -> tuple[SwimNode, list[Output]]:
    """Peer 0 accuses peer 1 at t=0.5, then each of `confirmers` does, 0.2 s apart. All pings
    are acked, so the node's own probes add no confirmation."""
    node = make_node()  # N = 10: k = 2, min 4 s, max 24 s
    outs = [node.receive(0.5, peer(0)[1], [Suspect(peer(1)[0], 0, peer(0)[0])], sender=peer(0)[0])]
    for j, i in enumerate(confirmers):
        outs.append(node.receive(0.7 + 0.2 * j, peer(i)[1], [Suspect(peer(1)[0], 0, peer(i)[0])], sender=peer(i)[0]))
    return node, outs


def test_lone_accusation_waits_the_maximum_timeout():
    node, outs = _suspect_peer1([])
    assert node.members[peer(1)[0]].state is State.SUSPECT
    outs += drive(node, 0.5 + 24 - 0.01)
    assert node.members[peer(1)[0]].state is State.SUSPECT
    outs += drive(node, 0.5 + 24)
    assert node.members[peer(1)[0]].state is State.DEAD
    changes = [(e.old, e.new) for e in events(outs) if e.member == peer(1)[0]]
    assert changes == [(State.ALIVE, State.SUSPECT), (State.SUSPECT, State.DEAD)]


def test_independent_confirmations_shrink_the_timeout_to_the_minimum():
    node, outs = _suspect_peer1([2, 3])
    # Each new accuser is re-gossiped so others can count it too.
    queued = [m for _, m in messages(drive(node, 3.0), Suspect) if m.node == peer(1)[0]]
    assert {m.accuser for m in queued} >= {peer(3)[0]}
    drive(node, 0.5 + 4 - 0.01)
    assert node.members[peer(1)[0]].state is State.SUSPECT
    drive(node, 0.5 + 4)
    assert node.members[peer(1)[0]].state is State.DEAD


def test_small_cluster_expects_no_confirmations():
    """With n - 2 < k nobody could confirm: the timer is the minimum from the start."""
    node = make_node(n_peers=2)  # N = 3
    node.receive(0.0, peer(0)[1], [Suspect(peer(1)[0], 0, peer(0)[0])], sender=peer(0)[0])
    drive(node, suspicion_timeout(4, 3, 1.0))
    assert node.members[peer(1)[0]].state is State.DEAD


# ---------------------------------------------------------------------- local health multiplier


def test_local_health_rises_on_missing_nacks_and_falls_on_acks():
    """Lifeguard LHM: a failed probe whose 3 helpers send no nack adds 3 to the score, and the
    probe period and timeout stretch by score + 1; each successful probe takes 1 off."""
    node = make_node()
    first = node.next_deadline()  # the first probe period starts here
    outs = drive(node, first + 1.0, silent)
    assert len(messages(outs, Ping)) == 2  # the first probe and, at its end, the second
    assert len(messages(outs, PingReq)) == 3
    assert node.awareness.score == 3
    # The second probe runs at score 3: its direct timeout is 4 * 0.5 s, its period 4 * 1 s.
    assert not messages(drive(node, first + 1.0 + 2.0 - 0.01, silent), PingReq)
    assert len(messages(drive(node, first + 1.0 + 2.0, silent), PingReq)) == 3
    assert not messages(drive(node, first + 5.0 - 0.01, silent), Ping)
    assert len(messages(drive(node, first + 5.0, silent), Ping)) == 1
    assert node.awareness.score == 6
    drive(node, first + 5.0 + 7.0, silent)
    assert node.awareness.score == LAN.awareness_max_multiplier - 1  # capped at 7
    drive(node, 100.0, ack_pings)
    assert node.awareness.score == 0


def test_nacks_keep_local_health_unchanged():
    def helpers_nack(to: str, msg: Message) -> list[Message]:
        return [Nack(msg.seq)] if isinstance(msg, PingReq) else []

    node = make_node()
    outs = drive(node, node.next_deadline() + 1.0, helpers_nack)
    assert len(messages(outs, PingReq)) == 3
    assert node.awareness.score == 0  # the helpers vouch that we are fine: the target is not
    suspected = [e for e in events(outs) if e.new is State.SUSPECT]
    assert len(suspected) == 1


def test_refutations_raise_local_health_up_to_the_cap():
    node = make_node()
    for i in range(20):
        node.receive(float(i), peer(0)[1], [Suspect(SELF, node.incarnation, peer(0)[0])], sender=peer(0)[0])
    assert node.awareness.score == LAN.awareness_max_multiplier - 1
    assert node.incarnation == 20


# ---------------------------------------------------------------------- probing


def test_round_robin_probes_every_member_once_per_cycle():
    node = make_node()
    outs = drive(node, 9.0)
    targets = [m.target for _, m in messages(outs, Ping)]
    assert sorted(targets[:9]) == sorted(peer(i)[0] for i in range(9))


def test_indirect_probe_success_through_a_helper():
    def helper_relays(to: str, msg: Message) -> list[Message]:
        return [Ack(msg.seq)] if isinstance(msg, PingReq) else []

    node = make_node()
    outs = drive(node, node.next_deadline() + 1.0, helper_relays)
    reqs = messages(outs, PingReq)
    ping = messages(outs, Ping)[0][1]
    assert len({to for to, _ in reqs}) == 3
    assert all(r.target == ping.target and r.seq == ping.seq for _, r in reqs)
    assert ping.target not in {to for to, _ in reqs}
    assert not [e for e in events(outs) if e.new is State.SUSPECT]


def test_helper_relays_ack_or_nacks_in_time():
    node = make_node()
    requester, target = peer(0), peer(1)
    out = node.receive(1.0, requester[1], [PingReq(42, target[0], target[1])], sender=requester[0])
    [(to, packet)] = out.sends
    assert to == target[1] and isinstance(packet[0], Ping) and packet[0].target == target[0]
    out = node.receive(1.1, target[1], [Ack(packet[0].seq)], sender=target[0])
    assert out.sends[0][0] == requester[1] and out.sends[0][1][0] == Ack(42)

    node.receive(2.0, requester[1], [PingReq(43, target[0], target[1])], sender=requester[0])
    outs = drive(node, 2.0 + LAN.probe_timeout * LAN.nack_timeout_fraction)
    assert (requester[1], Nack(43)) in messages(outs, Nack)


def test_pending_relays_are_bounded():
    node = make_node(config=replace(LAN, max_pending_relays=2))
    pkts = [
        node.receive(1.0, peer(0)[1], [PingReq(i, peer(1)[0], peer(1)[1])], sender=peer(0)[0]).sends for i in range(5)
    ]
    assert [len(p) for p in pkts] == [1, 1, 0, 0, 0]


def test_ping_for_another_node_is_not_acked():
    node = make_node()
    assert node.receive(1.0, peer(0)[1], [Ping(5, "did:test:someone-else")], sender=peer(0)[0]).sends == []


# ---------------------------------------------------------------------- who is believed about what

CAPTURE = "10.66.6.6:7946"  # an address no member announced: nothing may ever be sent there


def sent_to(outs: list[Output], addr: str) -> list[list[Message]]:
    return [pkt for out in outs for to, pkt in out.sends if to == addr]


def test_only_a_member_moves_its_own_address():
    """Security review P18: an Alive from anyone rewrote a member's address."""
    node = make_node()
    (p, addr), (liar, liar_addr) = peer(1), peer(0)
    outs = [node.receive(1.0, liar_addr, [Alive(p, CAPTURE, 5)], sender=liar)]  # about another member
    outs.append(node.receive(1.1, "10.66.0.1:7946", [Alive(p, CAPTURE, 6)], sender="did:test:stranger"))
    assert (node.members[p].addr, node.members[p].incarnation) == (addr, 0)
    outs.append(node.receive(1.2, addr, [Alive(p, CAPTURE, 7)], sender=p))  # itself, at another address than it signs
    assert node.members[p].addr == addr
    outs += drive(node, 20.0)  # two probe rounds: every member probed at the address it announced
    assert not sent_to(outs, CAPTURE)

    moved = "10.0.7.1:7946"
    out = node.receive(21.0, moved, [Alive(p, moved, 8)], sender=p)  # the member itself, from there
    assert (node.members[p].addr, node.members[p].incarnation) == (moved, 8)
    assert [(e.member, e.addr, e.old, e.new) for e in out.events] == [(p, moved, State.ALIVE, State.ALIVE)]
    relayed = node.receive(22.0, liar_addr, [Alive(p, moved, 9)], sender=liar)  # same address: believed as relayed
    assert node.members[p].incarnation == 9 and not relayed.events


def test_a_stranger_speaks_only_of_itself_and_of_us():
    node = make_node()
    stranger, at = "did:test:stranger", "10.0.5.5:7946"
    node.receive(
        1.0,
        at,
        [
            Alive("did:test:ghost", CAPTURE, 0),
            Suspect(peer(1)[0], 0, stranger),
            Dead(peer(2)[0], 0, stranger),
            PushPull(False, True, (("did:test:other", CAPTURE, 0, "alive"),), None),
            Alive(stranger, CAPTURE, 0),  # itself, but not where it signs from
        ],
        sender=stranger,
    )
    assert not {"did:test:ghost", "did:test:other", stranger} & set(node.members)
    assert node.members[peer(1)[0]].state is node.members[peer(2)[0]].state is State.ALIVE
    node.receive(2.0, at, [Suspect(SELF, 0, stranger)], sender=stranger)
    assert node.incarnation == 1  # about us: refuted
    # Announcing itself makes it a member (a seed answering a join, a node joining through us),
    # and a member's news about third nodes counts, as relays do in SWIM. In a push/pull its own
    # entry counts first, wherever it stands.
    entries = (("did:test:ghost", "10.0.6.6:7946", 0, "alive"), (stranger, at, 3, "alive"))
    node.receive(3.0, at, [PushPull(True, True, entries, None)], sender=stranger)
    assert (node.members[stranger].addr, node.members[stranger].incarnation) == (at, 3)
    assert node.members["did:test:ghost"].addr == "10.0.6.6:7946"


def test_ping_req_reaches_only_a_member_at_its_own_address():
    """Security review P18: a PingReq made the helper POST to the target_addr it named."""
    node = make_node()
    (requester, at), target = peer(0), peer(1)
    for i, (name, addr) in enumerate([(target[0], CAPTURE), ("did:test:unknown", CAPTURE), (SELF, node.addr)]):
        out = node.receive(1.0, at, [PingReq(50 + i, name, addr)], sender=requester)
        assert [(to, pkt[0]) for to, pkt in out.sends] == [(at, Nack(50 + i))], name
    assert node.receive(1.0, "10.0.5.5:7946", [PingReq(60, target[0], target[1])], sender="did:test:x").sends == []
    out = node.receive(1.0, at, [PingReq(61, target[0], target[1])], sender=requester)
    [(to, [ping])] = out.sends
    assert to == target[1] and ping.target == target[0]


def test_a_member_heard_from_another_address_is_asked_there_and_moves_on_its_answer():
    node = make_node()
    p, old = peer(1)
    new = "10.0.7.1:7946"
    out = node.receive(1.0, new, [Ping(3, SELF)], sender=p)  # it restarted elsewhere
    asked = [pkt[0] for to, pkt in out.sends if to == new and isinstance(pkt[0], PushPull)]
    assert len(asked) == 1 and not asked[0].reply and (p, old, 0, "alive") in asked[0].members
    assert not [pkt for to, pkt in node.receive(1.1, new, [Ack(1)], sender=p).sends if isinstance(pkt[0], PushPull)]
    # Its answer: it refuted the old story (incarnation 0 at the old address) with incarnation 1.
    node.receive(1.2, new, [PushPull(False, True, ((p, new, 1, "alive"),), None)], sender=p)
    assert (node.members[p].addr, node.members[p].incarnation) == (new, 1)


def test_a_push_pull_answer_carries_the_refutation_of_what_the_request_said():
    node = make_node()
    out = node.receive(
        1.0, peer(0)[1], [PushPull(False, False, ((SELF, "10.0.0.99:7946", 0, "alive"),), None)], sender=peer(0)[0]
    )
    [(to, [answer])] = out.sends
    assert to == peer(0)[1] and (SELF, node.addr, 1, "alive") in answer.members


# ---------------------------------------------------------------------- incarnation rules


def test_incarnation_ordering_rules():
    """SWIM 4.2 / memberlist state.go precedence, one step at a time."""
    node = make_node()
    p, src = peer(1)[0], peer(0)[1]
    steps = [
        (Alive(p, peer(1)[1], 0), State.ALIVE, 0),  # equal incarnation: no news
        (Alive(p, peer(1)[1], 1), State.ALIVE, 1),  # newer alive
        (Suspect(p, 0, "x"), State.ALIVE, 1),  # older suspicion: ignored
        (Suspect(p, 1, "x"), State.SUSPECT, 1),  # suspect(i) beats alive(i)
        (Alive(p, peer(1)[1], 1), State.SUSPECT, 1),  # alive(i) does not beat suspect(i)
        (Alive(p, peer(1)[1], 2), State.ALIVE, 2),  # alive(i+1) refutes
        (Dead(p, 1, "x"), State.ALIVE, 2),  # older death: ignored
        (Dead(p, 2, "x"), State.DEAD, 2),  # dead(i) beats alive(i)
        (Suspect(p, 5, "x"), State.DEAD, 2),  # a dead member is not suspected
        (Alive(p, peer(1)[1], 2), State.DEAD, 2),  # nor revived at the same incarnation
        (Alive(p, peer(1)[1], 3), State.ALIVE, 3),  # it comes back only with a higher one
    ]
    for msg, state, incarnation in steps:
        node.receive(1.0, src, [msg], sender=peer(0)[0])
        member = node.members[p]
        assert (member.state, member.incarnation) == (state, incarnation), msg


# ---------------------------------------------------------------------- leave, dead, reap


def test_leave_is_recorded_as_left_and_failure_as_dead():
    node = make_node()
    out = node.receive(
        1.0, peer(0)[1], [Dead(peer(1)[0], 0, peer(1)[0]), Dead(peer(2)[0], 0, peer(0)[0])], sender=peer(0)[0]
    )
    assert node.members[peer(1)[0]].state is State.LEFT
    assert node.members[peer(2)[0]].state is State.DEAD
    assert [(e.member, e.new) for e in out.events] == [(peer(1)[0], State.LEFT), (peer(2)[0], State.DEAD)]


def test_graceful_leave():
    node = make_node()
    drive(node, 2.0)
    out = node.leave(2.0)
    assert node.members[SELF].state is State.LEFT
    assert [(e.member, e.new) for e in out.events] == [(SELF, State.LEFT)]
    outs = drive(node, 10.0)
    notices = [m for _, m in messages(outs, Dead) if m.node == SELF]
    assert notices and all(m.accuser == SELF for m in notices)
    assert len(notices) == retransmit_limit(LAN.retransmit_mult, 10)
    assert node.leave_complete
    assert not messages(outs, Ping)  # a leaving node stops probing
    node.receive(10.0, peer(0)[1], [Suspect(SELF, 0, peer(0)[0])], sender=peer(0)[0])
    assert node.incarnation == 0  # and does not refute any more


def test_dead_members_are_reaped_after_the_retention_period():
    node = make_node(config=replace(LAN, reap_timeout=10.0))
    node.receive(1.0, peer(0)[1], [Dead(peer(1)[0], 0, peer(0)[0])], sender=peer(0)[0])
    outs = drive(node, 11.0)
    assert peer(1)[0] in node.members  # retention not over
    outs += drive(node, 30.0)  # the next reshuffle of the probe order reaps it
    assert peer(1)[0] not in node.members
    reaped = [e for e in events(outs) if e.new is None]
    assert [(e.member, e.old) for e in reaped] == [(peer(1)[0], State.DEAD)]
    assert all(m.target != peer(1)[0] for _, m in messages(outs, Ping))


def test_member_table_is_bounded():
    node = make_node(n_peers=3, config=replace(LAN, max_members=5))
    for i in range(10, 20):
        node.receive(1.0, peer(0)[1], [Alive(f"did:test:{i}", f"10.0.1.{i}:7946", 0)], sender=peer(0)[0])
    assert len(node.members) == 5


# ---------------------------------------------------------------------- dissemination


def test_retransmit_limit_and_least_transmitted_first():
    q = BroadcastQueue(max_depth=8)
    q.push("a", Alive("a", "x", 1))
    assert q.take(1400, limit=3)[0] == [Alive("a", "x", 1)]
    q.push("b", Alive("b", "x", 1))
    # Budget for one message only: "b" (0 transmits) goes before "a" (1 transmit).
    one = len(json.dumps(encode_packet([Alive("b", "x", 1)])[0], separators=(",", ":")))
    assert q.take(one, limit=3) == ([Alive("b", "x", 1)], one)
    assert len(q.take(1400, limit=3)[0]) == 2
    assert len(q.take(1400, limit=3)[0]) == 2
    assert len(q) == 0  # both went out 3 times
    q.push("c", Alive("c", "x", 1))
    q.push("c", Alive("c", "x", 2))  # invalidates the queued one
    assert q.take(1400, limit=3)[0] == [Alive("c", "x", 2)]


def test_broadcast_queue_is_bounded():
    q = BroadcastQueue(max_depth=3)
    for i in range(3):
        q.push(str(i), Alive(str(i), "x", 0))
    q.take(1400, limit=10)
    q.push("3", Alive("3", "x", 0))
    q.push("4", Alive("4", "x", 0))
    assert len(q) == 3 and "3" in q and "4" in q


def test_updates_piggyback_on_probes_and_gossip_rounds():
    node = make_node()
    quiet = drive(node, 0.9)
    assert all(isinstance(pkt[0], Ping) for out in quiet for _, pkt in out.sends)  # no gossip
    node.receive(0.9, peer(0)[1], [Alive("did:test:new", "10.0.9.9:7946", 0)], sender=peer(0)[0])
    outs = drive(node, 2.0)
    carried = messages(outs, Alive)
    limit = retransmit_limit(LAN.retransmit_mult, 11)
    assert len(carried) == limit  # then it is dropped from the queue
    gossip_packets = [pkt for out in outs for _, pkt in out.sends if isinstance(pkt[0], Alive)]
    assert gossip_packets and len(gossip_packets) <= limit


def test_user_payload_hooks():
    class Layer(Delegate):
        def __init__(self, fresh: bool) -> None:
            self.fresh, self.seen, self.merged = fresh, [], []

        def notify_user(self, key, payload):
            self.seen.append((key, payload))
            return self.fresh

        def local_state(self, join):
            return {"digest": {"did:a": 3}, "join": join}

        def merge_remote_state(self, state, join):
            self.merged.append((state, join))

    relay, stop = Layer(True), Layer(False)
    a, b = make_node(delegate=relay), make_node(delegate=stop)
    for node in (a, b):
        node.receive(0.5, peer(0)[1], [UserMsg("rec:1", {"seq": 1})], sender=peer(0)[0])
    assert relay.seen == stop.seen == [("rec:1", {"seq": 1})]
    assert UserMsg("rec:1", {"seq": 1}) in [m for _, m in messages(drive(a, 1.0), UserMsg)]
    assert not messages(drive(b, 1.0), UserMsg)

    a.broadcast("rec:2", {"seq": 2})
    assert UserMsg("rec:2", {"seq": 2}) in [m for _, m in messages(drive(a, 2.0), UserMsg)]

    out = a.receive(3.0, peer(0)[1], [PushPull(False, False, (), {"digest": {}})], sender=peer(0)[0])
    assert relay.merged == [({"digest": {}}, False)]
    [(to, [reply])] = out.sends
    assert to == peer(0)[1] and reply.reply
    assert reply.user_state == {"digest": {"did:a": 3}, "join": False}


# ---------------------------------------------------------------------- join


def test_join_through_seed_with_push_pull_and_retry():
    node = SwimNode(SELF, "10.0.0.254:7946", LAN, rng=random.Random(1))
    out = node.start(0.0, seeds=["10.0.0.1:7946"])
    [(to, [req])] = out.sends
    assert to == "10.0.0.1:7946" and isinstance(req, PushPull) and req.join and not req.reply
    outs = drive(node, LAN.probe_interval, silent)  # the seed did not answer: try again
    assert [to for to, m in messages(outs, PushPull)] == ["10.0.0.1:7946"]
    seed = ("did:test:seed", "10.0.0.1:7946")
    state = tuple((i, a, 0, "alive") for i, a in (peer(1), seed, peer(2)))  # the seed's table
    out = node.receive(1.5, seed[1], [PushPull(True, True, state, None)], sender=seed[0])
    assert [(e.member, e.old, e.new) for e in out.events] == [
        (seed[0], None, State.ALIVE),  # it speaks of itself first, then for the others
        (peer(1)[0], None, State.ALIVE),
        (peer(2)[0], None, State.ALIVE),
    ]
    assert out.sends == []  # a reply is not answered


# ---------------------------------------------------------------------- wire format


def test_every_message_round_trips_through_json():
    packet = [
        Ping(1, SELF),
        Ack(2),
        Nack(3),
        PingReq(4, "t", "10.0.0.1:1"),
        Alive("n", "a", 5),
        Suspect("n", 6, "b"),
        Dead("n", 7, "n"),
        PushPull(True, False, (("n", "a", 1, "alive"), ("m", "b", 2, "left")), {"k": [1, 2]}),
        UserMsg("key", {"nested": ["json", 1, None]}),
    ]
    text = json.dumps(encode_packet(packet))
    assert decode_packet(json.loads(text)) == packet


@pytest.mark.parametrize(
    "bad",
    [
        [],
        {"type": "ping"},
        [{"type": "nope"}],
        [{"type": "ack"}],
        [{"type": "ack", "seq": "1"}],
        [{"type": "ack", "seq": True}],
        [{"type": "ack", "seq": 1, "extra": 0}],
        [{"type": "push-pull", "join": True, "reply": False, "members": [["n", "a", 1, "zombie"]], "user_state": None}],
    ],
)
def test_malformed_packets_are_rejected(bad):
    with pytest.raises(WireError):
        decode_packet(bad)
