"""The outbound A2A connector: a Worker that runs its tasks on a remote A2A agent.

``A2AConnector(agent_name, card_url)`` consumes the bus stream of ``agent_name``. For each task it
sends the latest user message to the remote agent over the interface the remote card prefers
and turns the remote's task, status and artifact events into this task's events. Specifics:

* streaming: SendStreamingMessage when the card says the agent streams and a client follows the
  task as it runs (task metadata ``STREAM_HINT``, set by the A2A face for SendStreamingMessage,
  non-blocking sends and push configs); a blocking SendMessage otherwise, which costs the remote
  and the gateway much less (``streaming=True``/``False`` forces either way).

* contextId: the gateway's context id is sent as the remote contextId, so the remote groups
  the tasks of one conversation too.
* input-required: the remote task/context ids ride in the metadata of the status message
  (``REMOTE_IDS``); the follow-up message (``runtime.continue_task``) goes to that remote task.
* a direct Message reply completes the task with that message (flagged ``DIRECT_REPLY``).
* remote ``failed``/``rejected`` fail the task with the remote's status text; an unreachable
  agent (or one that does not answer in A2A) fails it with ``agent unreachable`` whatever
  happened (the detail is logged: gateway/core/egress.py), and the card is fetched again for
  the next task.
* outbound connections follow the gateway's egress policy (``Worker.egress``, given by the
  supervisor): the card, every interface the card lists, every request.
* cancel: when the gateway task is canceled, the runner cancels ``handle``, which then sends
  CancelTask to the remote (bounded by a few seconds) before it unwinds. The remote task id comes
  from the stream's first event; a blocking SendMessage (1.0, no streaming) has not named it
  yet, so the task is found with ListTasks on its context by our message id; a 0.3 agent without
  streaming is sent the message without blocking (it names the task at once) and polled.
* a stream that ends before a final state is resumed with SubscribeToTask, else polled.

The gateway runs one per live record that has an ``a2a`` endpoint and no ``bus`` endpoint
(``A2AConnector.from_record``, from the registry connectors in ``gateway/connectors.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator

import aiohttp

from agents.remote_stream import RemoteStream
from agents.worker import TaskFailed, Worker
from gateway.core.egress import Egress
from gateway.core.runtime import Runtime
from protocols.a2a.client import A2AClient, RemoteCard, StreamItem, fetch_card
from protocols.a2a.errors import RemoteAgentError
from protocols.a2a.wire import DIRECT_REPLY, REMOTE_IDS
from schemas import STREAM_HINT, Message, Task, TaskArtifactUpdate, TaskEvent, TaskState, TaskStatusUpdate, TextPart
from schemas.agent_record import AgentRecord

log = logging.getLogger("interlace.a2a.connector")


class _Mirror:
    """What the connector knows of the remote task while it runs."""

    def __init__(self) -> None:
        self.task_id: str | None = None
        self.context_id: str | None = None
        self.final = False
        self.known = asyncio.Event()

    def learn(self, task_id: str | None, context_id: str | None) -> None:
        self.task_id = self.task_id or task_id or None
        self.context_id = self.context_id or context_id or None
        if self.task_id:
            self.known.set()

    def see(self, item: StreamItem) -> None:
        if isinstance(item, Task):
            self.learn(item.id, item.context_id)
        elif isinstance(item, (TaskStatusUpdate, TaskArtifactUpdate)):
            self.learn(item.task_id, item.context_id)


class A2AConnector(Worker):
    concurrency = 64

    def __init__(
        self,
        agent_name: str,
        card_url: str,
        *,
        streaming: bool | None = None,
        headers: dict[str, str] | None = None,
        timeout_s: float = 300.0,
        card_ttl_s: float = 300.0,
        http: aiohttp.ClientSession | None = None,
        egress: Egress | None = None,
    ) -> None:
        self.agent, self.egress = agent_name, egress
        self.card_url = (
            card_url if card_url.endswith(".json") else card_url.rstrip("/") + "/.well-known/agent-card.json"
        )
        self.streaming, self.headers = streaming, headers or {}
        self.timeout_s, self.card_ttl_s = timeout_s, card_ttl_s
        self._http = http  # a caller-supplied session replaces the connector's own
        self._own: aiohttp.ClientSession | None = None
        self._card: RemoteCard | None = None
        self._card_at = 0.0
        self._card_lock: asyncio.Lock | None = None

    @classmethod
    def from_record(cls, record: AgentRecord, runtime: Runtime) -> A2AConnector:
        """The connector for a registry record whose ``endpoints.a2a`` is the agent's card (or base) URL."""
        if record.endpoints.a2a is None:
            raise ValueError(f"record {record.did} has no a2a endpoint")
        return cls(record.name, record.endpoints.a2a, egress=runtime.egress)

    # ---- plumbing ----------------------------------------------------------------------------

    def _client_http(self) -> aiohttp.ClientSession:
        if self._http is not None:
            return self._http
        if self._own is None:
            self._own = (self.egress or Egress()).aiohttp_session(
                self.card_url,  # through the proxy the environment names for it, if any
                limit=self.concurrency,
                # Idle connections are dropped before common servers' 5 s keep-alive timeout, so a
                # request never meets one the server is closing.
                keepalive_timeout=4.0,
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=5.0, sock_read=self.timeout_s),
            )
        return self._own

    async def aclose(self) -> None:
        if self._own is not None:
            await self._own.close()
            self._own = None

    async def remote_card(self) -> RemoteCard:
        if self._card_lock is None:
            self._card_lock = asyncio.Lock()
        async with self._card_lock:
            if self._card is None or time.monotonic() - self._card_at > self.card_ttl_s:
                self._card = await fetch_card(self._client_http(), self.card_url)
                self._card_at = time.monotonic()
            return self._card

    def _forget_card(self) -> None:
        self._card = None

    # ---- the handler -------------------------------------------------------------------------

    async def handle(self, task: Task) -> AsyncIterator[TaskEvent]:
        mirror = _Mirror()
        client: A2AClient | None = None
        remote: RemoteStream | None = None
        outgoing: Message | None = None
        streaming = False
        try:
            card = await self.remote_card()
            client = A2AClient(self._client_http(), card.preferred(), self.headers)
            wanted = bool(task.metadata.get(STREAM_HINT)) if self.streaming is None else self.streaming
            streaming = card.streaming and wanted
            outgoing = self._outgoing(task, mirror)
            source = client.stream(outgoing) if streaming else self._send_and_wait(client, outgoing)
            if streaming or client.iface.version == "0.3":  # the remote names its task soon: see the cancel path
                remote = RemoteStream(source, f"a2a-remote-{task.id}", mirror.see)
                source = remote.items()
            async for item in source:
                for ev in self._map(task, mirror, item):
                    yield ev
                if mirror.final:
                    break
            if not mirror.final and mirror.task_id:
                async for ev in self._settle(task, mirror, client, streaming):
                    yield ev
            if not mirror.final:
                raise TaskFailed(f"the remote agent {self.agent!r} ended without finishing the task")
        except asyncio.CancelledError:
            if client is not None and not mirror.final:
                names_soon = streaming or client.iface.version == "0.3"  # a stream or a non-blocking send
                if mirror.task_id is None and names_soon:
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(mirror.known.wait(), 5.0)
                if mirror.task_id is None and outgoing is not None:  # a blocking send: look the task up
                    mirror.task_id = await self._find_remote(client, outgoing)
                if mirror.task_id:
                    await self._cancel_remote(client, mirror.task_id)
            raise
        except RemoteAgentError as exc:
            if exc.retryable:
                self._forget_card()
            log.warning(
                "remote agent call failed", extra={"agent": self.agent, "task_id": task.id, "error": exc.detail}
            )
            raise TaskFailed(f"remote agent {self.agent!r}: {exc}") from None
        finally:
            if remote is not None:
                remote.close(finished=mirror.final)

    async def _send_and_wait(self, client: A2AClient, outgoing: Message) -> AsyncIterator[StreamItem]:
        """A remote without streaming. A 1.0 agent gets a blocking SendMessage (a cancel finds its
        task with ListTasks). A 0.3 agent has no ListTasks, so it gets a non-blocking send, which
        names the task at once, and is polled. Either way a task returned before it is final (the
        remote's own time limit) is polled until it is."""
        blocking = client.iface.version != "0.3"
        first = await client.send(outgoing, blocking=blocking)
        yield first
        if not isinstance(first, Task) or first.state.terminal or first.state.interrupted:
            return
        deadline, delay = time.monotonic() + self.timeout_s, 0.02
        while time.monotonic() < deadline:
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)
            remote = await client.get_task(first.id)
            if remote.state.terminal or remote.state.interrupted:
                yield remote
                return

    def _outgoing(self, task: Task, mirror: _Mirror) -> Message:
        user = [m for m in task.history if m.role == "user"]
        if not user:
            raise TaskFailed("the task has no user message to send")
        remote = self._remote_ids(task)
        if remote:
            mirror.learn(remote.get("taskId"), remote.get("contextId"))
        meta = {k: v for k, v in (user[-1].metadata or {}).items() if not k.startswith("interlace.")}
        return Message(
            message_id=user[-1].message_id,
            role="user",
            parts=user[-1].parts,
            task_id=mirror.task_id,
            context_id=mirror.context_id or task.context_id,
            metadata=meta or None,
        )

    @staticmethod
    def _remote_ids(task: Task) -> dict | None:
        """The remote ids of a task that waited for input (from the last agent message that has them)."""
        for m in reversed(task.history):
            if m.role == "agent" and m.metadata and isinstance(m.metadata.get(REMOTE_IDS), dict):
                return m.metadata[REMOTE_IDS]
        return None

    async def _relay(self, task: Task, mirror: _Mirror, items: AsyncIterator[StreamItem]) -> AsyncIterator[TaskEvent]:
        async for item in items:
            for ev in self._map(task, mirror, item):
                yield ev
            if mirror.final:
                return

    async def _settle(
        self, task: Task, mirror: _Mirror, client: A2AClient, streaming: bool
    ) -> AsyncIterator[TaskEvent]:
        """The stream ended before a final state: follow the remote task by subscription, or poll it."""
        deadline = time.monotonic() + self.timeout_s
        delay = 0.2
        while not mirror.final and time.monotonic() < deadline:
            if streaming:
                try:
                    async for ev in self._relay(task, mirror, client.subscribe(mirror.task_id)):  # type: ignore[arg-type]
                        yield ev
                    continue
                except RemoteAgentError:
                    streaming = False  # fall back to polling
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
            remote = await client.get_task(mirror.task_id)  # type: ignore[arg-type]
            if remote.state.terminal or remote.state.interrupted:
                for ev in self._map(task, mirror, remote):
                    yield ev

    async def _find_remote(self, client: A2AClient, outgoing: Message) -> str | None:
        """The remote task that holds our message, found by ListTasks on its context (A2A 1.0)."""
        delay = 0.1
        for _ in range(3):
            try:
                tasks = await asyncio.wait_for(client.list_tasks(outgoing.context_id or ""), 5.0)
            except (TimeoutError, RemoteAgentError):
                return None
            for t in tasks:
                if any(m.message_id == outgoing.message_id for m in t.history) and not t.state.terminal:
                    return t.id
            await asyncio.sleep(delay)  # the remote may not have made the task yet
            delay *= 2
        return None

    async def _cancel_remote(self, client: A2AClient, remote_id: str) -> None:
        try:
            await asyncio.wait_for(asyncio.shield(client.cancel(remote_id)), 5.0)
            log.info("canceled the remote task", extra={"agent": self.agent, "remote_task": remote_id})
        except (TimeoutError, RemoteAgentError, asyncio.CancelledError) as exc:
            detail = getattr(exc, "detail", None) or exc.__class__.__name__
            log.warning("could not cancel the remote task", extra={"agent": self.agent, "error": detail})

    # ---- mapping remote items to this task's events ------------------------------------------

    def _message(self, task: Task, remote: Message | None, extra: dict | None = None) -> Message | None:
        if remote is None and not extra:
            return None
        parts = remote.parts if remote is not None else [TextPart(text="")]
        meta = {**((remote.metadata or {}) if remote is not None else {}), **(extra or {})}
        return Message(
            message_id=remote.message_id if remote is not None else Message(role="agent", parts=parts).message_id,
            role="agent",
            parts=parts,
            task_id=task.id,
            context_id=task.context_id,
            metadata=meta or None,
        )

    def _map(self, task: Task, mirror: _Mirror, item: StreamItem | None) -> list[TaskEvent]:
        if item is None:
            return []
        if isinstance(item, Message):
            mirror.final = True
            return [task.status_event(TaskState.COMPLETED, self._message(task, item, {DIRECT_REPLY: True}))]
        if isinstance(item, Task):
            mirror.task_id, mirror.context_id = item.id, item.context_id or mirror.context_id
            events: list[TaskEvent] = [task.artifact_event(a) for a in item.artifacts]
            return events + self._status(task, mirror, item.status.state, item.status.message)
        if isinstance(item, TaskArtifactUpdate):
            mirror.task_id = mirror.task_id or item.task_id or None
            return [task.artifact_event(item.artifact, append=item.append, last_chunk=item.last_chunk)]
        mirror.task_id = mirror.task_id or item.task_id or None
        mirror.context_id = mirror.context_id or item.context_id or None
        return self._status(task, mirror, item.status.state, item.status.message)

    def _status(self, task: Task, mirror: _Mirror, state: TaskState, message: Message | None) -> list[TaskEvent]:
        if state is TaskState.SUBMITTED:
            return []
        if state is TaskState.WORKING:
            return [task.status_event(TaskState.WORKING, self._message(task, message))] if message else []
        if state in (TaskState.FAILED, TaskState.REJECTED):
            mirror.final = True
            text = message.text() if message is not None else ""
            verb = "failed" if state is TaskState.FAILED else "rejected"
            raise TaskFailed(f"remote agent {self.agent!r} {verb} the task" + (f": {text}" if text else ""))
        mirror.final = True
        if state.interrupted:
            ids = {REMOTE_IDS: {"taskId": mirror.task_id, "contextId": mirror.context_id}}
            return [task.status_event(state, self._message(task, message, ids))]
        return [task.status_event(state, self._message(task, message))]
