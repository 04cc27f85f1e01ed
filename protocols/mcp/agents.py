"""Routable agents as MCP tools, and the canonical mapping between the two.

Every agent the caller can send a task to (``rt.known_agents()`` of the runtime acting for the
caller, so the policy decides, minus the MCP upstreams, which expose their own tools) is a tool
named after the agent, taking ``{message: string, data?: object}``. Two meta tools:
``find_agents(query)`` and ``send_task(agent_or_query, message, data?, task_id?)``; both match
agents to text with the registry's capability index (``rt.explain_route``: the index capability
routing uses, among the agents the caller may call), so neither ever names or picks an agent the
caller may not call. Every method takes the runtime as the caller uses it (``ActingFor``; the
bare ``Runtime`` is everyone's view, which only tool naming uses). The mapping table is in the
package docstring (protocols/mcp/__init__.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import Awaitable, Callable
from typing import Any

from gateway.core.backends import TaskNotFound
from gateway.core.runtime import ActingFor, NotCancelable, NotContinuable, Runtime, UnknownAgent
from protocols.mcp.federation import sanitize
from registry.index import CapabilityQuery
from schemas import STREAM_HINT, DataPart, FilePart, Message, Task, TaskState, TextPart

MESSAGE_SCHEMA = {
    "type": "object",
    "properties": {
        "message": {"type": "string", "description": "What to ask the agent (plain text)"},
        "data": {"type": "object", "description": "Optional structured input, sent as a data part"},
    },
    "required": ["message"],
}

META_TOOLS = [
    {
        "name": "find_agents",
        "title": "Find agents",
        "description": "List the agents this gateway can route to that match the query (by name, description "
        "and skills; an empty query lists them all).",
        "inputSchema": {"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]},
        "annotations": {"readOnlyHint": True, "openWorldHint": False},
    },
    {
        "name": "send_task",
        "title": "Send a task",
        "description": "Send a message to the agent named (or best matching) agent_or_query and return its answer. "
        "Pass task_id to answer an agent that asked for more input.",
        "inputSchema": {
            "type": "object",
            "properties": {
                "agent_or_query": {"type": "string", "description": "An agent name, or words describing the agent"},
                "message": {"type": "string"},
                "data": {"type": "object"},
                "task_id": {"type": "string", "description": "Continue this task (it waits for input)"},
            },
            "required": ["agent_or_query", "message"],
        },
        "annotations": {"openWorldHint": True},
    },
]
META_NAMES = {t["name"] for t in META_TOOLS}

Notify = Callable[[str, dict[str, Any]], Awaitable[None]]


def agent_tool(agent: str, about: str = "") -> dict[str, Any]:
    """The tool for one agent; ``about`` is what its registry record says it does."""
    description = f"Send a task to the agent {agent!r} through the gateway and return its artifacts."
    return {
        "name": sanitize(agent),
        "title": agent,
        "description": f"{about.strip()} ({description})" if about.strip() else description,
        "inputSchema": MESSAGE_SCHEMA,
        "annotations": {"openWorldHint": True},
        "execution": {"taskSupport": "optional"},  # a client may poll its canonical task (tasks_ext.py)
    }


def tool_error(text: str) -> dict[str, Any]:
    return {"content": [{"type": "text", "text": text}], "isError": True}


def arguments_message(args: dict[str, Any]) -> Message | str:
    """tools/call arguments -> the canonical user message; a string is a validation error."""
    text, data = args.get("message"), args.get("data")
    if not isinstance(text, str):
        return "argument 'message' is required and must be a string"
    if data is not None and not isinstance(data, dict):
        return "argument 'data' must be an object"
    parts: list[Any] = [TextPart(text=text)]
    if data is not None:
        parts.append(DataPart(data=data))
    return Message(role="user", parts=parts)


def part_content(part: Any, task: Task, index: int) -> dict[str, Any]:
    """One canonical part -> one MCP content block."""
    if isinstance(part, TextPart):
        return {"type": "text", "text": part.text}
    if isinstance(part, DataPart):
        return {"type": "text", "text": json.dumps(part.data, ensure_ascii=False)}
    assert isinstance(part, FilePart)
    media = part.media_type or "application/octet-stream"
    if part.bytes is not None:
        if media.startswith("image/"):
            return {"type": "image", "data": part.bytes, "mimeType": media}
        if media.startswith("audio/"):
            return {"type": "audio", "data": part.bytes, "mimeType": media}
        name = part.filename or f"part-{index}"
        uri = f"interlace://tasks/{task.id}/files/{name}"
        if media.startswith("text/"):
            with contextlib.suppress(UnicodeDecodeError):
                return {"type": "resource", "resource": {"uri": uri, "mimeType": media, "text": part.raw().decode()}}
        return {"type": "resource", "resource": {"uri": uri, "mimeType": media, "blob": part.bytes}}
    link: dict[str, Any] = {"type": "resource_link", "uri": part.url, "name": part.filename or part.url}
    if part.media_type:
        link["mimeType"] = part.media_type
    return link


def task_result(task: Task) -> dict[str, Any]:
    """A task as a CallToolResult: artifacts -> content, data parts -> structuredContent,
    failed/canceled/rejected -> isError, input-required -> the agent's question."""
    state = task.state
    if state in (TaskState.FAILED, TaskState.REJECTED, TaskState.CANCELED):
        note = task.status.message.text() if task.status.message else ""
        return tool_error(note or f"task {task.id} {state.value}")
    content: list[dict[str, Any]] = []
    data: list[Any] = []
    index = 0
    for artifact in task.artifacts:
        for part in artifact.parts:
            content.append(part_content(part, task, index))
            if isinstance(part, DataPart):
                data.append(part.data)
            index += 1
    out: dict[str, Any] = {"content": content}
    if state.interrupted:
        question = task.status.message.text() if task.status.message else ""
        content.append({"type": "text", "text": question or f"the agent needs more input ({state.value})"})
        out["structuredContent"] = {"task_id": task.id, "state": state.value}
        return out
    if not state.terminal:
        return tool_error(f"task {task.id} did not finish in time (still {state.value}); it was canceled")
    if len(data) == 1 and isinstance(data[0], dict):
        out["structuredContent"] = data[0]
    elif data:
        out["structuredContent"] = {"data": data}
    if not content:
        content.append({"type": "text", "text": ""})
    return out


class AgentTools:
    """The runtime's agents as tools, as one caller sees them: every method takes ``rt``, the
    runtime acting for the MCP caller (tasks are sent and followed through it too)."""

    def __init__(self, wait_s: float) -> None:
        self.wait_s = wait_s

    async def agents(self, rt: ActingFor | Runtime, exclude: set[str]) -> dict[str, str]:
        """tool name -> agent name, of the agents ``rt``'s caller may call."""
        out: dict[str, str] = {}
        for agent in await rt.known_agents():
            if agent in exclude:
                continue
            name = sanitize(agent)
            if name not in META_NAMES and name not in out:
                out[name] = agent
        return out

    def about(self, rt: ActingFor) -> dict[str, str]:
        """agent name -> its record's description and skill names."""
        out: dict[str, str] = {}
        for record in rt.routable():
            skills = ", ".join(s.name for s in record.skills)
            out.setdefault(record.name, f"{record.description}" + (f" Skills: {skills}." if skills else ""))
        return out

    def matches(self, rt: ActingFor, query: str) -> dict[str, float]:
        """agent name -> score of every live agent the caller may call that the registry's
        capability index matches to ``query`` (all of them for a query without words); an
        agent's best record counts."""
        limit = max(len(rt.registry.live()), 1)
        result = rt.explain_route(CapabilityQuery(text=query.strip()[:2048] or None), limit)
        out: dict[str, float] = {}
        for candidate in result.candidates:
            out[candidate.agent] = max(candidate.score, out.get(candidate.agent, candidate.score))
        return out

    async def find_agents(self, rt: ActingFor, query: str, exclude: set[str], upstreams: list[str]) -> dict[str, Any]:
        """The agents (tools) the caller may call and the upstream MCP servers ``upstreams`` (those
        that offer the caller something) that match ``query``, best first. An upstream with no
        registry record (configured, not registered), or one the caller reaches only item by item
        (its record is not the caller's to call), is not in the caller's index: it is listed when
        the query has no words or one of them is the upstream's name."""
        found = []
        matched = self.matches(rt, query)
        for tool, agent in (await self.agents(rt, exclude)).items():
            if agent in matched:
                found.append({"name": agent, "tool": tool, "protocol": "task", "score": round(matched[agent], 3)})
        words = set(re.findall(r"[a-z0-9_.-]+", query.lower()))
        for agent in upstreams:
            if agent in matched:
                found.append({"name": agent, "protocol": "mcp", "score": round(matched[agent], 3)})
            elif not words or agent.lower() in words:
                found.append({"name": agent, "protocol": "mcp", "score": 1.0})
        found.sort(key=lambda a: (-a["score"], a["name"]))
        lines = [f"{a['name']} ({a['protocol']})" for a in found] or ["no agent matches"]
        return {"content": [{"type": "text", "text": "\n".join(lines)}], "structuredContent": {"agents": found}}

    async def send_task(
        self, rt: ActingFor, args: dict[str, Any], exclude: set[str], notify: Notify | None, progress_token: Any
    ) -> dict[str, Any]:
        target = args.get("agent_or_query")
        if not isinstance(target, str) or not target.strip():
            return tool_error("argument 'agent_or_query' is required and must be a string")
        message = arguments_message(args)
        if isinstance(message, str):
            return tool_error(message)
        task_id = args.get("task_id")
        if task_id is not None:
            if not isinstance(task_id, str):
                return tool_error("argument 'task_id' must be a string")
            return await self.continue_task(rt, task_id, message, notify, progress_token)
        agents = await self.agents(rt, exclude)
        agent = target if target in agents.values() else None
        if agent is None:
            matched = self.matches(rt, target)
            ranked = sorted((-matched[a], a) for a in agents.values() if a in matched)
            if not ranked:
                return tool_error(f"no agent matches {target!r}")
            agent = ranked[0][1]
        args = {"message": args["message"], "data": args.get("data")}
        return await self.call(rt, agent, args, notify, progress_token)

    async def continue_task(
        self, rt: ActingFor, task_id: str, message: Message | str, notify: Notify | None, progress_token: Any
    ) -> dict[str, Any]:
        """Answer a task that waits for input with ``message`` (a text or a message); its result."""
        if isinstance(message, str):
            message = Message(role="user", parts=[TextPart(text=message)])
        try:
            task, after = await rt.continue_task(task_id, message)
        except (NotContinuable, TaskNotFound) as exc:
            return tool_error(str(exc))
        return await self._finish(rt, task, notify, progress_token, after)

    async def call(
        self, rt: ActingFor, agent: str, args: dict[str, Any], notify: Notify | None, progress_token: Any
    ) -> dict[str, Any]:
        message = arguments_message(args)
        if isinstance(message, str):
            return tool_error(message)
        try:
            metadata: dict[str, Any] = {"via": "mcp"}
            if progress_token is not None:
                metadata[STREAM_HINT] = True  # the client follows progress: connectors should stream
            task = await rt.submit(message, agent=agent, metadata=metadata)
        except UnknownAgent as exc:
            return tool_error(str(exc))
        return await self._finish(rt, task, notify, progress_token)

    async def _finish(
        self, rt: ActingFor, task: Task, notify: Notify | None, progress_token: Any, after: str | None = None
    ) -> dict[str, Any]:
        """The task's result once final; ``after``: follow its events from there (a continued task)."""
        try:
            if progress_token is not None and notify is not None:
                await asyncio.wait_for(self._progress(rt, task, notify, progress_token, after), self.wait_s)
                final = await rt.get(task.id)
            else:
                final = await rt.wait(task.id, self.wait_s)
        except TimeoutError:
            final = await rt.get(task.id)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await asyncio.shield(rt.cancel(task.id))
            raise
        if not (final.state.terminal or final.state.interrupted):
            with contextlib.suppress(NotCancelable, Exception):
                await rt.cancel(task.id)
        return task_result(final)

    async def _progress(self, rt: ActingFor, task: Task, notify: Notify, token: Any, after: str | None) -> None:
        """Each task event becomes a notifications/progress (progress = events seen so far)."""
        count = 0
        async for stored in rt.follow(task.id, after):
            count += 1
            ev = stored.event
            if getattr(ev, "kind", "") == "status-update":
                text = ev.status.message.text() if ev.status.message else ev.status.state.value
            else:
                text = f"artifact {ev.artifact.name or ev.artifact.artifact_id}"
            await notify("notifications/progress", {"progressToken": token, "progress": count, "message": text})
