"""MCP session state in the shared key/value store, so any gateway node can serve any session.

Keys (all with a lifetime; the embedded and Redis backends behave the same):

  mcp:s:{sid}                    the session record (JSON): negotiated version, client
                                 capabilities and info, log level, last-seen time
  mcp:e:{sid}:{stream}:{seq}     SSE event ``seq`` of one stream of the session (resumability);
                                 ``stream`` is a random id per POST response, ``g`` for the GET stream
  mcp:end:{sid}:{stream}         the seq of a POST stream's final event (its JSON-RPC response)
  mcp:ghead:{sid}                newest seq of the GET stream (where a new GET starts reading)
  mcp:r:{sid}:{id}               the client's answer to a server->client request, when it reached
                                 another node than the one waiting for it
  mcp:c:{sid}:{id}               a notifications/cancelled that reached another node than the one
                                 running the request
  mcp:e:~changes:g:{seq}, mcp:ghead:~changes
                                 the cluster's change feed for subscriptions/listen (listen.py),
                                 kept as the GET stream of a reserved session name

Session ids are 128-bit values from ``secrets`` (visible ASCII, hex).
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections import defaultdict
from typing import Any

from gateway.core.backends.base import KeyValue
from protocols.mcp.wire import dumps


class Sessions:
    def __init__(self, kv: KeyValue, ttl_s: int) -> None:
        self.kv, self.ttl_s = kv, ttl_s

    @staticmethod
    def new_id() -> str:
        return secrets.token_hex(16)

    async def create(self, record: dict[str, Any]) -> str:
        while True:
            sid = self.new_id()
            record["seen"] = time.time()
            if await self.kv.set(f"mcp:s:{sid}", dumps(record), self.ttl_s, only_new=True):
                return sid

    async def get(self, sid: str) -> dict[str, Any] | None:
        raw = await self.kv.get(f"mcp:s:{sid}")
        if raw is None:
            return None
        record = json.loads(raw)
        if time.time() - record.get("seen", 0) > self.ttl_s / 4:  # keep an active session alive
            await self.save(sid, record)
        return record

    async def save(self, sid: str, record: dict[str, Any]) -> None:
        record["seen"] = time.time()
        await self.kv.set(f"mcp:s:{sid}", dumps(record), self.ttl_s)

    async def delete(self, sid: str) -> None:
        await self.kv.delete(f"mcp:s:{sid}")


class EventLog:
    """The events of every SSE stream, stored so a client can resume on any node.

    A POST stream has one writer (the node running the request); the GET stream may have
    several (notifications produced on different nodes), so its sequence numbers are claimed
    with ``only_new``. Readers on the same node are woken at once; readers on other nodes poll.
    """

    def __init__(self, kv: KeyValue, ttl_s: int, poll_s: float = 0.5) -> None:
        self.kv, self.ttl_s, self.poll_s = kv, ttl_s, poll_s
        self._wake: dict[tuple[str, str], asyncio.Event] = defaultdict(asyncio.Event)

    def _key(self, sid: str, stream: str, seq: int) -> str:
        return f"mcp:e:{sid}:{stream}:{seq}"

    def wake(self, sid: str, stream: str) -> None:
        ev = self._wake.pop((sid, stream), None)
        if ev is not None:
            ev.set()

    async def put(self, sid: str, stream: str, seq: int, msg: dict[str, Any], *, final: bool = False) -> None:
        await self.kv.set(self._key(sid, stream, seq), dumps(msg), self.ttl_s)
        if final:
            await self.kv.set(f"mcp:end:{sid}:{stream}", str(seq), self.ttl_s)
        self.wake(sid, stream)

    async def append_get(self, sid: str, msg: dict[str, Any]) -> int:
        """Append to the session's GET stream (any node may write); returns the claimed seq."""
        head = await self.kv.get(f"mcp:ghead:{sid}")
        seq = int(head or 0) + 1
        data = dumps(msg)
        while not await self.kv.set(self._key(sid, "g", seq), data, self.ttl_s, only_new=True):
            seq += 1
        await self.kv.set(f"mcp:ghead:{sid}", str(seq), self.ttl_s)
        self.wake(sid, "g")
        return seq

    async def get_head(self, sid: str) -> int:
        return int(await self.kv.get(f"mcp:ghead:{sid}") or 0)

    async def exists(self, sid: str, stream: str, seq: int) -> bool:
        if stream != "g" and await self.kv.get(f"mcp:end:{sid}:{stream}") is not None:
            return True
        return seq == 0 or await self.kv.get(self._key(sid, stream, seq)) is not None

    async def follow(self, sid: str, stream: str, after: int, deadline: float):
        """Yield (seq, message) after ``after`` until the stream's final event or the deadline."""
        seq = after
        end = None
        while time.monotonic() < deadline:
            raw = await self.kv.get(self._key(sid, stream, seq + 1))
            if raw is not None:
                seq += 1
                yield seq, json.loads(raw)
                if end is not None and seq >= end:
                    return
                continue
            if stream != "g":
                mark = await self.kv.get(f"mcp:end:{sid}:{stream}")
                if mark is not None:
                    end = int(mark)
                    if seq >= end:
                        return
            if stream == "g":  # a writer on another node may have skipped ahead (claim race)
                head = await self.get_head(sid)
                if head > seq + 1 and await self.kv.get(self._key(sid, stream, seq + 1)) is None:
                    seq += 1
                    continue
            ev = self._wake[(sid, stream)]
            try:
                await asyncio.wait_for(ev.wait(), min(self.poll_s, max(0.0, deadline - time.monotonic())))
            except TimeoutError:
                if self._wake.get((sid, stream)) is ev:  # nobody woke it: do not keep it around
                    del self._wake[(sid, stream)]


class Mailbox:
    """Answers and cancellations that must reach the node running a request.

    The node that waits registers a future; a message arriving on the same node resolves it at
    once, one arriving on another node is parked in the key/value store and picked up by polling.
    """

    def __init__(self, kv: KeyValue, shared: bool, poll_s: float = 0.2) -> None:
        self.kv, self.shared, self.poll_s = kv, shared, poll_s
        self._local: dict[tuple[str, str, str], asyncio.Future] = {}

    def _key(self, kind: str, sid: str, id: Any) -> str:
        return f"mcp:{kind}:{sid}:{json.dumps(id)}"

    async def post(self, kind: str, sid: str, id: Any, value: Any) -> bool:
        """Deliver; True when a waiter on this node took it."""
        fut = self._local.get((kind, sid, json.dumps(id)))
        if fut is not None and not fut.done():
            fut.set_result(value)
            return True
        if self.shared:
            await self.kv.set(self._key(kind, sid, id), dumps(value), 600)
        return False

    async def wait(self, kind: str, sid: str, id: Any, timeout: float | None) -> Any:
        """The value posted for (kind, sid, id); raises TimeoutError after ``timeout``."""
        slot = (kind, sid, json.dumps(id))
        fut = asyncio.get_running_loop().create_future()
        self._local[slot] = fut
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            while True:
                step = self.poll_s if self.shared else None
                if deadline is not None:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise TimeoutError
                    step = left if step is None else min(step, left)
                try:
                    return await asyncio.wait_for(asyncio.shield(fut), step)
                except TimeoutError:
                    pass
                if self.shared:
                    raw = await self.kv.get(self._key(kind, sid, id))
                    if raw is not None:
                        await self.kv.delete(self._key(kind, sid, id))
                        return json.loads(raw)
        finally:
            if self._local.get(slot) is fut:
                del self._local[slot]
