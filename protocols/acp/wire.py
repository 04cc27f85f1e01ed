"""Pure translations between the canonical task model and ACP's wire shapes (snake_case JSON).

The mapping tables live in the package docstring (``protocols/acp/__init__.py``); this module
implements them in both directions. The server face uses ``*_in`` to read requests and
``*_out`` to render runs and events; the outbound connector reads a remote agent's parts and
runs with the same functions, so one table governs both.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from gateway.core import strict_json
from schemas import (
    Artifact,
    DataPart,
    FilePart,
    Message,
    Task,
    TaskArtifactUpdate,
    TaskState,
    TaskStatusUpdate,
    TextPart,
)
from schemas.task import InvalidTransition, Part

CONTENT_TYPE = "interlace.acp.content_type"  # text part metadata: its ACP content type, when not text/plain
PART_NAME = "interlace.acp.name"  # part metadata: the ACP part name of an input part
PART_META = "interlace.acp.metadata"  # part metadata: ACP citation/trajectory metadata, carried as is
REMOTE_RUN = "interlace.acp.remote_run"  # connector's awaiting message metadata: the remote run id
INTERNAL_PREFIX = "interlace."


class WireError(ValueError):
    """Input that cannot be mapped: the server answers 422 invalid_input."""


# ---- states -------------------------------------------------------------------------------

RUN_STATUS: dict[TaskState, str] = {
    TaskState.SUBMITTED: "created",
    TaskState.WORKING: "in-progress",
    TaskState.INPUT_REQUIRED: "awaiting",
    TaskState.AUTH_REQUIRED: "awaiting",
    TaskState.COMPLETED: "completed",
    TaskState.FAILED: "failed",
    TaskState.CANCELED: "cancelled",
    TaskState.REJECTED: "failed",
}

TASK_STATE: dict[str, TaskState] = {
    "created": TaskState.SUBMITTED,
    "in-progress": TaskState.WORKING,
    "awaiting": TaskState.INPUT_REQUIRED,
    "cancelling": TaskState.WORKING,  # cancel asked for, not done yet: the run still runs
    "cancelled": TaskState.CANCELED,
    "completed": TaskState.COMPLETED,
    "failed": TaskState.FAILED,
}

TERMINAL_RUN = frozenset({"completed", "failed", "cancelled"})


def run_status(state: TaskState) -> str:
    return RUN_STATUS[state]


def task_state(status: Any) -> TaskState:
    try:
        return TASK_STATE[status]
    except (KeyError, TypeError):
        raise WireError(f"unknown run status {status!r}") from None


# ---- ids ----------------------------------------------------------------------------------


def as_uuid(canonical_id: str) -> str | None:
    """The ACP (UUID) form of a canonical id, or None when the id is not a UUID."""
    try:
        return str(uuid.UUID(canonical_id))
    except (ValueError, AttributeError, TypeError):
        return None


def from_uuid(acp_id: Any) -> str | None:
    """The canonical id behind an ACP run or session id (any UUID spelling), or None."""
    if not isinstance(acp_id, str):
        return None
    try:
        return uuid.UUID(acp_id).hex
    except ValueError:
        return None


_ROLE_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")


def agent_role(agent: str | None) -> str:
    """``agent/<name>``; the SDK's role pattern admits only [A-Za-z0-9_-] in the name."""
    safe = _ROLE_UNSAFE.sub("-", agent or "").strip("-")
    return f"agent/{safe}" if safe else "agent"


# ---- wire models (lenient: unknown fields are ignored, ACP is frozen and peers vary) ---------


class _Wire(BaseModel):
    model_config = ConfigDict(extra="ignore")


class ACPPart(_Wire):
    name: str | None = None
    content_type: str | None = "text/plain"
    content: str | None = None
    content_encoding: Literal["plain", "base64"] | None = "plain"
    content_url: str | None = None
    metadata: dict[str, Any] | None = None


class ACPMessage(_Wire):
    role: str = "user"
    parts: list[ACPPart] = Field(min_length=1)

    @field_validator("role")
    @classmethod
    def _role(cls, value: str) -> str:
        if value not in ("user", "agent") and not value.startswith("agent/"):
            raise ValueError("role is 'user', 'agent' or 'agent/<name>'")
        return value


class ACPSession(_Wire):
    id: str
    history: list[str] = Field(default_factory=list, max_length=10_000)
    state: str | None = None

    @field_validator("id")
    @classmethod
    def _uuid(cls, value: str) -> str:
        if from_uuid(value) is None:
            raise ValueError("session id must be a UUID")
        return value


Mode = Literal["sync", "async", "stream"]


class RunCreate(_Wire):
    agent_name: str = Field(min_length=1)
    input: list[ACPMessage] = Field(min_length=1)
    mode: Mode = "sync"
    session_id: str | None = None
    session: ACPSession | None = None

    @field_validator("session_id")
    @classmethod
    def _uuid(cls, value: str | None) -> str | None:
        if value is not None and from_uuid(value) is None:
            raise ValueError("session_id must be a UUID")
        return value


class AwaitResume(_Wire):
    type: str = "message"
    message: ACPMessage | None = None


class RunResume(_Wire):
    run_id: str | None = None
    await_resume: AwaitResume
    mode: Mode = "sync"


def validation_detail(exc: ValidationError) -> list[dict[str, Any]]:
    return [{"loc": list(e["loc"]), "msg": e["msg"]} for e in exc.errors(include_url=False, include_input=False)]


# ---- parts --------------------------------------------------------------------------------


def _media(content_type: str | None) -> str:
    return (content_type or "text/plain").split(";")[0].strip().lower() or "text/plain"


def _is_json(media: str) -> bool:
    return media == "application/json" or media.endswith("+json")


_URLSAFE = str.maketrans("-_", "+/")


def _standard_b64(content: str) -> str:
    """ACP base64 content as standard padded base64 (url-safe and unpadded forms are accepted)."""
    text = "".join(content.split()).translate(_URLSAFE)
    text += "=" * (-len(text) % 4)
    try:
        return base64.b64encode(base64.b64decode(text, validate=True)).decode("ascii")
    except (binascii.Error, ValueError):
        raise WireError("content_encoding is base64 but the content is not base64") from None


def part_in(p: ACPPart, *, keep_name: bool = True) -> Part:
    """One ACP MessagePart as a canonical part (the table's 'parts' rows)."""
    media = _media(p.content_type)
    meta: dict[str, Any] = {}
    if p.name and keep_name:
        meta[PART_NAME] = p.name
    if p.metadata:
        meta[PART_META] = p.metadata
    if p.content is not None and p.content_url is not None:
        raise WireError("a part has content or content_url, not both")
    if p.content_url is not None:
        return FilePart(url=p.content_url, media_type=media, filename=p.name, metadata=meta or None)
    content = p.content or ""
    if p.content_encoding == "base64":
        return FilePart(bytes=_standard_b64(content), media_type=media, filename=p.name, metadata=meta or None)
    if media == "text/plain":
        return TextPart(text=content, metadata=meta or None)
    if _is_json(media):
        try:
            data = strict_json.loads(content)
        except json.JSONDecodeError as exc:
            raise WireError(f"a part of type {media} does not hold valid JSON: {exc.msg}") from None
        if media != "application/json":
            meta[CONTENT_TYPE] = media
        return DataPart(data=data, metadata=meta or None)
    if media.startswith("text/"):
        return TextPart(text=content, metadata={**meta, CONTENT_TYPE: media})
    return FilePart.from_bytes(content.encode("utf-8"), media_type=media, filename=p.name, metadata=meta or None)


def part_out(part: Part, name: str | None = None) -> dict[str, Any]:
    """A canonical part as an ACP MessagePart; a name (the part's own from ACP input, else
    ``name``, its artifact's) makes it an ACP artifact."""
    meta = part.metadata or {}
    out: dict[str, Any] = {}
    if isinstance(part, TextPart):
        out = {"content_type": meta.get(CONTENT_TYPE, "text/plain"), "content": part.text, "content_encoding": "plain"}
    elif isinstance(part, DataPart):
        out = {
            "content_type": meta.get(CONTENT_TYPE, "application/json"),
            "content": json.dumps(part.data, separators=(",", ":"), ensure_ascii=False),
            "content_encoding": "plain",
        }
    elif part.url is not None:
        out = {"content_type": part.media_type or "application/octet-stream", "content_url": part.url}
    else:
        out = {
            "content_type": part.media_type or "application/octet-stream",
            "content": part.bytes,
            "content_encoding": "base64",
        }
    name = meta.get(PART_NAME) or name  # a part's own ACP name, else its artifact's
    if name:
        out["name"] = name
    if isinstance(meta.get(PART_META), dict):
        out["metadata"] = meta[PART_META]
    return out


def message_in(messages: list[ACPMessage]) -> Message:
    """The ACP input messages as one canonical user message (their parts in order)."""
    parts = [part_in(p) for m in messages for p in m.parts]
    return Message(role="user", parts=parts)


def resume_in(message: ACPMessage) -> Message:
    return Message(role="user", parts=[part_in(p) for p in message.parts])


def message_out(message: Message, agent: str | None) -> dict[str, Any]:
    role = "user" if message.role == "user" else agent_role(agent)
    return {"role": role, "parts": [part_out(p) for p in message.parts]}


def artifact_parts_out(artifact: Artifact) -> list[dict[str, Any]]:
    name = artifact.name
    return [part_out(p, name or (p.filename if isinstance(p, FilePart) else None)) for p in artifact.parts]


# ---- runs ---------------------------------------------------------------------------------


def _questions(task: Task) -> set[int]:
    """Indexes of the agent messages that asked the client something (a user message follows,
    or the task waits on it now). ACP keeps those in ``await_request``, not in ``output``."""
    asked = set()
    history = task.history
    for i, m in enumerate(history):
        if m.role != "agent":
            continue
        if i + 1 < len(history) and history[i + 1].role == "user":
            asked.add(i)
    if task.state.interrupted and task.status.message is not None:
        for i in range(len(history) - 1, -1, -1):
            if history[i].message_id == task.status.message.message_id:
                asked.add(i)
                break
    return asked


def output_out(task: Task) -> list[dict[str, Any]]:
    """Run.output: the agent's messages (not its questions, not a failure note), then one message
    holding every artifact's parts, then the completing status message when there is one."""
    agent = task.route.agent if task.route else None
    asked = _questions(task)
    final_id = task.status.message.message_id if task.status.message is not None else None
    before, closing = [], []
    for i, m in enumerate(task.history):
        if m.role != "agent" or i in asked:
            continue
        if m.message_id == final_id:
            if task.state is TaskState.COMPLETED:
                closing.append(message_out(m, agent))
            continue  # a failure/cancel note goes to Run.error
        before.append(message_out(m, agent))
    parts = [p for a in task.artifacts for p in artifact_parts_out(a)]
    artifacts = [{"role": agent_role(agent), "parts": parts}] if parts else []
    return before + artifacts + closing


def error_out(task: Task) -> dict[str, Any] | None:
    if task.state not in (TaskState.FAILED, TaskState.REJECTED):
        return None
    text = task.status.message.text() if task.status.message is not None else ""
    verb = "failed" if task.state is TaskState.FAILED else "rejected the run"
    return {"code": "server_error", "message": text or f"the agent {verb}", "data": {"state": task.state.value}}


def await_out(task: Task) -> dict[str, Any] | None:
    if not task.state.interrupted:
        return None
    agent = task.route.agent if task.route else None
    question = task.status.message
    if question is None:
        question = Message(role="agent", parts=[TextPart(text="")])
    return {"type": "message", "message": message_out(question, agent)}


def run_out(task: Task) -> dict[str, Any]:
    """A canonical task as an ACP Run."""
    return {
        "run_id": as_uuid(task.id) or task.id,
        "agent_name": task.route.agent if task.route else "",
        "session_id": as_uuid(task.context_id),
        "status": run_status(task.state),
        "await_request": await_out(task),
        "output": output_out(task),
        "error": error_out(task),
        "created_at": task.created_at,
        "finished_at": task.status.timestamp if task.state.terminal else None,
    }


def session_messages(task: Task) -> list[dict[str, Any]]:
    """What a run adds to its session's history: its input, then its output."""
    agent = task.route.agent if task.route else None
    first = [message_out(task.history[0], agent)] if task.history else []
    return first + output_out(task)


# ---- canonical events -> ACP events -------------------------------------------------------


class EventMapper:
    """Turns one task's canonical events into ACP events (for SSE streams and ``/events``).

    Artifact updates open an agent message (``message.created``) whose parts follow as
    ``message.part``; the next status update closes it (``message.completed``). Status updates
    become ``run.in-progress`` (on entering working), ``run.awaiting``, ``run.completed``,
    ``run.failed`` or ``run.cancelled``, each carrying the run as it is after the event; an agent
    message on a working or completing status becomes a whole message of its own.
    """

    def __init__(self, task: Task) -> None:
        self.task = task
        self.agent = task.route.agent if task.route else None
        self._open: list[dict[str, Any]] | None = None

    def run_event(self, kind: str) -> dict[str, Any]:
        return {"type": kind, "run": run_out(self.task)}

    def created(self) -> dict[str, Any]:
        return self.run_event("run.created")

    def _close(self) -> list[dict[str, Any]]:
        if self._open is None:
            return []
        parts, self._open = self._open, None
        return [{"type": "message.completed", "message": {"role": agent_role(self.agent), "parts": parts}}]

    def _whole(self, message: Message) -> list[dict[str, Any]]:
        wire = message_out(message, self.agent)
        return [
            {"type": "message.created", "message": {**wire, "parts": []}},
            *({"type": "message.part", "part": p} for p in wire["parts"]),
            {"type": "message.completed", "message": wire},
        ]

    def feed(self, event: TaskStatusUpdate | TaskArtifactUpdate) -> list[dict[str, Any]]:
        before = self.task.state
        try:
            self.task = self.task.apply(event)
        except (InvalidTransition, ValueError):
            return []  # a stale or foreign event: the stored task is the truth
        if isinstance(event, TaskArtifactUpdate):
            out: list[dict[str, Any]] = []
            if self._open is None:
                self._open = []
                out.append({"type": "message.created", "message": {"role": agent_role(self.agent), "parts": []}})
            for part in artifact_parts_out(event.artifact):
                self._open.append(part)
                out.append({"type": "message.part", "part": part})
            return out
        out = self._close()
        state, message = event.status.state, event.status.message
        agent_says = message is not None and message.role == "agent"
        if state is TaskState.WORKING:
            if before is not TaskState.WORKING:
                out.append(self.run_event("run.in-progress"))
            if agent_says:
                out += self._whole(message)  # type: ignore[arg-type]
        elif state.interrupted:
            out.append(self.run_event("run.awaiting"))
        elif state is TaskState.COMPLETED:
            if agent_says:
                out += self._whole(message)  # type: ignore[arg-type]
            out.append(self.run_event("run.completed"))
        elif state is TaskState.CANCELED:
            out.append(self.run_event("run.cancelled"))
        elif state in (TaskState.FAILED, TaskState.REJECTED):
            out.append(self.run_event("run.failed"))
        return out


def initial(task: Task) -> Task:
    """The task as it was when submitted (for replaying its events from the start)."""
    return task.model_copy(
        update={
            "history": task.history[:1],
            "artifacts": [],
            "status": task.status.model_copy(update={"state": TaskState.SUBMITTED, "message": None}),
        }
    )
