"""The A2A operations, independent of binding: each takes a parsed request and returns wire data.

Both bindings (JSON-RPC and HTTP+JSON) and both protocol versions call these; the dialect in
``A2ACall`` (one request) decides the wire shapes. State comes from the Runtime's task store, so any gateway node
answers for any task.

Routing rule for a message sent to the gateway-level endpoint (``/a2a``, ``/a2a/rest``) without
``taskId``: the agent named by ``metadata.agent`` of the request, else ``metadata.agent`` of the
message, else the agent whose skills best match the message's text (capability routing,
``ActingFor.route``, among the agents the caller may call); a message that names no agent and
whose text matches none (or that has no text) is refused with ``InvalidParamsError``, never
given to some agent by default (a record named to sort first would otherwise receive every
such message). A per-agent endpoint (``/a2a/agents/{name}``) always routes to its agent and
only sees that agent's tasks. A message with ``taskId`` continues that task (it must be waiting
for input); ``contextId`` groups tasks (it is kept as given, or a new one is made).

Callers: with caller authentication configured (``rt.config``: an issuer and/or API keys) the
gateway's middleware has authenticated every call before it gets here (``A2ACall.principal``);
cards then declare the schemes (``card.security_declaration``) and ``capabilities.extendedAgentCard``,
and ``GetExtendedAgentCard`` answers any authenticated caller (an anonymous one, let in by
``--allow-anonymous``, gets 401). Without authentication configured the extended card is served
only when ``A2AOptions.extended_card`` is set, to anyone, as before.

Policy: every card (public or extended) lists as skills only the agents its caller may call
(``ActingFor.known_agents``), and an agent the caller may not call is unknown on every door: its
card is 404, its extended card and a message sent to it get the error an unregistered agent gets
(``InvalidParamsError``), and a message that names no agent goes only to one the caller may call.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import functools
import logging
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from weakref import WeakKeyDictionary

import httpx

from gateway.core import __version__
from gateway.core.backends import BackendUnavailable, QueueFull, TaskNotFound
from gateway.core.principal import LOCAL, Principal
from gateway.core.quotas import QuotaExceeded
from gateway.core.runtime import ActingFor, NoMatch, NotCancelable, NotContinuable, Runtime, UnknownAgent
from gateway.core.settings import load_settings
from protocols.a2a import card as cards
from protocols.a2a.errors import (
    A2AError,
    CallerRefusedError,
    ContentTypeNotSupportedError,
    ExtendedAgentCardNotConfiguredError,
    InternalError,
    InvalidParamsError,
    PushNotificationNotSupportedError,
    RateLimitedError,
    TaskNotCancelableError,
    TaskNotFoundError,
    UnsupportedOperationError,
)
from protocols.a2a.push import PushDispatcher, PushPolicy, PushStore
from protocols.a2a.wire import Dialect, PushConfig, SendParams, boolean, direct_reply, get, integer, string
from registry.identity import Identity
from registry.index import CapabilityQuery
from schemas import STREAM_HINT, DataPart, Message, Task, TaskState, TaskStatusUpdate, TextPart

log = logging.getLogger("interlace.a2a")

DEFAULT_INPUT_MODES = [
    "text/plain",
    "text/markdown",
    "application/json",
    "application/octet-stream",
    "image/png",
    "image/jpeg",
    "image/webp",
    "application/pdf",
    "audio/wav",
    "audio/mpeg",
]
DEFAULT_OUTPUT_MODES = ["text/plain", "application/json", "application/octet-stream"]
MAX_LIST_SCAN = 10_000


class Unavailable(A2AError):
    code, http, status, reason, default = -32603, 503, "UNAVAILABLE", "UNAVAILABLE", "Service temporarily unavailable"


@dataclass
class A2AOptions:
    """Settings of the A2A face (``routes(options)``/``mount(app, options)``); ``from_env`` also reads
    the scalar ones from ``INTERLACE_A2A_<FIELD>``."""

    public_url: str | None = None  # base URL clients reach the gateway at (behind a proxy); else from the request
    identity: Identity | None = None  # the card-signing key; default: the node's key (runtime.identity)
    name: str = "Interlace gateway"
    description: str = "Agent interoperability gateway: routes A2A tasks to the agents it knows"
    card_max_age_s: int = 300
    card_v03_compat: bool = False  # list 0.3 interfaces and the 0.3 top-level card fields
    input_modes: list[str] = field(default_factory=lambda: list(DEFAULT_INPUT_MODES))
    output_modes: list[str] = field(default_factory=lambda: list(DEFAULT_OUTPUT_MODES))
    push: PushPolicy = field(default_factory=PushPolicy)
    extended_card: dict[str, Any] | None = None  # extra card fields served by GetExtendedAgentCard
    blocking_timeout_s: float | None = None  # how long a blocking SendMessage waits; default config.max_wait_timeout_s
    provider: dict[str, str] | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> A2AOptions:
        return load_settings(cls, "INTERLACE_A2A_", overrides, env)


@dataclass
class A2ACall:
    """One request: the runtime, the agent scope (None: the gateway), the dialect, public base URL and
    caller (``LOCAL`` when the gateway authenticates nobody)."""

    runtime: Runtime
    agent: str | None
    dialect: Dialect
    base: str
    principal: Principal = LOCAL

    @functools.cached_property
    def rt(self) -> ActingFor:
        """The runtime acting for the caller: tasks are the caller's own (``Runtime.acting_for``)."""
        return self.runtime.acting_for(self.principal)


class _NodeState:
    def __init__(self, rt: Runtime, policy: PushPolicy) -> None:
        self.http = rt.egress.httpx_client(limits=httpx.Limits(max_connections=64))  # webhooks: the egress policy
        self.store = PushStore(rt.kv, rt.config.retention_s)
        self.dispatcher = PushDispatcher(rt, self.store, policy, self.http, rt.config.sse_max_s)

    async def close(self) -> None:
        await self.dispatcher.close()
        await self.http.aclose()


class A2AService:
    def __init__(self, options: A2AOptions) -> None:
        self.options = options
        self.cards = cards.CardCache(options.card_max_age_s)
        self._nodes: WeakKeyDictionary[Runtime, _NodeState] = WeakKeyDictionary()

    def identity(self, rt: Runtime) -> Identity:
        """The key cards are signed with: the configured one, else the gateway node's own."""
        return self.options.identity or rt.identity

    def node(self, rt: Runtime) -> _NodeState:
        state = self._nodes.get(rt)
        if state is None:
            state = self._nodes[rt] = _NodeState(rt, self.options.push)
        return state

    async def close(self) -> None:
        for state in list(self._nodes.values()):
            await state.close()
        self._nodes.clear()

    # ---- helpers -----------------------------------------------------------------------------

    async def _visible(self, call: A2ACall, task_id: Any) -> Task:
        if not isinstance(task_id, str) or not task_id:
            raise InvalidParamsError("a task id is required")
        try:
            task = await call.rt.get(task_id)
        except TaskNotFound:
            raise TaskNotFoundError(f"Task {task_id} not found") from None
        if call.agent is not None and (task.route is None or task.route.agent != call.agent):
            raise TaskNotFoundError(f"Task {task_id} not found")
        return task

    def _route(self, call: A2ACall, p: SendParams) -> tuple[str | None, CapabilityQuery | None]:
        """The agent the message goes to (named), or the capability query that picks it."""
        if call.agent is not None:
            return call.agent, None
        named = (p.metadata or {}).get("agent") or (p.message.metadata or {}).get("agent")
        if named:
            if not isinstance(named, str):
                raise InvalidParamsError("metadata.agent must be a string")
            return named, None
        text = " ".join(part.text for part in p.message.parts if isinstance(part, TextPart)).strip()
        if not text:
            raise InvalidParamsError(
                "the message names no agent and has no text to route it by: name one in metadata.agent"
            )
        return None, CapabilityQuery(text=text[:2048])

    def _check_modes(self, message: Message) -> None:
        for part in message.parts:
            if isinstance(part, TextPart):
                media = "text/plain"
            elif isinstance(part, DataPart):
                media = "application/json"
            else:
                media = part.media_type or "application/octet-stream"
            if not _mode_accepted(media, self.options.input_modes):
                raise ContentTypeNotSupportedError(
                    f"media type {media!r} is not accepted; accepted: {', '.join(self.options.input_modes)}"
                )

    def _blocking_timeout(self, rt: Runtime) -> float:
        return self.options.blocking_timeout_s or rt.config.max_wait_timeout_s

    # ---- send / stream -----------------------------------------------------------------------

    async def _accept(self, call: A2ACall, p: SendParams, streaming: bool = False) -> tuple[Task, str | None]:
        rt = call.rt
        self._check_modes(p.message)
        if p.push is not None:
            if not self.options.push.enabled:
                raise PushNotificationNotSupportedError()
            await self.options.push.check_url(p.push.url, call.runtime.egress)
        msg = p.message
        if msg.task_id:
            task = await self._visible(call, msg.task_id)
            if task.state.terminal:
                raise UnsupportedOperationError(f"Task {task.id} is in terminal state {task.state.value}")
            if not task.state.interrupted:
                raise UnsupportedOperationError(
                    f"Task {task.id} is {task.state.value}; only a task waiting for input takes a follow-up message"
                )
            if msg.context_id and msg.context_id != task.context_id:
                raise InvalidParamsError(
                    f"message.contextId {msg.context_id} does not match the task's context {task.context_id}"
                )
            try:
                task, after = await rt.continue_task(task.id, msg)
            except NotContinuable as exc:
                raise UnsupportedOperationError(str(exc)) from None
        else:
            agent, query = self._route(call, p)
            try:
                metadata = dict(p.metadata or {})
                if streaming or not p.blocking or p.push is not None:
                    metadata[STREAM_HINT] = True  # an outbound connector streams from its agent only then
                task = await rt.submit(msg, agent=agent, query=query, context_id=msg.context_id, metadata=metadata)
            except UnknownAgent as exc:
                raise InvalidParamsError(str(exc)) from None
            except NoMatch:
                raise InvalidParamsError(
                    "the message names no agent (metadata.agent) and no agent's skills match its text"
                ) from None
            after = None
        if p.push is not None:
            p.push.task_id = task.id
            await self.node(call.runtime).store.put(p.push, call.dialect.version)
            await self.node(call.runtime).dispatcher.watch(task.id, after)
        return task, after

    async def send(self, call: A2ACall, params: Any) -> dict[str, Any]:
        p = call.dialect.send_params_in(params)
        task, _ = await self._accept(call, p)
        if p.blocking:
            task = await call.rt.wait(task.id, self._blocking_timeout(call.rt))
        if task.state is TaskState.COMPLETED and not task.artifacts and direct_reply(task.status.message):
            reply = task.status.message.model_copy(update={"task_id": None})  # type: ignore[union-attr]
            return call.dialect.send_result(reply)
        return call.dialect.send_result(task, p.history_length)

    async def open_stream(self, call: A2ACall, params: Any) -> AsyncIterator[Any]:
        """Accept the message (errors raise here, before any byte is sent), then stream its events."""
        p = call.dialect.send_params_in(params)
        task, after = await self._accept(call, p, streaming=True)
        return self._events(call, task, after, p.history_length)

    async def _events(
        self, call: A2ACall, task: Task, after: str | None, history_length: int | None
    ) -> AsyncIterator[Any]:
        yield call.dialect.stream_task(task, history_length)
        async for stored in call.rt.follow(task.id, after):
            yield call.dialect.stream_event(stored.event)

    async def open_subscribe(self, call: A2ACall, task_id: Any) -> AsyncIterator[Any]:
        task = await self._visible(call, task_id)
        if task.state.terminal:
            raise UnsupportedOperationError(f"Task {task.id} is in terminal state {task.state.value}")
        after = await call.rt.last_event_id(task.id)
        task = await call.rt.get(task.id)  # newer than `after`: an event may repeat, none is lost
        return self._subscription(call, task, after)

    async def _subscription(self, call: A2ACall, task: Task, after: str | None) -> AsyncIterator[Any]:
        """The task, then its events until it is terminal. Unlike SendStreamingMessage, a
        subscription stays open through input-required: the follow-up may come from anyone."""
        yield call.dialect.stream_task(task)
        if task.state.terminal:
            return
        while True:
            async for stored in call.rt.follow(task.id, after):
                after = stored.event_id
                yield call.dialect.stream_event(stored.event)
                if isinstance(stored.event, TaskStatusUpdate) and stored.event.status.state.terminal:
                    return

    # ---- tasks -------------------------------------------------------------------------------

    async def get_task(self, call: A2ACall, task_id: Any, history_length: int | None) -> dict[str, Any]:
        task = await self._visible(call, task_id)
        return call.dialect.task_out(task, history_length)

    async def cancel(self, call: A2ACall, task_id: Any) -> dict[str, Any]:
        task = await self._visible(call, task_id)
        try:
            task = await call.rt.cancel(task.id)
        except NotCancelable:
            current = await call.rt.get(task.id)
            raise TaskNotCancelableError(f"Task {task.id} is in terminal state {current.state.value}") from None
        return call.dialect.task_out(task)

    async def list_tasks(self, call: A2ACall, q: dict[str, Any]) -> dict[str, Any]:
        """The caller's tasks, newest first. Context and status are the backend's indexes, so a
        page costs its length; only the filters no index serves (a per-agent endpoint,
        ``statusTimestampAfter``, a policy that hides some tasks) read up to MAX_LIST_SCAN tasks."""
        d = call.dialect
        context_id = string(q, "contextId", "params")
        status = d.state_in(get(q, "status"), "params.status") if get(q, "status") else None
        page_size = integer(q, "pageSize", "params", 1, 100) or 50
        history_length = integer(q, "historyLength", "params")
        include_artifacts = bool(boolean(q, "includeArtifacts", "params"))
        after_ts = _timestamp(get(q, "statusTimestampAfter"))
        start = _page_offset(string(q, "pageToken", "params"))
        total = None
        if call.agent is None and after_ts is None:
            total = await call.rt.count_tasks(context_id, state=status)
        if total is not None:
            matched, _ = await call.rt.list_tasks(context_id, page_size, str(start), state=status)
        else:
            matched, total = await self._scan(call, context_id, status, after_ts, start, page_size)
        more = total > start + page_size
        return {
            "tasks": [d.task_out(t, history_length, include_artifacts) for t in matched],
            "nextPageToken": _page_token(start + page_size) if more else "",
            "pageSize": page_size,
            "totalSize": total,
        }

    @staticmethod
    async def _scan(
        call: A2ACall, context_id: str | None, status: TaskState | None, after_ts: float | None, start: int, size: int
    ) -> tuple[list[Task], int]:
        """The page at ``start`` of the tasks that pass the filters no index serves, and how many
        pass, among the first MAX_LIST_SCAN of the indexed ones."""
        matched: list[Task] = []
        total, cursor, scanned = 0, None, 0
        while scanned < MAX_LIST_SCAN:
            batch, cursor = await call.rt.list_tasks(context_id, 200, cursor, state=status)
            scanned += len(batch)
            for t in batch:
                if call.agent is not None and (t.route is None or t.route.agent != call.agent):
                    continue
                if after_ts is not None and (_timestamp(t.status.timestamp) or 0) <= after_ts:
                    continue
                if start <= total < start + size:
                    matched.append(t)
                total += 1
            if cursor is None:
                break
        return matched, total

    # ---- push notification configs -----------------------------------------------------------

    def _push_enabled(self) -> None:
        if not self.options.push.enabled:
            raise PushNotificationNotSupportedError()

    async def push_create(self, call: A2ACall, cfg: PushConfig) -> Any:
        self._push_enabled()
        task = await self._visible(call, cfg.task_id)
        await self.options.push.check_url(cfg.url, call.runtime.egress)
        node = self.node(call.runtime)
        cfg = await node.store.put(cfg, call.dialect.version)
        if not task.state.terminal:
            await node.dispatcher.watch(task.id, await call.rt.last_event_id(task.id))
        return call.dialect.push_out(cfg)

    async def push_get(self, call: A2ACall, task_id: str, config_id: str | None) -> Any:
        self._push_enabled()
        await self._visible(call, task_id)
        cfg = await self.node(call.runtime).store.get(task_id, config_id or task_id)
        if cfg is None:
            raise TaskNotFoundError(f"push notification config {config_id or task_id} not found for task {task_id}")
        return call.dialect.push_out(cfg)

    async def push_list(self, call: A2ACall, task_id: str) -> Any:
        self._push_enabled()
        await self._visible(call, task_id)
        return call.dialect.push_list_out([c for c, _ in await self.node(call.runtime).store.list(task_id)])

    async def push_delete(self, call: A2ACall, task_id: str, config_id: str | None) -> None:
        self._push_enabled()
        await self._visible(call, task_id)
        await self.node(call.runtime).store.delete(task_id, config_id or task_id)

    # ---- cards -------------------------------------------------------------------------------

    def agent_urls(self, base: str, agent: str | None) -> tuple[str, str]:
        root = f"{base}/a2a" if agent is None else f"{base}/a2a/agents/{agent}"
        return root, f"{root}/rest"

    def extended_card_available(self, rt: Runtime) -> bool:
        """Whether cards declare ``capabilities.extendedAgentCard``: configured, or callers authenticate."""
        return self.options.extended_card is not None or _authenticates(rt)

    async def card(self, call: A2ACall, *, extended: bool = False, legacy: bool | None = None) -> dict[str, Any]:
        o = self.options
        rpc_url, rest_url = self.agent_urls(call.base, call.agent)
        authenticates = _authenticates(call.rt)
        if extended:
            if authenticates and call.principal.kind == "anonymous":
                raise CallerRefusedError(401, "the extended agent card needs an authenticated caller")
            if not authenticates and o.extended_card is None:
                raise ExtendedAgentCardNotConfiguredError()
        if call.agent is None:
            skills = [cards.skill_for_agent(a) for a in await call.rt.known_agents()]
            name, description, version = o.name, o.description, __version__
        elif not await self.agent_exists(call.rt, call.agent):  # unknown, or not the caller's to call
            raise UnknownAgent(f"no agent named {call.agent!r} is registered")
        else:
            skills = [cards.skill_for_agent(call.agent)]
            name, description, version = call.agent, f"The agent {call.agent!r}, reached through {o.name}", __version__
        card = cards.build_card(
            name=name,
            description=description,
            version=version,
            rpc_url=rpc_url,
            rest_url=rest_url,
            skills=skills,
            input_modes=o.input_modes,
            output_modes=o.output_modes,
            streaming=True,
            push=o.push.enabled,
            extended=self.extended_card_available(call.rt),
            v03=o.card_v03_compat,
            provider=o.provider,
        )
        if authenticates:
            card.update(cards.security_declaration(call.rt.config.auth_issuer, bool(call.rt.config.api_keys)))
        if extended and o.extended_card is not None:
            card = {**card, **o.extended_card}
        signed = self.cards.signed(card, self.identity(call.rt), f"{call.base}/a2a/jwks.json")
        if o.card_v03_compat if legacy is None else legacy:
            signed = cards.add_legacy_fields(signed, rpc_url, rest_url)
        return signed

    async def agent_exists(self, rt: Runtime, agent: str) -> bool:
        return agent in await rt.known_agents()


def _authenticates(rt: Runtime) -> bool:
    """Whether the gateway authenticates callers (the same settings that install its middleware)."""
    return bool(rt.config.auth_issuer or rt.config.api_keys)


def _mode_accepted(media: str, accepted: list[str]) -> bool:
    media = media.split(";")[0].strip().lower()
    major = media.split("/")[0]
    for mode in accepted:
        mode = mode.lower()
        if mode in (media, "*/*", "*", f"{major}/*") or (mode == "text" and major == "text"):
            return True
    return False


def _timestamp(raw: Any) -> float | None:
    if raw in (None, ""):
        return None
    if not isinstance(raw, str):
        raise InvalidParamsError("statusTimestampAfter must be an RFC 3339 timestamp")
    try:
        return datetime.fromisoformat(raw.replace("Z", "+00:00")).timestamp()
    except ValueError:
        raise InvalidParamsError("statusTimestampAfter must be an RFC 3339 timestamp") from None


def _page_token(offset: int) -> str:
    return base64.urlsafe_b64encode(f"o:{offset}".encode()).decode().rstrip("=")


def _page_offset(token: str | None) -> int:
    if not token:
        return 0
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
        if raw.startswith("o:") and raw[2:].isdigit():
            return int(raw[2:])
    except (binascii.Error, UnicodeDecodeError, ValueError):
        pass
    raise InvalidParamsError("pageToken is not valid")


def map_runtime_error(exc: Exception) -> A2AError:
    """Typed runtime/backend errors as A2A errors; anything else is an internal error (logged)."""
    if isinstance(exc, A2AError):
        return exc
    if isinstance(exc, TaskNotFound):
        return TaskNotFoundError(str(exc))
    if isinstance(exc, QuotaExceeded):
        return RateLimitedError(str(exc), exc.retry_after)
    if isinstance(exc, (BackendUnavailable, QueueFull)):
        return Unavailable(str(exc))
    if isinstance(exc, UnknownAgent):
        return InvalidParamsError(str(exc))
    if isinstance(exc, asyncio.TimeoutError):
        return Unavailable("the request timed out")
    log.error("unhandled error in the A2A adapter", exc_info=exc)
    return InternalError("internal error")
