"""SWIM + Lifeguard membership (registry/gossip) in the simulator, beside memberlist/serf figures.

    python -m bench.gossip [starvation]

For N = 10, 100, 1000 (memberlist LAN defaults, 1-5 ms latency) it prints, each beside the
reference figure and the ratio ours / reference:

* rounds and simulated seconds until an update reaches every node (p50 / p99 over seeded runs of
  4 user broadcasts + 1 join each), at 0 % and 10 % loss;
* packets and bytes (compact JSON) sent per node per second in steady state;
* failure detection: seconds from a crash until every node has declared it dead;
* false positives under 10 % loss: live nodes declared dead (and suspicions, all refuted);
* CPU starvation (issue 21; `starvation` alone runs just this): N = 10, 20, 30 nodes on the
  `fast` profile join through one seed, then busy processes share the CPU with them for 20 s
  (registry.gossip.sim.Cpu: 2 cores, real per-packet costs). Without a CPU limit, then with 2
  cores and the node handling its events in arrival order (a plain asyncio loop), then with the
  transport's discipline (answers before timers, bounded inbox): convergence, false suspect and
  dead marks, recovery after the hog.

Simulated time is virtual: the numbers do not depend on this machine's speed.
"""

from __future__ import annotations

import sys
import time

from registry.gossip.sim import (
    Cpu,
    Simulator,
    detect_crash,
    false_positives,
    percentile,
    spread_rounds,
    starvation,
)
from registry.gossip.swim import SwimConfig
from registry.gossip.transport import PROFILES

SIZES = (10, 100, 1000)
CASES = [(loss, n) for loss in (0.0, 0.1) for n in SIZES]
SEEDS = {10: 10, 100: 5, 1000: 2}  # seeded runs per size for dissemination
LOAD_SECONDS = {10: 60.0, 100: 60.0, 1000: 15.0}  # steady-state traffic window
FP_SECONDS = {10: 1800.0, 100: 300.0, 1000: 20.0}  # no-failure run under 10 % loss

# Reference figures, hard-coded from /work/shared/reference/discovery-routing-models.md:
# 1.5 (own round simulation, memberlist-style push f=3, retransmit-limited): p99 rounds until
# every node has the update, at 0 % and 10 % loss.
REF_P99_ROUNDS = {0.0: {10: 4, 100: 7, 1000: 9}, 0.1: {10: 5, 100: 8, 1000: 10}}
# 1.4 (serf convergence simulator, interval 200 ms, fanout 3): seconds to 99.99 % infected.
REF_SERF_SECONDS = {0.0: {10: 1.6, 100: 2.0, 1000: 2.2}, 0.1: {10: 1.8, 100: 2.2, 1000: 2.4}}
# 1.8 load ceiling per node: probing 1 ping + 1 ack per ProbeInterval, gossip <= GossipNodes
# packets per GossipInterval = 15 packets/s <= 21 KB/s out at 1400 B (serf 1.4: 42 KB/s in+out).
REF_PACKETS_PER_S = 2 + 15
REF_BYTES_PER_S = 21_000
# 1.8 failure detection with confirmations: ProbeInterval + suspicion min + ~2 s dissemination.
REF_DETECT_SECONDS = {10: 1 + 4 + 2, 100: 1 + 8 + 2, 1000: 1 + 12 + 2}
# 1.2 / 1.8: Lifeguard's aim is no false positive; the target is 0.
REF_FALSE_DEAD = 0


def ratio(ours: float, ref: float) -> str:
    return f"{ours / ref:5.2f}x" if ref else "   - "


def dissemination(interval: float) -> None:
    print("\n== Dissemination: rounds (and seconds) until every node has an update ==")
    print(
        f"{'N':>5} {'loss':>5} {'samples':>7} {'p50 rounds':>10} {'p99 rounds':>10} "
        f"{'ref p99':>7} {'ratio':>6} | {'p99 s':>6} {'serf s':>6} {'ratio':>6}"
    )
    for loss, n in CASES:
        rounds = [r for seed in range(SEEDS[n]) for r in spread_rounds(n, loss=loss, seed=seed).rounds]
        p50, p99 = percentile(rounds, 50), percentile(rounds, 99)
        ref, serf = REF_P99_ROUNDS[loss][n], REF_SERF_SECONDS[loss][n]
        print(
            f"{n:>5} {loss:>5.0%} {len(rounds):>7} {p50:>10.1f} {p99:>10.1f} {ref:>7} "
            f"{ratio(p99, ref):>6} | {p99 * interval:>6.2f} {serf:>6.1f} "
            f"{ratio(p99 * interval, serf):>6}"
        )


def load() -> None:
    print("\n== Load: sent per node per second, steady state (no failures, no user updates) ==")
    print(
        f"{'N':>5} {'loss':>5} {'packets/s':>9} {'ref max':>7} {'ratio':>6} | "
        f"{'bytes/s':>8} {'ref max':>8} {'ratio':>6}"
    )
    for loss, n in CASES:
        sim = Simulator.converged(n, seed=1, loss=loss, measure_bytes=True)
        sim.run(LOAD_SECONDS[n])
        per_node = n * LOAD_SECONDS[n]
        packets = sum(sim.traffic.packets.values()) / per_node
        sent = sum(sim.traffic.bytes.values()) / per_node
        print(
            f"{n:>5} {loss:>5.0%} {packets:>9.2f} {REF_PACKETS_PER_S:>7} "
            f"{ratio(packets, REF_PACKETS_PER_S):>6} | {sent:>8.0f} {REF_BYTES_PER_S:>8} "
            f"{ratio(sent, REF_BYTES_PER_S):>6}"
        )


def detection() -> None:
    print("\n== Failure detection: seconds from a crash until all nodes declare it dead ==")
    print(f"{'N':>5} {'loss':>5} {'suspect':>7} {'1st dead':>8} {'all dead':>8} {'ref':>5} {'ratio':>6}")
    for loss, n in CASES:
        d = detect_crash(n, loss=loss, seed=5)
        ref = REF_DETECT_SECONDS[n]
        print(
            f"{n:>5} {loss:>5.0%} {d.first_suspect:>7.1f} {d.first_dead:>8.1f} "
            f"{d.all_dead:>8.1f} {ref:>5} {ratio(d.all_dead, ref):>6}"
        )


def false_positive_rate() -> None:
    print("\n== False positives under 10 % loss (no node fails; Lifeguard on) ==")
    print(
        f"{'N':>5} {'sim s':>6} {'suspicions':>10} {'per node-h':>10} {'false dead':>10} "
        f"{'per node-h':>10} {'ref':>4} {'max LHM':>7}"
    )
    for n in SIZES:
        fp = false_positives(n, loss=0.1, seed=11, duration=FP_SECONDS[n])
        node_hours = n * FP_SECONDS[n] / 3600
        print(
            f"{n:>5} {FP_SECONDS[n]:>6.0f} {fp.suspicions:>10} "
            f"{fp.suspicions / node_hours:>10.1f} {fp.false_dead:>10} "
            f"{fp.false_dead / node_hours:>10.2f} {REF_FALSE_DEAD:>4} {fp.max_awareness:>7}"
        )


STARVE_SIZES = (10, 20, 30)
STARVE_CASES = [
    ("no CPU limit", None, 0),
    ("2 cores, arrival order", Cpu(), 0),
    ("2 cores, arrival order, 8 hogs", Cpu(), 8),
    ("2 cores, answers first", Cpu(packets_first=True, inbox_limit=512), 0),
    ("2 cores, answers first, 8 hogs", Cpu(packets_first=True, inbox_limit=512), 8),
]


def starvation_figures() -> None:
    print("\n== CPU starvation: fast profile, join through one seed, 20 s of hogs (seed 1) ==")
    print(
        f"{'case':>31} {'N':>3} {'converged s':>11} {'suspicions':>10} {'dead (hog)':>10} "
        f"{'dead (all)':>10} {'whole after s':>13} {'max LHM':>7} {'pkts/node/s':>11}"
    )
    for label, cpu, hogs in STARVE_CASES:
        for n in STARVE_SIZES:
            r = starvation(n, seed=1, config=PROFILES["fast"], cpu=cpu, hogs=hogs)
            print(
                f"{label:>31} {n:>3} {r.converged_s:>11.2f} {r.suspicions:>10} {r.false_dead_hog:>10} "
                f"{r.false_dead:>10} {r.whole_after_s:>13.2f} {r.max_awareness:>7} {r.packets_per_node_s:>11.1f}"
            )


def main() -> None:
    started = time.perf_counter()
    if sys.argv[1:] == ["starvation"]:
        starvation_figures()
        print(f"\n(wall time {time.perf_counter() - started:.0f} s)")
        return
    config = SwimConfig()
    print(
        "SWIM + Lifeguard simulator, memberlist LAN defaults: probe "
        f"{config.probe_interval:g} s / timeout {config.probe_timeout:g} s, gossip "
        f"{config.gossip_interval:g} s x {config.gossip_nodes}, k={config.indirect_checks}, "
        f"suspicion mult {config.suspicion_mult} (max x{config.suspicion_max_timeout_mult}), "
        f"retransmit mult {config.retransmit_mult}"
    )
    print(
        "Reference: /work/shared/reference/discovery-routing-models.md 1.4, 1.5, 1.8; "
        "ratio = ours / reference (lower is better)"
    )
    dissemination(config.gossip_interval)
    load()
    detection()
    false_positive_rate()
    starvation_figures()
    print(f"\n(wall time {time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
