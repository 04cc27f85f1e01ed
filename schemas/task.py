"""The canonical task model every adapter translates to and from.

It follows A2A 1.0's task model (the richest of the four protocols): a Task carries a status,
the message history and the artifacts produced so far; streaming is a sequence of status and
artifact update events. ``Task.apply`` is the single place where events change a task, so the
legal state transitions are enforced in one spot for every backend.
"""

from __future__ import annotations

import base64
import binascii
import uuid
from datetime import UTC, datetime
from enum import Enum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# Task metadata key: a client follows this task's events as they happen, so an outbound connector
# should stream from its agent rather than make one blocking call (set by the protocol faces).
STREAM_HINT = "interlace.stream"
# Message (or task) metadata keys naming the tool of an MCP agent a task is for (the MCP connector
# calls it; the runtime puts that tool to the policy when the task is submitted or continued).
TOOL_KEYS = ("tool", "mcp.tool")


def tool_named(*metadata: dict[str, Any] | None) -> str | None:
    """The tool ``metadata`` names (a key of a later mapping overrides it in an earlier one)."""
    merged: dict[str, Any] = {}
    for meta in metadata:
        merged.update(meta or {})
    return next((merged[k] for k in TOOL_KEYS if isinstance(merged.get(k), str)), None)


def new_id() -> str:
    return uuid.uuid4().hex


def utcnow() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Model(BaseModel):
    """Base for canonical models: unknown fields are errors, not silently dropped."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    def dump(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True)


class TaskState(str, Enum):
    SUBMITTED = "submitted"
    WORKING = "working"
    INPUT_REQUIRED = "input-required"
    AUTH_REQUIRED = "auth-required"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELED = "canceled"
    REJECTED = "rejected"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_STATES

    @property
    def interrupted(self) -> bool:
        """The task waits for the client (a follow-up message or credentials)."""
        return self in (TaskState.INPUT_REQUIRED, TaskState.AUTH_REQUIRED)


TERMINAL_STATES = frozenset({TaskState.COMPLETED, TaskState.FAILED, TaskState.CANCELED, TaskState.REJECTED})

_S = TaskState
LEGAL_TRANSITIONS: dict[TaskState, frozenset[TaskState]] = {
    _S.SUBMITTED: frozenset(
        {_S.WORKING, _S.INPUT_REQUIRED, _S.AUTH_REQUIRED, _S.COMPLETED, _S.FAILED, _S.CANCELED, _S.REJECTED}
    ),
    # working -> working carries progress messages and marks a redelivered run.
    _S.WORKING: frozenset({_S.WORKING, _S.INPUT_REQUIRED, _S.AUTH_REQUIRED, _S.COMPLETED, _S.FAILED, _S.CANCELED}),
    _S.INPUT_REQUIRED: frozenset({_S.WORKING, _S.COMPLETED, _S.FAILED, _S.CANCELED}),
    _S.AUTH_REQUIRED: frozenset({_S.WORKING, _S.FAILED, _S.CANCELED}),
    _S.COMPLETED: frozenset(),
    _S.FAILED: frozenset(),
    _S.CANCELED: frozenset(),
    _S.REJECTED: frozenset(),
}


class TaskError(Exception):
    """Base of the typed errors the task model raises."""

    code = "task_error"


class InvalidTransition(TaskError):
    code = "invalid_transition"

    def __init__(self, current: TaskState, requested: TaskState):
        self.current, self.requested = current, requested
        super().__init__(f"illegal task transition {current.value} -> {requested.value}")


def check_transition(current: TaskState, requested: TaskState) -> None:
    if requested not in LEGAL_TRANSITIONS[current]:
        raise InvalidTransition(current, requested)


# ---- parts -------------------------------------------------------------------------------


class TextPart(Model):
    kind: Literal["text"] = "text"
    text: str
    metadata: dict[str, Any] | None = None


class DataPart(Model):
    kind: Literal["data"] = "data"
    data: Any
    metadata: dict[str, Any] | None = None


class FilePart(Model):
    """A file, inline (``bytes``: standard base64) or by reference (``url``), never both."""

    kind: Literal["file"] = "file"
    bytes: str | None = None
    url: str | None = None
    media_type: str | None = None
    filename: str | None = None
    metadata: dict[str, Any] | None = None

    @field_validator("bytes")
    @classmethod
    def _base64(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError) as exc:
                raise ValueError("bytes must be standard base64") from exc
        return value

    @model_validator(mode="after")
    def _one_source(self) -> FilePart:
        if (self.bytes is None) == (self.url is None):
            raise ValueError("a file part has exactly one of bytes or url")
        return self

    @classmethod
    def from_bytes(cls, raw: bytes, **kw: Any) -> FilePart:
        return cls(bytes=base64.b64encode(raw).decode("ascii"), **kw)

    def raw(self) -> bytes:
        if self.bytes is None:
            raise ValueError("file part holds a url, not bytes")
        return base64.b64decode(self.bytes)


Part = Annotated[TextPart | DataPart | FilePart, Field(discriminator="kind")]


# ---- messages, artifacts, tasks -----------------------------------------------------------


class Message(Model):
    message_id: str = Field(default_factory=new_id)
    role: Literal["user", "agent"]
    parts: list[Part] = Field(min_length=1)
    task_id: str | None = None
    context_id: str | None = None
    metadata: dict[str, Any] | None = None

    def text(self) -> str:
        return "".join(p.text for p in self.parts if isinstance(p, TextPart))


class Artifact(Model):
    artifact_id: str = Field(default_factory=new_id)
    name: str | None = None
    description: str | None = None
    parts: list[Part] = Field(min_length=1)
    metadata: dict[str, Any] | None = None


class TaskStatus(Model):
    state: TaskState
    message: Message | None = None
    timestamp: str = Field(default_factory=utcnow)


class Route(Model):
    """Where the router sent a task and why."""

    agent: str
    skill: str | None = None
    reason: str | None = None


class TaskStatusUpdate(Model):
    kind: Literal["status-update"] = "status-update"
    task_id: str
    context_id: str
    status: TaskStatus
    final: bool = False
    metadata: dict[str, Any] | None = None
    # The trace context of the follow-up that resumes a task (the runtime's continue): applying
    # the event makes it the task's ``trace``. Never serialized: it is not part of the event.
    trace: dict[str, str] | None = Field(default=None, exclude=True)

    @model_validator(mode="after")
    def _final_matches_state(self) -> TaskStatusUpdate:
        # final marks the end of a stream: a terminal state or a pause for the client.
        self.final = self.status.state.terminal or self.status.state.interrupted
        return self


class TaskArtifactUpdate(Model):
    kind: Literal["artifact-update"] = "artifact-update"
    task_id: str
    context_id: str
    artifact: Artifact
    append: bool = False
    last_chunk: bool = False
    metadata: dict[str, Any] | None = None


TaskEvent = Annotated[TaskStatusUpdate | TaskArtifactUpdate, Field(discriminator="kind")]


class Task(Model):
    id: str = Field(default_factory=new_id)
    context_id: str = Field(default_factory=new_id)
    status: TaskStatus = Field(default_factory=lambda: TaskStatus(state=TaskState.SUBMITTED))
    history: list[Message] = Field(default_factory=list)
    artifacts: list[Artifact] = Field(default_factory=list)
    metadata: dict[str, Any] = Field(default_factory=dict)
    route: Route | None = None
    created_at: str = Field(default_factory=utcnow)
    # The principal that created the task (its id); set by the runtime from the authenticated
    # caller, never from anything a client sends. Only the owner (or an admin) sees the task.
    owner: str | None = None
    # The owner's groups when it submitted the task: a forwarded task is judged at its home node
    # (policy, admin rights) by the same groups it had here.
    owner_groups: list[str] | None = None
    # The W3C trace context (traceparent, tracestate) of the runtime span that accepted the task,
    # when tracing is on: the worker that runs it, in any process or node, continues that trace.
    trace: dict[str, str] | None = None

    @property
    def state(self) -> TaskState:
        return self.status.state

    def status_event(self, state: TaskState, message: Message | None = None, **meta: Any) -> TaskStatusUpdate:
        return TaskStatusUpdate(
            task_id=self.id,
            context_id=self.context_id,
            status=TaskStatus(state=state, message=message),
            metadata=meta or None,
        )

    def artifact_event(
        self, artifact: Artifact, *, append: bool = False, last_chunk: bool = False
    ) -> TaskArtifactUpdate:
        return TaskArtifactUpdate(
            task_id=self.id, context_id=self.context_id, artifact=artifact, append=append, last_chunk=last_chunk
        )

    def snapshot(self) -> Task:
        """A copy whose lists can change without touching this task.

        Messages, parts and artifacts are treated as immutable values and shared; a pydantic
        deep copy of a task costs milliseconds and dominated the hot path.
        """
        return self.model_copy(
            update={"history": list(self.history), "artifacts": list(self.artifacts), "metadata": dict(self.metadata)}
        )

    def apply(self, event: TaskStatusUpdate | TaskArtifactUpdate) -> Task:
        """Return this task with ``event`` applied; raise InvalidTransition for an illegal one."""
        if event.task_id != self.id:
            raise ValueError(f"event for task {event.task_id} applied to task {self.id}")
        task = self.snapshot()
        if isinstance(event, TaskStatusUpdate):
            check_transition(task.state, event.status.state)
            task.status = event.status
            if event.status.message is not None:
                task.history.append(event.status.message)
            if event.trace is not None:
                task.trace = event.trace
            return task
        if task.state.terminal:
            raise InvalidTransition(task.state, task.state)
        task.artifacts = _merge_artifact(task.artifacts, event)
        return task


def _merge_artifact(artifacts: list[Artifact], event: TaskArtifactUpdate) -> list[Artifact]:
    incoming = event.artifact
    for i, existing in enumerate(artifacts):
        if existing.artifact_id != incoming.artifact_id:
            continue
        if not event.append:
            artifacts[i] = incoming
            return artifacts
        parts = list(existing.parts)
        for part in incoming.parts:
            # Streamed tokens arrive as many tiny text parts; keep the stored task compact.
            if isinstance(part, TextPart) and parts and isinstance(parts[-1], TextPart) and part.metadata is None:
                parts[-1] = TextPart(text=parts[-1].text + part.text, metadata=parts[-1].metadata)
            else:
                parts.append(part)
        artifacts[i] = existing.model_copy(update={"parts": parts})
        return artifacts
    artifacts.append(incoming)
    return artifacts
