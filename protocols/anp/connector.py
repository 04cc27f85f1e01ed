"""The outbound ANP connector: a Worker that runs its tasks as JSON-RPC calls on a remote ANP agent.

``ANPConnector(agent_name, ad_url, signer=ANPSigner(...))`` consumes the bus stream of
``agent_name``. It reads the remote's Agent Description (cached for ``ad_ttl_s``; read again
after the remote was unreachable), picks the method and params for each task (rules in the
package docstring), calls it with requests signed by the gateway's did:wba (a bearer token the
remote returned is reused until it expires), and turns the result into one artifact.

* A JSON-RPC error or a refused authentication fails the task with the remote's message; an
  unreachable remote (or one that does not answer in ANP) fails it with ``agent unreachable``
  whatever happened (the detail is logged).
* Outbound connections follow the gateway's egress policy (``Worker.egress``, given by the
  supervisor): the description, the OpenRPC documents it links, every method's server.
* Cancel: ANP's JSON-RPC has no cancel method, so a canceled task abandons the in-flight request
  (the runner cancels ``handle``, which closes the HTTP exchange); the remote may still finish.
  Another Interlace gateway (``send_message``, ``get_task`` and ``cancel_task``) is driven as a
  task instead: sent without waiting, followed with ``get_task``, canceled with ``cancel_task``.

``ANPConnector.from_record(record, runtime)`` builds the connector for a registry record with an
``anp`` endpoint (its ad.json URL), signing as the gateway's did:wba (the host from
``ANPOptions.from_env()``, or from the options ``mount`` was given) with the node key; connectors
that sign as one host share one signer, hence its bearer tokens. The gateway's registry connectors
(``gateway/connectors.py``, shared by every protocol) run one for each live record with an ``anp``
endpoint and no ``bus`` one, and stops it when the record goes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any
from weakref import WeakKeyDictionary

import httpx

from agents.worker import TaskFailed, Worker
from gateway.core.egress import Egress
from gateway.core.runtime import Runtime
from protocols.anp.client import ANPClient, ANPSigner, RemoteAgent, RemoteError, RemoteMethod
from protocols.anp.options import ANPOptions, outbound_host
from protocols.anp.wire import result_artifact
from schemas import DataPart, FilePart, Message, Task, TaskEvent, TextPart
from schemas.agent_record import AgentRecord

log = logging.getLogger("interlace.anp.connector")

GATEWAY_METHODS = {"send_message", "get_task", "cancel_task"}  # an Interlace gateway's ANP face
PENDING = ("submitted", "working")
METHOD_KEY = "anp.method"  # message (or task) metadata: the remote method to call
PARAMS_KEY = "anp.params"  # ... and its params

_signers: WeakKeyDictionary[Runtime, dict[str, ANPSigner]] = WeakKeyDictionary()


def _signer(runtime: Runtime, host: str) -> ANPSigner:
    """The one signer of ``runtime``'s node key as ``did:wba:<host>`` (its bearer tokens are shared)."""
    by_host = _signers.setdefault(runtime, {})
    if host not in by_host:
        by_host[host] = ANPSigner.for_host(runtime.identity, host)
    return by_host[host]


class ANPConnector(Worker):
    concurrency = 64

    def __init__(
        self,
        agent_name: str,
        ad_url: str,
        *,
        signer: ANPSigner,
        description: str = "",
        skills: list[dict] | None = None,
        timeout_s: float = 300.0,
        ad_ttl_s: float = 300.0,
        http: httpx.AsyncClient | None = None,
        egress: Egress | None = None,
    ) -> None:
        self.agent, self.ad_url, self.signer, self.egress = agent_name, ad_url, signer, egress
        self.description = description or f"ANP agent at {ad_url}"
        self._skills = skills
        self.timeout_s, self.ad_ttl_s = timeout_s, ad_ttl_s
        self._http = http
        self._own_http: httpx.AsyncClient | None = None
        self._remote: RemoteAgent | None = None
        self._remote_at = 0.0
        self._lock: asyncio.Lock | None = None

    @classmethod
    def from_record(cls, record: AgentRecord, runtime: Runtime, *, options: ANPOptions | None = None) -> ANPConnector:
        """The connector for a registry record whose ``endpoints.anp`` is the agent's ad.json URL,
        signing as ``did:wba:<outbound host>`` with the node key (``runtime.identity``, the key of
        the document the gateway serves at that host)."""
        if record.endpoints.anp is None:
            raise ValueError(f"the record of {record.name!r} has no anp endpoint")
        signer = _signer(runtime, outbound_host(options or ANPOptions.from_env(), runtime))
        skills = [s.model_dump(mode="json") for s in record.skills] or None
        return cls(
            record.name,
            record.endpoints.anp,
            signer=signer,
            description=record.description,
            skills=skills,
            egress=runtime.egress,
        )

    def skills(self) -> list[dict]:
        return self._skills or super().skills()

    def client(self) -> ANPClient:
        if self._http is None and self._own_http is None:
            self._own_http = (self.egress or Egress()).httpx_client(
                timeout=httpx.Timeout(self.timeout_s, connect=5.0),
                limits=httpx.Limits(max_connections=self.concurrency, max_keepalive_connections=16),
            )
        return ANPClient(self.signer, self._http or self._own_http, timeout_s=self.timeout_s)  # type: ignore[arg-type]

    async def aclose(self) -> None:
        if self._own_http is not None:
            await self._own_http.aclose()
            self._own_http = None

    async def remote(self) -> RemoteAgent:
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if self._remote is None or time.monotonic() - self._remote_at > self.ad_ttl_s:
                self._remote = await self.client().describe(self.ad_url)
                self._remote_at = time.monotonic()
            return self._remote

    async def handle(self, task: Task) -> AsyncIterator[TaskEvent]:
        user = [m for m in task.history if m.role == "user"]
        if not user:
            raise TaskFailed("the task has no user message to send")
        try:
            remote = await self.remote()
            method, params = choose_call(task, user[-1], remote)
            client = self.client()
            if method.name == "send_message" and GATEWAY_METHODS <= remote.methods.keys():
                result = await self._remote_task(client, remote, params, task.id)
            else:
                result = await client.call(method.server_url, method.name, params, task.id, remote.name)
        except RemoteError as exc:
            if exc.retryable:
                self._remote = None
            log.warning(
                "remote agent call failed", extra={"agent": self.agent, "task_id": task.id, "error": exc.detail}
            )
            raise TaskFailed(f"remote ANP agent {self.agent!r}: {exc}") from None
        yield task.artifact_event(result_artifact(method.name, result), last_chunk=True)

    @staticmethod
    async def _remote_task(client: ANPClient, remote: RemoteAgent, params: dict[str, Any], rid: str) -> Any:
        """Another Interlace gateway: start the task without waiting, follow it with get_task, and
        cancel it there (cancel_task) when this task is canceled."""
        methods = remote.methods
        send = {**params, "wait_s": 0}
        sending = asyncio.ensure_future(
            client.call(methods["send_message"].server_url, "send_message", send, rid, remote.name)
        )
        result: Any = None
        remote_id = None
        try:
            # Shielded: a cancel that lands while the remote is starting the task still learns its
            # id below, so the remote task is canceled too instead of running on unseen.
            result = await asyncio.shield(sending)
            remote_id = result.get("task_id") if isinstance(result, dict) else None
            while isinstance(remote_id, str) and result.get("state") in PENDING:
                result = await client.call(
                    methods["get_task"].server_url, "get_task", {"task_id": remote_id, "wait_s": 30}, rid, remote.name
                )
        except asyncio.CancelledError:
            if remote_id is None:
                with contextlib.suppress(Exception):
                    started = await asyncio.wait_for(sending, 5.0)
                    remote_id = started.get("task_id") if isinstance(started, dict) else None
            if isinstance(remote_id, str):
                with contextlib.suppress(Exception):
                    cancel = client.call(
                        methods["cancel_task"].server_url, "cancel_task", {"task_id": remote_id}, rid, remote.name
                    )
                    await asyncio.wait_for(asyncio.shield(cancel), 5.0)
            raise
        if isinstance(result, dict) and result.get("state") in ("failed", "rejected", "canceled"):
            raise RemoteError(str(result.get("message") or f"the remote task was {result['state']}"))
        return result


def choose_call(task: Task, message: Message, remote: RemoteAgent) -> tuple[RemoteMethod, dict[str, Any]]:
    """The remote method and its params for a task (see the mapping table)."""
    if any(isinstance(p, FilePart) for p in message.parts):
        raise TaskFailed("file parts cannot be sent to an ANP agent (its JSON-RPC params are JSON)")
    meta = {**task.metadata, **(message.metadata or {})}
    name, params = meta.get(METHOD_KEY), meta.get(PARAMS_KEY)
    data = [p.data for p in message.parts if isinstance(p, DataPart)]
    for d in data:
        if isinstance(d, dict) and isinstance(d.get("method"), str):
            name = name or d["method"]
            params = d.get("params", params) if params is None else params
    if name is None:
        if len(remote.methods) == 1:
            name = next(iter(remote.methods))
        elif "send_message" in remote.methods:  # another Interlace gateway
            name = "send_message"
        else:
            raise TaskFailed(
                f"the ANP agent has several methods ({', '.join(sorted(remote.methods))}); name one in the "
                f'message metadata {METHOD_KEY!r} or in a data part {{"method": ..., "params": {{...}}}}'
            )
    method = remote.methods.get(str(name))
    if method is None:
        raise TaskFailed(f"the ANP agent has no method {str(name)[:80]!r} (it has {', '.join(sorted(remote.methods))})")
    if params is not None:
        if not isinstance(params, dict):
            raise TaskFailed("params must be a JSON object")
        return method, dict(params)
    params = {}
    declared = {p.get("name"): p for p in method.params if isinstance(p, dict)}
    objects = [d for d in data if isinstance(d, dict) and "method" not in d]
    if objects:
        if ((declared.get("data") or {}).get("schema") or {}).get("type") == "object":
            params["data"] = objects[0]
        else:
            params.update(objects[0])
    text = "\n".join(p.text for p in message.parts if isinstance(p, TextPart))
    if text:
        target = method.string_param()
        if target is None and not params:
            raise TaskFailed(f"the method {method.name!r} takes no string parameter for the message text")
        if target is not None and target not in params:
            params[target] = text
    return method, params
