"""A deterministic discrete-event simulator for `SwimNode`s.

All nodes live in one process on a virtual clock. An event heap holds packet deliveries and node
wake-ups (each node is woken at its `next_deadline()`); everything random (latency, loss, the
nodes' own choices) comes from one seed, so a run is reproducible. The network model:

* latency: uniform in `latency` seconds per packet;
* loss: each packet is dropped with probability `loss`;
* partition: packets between different groups are dropped;
* crash: a node stops silently (no leave), packets to it vanish;
* restart: a fresh node with the same id (incarnation 0), at the same address or another, joins
  through the seeds, and must out-number its old incarnation by refuting what the cluster says
  about it;
* inject: a packet made up by a node (a member that lies);
* leave: the node gossips its departure and stops once `leave_complete`;
* CPU (`cpu=Cpu(...)`, off by default): every node is a single-threaded process on a machine of
  `cores` cores shared with `hogs` busy processes (`hog(k)`). Each node handles its packets and
  its timer wake-ups one at a time; handling costs CPU seconds (`receive_s` per packet,
  `send_s` per packet sent, `tick_s` per wake-up), stretched by the share of a core it gets
  while busy: cores / (busy nodes + hogs), at most 1. So a starved node processes messages late
  and its timers fire late, and the protocol's own traffic feeds the starvation (the metastable
  overload of issue 21). `Cpu.packets_first` serves queued packets before due timers (as the
  real transport's inbox does); otherwise one FIFO queue (as a plain asyncio loop does).

`wire=True` sends every packet through its JSON encoding (slower; proves the wire format), and
`measure_bytes=True` counts the bytes of that encoding.
"""

from __future__ import annotations

import heapq
import json
import math
import random
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from registry.gossip.messages import Message, decode_packet, encode_packet
from registry.gossip.swim import Delegate, MemberEvent, Output, State, SwimConfig, SwimNode

__all__ = [
    "Cpu",
    "Detection",
    "FalsePositives",
    "Starvation",
    "RecordingDelegate",
    "Simulator",
    "Spread",
    "Traffic",
    "detect_crash",
    "false_positives",
    "percentile",
    "spread_rounds",
    "starvation",
    "whole",
]

#: listener(now, observer node, event) for every membership event of every node.
Listener = Callable[[float, SwimNode, MemberEvent], None]


class RecordingDelegate(Delegate):
    """A user layer that remembers every payload and when this node first got it, relays news,
    and exchanges everything it knows on push/pull (a toy version of registry anti-entropy)."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self.payloads: dict[str, Any] = {}
        self.first_seen: dict[str, float] = {}

    def record(self, key: str, payload: Any) -> bool:
        if key in self.payloads:
            return False
        self.payloads[key] = payload
        self.first_seen[key] = self._clock()
        return True

    def notify_user(self, key: str, payload: Any) -> bool:
        return self.record(key, payload)

    def local_state(self, join: bool) -> Any:
        return dict(self.payloads)  # a snapshot: the packet is in flight for a while

    def merge_remote_state(self, state: Any, join: bool) -> None:
        for key, payload in state.items():
            self.record(key, payload)


@dataclass
class Traffic:
    """Packets and bytes sent, by sender address, destination address and first message type."""

    packets: Counter[str] = field(default_factory=Counter)
    to: Counter[str] = field(default_factory=Counter)
    bytes: Counter[str] = field(default_factory=Counter)
    by_type: Counter[str] = field(default_factory=Counter)


@dataclass(frozen=True)
class Cpu:
    """The CPU model (module docstring). The default costs are those of a real node's packet:
    signing and verifying the envelope and its JSON take about 0.1 ms each, the HTTP around it
    the rest (httpx about 2 ms per request on this machine class, see bench/common.py; the
    server side with its middleware about 1.5 ms)."""

    cores: float = 2.0
    receive_s: float = 0.0015
    send_s: float = 0.002
    tick_s: float = 0.0002
    packets_first: bool = False
    inbox_limit: int | None = None  # packets queued past this are dropped (None: unbounded)


_DELIVER, _WAKE, _SERVE = 0, 1, 2


class Simulator:
    """N `SwimNode`s on a virtual clock; see the module docstring."""

    def __init__(
        self,
        config: SwimConfig | None = None,
        *,
        seed: int = 0,
        loss: float = 0.0,
        latency: tuple[float, float] = (0.001, 0.005),
        wire: bool = False,
        measure_bytes: bool = False,
        cpu: Cpu | None = None,
    ) -> None:
        self.config = config or SwimConfig()
        self.cpu = cpu
        self.hogs = 0
        self.shed = 0  # packets dropped by full inboxes (cpu.inbox_limit)
        self._inbox: dict[SwimNode, deque[tuple[Any, ...]]] = {}  # queued work of each node (cpu)
        self._busy_until: dict[SwimNode, float] = {}
        self._wake_queued: set[SwimNode] = set()  # a wake-up waits in the node's inbox
        self.rng = random.Random(seed)
        self.now = 0.0
        self.loss = loss
        self.latency = latency
        self.wire = wire
        self.measure_bytes = measure_bytes
        self.nodes: dict[str, SwimNode] = {}  # by address, crashed ones included
        self.delegates: dict[str, RecordingDelegate] = {}
        self.up: set[str] = set()
        self.traffic = Traffic()
        self.listeners: list[Listener] = []
        self.false_dead = 0  # oracle: dead declarations about a node that is in fact running
        self._groups: dict[str, int] = {}
        self._heap: list[tuple[Any, ...]] = []
        self._counter = 0
        self._wake: dict[SwimNode, float] = {}
        self._leaving: set[str] = set()

    # ------------------------------------------------------------------ cluster set-up

    @staticmethod
    def node_id(i: int) -> str:
        return f"did:sim:node-{i:05d}"

    @staticmethod
    def node_addr(i: int) -> str:
        return f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}:7946"

    def spawn(
        self, i: int, seeds: Iterable[str] = (), known: Iterable[tuple[str, str]] = (), addr: str | None = None
    ) -> SwimNode:
        """Start node number `i` now (a fresh state machine if it ran before), at its usual
        address or at `addr` (a restart elsewhere: same id, new address)."""
        addr = addr or self.node_addr(i)
        old = self.nodes.get(addr)
        if old is not None:
            self._wake.pop(old, None)
            self._leaving.discard(addr)
        delegate = RecordingDelegate(lambda: self.now)
        node = SwimNode(
            self.node_id(i), addr, self.config, rng=random.Random(self.rng.getrandbits(64)), delegate=delegate
        )
        self.nodes[addr] = node
        self.delegates[addr] = delegate
        self.up.add(addr)
        self._apply(node, node.start(self.now, seeds, known))
        return node

    @classmethod
    def converged(cls, n: int, config: SwimConfig | None = None, **kwargs: Any) -> Simulator:
        """A cluster of n nodes that already know each other (no join traffic)."""
        sim = cls(config, **kwargs)
        everyone = [(cls.node_id(i), cls.node_addr(i)) for i in range(n)]
        for i in range(n):
            sim.spawn(i, known=everyone)
        return sim

    # ------------------------------------------------------------------ faults and actions

    def crash(self, addr: str) -> None:
        """Stop a node silently."""
        self.up.discard(addr)
        self._wake.pop(self.nodes[addr], None)

    def leave(self, addr: str) -> None:
        """Graceful leave; the node stops once its leave notice is out."""
        node = self.nodes[addr]
        self._leaving.add(addr)
        self._apply(node, node.leave(self.now))

    def partition(self, *groups: Iterable[str]) -> None:
        """Cut the network into `groups` (addresses); unlisted nodes form one more group."""
        self._groups = {addr: g for g, members in enumerate(groups) for addr in members}

    def heal(self) -> None:
        self._groups = {}

    def hog(self, processes: int) -> None:
        """Run `processes` CPU-bound processes beside the nodes from now on (needs `cpu`)."""
        self.hogs = processes

    def inject(self, src: str, to: str, packet: list[Message]) -> None:
        """Send `packet` from the node at `src` as if it had made it (a member that lies)."""
        self._transmit(src, to, packet)

    def broadcast(self, addr: str, key: str, payload: Any) -> None:
        """Have node `addr` publish a user payload (it records it as seen at once)."""
        self.delegates[addr].record(key, payload)
        node = self.nodes[addr]
        node.broadcast(key, payload)
        self._arm(node)

    # ------------------------------------------------------------------ running

    def run(self, until: float) -> None:
        """Process every event up to virtual time `until`."""
        heap, nodes, up, wake = self._heap, self.nodes, self.up, self._wake
        while heap and heap[0][0] <= until:
            event = heapq.heappop(heap)
            self.now = now = event[0]
            kind = event[2]
            if kind == _WAKE:
                node = event[3]
                if wake.get(node) != now:
                    continue  # superseded or crashed
                del wake[node]
                if self.cpu is not None:
                    self._wake_queued.add(node)
                    self._enqueue(node, (_WAKE,))
                else:
                    self._tick(node, now)
            elif kind == _DELIVER:
                to = event[3]
                if to not in up:
                    continue
                node = nodes[to]
                if self.cpu is not None:
                    self._enqueue(node, event[2:])
                else:
                    self._apply(node, node.receive(now, event[4], event[5], sender=event[6]))
            else:
                self._serve(event[3])
        self.now = max(self.now, until)

    def _tick(self, node: SwimNode, now: float) -> Output:
        out = node.tick(now)
        self._apply(node, out)
        if node.addr in self._leaving and node.leave_complete:
            self._leaving.discard(node.addr)
            self.crash(node.addr)
        return out

    # ------------------------------------------------------------------ CPU model

    def _enqueue(self, node: SwimNode, item: tuple[Any, ...]) -> None:
        """Queue a packet or a wake-up for the node's single thread; start serving if idle."""
        cpu = self.cpu
        assert cpu is not None
        inbox = self._inbox.setdefault(node, deque())
        if item[0] == _DELIVER and cpu.inbox_limit is not None:
            if sum(1 for queued in inbox if queued[0] == _DELIVER) >= cpu.inbox_limit:
                self.shed += 1
                return
        inbox.append(item)
        if len(inbox) == 1:
            self._push(max(self.now, self._busy_until.get(node, self.now)), _SERVE, node)

    def _serve(self, node: SwimNode) -> None:
        """Handle the next queued item of `node` now, and hold its thread for the CPU time that
        took at the share of a core it gets."""
        cpu = self.cpu
        assert cpu is not None
        inbox = self._inbox.get(node)
        if not inbox or node.addr not in self.up or self.nodes.get(node.addr) is not node:
            if inbox:
                inbox.clear()
            return
        item = inbox.popleft()
        if cpu.packets_first and item[0] == _WAKE:
            # Serve what arrived before the timers: acks and refutations before new probes.
            packets = [queued for queued in inbox if queued[0] == _DELIVER]
            if packets:
                inbox.clear()
                inbox.extend(packets)
                inbox.append(item)
                item = inbox.popleft()
        now = self.now
        if item[0] == _WAKE:
            self._wake_queued.discard(node)
            out = self._tick(node, now)
            cost = cpu.tick_s
        else:
            out = node.receive(now, item[2], item[3], sender=item[4])
            self._apply(node, out)
            cost = cpu.receive_s
        cost += cpu.send_s * len(out.sends)
        busy = sum(1 for other, until in self._busy_until.items() if until > now and other is not node) + 1
        share = min(1.0, cpu.cores / (busy + self.hogs))
        done = now + cost / share
        self._busy_until[node] = done
        if inbox:
            self._push(done, _SERVE, node)

    def _push(self, when: float, kind: int, *args: Any) -> None:
        self._counter += 1
        heapq.heappush(self._heap, (when, self._counter, kind, *args))

    def run_until(self, done: Callable[[], bool], timeout: float, step: float = 0.1) -> float:
        """Run until `done()` (checked every `step` seconds) or `timeout` seconds pass; return
        the virtual time at which it held, or math.inf."""
        end = self.now + timeout
        while self.now < end:
            if done():
                return self.now
            self.run(min(self.now + step, end))
        return self.now if done() else math.inf

    def _arm(self, node: SwimNode) -> None:
        """(Re)schedule the node's wake-up at its next deadline if that is earlier."""
        deadline = node.next_deadline()
        if deadline == math.inf or node in self._wake_queued:
            return
        deadline = max(deadline, self.now)
        current = self._wake.get(node)
        if current is None or deadline < current:
            self._wake[node] = deadline
            self._counter += 1
            heapq.heappush(self._heap, (deadline, self._counter, _WAKE, node))

    def _apply(self, node: SwimNode, out: Output) -> None:
        for to, packet in out.sends:
            self._transmit(node.addr, to, packet)
        for event in out.events:
            if event.new is State.DEAD and event.addr in self.up:
                self.false_dead += 1
            for listener in self.listeners:
                listener(self.now, node, event)
        if node.addr in self.up:
            self._arm(node)

    def _transmit(self, src: str, to: str, packet: list[Message]) -> None:
        traffic = self.traffic
        traffic.packets[src] += 1
        traffic.to[to] += 1
        traffic.by_type[packet[0].TYPE] += 1
        if self.wire or self.measure_bytes:
            text = json.dumps(encode_packet(packet), separators=(",", ":"))
            traffic.bytes[src] += len(text)
            if self.wire:
                packet = decode_packet(json.loads(text))
        rnd = self.rng.random
        if self.loss and rnd() < self.loss:
            return
        if self._groups and self._groups.get(src, -1) != self._groups.get(to, -1):
            return
        lo, hi = self.latency
        self._counter += 1
        # The simulated network is authentic: a packet's sender is the node at its source address.
        sender = self.nodes[src].id
        heapq.heappush(
            self._heap, (self.now + lo + (hi - lo) * rnd(), self._counter, _DELIVER, to, src, packet, sender)
        )

    # ------------------------------------------------------------------ observation

    def live_nodes(self) -> list[SwimNode]:
        return [self.nodes[a] for a in sorted(self.up)]

    def view_of(self, member_id: str) -> Counter[State | None]:
        """How the running nodes see `member_id` (None: not known)."""
        views: Counter[State | None] = Counter()
        for node in self.live_nodes():
            member = node.members.get(member_id)
            views[member.state if member is not None else None] += 1
        return views

    def coverage_time(self, key: str) -> float:
        """When the last running node first saw user payload `key` (inf: not all have it)."""
        seen = [self.delegates[addr].first_seen.get(key, math.inf) for addr in self.up]
        return max(seen)


# ---------------------------------------------------------------------- experiments
# Shared by tests/test_gossip_sim.py (which asserts on them) and bench/gossip.py (which prints them).


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile: the smallest value with at least q % of the values at or below
    it (the maximum for q = 99 and fewer than 100 values)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


@dataclass
class Spread:
    """Gossip rounds each update took to reach every node, and the dead declarations about
    running nodes (false positives) seen meanwhile."""

    rounds: list[float]
    false_dead: int


def spread_rounds(
    n: int, *, loss: float, seed: int, updates: int = 4, warmup: float = 3.0, config: SwimConfig | None = None
) -> Spread:
    """Gossip rounds until every node has an update, for `updates` user broadcasts from random
    nodes (a quarter round apart) and then one join, in a converged cluster of n nodes after
    `warmup` seconds. A round is one gossip_interval; timing starts when the update is made."""
    sim = Simulator.converged(n, config, seed=seed, loss=loss)
    interval = sim.config.gossip_interval
    sim.run(warmup)
    started = {}
    for u in range(updates):
        key = f"update-{u}"
        started[key] = sim.now
        sim.broadcast(sim.node_addr(sim.rng.randrange(n)), key, u)
        sim.run(sim.now + interval / 4)
    sim.run_until(lambda: all(sim.coverage_time(k) < math.inf for k in started), 60, interval)
    rounds = [(sim.coverage_time(k) - t0) / interval for k, t0 in started.items()]
    # The join's update is born when the first member (the seed) learns the newcomer; the
    # push/pull handshake before that is not dissemination.
    joiner_id = sim.node_id(n)
    learned: dict[str, float] = {}

    def listener(now: float, node: SwimNode, event: MemberEvent) -> None:
        if event.member == joiner_id and event.old is None:
            learned[node.id] = now

    sim.listeners.append(listener)
    sim.spawn(n, seeds=[sim.node_addr(sim.rng.randrange(n))])
    sim.run_until(lambda: len(learned) == n, 60, interval)
    rounds.append((max(learned.values()) - min(learned.values())) / interval if len(learned) == n else math.inf)
    return Spread(rounds, sim.false_dead)


@dataclass
class Detection:
    """Seconds from a crash to: the first suspicion, the first and the last dead declaration
    (every running node), and whether any node declared it dead before anyone suspected it."""

    first_suspect: float
    first_dead: float
    all_dead: float
    dead_before_suspect: bool


def detect_crash(
    n: int, *, loss: float, seed: int, warmup: float = 5.0, timeout: float = 600.0, config: SwimConfig | None = None
) -> Detection:
    """Crash one node of a converged n-node cluster and time its detection."""
    sim = Simulator.converged(n, config, seed=seed, loss=loss)
    sim.run(warmup)
    victim = sim.rng.randrange(n)
    victim_id = sim.node_id(victim)
    first_suspect = math.inf
    dead_at: dict[str, float] = {}  # observer -> when it declared the victim dead

    def listener(now: float, node: SwimNode, event: MemberEvent) -> None:
        nonlocal first_suspect
        if event.member == victim_id:
            if event.new is State.SUSPECT:
                first_suspect = min(first_suspect, now)
            elif event.new is State.DEAD:
                dead_at[node.id] = now

    sim.listeners.append(listener)
    crashed_at = sim.now
    sim.crash(sim.node_addr(victim))
    sim.run_until(lambda: len(dead_at) == n - 1, timeout, sim.config.gossip_interval)
    first_dead = min(dead_at.values(), default=math.inf)
    all_dead = max(dead_at.values()) if len(dead_at) == n - 1 else math.inf
    return Detection(
        first_suspect - crashed_at, first_dead - crashed_at, all_dead - crashed_at, first_dead < first_suspect
    )


@dataclass
class FalsePositives:
    """Over a run with no crash: suspicions raised (all false, all to be refuted), dead
    declarations (false positives), and the highest Lifeguard health score any node reached."""

    suspicions: int
    false_dead: int
    max_awareness: int


def false_positives(
    n: int, *, loss: float, seed: int, duration: float, config: SwimConfig | None = None
) -> FalsePositives:
    """Run a converged n-node cluster with no failures for `duration` seconds under `loss`."""
    sim = Simulator.converged(n, config, seed=seed, loss=loss)
    suspicions: set[tuple[str, int]] = set()
    max_score = 0

    def listener(now: float, node: SwimNode, event: MemberEvent) -> None:
        nonlocal max_score
        max_score = max(max_score, node.awareness.score)
        if event.new is State.SUSPECT:
            suspicions.add((event.member, event.incarnation))

    sim.listeners.append(listener)
    sim.run(duration)
    return FalsePositives(len(suspicions), sim.false_dead, max_score)


def whole(sim: Simulator) -> bool:
    """Every running node sees every other running node alive."""
    live = sim.live_nodes()
    ids = [node.id for node in live]
    for node in live:
        members = node.members
        for member_id in ids:
            member = members.get(member_id)
            if member is None or member.state is not State.ALIVE:
                return False
    return True


@dataclass
class Starvation:
    """A cluster that joins through one seed, then runs `hogs` CPU-bound processes beside its
    nodes for a while (`starvation`). Seconds are virtual; inf: never within the run."""

    converged_s: float  # from the first start until membership is whole
    suspicions: int  # suspect marks about running nodes, all run long
    false_dead_hog: int  # dead marks about running nodes from the hog's start to its end
    false_dead: int  # the same, all run long
    whole_after_s: float  # from the hog's end until membership is whole again
    max_awareness: int  # highest Lifeguard health score any node reached
    packets_per_node_s: float  # packets each node sent per second, on average
    shed: int  # packets dropped by full inboxes


def starvation(
    n: int,
    *,
    seed: int,
    config: SwimConfig | None = None,
    cpu: Cpu | None = None,
    hogs: int = 1,
    start_gap: float = 0.05,
    settle: float = 10.0,
    hog_seconds: float = 20.0,
    recover: float = 30.0,
) -> Starvation:
    """n nodes start `start_gap` apart, joining through the first; `settle` seconds after the
    last start (or once whole, if later, up to 60 s more) `hogs` processes take CPU for
    `hog_seconds`; then up to `recover` seconds to become whole again. With `cpu` None there is
    no CPU limit (and the hogs change nothing)."""
    sim = Simulator(config, seed=seed, cpu=cpu)
    seed_addr = sim.node_addr(0)
    suspicions: set[tuple[str, str, int]] = set()
    max_score = 0

    def listener(now: float, node: SwimNode, event: MemberEvent) -> None:
        nonlocal max_score
        max_score = max(max_score, node.awareness.score)
        if event.new is State.SUSPECT and event.addr in sim.up:
            suspicions.add((node.id, event.member, event.incarnation))

    sim.listeners.append(listener)
    sim.spawn(0)
    for i in range(1, n):
        sim.run(sim.now + start_gap)
        sim.spawn(i, seeds=[seed_addr])
    started = start_gap * (n - 1)
    converged = sim.run_until(lambda: whole(sim), 60.0 + settle, 0.05)
    sim.run(max(sim.now, started + settle))
    dead_before = sim.false_dead
    sim.hog(hogs)
    sim.run(sim.now + hog_seconds)
    false_dead_hog = sim.false_dead - dead_before
    sim.hog(0)
    hog_end = sim.now
    recovered = sim.run_until(lambda: whole(sim), recover, 0.05)
    packets = sum(sim.traffic.packets.values()) / (n * sim.now)
    return Starvation(
        converged_s=converged,
        suspicions=len(suspicions),
        false_dead_hog=false_dead_hog,
        false_dead=sim.false_dead,
        whole_after_s=recovered - hog_end,
        max_awareness=max_score,
        packets_per_node_s=packets,
        shed=sim.shed,
    )
