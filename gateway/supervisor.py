"""The one place that starts a ``WorkerRunner`` on this node.

In-process agents (echo, test workers), protocol connectors (gateway/connectors.py) and
forwarding connectors (gateway/cluster.py) are all workers; each runs under a runner that reaches
the bus through a ``DirectLink`` on the runtime's backend, with the node's lock TTL and network,
and connects out under the node's egress policy (``Worker.egress``).
The supervisor keeps them, so stopping the gateway stops every one of them within the grace
period.
"""

from __future__ import annotations

import asyncio

from agents.links import DirectLink, WorkerLink
from agents.worker import Worker, WorkerRunner
from gateway.core.runtime import Runtime


class Supervisor:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self._runners: set[WorkerRunner] = set()

    def start(self, worker: Worker, *, register: bool = True, link: WorkerLink | None = None) -> WorkerRunner:
        """Run ``worker``; ``register``: sign and keep its record in the registry (in-process
        agents), not for connectors, whose record belongs to the remote agent."""
        rt = self.runtime
        if worker.egress is None:
            worker.egress = rt.egress  # connectors connect out under the gateway's egress policy
        runner = WorkerRunner(
            worker,
            link or DirectLink(rt.backend, rt.registry),
            lock_ttl_ms=rt.config.visibility_timeout_ms,
            network=rt.config.network,
            home_node=rt.node_id,
            lease_s=rt.config.lease_s,
            register=register,
        )
        runner.start()
        self._runners.add(runner)
        return runner

    async def start_agents(self, workers: list[Worker], timeout_s: float = 10.0) -> None:
        """Start in-process agents and wait until they are registered: routable as soon as the
        gateway answers."""
        runners = [self.start(worker) for worker in workers]
        await asyncio.gather(*(asyncio.wait_for(r.ready.wait(), timeout_s) for r in runners), return_exceptions=True)

    def not_serving(self) -> list[str]:
        """The agents run here that cannot serve now (/readyz: not ready): an in-process agent
        whose name is not routable, or any worker whose consuming loop died."""
        return sorted(r.worker.agent for r in self._runners if r.died or (r.register and not r.routable))

    async def stop(self, runner: WorkerRunner) -> None:
        self._runners.discard(runner)
        await runner.stop(self.runtime.config.shutdown_grace_s)

    async def stop_all(self) -> None:
        runners, self._runners = list(self._runners), set()
        await asyncio.gather(*(r.stop(self.runtime.config.shutdown_grace_s) for r in runners), return_exceptions=True)
