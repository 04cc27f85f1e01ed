"""The agent registry: acceptance rules for signed records, and each node's live view of them.

A record is accepted only if its signature verifies (once: verified records are cached by
digest), its ``network`` is ours, its ``issued_at`` is not in the future beyond the clock-skew
window (and, when submitted directly rather than relayed, not older than that window), it has
not expired, its lease (``expires_at - issued_at``) is within ``max_lease_s``, its ``seq`` is
higher than the stored one, its DID is not revoked, and its name is free to it
(``registry.names``: names belong to the first DID that claims them, and to the replicas that
DID names). A signed tombstone with a higher seq deregisters. Every node keeps all live records
in memory, following the store's change feed, so lookups and routing never touch the store.

Revocations (``schemas.agent_record.Revocation``) are an operator's word, signed by the gateway
node that issued it (``revoke``): the DID's record is dropped here and in the store, and the DID
may register nothing until a later revocation with ``revoked`` false lifts it. They travel in
the same store feed and gossip as records, under the key ``revoked:<did>`` (``REVOKED``), and a
relayed one is believed only from a node ``revokers`` trusts (set by the cluster). They never
expire: a lifted one stays, so it outranks older revocations still travelling.
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

from registry.identity import Identity
from registry.names import Claim, claim_of, claim_time
from registry.records import RecordRejected, check_fresh, sign, verify_signature
from registry.store import RecordStore, entry_json
from schemas.agent_record import AgentRecord, Revocation, Tombstone, canonical_bytes

log = logging.getLogger("interlace.registry")

PROTOCOLS = ("mcp", "a2a", "acp", "anp", "bus")
TOMBSTONE_RETENTION_S = 24 * 3600
REVOKED = "revoked:"  # store and digest key prefix of a DID's revocation

Signed = AgentRecord | Tombstone | Revocation


class Registry:
    def __init__(
        self,
        store: RecordStore,
        network: str,
        *,
        skew_s: int = 300,
        max_lease_s: int | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store, self.network, self.skew_s, self.clock = store, network, skew_s, clock
        self.max_lease_s = max_lease_s
        # Which node DIDs' revocations are believed when relayed (the cluster sets it; this
        # node's own come through ``revoke``).
        self.revokers: Callable[[str], bool] = lambda did: False
        self._listeners: list[Callable[[str, AgentRecord | None], None]] = []
        self._records: dict[str, AgentRecord] = {}
        self._tombstones: dict[str, Tombstone] = {}
        self._revocations: dict[str, Revocation] = {}
        # Names (registry.names): the records held under each name, the owner's last record
        # while its group outlives it, each name's claim, and the DIDs held outside their claim.
        self._named: dict[str, dict[str, AgentRecord]] = {}
        self._anchors: dict[str, AgentRecord] = {}
        self._claims: dict[str, Claim] = {}
        self._hidden: set[str] = set()
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

    async def submit(self, model: Signed, *, relayed: bool = False) -> str:
        """Accept a signed record, tombstone or revocation; returns 'created', 'updated',
        'deleted', 'revoked' or 'unrevoked'.

        ``relayed`` models (from gossip) may be older than the skew window: their freshness is
        their seq and lease, not the age of the signature; their names are judged by the rule
        that settles claims between nodes (``registry.names``).
        """
        now = int(self.clock())
        self.verify(model)
        if isinstance(model, Revocation):
            if not self.revokers(model.node):
                raise RecordRejected("untrusted_node", f"{model.node} is not a node whose revocations count here")
            return await self._store_revocation(model, now)
        if self.revoked(model.did):
            raise RecordRejected("revoked", f"{model.did} is revoked by this network's operators")
        if isinstance(model, AgentRecord):
            check_fresh(model, self.network, now, self.skew_s, max_age_s=None if relayed else self.skew_s)
            if self.max_lease_s is not None and model.expires_at - model.issued_at > self.max_lease_s:
                raise RecordRejected(
                    "lease_too_long",
                    f"a lease may be at most {self.max_lease_s} s (expires_at - issued_at); re-register to extend it",
                    max_lease_s=self.max_lease_s,
                )
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
            self._check_name(model, now, relayed)
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

    def _check_name(self, record: AgentRecord, now: int, relayed: bool) -> None:
        """RecordRejected unless ``record`` may hold its name (the rules of ``registry.names``)."""
        named = self._named.get(record.name, {})
        anchor = self._anchors.get(record.name)
        prior = named.get(record.did) or (anchor if anchor is not None and anchor.did == record.did else None)
        others = [r for did, r in named.items() if did != record.did]
        if anchor is not None and anchor.did != record.did:
            others.append(anchor)
        after = claim_of([*others, record])
        taken = RecordRejected("name_taken", f"the name {record.name!r} belongs to another agent")
        if relayed:
            if after is None or record.did not in after.members:
                raise taken
            return
        before = claim_of([*others, *([prior] if prior is not None else [])])
        since = claim_time(record)
        if prior is not None and before is not None and record.did in before.members:
            held = claim_time(prior)
            if since != held and (record.claimed_at is not None or prior.claimed_at is not None):
                raise RecordRejected(
                    "claim_mismatch",
                    f"{record.did} has held {record.name!r} since {held}: sign claimed_at={held}",
                    claimed_at=held,
                )
        if after is None or record.did not in after.members or (before is not None and after.owner != before.owner):
            raise taken
        if prior is None and since < now - self.skew_s:
            raise RecordRejected(
                "claim_stale",
                f"a new claim on {record.name!r} starts now: claimed_at {since} is outside the clock-skew window",
                claimed_at=None,
            )

    async def revoke(self, did: str, node: Identity, *, revoked: bool = True) -> Revocation:
        """Revoke ``did`` (or lift its revocation), signed by this node's ``node`` key."""
        held = self._revocations.get(did)
        seq = max(held.seq + 1 if held is not None else 0, int(self.clock() * 1000))
        model = Revocation(
            did=did, revoked=revoked, node=node.did, seq=seq, issued_at=int(self.clock()), network=self.network
        )
        model = sign(model, node)
        await self._store_revocation(model, int(self.clock()))
        return model

    async def _store_revocation(self, model: Revocation, now: int) -> str:
        check_fresh(model, self.network, now, self.skew_s)
        held = self._revocations.get(model.did)
        if held is not None and model.seq <= held.seq:
            raise RecordRejected("stale_seq", f"seq {model.seq} is not higher than the held {held.seq}")
        entry = entry_json("revocation", model.seq, 0, model.dump())
        if not await self.store.put_if_newer(REVOKED + model.did, model.seq, entry):
            raise RecordRejected("stale_seq", f"seq {model.seq} is not higher than the stored one")
        self._apply_entry(entry)
        return "revoked" if model.revoked else "unrevoked"

    def verify(self, model: Signed) -> None:
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
            model = _ENTRY_KINDS[entry["kind"]].model_validate(entry["body"])
        except (ValueError, KeyError, ValidationError):
            log.warning("unreadable registry entry skipped")
            return
        if isinstance(model, Revocation):
            self._apply_revocation(model)
            return
        if self.revoked(model.did):
            return  # written while the revocation travelled: dropped like the rest
        stored = self.seq_of(model.did)
        if stored is not None and model.seq <= stored:
            return
        if isinstance(model, AgentRecord):
            self._tombstones.pop(model.did, None)
            self._put(model)
        else:
            self._remove(model.did)
            self._tombstones[model.did] = model
            self._notify(model.did, None)

    def _apply_revocation(self, model: Revocation) -> None:
        held = self._revocations.get(model.did)
        if held is not None and model.seq <= held.seq:
            return
        self._revocations[model.did] = model
        if not model.revoked:
            log.info("revocation lifted", extra={"did": model.did, "node": model.node})
            return
        log.info("agent revoked", extra={"did": model.did, "node": model.node})
        for name in [n for n, anchor in self._anchors.items() if anchor.did == model.did]:
            del self._anchors[name]
            self._settle(name)
        dropped = self._remove(model.did, anchors=False)
        if dropped is not None:
            self._notify(model.did, None)
            asyncio.ensure_future(self._drop_quietly(model.did, dropped.seq))

    # ---- names (registry.names) -------------------------------------------------------------

    def _put(self, record: AgentRecord) -> None:
        old = self._records.get(record.did)
        self._records[record.did] = record
        if old is not None and old.name != record.name:
            del self._named[old.name][record.did]
            self._settle(old.name, leaving=old)
        self._named.setdefault(record.name, {})[record.did] = record
        anchor = self._anchors.get(record.name)
        if anchor is not None and anchor.did == record.did:
            del self._anchors[record.name]  # the owner is back
        self._settle(record.name, touched=record.did)
        self._notify(record.did, record if self._shown(record) else None)

    def _remove(self, did: str, *, anchors: bool = True) -> AgentRecord | None:
        """Forget ``did``'s record (the caller notifies); an owner's last record anchors its
        name while its group lives, unless ``anchors`` is False (a revocation)."""
        old = self._records.pop(did, None)
        self._hidden.discard(did)
        if old is not None:
            del self._named[old.name][did]
            self._settle(old.name, leaving=old if anchors else None, touched=did)
        return old

    def _settle(self, name: str, *, leaving: AgentRecord | None = None, touched: str | None = None) -> None:
        """Recompute ``name``'s claim after a change; notify the DIDs (other than ``touched``)
        that it shows or hides."""
        named = self._named.get(name, {})
        claim = self._claims.get(name)
        if leaving is not None and claim is not None and claim.owner == leaving.did:
            if any(did in claim.members for did in named):
                self._anchors[name] = leaving
        if not named:
            for held in (self._named, self._anchors, self._claims):
                held.pop(name, None)
            return
        anchor = self._anchors.get(name)
        claim = claim_of([*named.values(), *([anchor] if anchor is not None else [])])
        assert claim is not None
        if anchor is not None and (claim.owner != anchor.did or not any(d in claim.members for d in named)):
            del self._anchors[name]  # an earlier claim took the name, or the group is gone
            claim = claim_of(named.values())
            assert claim is not None
        self._claims[name] = claim
        for did, record in named.items():
            hide = did not in claim.members
            if hide == (did in self._hidden):
                continue
            if hide:
                self._hidden.add(did)
            else:
                self._hidden.discard(did)
            if did != touched:
                self._notify(did, record if self._shown(record) else None)

    def claim(self, name: str) -> Claim | None:
        """Who holds ``name`` on this node (None: no record carries it)."""
        return self._claims.get(name)

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
                self._remove(did)
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

    def _shown(self, record: AgentRecord) -> bool:
        """Live, and held within its name's claim."""
        return record.did not in self._hidden and self._live(record)

    def seq_of(self, did: str) -> int | None:
        if did in self._records:
            return self._records[did].seq
        if did in self._tombstones:
            return self._tombstones[did].seq
        return None

    def revoked(self, did: str) -> bool:
        held = self._revocations.get(did)
        return held is not None and held.revoked

    def revocations(self) -> list[Revocation]:
        """Every revocation held, lifted ones included."""
        return list(self._revocations.values())

    def get(self, did: str) -> AgentRecord | None:
        record = self._records.get(did)
        return record if record is not None and self._shown(record) else None

    def live(self) -> list[AgentRecord]:
        return [r for r in self._records.values() if self._shown(r)]

    def by_name(self, name: str) -> list[AgentRecord]:
        return [r for r in self._named.get(name, {}).values() if self._shown(r)]

    def resolve(self, name_or_did: str) -> list[AgentRecord]:
        record = self.get(name_or_did)
        return [record] if record is not None else self.by_name(name_or_did)

    def digest(self) -> dict[str, int]:
        """did -> seq of everything known (records, held or not, and tombstones), and
        ``revoked:<did>`` -> seq of revocations, for anti-entropy."""
        out = {did: r.seq for did, r in self._records.items()}
        out.update({did: t.seq for did, t in self._tombstones.items()})
        out.update({REVOKED + did: r.seq for did, r in self._revocations.items()})
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


_ENTRY_KINDS: dict[str, type[Signed]] = {"record": AgentRecord, "tombstone": Tombstone, "revocation": Revocation}


def stream_of(record: AgentRecord) -> str:
    """The bus stream that carries tasks for this agent: its name's (the owner and its replicas
    share it; a stranger's record under the name is never live, see ``registry.names``)."""
    return record.name


def parse_signed(data: Any) -> Signed:
    """A record, tombstone or revocation from JSON data; raises pydantic ValidationError when
    malformed."""
    if not _encodable(data):  # pydantic cannot even word its error about such a key: refuse it here
        raise ValidationError.from_exception_data("AgentRecord", [{"type": "string_unicode", "loc": (), "input": None}])
    kind = data.get("type") if isinstance(data, dict) else None
    if kind == "tombstone":
        return Tombstone.model_validate(data)
    if kind == "revocation":
        return Revocation.model_validate(data)
    return AgentRecord.model_validate(data)


def _encodable(value: Any) -> bool:
    """Whether every key and string in ``value`` has a UTF-8 form (no unpaired surrogate)."""
    try:
        json.dumps(value, ensure_ascii=False).encode()
    except UnicodeEncodeError:
        return False
    except (TypeError, ValueError, RecursionError):  # not JSON at all: pydantic words that itself
        return True
    return True
