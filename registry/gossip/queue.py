"""Retransmit-limited broadcast queue: SWIM's infection-style dissemination.

SWIM (section 4.1) piggybacks membership updates on the protocol's own packets and retransmits
each update lambda*log(N) times. This is memberlist's `TransmitLimitedQueue` (queue.go):

* an update is sent at most `retransmit_mult * ceil(log10(N + 1))` times (`retransmit_limit`);
* packets are filled with the least-transmitted updates first (newest news travels first),
  larger ones first among equals, then newest first, skipping what does not fit the budget;
* a new update with the same key (the node id for membership, the user key for user payloads)
  invalidates the queued one, so at most one update per key is in flight;
* the queue is bounded: past `max_depth` the most-transmitted entry is dropped (serf prunes its
  queues at `MaxQueueDepth` the same way).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from registry.gossip.messages import Message, wire_size

__all__ = ["BroadcastQueue", "retransmit_limit"]


def retransmit_limit(retransmit_mult: int, n: int) -> int:
    """memberlist util.go `retransmitLimit`: retransmit_mult * ceil(log10(n + 1))."""
    return retransmit_mult * math.ceil(math.log10(n + 1))


@dataclass(slots=True)
class _Entry:
    msg: Message
    size: int
    transmits: int
    order: int  # increasing with insertion: a larger value is newer


class BroadcastQueue:
    """Updates waiting to be piggybacked, each sent a bounded number of times."""

    __slots__ = ("_entries", "_max_depth", "_counter", "_bytes")

    def __init__(self, max_depth: int) -> None:
        self._entries: dict[str, _Entry] = {}
        self._max_depth = max_depth
        self._counter = 0
        self._bytes = 0  # total size of the queued messages

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: str) -> bool:
        return key in self._entries

    def push(self, key: str, msg: Message) -> None:
        """Queue `msg`, replacing any queued update with the same key."""
        entries = self._entries
        if key in entries:
            self._remove(key)
        if len(entries) >= self._max_depth:
            self._remove(max(entries, key=lambda k: (entries[k].transmits, -entries[k].order)))
        self._counter += 1
        entry = entries[key] = _Entry(msg, wire_size(msg), 0, self._counter)
        self._bytes += entry.size

    def _remove(self, key: str) -> None:
        self._bytes -= self._entries.pop(key).size

    def take(self, budget: int, limit: int) -> tuple[list[Message], int]:
        """Messages for one packet within `budget` bytes, and the bytes they use. Each taken
        message counts one transmit; one that reaches `limit` transmits leaves the queue."""
        entries = self._entries
        if not entries:
            return [], 0
        items = list(entries.items())
        if self._bytes > budget:
            items.sort(key=lambda kv: (kv[1].transmits, -kv[1].size, -kv[1].order))
        out: list[Message] = []
        used = 0
        for key, entry in items:
            if used + entry.size > budget:
                continue
            used += entry.size
            out.append(entry.msg)
            entry.transmits += 1
            if entry.transmits >= limit:
                self._remove(key)
        return out, used
