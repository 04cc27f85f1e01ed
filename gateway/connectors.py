"""Outbound connectors for agents that live behind a protocol endpoint instead of on the bus.

Every live record with an ``a2a``, ``acp``, ``anp`` or ``mcp`` endpoint and no ``bus`` endpoint
gets a connector on this node: a ``Worker`` that consumes the agent's stream and calls the agent
in its own protocol. Every protocol's connector is built one way, ``factories[kind](record,
runtime)``: by default the adapter's ``Connector.from_record`` (``FACTORIES``); an adapter's
``mount`` may bind its entry to the options it was given. Replicas (the records a name's owner
lets share its name, ``registry.names``) each get one, so they share the stream's load; a record
held outside its name's claim is not live and gets none. Connectors follow the registry: started when a record
appears, restarted when its endpoint changes, stopped when it is deregistered or expires.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from agents.worker import Worker, WorkerRunner
from gateway.core.runtime import Runtime
from gateway.supervisor import Supervisor
from protocols import a2a, acp, anp, mcp
from schemas.agent_record import AgentRecord

log = logging.getLogger("interlace.connectors")

ConnectorFactory = Callable[[AgentRecord, Runtime], Worker]
ORDER = ("a2a", "acp", "anp", "mcp")  # the first endpoint a record has decides its connector

FACTORIES: dict[str, ConnectorFactory] = {
    "a2a": a2a.Connector.from_record,
    "acp": acp.Connector.from_record,
    "anp": anp.Connector.from_record,
    "mcp": mcp.Connector.from_record,
}


class RegistryConnectors:
    """One connector per live record with a protocol endpoint, following the registry."""

    def __init__(self, supervisor: Supervisor, factories: dict[str, ConnectorFactory] | None = None) -> None:
        self.supervisor, self.runtime = supervisor, supervisor.runtime
        self.factories = dict(FACTORIES if factories is None else factories)
        self._running: dict[str, tuple[tuple[str, str], WorkerRunner]] = {}
        self._pending: set[asyncio.Task] = set()

    def start(self) -> None:
        self.runtime.registry.subscribe(self._changed)
        for record in self.runtime.registry.live():
            self._changed(record.did, record)

    def _target(self, record: AgentRecord | None) -> tuple[str, str] | None:
        if record is None or record.endpoints.bus is not None:
            return None
        for kind in ORDER:
            url = getattr(record.endpoints, kind)
            if url is not None and kind in self.factories:
                return kind, url
        return None

    def _changed(self, did: str, record: AgentRecord | None) -> None:
        target = self._target(record)
        current = self._running.get(did)
        if current is not None and current[0] == target:
            return  # a lease renewal: same endpoint, keep the connector
        if current is not None:
            del self._running[did]
            self._spawn(self.supervisor.stop(current[1]))
        if target is None or record is None:
            return
        try:
            worker = self.factories[target[0]](record, self.runtime)
        except Exception:
            log.exception("could not build a connector", extra={"did": did, "protocol": target[0]})
            return
        self._running[did] = (target, self.supervisor.start(worker, register=False))
        log.info("connector started", extra={"did": did, "agent": record.name, "protocol": target[0]})

    def _spawn(self, coro) -> None:
        task = asyncio.ensure_future(coro)
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    def running(self) -> dict[str, str]:
        """did -> protocol of the connectors running on this node."""
        return {did: target[0] for did, (target, _) in self._running.items()}

    async def stop(self) -> None:
        runners = [runner for _, runner in self._running.values()]
        self._running.clear()
        await asyncio.gather(*(self.supervisor.stop(r) for r in runners), *self._pending, return_exceptions=True)
