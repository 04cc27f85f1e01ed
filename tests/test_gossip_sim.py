"""Whole-cluster properties of SWIM + Lifeguard in the deterministic simulator.

Every bound below is derived from the configuration (memberlist LAN defaults: probe interval
T = 1 s, gossip interval 0.2 s, suspicion min = 4 * max(1, log10 N) * T, max = 6 * min):

* dissemination: ceil(log2 N) + 4 gossip rounds (the brief's target; reference 1.8 suggests +3);
* first suspicion of a crashed node: each period every member probes one round-robin target, so
  some member probes the crashed one in a given period with probability about 1 - 1/e; it is
  suspected at the end of that period. 10 periods + 1 leave a tail of about e^-10;
* declaration: the first accuser's timer runs at most `max`; with k = suspicion_mult - 2
  independent confirmations (about one per period, as the cluster probes each member about once
  a period) it drops to `min`; either way the dead message then spreads in the rounds above.
"""

from __future__ import annotations

import math

import pytest

from registry.gossip.messages import Alive
from registry.gossip.sim import (
    Simulator,
    detect_crash,
    false_positives,
    percentile,
    spread_rounds,
)
from registry.gossip.swim import MemberEvent, State, SwimConfig, SwimNode, push_pull_scale, suspicion_timeout

CFG = SwimConfig()


def spread_bound_rounds(n: int) -> int:
    return math.ceil(math.log2(n)) + 4


def spread_bound_seconds(n: int) -> float:
    return spread_bound_rounds(n) * CFG.gossip_interval


def suspicion_bounds(n: int) -> tuple[float, float]:
    low = suspicion_timeout(CFG.suspicion_mult, n, CFG.probe_interval)
    return low, CFG.suspicion_max_timeout_mult * low


FIRST_SUSPICION_BOUND = 11 * CFG.probe_interval


def ids_and_addrs(n: int) -> list[tuple[str, str]]:
    return [(Simulator.node_id(i), Simulator.node_addr(i)) for i in range(n)]


# ---------------------------------------------------------------------- dissemination


@pytest.mark.parametrize("loss", [0.0, 0.1])
@pytest.mark.parametrize("n, seeds", [(10, range(6)), (100, range(3)), (1000, range(2))])
def test_update_reaches_every_node_within_log2n_plus_4_rounds(n, seeds, loss):
    """4 user broadcasts and 1 join per seeded run; p99 (nearest rank) over all of them."""
    rounds: list[float] = []
    for seed in seeds:
        spread = spread_rounds(n, loss=loss, seed=seed)
        rounds += spread.rounds
        assert spread.false_dead == 0
    assert len(rounds) >= 5
    assert percentile(rounds, 99) <= spread_bound_rounds(n), rounds


# ---------------------------------------------------------------------- false positives


@pytest.mark.parametrize("n, duration", [(10, 600.0), (100, 200.0)])
def test_no_live_node_is_declared_dead_under_10_percent_loss(n, duration):
    """At 10 % loss a probe fails (direct and all 3 indirect paths) about 0.8 % of the time, so
    live nodes do get suspected; Lifeguard's slow suspicion timers let every one refute."""
    fp = false_positives(n, loss=0.1, seed=11, duration=duration)
    assert fp.suspicions > 0  # the loss did bite
    assert fp.false_dead == 0
    assert fp.max_awareness > 0  # and local health reacted to missed nacks


# ---------------------------------------------------------------------- failure detection


@pytest.mark.parametrize("n, loss", [(10, 0.0), (100, 0.0), (100, 0.1), (1000, 0.0)])
def test_crashed_node_is_suspected_then_declared_dead_by_all(n, loss):
    d = detect_crash(n, loss=loss, seed=5)
    low, high = suspicion_bounds(n)
    assert not d.dead_before_suspect
    assert d.first_suspect <= FIRST_SUSPICION_BOUND
    assert d.first_suspect <= d.first_dead <= d.all_dead
    # Lone-accuser worst case: the first suspicion's timer runs its full maximum.
    assert d.all_dead <= d.first_suspect + high + spread_bound_seconds(n)
    # Lifeguard: confirmations drive the timers down to the minimum.
    k = CFG.suspicion_mult - 2
    assert d.all_dead - d.first_suspect <= (low + (k + 2) * CFG.probe_interval + spread_bound_seconds(n))
    assert d.all_dead - d.first_suspect >= low  # never faster than the minimum


# ---------------------------------------------------------------------- restart, leave, join


@pytest.mark.parametrize("loss", [0.0, 0.1])
def test_restarted_node_rejoins_with_a_higher_incarnation(loss):
    n, i = 50, 7
    sim = Simulator.converged(n, seed=21, loss=loss)
    sim.run(3.0)
    addr, node_id = sim.node_addr(i), sim.node_id(i)
    sim.crash(addr)
    assert (
        sim.run_until(lambda: sim.view_of(node_id)[State.DEAD] == n - 1, FIRST_SUSPICION_BOUND + suspicion_bounds(n)[1])
        < math.inf
    )
    accused = max(node.members[node_id].incarnation for node in sim.live_nodes() if node.id != node_id)

    fresh = sim.spawn(i, seeds=[sim.node_addr(0)])
    assert fresh.incarnation == 0

    def rejoined() -> bool:
        seen = [node.members.get(node_id) for node in sim.live_nodes()]
        return (
            all(m is not None and m.state is State.ALIVE and m.incarnation == fresh.incarnation for m in seen)
            and len(fresh.members) == n
            and all(m.state is State.ALIVE for m in fresh.members.values())
        )

    # Join push/pull (retried every probe interval when lost), refute, spread.
    bound = 5 * CFG.probe_interval + spread_bound_seconds(n)
    assert sim.run_until(rejoined, bound, CFG.gossip_interval) < math.inf
    assert fresh.incarnation > accused


@pytest.mark.parametrize("n, loss", [(10, 0.0), (50, 0.0), (50, 0.1)])
def test_a_node_restarted_elsewhere_is_found_there_and_a_liar_redirects_nobody(n, loss):
    """Only a member moves its own address (security review P18): a node that restarts at a new
    address is found there by every member it contacts, within one round of its probes (n probe
    intervals), while a member that tells everyone it moved to another address is believed by
    none and nothing is ever sent there."""
    i, liar, capture, new = 7, 1, "10.66.6.6:7946", "10.99.0.7:7946"
    sim = Simulator.converged(n, seed=24, loss=loss)
    sim.run(3.0)
    node_id = sim.node_id(i)
    sim.crash(sim.node_addr(i))
    sim.run(sim.now + 1.0)
    sim.spawn(i, seeds=[sim.node_addr(0)], addr=new)
    for j in range(n):
        if j not in (i, liar):
            sim.inject(sim.node_addr(liar), sim.node_addr(j), [Alive(node_id, capture, 1_000)])

    def found() -> bool:
        return all(
            (m := node.members.get(node_id)) is not None and m.addr == new and m.state is State.ALIVE
            for node in sim.live_nodes()
            if node.id != node_id
        )

    bound = (n + 5) * CFG.probe_interval
    assert sim.run_until(found, bound, CFG.gossip_interval) < math.inf
    assert sim.traffic.to[capture] == 0


def test_graceful_leave_is_seen_as_left_never_as_failed():
    n = 100
    sim = Simulator.converged(n, seed=22)
    sim.run(3.0)
    addr, node_id = sim.node_addr(3), sim.node_id(3)
    seen: list[State | None] = []

    def listener(now: float, node: SwimNode, event: MemberEvent) -> None:
        if event.member == node_id and node.id != node_id:
            seen.append(event.new)

    sim.listeners.append(listener)
    sim.leave(addr)
    assert (
        sim.run_until(
            lambda: sim.view_of(node_id)[State.LEFT] == n - 1, spread_bound_seconds(n), CFG.gossip_interval / 4
        )
        < math.inf
    )
    sim.run(sim.now + 30.0)
    assert addr not in sim.up  # it stopped once its notice was out
    assert set(seen) == {State.LEFT}
    assert sim.view_of(node_id)[State.LEFT] == n - 1


def test_cluster_forms_through_a_seed_over_the_json_wire_format():
    n = 40
    sim = Simulator(seed=23, wire=True, loss=0.05)
    sim.spawn(0)
    for i in range(1, n):
        sim.run(sim.now + 0.05)
        sim.spawn(i, seeds=[sim.node_addr(0)])

    def formed() -> bool:
        return all(
            len(node.members) == n and all(m.state is State.ALIVE for m in node.members.values())
            for node in sim.live_nodes()
        )

    bound = 5 * CFG.probe_interval + spread_bound_seconds(n)
    assert sim.run_until(formed, bound, CFG.gossip_interval) < math.inf
    assert sim.false_dead == 0


# ---------------------------------------------------------------------- partition


@pytest.mark.parametrize("loss", [0.0, 0.1])
def test_partition_heals_and_membership_converges(loss):
    n = 32
    sim = Simulator.converged(n, seed=31, loss=loss)
    sim.run(2.0)
    everyone = ids_and_addrs(n)
    left = [a for _, a in everyone[: n // 2]]
    right = [a for _, a in everyone[n // 2 :]]
    sim.partition(left, right)

    def split() -> bool:
        return all(sum(m.state is State.DEAD for m in node.members.values()) == n // 2 for node in sim.live_nodes())

    low, high = suspicion_bounds(n)
    assert sim.run_until(split, FIRST_SUSPICION_BOUND + high + spread_bound_seconds(n), CFG.gossip_interval) < math.inf
    sim.broadcast(left[0], "written-during-partition", {"seq": 1})
    sim.run(sim.now + 5.0)
    assert all("written-during-partition" not in sim.delegates[a].payloads for a in right)

    sim.heal()
    healed_at = sim.now

    def converged() -> bool:
        return all(all(m.state is State.ALIVE for m in node.members.values()) for node in sim.live_nodes())

    # Within a reconnect interval some member contacts the other side (serf reconnect, or
    # gossip to the recently dead); the claims it brings back are refuted and spread; anything
    # the rumours missed is repaired by the next push/pull.
    period = push_pull_scale(CFG.push_pull_interval, n)
    bound = CFG.reconnect_interval + 2 * period
    assert sim.run_until(converged, bound, CFG.gossip_interval) < math.inf
    assert all(len(node.members) == n for node in sim.live_nodes())
    # The user payload's rumour died out during the partition; the push/pull state hook (the
    # registry's anti-entropy) carries it across: push-pull epidemics need about log N periods.
    bound = (math.ceil(math.log2(n)) + 2) * period
    assert (
        sim.run_until(
            lambda: sim.coverage_time("written-during-partition") < math.inf, bound - (sim.now - healed_at), 1.0
        )
        < math.inf
    )


# ---------------------------------------------------------------------- determinism


def test_same_seed_same_run_other_seed_other_run():
    def run(seed: int) -> tuple[dict[str, int], int]:
        sim = Simulator.converged(30, seed=seed, loss=0.1)
        sim.crash(sim.node_addr(4))
        sim.run(20.0)
        return dict(sim.traffic.by_type), sum(sim.traffic.packets.values())

    assert run(1) == run(1)
    assert run(1) != run(2)
