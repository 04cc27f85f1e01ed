"""``subscriptions/listen`` (2026-07-28): the open listen streams of one gateway node, what each
asked for, and the change notifications that reach them, from this node and, when nodes share
Redis, from the others.

A listen stream is a ``Listener``: the listen request's id (its subscription id), its caller,
its ``Filter`` and a bounded queue. ``Filter.parse`` reads ``params.notifications``
(``toolsListChanged``, ``promptsListChanged``, ``resourcesListChanged`` booleans,
``resourceSubscriptions``, a list of URIs, and the tasks extension's ``taskIds``, a list of task
ids whose ``notifications/tasks`` the stream gets, see tasks_ext.py); a field of the wrong type is -32602, a field this
gateway does not know is simply not acknowledged (the spec: the acknowledgement lists the
subset the server honors). Which URIs are honored is the MCP service's business (the caller
must be allowed to read them, see methods.py).

``Hub.publish`` takes a change this node observed, ``{"kind": "tools" | "prompts" |
"resources"}`` (a list changed) or ``{"kind": "updated", "uri": ...}`` (a resource changed),
and queues the matching notification, tagged with ``_meta.io.modelcontextprotocol/
subscriptionId``, for every listener whose filter asks for it; a ``resources/updated`` only to
listeners whose caller may still read the resource (``may_read``: the policy may have changed
since it subscribed). A listener that does not keep up (its queue is full) is dropped: its
stream ends without the graceful result, which a client reads as "listen again and refetch".
``Hub.stop`` ends every stream gracefully (the server's shutdown).

Across nodes: every change this node observes is also appended to a change feed in the shared
key/value store (``EventLog`` under the reserved session name ``FEED``), and while a node has
listeners it follows the feed and delivers the changes other nodes observed (within the
event log's poll interval). Each node also sees most changes itself (each holds its own
upstream sessions and watches the registry), so a change can arrive twice: list_changed and
updated are invalidations, a repeat costs one refetch.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import secrets
import time
from collections.abc import Callable
from typing import Any

from gateway.core.principal import Principal
from protocols.mcp import wire
from protocols.mcp.modern import META_SUBSCRIPTION
from protocols.mcp.sessions import EventLog
from protocols.mcp.wire import INVALID_PARAMS, MCPError

log = logging.getLogger("interlace.mcp")

FEED = "~changes"  # the change feed's name in the event log (session ids are hex: no clash)
FLAGS = {"tools": "toolsListChanged", "prompts": "promptsListChanged", "resources": "resourcesListChanged"}
MAX_URIS = 1000  # resourceSubscriptions (and taskIds) per listen request
QUEUE_DEPTH = 256
CLOSED, LOST = "closed", "lost"  # queue sentinels: end gracefully / drop without the result


@dataclasses.dataclass(frozen=True)
class Filter:
    """What one listen stream is sent: list changes of ``kinds``, updates of ``uris``."""

    kinds: frozenset[str] = frozenset()
    uris: tuple[str, ...] = ()
    task_ids: tuple[str, ...] = ()

    @classmethod
    def parse(cls, params: dict[str, Any]) -> Filter:
        """The filter a listen request asks for; raises -32602 for a malformed one."""
        wanted = params.get("notifications")
        if not isinstance(wanted, dict):
            raise MCPError(INVALID_PARAMS, "subscriptions/listen needs params.notifications (an object)")
        kinds = set()
        for kind, flag in FLAGS.items():
            value = wanted.get(flag)
            if value is not None and not isinstance(value, bool):
                raise MCPError(INVALID_PARAMS, f"notifications.{flag} must be a boolean")
            if value:
                kinds.add(kind)
        uris = wanted.get("resourceSubscriptions")
        if uris is None:
            uris = []
        if not isinstance(uris, list) or not all(isinstance(u, str) and u for u in uris):
            raise MCPError(INVALID_PARAMS, "notifications.resourceSubscriptions must be a list of URIs")
        if len(uris) > MAX_URIS:
            raise MCPError(INVALID_PARAMS, f"notifications.resourceSubscriptions holds more than {MAX_URIS} URIs")
        task_ids = wanted.get("taskIds")
        if task_ids is None:
            task_ids = []
        if not isinstance(task_ids, list) or not all(isinstance(t, str) and t for t in task_ids):
            raise MCPError(INVALID_PARAMS, "notifications.taskIds must be a list of task ids")
        if len(task_ids) > MAX_URIS:
            raise MCPError(INVALID_PARAMS, f"notifications.taskIds holds more than {MAX_URIS} ids")
        return cls(frozenset(kinds), tuple(dict.fromkeys(uris)), tuple(dict.fromkeys(task_ids)))

    def acknowledged(self) -> dict[str, Any]:
        """The filter as the acknowledgement states it (only what is honored)."""
        out: dict[str, Any] = {FLAGS[kind]: True for kind in FLAGS if kind in self.kinds}
        if self.uris:
            out["resourceSubscriptions"] = list(self.uris)
        if self.task_ids:
            out["taskIds"] = list(self.task_ids)
        return out


class Listener:
    """One open listen stream."""

    def __init__(self, id: Any, filter: Filter, principal: Principal) -> None:
        self.id, self.filter, self.principal = id, filter, principal
        self.queue: asyncio.Queue[dict[str, Any] | str] = asyncio.Queue(QUEUE_DEPTH)
        self.tasks_watch: asyncio.Task | None = None  # the tasks it follows (tasks_ext.py)

    def notification(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        """A notification of this stream, tagged with its subscription id."""
        return wire.notification(method, {**(params or {}), "_meta": {META_SUBSCRIPTION: self.id}})

    def closing(self) -> dict[str, Any]:
        """The listen request's result: the server ends the subscription gracefully."""
        return wire.result(self.id, {"resultType": "complete", "_meta": {META_SUBSCRIPTION: self.id}})

    def note_for(self, change: dict[str, Any], may_read: Callable[[Principal, str], bool]) -> dict[str, Any] | None:
        kind = change.get("kind")
        if kind == "updated":
            uri = change.get("uri")
            if uri in self.filter.uris and may_read(self.principal, uri):
                return self.notification("notifications/resources/updated", {"uri": uri})
            return None
        if kind in self.filter.kinds:
            return self.notification(f"notifications/{kind}/list_changed")
        return None


class Hub:
    """The listen streams of this node and the change feed they share with other nodes."""

    def __init__(self, events: EventLog, shared: bool, may_read: Callable[[Principal, str], bool]) -> None:
        self.events, self.shared, self.may_read = events, shared, may_read
        self.listeners: set[Listener] = set()
        self.node = secrets.token_hex(4)
        self._follower: asyncio.Task | None = None

    def open(self, listener: Listener) -> None:
        self.listeners.add(listener)
        if self.shared and self._follower is None:
            self._follower = asyncio.create_task(self._follow(), name="mcp-change-feed")

    def close(self, listener: Listener) -> None:
        self.listeners.discard(listener)
        if not self.listeners and self._follower is not None:
            self._follower.cancel()
            self._follower = None

    async def publish(self, change: dict[str, Any]) -> None:
        """A change this node observed: to its listeners now, to other nodes' through the feed
        (when the store cannot take it, their listeners miss it: logged, not raised, so that
        whoever observed the change carries on)."""
        self._deliver(change)
        if self.shared:
            try:
                await self.events.append_get(FEED, {**change, "node": self.node})
            except Exception:
                log.warning("could not share a change with the other nodes", exc_info=True)

    def _deliver(self, change: dict[str, Any]) -> None:
        for listener in list(self.listeners):
            note = listener.note_for(change, self.may_read)
            if note is None:
                continue
            try:
                listener.queue.put_nowait(note)
            except asyncio.QueueFull:
                log.warning("listen stream dropped: it does not keep up", extra={"subscription": str(listener.id)})
                self._drop(listener, LOST)

    def _drop(self, listener: Listener, how: str) -> None:
        self.close(listener)
        while not listener.queue.empty():
            listener.queue.get_nowait()
        listener.queue.put_nowait(how)

    async def _follow(self) -> None:
        """Deliver the changes other nodes append to the feed, from now on."""
        after = await self.events.get_head(FEED)
        while True:
            try:
                async for seq, change in self.events.follow(FEED, "g", after, time.monotonic() + 3600):
                    after = seq
                    if change.get("node") != self.node:
                        self._deliver(change)
            except asyncio.CancelledError:
                raise
            except Exception:  # the store is unreachable: try again shortly
                log.warning("could not follow the MCP change feed", exc_info=True)
                await asyncio.sleep(1.0)

    async def stop(self) -> None:
        for listener in list(self.listeners):
            self._drop(listener, CLOSED)
        if self._follower is not None:
            self._follower.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._follower
            self._follower = None
