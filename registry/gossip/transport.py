"""The real transport of the SWIM core: signed envelopes POSTed over HTTP.

`HttpGossip` owns one `SwimNode` and drives it on the asyncio loop: it calls ``tick`` at the
node's ``next_deadline()``, hands it every authenticated packet that arrives
(``deliver``, called by the gateway's ``POST /gossip/packet``), and sends what it outputs, each
packet in its own signed envelope (``registry.gossip.envelope``) POSTed to
``{peer address}/gossip/packet`` with one pooled httpx client.

Sends are fire-and-forget, like the UDP datagrams SWIM was designed for: a lost or refused
packet is just a missed ack, which the protocol is built to survive. Sends in flight are
bounded; past the bound a packet is dropped and counted. No failure of a send (refused, timed
out, or the client torn down under it at shutdown) escapes: each is counted as `send_failed`.

Overload (issue 21): an authenticated SWIM packet is not handled in the HTTP request that
brought it but queued in a bounded inbox, which the driving task drains before it fires the
node's timers, answers (pings, acks, nacks) before the rest, and at most `max_batch` packets at
a time, so timers are never starved either. So an ack that arrived is read before the probe it
answers times out, however late the loop runs. When the inbox is full a packet is refused with
`overloaded` before its signature is checked (the costliest step), like a full UDP buffer.

Other envelope kinds (registry record transfers) share the endpoint, the signature, the trust
list and the counters: a layer above registers a handler per kind (`on_kind`) and sends with
`send`.

A member's identity is its node DID. The first envelope accepted from a member binds its member
id to the DID that signed it (`dids`), for as long as the member is in the table: an envelope
that claims a member id (or this node's) under another DID is refused (`impersonation`), so a
packet's `sender`, which the SWIM core believes about addresses, is the member itself. And this
node never POSTs to an address that nobody vouched for: a send goes only to a seed (the join),
to a member's address in the member table, or back to the address the sender of the packet
being handled signed; anything else is dropped and counted (`dropped.unannounced`).

A test-only fault switch (`block`) drops every packet to and from the named peer addresses
(or from everyone, ``"*"``), in both directions, to simulate a network partition.

Profiles (``PROFILES``) are SwimConfigs with the packet budget raised for HTTP (no UDP datagram
limit, so whole agent records can ride piggybacked): ``lan`` is memberlist's DefaultLANConfig,
``local`` its DefaultLocalConfig (loopback), ``fast`` a test profile about four times faster
than LAN with frequent push/pull and reconnect so joins, partitions and heals settle in
seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import Any

import httpx

from registry.gossip.envelope import Envelope, EnvelopeRejected, ReplayCache, open_envelope, seal
from registry.gossip.messages import Ack, Message, Nack, Ping, WireError, decode_packet, encode_packet
from registry.gossip.swim import MemberEvent, Output, SwimConfig, SwimNode, suspicion_timeout
from registry.identity import Identity

__all__ = ["PROFILES", "HttpGossip", "detection_bound", "profile"]

log = logging.getLogger("interlace.gossip")

PATH = "/gossip/packet"

_ANSWERS = (Ping, Ack, Nack)  # packets answered (or awaited) within a probe timeout

_HTTP = dict(packet_bytes=256 * 1024, packet_reserve=8 * 1024)
PROFILES: dict[str, SwimConfig] = {
    "lan": replace(SwimConfig.lan(), **_HTTP),
    "local": replace(
        SwimConfig.lan(),
        probe_timeout=0.2,
        gossip_interval=0.1,
        indirect_checks=1,
        retransmit_mult=2,
        suspicion_mult=3,
        push_pull_interval=15.0,
        **_HTTP,
    ),
    "fast": replace(
        SwimConfig.lan(),
        probe_interval=0.25,
        probe_timeout=0.15,
        gossip_interval=0.05,
        push_pull_interval=1.0,
        reconnect_interval=0.5,
        gossip_to_the_dead_time=5.0,
        reap_timeout=300.0,
        **_HTTP,
    ),
}


def profile(name: str) -> SwimConfig:
    try:
        return PROFILES[name]
    except KeyError:
        raise ValueError(f"gossip profile must be one of {', '.join(PROFILES)}, not {name!r}") from None


def detection_bound(config: SwimConfig, n: int) -> float:
    """Seconds within which every live member declares a crashed member dead, with healthy
    probers: one probe round over the other members, the longest (lone accuser) suspicion
    timeout, and one more probe period for the news to travel. Lifeguard's health multiplier
    can stretch the probe periods of overloaded nodes by up to ``awareness_max_multiplier``."""
    rounds = max(1, n - 1) * config.probe_interval
    longest = config.suspicion_max_timeout_mult * suspicion_timeout(config.suspicion_mult, n, config.probe_interval)
    return rounds + longest + config.probe_interval


class HttpGossip:
    """One node's SWIM over HTTP (see the module docstring)."""

    def __init__(
        self,
        node: SwimNode,
        identity: Identity,
        network: str,
        *,
        client: httpx.AsyncClient | None,
        max_age_ms: int,
        trusted: frozenset[str] | None = None,
        on_events: Callable[[list[MemberEvent]], None] | None = None,
        max_inflight: int = 256,
        send_timeout_s: float = 2.0,
        max_inbox: int = 512,
        max_batch: int = 64,
    ) -> None:
        self.node, self.identity, self.network = node, identity, network
        self.client, self.max_age_ms, self.trusted = client, max_age_ms, trusted
        self.on_events = on_events
        self.max_inflight, self.send_timeout_s = max_inflight, send_timeout_s
        self.max_inbox, self.max_batch = max_inbox, max_batch
        # Authenticated packets waiting for the node: answers first (module docstring).
        self._answers: deque[tuple[Envelope, list[Message]]] = deque()
        self._others: deque[tuple[Envelope, list[Message]]] = deque()
        self.stats: Counter[str] = Counter()
        self.dids: dict[str, str] = {}  # member id -> the DID bound to it (its packets' signer)
        self.current_sender: Envelope | None = None  # set while a packet is handled
        self._handlers: dict[str, Callable[[Envelope], None]] = {}
        self._replay = ReplayCache()
        self._blocked: set[str] = set()
        self._seeds: frozenset[str] = frozenset()
        self._member_addrs: set[str] | None = None  # cache, dropped at each membership event
        self._inflight: set[asyncio.Task] = set()
        self._wake = asyncio.Event()
        self._loop: asyncio.Task | None = None
        self._stopped = False

    # ---- lifecycle --------------------------------------------------------------------------

    def start(self, seeds: Iterable[str]) -> None:
        seeds = list(seeds)
        self._seeds = frozenset(seeds)
        self._dispatch(self.node.start(time.monotonic(), seeds))
        self._loop = asyncio.create_task(self._drive(), name="gossip")

    async def stop(self, leave_timeout_s: float) -> None:
        """Leave gracefully (bounded), then stop sending."""
        if self._loop is None:
            return
        try:
            self._dispatch(self.node.leave(time.monotonic()))
            deadline = time.monotonic() + leave_timeout_s
            while not self.node.leave_complete and time.monotonic() < deadline:
                self._wake.set()
                await asyncio.sleep(self.node.config.gossip_interval / 2)
            if self._inflight:
                await asyncio.wait(list(self._inflight), timeout=max(0.1, deadline - time.monotonic()))
        finally:
            self._stopped = True
            self._loop.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop
            tasks = list(self._inflight)
            for task in tasks:
                task.cancel()
            # Wait for them to end, so none outlives the HTTP client the caller closes next.
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _drive(self) -> None:
        node = self.node
        while not self._stopped:
            try:
                self._drain()
                self._dispatch(node.tick(time.monotonic()))
            except Exception:  # a bug must not stop membership; it is logged loudly
                log.exception("gossip tick failed")
            delay = node.next_deadline() - time.monotonic()
            self._wake.clear()
            if self._answers or self._others:
                await asyncio.sleep(0)  # more queued than one batch: let the loop breathe
            elif delay > 0:
                try:
                    async with asyncio.timeout(min(delay, 1.0)):
                        await self._wake.wait()
                except TimeoutError:
                    pass
            else:
                await asyncio.sleep(0)

    def wake(self) -> None:
        """Call after queueing a broadcast, so the next gossip round is scheduled."""
        self._wake.set()

    # ---- receiving --------------------------------------------------------------------------

    def on_kind(self, kind: str, handler: Callable[[Envelope], None]) -> None:
        self._handlers[kind] = handler

    def deliver(self, data: Any) -> Envelope:
        """Authenticate one received envelope and queue it (SWIM) or handle it (other kinds);
        raise EnvelopeRejected."""
        if len(self._answers) + len(self._others) >= self.max_inbox:
            self.stats["rejected.overloaded"] += 1
            raise EnvelopeRejected("overloaded", "this node's gossip inbox is full; the packet is dropped")
        try:
            env = open_envelope(
                data,
                network=self.network,
                now_ms=int(time.time() * 1000),
                max_age_ms=self.max_age_ms,
                trusted=self.trusted,
                replay=self._replay,
            )
        except EnvelopeRejected as exc:
            self.stats[f"rejected.{exc.code}"] += 1
            raise
        if self._is_blocked(env.addr):
            self.stats["dropped.fault"] += 1
            return env
        if env.kind == "swim":
            try:
                packet = decode_packet(env.payload)
            except WireError as exc:
                self.stats["rejected.malformed"] += 1
                raise EnvelopeRejected("malformed", str(exc)) from None
        self._check_identity(env)
        self.stats["received"] += 1
        if env.kind == "swim":
            (self._answers if packet and isinstance(packet[0], _ANSWERS) else self._others).append((env, packet))
            self._wake.set()
            return env
        self.current_sender = env
        try:
            handler = self._handlers.get(env.kind)
            if handler is not None:
                handler(env)
        finally:
            self.current_sender = None
        self._bind(env)
        return env

    def _drain(self) -> None:
        """Hand up to `max_batch` queued packets to the node, answers first."""
        for _ in range(self.max_batch):
            queue = self._answers or self._others
            if not queue:
                return
            env, packet = queue.popleft()
            if env.node == self.node.id or self._check_identity(env, count=False):
                continue  # a member's id was bound to another DID while this one waited
            self.current_sender = env
            try:
                self._dispatch(self.node.receive(time.monotonic(), env.addr, packet, sender=env.node))
            finally:
                self.current_sender = None
            self._bind(env)

    def _bind(self, env: Envelope) -> None:
        if env.node in self.node.members:
            self.dids.setdefault(env.node, env.sender)

    def _check_identity(self, env: Envelope, count: bool = True) -> bool:
        """Refuse an envelope that claims this node's id, or a member's bound to another DID
        (raise when `count`; else return True for such an envelope)."""
        bound = self.identity.did if env.node == self.node.id else self.dids.get(env.node)
        if bound is not None and bound != env.sender:
            self.stats["rejected.impersonation"] += 1
            if not count:
                return True
            raise EnvelopeRejected("impersonation", f"member {env.node!r} is another node (its DID is {bound})")
        return False

    # ---- sending ----------------------------------------------------------------------------

    def _dispatch(self, out: Output) -> None:
        if out.events:
            self._member_addrs = None  # members came, went or moved
            for event in out.events:
                if event.new is None:  # reaped: its id may be someone else's one day
                    self.dids.pop(event.member, None)
        for addr, packet in out.sends:
            self.send(addr, "swim", encode_packet(packet))
        if out.events and self.on_events is not None:
            self.on_events(out.events)
        if out.sends or out.events:
            self._wake.set()

    def send(self, addr: str, kind: str, payload: Any) -> None:
        """Sign and POST one envelope to ``addr`` in the background (dropped when blocked or
        when too many sends are in flight)."""
        if self._stopped:
            return
        if self._is_blocked(addr):
            self.stats["dropped.fault"] += 1
            return
        if not self._announced(addr):
            self.stats["dropped.unannounced"] += 1
            log.warning("gossip send to an address no member announced dropped", extra={"peer": addr})
            return
        if len(self._inflight) >= self.max_inflight:
            self.stats["dropped.backlog"] += 1
            return
        envelope = seal(
            self.identity,
            network=self.network,
            node=self.node.id,
            addr=self.node.addr,
            kind=kind,
            payload=payload,
            sent_at=int(time.time() * 1000),
        )
        body = json.dumps(envelope, separators=(",", ":")).encode()
        task = asyncio.create_task(self._post(addr, body))
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)

    def _announced(self, addr: str) -> bool:
        """Whether a member vouched for ``addr`` (module docstring): a seed, the signed address
        of the packet being answered, or a member's address in the member table."""
        if addr in self._seeds or (self.current_sender is not None and addr == self.current_sender.addr):
            return True
        if self._member_addrs is None:
            self._member_addrs = {m.addr for m in self.node.members.values()}
        return addr in self._member_addrs

    async def _post(self, addr: str, body: bytes) -> None:
        try:
            resp = await self.client.post(
                addr.rstrip("/") + PATH,
                content=body,
                timeout=self.send_timeout_s,
                headers={"content-type": "application/json"},
            )
        except (httpx.HTTPError, OSError):
            self.stats["send_failed"] += 1
            return
        except Exception as exc:  # e.g. the client torn down under it at shutdown
            # Fire-and-forget: nobody awaits this task, so nothing may escape it (it would be
            # "Task exception was never retrieved"). A lost packet is what SWIM survives.
            self.stats["send_failed"] += 1
            log.debug("gossip send failed", extra={"peer": addr, "error": repr(exc)})
            return
        self.stats["sent"] += 1
        if resp.status_code >= 400:
            self.stats["refused"] += 1
            log.debug(
                "gossip packet refused", extra={"peer": addr, "status": resp.status_code, "body": resp.text[:200]}
            )

    # ---- test-only fault switch -------------------------------------------------------------

    def block(self, addrs: Iterable[str]) -> None:
        """Drop packets to and from these addresses (``"*"``: everyone) until unblocked."""
        self._blocked = {a.rstrip("/") for a in addrs}

    def _is_blocked(self, addr: str) -> bool:
        return bool(self._blocked) and ("*" in self._blocked or addr.rstrip("/") in self._blocked)

    @property
    def blocked(self) -> list[str]:
        return sorted(self._blocked)
