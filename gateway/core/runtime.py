"""The service layer every adapter calls: submit, continue, wait for, follow and cancel tasks.

Adapters translate their protocol into these calls and never touch the backend directly, so
task semantics (routing, transitions, cancel rules, ownership, metrics) live in one place.

Ownership: every task records the principal that submitted it (``Task.owner``). The task doors
take the caller (``caller=``, default ``SYSTEM``: the gateway itself), and a task the caller may
not see is reported exactly as a task that does not exist (``TaskNotFound``): existence is never
revealed. Listing is scoped the same way, and context ids are per owner. Adapters do not pass
``caller`` themselves: they act through ``Runtime.acting_for(principal)``, a view that binds it.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections import defaultdict
from collections.abc import AsyncIterator, Callable

from gateway.core import audit, tracing
from gateway.core.aio import wait_cancelled
from gateway.core.backends import (
    Backend,
    BackendError,
    BackendMisconfigured,
    BackendUnavailable,
    KeyValue,
    Limits,
    StoredEvent,
    TaskNotFound,
    open_backend,
)
from gateway.core.config import Config
from gateway.core.egress import Egress
from gateway.core.metrics import Metrics
from gateway.core.node_identity import node_identity
from gateway.core.policy import Action, Policy, PolicyFile, Target
from gateway.core.principal import SYSTEM, Principal
from gateway.core.quotas import Quotas, limits_of
from gateway.core.routing import CapabilityRouter
from registry.index import CapabilityQuery, Excluded, RouteResult
from registry.service import Registry, stream_of
from schemas import InvalidTransition, Message, Route, Task, TaskError, TaskState, tool_named
from schemas.agent_record import AgentRecord

log = logging.getLogger("interlace.runtime")


class UnknownAgent(TaskError):
    code = "unknown_agent"


class NotCancelable(TaskError):
    code = "not_cancelable"


class NotContinuable(TaskError):
    code = "not_continuable"


class NoMatch(TaskError):
    """No live agent passes the capability query; ``result.closest`` says what came near, or
    ``result.note`` why nothing did."""

    code = "no_match"

    def __init__(self, result: RouteResult) -> None:
        self.result = result
        super().__init__(result.note or "no registered agent matches the capability query")


class Runtime:
    def __init__(self, config: Config, backend: Backend | None = None) -> None:
        self.config = config
        self.node_id = config.node_id
        self.backend = backend or open_backend(
            config.redis_url,
            Limits(
                visibility_timeout_ms=config.visibility_timeout_ms,
                max_queue=config.max_queue,
                max_deliveries=config.max_deliveries,
                retention_s=config.retention_s,
            ),
        )
        self.metrics = Metrics()
        self.quotas = Quotas(limits_of(config))
        self.admission = config.effective_admission()
        self.identity = node_identity(config)  # the same key on every start (node_identity.py)
        # Every outbound connection follows it (gateway/core/egress.py); tests may replace it
        # (a resolver of their own) before the gateway starts.
        self.egress = Egress.from_config(config)
        self.registry = Registry(
            self.backend.records, config.network, skew_s=config.skew_s, max_lease_s=config.max_lease_s
        )
        self.capabilities = CapabilityRouter(self.registry, embeddings=config.embeddings)
        # The operator's policy (--policy FILE; a ValueError if it does not parse), reloaded while
        # running; ``policy`` is the one in force. A reload may change what each caller sees.
        self.policy_file = PolicyFile(config.policy) if config.policy else None
        if self.policy_file is not None:
            self.policy_file.subscribe(lambda policy: self.agents_changed())
        # Set by gateway.cluster: ``placement`` places a task on a stream among an agent's records
        # (local first, forwarding to the agent's home node, none when its home is down);
        # ``reachable`` says, starting nothing, whether a record's home is up.
        self.placement: Callable[[list[AgentRecord]], str | None] | None = None
        self.reachable: Callable[[AgentRecord], bool] | None = None
        self._agent_watchers: list[Callable[[], None]] = []
        self.registry.subscribe(lambda did, record: self.agents_changed())
        self._waiters: dict[str, list[asyncio.Future]] = defaultdict(list)
        self._feed: asyncio.Task | None = None
        self._stopped = False

    def acting_for(self, principal: Principal) -> ActingFor:
        """This runtime as ``principal`` uses it: every task door acts for them (see the module
        docstring); adapters take this for each request instead of the runtime itself."""
        return ActingFor(self, principal)

    # ---- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        try:
            await self.backend.check()
        except BackendMisconfigured as exc:
            log.error("the backend's configuration cannot work", extra={"error": str(exc)})
            raise
        await self.registry.start()
        self._feed = asyncio.create_task(self._follow_finished(), name="finished-feed")
        if self.policy_file is not None:
            self.policy_file.start()

    async def stop(self) -> None:
        self._stopped = True  # as well as cancel: redis-py may turn a cancelled read into an error
        if self.policy_file is not None:
            await self.policy_file.stop()
        if self._feed is not None:
            await wait_cancelled(self._feed)
        await self.registry.stop()
        await self.backend.close()

    @property
    def policy(self) -> Policy:
        """The policy in force (allow-all without --policy). Take it once per request, so that a
        list is filtered by one policy even when a reload lands meanwhile."""
        return self.policy_file.current if self.policy_file is not None else Policy.EMPTY

    async def ready(self) -> None:
        """Raise BackendUnavailable unless the bus answers promptly."""
        try:
            await asyncio.wait_for(self.backend.ping(), 2.0)
        except TimeoutError as exc:
            raise BackendUnavailable("bus did not answer within 2 s") from exc

    # ---- tasks ------------------------------------------------------------------------------

    def allows(self, caller: Principal, action: Action, target: Target) -> bool:
        """Whether the policy lets ``caller`` do ``action`` to ``target`` (the gateway's own work,
        ``SYSTEM``, is no caller's request and always may)."""
        return caller is SYSTEM or self.policy.allows(caller, action, target)

    def may_call(self, caller: Principal, record: AgentRecord) -> bool:
        """Whether ``caller`` may call (and so see) the agent of ``record``."""
        return self.allows(caller, Action.CALL, Target.of_record(record))

    def _check_tool(self, caller: Principal, records: list[AgentRecord], tool: str | None) -> None:
        """The tool of an MCP agent that a task names (or routes to by skill) is put to the policy
        as the MCP face puts a federated tool: one the caller may not call is unknown."""
        if tool is None or caller is SYSTEM or not self.policy.rules:
            return
        for record in records:
            target = Target.of_record(record, tool=tool, upstream=record.name)
            if record.endpoints.mcp and not self.allows(caller, Action.CALL, target):
                audit.record(caller, Action.CALL, f"{record.name}:{tool}", "denied")
                raise UnknownAgent(f"agent {record.name!r} has no tool {tool!r}")

    def _hidden(self, caller: Principal) -> set[str]:
        """DIDs of the live records ``caller`` may not call (none without a policy)."""
        if caller is SYSTEM or not self.policy.rules:
            return set()
        return {r.did for r in self.registry.live() if not self.may_call(caller, r)}

    async def resolve_agent(self, name_or_did: str, *, caller: Principal = SYSTEM) -> str:
        """The bus stream of the agent named (by name or DID) by the client. An agent the caller
        may not call is reported exactly as one that is not registered."""
        found = self.registry.resolve(name_or_did)
        records = [r for r in found if self.may_call(caller, r)]
        if found and not records:
            audit.record(caller, Action.CALL, name_or_did, "denied")
        if not records:
            raise UnknownAgent(f"no agent named {name_or_did!r} is registered")
        stream = self.placement(records) if self.placement is not None else stream_of(records[0])
        if stream is None:
            raise UnknownAgent(f"no agent named {name_or_did!r} is reachable: its home node is down")
        return stream

    def explain_route(self, query: CapabilityQuery, limit: int = 5, *, caller: Principal = SYSTEM) -> RouteResult:
        """The ranked candidates for ``query`` (or the closest near misses) among the agents
        ``caller`` may call: the others are neither candidates nor listed as near misses."""
        hidden = self._hidden(caller)
        if not hidden:
            return self.capabilities.route(query, limit=limit)
        query = query.model_copy(update={"exclude": [*query.exclude, *hidden]})
        result = self.capabilities.route(query, limit=limit)
        return result.model_copy(update={"closest": [c for c in result.closest if c.did not in hidden]})

    def route(self, query: CapabilityQuery, *, caller: Principal = SYSTEM) -> tuple[str, Route]:
        """The stream of the best live agent for ``query`` that ``caller`` may call; NoMatch
        lists the closest ones."""
        stream, route, _ = self._route(query, caller)
        return stream, route

    def _route(self, query: CapabilityQuery, caller: Principal) -> tuple[str, Route, AgentRecord]:
        result = self.explain_route(query, 5, caller=caller)
        missed: list[Excluded] = []
        for best in result.candidates:  # the first one still live and reachable
            record = self.registry.get(best.did)
            stream = None
            if record is not None:  # None: expired between the search and now
                stream = self.placement([record]) if self.placement is not None else stream_of(record)
            if stream is None:
                why, note = (
                    ("reachable", "its home node is down") if record is not None else ("live", "its record expired")
                )
                missed.append(
                    Excluded(
                        did=best.did,
                        agent=best.agent,
                        skill=best.skill,
                        skill_name=best.skill_name,
                        similarity=best.reasons.get("text_similarity"),
                        excluded_by=[why],
                        reasons={**best.reasons, why: note},
                    )
                )
                continue
            reason = f"best capability match (score {best.score:.3f})"
            return stream, Route(agent=stream, skill=best.skill, reason=reason), record
        # Matches that cannot be reached now are the closest ones, with why.
        raise NoMatch(result.model_copy(update={"candidates": [], "closest": missed}) if missed else result)

    async def submit(
        self,
        message: Message,
        *,
        agent: str | None = None,
        query: CapabilityQuery | None = None,
        context_id: str | None = None,
        metadata: dict | None = None,
        caller: Principal = SYSTEM,
    ) -> Task:
        """Accept a new task, owned by ``caller``, for ``agent`` (a name or DID) or for the best
        match of ``query``; it is stored and enqueued, or nothing happens (QuotaExceeded when
        the caller is at its quotas)."""
        with self.quotas.task(caller) as claim, tracing.span("invoke_agent", tracing.CLIENT, _INVOKE) as span:
            task, stream = await self._accept(message, agent, query, context_id, metadata, caller)
            claim.bind(task.id)
            if span.is_recording():
                span.update_name(f"invoke_agent {stream}")
                span.set_attributes(tracing.task_attributes(task))
        audit.record(caller, "call", stream, "ok", task.id)
        self.metrics.accepted.labels(stream).inc()
        self.capabilities.accepted(stream)
        log.info("task accepted", extra={"task_id": task.id, "agent": stream})
        return task

    async def _accept(
        self,
        message: Message,
        agent: str | None,
        query: CapabilityQuery | None,
        context_id: str | None,
        metadata: dict | None,
        caller: Principal,
    ) -> tuple[Task, str]:
        try:
            if agent is not None:
                stream = await self.resolve_agent(agent, caller=caller)
                route, records = Route(agent=stream, reason="named by the client"), self.registry.resolve(agent)
            elif query is not None:
                stream, route, record = self._route(query, caller)
                records = [record]
            else:
                raise ValueError("submit needs an agent or a capability query")
            self._check_tool(caller, records, tool_named(metadata, message.metadata) or route.skill)
            groups = sorted(caller.groups) or None
            task = Task(
                metadata=metadata or {}, route=route, owner=caller.id, owner_groups=groups, trace=tracing.carrier()
            )
            if context_id:
                task.context_id = context_id
            task.history.append(message.model_copy(update={"task_id": task.id, "context_id": task.context_id}))
            await self.backend.tasks.submit(task, stream, self.node_id)
        except (TaskError, BackendError) as exc:
            audit.record(caller, "call", agent or (query.text if query else None), exc.code)
            raise
        return task, stream

    async def continue_task(
        self, task_id: str, message: Message, *, caller: Principal = SYSTEM
    ) -> tuple[Task, str | None]:
        """A follow-up message resumes a task that waits for input (input-required).

        Returns the resumed task and the id of its last event before the follow-up: whoever
        follows the task from there sees only what the follow-up caused, never the old
        input-required event (which is final, and would end the follow at once).

        Traces: the follow-up is an ``invoke_agent`` span of the follow-up request's own trace,
        linked to the task's first one (``Task.trace``), and becomes the task's trace: the worker's
        run for the follow-up continues it.
        """
        task = await self.get(task_id, caller=caller, action="call")
        if not task.state.interrupted or task.route is None:
            raise NotContinuable(
                f"task {task_id} is {task.state.value}; only a task that waits for input takes a follow-up"
            )
        tool = tool_named(task.metadata, message.metadata) or task.route.skill
        self._check_tool(caller, self.registry.resolve(task.route.agent), tool)
        agent = task.route.agent
        with (
            self.quotas.task(caller) as claim,
            tracing.span(f"invoke_agent {agent}", tracing.CLIENT, _INVOKE, link=task.trace) as span,
        ):
            if span.is_recording():
                span.set_attributes(tracing.task_attributes(task))
            after = await self.last_event_id(task.id)
            message = message.model_copy(update={"task_id": task.id, "context_id": task.context_id})
            resume = task.status_event(TaskState.WORKING, message)
            resume.trace = tracing.carrier()
            task, _ = await self.backend.tasks.apply(task.id, resume)
            await self.backend.tasks.requeue(task, agent)
            claim.bind(task.id)
        audit.record(caller, "call", agent, "ok", task.id)
        return task, after

    def sees(self, caller: Principal, task: Task) -> bool:
        """Whether ``caller`` may see (and so act on) ``task``: its owner, or an admin."""
        return task.owner == caller.id or caller.is_admin(self.config.admin_group)

    async def _check_sees(self, task_id: str, caller: Principal) -> None:
        """TaskNotFound unless ``caller`` may see the task (no read at all for SYSTEM)."""
        if caller is not SYSTEM:
            await self.get(task_id, caller=caller)

    async def get(self, task_id: str, *, caller: Principal = SYSTEM, action: str = "read") -> Task:
        task = await self.backend.tasks.get(task_id)
        if task is not None and not self.sees(caller, task):
            audit.record(caller, action, task.route.agent if task.route else None, "not_found", task_id)
            task = None
        elif task is not None and not self.allows(caller, Action(action), _task_target(task)):
            audit.record(caller, action, task.route.agent if task.route else None, "denied", task_id)
            task = None
        if task is None:
            raise TaskNotFound(f"task {task_id} not found")
        return task

    async def cancel(self, task_id: str, *, caller: Principal = SYSTEM) -> Task:
        task = await self.get(task_id, caller=caller, action="cancel")
        if task.state.terminal:
            raise NotCancelable(f"task {task_id} is already {task.state.value}")
        try:
            task, _ = await self.backend.tasks.apply(task_id, task.status_event(TaskState.CANCELED))
        except InvalidTransition:
            current = await self.get(task_id)
            raise NotCancelable(f"task {task_id} is already {current.state.value}") from None
        log.info("task canceled", extra={"task_id": task_id})
        audit.record(caller, "cancel", task.route.agent if task.route else None, "ok", task_id)
        return task

    async def wait(self, task_id: str, timeout_s: float, *, caller: Principal = SYSTEM) -> Task:
        """The task once final (terminal or waiting for input), or as it is when time runs out."""
        fut = asyncio.get_running_loop().create_future()
        self._waiters[task_id].append(fut)
        try:
            task = await self.get(task_id, caller=caller)
            if not (task.state.terminal or task.state.interrupted):
                try:
                    async with asyncio.timeout(timeout_s):
                        await asyncio.shield(fut)
                except TimeoutError:
                    pass
                task = await self.get(task_id)
            return task
        finally:
            waiters = self._waiters.get(task_id, [])
            if fut in waiters:
                waiters.remove(fut)
            if not waiters:
                self._waiters.pop(task_id, None)

    def _owner_filter(self, caller: Principal) -> str | None:
        """Whose tasks ``caller`` lists: its own, or everyone's (None) for an admin."""
        return None if caller.is_admin(self.config.admin_group) else caller.id

    async def list_tasks(
        self,
        context_id: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
        *,
        state: TaskState | None = None,
        caller: Principal = SYSTEM,
    ) -> tuple[list[Task], str | None]:
        """The caller's tasks (every task, for an admin) newest first, of one context and in one
        state when given, a page at a time (from the backend's indexes); the cursor is None on
        the last page. With a policy, the tasks the caller may not read are left out of a page."""
        tasks, cursor = await self.backend.tasks.list(context_id, limit, cursor, self._owner_filter(caller), state)
        if self._policy_filters(caller):
            tasks = [t for t in tasks if self.allows(caller, Action.READ, _task_target(t))]
        return tasks, cursor

    async def count_tasks(
        self, context_id: str | None = None, *, state: TaskState | None = None, caller: Principal = SYSTEM
    ) -> int | None:
        """How many tasks ``list_tasks`` pages through; None when a policy may leave some out
        (then only reading them tells)."""
        if self._policy_filters(caller):
            return None
        return await self.backend.tasks.count(context_id, self._owner_filter(caller), state)

    def _policy_filters(self, caller: Principal) -> bool:
        return caller is not SYSTEM and bool(self.policy.rules)

    async def read_events(
        self, task_id: str, after: str | None = None, *, caller: Principal = SYSTEM
    ) -> list[StoredEvent]:
        """The task's stored events after ``after`` (None: from the start), without waiting."""
        await self._check_sees(task_id, caller)
        return await self.backend.tasks.read_events(task_id, after, 0)

    async def follow(
        self, task_id: str, after: str | None = None, *, caller: Principal = SYSTEM
    ) -> AsyncIterator[StoredEvent]:
        """The task's events after ``after`` as they happen, until a final one."""
        await self._check_sees(task_id, caller)
        async for stored in self.backend.events(task_id, after):
            yield stored

    async def last_event_id(self, task_id: str, *, caller: Principal = SYSTEM) -> str | None:
        """The id of the task's newest event, to follow only what happens from now on."""
        await self._check_sees(task_id, caller)
        last = None
        while True:
            batch = await self.read_events(task_id, last)
            if not batch:
                return last
            last = batch[-1].event_id

    async def measure_queue_depths(self) -> None:
        """Set the queue-depth gauge of every live agent's stream from the bus (its metrics are read
        at scrape time: ``/metrics`` and the console's sampler). Raises BackendUnavailable."""
        for agent in {stream_of(r) for r in self.registry.live()}:
            self.metrics.queue_depth.labels(agent).set(await self.backend.bus.depth(agent))

    @property
    def kv(self) -> KeyValue:
        """The shared key/value store, for adapters' own state (sessions, push configs, nonces)."""
        return self.backend.kv

    @property
    def shared_state(self) -> bool:
        """Whether other gateway nodes see the same tasks and key/value state (Redis)."""
        return self.backend.shared

    def routable(self, name_or_did: str | None = None, *, caller: Principal = SYSTEM) -> list[AgentRecord]:
        """Live records (all, or one agent's by name or DID) a task from ``caller`` can be routed
        to now: not those whose home node is down, nor those the caller may not call."""
        records = self.registry.live() if name_or_did is None else self.registry.resolve(name_or_did)
        return [
            r
            for r in records
            if (self.reachable is None or self.reachable(r)) and (caller is SYSTEM or self.may_call(caller, r))
        ]

    async def known_agents(self, *, caller: Principal = SYSTEM) -> list[str]:
        """Names of the agents ``caller`` can send a task to now (every face lists these)."""
        return sorted({r.name for r in self.routable(caller=caller)})

    def watch_agents(self, listener: Callable[[], None]) -> None:
        """Call ``listener()`` whenever ``known_agents()`` may have changed."""
        self._agent_watchers.append(listener)

    def agents_changed(self) -> None:
        """Signal watchers: a record changed, or a node went down or came back (the cluster)."""
        for listener in self._agent_watchers:
            try:
                listener()
            except Exception:
                log.exception("agent watcher failed")

    async def _follow_finished(self) -> None:
        """One reader of the 'finished' feed per node: wakes waiters and feeds the metrics."""
        cursor, backoff = None, 0.1
        while not self._stopped:
            try:
                batch, cursor = await self.backend.tasks.read_finished(cursor, 1_000)
                backoff = 0.1
            except BackendUnavailable:
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            for fin in batch:
                self.quotas.task_final(fin.task_id)
                if fin.accepted_by == self.node_id:
                    seconds = self.metrics.finished(fin.agent, fin.state, fin.created_at)
                    self.capabilities.finished(fin.agent, seconds)
                for fut in self._waiters.get(fin.task_id, []):
                    if not fut.done():
                        fut.set_result(fin.state)


# The runtime's span of a submission (GenAI semantic conventions: invoke_agent; a CLIENT span, as
# the agent runs elsewhere: a worker or a connector takes the task from the bus).
_INVOKE = {"gen_ai.operation.name": "invoke_agent", "gen_ai.provider.name": "interlace"}


def _task_target(task: Task) -> Target:
    """What the policy judges a task by: the agent it was routed to (its stream's name)."""
    return Target(agent=task.route.agent if task.route else None)


class ActingFor:
    """The runtime's doors bound to one caller: ``submit`` makes them the owner, and every door
    that names a task or lists tasks sees only what the caller may see. Everything else (kv,
    config, registry, metrics, ...) is the runtime's own, so an adapter uses this as a Runtime."""

    def __init__(self, runtime: Runtime, principal: Principal) -> None:
        self.runtime, self.principal = runtime, principal

    def __getattr__(self, name: str):
        return getattr(self.runtime, name)

    async def submit(self, message: Message, **how) -> Task:
        return await self.runtime.submit(message, caller=self.principal, **how)

    def allows(self, action: Action, target: Target) -> bool:
        return self.runtime.allows(self.principal, action, target)

    async def resolve_agent(self, name_or_did: str) -> str:
        return await self.runtime.resolve_agent(name_or_did, caller=self.principal)

    def route(self, query: CapabilityQuery) -> tuple[str, Route]:
        return self.runtime.route(query, caller=self.principal)

    def explain_route(self, query: CapabilityQuery, limit: int = 5) -> RouteResult:
        return self.runtime.explain_route(query, limit, caller=self.principal)

    def routable(self, name_or_did: str | None = None) -> list[AgentRecord]:
        return self.runtime.routable(name_or_did, caller=self.principal)

    async def known_agents(self) -> list[str]:
        return await self.runtime.known_agents(caller=self.principal)

    async def continue_task(self, task_id: str, message: Message) -> tuple[Task, str | None]:
        return await self.runtime.continue_task(task_id, message, caller=self.principal)

    async def get(self, task_id: str) -> Task:
        return await self.runtime.get(task_id, caller=self.principal)

    async def cancel(self, task_id: str) -> Task:
        return await self.runtime.cancel(task_id, caller=self.principal)

    async def wait(self, task_id: str, timeout_s: float) -> Task:
        return await self.runtime.wait(task_id, timeout_s, caller=self.principal)

    async def list_tasks(
        self,
        context_id: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
        *,
        state: TaskState | None = None,
    ) -> tuple[list[Task], str | None]:
        return await self.runtime.list_tasks(context_id, limit, cursor, state=state, caller=self.principal)

    async def count_tasks(self, context_id: str | None = None, *, state: TaskState | None = None) -> int | None:
        return await self.runtime.count_tasks(context_id, state=state, caller=self.principal)

    async def read_events(self, task_id: str, after: str | None = None) -> list[StoredEvent]:
        return await self.runtime.read_events(task_id, after, caller=self.principal)

    def follow(self, task_id: str, after: str | None = None) -> AsyncIterator[StoredEvent]:
        return self.runtime.follow(task_id, after, caller=self.principal)

    async def last_event_id(self, task_id: str) -> str | None:
        return await self.runtime.last_event_id(task_id, caller=self.principal)

    def open_stream(self) -> Callable[[], None]:
        """Count an event stream the caller opens (QuotaExceeded at its quota); returns the call
        that closes it. Take it before anything the stream is for happens."""
        return self.runtime.quotas.stream(self.principal)

    def private_key(self, key: str) -> str:
        """``key`` in the caller's own namespace of the key/value store (an adapter's per-caller
        state, such as ACP sessions: another caller naming the same key reaches another entry)."""
        return f"{key}@{hashlib.sha256(self.principal.id.encode()).hexdigest()[:32]}"
