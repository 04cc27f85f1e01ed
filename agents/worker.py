"""The worker runtime: consume an agent's stream, run ``handle``, publish its events, ack.

A subclass of ``Worker`` implements ``handle(task)`` as an async generator of canonical events
(use ``task.artifact_event`` / ``task.status_event``). The runner around it:

* marks the task working, publishes every event, completes the task if the handler did not end
  it, and fails it with a short message (never a traceback) if the handler raises;
* holds the task's run lock and heartbeats the bus entry while the handler runs, so a
  redelivered entry never runs twice at once and a dead worker's entry is claimed elsewhere;
* registers the worker's signed record (its own did:key) and re-signs it before the lease
  runs out, and deregisters with a signed tombstone on stop. Its name may belong to another DID
  (``registry.names``): then it keeps trying once a lease third, logging that once, and takes
  the name when the holder's records are gone. Renewals repeat the claim's ``claimed_at``; when
  the registry names another (a restarted worker with the same key, a gateway that forgot the
  claim) the runner signs that one;
* cancels the handler when the task is canceled (it watches the task's event stream);
* on ``stop``: stops taking work, lets running handlers finish within a grace period, and leaves
  the rest pending (unacked) for redelivery, so no task is lost;
* when what a worker serves from goes down (an inference engine), its handler raises
  ``Unavailable``: the task is left pending for redelivery rather than failed, and the runner
  takes no work until ``Worker.until_available`` returns. A worker whose card changes (what the
  engine serves) sets ``card_changed`` and is re-registered at once.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from agents.links import WorkerLink
from gateway.core import tracing
from gateway.core.aio import wait_cancelled
from gateway.core.backends import BackendUnavailable, Delivery
from gateway.core.egress import Egress
from gateway.core.http_client import TransportError
from registry.identity import Identity
from registry.records import RecordRejected, sign
from schemas import InvalidTransition, Message, Task, TaskEvent, TaskState, TaskStatusUpdate, TextPart
from schemas.agent_record import Tombstone, record_from_card

log = logging.getLogger("interlace.worker")


class TaskFailed(Exception):
    """Raised by a handler to fail its task with a message meant for the client."""


class Unavailable(Exception):
    """Raised by a handler when what it serves from is down: the task is released for redelivery."""


class Worker:
    agent: str = "worker"
    description: str = ""
    version: str = "1"
    concurrency: int = 16
    # The policy its outbound connections follow (connectors); a gateway's supervisor gives a
    # worker without one the gateway's own. None outside a gateway: connectors then allow only
    # the public internet.
    egress: Egress | None = None
    # Set by a worker whose card changed; the runner re-registers it and clears the event.
    card_changed: asyncio.Event | None = None

    async def until_available(self) -> None:
        """Return once the worker can take work: at once, unless what it serves from is down."""

    def skills(self) -> list[dict]:
        return [{"id": self.agent, "name": self.agent, "description": self.description}]

    def card(self) -> dict:
        """What the worker's signed registry record says about it (see schemas.agent_record)."""
        return {
            "name": self.agent,
            "description": self.description,
            "version": self.version,
            "skills": self.skills(),
            "endpoints": {"bus": self.agent},
        }

    async def handle(self, task: Task) -> AsyncIterator[TaskEvent]:  # pragma: no cover - abstract
        raise NotImplementedError
        yield

    async def aclose(self) -> None:
        """Release what the worker holds (connection pools); called once its runner has stopped."""


class WorkerRunner:
    CANCEL_WATCH_AFTER_S = 0.02

    def __init__(
        self,
        worker: Worker,
        link: WorkerLink,
        *,
        consumer: str | None = None,
        lock_ttl_ms: int = 30_000,
        poll_ms: int = 1_000,
        identity: Identity | None = None,
        network: str = "interlace",
        home_node: str | None = None,
        lease_s: int = 60,
        register: bool = True,
    ) -> None:
        self.worker, self.link = worker, link
        tracing.configure()  # OTEL_* (once per process): a worker of its own process traces too
        self.consumer = consumer or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.lock_ttl_ms, self.poll_ms = lock_ttl_ms, poll_ms
        self.identity = identity or Identity.generate()
        self.network, self.home_node, self.lease_s = network, home_node or socket.gethostname(), lease_s
        self._seq = 0
        self._claimed_at: int | None = None  # when this worker's claim on its name began
        self._lease_task: asyncio.Task | None = None
        self.register = register  # False for connectors: the remote agent has its own record
        self._inflight: dict[asyncio.Task, Delivery] = {}
        self._stopping = asyncio.Event()
        self._loop_task: asyncio.Task | None = None
        self.ready = asyncio.Event()

    def start(self) -> asyncio.Task:
        if self.register:
            self._lease_task = asyncio.create_task(self._keep_registered(), name=f"lease-{self.worker.agent}")
        else:
            self.ready.set()
        self._loop_task = asyncio.create_task(self.run(), name=f"worker-{self.worker.agent}")
        return self._loop_task

    def _next_seq(self) -> int:
        # Milliseconds keep seq increasing across restarts of the same key; +1 within one.
        self._seq = max(self._seq + 1, int(time.time() * 1000))
        return self._seq

    async def _keep_registered(self) -> None:
        """Register the signed record, then re-sign it every third of the lease."""
        backoff, taken, adopted = 0.1, False, False
        while not self._stopping.is_set():
            try:
                if self.worker.card_changed is not None:
                    self.worker.card_changed.clear()
                record = record_from_card(
                    self.worker.card(),
                    self.identity.did,
                    self._next_seq(),
                    self.lease_s,
                    self.network,
                    self.home_node,
                    claimed_at=self._claimed_at,
                )
                await self.link.register(sign(record, self.identity))
                self._claimed_at = record.claimed_at
                self.ready.set()
                backoff, taken, adopted = 0.1, False, False
                await self._sleep(self.lease_s / 3, self.worker.card_changed)
            except asyncio.CancelledError:
                raise
            except RecordRejected as exc:
                if exc.reason_code in ("claim_mismatch", "claim_stale") and not adopted:
                    self._claimed_at = exc.details.get("claimed_at")  # the claim to repeat; None: now
                    adopted = True
                    continue
                if exc.reason_code == "name_taken":
                    if not taken:
                        log.warning(
                            "the name belongs to another agent; retrying each lease third",
                            extra={"agent": self.worker.agent, "did": self.identity.did},
                        )
                    taken = True
                    self.ready.set()  # the name is routable: to its holder
                    await self._sleep(self.lease_s / 3)
                    continue
                backoff = await self._retry(exc, backoff)
            except Exception as exc:
                backoff = await self._retry(exc, backoff)

    async def _retry(self, exc: Exception, backoff: float) -> float:
        """Log a failed registration, wait ``backoff``; the next backoff."""
        log.warning("registration failed, retrying", extra={"agent": self.worker.agent, "error": str(exc)[:300]})
        await self._sleep(backoff)
        return min(backoff * 2, self.lease_s / 3)

    async def _deregister(self) -> None:
        tombstone = Tombstone(
            did=self.identity.did, seq=self._next_seq(), issued_at=int(time.time()), network=self.network
        )
        try:
            await self.link.register(sign(tombstone, self.identity))
        except Exception:
            log.info("could not deregister; the record lapses with its lease", extra={"agent": self.worker.agent})

    async def run(self) -> None:
        agent, backoff = self.worker.agent, 0.1
        while not self._stopping.is_set():
            try:
                await self.worker.until_available()  # stop() cancels this loop, waits included
                free = self.worker.concurrency - len(self._inflight)
                if free <= 0:
                    await asyncio.wait(
                        list(self._inflight), return_when=asyncio.FIRST_COMPLETED, timeout=self.poll_ms / 1000
                    )
                    continue
                deliveries = await self.link.receive(agent, self.consumer, self.poll_ms, free)
                backoff = 0.1
            except (BackendUnavailable, OSError, TransportError) as exc:
                log.warning("bus unavailable, retrying", extra={"agent": agent, "error": exc.__class__.__name__})
                await self._sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            for delivery in deliveries:
                job = asyncio.create_task(self._process(delivery))
                self._inflight[job] = delivery
                job.add_done_callback(self._inflight.pop)

    async def _sleep(self, seconds: float, wake: asyncio.Event | None = None) -> None:
        """Wait ``seconds``, or less when the runner stops or ``wake`` is set."""
        waits = [asyncio.ensure_future(self._stopping.wait())]
        if wake is not None:
            waits.append(asyncio.ensure_future(wake.wait()))
        try:
            await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()

    async def stop(self, grace_s: float = 10.0) -> None:
        """Stop taking work; running handlers get ``grace_s`` to finish, the rest stay pending."""
        self._stopping.set()
        for job in (self._lease_task, self._loop_task):
            if job is not None:
                await wait_cancelled(job)
        if self._inflight:
            _, late = await asyncio.wait(list(self._inflight), timeout=grace_s)
            for job in late:
                await wait_cancelled(job)
        if self.register:
            await self._deregister()
        await self.link.close()
        await self.worker.aclose()

    async def _process(self, delivery: Delivery) -> None:
        try:
            task = await self.link.begin(delivery, self.consumer, self.lock_ttl_ms)
        except Exception:
            log.exception("could not begin task", extra={"task_id": delivery.task_id})
            return  # the entry stays pending and is redelivered
        if task is None:
            return
        run = _Run(delivery, task)
        run.job = asyncio.create_task(self._run(run))
        try:
            await self._keep_lock_until_done(run)
        except asyncio.CancelledError:
            if not run.job.done():  # the runner is stopping: interrupt, leave the entry pending
                run.interrupt("shutdown")
                await asyncio.gather(run.job, return_exceptions=True)
        finally:
            try:
                if run.reason in ("done", "canceled"):
                    await self.link.finish(delivery, self.consumer)
                else:
                    await self.link.release(delivery, self.consumer)
            except Exception:
                log.warning("could not settle delivery; it will be redelivered", extra={"task_id": task.id})

    async def _keep_lock_until_done(self, run: _Run) -> None:
        """Wait for the handler, renewing the run lock and the bus entry every third of the
        lock's TTL; a lock lost to another consumer stops the handler."""
        while True:
            done, _ = await asyncio.wait({run.job}, timeout=self.lock_ttl_ms / 3000)  # does not cancel the job
            if done:
                return
            try:
                owned = await self.link.heartbeat(run.delivery, self.consumer, self.lock_ttl_ms)
            except Exception:
                continue  # bus hiccup: try again next beat; the lock TTL bounds the damage
            if not owned:
                log.warning("run lock lost; stopping handler", extra={"task_id": run.task.id})
                run.interrupt("lost")
                await asyncio.wait({run.job})
                return

    async def _run(self, run: _Run) -> None:
        # The run continues the trace of the runtime span that accepted the task (Task.trace).
        with tracing.span(f"process {self.worker.agent}", tracing.CONSUMER, self._span_of(run), run.task.trace):
            await self._run_traced(run)

    def _span_of(self, run: _Run) -> dict | None:
        if not tracing.ON:
            return None
        return {
            "messaging.system": "interlace",
            "messaging.operation.type": "process",
            "messaging.destination.name": self.worker.agent,
            "messaging.consumer.group.name": self.worker.agent,
            "gen_ai.agent.name": self.worker.agent,
            "interlace.task.id": run.task.id,
            "interlace.task.attempt": run.delivery.attempt,
        }

    async def _run_traced(self, run: _Run) -> None:
        task, watch = run.task, None
        try:
            meta = {"attempt": run.delivery.attempt} if run.delivery.attempt > 1 else {}
            after = await self.link.emit(task.id, task.status_event(TaskState.WORKING, **meta))
            task = task.apply(task.status_event(TaskState.WORKING))
            # Most runs end within milliseconds, so the cancel watch (a subscription to the task's
            # events) starts only for a run still going after CANCEL_WATCH_AFTER_S. Nothing is
            # missed: it reads from ``after``, and an emit after a cancel fails anyway.
            watch = asyncio.get_running_loop().call_later(self.CANCEL_WATCH_AFTER_S, self._start_watch, run, after)
            final = False
            async for event in self.worker.handle(task):
                await self.link.emit(task.id, event)
                if isinstance(event, TaskStatusUpdate) and event.final:
                    final = True
                    break
            if not final:
                await self.link.emit(task.id, task.status_event(TaskState.COMPLETED))
        except InvalidTransition:
            run.reason = "canceled"  # the task moved on (canceled) under us
        except TaskFailed as exc:
            await self._fail(task, str(exc))
        except (BackendUnavailable, Unavailable):
            run.reason = "lost"  # left pending: redelivered once the bus (or the engine) is back
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("handler failed", extra={"task_id": task.id, "agent": self.worker.agent})
            await self._fail(task, f"{self.worker.agent} failed: {exc.__class__.__name__}")
        finally:
            if watch is not None:
                watch.cancel()
            if run.watcher is not None:
                run.watcher.cancel()

    async def _fail(self, task: Task, text: str) -> None:
        tracing.fail(tracing.current(), "task_failed", text)
        note = Message(role="agent", parts=[TextPart(text=text)], task_id=task.id, context_id=task.context_id)
        try:
            await self.link.emit(task.id, task.status_event(TaskState.FAILED, note))
        except InvalidTransition:
            pass

    def _start_watch(self, run: _Run, after: str) -> None:
        run.watcher = asyncio.create_task(self._watch_cancel(run, after))

    async def _watch_cancel(self, run: _Run, after: str) -> None:
        try:
            async for stored in self.link.events(run.task.id, after):
                ev = stored.event
                if isinstance(ev, TaskStatusUpdate) and ev.status.state is TaskState.CANCELED:
                    run.interrupt("canceled")
                    return
        except asyncio.CancelledError:
            raise
        except Exception:
            log.debug("cancel watch ended", extra={"task_id": run.task.id})


@dataclass
class _Run:
    """One handler execution; ``reason`` decides how its bus entry is settled."""

    delivery: Delivery
    task: Task
    reason: str = "done"  # done | canceled (ack) | lost | shutdown (leave pending)
    job: asyncio.Task | None = field(default=None, repr=False)
    watcher: asyncio.Task | None = field(default=None, repr=False)

    def interrupt(self, reason: str) -> None:
        self.reason = reason
        if self.job is not None:
            self.job.cancel()
