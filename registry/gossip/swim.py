"""SWIM membership with the Lifeguard extensions, as a transport-free state machine.

One `SwimNode` is one gateway's view of the cluster. It owns no socket, task or clock: the
caller passes the time in and gets packets out.

    out = node.start(now, seeds)            # join: push/pull with the seeds
    out = node.tick(now)                     # call at node.next_deadline() (or later)
    out = node.receive(now, from_addr, pkt, sender=member_id)  # pkt: list of messages (messages.py)
    out.sends   -> [(to_addr, [message, ...]), ...]   packets to send
    out.events  -> [MemberEvent, ...]                 membership changes seen by this node

`sender` is the member id of the node that sent the packet and `from_addr` its advertised address
(answers go there); the transport vouches for both (a signed envelope names them, and its key is
that member's). The protocol, with the paper section each piece comes from:

* Failure detection (SWIM 3.1, 4.3): every probe period the node pings the next member of a
  shuffled round-robin list. No ack within the probe timeout: it sends ping-req to
  `indirect_checks` random members, which ping the target and relay the ack. No ack by the end
  of the period: the target becomes suspect.
* Suspicion (SWIM 4.2): a suspect is declared dead when its suspicion timer fires, unless it
  refutes first: a node that hears it is suspected (or dead) raises its incarnation and gossips
  `Alive`. Incarnation rules: `Alive(i)` overrides suspect/alive with a lower incarnation;
  `Suspect(i)` overrides alive with incarnation <= i; `Dead(i)` overrides anything with
  incarnation <= i (and dead/left are final until a higher `Alive`).
* Lifeguard (Dadgar et al. 2018): (1) Local Health Multiplier: the probe interval and timeout
  are scaled by (score + 1); a failed probe with missing nacks and every refutation raise the
  score, a successful probe lowers it. (2) Local Health Aware Suspicion: the suspicion timer
  starts at a maximum and shrinks towards a minimum as independent accusers confirm it
  (memberlist suspicion.go); a node that ran its own timers late while the timer ran stretches
  it by its local health multiplier (one never late keeps memberlist's timing). (3) Buddy
  system: a probe to a suspect carries the suspicion, so the suspect can refute at once.
  Helpers answer with a `Nack` when the target stays silent.
* Overload (issue 21): a node whose timers fire late (it was starved) counts that against its
  local health, the probe that was running accuses nobody, and its suspicion timers stretch;
  while starved, its gossip fan-out is gossip_nodes / (score + 1) per round on average. So an
  overloaded cluster sheds its own protocol load.
* Dissemination (SWIM 4.1): membership updates and user payloads are piggybacked on every
  packet and on gossip packets to `gossip_nodes` random members each `gossip_interval`, each
  sent at most retransmit_mult * ceil(log10(N + 1)) times (memberlist queue.go).
* Anti-entropy and join (memberlist push/pull): a joining node exchanges its full state with its
  seeds; afterwards each node does so with one random member every push-pull interval (scaled
  with cluster size). Recently dead members still get gossip (memberlist GossipToTheDeadTime) and
  a random dead member is contacted every reconnect interval (serf's reconnect), which is how a
  healed partition merges back. Dead and left members are reaped after `reap_timeout`.
* Leave: the node gossips `Dead` about itself with itself as accuser, and sends it to its seeds
  directly (they know of it even when it knows of nobody yet); peers record it as left.

Who is believed about what (not in SWIM, which trusts every member): a packet must never steer
where this node sends. So

* an address is only ever learned from the member itself, or relayed by a member: an `Alive`
  that *changes* a known member's address counts only when that member sent it, and a node
  announcing itself must announce the address it sends from;
* news about a third node (alive, suspect, dead, push/pull entries) counts only from a member:
  a stranger speaks of itself (announcing itself makes it one, which is how a seed's answer to
  a join, or a joining node, is heard) and of us, of nobody else;
* a ping-req helper pings only a member, at the address of its own member table: a request that
  names another address (or an unknown node) is answered with a `Nack` and nothing else; only
  members' requests are served;
* when a member's packets come from another address than the table's (it restarted elsewhere),
  the node asks it there with a push/pull (at most once per probe interval); its own answer
  moves it when its incarnation is newer, which it is once it has refuted the old story the
  request carries. So a member that moved is found by each node it contacts, within one round
  of its probes (N probe intervals) at worst.
"""

from __future__ import annotations

import heapq
import math
import random
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from enum import Enum
from types import MappingProxyType
from typing import Any, NamedTuple

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
)
from registry.gossip.queue import BroadcastQueue, retransmit_limit

__all__ = [
    "Awareness",
    "Delegate",
    "Member",
    "MemberEvent",
    "Output",
    "State",
    "Suspicion",
    "SwimConfig",
    "SwimNode",
    "push_pull_scale",
    "suspicion_timeout",
]


@dataclass(frozen=True)
class SwimConfig:
    """Protocol parameters. The defaults are memberlist's `DefaultLANConfig` (and serf's
    reconnect/reap settings); times are in seconds."""

    probe_interval: float = 1.0  # memberlist ProbeInterval: one probe per period
    probe_timeout: float = 0.5  # ProbeTimeout: wait for a direct ack before ping-req
    indirect_checks: int = 3  # IndirectChecks: SWIM's k ping-req helpers
    # A helper nacks after this fraction of probe_timeout, so the nack reaches the prober inside
    # its probe period (memberlist's helper waits the whole timeout, and its nacks land just
    # after the period; swift-cluster-membership #14 uses 80 % for the same reason).
    nack_timeout_fraction: float = 0.8
    suspicion_mult: int = 4  # SuspicionMult: min timeout = mult * max(1, log10 N) * interval
    suspicion_max_timeout_mult: int = 6  # SuspicionMaxTimeoutMult: max timeout = this * min
    awareness_max_multiplier: int = 8  # AwarenessMaxMultiplier: LHM score in [0, this - 1]
    retransmit_mult: int = 4  # RetransmitMult: transmits per update = this * ceil(log10(N+1))
    gossip_interval: float = 0.2  # GossipInterval
    gossip_nodes: int = 3  # GossipNodes: fanout of one gossip round
    gossip_to_the_dead_time: float = 30.0  # GossipToTheDeadTime
    push_pull_interval: float = 30.0  # PushPullInterval (scaled up above 32 nodes)
    reconnect_interval: float = 30.0  # serf ReconnectInterval
    reap_timeout: float = 24 * 3600.0  # serf ReconnectTimeout / TombstoneTimeout
    packet_bytes: int = 1400  # UDPBufferSize: budget of one packet, primary message included
    packet_reserve: int = 256  # bytes kept free for the primary message of a packet
    max_members: int = 10_000  # members beyond this are not admitted
    max_queue_depth: int = 1024  # per broadcast queue (membership, user)
    max_pending_relays: int = 64  # indirect probes this node helps with at once

    @classmethod
    def lan(cls) -> SwimConfig:
        """memberlist DefaultLANConfig."""
        return cls()

    @classmethod
    def fast(cls) -> SwimConfig:
        """A test profile: every LAN period divided by 10, multipliers unchanged, so the
        protocol behaves the same on a timeline ten times shorter (for real-socket tests)."""
        lan = cls()
        return replace(
            lan,
            **{
                name: getattr(lan, name) / 10
                for name in (
                    "probe_interval",
                    "probe_timeout",
                    "gossip_interval",
                    "gossip_to_the_dead_time",
                    "push_pull_interval",
                    "reconnect_interval",
                    "reap_timeout",
                )
            },
        )


class State(str, Enum):
    """A member's state as one node sees it."""

    ALIVE = "alive"
    SUSPECT = "suspect"
    DEAD = "dead"
    LEFT = "left"


# Module-level aliases: the hot paths compare states often, and Enum class lookups are slow.
_ALIVE, _SUSPECT, _DEAD, _LEFT = State.ALIVE, State.SUSPECT, State.DEAD, State.LEFT
_GONE = (_DEAD, _LEFT)


@dataclass(slots=True, eq=False)
class Member:
    """A node's record of one member (itself included); compared by identity."""

    id: str
    addr: str
    incarnation: int
    state: State
    state_change: float  # time of the last state change, seen locally


@dataclass(frozen=True, slots=True)
class MemberEvent:
    """A membership change seen by one node. `old` is None when the member is first learned,
    `new` is None when it is reaped."""

    member: str
    addr: str
    incarnation: int
    old: State | None
    new: State | None


class Output(NamedTuple):
    """What one call produced: packets to send and membership events."""

    sends: list[tuple[str, list[Message]]]
    events: list[MemberEvent]


class Delegate:
    """Hooks for the layer above (the registry's anti-entropy). Override what you need.

    * `notify_user(key, payload)`: a `UserMsg` arrived. Return True when it was news, and the
      node piggybacks it onward (infection-style relay); False stops it here (already known).
    * `local_state(join)`: a JSON value sent with every push/pull (e.g. a digest did -> seq).
    * `merge_remote_state(state, join)`: the peer's `local_state` from a push/pull.
    """

    def notify_user(self, key: str, payload: Any) -> bool:
        return False

    def local_state(self, join: bool) -> Any:
        return None

    def merge_remote_state(self, state: Any, join: bool) -> None:
        return None


def suspicion_timeout(suspicion_mult: int, n: int, interval: float) -> float:
    """memberlist util.go `suspicionTimeout`: mult * max(1, log10(n)) * interval (the minimum)."""
    return suspicion_mult * max(1.0, math.log10(max(1.0, n))) * interval


def push_pull_scale(interval: float, n: int) -> float:
    """memberlist util.go `pushPullScale`: unchanged up to 32 nodes, then
    interval * (ceil(log2 n - log2 32) + 1), so full-state traffic stays bounded as N grows."""
    if n <= 32:
        return interval
    return interval * (math.ceil(math.log2(n) - math.log2(32)) + 1)


class Awareness:
    """Lifeguard's Local Health Multiplier (memberlist awareness.go): a score in
    [0, max_multiplier - 1]; timeouts are multiplied by score + 1."""

    __slots__ = ("score", "_max")

    def __init__(self, max_multiplier: int) -> None:
        self.score = 0
        self._max = max_multiplier

    def apply(self, delta: int) -> None:
        self.score = min(max(self.score + delta, 0), self._max - 1)

    def scale(self, duration: float) -> float:
        return duration * (self.score + 1)


class Suspicion:
    """Lifeguard's Local Health Aware Suspicion timer for one suspect (memberlist suspicion.go).

    The timer starts at `max_timeout` and, as `k` distinct accusers confirm, shrinks to
    max - (log(n + 1) / log(k + 1)) * (max - min), never below `min_timeout`, always measured from
    `start`. The first accuser does not count as a confirmation. With k < 1 it is `min_timeout`.
    """

    __slots__ = ("start", "deadline", "multiplier", "_k", "_n", "_min", "_max", "_accusers")

    def __init__(self, accuser: str, k: int, min_timeout: float, max_timeout: float, start: float) -> None:
        self.start = start
        self._k = k
        self._n = 0
        self._min = min_timeout
        self._max = max_timeout
        self._accusers = {accuser}
        self.deadline = start + (max_timeout if k >= 1 else min_timeout)
        self.multiplier = 1  # the local health multiplier the timeouts are stretched by

    def stretch(self, multiplier: int) -> bool:
        """Stretch both timeouts (and the deadline, from `start`) to `multiplier` times the
        nominal ones, if that is more than now; True when it did."""
        if multiplier <= self.multiplier:
            return False
        factor = multiplier / self.multiplier
        self._min *= factor
        self._max *= factor
        self.deadline = self.start + (self.deadline - self.start) * factor
        self.multiplier = multiplier
        return True

    def confirm(self, accuser: str) -> bool:
        """Count an independent accuser; True when that was new and moved the deadline."""
        if self._n >= self._k or accuser in self._accusers:
            return False
        self._accusers.add(accuser)
        self._n += 1
        frac = math.log(self._n + 1) / math.log(self._k + 1)
        raw = self._max - frac * (self._max - self._min)
        self.deadline = self.start + max(self._min, math.floor(1000 * raw) / 1000)
        return True


@dataclass(slots=True)
class _Probe:
    """The probe of the current period. A failure accuses `target` at the incarnation it had
    when probed, so a node that refuted (or restarted) meanwhile is not wrongly suspected."""

    seq: int
    target: str
    incarnation: int
    expected_nacks: int = 0
    nacks: int = 0
    late: bool = False  # a timer of this probe fired late: this node was starved meanwhile


@dataclass(slots=True)
class _Relay:
    """An indirect probe this node runs for `requester` (who asked with sequence `seq`)."""

    requester: str
    seq: int


# Timer kinds in the node's heap. Periodic ones re-arm themselves; the others are checked for
# staleness when they fire (a cancelled timer is simply ignored).
_PROBE, _PROBE_TIMEOUT, _RELAY, _SUSPICION, _PUSH_PULL, _RECONNECT = range(6)


class SwimNode:
    """One member's SWIM + Lifeguard state machine (see the module docstring)."""

    def __init__(
        self,
        node_id: str,
        addr: str,
        config: SwimConfig | None = None,
        *,
        rng: random.Random,
        delegate: Delegate | None = None,
    ) -> None:
        self.id = node_id
        self.addr = addr
        self.config = config or SwimConfig()
        self.awareness = Awareness(self.config.awareness_max_multiplier)
        self._rng = rng
        self._delegate = delegate or Delegate()
        self._self = Member(node_id, addr, 0, _ALIVE, 0.0)
        self._members: dict[str, Member] = {node_id: self._self}
        self.members: Mapping[str, Member] = MappingProxyType(self._members)
        self._order: list[str] = []  # probe round-robin over the other members
        self._probe_index = 0
        self._probe: _Probe | None = None
        self._relays: dict[int, _Relay] = {}
        self._suspicions: dict[str, Suspicion] = {}
        self._membership_q = BroadcastQueue(self.config.max_queue_depth)
        self._user_q = BroadcastQueue(self.config.max_queue_depth)
        self._timers: list[tuple[float, int, int, Any]] = []
        self._timer_counter = 0
        self._next_gossip = math.inf
        self._gossip_credit = 0.0  # gossip packets owed: fan-out scaled by local health
        self._starved_at = -math.inf  # when this node last ran its timers late (tick)
        self._seq = 0
        self._seeds: tuple[str, ...] = ()
        self._leaving = False
        # Whose word the news being handled is: the packet's sender and the address it signed
        # (receive sets them), else this node's own (timers, leave).
        self._sender, self._from = node_id, addr
        self._addr_checks: dict[str, tuple[str, float]] = {}  # member -> (other address, asked at)
        self._sends: list[tuple[str, list[Message]]] = []
        self._events: list[MemberEvent] = []
        self._handlers: dict[type, Callable[[Any, float, str], None]] = {
            Ping: self._on_ping,
            Ack: self._on_ack,
            Nack: self._on_nack,
            PingReq: self._on_ping_req,
            PushPull: self._on_push_pull,
            UserMsg: self._on_user,
            Alive: self._on_alive,
            Suspect: self._on_suspect,
            Dead: self._on_dead,
        }

    # ------------------------------------------------------------------ public API

    @property
    def incarnation(self) -> int:
        return self._self.incarnation

    @property
    def leave_complete(self) -> bool:
        """After `leave()`: the leave notice has been sent its retransmit limit (or there is
        nobody left to tell), so the process may stop (memberlist Leave's broadcast wait)."""
        return self._leaving and (
            self.id not in self._membership_q or not any(m.state is _ALIVE for m in self._others())
        )

    def start(self, now: float, seeds: Iterable[str] = (), known: Iterable[tuple[str, str]] = ()) -> Output:
        """Begin protocol periods and join through `seeds` (addresses) with a push/pull.

        `known` preloads (id, addr) members as alive at incarnation 0 without any gossip, as if
        restored from a snapshot of a settled cluster that knows this node too (the simulator
        starts a large converged cluster this way); otherwise the node announces itself. Timers
        start at a random offset, as memberlist staggers its tickers.
        """
        self._self.state_change = now
        for node_id, addr in known:
            if node_id != self.id and len(self._members) < self.config.max_members:
                self._members[node_id] = Member(node_id, addr, 0, _ALIVE, now)
                self._order.append(node_id)
        self._rng.shuffle(self._order)
        if not self._order:
            self._membership_q.push(self.id, Alive(self.id, self.addr, self.incarnation))
        cfg = self.config
        self._seeds = tuple(a for a in seeds if a != self.addr)
        for seed in self._seeds:
            self._send_push_pull(seed, join=True, reply=False)
        rnd = self._rng.random
        self._schedule(now + rnd() * cfg.probe_interval, _PROBE)
        self._schedule(now + (cfg.probe_interval if self._seeds else rnd() * self._push_pull_period()), _PUSH_PULL)
        self._schedule(now + rnd() * cfg.reconnect_interval, _RECONNECT)
        self._next_gossip = now + rnd() * cfg.gossip_interval
        return self._flush()

    def next_deadline(self) -> float:
        """When `tick` must next run (may be <= the last time seen: then run it now)."""
        deadline = self._timers[0][0] if self._timers else math.inf
        if self._membership_q or self._user_q:
            deadline = min(deadline, self._next_gossip)
        return deadline

    def tick(self, now: float) -> Output:
        """Fire every timer due at `now`, and gossip if a gossip round is due."""
        timers = self._timers
        if timers and now - timers[0][0] > self._late_after():
            # This node runs its timers late: it was starved (CPU, a GC pause). Lifeguard: a
            # sign of poor local health, which stretches its timers (suspicions included, see
            # _fire); and the current probe's silence is no evidence against its target.
            self.awareness.apply(1)
            self._starved_at = now
            if self._probe is not None:
                self._probe.late = True
        while timers and timers[0][0] <= now:
            _, _, kind, key = heapq.heappop(timers)
            self._fire(kind, key, now)
        if now >= self._next_gossip:
            if self._membership_q or self._user_q:
                self._gossip(now)
            self._skip_gossip_rounds(now)
        return self._flush()

    def receive(self, now: float, from_addr: str, packet: list[Message], *, sender: str) -> Output:
        """Handle one packet that member `sender` sent from its advertised address `from_addr`
        (see "Who is believed" in the module docstring)."""
        if sender == self.id:
            return self._flush()  # a node never sends to itself: not ours
        handlers = self._handlers
        self._sender, self._from = sender, from_addr
        try:
            for msg in packet:
                handlers[type(msg)](msg, now, from_addr)
        finally:
            self._sender, self._from = self.id, self.addr
        member = self._members.get(sender)
        if member is not None and member is not self._self and member.addr != from_addr:
            self._confirm_addr(member, from_addr, now)
        if now > self._next_gossip:
            self._skip_gossip_rounds(now)
        return self._flush()

    def broadcast(self, key: str, payload: Any) -> None:
        """Disseminate a user payload to every member (it reaches them as
        `Delegate.notify_user`). A later payload with the same key supersedes a queued one."""
        self._user_q.push(key, UserMsg(key, payload))

    def leave(self, now: float) -> Output:
        """Leave gracefully: gossip `Dead(self, accuser=self)`; probing stops, gossip goes on
        until `leave_complete`."""
        self._leaving = True
        notice = Dead(self.id, self.incarnation, self.id)
        self._on_dead(notice, now)
        # The seeds first, directly: they learned of us when we joined, maybe before we learned
        # of anyone (a node that leaves while its join is unanswered gossips to nobody).
        for seed in self._seeds:
            self._sends.append((seed, [notice]))
        if now > self._next_gossip:
            self._skip_gossip_rounds(now)
        return self._flush()

    # ------------------------------------------------------------------ plumbing

    def _flush(self) -> Output:
        out = Output(self._sends, self._events)
        self._sends, self._events = [], []
        return out

    def _schedule(self, when: float, kind: int, key: Any = None) -> None:
        self._timer_counter += 1
        heapq.heappush(self._timers, (when, self._timer_counter, kind, key))

    def _skip_gossip_rounds(self, now: float) -> None:
        """Move the gossip round grid to its first point after `now`. Rounds that passed with
        nothing queued were no-ops (memberlist's gossip() returns early on an empty queue), so
        the node need not be woken for them."""
        interval = self.config.gossip_interval
        self._next_gossip += (math.floor((now - self._next_gossip) / interval) + 1) * interval

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _emit(self, member: Member, old: State | None, new: State | None) -> None:
        self._events.append(MemberEvent(member.id, member.addr, member.incarnation, old, new))

    def _others(self) -> Iterable[Member]:
        members = self._members
        return (members[i] for i in self._order)

    def _send(self, addr: str, *msgs: Message) -> None:
        """Send `msgs` (handled in order by the receiver), piggybacking queued broadcasts."""
        packet = list(msgs)
        packet.extend(self._take_broadcasts(self.config.packet_bytes - self.config.packet_reserve))
        self._sends.append((addr, packet))

    def _take_broadcasts(self, budget: int) -> list[Message]:
        """Membership updates first, user payloads in the remaining space (as memberlist)."""
        limit = retransmit_limit(self.config.retransmit_mult, len(self._members))
        msgs, used = self._membership_q.take(budget, limit)
        if self._user_q:
            user, _ = self._user_q.take(budget - used, limit)
            msgs.extend(user)
        return msgs

    def _random_members(self, k: int, accept: Callable[[Member], bool]) -> list[Member]:
        """Up to k distinct random other members passing `accept` (memberlist kRandomNodes:
        random picks, at most 3n tries; an exhaustive shuffled scan when n < 3k)."""
        order, members, rnd = self._order, self._members, self._rng.random
        n = len(order)
        chosen: list[Member] = []
        if n < 3 * k:
            pool = order[:]
            self._rng.shuffle(pool)
            candidates: Iterable[str] = pool
        else:
            candidates = (order[int(rnd() * n)] for _ in range(3 * n))
        for node_id in candidates:
            member = members[node_id]
            if accept(member) and member not in chosen:
                chosen.append(member)
                if len(chosen) == k:
                    break
        return chosen

    def _fire(self, kind: int, key: Any, now: float) -> None:
        if kind == _PROBE:
            self._probe_period(now)
        elif kind == _PROBE_TIMEOUT:
            self._probe_timeout(key)
        elif kind == _RELAY:
            relay = self._relays.pop(key, None)
            if relay is not None:  # the target stayed silent
                self._send(relay.requester, Nack(relay.seq))
        elif kind == _SUSPICION:
            suspicion = self._suspicions.get(key)
            if suspicion is not None and suspicion.deadline <= now:
                if self._starved_at >= suspicion.start and suspicion.stretch(self.awareness.score + 1):
                    # This node was starved while the suspect had time to refute: the
                    # refutation may be waiting unread, and its own view is stale. The timer
                    # stretches by its health multiplier (the worst seen at the deadlines). A
                    # node that was never late keeps memberlist's timing, so detection of a
                    # really dead node (or a partition) is as fast as before.
                    self._schedule(suspicion.deadline, _SUSPICION, key)
                    return
                member = self._members[key]
                self._on_dead(Dead(key, member.incarnation, self.id), now)
        elif kind == _PUSH_PULL:
            self._push_pull_round(now)
        else:
            self._reconnect_round(now)

    # ------------------------------------------------------------------ failure detection

    def _probe_period(self, now: float) -> None:
        """End the current probe period (SWIM 3.1) and start the next, whose length and timeout
        are scaled by the local health multiplier (Lifeguard LHM)."""
        probe, self._probe = self._probe, None
        # A probe during which this node ran late (tick) proves nothing: the ack may be unread.
        if probe is not None and not probe.late:
            # No ack in the whole period. Lifeguard: a missing nack means the fault may be ours;
            # with no helper to ask, the failed probe itself counts against our health.
            missing = probe.expected_nacks - probe.nacks if probe.expected_nacks else 1
            self.awareness.apply(missing)
            self._on_suspect(Suspect(probe.target, probe.incarnation, self.id), now)
        if self._leaving:
            return
        cfg = self.config
        self._schedule(now + self.awareness.scale(cfg.probe_interval), _PROBE)
        target = self._next_probe_target(now)
        if target is None:
            return
        self._probe = _Probe(self._next_seq(), target.id, target.incarnation)
        if target.state is _SUSPECT:
            # Lifeguard buddy system: tell the suspect first, so the ack can carry its refutation.
            self._send(target.addr, Suspect(target.id, target.incarnation, self.id), Ping(self._probe.seq, target.id))
        else:
            self._send(target.addr, Ping(self._probe.seq, target.id))
        self._schedule(now + self.awareness.scale(cfg.probe_timeout), _PROBE_TIMEOUT, self._probe.seq)

    def _late_after(self) -> float:
        """How late a timer may fire before this node counts itself starved: half the
        (health-scaled) probe timeout, far beyond a healthy event loop's jitter."""
        return self.awareness.scale(self.config.probe_timeout) / 2

    def _next_probe_target(self, now: float) -> Member | None:
        """Next alive or suspect member in the shuffled round-robin (SWIM 4.3); at the end of
        the list, reap and reshuffle (memberlist resetNodes)."""
        members = self._members
        for _ in range(len(self._order) + 1):
            if self._probe_index >= len(self._order):
                self._reset_order(now)
                if not self._order:
                    return None
            member = members[self._order[self._probe_index]]
            self._probe_index += 1
            if member.state not in _GONE:
                return member
        return None

    def _reset_order(self, now: float) -> None:
        """Drop dead/left members older than `reap_timeout`, then reshuffle the probe order."""
        keep = []
        for node_id in self._order:
            member = self._members[node_id]
            if member.state in _GONE and now - member.state_change > self.config.reap_timeout:
                del self._members[node_id]
                self._addr_checks.pop(node_id, None)
                self._emit(member, member.state, None)
            else:
                keep.append(node_id)
        self._rng.shuffle(keep)
        self._order = keep
        self._probe_index = 0

    def _probe_timeout(self, seq: int) -> None:
        """No direct ack in time: indirect probe through k random alive members (SWIM ping-req),
        each of which answers with a nack if the target stays silent (Lifeguard)."""
        probe = self._probe
        if probe is None or probe.seq != seq:
            return  # already acked
        target = self._members[probe.target]
        helpers = self._random_members(self.config.indirect_checks, lambda m: m.state is _ALIVE and m is not target)
        for helper in helpers:
            self._send(helper.addr, PingReq(seq, target.id, target.addr))
        probe.expected_nacks = len(helpers)

    def _on_ping(self, msg: Ping, now: float, src: str) -> None:
        if msg.target == self.id:
            self._send(src, Ack(msg.seq))

    def _on_ack(self, msg: Ack, now: float, src: str) -> None:
        probe = self._probe
        if probe is not None and probe.seq == msg.seq:
            self._probe = None
            self.awareness.apply(-1)  # Lifeguard: a successful probe improves local health
            return
        relay = self._relays.pop(msg.seq, None)
        if relay is not None:
            self._send(relay.requester, Ack(relay.seq))

    def _on_nack(self, msg: Nack, now: float, src: str) -> None:
        probe = self._probe
        if probe is not None and probe.seq == msg.seq:
            probe.nacks += 1

    def _on_ping_req(self, msg: PingReq, now: float, src: str) -> None:
        """Be a SWIM ping-req helper for a member: ping the target, relay its ack, or nack on
        silence (Lifeguard) a little before the requester's probe period ends. The target must
        be a member at the address this node holds for it; otherwise the answer is a nack."""
        if self._sender not in self._members or len(self._relays) >= self.config.max_pending_relays:
            return
        target = self._members.get(msg.target)
        if target is None or target is self._self or target.addr != msg.target_addr:
            self._send(src, Nack(msg.seq))
            return
        seq = self._next_seq()
        self._relays[seq] = _Relay(src, msg.seq)
        self._send(target.addr, Ping(seq, msg.target))
        cfg = self.config
        self._schedule(now + cfg.probe_timeout * cfg.nack_timeout_fraction, _RELAY, seq)

    # ------------------------------------------------------------------ suspicion subprotocol

    def _may_learn(self, node_id: str) -> bool:
        """Whether news about `node_id` is believed from whoever it comes from now: anything
        from a member (or this node itself); from a stranger, only what it says of itself (which
        makes it a member: it announced itself) or of us."""
        return self._sender in self._members or node_id == self._sender or node_id == self.id

    def _refute(self, accused_incarnation: int) -> None:
        """SWIM 4.2: out-number the accusation and gossip Alive. Lifeguard: having to refute
        hints that we are the slow one, so raise the health score."""
        self._self.incarnation = max(self._self.incarnation, accused_incarnation) + 1
        self.awareness.apply(1)
        self._membership_q.push(self.id, Alive(self.id, self.addr, self._self.incarnation))

    def _on_alive(self, msg: Alive, now: float, src: str = "") -> None:
        member = self._members.get(msg.node)
        if msg.node == self.id:
            # About us: a different (or newer) story than ours is refuted, unless leaving.
            if not self._leaving and (
                msg.incarnation > self.incarnation or (msg.incarnation == self.incarnation and msg.addr != self.addr)
            ):
                self._refute(msg.incarnation)
            return
        if not self._may_learn(msg.node):
            return
        if msg.node == self._sender and msg.addr != self._from:
            return  # a node announces the address it signs its packets with, no other
        if member is None:
            if len(self._members) >= self.config.max_members:
                return
            member = Member(msg.node, msg.addr, msg.incarnation, _ALIVE, now)
            self._members[msg.node] = member
            # Insert at a random offset so a newcomer is probed soon by some and late by others
            # (memberlist aliveNode), keeping the detection bound low on average.
            self._order.append(msg.node)
            pos = int(self._rng.random() * len(self._order))
            self._order[pos], self._order[-1] = self._order[-1], self._order[pos]
            self._membership_q.push(msg.node, msg)
            self._emit(member, None, _ALIVE)
            return
        if msg.incarnation <= member.incarnation:
            return
        moved = msg.addr != member.addr
        if moved and msg.node != self._sender:
            return  # only the member itself moves its address
        self._suspicions.pop(msg.node, None)
        self._membership_q.push(msg.node, msg)
        member.incarnation = msg.incarnation
        if moved:
            member.addr = msg.addr
            self._addr_checks.pop(msg.node, None)
        if member.state is not _ALIVE:
            old, member.state, member.state_change = member.state, _ALIVE, now
            self._emit(member, old, _ALIVE)
        elif moved:
            self._emit(member, _ALIVE, _ALIVE)  # same state, new address: the transport must know

    def _on_suspect(self, msg: Suspect, now: float, src: str = "") -> None:
        member = self._members.get(msg.node)
        if member is None or msg.incarnation < member.incarnation or not self._may_learn(msg.node):
            return
        suspicion = self._suspicions.get(msg.node)
        if suspicion is not None:
            # Lifeguard: a new accuser is an independent confirmation; re-gossip it so others
            # can count it too, and pull the deadline in.
            if suspicion.confirm(msg.accuser):
                self._membership_q.push(msg.node, msg)
                self._schedule(suspicion.deadline, _SUSPICION, msg.node)
            return
        if member.state is not _ALIVE:
            return
        if member is self._self:
            self._refute(msg.incarnation)
            return
        self._membership_q.push(msg.node, msg)
        member.incarnation = msg.incarnation
        member.state, member.state_change = _SUSPECT, now
        self._emit(member, _ALIVE, _SUSPECT)
        cfg = self.config
        n = len(self._members)
        # Expect SuspicionMult - 2 confirmations (the nominal timeout then lands two probe
        # periods early), none when the cluster is too small to provide them (memberlist).
        k = cfg.suspicion_mult - 2 if n - 2 >= cfg.suspicion_mult - 2 else 0
        min_timeout = suspicion_timeout(cfg.suspicion_mult, n, cfg.probe_interval)
        suspicion = Suspicion(msg.accuser, k, min_timeout, cfg.suspicion_max_timeout_mult * min_timeout, now)
        self._suspicions[msg.node] = suspicion
        self._schedule(suspicion.deadline, _SUSPICION, msg.node)

    def _on_dead(self, msg: Dead, now: float, src: str = "") -> None:
        member = self._members.get(msg.node)
        if member is None or msg.incarnation < member.incarnation or not self._may_learn(msg.node):
            return
        self._suspicions.pop(msg.node, None)
        if member.state in _GONE:
            return
        if member is self._self and not self._leaving:
            self._refute(msg.incarnation)
            return
        self._membership_q.push(msg.node, msg)
        member.incarnation = msg.incarnation
        old = member.state
        member.state = _LEFT if msg.accuser == msg.node else _DEAD
        member.state_change = now
        self._emit(member, old, member.state)

    # ------------------------------------------------------------------ dissemination

    def _gossip(self, now: float) -> None:
        """One gossip round: a packet of queued broadcasts to each of `gossip_nodes` random
        alive/suspect members, or dead ones within GossipToTheDeadTime (memberlist gossip())."""
        cfg = self.config

        def reachable(m: Member) -> bool:
            return (
                m.state is _ALIVE
                or m.state is _SUSPECT
                or (m.state is _DEAD and now - m.state_change <= cfg.gossip_to_the_dead_time)
            )

        # Lifeguard-aware fan-out: a node starved within its last (health-scaled) probe period
        # sends gossip_nodes / (score + 1) packets per round on average, as its probes slow
        # down by score + 1, so an overloaded cluster sheds its own gossip load instead of
        # feeding it (issue 21's metastable collapse). A node that is merely unsure (missing
        # nacks in a partition, loss) keeps the full fan-out: its news must still spread.
        starved = now - self._starved_at <= self.awareness.scale(cfg.probe_interval)
        share = cfg.gossip_nodes / (self.awareness.score + 1) if starved else cfg.gossip_nodes
        self._gossip_credit = min(self._gossip_credit + share, cfg.gossip_nodes)
        fanout = int(self._gossip_credit)
        if fanout == 0:
            return
        self._gossip_credit -= fanout
        for member in self._random_members(fanout, reachable):
            msgs = self._take_broadcasts(cfg.packet_bytes)
            if not msgs:
                return
            self._sends.append((member.addr, msgs))

    def _on_user(self, msg: UserMsg, now: float, src: str) -> None:
        if self._delegate.notify_user(msg.key, msg.payload):
            self._user_q.push(msg.key, msg)

    # ------------------------------------------------------------------ push/pull, reconnect

    def _push_pull_period(self) -> float:
        return push_pull_scale(self.config.push_pull_interval, len(self._members))

    def _send_push_pull(self, addr: str, join: bool, reply: bool) -> None:
        # State is a str enum, so it encodes as "alive" etc.
        members = tuple((m.id, m.addr, m.incarnation, m.state) for m in self._members.values())
        self._sends.append((addr, [PushPull(join, reply, members, self._delegate.local_state(join))]))

    def _push_pull_round(self, now: float) -> None:
        """Full state exchange with one random alive member; while none is known (joining, or
        cut off), retry the seeds every probe interval instead."""
        if self._leaving:
            return
        peers = self._random_members(1, lambda m: m.state is _ALIVE)
        if peers:
            self._send_push_pull(peers[0].addr, join=False, reply=False)
        elif self._seeds:
            for seed in self._seeds:
                self._send_push_pull(seed, join=True, reply=False)
            self._schedule(now + self.config.probe_interval, _PUSH_PULL)
            return
        self._schedule(now + self._push_pull_period(), _PUSH_PULL)

    def _on_push_pull(self, msg: PushPull, now: float, src: str) -> None:
        """Merge a peer's full state (memberlist mergeState): alive as alive, left as left, and
        dead or suspect as *suspect*, so we probe it ourselves before believing it dead. Then
        answer a request (memberlist answers first): the answer carries any refutation of what
        the request said about us, which is how a member that moved proves its new address."""
        entries = msg.members[: self.config.max_members]
        # The sender's own entry first: a stranger (a seed answering our join, a node joining
        # through us) announces itself, and then speaks for the others as a member.
        for node_id, addr, incarnation, state in sorted(entries, key=lambda e: e[0] != self._sender):
            if state == _ALIVE:
                self._on_alive(Alive(node_id, addr, incarnation), now)
            elif state == _LEFT:
                self._on_dead(Dead(node_id, incarnation, node_id), now)
            else:
                self._on_suspect(Suspect(node_id, incarnation, self.id), now)
        if not msg.reply:
            self._send_push_pull(src, msg.join, reply=True)
        self._delegate.merge_remote_state(msg.user_state, msg.join)

    def _confirm_addr(self, member: Member, addr: str, now: float) -> None:
        """`member` sends from `addr`, not from the address we hold: ask it there for its own
        account (module docstring), at most once per probe interval and address (the request or
        the answer may be lost), so a member that moved is found within one of its probe rounds."""
        asked = self._addr_checks.get(member.id)
        if self._leaving or (asked is not None and asked[0] == addr and now - asked[1] < self.config.probe_interval):
            return
        self._addr_checks[member.id] = (addr, now)
        self._send_push_pull(addr, join=False, reply=False)

    def _reconnect_round(self, now: float) -> None:
        """Serf's reconnect: push/pull with one random dead member, with probability
        dead/alive so the cluster as a whole tries each dead member about once per interval.
        This is what merges the two sides of a healed partition."""
        if self._leaving:
            return
        self._schedule(now + self.config.reconnect_interval, _RECONNECT)
        dead = [m for m in self._others() if m.state is _DEAD]
        if not dead:
            return
        alive = sum(1 for m in self._others() if m.state is _ALIVE) + 1
        if self._rng.random() <= len(dead) / alive:
            target = dead[int(self._rng.random() * len(dead))]
            self._send_push_pull(target.addr, join=False, reply=False)
