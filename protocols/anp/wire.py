"""ANP wire shapes: Agent Descriptions (ad.json), OpenRPC documents, and the canonical mapping of
the gateway's JSON-RPC methods (the table is in the package docstring)."""

from __future__ import annotations

from typing import Any

from schemas import Artifact, DataPart, Message, Task, TaskState, TextPart

AD_CONTEXT = {
    "@vocab": "https://schema.org/",
    "did": "https://w3id.org/did#",
    "ad": "https://agent-network-protocol.com/ad#",
}
SECURITY_DEFINITIONS = {"didwba_sc": {"scheme": "didwba", "in": "header", "name": "Authorization"}}
PROTOCOL_VERSION = "1.0.0"

# JSON-RPC error codes of the gateway's ANP face (besides the JSON-RPC 2.0 ones).
TASK_NOT_FOUND = -32001
NOT_CANCELABLE = -32002
UNKNOWN_AGENT = -32003
TASK_ENDED = -32010  # send_message: the task failed, was rejected or canceled
UNAVAILABLE = -32050
RATE_LIMITED = -32029  # the caller is past one of its quotas (429: "29")
ENDED = (TaskState.FAILED, TaskState.REJECTED, TaskState.CANCELED)


class RpcError(Exception):
    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(message)
        self.code, self.message, self.data = code, message, data


# ---- OpenRPC ---------------------------------------------------------------------------------

_RESULT_SCHEMA = {
    "type": "object",
    "description": "The task: its state, the text and data of its artifacts, the agent's status message",
    "properties": {
        "task_id": {"type": "string"},
        "context_id": {"type": "string"},
        "state": {"type": "string", "enum": [s.value for s in TaskState]},
        "text": {"type": "string", "description": "the text parts of the artifacts, joined by newlines"},
        "data": {"type": "array", "description": "the data parts of the artifacts"},
        "artifacts": {"type": "array", "description": "the artifacts in full (A2A shape, snake_case)"},
        "message": {"type": "string", "description": "the agent's status message (its question when input-required)"},
    },
    "required": ["task_id", "context_id", "state"],
}


def _param(name: str, schema: dict, description: str, required: bool = False) -> dict:
    return {"name": name, "description": description, "required": required, "schema": schema}


def openrpc_document(*, title: str, description: str, rpc_url: str, agents: list[str] | None) -> dict[str, Any]:
    """The OpenRPC 1.3.2 document of one JSON-RPC endpoint. ``agents`` is given for the
    gateway-scope endpoint, whose ``send_message`` then takes the ``agent`` to route to."""
    send_params = [
        _param("message", {"type": "string"}, "the text of the message to the agent", True),
        _param("data", {"type": "object"}, "structured input, sent as a data part"),
        _param("task_id", {"type": "string"}, "continue this task (one waiting for input) instead of starting one"),
        _param("context_id", {"type": "string"}, "the conversation the task belongs to"),
        _param("metadata", {"type": "object"}, "task metadata"),
        _param("wait_s", {"type": "number", "minimum": 0}, "how long to wait for the task to finish (seconds)"),
    ]
    if agents is not None:
        schema: dict[str, Any] = {"type": "string"}
        if agents:
            schema["enum"] = list(agents)
        send_params.insert(0, _param("agent", schema, "the agent to send the task to (name or DID)", True))
    result = {"name": "task", "description": "the task", "schema": {"$ref": "#/components/schemas/TaskResult"}}
    methods = [
        {
            "name": "send_message",
            "summary": "Send a message: start a task (or continue one) and wait for its result",
            "description": f"{description} Sends a task and waits up to wait_s for it to finish; a task "
            "that failed is a JSON-RPC error, one still running comes back with its state (poll get_task).",
            "params": send_params,
            "result": result,
        },
        {
            "name": "get_task",
            "summary": "Get a task this caller started, optionally waiting for it to finish",
            "description": "The task's state and results; wait_s waits for it to finish first.",
            "params": [
                _param("task_id", {"type": "string"}, "the task", True),
                _param("wait_s", {"type": "number", "minimum": 0}, "wait up to this long for the task to finish"),
            ],
            "result": result,
        },
        {
            "name": "cancel_task",
            "summary": "Cancel a task this caller started",
            "description": "Cancels the task unless it already finished.",
            "params": [_param("task_id", {"type": "string"}, "the task", True)],
            "result": result,
        },
    ]
    return {
        "openrpc": "1.3.2",
        "info": {
            "title": title,
            "version": PROTOCOL_VERSION,
            "description": description,
            "x-anp-protocol-type": "ANP",
            "x-anp-protocol-version": PROTOCOL_VERSION,
        },
        "security": [{"didwba": []}],
        "servers": [
            {"name": title, "url": rpc_url, "description": "JSON-RPC 2.0 over HTTP POST, DIDWba authentication"}
        ],
        "methods": methods,
        "components": {
            "schemas": {"TaskResult": _RESULT_SCHEMA},
            "securitySchemes": {
                "didwba": {
                    "type": "http",
                    "scheme": "bearer",
                    "bearerFormat": "DID-WBA",
                    "description": "DIDWba: RFC 9421 HTTP Message Signatures or the DIDWba Authorization "
                    "header; the bearer token in Authentication-Info may be reused until it expires",
                },
            },
        },
    }


def agent_description(
    *,
    ad_url: str,
    openrpc_url: str,
    name: str,
    description: str,
    did: str,
    openrpc: dict[str, Any],
    created: str,
    version: str | None = None,
    identifier: str | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A JSON-LD Agent Description whose interface is the OpenRPC document, embedded (as the
    ``anp`` crawler reads it) and by URL (the spec's APIInterface with protocol JSON-RPC 2.0)."""
    ad: dict[str, Any] = {
        "@context": AD_CONTEXT,
        "@type": "ad:AgentDescription",
        "@id": ad_url,
        "protocolType": "ANP",
        "protocolVersion": PROTOCOL_VERSION,
        "type": "AgentDescription",
        "url": ad_url,
        "name": name,
        "did": did,
        "description": description,
        "created": created,
        "securityDefinitions": SECURITY_DEFINITIONS,
        "security": "didwba_sc",
        "interfaces": [
            {
                "@type": "ad:StructuredInterface",
                "type": "StructuredInterface",
                "protocol": "openrpc",
                "description": openrpc["info"]["description"],
                "url": openrpc_url,
                "content": openrpc,
            },
            {
                "@type": "ad:APIInterface",
                "protocol": "JSON-RPC 2.0",
                "description": "the same methods, as an OpenRPC document",
                "url": openrpc_url,
            },
        ],
    }
    if version:
        ad["version"] = version
    if identifier:
        ad["identifier"] = identifier  # the agent's own did:key (its signed registry record)
    ad.update(extra or {})
    return ad


# ---- JSON-RPC params -> canonical --------------------------------------------------------------


def _string(value: Any, name: str, required: bool = False) -> str | None:
    if value is None:
        if required:
            raise RpcError(-32602, f"{name} is required")
        return None
    if not isinstance(value, str) or (required and not value):
        raise RpcError(-32602, f"{name} must be a string")
    return value


def _object(value: Any, name: str) -> dict | None:
    if value is not None and not isinstance(value, dict):
        raise RpcError(-32602, f"{name} must be an object")
    return value


def wait_seconds(value: Any, default: float, maximum: float) -> float:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise RpcError(-32602, "wait_s must be a number of seconds >= 0")
    return min(float(value), maximum)


def user_message(message: Any, data: Any) -> Message:
    """``message`` (text) and ``data`` (object) -> the user Message: [TextPart, DataPart]."""
    text = _string(message, "message")
    data = _object(data, "data")
    parts: list[Any] = []
    if text is not None:
        parts.append(TextPart(text=text))
    if data is not None:
        parts.append(DataPart(data=data))
    if not parts:
        raise RpcError(-32602, "message (or data) is required")
    return Message(role="user", parts=parts)


def task_metadata(metadata: Any) -> dict[str, Any]:
    """Client metadata (``anp.*`` keys are the gateway's: a client cannot set them)."""
    return {k: v for k, v in (_object(metadata, "metadata") or {}).items() if not str(k).startswith("anp.")}


# ---- canonical -> JSON-RPC result ----------------------------------------------------------------


def task_result(task: Task) -> dict[str, Any]:
    """A task as the methods' result: state, joined text, data parts, artifacts, status message."""
    texts: list[str] = []
    data: list[Any] = []
    for artifact in task.artifacts:
        for part in artifact.parts:
            if isinstance(part, TextPart):
                texts.append(part.text)
            elif isinstance(part, DataPart):
                data.append(part.data)
    out: dict[str, Any] = {
        "task_id": task.id,
        "context_id": task.context_id,
        "state": task.state.value,
        "text": "\n".join(texts),
    }
    if data:
        out["data"] = data
    if task.artifacts:
        out["artifacts"] = [a.dump() for a in task.artifacts]
    if task.status.message is not None:
        out["message"] = task.status.message.text()
    return out


def ended_error(task: Task) -> RpcError:
    """send_message of a task that failed / was rejected / canceled -> JSON-RPC error -32010."""
    note = task.status.message.text() if task.status.message is not None else ""
    return RpcError(
        TASK_ENDED,
        note or f"the task was {task.state.value}",
        {
            "task_id": task.id,
            "context_id": task.context_id,
            "state": task.state.value,
        },
    )


# ---- remote result -> canonical (outbound) -------------------------------------------------------


def result_artifact(method: str, result: Any) -> Artifact:
    """A remote method's JSON-RPC result -> one artifact: a string is text, anything else data."""
    part = TextPart(text=result) if isinstance(result, str) else DataPart(data=result)
    return Artifact(name=method, parts=[part])
