"""Registry anti-entropy between gateway nodes, riding on the SWIM layer.

Signed agent records are self-certifying, so the registry is a per-DID last-writer-wins map
ordered by ``seq`` (tombstones included): applying records in any order, any number of times,
converges. Two mechanisms keep every node's registry equal (DESIGN.md, reference 1.7):

* **rumours** for fresh writes: every record or tombstone written to this node's store (a
  direct registration, a worker's lease renewal, or a record accepted from gossip) is
  broadcast as a SWIM user message keyed by its DID, piggybacked with the membership updates
  and retransmitted a bounded number of times. A receiver relays it onward only after its own
  registry has accepted it (so news spreads infection-style and junk stops at the first hop).
* **digests** for repair: SWIM's push/pull (at join, then every push-pull interval with one
  random member, and with dead members on reconnect, which heals partitions) carries this
  node's digest ``{did: seq}``. Each side compares the other's digest with its own view and
  sends, in ``records`` envelopes, only the live records and tombstones the other lacks or
  holds an older seq of. Nothing is pulled: both sides of a push/pull push.

Every record keeps its agent's signature end to end. A receiver submits what it gets to its
registry as ``relayed``: the signature, network, lease and seq rules all apply, so a relaying
node can neither forge nor alter a record (it is refused, counted under ``rejected.<reason>``
and not relayed further). Expired records are never sent and expire on every node at the time
their agent signed.

Operators' revocations (``schemas.agent_record.Revocation``, signed by the node that issued
them) travel the same two ways, keyed ``revoked:<did>`` in rumours and digests; a receiver's
registry believes one only from a node it trusts (``Registry.revokers``).

Before that, a relayed record (or tombstone) passes this node's admission, as a direct write
does: ``admit(did, via_did)`` (given by the gateway) names the reason a record of ``did`` relayed
by the node whose key is ``via_did`` is refused, or None. A refused one is dropped and counted
under ``rejected.<reason>``; it is not stored, so it is not relayed on either.

With each record travels an *origin* hint: the member through which the record entered the
federation (the node whose store received it other than from gossip). Routing uses the
record's signed ``home_node`` when it names a member, and the hint otherwise (a worker that
registered through a gateway's HTTP API may not know that gateway's node id).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from registry.gossip.swim import Delegate
from registry.records import RecordRejected
from registry.service import REVOKED, TOMBSTONE_RETENTION_S, Registry, parse_signed
from schemas.agent_record import Revocation

if TYPE_CHECKING:
    from registry.gossip.envelope import Envelope
    from registry.gossip.transport import HttpGossip

__all__ = ["RegistrySync"]

log = logging.getLogger("interlace.gossip.sync")

BATCH = 256  # records per transfer envelope
MAX_ENTRIES = 1024  # records accepted in one envelope
MAX_QUEUE = 20_000  # records waiting to be applied; beyond, drop (push/pull repairs)


class RegistrySync(Delegate):
    """The registry's side of gossip (see the module docstring). Build it, pass it as the
    SwimNode's delegate, then ``attach`` the transport and ``start``."""

    def __init__(self, registry: Registry, node_id: str, admit: Callable[[str, str], str | None] | None = None) -> None:
        self.registry, self.node_id, self.admit = registry, node_id, admit
        self.origin: dict[str, str] = {}  # did -> member id the record entered through
        self.stats: Counter[str] = Counter()
        self._tombstones: dict[str, dict[str, Any]] = {}  # did -> signed tombstone body
        self._expect: dict[str, int] = {}  # did -> seq being applied from gossip
        self._queue: asyncio.Queue[tuple[Any, str, str]] = asyncio.Queue(MAX_QUEUE)  # entry, via node, its DID
        self._gossip: HttpGossip | None = None
        self._jobs: list[asyncio.Task] = []
        self._stopped = False

    def attach(self, gossip: HttpGossip) -> None:
        self._gossip = gossip
        gossip.on_kind("records", self._on_records)

    async def start(self) -> None:
        entries, cursor = await self.registry.store.load()
        for raw in entries:
            self._on_entry(raw, broadcast=False)
        self._jobs = [
            asyncio.create_task(self._follow(cursor), name="gossip-registry-feed"),
            asyncio.create_task(self._apply(), name="gossip-registry-apply"),
        ]

    async def stop(self) -> None:
        self._stopped = True
        for job in self._jobs:
            job.cancel()
        await asyncio.gather(*self._jobs, return_exceptions=True)

    # ---- this node's writes -> rumours -------------------------------------------------------

    async def _follow(self, cursor: str) -> None:
        backoff, last_prune = 0.1, time.monotonic()
        while not self._stopped:
            try:
                entries, cursor = await self.registry.store.changes(cursor, 1_000)
                backoff = 0.1
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # store down: anti-entropy repairs what we miss
                log.warning("registry feed interrupted", extra={"error": exc.__class__.__name__})
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            for raw in entries:
                self._on_entry(raw, broadcast=True)
            if time.monotonic() - last_prune > 30:
                last_prune = time.monotonic()
                self._prune()

    def _on_entry(self, raw: str, *, broadcast: bool) -> None:
        try:
            entry = json.loads(raw)
            kind, body, seq = entry["kind"], entry["body"], entry["seq"]
            did = body["did"]
        except (ValueError, KeyError, TypeError):
            return
        if kind == "revocation":  # no origin: it routes nothing
            if broadcast and self._gossip is not None:
                self._gossip.node.broadcast(REVOKED + did, {"record": body, "origin": self.node_id})
                self._gossip.wake()
                self.stats["broadcast"] += 1
            return
        if self._expect.get(did) == seq:
            del self._expect[did]  # applied from gossip: the origin hint came with it
        else:
            self.origin[did] = self.node_id  # written here (or by a node sharing our store)
        if kind == "tombstone":
            self._tombstones[did] = body
        else:
            self._tombstones.pop(did, None)
            if entry.get("expires_at", 0) <= time.time():
                return
        if broadcast and self._gossip is not None:
            self._gossip.node.broadcast(did, {"record": body, "origin": self.origin[did]})
            self._gossip.wake()
            self.stats["broadcast"] += 1

    def _prune(self) -> None:
        known = self.registry.digest()
        for did in [d for d in self.origin if d not in known]:
            del self.origin[did]
        horizon = time.time() - TOMBSTONE_RETENTION_S
        for did in [d for d, t in self._tombstones.items() if t.get("issued_at", 0) < horizon]:
            del self._tombstones[did]

    # ---- SWIM delegate hooks ----------------------------------------------------------------

    def notify_user(self, key: str, payload: Any) -> bool:
        # Never relayed as received: the record is re-broadcast from our store feed once our
        # registry accepted it, so a forged or altered record stops here.
        self._enqueue([payload], *self._via())
        return False

    def local_state(self, join: bool) -> Any:
        return {"digest": self.registry.digest()}

    def merge_remote_state(self, state: Any, join: bool) -> None:
        sender = self._gossip.current_sender if self._gossip is not None else None
        digest = state.get("digest") if isinstance(state, dict) else None
        if sender is None or not isinstance(digest, dict):
            return
        missing = []
        for record in self.registry.live():
            theirs = digest.get(record.did)
            if type(theirs) is not int or theirs < record.seq:
                missing.append({"record": record.dump(), "origin": self.origin.get(record.did, self.node_id)})
        for did, body in self._tombstones.items():
            theirs = digest.get(did)
            if type(theirs) is not int or theirs < body["seq"]:
                missing.append({"record": body, "origin": self.origin.get(did, self.node_id)})
        for revocation in self.registry.revocations():
            theirs = digest.get(REVOKED + revocation.did)
            if type(theirs) is not int or theirs < revocation.seq:
                missing.append({"record": revocation.dump(), "origin": self.node_id})
        for i in range(0, len(missing), BATCH):
            self._gossip.send(sender.addr, "records", {"entries": missing[i : i + BATCH]})
        self.stats["sent_records"] += len(missing)

    # ---- records from peers -----------------------------------------------------------------

    def _via(self) -> tuple[str, str]:
        """The member id and DID of the node whose packet is being handled."""
        sender = self._gossip.current_sender if self._gossip is not None else None
        return (sender.node, sender.sender) if sender is not None else ("?", "")

    def _on_records(self, env: Envelope) -> None:
        entries = env.payload.get("entries") if isinstance(env.payload, dict) else None
        if not isinstance(entries, list) or len(entries) > MAX_ENTRIES:
            self.stats["rejected.malformed"] += 1
            return
        self._enqueue(entries, env.node, env.sender)

    def _enqueue(self, entries: list[Any], via: str, via_did: str) -> None:
        for entry in entries:
            try:
                self._queue.put_nowait((entry, via, via_did))
            except asyncio.QueueFull:
                self.stats["dropped.backlog"] += 1
                return

    async def _apply(self) -> None:
        while not self._stopped:
            entry, via, via_did = await self._queue.get()
            try:
                await self._ingest(entry, via, via_did)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("could not apply a relayed record")

    async def _ingest(self, entry: Any, via: str, via_did: str) -> None:
        body = entry.get("record") if isinstance(entry, dict) else None
        origin = entry.get("origin") if isinstance(entry, dict) else None
        if not isinstance(origin, str) or not 0 < len(origin) <= 256:
            origin = via
        try:
            model = parse_signed(body)
        except ValidationError:
            self.stats["rejected.malformed"] += 1
            log.warning("malformed record from a peer ignored", extra={"peer": via})
            return
        if isinstance(model, Revocation):
            await self._ingest_revocation(model, via)
            return
        did = model.did
        refused = self.admit(did, via_did) if self.admit is not None else None
        if refused is not None:
            self.stats[f"rejected.{refused}"] += 1
            # debug only: anti-entropy offers the same records again at every push/pull
            log.debug("relayed record refused by admission", extra={"did": did, "reason": refused, "peer": via})
            return
        stored = self.registry.seq_of(did)
        if stored is not None and model.seq <= stored:
            self.stats["duplicate"] += 1
            return
        previous = self.origin.get(did)
        self.origin[did], self._expect[did] = origin, model.seq
        try:
            await self.registry.submit(model, relayed=True)
        except Exception as exc:
            if self._expect.get(did) == model.seq:
                del self._expect[did]
            if previous is None:
                self.origin.pop(did, None)
            else:
                self.origin[did] = previous
            if isinstance(exc, RecordRejected) and exc.reason_code == "stale_seq":
                self.stats["duplicate"] += 1
            elif isinstance(exc, RecordRejected):
                self.stats[f"rejected.{exc.reason_code}"] += 1
                log.warning("relayed record refused", extra={"did": did, "reason": exc.reason_code, "peer": via})
            else:
                raise
            return
        self.stats["accepted"] += 1

    async def _ingest_revocation(self, model: Revocation, via: str) -> None:
        try:
            await self.registry.submit(model, relayed=True)
        except RecordRejected as exc:
            if exc.reason_code == "stale_seq":
                self.stats["duplicate"] += 1
                return
            self.stats[f"rejected.{exc.reason_code}"] += 1
            log.warning("relayed revocation refused", extra={"did": model.did, "reason": exc.reason_code, "peer": via})
            return
        self.stats["accepted"] += 1
