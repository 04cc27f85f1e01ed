"""How a worker reaches the bus: directly (same process or shared Redis) or through a gateway.

``DirectLink`` talks to a backend object; ``HttpLink`` speaks the gateway's ``/bus`` API, which
is a thin wrapper over a DirectLink on the gateway side, so both behave the same. Given the
agent's ``identity``, ``HttpLink`` signs every request with it (RFC 9421, did:key;
``gateway.core.httpsig.RequestSigner``), and the gateway lets it use only its own agent's
stream; given a worker ``token``, it sends that too (gateways that do not verify signatures
go by the token, or by the loopback rule, as before). Its client (``gateway.core.http_client``,
pooled aiohttp: a worker's every step is a request) follows an egress policy
(gateway/core/egress.py; default: only the gateway it was given, whose host is the operator's);
an HTTP error from the gateway is ``StatusError``, no answer another ``TransportError``.
"""

from __future__ import annotations

import abc
import json
from collections.abc import AsyncIterator

from gateway.core.backends import Backend, Delivery, StoredEvent
from gateway.core.backends.base import EVENT_JSON
from gateway.core.egress import Egress
from gateway.core.http_client import PooledClient
from gateway.core.httpsig import RequestSigner
from gateway.core.sse import read_events
from registry.identity import Identity
from registry.records import RecordRejected
from registry.service import Registry
from schemas import InvalidTransition, Message, Task, TaskEvent, TaskState, TextPart
from schemas.agent_record import AgentRecord, Tombstone


class RegistrationFailed(RecordRejected):
    """The gateway refused the worker's record: the error's code, message and details, as the
    registry itself would have raised them (a ``DirectLink`` raises ``RecordRejected``)."""

    def __init__(self, status: int, body: str) -> None:
        try:
            error = json.loads(body)["error"]
            details = {k: v for k, v in error.items() if k not in ("code", "message")}
            super().__init__(str(error["code"]), str(error["message"]), **details)
        except (ValueError, KeyError, TypeError):
            super().__init__(f"http_{status}", body)
        self.status = status


class WorkerLink(abc.ABC):
    @abc.abstractmethod
    async def receive(self, agent: str, consumer: str, block_ms: int, count: int) -> list[Delivery]: ...

    @abc.abstractmethod
    async def register(self, model: AgentRecord | Tombstone) -> None:
        """Publish the worker's signed record (or its tombstone) to the registry."""

    @abc.abstractmethod
    async def begin(self, delivery: Delivery, consumer: str, ttl_ms: int) -> Task | None:
        """Take the run lock; None when the task must not run here (done, or run elsewhere)."""

    @abc.abstractmethod
    async def heartbeat(self, delivery: Delivery, consumer: str, ttl_ms: int) -> bool:
        """Keep the entry and the run lock; False when the lock went to someone else."""

    @abc.abstractmethod
    async def emit(self, task_id: str, event: TaskEvent) -> str:
        """Apply an event; returns its id. Raises InvalidTransition when the task moved on."""

    @abc.abstractmethod
    async def finish(self, delivery: Delivery, consumer: str) -> None:
        """Ack the entry and drop the run lock."""

    @abc.abstractmethod
    async def release(self, delivery: Delivery, consumer: str) -> None:
        """Drop the run lock but leave the entry pending, for redelivery elsewhere."""

    @abc.abstractmethod
    def events(self, task_id: str, after: str | None) -> AsyncIterator[StoredEvent]: ...

    async def close(self) -> None:
        return None


class DirectLink(WorkerLink):
    def __init__(self, backend: Backend, registry: Registry) -> None:
        self.backend, self.registry = backend, registry

    async def receive(self, agent, consumer, block_ms, count):
        return await self.backend.bus.receive(agent, consumer, block_ms=block_ms, count=count)

    async def register(self, model):
        await self.registry.submit(model)

    async def begin(self, delivery, consumer, ttl_ms):
        task, locked = await self.backend.take_run(delivery, consumer, ttl_ms)
        runnable = task is not None and not (task.state.terminal or task.state.interrupted)
        if not runnable or delivery.attempt > self.backend.limits.max_deliveries:
            # Done already (a redelivery after the ack was lost), expired, waiting for input, or
            # delivered too often: settled here, not run.
            if runnable:
                await self._give_up(task, delivery)
            await self.backend.end_run(delivery, consumer)
            return None
        return task if locked else None

    async def _give_up(self, task: Task, delivery: Delivery) -> None:
        note = Message(role="agent", parts=[TextPart(text=f"gave up after {delivery.attempt - 1} deliveries")])
        try:
            await self.backend.tasks.apply(task.id, task.status_event(TaskState.FAILED, note))
        except InvalidTransition:
            pass

    async def heartbeat(self, delivery, consumer, ttl_ms):
        if not await self.backend.tasks.lock(delivery.task_id, consumer, ttl_ms):
            return False
        await self.backend.bus.extend(delivery, consumer)
        return True

    async def emit(self, task_id, event):
        _, event_id = await self.backend.tasks.apply(task_id, event)
        return event_id

    async def finish(self, delivery, consumer):
        await self.backend.end_run(delivery, consumer)

    async def release(self, delivery, consumer):
        await self.backend.tasks.unlock(delivery.task_id, consumer)

    def events(self, task_id, after):
        return self.backend.events(task_id, after)


class HttpLink(WorkerLink):
    """The gateway's ``/bus`` API (see gateway/worker_api.py), with one pooled client."""

    def __init__(
        self, base_url: str, token: str | None = None, identity: Identity | None = None, egress: Egress | None = None
    ) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = PooledClient(
            egress or Egress().allowing(base_url),
            base_url=base_url,
            headers=headers,
            timeout_s=30.0,
            sign=RequestSigner(identity).headers_for if identity is not None else None,
        )

    async def _post(self, path: str, body: dict) -> dict:
        resp = await self.http.request("POST", path, json=body)
        if resp.status_code == 409:
            raise InvalidTransition(TaskState.CANCELED, TaskState.WORKING)
        resp.raise_for_status()
        return resp.json() if resp.content else {}

    @staticmethod
    def _delivery(d: Delivery) -> dict:
        return {"agent": d.agent, "entry_id": d.entry_id, "task_id": d.task_id, "attempt": d.attempt}

    async def receive(self, agent, consumer, block_ms, count):
        body = await self._post(
            "/bus/receive", {"agent": agent, "consumer": consumer, "block_ms": block_ms, "count": count}
        )
        return [Delivery(**d) for d in body["deliveries"]]

    async def register(self, model):
        if isinstance(model, Tombstone):
            resp = await self.http.request("DELETE", f"/registry/agents/{model.did}", json=model.dump())
        else:
            resp = await self.http.request("POST", "/registry/agents", json=model.dump())
        if resp.status_code >= 400:
            raise RegistrationFailed(resp.status_code, resp.text[:4000])

    async def begin(self, delivery, consumer, ttl_ms):
        body = await self._post(
            "/bus/begin", {"delivery": self._delivery(delivery), "consumer": consumer, "ttl_ms": ttl_ms}
        )
        return Task.model_validate(body["task"]) if body.get("task") else None

    async def heartbeat(self, delivery, consumer, ttl_ms):
        body = await self._post(
            "/bus/heartbeat", {"delivery": self._delivery(delivery), "consumer": consumer, "ttl_ms": ttl_ms}
        )
        return bool(body["owned"])

    async def emit(self, task_id, event):
        body = await self._post(
            "/bus/emit", {"task_id": task_id, "event": event.model_dump(mode="json", exclude_none=True)}
        )
        return body["event_id"]

    async def finish(self, delivery, consumer):
        await self._post("/bus/finish", {"delivery": self._delivery(delivery), "consumer": consumer})

    async def release(self, delivery, consumer):
        await self._post("/bus/release", {"delivery": self._delivery(delivery), "consumer": consumer})

    def events(self, task_id, after):
        return self.follow(f"/bus/events/{task_id}", after)

    async def follow(
        self, path: str, after: str | None, headers: dict[str, str] | None = None
    ) -> AsyncIterator[StoredEvent]:
        """The task events of the SSE stream at ``path``, after event ``after``."""
        headers = {**(headers or {}), **({"Last-Event-ID": after} if after else {})}
        async with self.http.stream("GET", path, headers=headers, timeout=None) as resp:
            resp.raise_for_status()
            event_id = None
            async for event in read_events(resp.aiter_bytes()):
                event_id = event.id or event_id  # an event without an id keeps the last one (SSE's rule)
                if not event.data:
                    continue
                payload = event.json()
                if payload.get("kind") in ("status-update", "artifact-update"):
                    yield StoredEvent(event_id or "", EVENT_JSON.validate_python(payload))

    async def close(self):
        await self.http.aclose()
