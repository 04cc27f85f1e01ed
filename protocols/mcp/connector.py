"""The outbound MCP connector: a Worker that runs its tasks as tool calls on a remote MCP server.

``MCPConnector(agent_name, url)`` consumes the bus stream of ``agent_name`` and, for each task,
calls one tool of the MCP server at ``url`` (Streamable HTTP). It keeps ONE pooled upstream
session per server (``protocols.mcp.client.UpstreamClient``, the federation's client too:
handshake, session re-creation when the server forgets it, SSE resumption), and the server's
tool list, read on first use and again after ``notifications/tools/list_changed`` or a new
session.

The gateway's registry connectors (``gateway/connectors.py``) run one per live registry record
that has an ``mcp`` endpoint and no ``bus`` one (``MCPConnector.from_record``, exported by the
package as ``Connector``).

Mapping between the canonical task and the tool call (each row is tested in tests/test_matrix.py):

| canonical (the task's last user message) | MCP |
| --- | --- |
| metadata ``tool`` (or ``mcp.tool``), message then task | ``tools/call`` ``name`` |
| else ``task.route.skill`` when it names a tool | ``name`` (capability routing chose that skill) |
| else the server's only tool | ``name``; several tools and none named: the task fails |
| one object ``DataPart`` | ``arguments`` (under ``data`` when the tool declares an object ``data``) |
| the text parts (joined by newlines) | the tool's only string argument, else its first required string one (*1) |
| ``FilePart`` (bytes or url) | argument ``files: [{name, mimeType, data (base64) or uri}]`` (*2) |
| (always) | ``_meta.progressToken`` = the task id |
| ``notifications/progress`` on the call's stream | a ``working`` status update (*3) |
| result ``text`` content | artifact (named after the tool) ``TextPart`` (*4) |
| result ``structuredContent`` | ``DataPart`` |
| result ``image`` / ``audio`` content | ``FilePart`` bytes, ``media_type`` = ``mimeType`` |
| result embedded ``resource`` with JSON ``text`` (*5) | ``DataPart`` of that JSON, metadata ``mcp.uri`` |
| result embedded ``resource`` (``blob`` or other ``text``) | ``FilePart`` bytes (text as UTF-8) (*6) |
| result ``resource_link`` | ``FilePart`` ``url`` |
| result ``isError: true`` | task ``failed`` with the server's text |
| JSON-RPC error / unreachable server / no answer in time | task ``failed`` with the reason |
| task canceled | the call's request is abandoned and ``notifications/cancelled`` is sent upstream |
| server->client requests (sampling, elicitation, roots) | refused (-32601): a task has no MCP client to relay them to |

(*1) else ``text`` if declared; with no data part and no such argument, ``{"text": ...}``; with a data
part and no such argument the text is not sent.
(*2) when the tool declares an array ``files``; otherwise the task fails (tool arguments are JSON).
(*3) agent message = the notification's ``message`` (else ``progress[/total]``), metadata
``progress``/``total``.
(*4) a text that is the JSON of ``structuredContent`` is not repeated.
(*5) JSON ``text``: ``application/json`` or ``*+json``.
(*6) ``filename`` = last segment of the URI, metadata ``mcp.uri``.

Not carried: logging notifications on the call's stream, a file part's filename on the way back
(image/audio content has no name), tool ``annotations`` and ``outputSchema`` (the result is not
validated against it). Tool definitions are not pinned here: nothing of them reaches a model.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

from agents.worker import TaskFailed, Worker
from gateway.core.egress import UNREACHABLE, Egress
from gateway.core.http_client import PooledClient
from gateway.core.runtime import Runtime
from protocols.mcp import wire
from protocols.mcp.client import Upstream, UpstreamClient, UpstreamTimeout, UpstreamUnavailable, describe
from protocols.mcp.wire import MCPError
from schemas import Artifact, DataPart, FilePart, Message, Part, Task, TaskEvent, TaskState, TextPart, tool_named
from schemas.agent_record import AgentRecord

log = logging.getLogger("interlace.mcp.connector")

URI_KEY = "mcp.uri"  # part metadata: the URI of an embedded resource


class MCPConnector(Worker):
    concurrency = 64

    def __init__(
        self,
        agent_name: str,
        url: str,
        *,
        description: str = "",
        skills: list[dict] | None = None,
        headers: dict[str, str] | None = None,
        timeout_s: float = 300.0,
        http: PooledClient | None = None,
        egress: Egress | None = None,
    ) -> None:
        self.agent, self.url, self.egress = agent_name, url, egress
        self.description = description or f"MCP server at {url}"
        self._skills = skills
        self.headers = headers or {}
        self.timeout_s = timeout_s
        self._http = http  # a caller-supplied client replaces the internal pool
        self._own_http: PooledClient | None = None
        self._client: UpstreamClient | None = None
        self._tools: dict[str, dict[str, Any]] | None = None
        self._tools_generation = -1
        self._lock: asyncio.Lock | None = None

    @classmethod
    def from_record(cls, record: AgentRecord, runtime: Runtime) -> MCPConnector:
        """The connector for a registry record with an ``mcp`` endpoint (of the runtime, an MCP
        server needs only the egress policy)."""
        if record.endpoints.mcp is None:
            raise ValueError(f"the record of {record.name!r} has no mcp endpoint")
        skills = [s.model_dump(mode="json") for s in record.skills] or None
        return cls(
            record.name, record.endpoints.mcp, description=record.description, skills=skills, egress=runtime.egress
        )

    def skills(self) -> list[dict]:
        return self._skills or super().skills()

    # ---- the pooled upstream session ---------------------------------------------------------

    def upstream(self) -> UpstreamClient:
        if self._client is None:
            if self._http is None and self._own_http is None:
                # Calls are bounded by timeout_s, connecting by 10 s; idle connections dropped
                # before the server's keep-alive timeout (uvicorn: 5 s).
                self._own_http = PooledClient(
                    self.egress or Egress(), limit=self.concurrency + 4, keepalive_s=2.0, connect_timeout_s=10.0
                )
            self._client = UpstreamClient(
                Upstream(self.agent, self.url, tuple(self.headers.items())),
                self._http or self._own_http,  # type: ignore[arg-type]
                on_notification=self._on_notification,
            )
        return self._client

    async def _on_notification(self, _client: UpstreamClient, msg: dict[str, Any]) -> None:
        if msg.get("method") == "notifications/tools/list_changed":
            self._tools = None  # read again before the next call

    async def tools(self) -> dict[str, dict[str, Any]]:
        """The server's tools by name (read once per upstream session and after list_changed)."""
        if self._lock is None:
            self._lock = asyncio.Lock()
        client = self.upstream()
        async with self._lock:
            await client.ensure()
            if self._tools is None or self._tools_generation != client.generation:
                generation = client.generation
                items = await client.list_all("tools/list", "tools", self.timeout_s)
                self._tools = {t["name"]: t for t in items if isinstance(t.get("name"), str)}
                self._tools_generation = generation
            return self._tools

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None
        if self._own_http is not None:
            await self._own_http.aclose()
            self._own_http = None

    # ---- the handler -------------------------------------------------------------------------

    async def handle(self, task: Task) -> AsyncIterator[TaskEvent]:
        user = [m for m in task.history if m.role == "user"]
        if not user:
            raise TaskFailed("the task has no user message to send")
        try:
            name, arguments = choose_call(task, user[-1], await self.tools())
        except (UpstreamUnavailable, UpstreamTimeout, MCPError) as exc:
            log.warning(
                "remote agent call failed", extra={"agent": self.agent, "task_id": task.id, "error": describe(exc)}
            )
            raise TaskFailed(f"remote MCP server {self.agent!r}: {_reason(exc)}") from None
        client = self.upstream()
        queue: asyncio.Queue = asyncio.Queue()

        async def on_message(msg: dict[str, Any]) -> None:
            if "id" in msg:  # a server->client request: nobody to relay it to
                refusal = MCPError(
                    wire.METHOD_NOT_FOUND, f"{msg.get('method')} is not available to a task run through the gateway"
                )
                with contextlib.suppress(Exception):
                    await client.respond(msg["id"], error=refusal)
            elif msg.get("method") == "notifications/progress" and isinstance(msg.get("params"), dict):
                queue.put_nowait(msg["params"])

        params = {"name": name, "arguments": arguments, "_meta": {"progressToken": task.id}}
        call = asyncio.create_task(client.request("tools/call", params, on_message=on_message, timeout=self.timeout_s))
        call.add_done_callback(lambda _: queue.put_nowait(None))
        try:
            while (progress := await queue.get()) is not None:
                yield progress_event(task, progress)
            result = call.result()
        except asyncio.CancelledError:
            if not call.done():
                call.cancel()  # the upstream client sends notifications/cancelled for the request
                await asyncio.wait([call], timeout=5.0)
            raise
        except (UpstreamUnavailable, UpstreamTimeout, MCPError) as exc:
            log.warning(
                "remote agent call failed", extra={"agent": self.agent, "task_id": task.id, "error": describe(exc)}
            )
            raise TaskFailed(f"remote MCP server {self.agent!r}: {_reason(exc)}") from None
        if result.get("isError"):
            raise TaskFailed(error_text(result) or f"the tool {name!r} of {self.agent!r} failed")
        parts = result_parts(result)
        if parts:
            yield task.artifact_event(Artifact(name=name, parts=parts), last_chunk=True)


def _reason(exc: Exception) -> str:
    """What a client is told: ``agent unreachable`` for any failure to reach the server."""
    return UNREACHABLE if isinstance(exc, UpstreamUnavailable) else str(exc)


# ---- pure translations ---------------------------------------------------------------------------


def _types(prop: Any) -> set[str]:
    """The JSON types a property's schema admits (``type``, a list of types, or ``anyOf``/``oneOf``)."""
    if not isinstance(prop, dict):
        return set()
    kind = prop.get("type")
    out = (
        {kind}
        if isinstance(kind, str)
        else {k for k in kind if isinstance(k, str)}
        if isinstance(kind, list)
        else set()
    )
    for key in ("anyOf", "oneOf"):
        for option in prop.get(key) or []:
            out |= _types(option)
    return out


def _string_argument(schema: dict[str, Any]) -> str | None:
    props = schema.get("properties") if isinstance(schema.get("properties"), dict) else {}
    strings = [k for k, v in props.items() if "string" in _types(v)]
    required = [k for k in strings if k in (schema.get("required") or [])]
    if len(strings) == 1:
        return strings[0]
    if required:
        return required[0]
    return "text" if "text" in props else None


def _declares(schema: dict[str, Any], name: str, kind: str) -> bool:
    props = schema.get("properties") if isinstance(schema.get("properties"), dict) else {}
    return kind in _types(props.get(name))


def file_argument(part: FilePart, index: int) -> dict[str, Any]:
    out: dict[str, Any] = {
        "name": part.filename or f"file-{index}",
        "mimeType": part.media_type or "application/octet-stream",
    }
    if part.bytes is not None:
        out["data"] = part.bytes
    else:
        out["uri"] = part.url
    return out


def choose_call(task: Task, message: Message, tools: dict[str, dict[str, Any]]) -> tuple[str, dict[str, Any]]:
    """The tool to call and its arguments for a task (see the mapping table)."""
    name = tool_named(task.metadata, message.metadata)
    if name is None and task.route is not None and task.route.skill in tools:
        name = task.route.skill
    if name is None:
        if len(tools) == 1:
            name = next(iter(tools))
        elif not tools:
            raise TaskFailed("the MCP server offers no tools")
        else:
            raise TaskFailed(
                f"the MCP server has several tools ({', '.join(sorted(tools))}); name one in the message "
                f"metadata 'tool' or route by a skill named after it"
            )
    tool = tools.get(name)
    if tool is None:
        raise TaskFailed(f"the MCP server has no tool {name[:80]!r} (it has {', '.join(sorted(tools)) or 'none'})")
    schema = tool.get("inputSchema") if isinstance(tool.get("inputSchema"), dict) else {}
    data = [p.data for p in message.parts if isinstance(p, DataPart)]
    files = [p for p in message.parts if isinstance(p, FilePart)]
    if len(data) > 1:
        raise TaskFailed("send at most one data part: it is the tool's arguments")
    arguments: dict[str, Any] = {}
    if data:
        if not isinstance(data[0], dict):
            raise TaskFailed("the data part must be a JSON object: it is the tool's arguments")
        arguments = {"data": data[0]} if _declares(schema, "data", "object") else dict(data[0])
    if files:
        if not _declares(schema, "files", "array"):
            raise TaskFailed(
                f"file parts cannot be sent to the MCP tool {name!r}: tool arguments are JSON and it declares "
                f"no 'files' array argument"
            )
        arguments["files"] = [file_argument(p, i) for i, p in enumerate(files)]
    text = "\n".join(p.text for p in message.parts if isinstance(p, TextPart))
    if text:
        target = _string_argument(schema) or (None if data else "text")
        if target is not None and target not in arguments:
            arguments[target] = text
    return name, arguments


def progress_event(task: Task, params: dict[str, Any]) -> TaskEvent:
    progress, total = params.get("progress"), params.get("total")
    text = params.get("message")
    if not isinstance(text, str) or not text:
        text = f"progress {progress}" + (f"/{total}" if total is not None else "")
    note = Message(role="agent", parts=[TextPart(text=text)], task_id=task.id, context_id=task.context_id)
    meta = {k: v for k, v in (("progress", progress), ("total", total)) if isinstance(v, (int, float))}
    return task.status_event(TaskState.WORKING, note, **meta)


def error_text(result: dict[str, Any]) -> str:
    return "\n".join(
        c["text"]
        for c in result.get("content") or []
        if isinstance(c, dict) and c.get("type") == "text" and isinstance(c.get("text"), str)
    )


def _b64(value: Any) -> str | None:
    if not isinstance(value, str):
        return None
    try:
        return base64.b64encode(base64.b64decode(value, validate=True)).decode("ascii")
    except (binascii.Error, ValueError):
        return None


def content_part(block: dict[str, Any]) -> Part | None:
    """One MCP content block as a canonical part (None for a block that cannot be read)."""
    kind = block.get("type")
    if kind == "text" and isinstance(block.get("text"), str):
        return TextPart(text=block["text"])
    if kind in ("image", "audio"):
        raw = _b64(block.get("data"))
        return FilePart(bytes=raw, media_type=block.get("mimeType")) if raw is not None else None
    if kind == "resource" and isinstance(block.get("resource"), dict):
        res = block["resource"]
        uri = res.get("uri") if isinstance(res.get("uri"), str) else ""
        name = _last_segment(uri)
        meta = {URI_KEY: uri} if uri else None
        media = res.get("mimeType") if isinstance(res.get("mimeType"), str) else None
        if isinstance(res.get("text"), str):
            if media is not None and _is_json(media):
                with contextlib.suppress(ValueError):
                    return DataPart(data=json.loads(res["text"]), metadata=meta)
            return FilePart.from_bytes(
                res["text"].encode(), media_type=media or "text/plain", filename=name, metadata=meta
            )
        raw = _b64(res.get("blob"))
        if raw is not None:
            return FilePart(
                bytes=raw, media_type=res.get("mimeType") or "application/octet-stream", filename=name, metadata=meta
            )
        return None
    if kind == "resource_link" and isinstance(block.get("uri"), str):
        return FilePart(url=block["uri"], media_type=block.get("mimeType"), filename=block.get("name"))
    return None


def _last_segment(uri: str) -> str | None:
    """``file:///a/b.png`` -> ``b.png``; ``test://thing`` -> ``thing``."""
    rest = uri.split("://", 1)[-1].split("?", 1)[0].split("#", 1)[0].rstrip("/")
    return rest.rsplit("/", 1)[-1] or None


def _is_json(media: str) -> bool:
    media = media.split(";", 1)[0].strip().lower()
    return media == "application/json" or media.endswith("+json")


def result_parts(result: dict[str, Any]) -> list[Part]:
    """A CallToolResult as the parts of one artifact (see the mapping table)."""
    structured = result.get("structuredContent")
    parts: list[Part] = []
    for block in result.get("content") or []:
        if not isinstance(block, dict):
            continue
        if structured is not None and block.get("type") == "text" and _json_equal(block.get("text"), structured):
            continue  # the serialized copy servers send alongside structuredContent
        part = content_part(block)
        if part is None:
            log.warning("skipped an unreadable content block", extra={"type": str(block.get("type"))[:40]})
            continue
        parts.append(part)
    if structured is not None:
        parts.append(DataPart(data=structured))
    return parts


def _json_equal(text: Any, value: Any) -> bool:
    if not isinstance(text, str):
        return False
    try:
        return json.loads(text) == value
    except ValueError:
        return False
