"""The outbound ACP connector: a Worker that runs its tasks on a remote ACP agent.

``ACPConnector(agent_name, url)`` consumes the bus stream of ``agent_name``. ``url`` is the
remote ACP server's base URL (the remote agent is then named ``agent_name`` there too), or
``<base>/agents/<remote name>`` to name it. For each task it creates a run in stream mode with
the latest user message and the task's context as ``session_id`` (when it is a UUID), and turns
the run's events into this task's events:

* ``message.part``: an artifact update; unnamed parts of one message append to one artifact,
  a named part is an artifact of that name (parts with the same name append to it); a message
  whose parts came only in ``message.completed`` (or only in the final run's output) is added
  whole. ``generic`` events are not carried.
* ``run.awaiting``: input-required with the await request's message; the remote run id rides in
  that message's metadata (``REMOTE_RUN``), and the follow-up (``runtime.continue_task``) resumes
  that run (``POST /runs/{id}``) instead of creating one.
* ``run.completed`` completes the task, ``run.cancelled`` cancels it, ``run.failed`` and ``error``
  fail it with the remote's error message; an unreachable agent (or one that does not answer in
  ACP) fails it with ``agent unreachable`` whatever happened (the detail is logged).
* outbound connections follow the gateway's egress policy (``Worker.egress``, given by the
  supervisor; gateway/core/egress.py).
* cancel: when the gateway task is canceled the runner cancels ``handle``, which then asks the
  remote to cancel the run (``POST /runs/{id}/cancel``, bounded by a few seconds). The run id
  comes from the ``Run-ID`` response header, before any event.
* a stream that ends (or breaks) before a final state is settled by polling ``GET /runs/{id}``.

The gateway runs one per live record that has an ``acp`` endpoint and no ``bus`` endpoint:
``gateway/connectors.py`` (shared by every protocol) builds it with
``ACPConnector.from_record`` and starts or stops it as the record comes and goes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx

from agents.remote_stream import RemoteStream
from agents.worker import TaskFailed, Worker
from gateway.core.egress import Egress
from gateway.core.runtime import Runtime
from protocols.acp import wire
from protocols.acp.client import ACPClient, RemoteACPError
from schemas import Artifact, Message, Task, TaskEvent, TaskState, TextPart
from schemas.agent_record import AgentRecord
from schemas.task import new_id

log = logging.getLogger("interlace.acp.connector")


def split_endpoint(url: str, default_name: str) -> tuple[str, str]:
    """(server base URL, remote agent name) from an ``acp`` endpoint URL."""
    base = url.rstrip("/")
    head, sep, tail = base.rpartition("/agents/")
    if sep and tail and "/" not in tail:
        return head, tail
    return base, default_name


class _Relay:
    """What the connector knows of the remote run, and the mapping of its events."""

    def __init__(self, task: Task, agent: str) -> None:
        self.task, self.agent = task, agent
        self.run_id: str | None = None
        self.known = asyncio.Event()
        self.final = False
        self.streamed = False  # any part seen as message.part (else the final output is used)
        self._message_id: str | None = None
        self._message_parts = 0
        self._named: dict[str, str] = {}

    def learn(self, run_id: Any) -> None:
        if isinstance(run_id, str) and run_id and self.run_id is None:
            self.run_id = run_id
            self.known.set()

    def _parts(self, parts: list[Any]) -> list[wire.ACPPart]:
        out = []
        for raw in parts:
            try:
                out.append(wire.ACPPart.model_validate(raw))
            except ValueError:
                log.warning("skipped a malformed part from the remote", extra={"agent": self.agent})
        return out

    def _part_events(self, parts: list[wire.ACPPart]) -> list[TaskEvent]:
        events: list[TaskEvent] = []
        for p in parts:
            try:
                part = wire.part_in(p, keep_name=False)
            except (wire.WireError, ValueError) as exc:
                raise TaskFailed(f"remote ACP agent {self.agent!r} sent a part that cannot be read: {exc}") from None
            if p.name:
                seen = p.name in self._named
                art_id = self._named.setdefault(p.name, new_id())
                events.append(
                    self.task.artifact_event(Artifact(artifact_id=art_id, name=p.name, parts=[part]), append=seen)
                )
            else:
                if self._message_id is None:
                    self._message_id, self._message_parts = new_id(), 0
                art = Artifact(artifact_id=self._message_id, parts=[part])
                events.append(self.task.artifact_event(art, append=self._message_parts > 0))
                self._message_parts += 1
        return events

    def _messages(self, messages: Any) -> list[TaskEvent]:
        events: list[TaskEvent] = []
        for m in messages if isinstance(messages, list) else []:
            if isinstance(m, dict):
                self._message_id = None
                events += self._part_events(self._parts(m.get("parts") or []))
        self._message_id = None
        return events

    def _question(self, run: dict[str, Any]) -> Message:
        request = run.get("await_request") or {}
        parts = self._parts((request.get("message") or {}).get("parts") or [])
        try:
            canonical = [wire.part_in(p) for p in parts]
        except (wire.WireError, ValueError):
            canonical = []
        return Message(
            role="agent",
            parts=canonical or [TextPart(text="")],
            task_id=self.task.id,
            context_id=self.task.context_id,
            metadata={wire.REMOTE_RUN: self.run_id},
        )

    def map(self, event: dict[str, Any]) -> list[TaskEvent]:
        kind = event.get("type")
        if kind == "interlace.run_id":
            self.learn(event.get("run_id"))
            return []
        run = event.get("run") if isinstance(event.get("run"), dict) else None
        if run is not None:
            self.learn(run.get("run_id"))
        if kind == "message.created":
            self._message_id, self._message_parts = None, 0
            return []
        if kind == "message.part":
            self.streamed = True
            return self._part_events(self._parts([event.get("part")]))
        if kind == "message.completed":
            message = event.get("message") or {}
            out = [] if self._message_parts else self._part_events(self._parts(message.get("parts") or []))
            self._message_id, self._message_parts = None, 0
            if out:
                self.streamed = True
            return out
        if kind == "error":
            err = event.get("error") or {}
            self.final = True
            raise TaskFailed(f"remote ACP agent {self.agent!r}: {err.get('message') or 'error'}")
        if run is not None and isinstance(kind, str) and kind.startswith("run."):
            return self.settle(run)
        return []  # generic events and unknown types are not carried

    def settle(self, run: dict[str, Any]) -> list[TaskEvent]:
        """The events for a run in the state ``run`` shows (none while it is still running)."""
        try:
            state = wire.task_state(run.get("status"))
        except wire.WireError:
            return []
        if state in (TaskState.SUBMITTED, TaskState.WORKING):
            return []
        self.final = True
        if state is TaskState.FAILED:
            err = run.get("error") or {}
            text = err.get("message") if isinstance(err, dict) else None
            raise TaskFailed(f"remote ACP agent {self.agent!r} failed the run" + (f": {text}" if text else ""))
        if state is TaskState.INPUT_REQUIRED:
            return [self.task.status_event(TaskState.INPUT_REQUIRED, self._question(run))]
        events = [] if self.streamed else self._messages(run.get("output"))
        return events + [self.task.status_event(state)]


class ACPConnector(Worker):
    concurrency = 64

    def __init__(
        self,
        agent_name: str,
        url: str,
        *,
        headers: dict[str, str] | None = None,
        timeout_s: float = 300.0,
        http: httpx.AsyncClient | None = None,
        record: AgentRecord | None = None,
        egress: Egress | None = None,
    ) -> None:
        self.agent, self.egress = agent_name, egress
        self.base, self.remote_name = split_endpoint(url, agent_name)
        self.headers, self.timeout_s = headers or {}, timeout_s
        self.record = record
        self.description = record.description if record else f"ACP agent {self.remote_name!r} at {self.base}"
        self._http = http
        self._own: httpx.AsyncClient | None = None

    @classmethod
    def from_record(cls, record: AgentRecord, runtime: Runtime) -> ACPConnector:
        """The connector for a registry record whose ``endpoints.acp`` is the agent's ACP URL."""
        if record.endpoints.acp is None:
            raise ValueError(f"record {record.did} has no acp endpoint")
        return cls(record.name, record.endpoints.acp, record=record, egress=runtime.egress)

    def card(self) -> dict:
        card = super().card()
        if self.record is not None:
            card.update(version=self.record.version, skills=[s.dump() for s in self.record.skills])
        return card

    def _client(self) -> ACPClient:
        if self._http is None and self._own is None:
            self._own = (self.egress or Egress()).httpx_client(
                timeout=httpx.Timeout(self.timeout_s, connect=5.0),
                limits=httpx.Limits(max_connections=self.concurrency, max_keepalive_connections=self.concurrency),
            )
        return ACPClient(self._http or self._own, self.base, self.headers)  # type: ignore[arg-type]

    async def aclose(self) -> None:
        if self._own is not None:
            await self._own.aclose()
            self._own = None

    # ---- the handler -------------------------------------------------------------------------

    async def handle(self, task: Task) -> AsyncIterator[TaskEvent]:
        client = self._client()
        relay = _Relay(task, self.agent)
        remote: RemoteStream | None = None
        try:
            # Read by its own task, so a cancel before the run is named can wait for its id.
            remote = RemoteStream(self._source(client, task, relay), f"acp-remote-{task.id}")
            try:
                async for item in remote.items():
                    for ev in relay.map(item):
                        yield ev
                    if relay.final:
                        break
            except RemoteACPError as exc:
                if not (exc.retryable and relay.run_id):
                    raise
                log.info("the run's stream broke; polling it", extra={"agent": self.agent, "error": exc.detail})
            if not relay.final and relay.run_id:
                async for ev in self._poll(client, relay):
                    yield ev
            if not relay.final:
                raise TaskFailed(f"the remote ACP agent {self.agent!r} ended without finishing the run")
        except asyncio.CancelledError:
            if not relay.final:
                if relay.run_id is None:
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(relay.known.wait(), 5.0)
                if relay.run_id:
                    await self._cancel_remote(client, relay.run_id)
            raise
        except RemoteACPError as exc:
            log.warning(
                "remote agent call failed", extra={"agent": self.agent, "task_id": task.id, "error": exc.detail}
            )
            raise TaskFailed(f"remote ACP agent {self.agent!r}: {exc}") from None
        finally:
            if remote is not None:
                remote.close(finished=relay.final)

    def _source(self, client: ACPClient, task: Task, relay: _Relay) -> AsyncIterator[dict[str, Any]]:
        user = [m for m in task.history if m.role == "user"]
        if not user:
            raise TaskFailed("the task has no user message to send")
        message = wire.message_out(user[-1], None)
        waiting = self._waiting_run(task)
        if waiting is not None:
            relay.learn(waiting)
            return client.resume_stream(waiting, message, self.remote_name)
        return client.create_stream(self.remote_name, [message], wire.as_uuid(task.context_id))

    @staticmethod
    def _waiting_run(task: Task) -> str | None:
        """The remote run this task's follow-up resumes: named by the last agent message, when
        a user message came after it."""
        for i in range(len(task.history) - 1, -1, -1):
            m = task.history[i]
            if m.role == "agent":
                run = (m.metadata or {}).get(wire.REMOTE_RUN)
                answered = i + 1 < len(task.history) and task.history[i + 1].role == "user"
                return run if isinstance(run, str) and answered else None
        return None

    async def _poll(self, client: ACPClient, relay: _Relay) -> AsyncIterator[TaskEvent]:
        deadline, delay = time.monotonic() + self.timeout_s, 0.05
        while not relay.final and time.monotonic() < deadline:
            run = await client.get_run(relay.run_id)  # type: ignore[arg-type]
            for ev in relay.settle(run):
                yield ev
            if not relay.final:
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

    async def _cancel_remote(self, client: ACPClient, run_id: str) -> None:
        try:
            await asyncio.wait_for(asyncio.shield(client.cancel(run_id)), 5.0)
            log.info("canceled the remote run", extra={"agent": self.agent, "remote_run": run_id})
        except (TimeoutError, RemoteACPError, asyncio.CancelledError) as exc:
            detail = getattr(exc, "detail", None) or exc.__class__.__name__
            log.warning("could not cancel the remote run", extra={"agent": self.agent, "error": detail})
