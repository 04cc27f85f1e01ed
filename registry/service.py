"""The agent registry: acceptance rules for signed records, and each node's live view of them.

A record is accepted only if its signature verifies (once: verified records are cached by
digest), its ``network`` is ours, its ``issued_at`` is not in the future beyond the clock-skew
window (and, when submitted directly rather than relayed, not older than that window), it has
not expired, and its ``seq`` is higher than the stored one. A signed tombstone with a higher seq
deregisters. Every node keeps all live records in memory, following the store's change feed, so
lookups and routing never touch the store.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from pydantic import ValidationError

from registry.records import RecordRejected, check_fresh, verify_signature
from registry.store import RecordStore, entry_json
from schemas.agent_record import AgentRecord, Tombstone, canonical_bytes

log = logging.getLogger("interlace.registry")

PROTOCOLS = ("mcp", "a2a", "acp", "anp", "bus")
TOMBSTONE_RETENTION_S = 24 * 3600


class Registry:
    def __init__(
        self,
        store: RecordStore,
        network: str,
        *,
        skew_s: int = 300,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store, self.network, self.skew_s, self.clock = store, network, skew_s, clock
        self._listeners: list[Callable[[str, AgentRecord | None], None]] = []
        self._records: dict[str, AgentRecord] = {}
        self._tombstones: dict[str, Tombstone] = {}
        self._verified: OrderedDict[bytes, None] = OrderedDict()
        self._follow: asyncio.Task | None = None
        self._stopped = False
        self.ready = asyncio.Event()

    # ---- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        self._follow = asyncio.create_task(self._follow_store(), name="registry-feed")
        await asyncio.wait_for(self.ready.wait(), 30)

    async def stop(self) -> None:
        # A flag as well as cancel: redis-py may turn a cancelled blocking read into an error.
        self._stopped = True
        if self._follow is not None:
            self._follow.cancel()
            await asyncio.gather(self._follow, return_exceptions=True)

    async def _follow_store(self) -> None:
        backoff, cursor = 0.1, None
        while not self._stopped:
            try:
                if cursor is None:
                    entries, cursor = await self.store.load()
                    self.ready.set()
                else:
                    entries, cursor = await self.store.changes(cursor, 1_000)
                for raw in entries:
                    self._apply_entry(raw)
                self._expire()
                backoff = 0.1
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # store down: keep serving the view we have
                if self._stopped:
                    return
                log.warning("registry feed interrupted", extra={"error": exc.__class__.__name__})
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    # ---- writes -----------------------------------------------------------------------------

    async def submit(self, model: AgentRecord | Tombstone, *, relayed: bool = False) -> str:
        """Accept a signed record or tombstone; returns 'created', 'updated' or 'deleted'.

        ``relayed`` records (from gossip) may be older than the skew window: their freshness is
        their seq and lease, not the age of the signature.
        """
        now = int(self.clock())
        self.verify(model)
        if isinstance(model, AgentRecord):
            check_fresh(model, self.network, now, self.skew_s, max_age_s=None if relayed else self.skew_s)
        else:
            if model.network != self.network:
                raise RecordRejected(
                    "wrong_network", f"tombstone is for network {model.network!r}, not {self.network!r}"
                )
            if model.issued_at > now + self.skew_s:
                raise RecordRejected("issued_in_future", "tombstone issued_at is beyond the clock-skew window")
        stored = self.seq_of(model.did)
        if stored is not None and model.seq <= stored:
            raise RecordRejected(
                "stale_seq", f"seq {model.seq} is not higher than the stored {stored} (replay or rollback)"
            )
        if isinstance(model, AgentRecord):
            kind, expires = "record", model.expires_at
        else:
            kind, expires = "tombstone", now + TOMBSTONE_RETENTION_S
        entry = entry_json(kind, model.seq, expires, model.dump())
        existed = model.did in self._records  # before the write: the feed may apply it meanwhile
        if not await self.store.put_if_newer(model.did, model.seq, entry):
            raise RecordRejected("stale_seq", f"seq {model.seq} is not higher than the stored one (replay or rollback)")
        self._apply_entry(entry)
        if kind == "tombstone":
            return "deleted"
        return "updated" if existed else "created"

    def verify(self, model: AgentRecord | Tombstone) -> None:
        """Verify the signature (RecordRejected if it does not), once per distinct signed
        content (gossip re-delivers a lot)."""
        digest = hashlib.sha256(canonical_bytes(model) + (model.signature or "").encode()).digest()
        if digest in self._verified:
            self._verified.move_to_end(digest)
            return
        verify_signature(model)
        self._verified[digest] = None
        if len(self._verified) > 100_000:
            self._verified.popitem(last=False)

    def _apply_entry(self, raw: str) -> None:
        try:
            entry = json.loads(raw)
            if entry["kind"] == "record":
                model: AgentRecord | Tombstone = AgentRecord.model_validate(entry["body"])
            else:
                model = Tombstone.model_validate(entry["body"])
        except (ValueError, KeyError, ValidationError):
            log.warning("unreadable registry entry skipped")
            return
        stored = self.seq_of(model.did)
        if stored is not None and model.seq <= stored:
            return
        if isinstance(model, AgentRecord):
            self._tombstones.pop(model.did, None)
            self._records[model.did] = model
            self._notify(model.did, model if self._live(model) else None)
        else:
            self._records.pop(model.did, None)
            self._tombstones[model.did] = model
            self._notify(model.did, None)

    def subscribe(self, listener: Callable[[str, AgentRecord | None], None]) -> None:
        """Call ``listener(did, record)`` on every change; ``record`` is None when it went away."""
        self._listeners.append(listener)

    def _notify(self, did: str, record: AgentRecord | None) -> None:
        for listener in self._listeners:
            try:
                listener(did, record)
            except Exception:
                log.exception("registry listener failed", extra={"did": did})

    def _expire(self) -> None:
        now = self.clock()
        for did, record in list(self._records.items()):
            if record.expires_at <= now:
                del self._records[did]
                self._notify(did, None)
                asyncio.ensure_future(self._drop_quietly(did, record.seq))

    async def _drop_quietly(self, did: str, seq: int) -> None:
        try:
            await self.store.drop(did, seq)
        except Exception:
            pass  # another node (or the next pass) cleans up

    # ---- reads ------------------------------------------------------------------------------

    def _live(self, record: AgentRecord) -> bool:
        return record.expires_at > self.clock()

    def seq_of(self, did: str) -> int | None:
        if did in self._records:
            return self._records[did].seq
        if did in self._tombstones:
            return self._tombstones[did].seq
        return None

    def get(self, did: str) -> AgentRecord | None:
        record = self._records.get(did)
        return record if record is not None and self._live(record) else None

    def live(self) -> list[AgentRecord]:
        return [r for r in self._records.values() if self._live(r)]

    def by_name(self, name: str) -> list[AgentRecord]:
        return [r for r in self.live() if r.name == name]

    def resolve(self, name_or_did: str) -> list[AgentRecord]:
        record = self.get(name_or_did)
        return [record] if record is not None else self.by_name(name_or_did)

    def digest(self) -> dict[str, int]:
        """did -> seq of everything known (records and tombstones), for anti-entropy."""
        out = {did: r.seq for did, r in self._records.items()}
        out.update({did: t.seq for did, t in self._tombstones.items()})
        return out

    def search(
        self, *, tag: str | None = None, protocol: str | None = None, text: str | None = None
    ) -> list[AgentRecord]:
        """Simple filters for listing (routing by capability uses the capability index)."""
        words = [w for w in (text or "").lower().split() if w]
        out = []
        for record in sorted(self.live(), key=lambda r: (r.name, r.did)):
            if tag and not any(tag in s.tags for s in record.skills):
                continue
            if protocol and getattr(record.endpoints, protocol, None) is None:
                continue
            if words:
                hay = " ".join(
                    [record.name, record.description]
                    + [f"{s.name} {s.description} {' '.join(s.tags)}" for s in record.skills]
                ).lower()
                if not all(w in hay for w in words):
                    continue
            out.append(record)
        return out


def stream_of(record: AgentRecord) -> str:
    """The bus stream that carries tasks for this agent (replicas sharing a name share it)."""
    return record.endpoints.bus or record.name


def parse_signed(data: Any) -> AgentRecord | Tombstone:
    """A record or tombstone from JSON data; raises pydantic ValidationError when malformed."""
    if isinstance(data, dict) and data.get("type") == "tombstone":
        return Tombstone.model_validate(data)
    return AgentRecord.model_validate(data)
