"""MCP tasks over canonical tasks: the ``io.modelcontextprotocol/tasks`` extension for 2026-07-28
clients and the experimental tasks utility for 2025-11-25 sessions.

Which text applies (SEP-2663's compatibility table): a 2026-07-28 request is served by the
extension; a session that negotiated 2025-11-25 by that revision's tasks utility (the extension
"is not defined" there, so a session declaring it is served as if it declared nothing); older
sessions have no tasks (a ``task`` parameter is ignored, ``tasks/*`` is -32601).

Which calls become tasks (the server decides, per call; ``plan``):

- a tool of an agent behind the gateway (an A2A, ACP, ANP or MCP agent, a worker, a model):
  ``taskSupport`` optional. Its task IS the canonical task (``rt.submit``): the MCP task id is
  the canonical id, so the same task is visible through every protocol door, owned by the caller.
- a federated upstream's tool whose definition says ``execution.taskSupport`` optional or
  required: the gateway runs the plain call upstream as a task of its own (kept in the shared
  key/value store, ``mcp:t:{id}``), so the upstream need not know tasks. Its elicitation,
  sampling and roots requests become the task's ``inputRequests``. Upstreams' own task
  surfaces are not relayed (one task model for the client, whatever the upstream speaks).
- anything else (the meta tools, an upstream tool without task support) runs synchronously.

A 2026-07-28 ``tools/call`` becomes a task when its envelope declares the extension (never
otherwise; a ``task`` parameter is ignored); a tool that requires a task, called without the
extension, gets -32021 with ``data.requiredCapabilities.extensions``. A 2025-11-25 call becomes a
task when it carries ``params.task`` (``ttl`` an integer >= 0 in ms, else -32602); a required-task
tool called without it, or a forbidden one with it, gets -32601 (that revision's text).

Mapping (canonical -> MCP status; ``statusMessage`` is the canonical status message's text):

| canonical | 2026-07-28 extension | 2025-11-25 |
| --- | --- | --- |
| submitted, working | ``working`` | ``working`` |
| input-required, auth-required | ``input_required``: an elicitation form (*1) | ``input_required`` (*2) |
| completed | ``completed``, ``result`` = what the sync call returns | ``completed`` |
| failed, rejected | ``completed``, ``result.isError`` (*3) | ``failed`` (*3) |
| canceled | ``cancelled`` | ``cancelled`` |

(*1) one ``elicitation/create`` (form, a string ``message``) asking the agent's question, key
``q-<message id of the question>`` (unique over the task's life); its answer ``{action: accept,
content: {message}}`` continues the task with that text, ``decline`` or ``cancel`` cancels it.
(*2) ``tasks/result`` asks the same elicitation on its own stream.
(*3) a tool error, not a JSON-RPC one: the extension keeps ``failed`` for JSON-RPC errors, while
2025-11-25 says a result with isError is ``failed``.

A gateway-run upstream call maps directly: a result (isError or not) is ``completed``
(2025-11-25: ``failed`` when isError), a JSON-RPC error ``failed`` with ``error``.

Methods. 2026-07-28: ``tasks/get`` (the DetailedTask), ``tasks/update`` (answers the keys still
outstanding, ignores others; answered keys leave ``inputRequests`` before the ack, or, when the
call runs on another node, once the answer reaches it: the text's eventual consistency), ``tasks/cancel``
(an empty ack, a terminal task too); each needs the extension declared (else -32021, checked
before anything else) and ``Mcp-Name`` = ``params.taskId`` (modern.py); ``tasks/result`` and
``tasks/list`` do not exist (-32601). 2025-11-25: ``tasks/get``, ``tasks/result`` (blocks until
the task is terminal, asking the client for any input the task waits for on its own stream, or
-32600 when the session did not declare the capability that input needs; then answers exactly
what the call would have, with ``_meta`` related-task), ``tasks/list`` (the
caller's tasks made through MCP, newest first, cursor paging), ``tasks/cancel`` (the cancelled
task; a terminal one is -32602). An unknown task, another caller's task, a bad cursor or bad
params are -32602 alike (a task another caller owns is never revealed).

TTL and polling: ``ttlMs``/``ttl`` is what the task is kept for (default ``ttl_ms``, the option
``task_ttl_ms``; a 2025-11-25 request may ask for another, clamped to [1 s, ``max_ttl_ms``]);
``pollIntervalMs``/``pollInterval`` is ``poll_ms`` (``task_poll_ms``). A gateway-run call may run
as long as its task lives; the task's record goes when its ttl ends, whatever its state (the
text: a server may discard a task after its TTL).

Status notifications: a 2025-11-25 session gets ``notifications/tasks/status`` on its GET stream
at each status change of the tasks it created. A 2026-07-28 client listens with
``subscriptions/listen`` ``notifications.taskIds`` (listen.py; -32021 without the extension):
each change of a task it owns comes as ``notifications/tasks`` carrying the DetailedTask.

Across nodes: records are in the shared store (``tasks/get`` works on any node, the record is
written before ``CreateTaskResult`` is sent); answers and cancellations for a call running on
another node go through the service's mailbox. A call's input requests are written by the node
running it only (writes on one node are serialised), so no answer or request is lost to a race;
a ``tasks/cancel`` on another node marks the record cancelled and the running node, stopping
the call, writes cancelled again.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import logging
import secrets
from collections import defaultdict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from gateway.core import audit
from gateway.core.backends import TaskNotFound
from gateway.core.runtime import ActingFor, NotCancelable, NotContinuable
from protocols.mcp import wire
from protocols.mcp.agents import arguments_message, task_result, tool_error
from protocols.mcp.client import UpstreamClient, UpstreamTimeout, UpstreamUnavailable
from protocols.mcp.wire import INVALID_PARAMS, METHOD_NOT_FOUND, MCPError
from schemas import Message, Task, TaskState, TextPart
from schemas.task import utcnow

if TYPE_CHECKING:
    from protocols.mcp.methods import MCPCall, MCPService

log = logging.getLogger("interlace.mcp.tasks")

EXTENSION = "io.modelcontextprotocol/tasks"
RELATED = "io.modelcontextprotocol/related-task"
LEGACY_SINCE = "2025-11-25"  # the first (and only) handshake revision with the tasks utility
LEGACY_CAPABILITY = {"list": {}, "cancel": {}, "requests": {"tools": {"call": {}}}}
REQUIRED = {"requiredCapabilities": {"extensions": {EXTENSION: {}}}}
TERMINAL = ("completed", "failed", "cancelled")
NEEDS = {"elicitation/create": "elicitation", "sampling/createMessage": "sampling", "roots/list": "roots"}
INPUT_METHODS = tuple(NEEDS)  # what an upstream may ask during a task (the client capability each needs)
ANSWER_SCHEMA = {
    "type": "object",
    "properties": {"message": {"type": "string", "description": "Your answer to the agent"}},
    "required": ["message"],
}
INDEX_MAX = 1000  # task ids kept per owner for tasks/list
LOCK_STRIPES = 64


def not_found(task_id: Any) -> MCPError:
    return MCPError(INVALID_PARAMS, f"Failed to retrieve task: Task not found ({task_id!r})")


def _cursor(offset: int) -> str:
    return base64.urlsafe_b64encode(f"t:{offset}".encode()).decode().rstrip("=")


def _offset(cursor: Any) -> int:
    if isinstance(cursor, str):
        with contextlib.suppress(ValueError, UnicodeDecodeError):
            text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
            if text.startswith("t:") and text[2:].isdigit():
                return int(text[2:])
    raise MCPError(INVALID_PARAMS, "Invalid cursor")


class MCPTasks:
    """The task side of one gateway's MCP service (module docstring)."""

    def __init__(
        self, service: MCPService, *, ttl_ms: int = 3_600_000, max_ttl_ms: int = 86_400_000, poll_ms: int = 500
    ) -> None:
        self.service = service
        self.kv = service.runtime.kv
        self.ttl_ms, self.max_ttl_ms, self.poll_ms = ttl_ms, max_ttl_ms, poll_ms
        self.jobs: dict[str, asyncio.Task] = {}  # gateway-run calls running on this node
        self.asks: dict[str, set[asyncio.Task]] = defaultdict(set)  # their upstream requests waiting for input
        # record writes on this node, one at a time per task (striped: no lock per task to forget)
        self._locks = [asyncio.Lock() for _ in range(LOCK_STRIPES)]
        self._changed: dict[str, asyncio.Event] = {}  # task id -> set when this node changes it

    # ---- which era, which calls -----------------------------------------------------------------

    @staticmethod
    def legacy_session(call: MCPCall) -> bool:
        """A handshake session whose revision has the tasks utility."""
        return call.envelope is None and call.session.get("v", "") >= LEGACY_SINCE

    @staticmethod
    def declared(call: MCPCall) -> bool:
        """A 2026-07-28 request that declares the extension."""
        extensions = call.capabilities.get("extensions") if call.envelope is not None else None
        return isinstance(extensions, dict) and EXTENSION in extensions

    def plan(self, call: MCPCall, tool: str, support: str | None) -> int | None:
        """The ttl (ms) of the task this tools/call becomes, None when it runs synchronously;
        raises the era's error when the tool needs a task the call cannot be."""
        support = support if support in ("optional", "required") else "forbidden"
        if call.envelope is not None:
            if support == "forbidden":
                return None
            if self.declared(call):
                return self.ttl_ms
            if support == "required":
                raise MCPError(
                    wire.MISSING_CLIENT_CAPABILITY, f"tool {tool!r} runs only as a task: declare {EXTENSION}", REQUIRED
                )
            return None
        if not self.legacy_session(call):
            return None
        asked = call.params.get("task")
        if asked is None:
            if support == "required":
                raise MCPError(METHOD_NOT_FOUND, f"tool {tool!r} must be called as a task (params.task)")
            return None
        if support == "forbidden":
            raise MCPError(METHOD_NOT_FOUND, f"tool {tool!r} does not support task-augmented calls")
        if not isinstance(asked, dict):
            raise MCPError(INVALID_PARAMS, "params.task must be an object")
        ttl = asked.get("ttl")
        if ttl is None:
            return self.ttl_ms
        if not isinstance(ttl, int) or isinstance(ttl, bool) or ttl < 0:
            raise MCPError(INVALID_PARAMS, "params.task.ttl must be an integer number of milliseconds >= 0")
        return min(max(ttl, 1000), self.max_ttl_ms)

    # ---- records ----------------------------------------------------------------------------------

    async def _load(self, task_id: str) -> dict[str, Any] | None:
        raw = await self.kv.get(f"mcp:t:{task_id}")
        return json.loads(raw) if raw else None

    async def _save(self, rec: dict[str, Any], *, status_changed: bool = False) -> None:
        ttl_s = max(1, -(-rec["ttlMs"] // 1000))
        await self.kv.set(f"mcp:t:{rec['taskId']}", json.dumps(rec, separators=(",", ":")), ttl_s)
        self._signal(rec["taskId"])
        if status_changed and rec.get("kind") == "call" and rec.get("sid"):
            await self._notify_session(rec["sid"], self._legacy_view(rec))

    def _lock(self, key: str) -> asyncio.Lock:
        return self._locks[int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) % LOCK_STRIPES]

    def _signal(self, task_id: str) -> None:
        event = self._changed.pop(task_id, None)
        if event is not None:
            event.set()

    async def _wait_change(self, task_id: str, timeout: float) -> None:
        """Until this node changes the task, or ``timeout`` (another node's change is seen then)."""
        event = self._changed.setdefault(task_id, asyncio.Event())
        try:
            await asyncio.wait_for(event.wait(), timeout)
        except TimeoutError:
            if self._changed.get(task_id) is event:  # nobody set it: do not keep it around
                del self._changed[task_id]

    def _owner_key(self, owner: str) -> str:
        return "mcp:tl:" + hashlib.sha256(owner.encode()).hexdigest()[:32]

    async def _create(self, call: MCPCall, task_id: str, kind: str, tool: str, ttl_ms: int) -> dict[str, Any]:
        now = utcnow()
        rec = {
            "taskId": task_id,
            "kind": kind,
            "tool": tool,
            "owner": call.principal.id,
            "createdAt": now,
            "lastUpdatedAt": now,
            "ttlMs": ttl_ms,
            "status": "working",
            "sid": call.sid or None,  # the 2025-11-25 session told of status changes
        }
        await self._save(rec)
        key = self._owner_key(call.principal.id)
        async with self._lock(key):
            ids = json.loads(await self.kv.get(key) or "[]")
            ids = [task_id, *ids][:INDEX_MAX]
            await self.kv.set(key, json.dumps(ids), max(1, self.max_ttl_ms // 1000))
        return rec

    async def _find(self, call: MCPCall, task_id: Any) -> dict[str, Any]:
        """The caller's task record; -32602 for an unknown one or another caller's (audited)."""
        if not isinstance(task_id, str) or not task_id:
            raise MCPError(INVALID_PARAMS, "params.taskId (string) is required")
        rec = await self._load(task_id)
        if rec is None:
            raise not_found(task_id)
        principal = call.principal
        if rec["owner"] != principal.id and not principal.is_admin(self.service.runtime.config.admin_group):
            audit.record(principal, "read", rec.get("tool"), "not_found", task_id)
            raise not_found(task_id)
        return rec

    # ---- the state of a task, in the extension's words -----------------------------------------------

    async def _state(self, rt: ActingFor, rec: dict[str, Any]) -> dict[str, Any]:
        """The task's status with its payload (result, error, inputRequests) as the extension
        names them (the 2025-11-25 view derives its own from it: ``_legacy_task``)."""
        if rec["kind"] == "call":
            out = {k: rec[k] for k in ("status", "statusMessage", "lastUpdatedAt", "result", "error") if k in rec}
            if rec["status"] == "input_required":
                out["inputRequests"] = dict(rec.get("inputs") or {})
            return out
        try:
            task = await rt.get(rec["taskId"])
        except TaskNotFound:  # retention ended before the record did
            return {"status": "failed", "error": {"code": wire.INTERNAL_ERROR, "message": "the task is gone"}}
        return self.agent_state(task)

    @staticmethod
    def agent_state(task: Task) -> dict[str, Any]:
        """A canonical task's state (module docstring's table)."""
        state, note = task.state, task.status.message
        out: dict[str, Any] = {"lastUpdatedAt": task.status.timestamp}
        if note is not None and note.text():
            out["statusMessage"] = note.text()
        if state is TaskState.CANCELED:
            out["status"] = "cancelled"
        elif state.terminal:
            out["status"], out["result"] = "completed", task_result(task)
        elif state.interrupted:
            question = note.text() if note is not None else ""
            key = f"q-{note.message_id if note is not None else task.status.timestamp}"
            out["status"] = "input_required"
            out["inputRequests"] = {
                key: {
                    "method": "elicitation/create",
                    "params": {
                        "mode": "form",
                        "message": question or f"The agent needs more input ({state.value})",
                        "requestedSchema": ANSWER_SCHEMA,
                    },
                }
            }
        else:
            out["status"] = "working"
        return out

    def _base(self, rec: dict[str, Any], state: dict[str, Any]) -> dict[str, Any]:
        out = {"taskId": rec["taskId"], "status": state["status"]}
        if state.get("statusMessage"):
            out["statusMessage"] = state["statusMessage"]
        out["createdAt"] = rec["createdAt"]
        out["lastUpdatedAt"] = state.get("lastUpdatedAt") or rec["lastUpdatedAt"]
        return out

    def detailed(self, rec: dict[str, Any], state: dict[str, Any]) -> dict[str, Any]:
        """The extension's DetailedTask."""
        out = {**self._base(rec, state), "ttlMs": rec["ttlMs"], "pollIntervalMs": self.poll_ms}
        status = state["status"]
        if status == "completed":
            result = dict(state["result"])
            meta = result.pop("_meta", None)
            if isinstance(meta, dict):  # the task id is the DetailedTask's own: no related-task
                meta = {k: v for k, v in meta.items() if k != RELATED}
            if meta:
                result["_meta"] = meta
            out["result"] = result
        elif status == "failed":
            out["error"] = state.get("error") or {"code": wire.INTERNAL_ERROR, "message": "the task failed"}
        elif status == "input_required":
            out["inputRequests"] = state.get("inputRequests") or {}
        return out

    def _legacy_task(self, rec: dict[str, Any], state: dict[str, Any]) -> dict[str, Any]:
        """The 2025-11-25 Task (a tool result with isError is ``failed`` there)."""
        out = {**self._base(rec, state), "ttl": rec["ttlMs"], "pollInterval": self.poll_ms}
        if state["status"] == "completed" and (state.get("result") or {}).get("isError"):
            out["status"] = "failed"
        return out

    def _legacy_view(self, rec: dict[str, Any]) -> dict[str, Any]:
        return self._legacy_task(rec, {k: v for k, v in rec.items() if k in ("status", "statusMessage", "result")})

    # ---- starting a task --------------------------------------------------------------------------

    def _created(self, call: MCPCall, rec: dict[str, Any], state: dict[str, Any]) -> dict[str, Any]:
        """CreateTaskResult in the call's era (no result, error or inputRequests: those are tasks/get's)."""
        if call.envelope is not None:
            seed = {**self._base(rec, state), "ttlMs": rec["ttlMs"], "pollIntervalMs": self.poll_ms}
            return {"resultType": "task", **seed}
        return {"task": self._legacy_task(rec, state)}

    async def submit_agent(self, call: MCPCall, agent: str, args: dict[str, Any], ttl_ms: int) -> dict[str, Any]:
        """An agent's tool called as a task: the canonical task, submitted for the caller."""
        message = arguments_message(args)
        if isinstance(message, str):
            return tool_error(message)
        task = await call.rt.submit(message, agent=agent, metadata={"via": "mcp"})
        rec = await self._create(call, task.id, "agent", agent, ttl_ms)
        if rec["sid"]:
            self.service._spawn(self._follow_agent(call.rt, rec))
        return self._created(call, rec, self.agent_state(task))

    async def start_call(
        self, call: MCPCall, client: UpstreamClient, tool: str, original: str, args: dict[str, Any], ttl_ms: int
    ) -> dict[str, Any]:
        """An upstream's tool called as a task the gateway runs (module docstring)."""
        rec = await self._create(call, secrets.token_urlsafe(18), "call", tool, ttl_ms)
        job = self.service._spawn(self._run_call(rec["taskId"], client, original, args, ttl_ms / 1000))
        self.jobs[rec["taskId"]] = job
        job.add_done_callback(lambda _: self.jobs.pop(rec["taskId"], None))
        if self.service.shared:  # a tasks/cancel on another node reaches it through the mailbox
            watcher = self.service._spawn(self._watch_cancel(rec["taskId"], job))
            job.add_done_callback(lambda _: watcher.cancel())
        return self._created(call, rec, rec)

    async def _watch_cancel(self, task_id: str, job: asyncio.Task) -> None:
        with contextlib.suppress(TimeoutError):
            await self.service.mailbox.wait("tc", task_id, "cancel", None)
            job.cancel()

    async def _update(self, task_id: str, change: Callable[[dict[str, Any]], bool]) -> dict[str, Any] | None:
        """Apply ``change`` to the record (it says whether it changed anything) and save it."""
        async with self._lock(task_id):
            rec = await self._load(task_id)
            if rec is None:
                return None
            before = rec["status"]
            if not change(rec):
                return rec
            rec["lastUpdatedAt"] = utcnow()
            await self._save(rec, status_changed=rec["status"] != before)
            return rec

    async def _run_call(self, task_id: str, client: UpstreamClient, original: str, args: dict, ttl_s: float) -> None:
        async def on_message(msg: dict[str, Any]) -> None:
            if "id" not in msg:
                return  # progress and log messages are not carried by tasks (the extension's text)
            await self._ask(task_id, client, msg, ttl_s)

        outcome: dict[str, Any]
        try:
            result = await client.request(
                "tools/call", {"name": original, "arguments": args}, on_message=on_message, timeout=ttl_s
            )
            outcome = {"status": "completed", "result": result}
        except MCPError as exc:
            outcome = {"status": "failed", "error": exc.body(), "statusMessage": str(exc)}
        except (UpstreamUnavailable, UpstreamTimeout) as exc:
            outcome = {"status": "completed", "result": tool_error(str(exc))}
        except asyncio.CancelledError:
            await asyncio.shield(self._finish(task_id, {"status": "cancelled"}))
            raise
        except Exception:
            log.exception("task call failed", extra={"task_id": task_id})
            outcome = {"status": "failed", "error": {"code": wire.INTERNAL_ERROR, "message": "Internal error"}}
        finally:  # requests of the upstream still waiting for the client end with the call
            for asking in self.asks.pop(task_id, set()):
                asking.cancel()
        await self._finish(task_id, outcome)

    async def _finish(self, task_id: str, outcome: dict[str, Any]) -> None:
        def change(rec: dict[str, Any]) -> bool:
            if rec["status"] in TERMINAL:  # cancelled first: it stays cancelled
                return False
            rec.pop("inputs", None)
            rec.update(outcome)
            return True

        await self._update(task_id, change)

    async def _ask(self, task_id: str, client: UpstreamClient, msg: dict[str, Any], ttl_s: float) -> None:
        """An upstream's request during a gateway-run call: an input request of the task until
        the client answers it (tasks/update, or tasks/result's stream)."""
        method, params = msg["method"], dict(msg.get("params") or {})
        if method not in INPUT_METHODS:
            await client.respond(msg["id"], error=MCPError(METHOD_NOT_FOUND, f"Method not found: {method}"))
            return
        meta = params.get("_meta")
        if isinstance(meta, dict) and RELATED in meta:
            params["_meta"] = {k: v for k, v in meta.items() if k != RELATED}
        key = f"{method.split('/')[0]}-{secrets.token_hex(6)}"

        def add(rec: dict[str, Any]) -> bool:
            if rec["status"] in TERMINAL:
                return False
            rec.setdefault("inputs", {})[key] = {"method": method, "params": params}
            rec["status"] = "input_required"
            return True

        def remove(rec: dict[str, Any]) -> bool:
            inputs = rec.get("inputs") or {}
            if key not in inputs and rec["status"] != "input_required":
                return False
            inputs.pop(key, None)
            if not inputs and rec["status"] == "input_required":
                rec["status"] = "working"
            return True

        # Waiting before the request is visible: an answer cannot arrive before anyone waits for it.
        waiter = asyncio.create_task(self.service.mailbox.wait("ti", task_id, key, ttl_s))
        self.asks[task_id].add(asyncio.current_task())
        try:
            await self._update(task_id, add)
            answer = await waiter
        except TimeoutError:
            answer = None
        finally:
            waiter.cancel()
            self.asks[task_id].discard(asyncio.current_task())
            await asyncio.shield(self._update(task_id, remove))
        with contextlib.suppress(Exception):
            if isinstance(answer, dict):
                await client.respond(msg["id"], result=answer)
            else:
                await client.respond(msg["id"], error=MCPError(wire.INTERNAL_ERROR, "no answer from the client"))

    async def _follow_agent(self, rt: ActingFor, rec: dict[str, Any]) -> None:
        """Tell the session that created an agent's task of each status change, until terminal."""
        task_id, last = rec["taskId"], None
        while True:
            try:
                task = await rt.wait(task_id, self.ttl_ms / 1000)
            except TaskNotFound:
                return
            state = self.agent_state(task)
            if state["status"] != last:
                last = state["status"]
                await self._notify_session(rec["sid"], self._legacy_task(rec, state))
            if task.state.terminal:
                return
            if task.state.interrupted:  # resumed by a follow-up: polled (rt.wait returns at once now)
                while (await rt.get(task_id)).state.interrupted:
                    await asyncio.sleep(self.poll_ms / 1000)

    async def _notify_session(self, sid: str, task: dict[str, Any]) -> None:
        with contextlib.suppress(Exception):
            await self.service.events.append_get(sid, wire.notification("notifications/tasks/status", task))

    # ---- methods ----------------------------------------------------------------------------------

    def _gate(self, call: MCPCall) -> None:
        """Which surface serves a ``tasks/*`` request (module docstring)."""
        if call.envelope is not None:
            if not self.declared(call):
                raise MCPError(wire.MISSING_CLIENT_CAPABILITY, f"{call.method} needs {EXTENSION}", REQUIRED)
        elif not self.legacy_session(call):
            raise MCPError(METHOD_NOT_FOUND, f"Method not found: {call.method}")

    async def get(self, call: MCPCall) -> dict[str, Any]:
        self._gate(call)
        rec = await self._find(call, call.params.get("taskId"))
        state = await self._state(call.rt, rec)
        if call.envelope is not None:
            return self.detailed(rec, state)
        return self._legacy_task(rec, state)

    async def update(self, call: MCPCall) -> dict[str, Any]:
        self._gate(call)
        responses = call.params.get("inputResponses")
        rec = await self._find(call, call.params.get("taskId"))
        if not isinstance(responses, dict):
            raise MCPError(INVALID_PARAMS, "params.inputResponses must be an object")
        await self.answer(call.rt, rec, responses)
        return {}

    async def answer(self, rt: ActingFor, rec: dict[str, Any], responses: dict[str, Any]) -> None:
        """Deliver the answers to the task's outstanding input requests; others are ignored."""
        task_id = rec["taskId"]
        if rec["kind"] == "agent":
            state = await self._state(rt, rec)
            for key in state.get("inputRequests") or {}:
                if key in responses:
                    await self._continue_agent(rt, task_id, responses[key])
            return
        answered: list[str] = []

        def take(current: dict[str, Any]) -> bool:
            inputs = current.get("inputs") or {}
            answered.extend(k for k in responses if k in inputs and isinstance(responses[k], dict))
            for key in answered:
                del inputs[key]
            if answered and not inputs and current["status"] == "input_required":
                current["status"] = "working"
            return bool(answered)

        if task_id in self.jobs:  # the call runs here: the answered requests leave before the ack
            await self._update(task_id, take)
        else:  # its node removes them as the answers reach it (one writer of a call's inputs)
            take(dict(rec, inputs=dict(rec.get("inputs") or {})))
        for key in answered:
            await self.service.mailbox.post("ti", task_id, key, responses[key])

    async def _continue_agent(self, rt: ActingFor, task_id: str, response: Any) -> None:
        action = response.get("action") if isinstance(response, dict) else None
        content = response.get("content") if isinstance(response, dict) else None
        text = content.get("message") if isinstance(content, dict) else None
        try:
            if action == "accept" and isinstance(text, str):
                await rt.continue_task(task_id, Message(role="user", parts=[TextPart(text=text)]))
            elif action in ("decline", "cancel"):
                await rt.cancel(task_id)
        except (NotContinuable, NotCancelable, TaskNotFound):
            pass  # it moved on meanwhile: the answer is not outstanding any more

    async def cancel(self, call: MCPCall) -> dict[str, Any]:
        self._gate(call)
        rec = await self._find(call, call.params.get("taskId"))
        task_id = rec["taskId"]
        state = await self._state(call.rt, rec)
        if state["status"] in TERMINAL:
            if call.envelope is not None:
                return {}  # the extension: an ack, whatever the task's state
            raise MCPError(INVALID_PARAMS, f"task {task_id} is already {state['status']}")
        if rec["kind"] == "agent":
            with contextlib.suppress(NotCancelable, TaskNotFound):
                await call.rt.cancel(task_id)
        else:
            rec = await self._update(task_id, _cancelled) or rec
            job = self.jobs.get(task_id)
            if job is not None:
                job.cancel()
            elif self.service.shared:
                await self.service.mailbox.post("tc", task_id, "cancel", True)
        audit.record(call.principal, "cancel", rec.get("tool"), "ok", task_id)
        if call.envelope is not None:
            return {}
        return self._legacy_task(rec, await self._state(call.rt, rec))

    async def result(self, call: MCPCall) -> dict[str, Any]:
        """2025-11-25 ``tasks/result``: blocks until the task is terminal (module docstring)."""
        self._gate(call)
        rec = await self._find(call, call.params.get("taskId"))
        task_id = rec["taskId"]
        asked: set[str] = set()
        while True:
            state = await self._state(call.rt, rec)
            status = state["status"]
            if status in TERMINAL:
                break
            if status == "input_required":
                for key, request in (state.get("inputRequests") or {}).items():
                    if key in asked:
                        continue
                    need = NEEDS.get(request["method"])
                    if need not in call.capabilities:  # it could not answer: say so rather than wait
                        raise MCPError(
                            wire.INVALID_REQUEST,
                            f"task {task_id} waits for {request['method']}: this session did not declare {need}",
                        )
                    asked.add(key)
                    params = {**request["params"], "_meta": {RELATED: {"taskId": task_id}}}
                    reply = await call.ask(request["method"], params)
                    await self.answer(call.rt, rec, {key: reply})
            if rec["kind"] == "agent":
                if status == "input_required":  # answered: the agent resumes shortly
                    await asyncio.sleep(self.poll_ms / 1000)
                else:
                    with contextlib.suppress(TaskNotFound):
                        await call.rt.wait(task_id, 30.0)
            else:
                await self._wait_change(task_id, self.poll_ms / 1000)
            rec = await self._find(call, task_id)
        related = {RELATED: {"taskId": task_id}}
        if status == "failed" and "error" in state:
            error = state["error"]
            raise MCPError(error.get("code", wire.INTERNAL_ERROR), error.get("message", ""), error.get("data"))
        result = state.get("result") or tool_error(f"task {task_id} was cancelled")
        meta = result.get("_meta") if isinstance(result.get("_meta"), dict) else {}
        return {**result, "_meta": {**meta, **related}}

    async def list(self, call: MCPCall) -> dict[str, Any]:
        """2025-11-25 ``tasks/list``: the caller's MCP tasks, newest first."""
        self._gate(call)
        cursor = call.params.get("cursor")
        start = 0 if cursor is None else _offset(cursor)
        ids = json.loads(await self.kv.get(self._owner_key(call.principal.id)) or "[]")
        if start > len(ids):
            raise MCPError(INVALID_PARAMS, "Invalid cursor")
        page, tasks, end = self.service.options.page_size, [], start
        while end < len(ids) and len(tasks) < page:
            rec = await self._load(ids[end])
            end += 1
            if rec is not None and rec["owner"] == call.principal.id:
                tasks.append(self._legacy_task(rec, await self._state(call.rt, rec)))
        out: dict[str, Any] = {"tasks": tasks}
        if end < len(ids):
            out["nextCursor"] = _cursor(end)
        return out

    # ---- notifications/tasks on subscriptions/listen (2026-07-28) ----------------------------------

    def check_listen(self, call: MCPCall) -> None:
        if not self.declared(call):
            raise MCPError(wire.MISSING_CLIENT_CAPABILITY, f"task notifications need {EXTENSION}", REQUIRED)

    async def owned(self, call: MCPCall, task_ids: tuple[str, ...]) -> tuple[str, ...]:
        """Those of ``task_ids`` that are the caller's tasks (others are not acknowledged)."""
        out = []
        for task_id in task_ids:
            with contextlib.suppress(MCPError):
                out.append((await self._find(call, task_id))["taskId"])
        return tuple(out)

    async def watch(self, rt: ActingFor, listener: Any) -> None:
        """Queue ``notifications/tasks`` (the DetailedTask) on a listen stream: each task's
        current state at once, then at each change of status or of its input requests."""
        await asyncio.gather(*(self._watch(rt, listener, task_id) for task_id in listener.filter.task_ids))

    async def _watch(self, rt: ActingFor, listener: Any, task_id: str) -> None:
        last = None
        while True:
            rec = await self._load(task_id)
            if rec is None:
                return
            state = await self._state(rt, rec)
            view = self.detailed(rec, state)
            mark = (view["status"], tuple(view.get("inputRequests") or ()))
            if mark != last:
                last = mark
                try:
                    listener.queue.put_nowait(listener.notification("notifications/tasks", view))
                except asyncio.QueueFull:  # the stream does not keep up: the hub drops it
                    return
            if view["status"] in TERMINAL:
                return
            if rec["kind"] == "call":
                await self._wait_change(task_id, 2 * self.poll_ms / 1000)
            elif view["status"] == "input_required":  # rt.wait returns at once: poll for the follow-up
                await asyncio.sleep(self.poll_ms / 1000)
            else:
                with contextlib.suppress(TaskNotFound):
                    await rt.wait(task_id, 30.0)

    def legacy_methods(self) -> dict[str, Callable]:
        return {
            "tasks/get": self.get,
            "tasks/result": self.result,
            "tasks/list": self.list,
            "tasks/cancel": self.cancel,
        }

    def modern_methods(self) -> dict[str, Callable]:
        return {"tasks/get": self.get, "tasks/update": self.update, "tasks/cancel": self.cancel}


def _cancelled(rec: dict[str, Any]) -> bool:
    if rec["status"] in TERMINAL:
        return False
    rec.pop("inputs", None)
    rec["status"], rec["statusMessage"] = "cancelled", "The task was cancelled by request."
    return True
