"""Storage of signed agent records and tombstones: in memory, or in Redis shared by many nodes.

The store only keeps, per DID, the entry with the highest ``seq`` (compare-and-set), and a feed
of changes so every node's in-memory view (and capability index) follows writes made anywhere.
Acceptance rules live in ``registry.service``; this layer trusts what it is given.

An entry is the JSON text ``{"kind": "record"|"tombstone", "seq": int, "expires_at": int,
"body": {...signed model...}}``.
"""

from __future__ import annotations

import abc
import asyncio
import itertools
import json
from typing import Any


def entry_json(kind: str, seq: int, expires_at: int, body: dict[str, Any]) -> str:
    return json.dumps({"kind": kind, "seq": seq, "expires_at": expires_at, "body": body}, separators=(",", ":"))


class RecordStore(abc.ABC):
    @abc.abstractmethod
    async def put_if_newer(self, did: str, seq: int, entry: str) -> bool:
        """Store ``entry`` unless an entry with a seq >= ``seq`` is stored; True when written."""

    @abc.abstractmethod
    async def load(self) -> tuple[list[str], str]:
        """Every stored entry, and the change-feed cursor to follow from."""

    @abc.abstractmethod
    async def changes(self, after: str, block_ms: int) -> tuple[list[str], str]:
        """Entries written after ``after`` (waiting up to ``block_ms``), and the new cursor."""

    @abc.abstractmethod
    async def drop(self, did: str, seq: int) -> None:
        """Forget the entry of ``did`` if its seq is still ``seq`` (expired-lease clean-up)."""


class MemoryRecordStore(RecordStore):
    def __init__(self) -> None:
        self._entries: dict[str, tuple[int, str]] = {}
        self._feed: list[tuple[int, str]] = []
        self._ids = itertools.count(1)
        self._changed = asyncio.Event()

    async def put_if_newer(self, did: str, seq: int, entry: str) -> bool:
        current = self._entries.get(did)
        if current is not None and current[0] >= seq:
            return False
        self._entries[did] = (seq, entry)
        self._feed.append((next(self._ids), entry))
        del self._feed[:-10_000]
        self._changed.set()
        self._changed = asyncio.Event()
        return True

    async def load(self) -> tuple[list[str], str]:
        return [e for _, e in self._entries.values()], str(self._feed[-1][0] if self._feed else 0)

    async def changes(self, after: str, block_ms: int) -> tuple[list[str], str]:
        last = int(after)
        if not self._feed or self._feed[-1][0] <= last:
            try:
                async with asyncio.timeout(block_ms / 1000):  # not wait_for: it can swallow cancels
                    await self._changed.wait()
            except TimeoutError:
                return [], after
        fresh = [(i, e) for i, e in self._feed if i > last]
        return [e for _, e in fresh], str(fresh[-1][0] if fresh else last)

    async def drop(self, did: str, seq: int) -> None:
        current = self._entries.get(did)
        if current is not None and current[0] == seq:
            del self._entries[did]


PUT_IF_NEWER = """
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if cur and tonumber(cur) >= tonumber(ARGV[2]) then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
redis.call('XADD', KEYS[3], 'MAXLEN', '~', '100000', '*', 'e', ARGV[3])
return 1
"""

DROP = """
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then
  redis.call('HDEL', KEYS[1], ARGV[1])
  redis.call('HDEL', KEYS[2], ARGV[1])
end
return 0
"""


class RedisRecordStore(RecordStore):
    """Keys: ``il:{reg}:seq`` (did -> seq), ``il:{reg}:entries`` (did -> entry), ``il:{reg}:feed``
    (stream); one hash tag, so each script touches one Redis Cluster slot."""

    KEYS = ["il:{reg}:seq", "il:{reg}:entries", "il:{reg}:feed"]

    def __init__(self, redis: Any) -> None:
        self.r = redis
        self._put = redis.register_script(PUT_IF_NEWER)
        self._drop = redis.register_script(DROP)

    async def put_if_newer(self, did: str, seq: int, entry: str) -> bool:
        return bool(await self._put(keys=self.KEYS, args=[did, seq, entry]))

    async def load(self) -> tuple[list[str], str]:
        last = await self.r.xrevrange(self.KEYS[2], count=1)
        cursor = last[0][0] if last else "0-0"
        return list((await self.r.hgetall(self.KEYS[1])).values()), cursor

    async def changes(self, after: str, block_ms: int) -> tuple[list[str], str]:
        got = await self.r.xread({self.KEYS[2]: after}, count=1000, block=max(1, block_ms))
        out = []
        for _, entries in got or []:
            for eid, fields in entries:
                out.append(fields["e"])
                after = eid
        return out, after

    async def drop(self, did: str, seq: int) -> None:
        await self._drop(keys=self.KEYS[:2], args=[did, seq])
