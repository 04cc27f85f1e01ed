"""Pure translations between the canonical task model and A2A's three wire dialects.

Dialects: ``V10`` (A2A 1.0 ProtoJSON, both bindings), ``V03`` (A2A 0.3 JSON-RPC, JSON-Schema types
with ``kind``) and ``V03_REST`` (A2A 0.3 HTTP+JSON, the 0.3 proto's JSON: ``content``, ``file`` oneof,
``TASK_STATE_CANCELLED``). Every dialect translates both ways: the server side parses requests and
renders tasks and events; the outbound client parses a remote agent's tasks and events with the
same functions. Input keys are accepted in camelCase and in proto snake_case.

Mapping (canonical <-> 1.0 | 0.3 JSON-RPC | 0.3 REST), split into two tables with the same rows in
the same order: the first for A2A 1.0 and 0.3 JSON-RPC, the second for 0.3 REST.

| canonical | A2A 1.0 | A2A 0.3 JSON-RPC |
| --- | --- | --- |
| TextPart(text, metadata) | {text, metadata} | {kind:text, text, metadata} |
| DataPart(data) | {data: <any JSON>} | {kind:data, data: {..}} (*1) |
| FilePart(bytes, media_type, name) | {raw: b64, mediaType, filename} | {kind:file, file:{bytes,mimeType,name}} |
| FilePart(url, ...) | {url, mediaType, filename} | {kind:file, file:{uri,mimeType,name}} |
| Message.role user / agent | ROLE_USER / ROLE_AGENT | user / agent |
| Message.parts | parts | parts (+ kind:message) |
| Message ids, metadata | messageId, taskId, contextId, metadata (same in all three) |
| TaskState.<s> | TASK_STATE_<S> | <s> (e.g. input-required) |
| Task | {id, contextId, status, artifacts, history, metadata} (+ kind:task in 0.3 JSON-RPC) |
| TaskStatus | {state, message, timestamp} |
| Artifact | {artifactId, name, description, parts, metadata} |
| TaskStatusUpdate | {statusUpdate:{taskId,contextId,status,metadata}} | {kind:status-update, ..., final} |
| TaskArtifactUpdate | {artifactUpdate:{taskId,contextId,artifact,append,lastChunk}} | {kind:artifact-update, ...} |
| a direct reply (*2) | {message: Message} | Message (kind:message) |
| PushConfig | {taskId,id,url,token,authentication:{scheme,credentials}} | {taskId, pushNotificationConfig:{..}} (*3) |

| canonical | A2A 0.3 REST |
| --- | --- |
| TextPart(text, metadata) | {text, metadata} |
| DataPart(data) | {data: {data: {..}}} (*1) |
| FilePart(bytes, media_type, name) | {file:{fileWithBytes,mimeType,name}} |
| FilePart(url, ...) | {file:{fileWithUri,mimeType,name}} |
| Message.role user / agent | ROLE_USER / ROLE_AGENT |
| Message.parts | content |
| Message ids, metadata | messageId, taskId, contextId, metadata (same in all three) |
| TaskState.<s> | TASK_STATE_<S> (CANCELLED) |
| Task | {id, contextId, status, artifacts, history, metadata} (as in 1.0) |
| TaskStatus | {state, message, timestamp} (as in 1.0) |
| Artifact | {artifactId, name, description, parts, metadata} (as in 1.0) |
| TaskStatusUpdate | {statusUpdate:{..., final}} |
| TaskArtifactUpdate | {artifactUpdate:{...}} |
| a direct reply (*2) | {message: Message} |
| PushConfig | {name:"tasks/T/pushNotificationConfigs/I", pushNotificationConfig:{..}} |

(*1) 0.3 data parts hold an object; any other JSON value is wrapped as ``{"value": x}`` on the way out.
(*2) An agent answers with a bare Message (no task) by completing its task with a status message whose
metadata carries ``DIRECT_REPLY`` (see ``direct_reply``); SendMessage then returns that message.
(*3) The 0.3 JSON-RPC ``pushNotificationConfig`` is
``{id,url,token,authentication:{schemes[],credentials}}``.
Push ``credentials`` are write-only in every dialect: read in, stored, sent to the webhook, never
returned by create, get or list.
Not carried: Message ``extensions``/``referenceTaskIds`` and a text part's ``mediaType``/``filename``;
metadata keys starting ``interlace.`` are internal and never rendered.
"""

from __future__ import annotations

import base64
import binascii
import functools
import re
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from protocols.a2a.errors import InvalidParamsError
from schemas import (
    Artifact,
    DataPart,
    FilePart,
    Message,
    Task,
    TaskArtifactUpdate,
    TaskState,
    TaskStatus,
    TaskStatusUpdate,
    TextPart,
)

DIRECT_REPLY = "interlace.a2a.direct"  # metadata flag on a status message: the agent replied with a Message
REMOTE_IDS = "interlace.a2a.remote"  # metadata on a connector's status message: the remote task/context ids
INTERNAL_PREFIX = "interlace."

_CAMEL = re.compile(r"(?<!^)(?=[A-Z])")


@functools.lru_cache(maxsize=256)
def _snake(name: str) -> str:
    return _CAMEL.sub("_", name).lower()


def get(d: dict, key: str, default: Any = None) -> Any:
    """``d[key]`` by its camelCase name or its proto snake_case name."""
    if key in d:
        return d[key]
    return d.get(_snake(key), default)


def obj(d: dict, key: str, where: str) -> dict | None:
    value = get(d, key)
    if value is None:
        return None
    if not isinstance(value, dict):
        raise InvalidParamsError(f"{where}.{key} must be an object")
    return value


def string(d: dict, key: str, where: str, *, required: bool = False) -> str | None:
    value = get(d, key)
    if value is None or value == "":
        if required:
            raise InvalidParamsError(f"{where}.{key} is required")
        return None
    if not isinstance(value, str):
        raise InvalidParamsError(f"{where}.{key} must be a string")
    return value


def integer(d: dict, key: str, where: str, low: int = 0, high: int = 1 << 31) -> int | None:
    value = get(d, key)
    if value is None or value == "":
        return None
    try:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ValueError
        number = int(value)
    except (TypeError, ValueError):
        raise InvalidParamsError(f"{where}.{key} must be an integer") from None
    if not low <= number <= high:
        raise InvalidParamsError(f"{where}.{key} must be within [{low}, {high}]")
    return number


def boolean(d: dict, key: str, where: str) -> bool | None:
    value = get(d, key)
    if value is None:
        return None
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise InvalidParamsError(f"{where}.{key} must be a boolean")


def _std_base64(value: Any, where: str) -> str:
    """ProtoJSON bytes (standard or URL-safe alphabet, padding optional) as standard padded base64."""
    if not isinstance(value, str):
        raise InvalidParamsError(f"{where} must be a base64 string")
    text = value.replace("-", "+").replace("_", "/")
    text += "=" * (-len(text) % 4)
    try:
        return base64.b64encode(base64.b64decode(text, validate=True)).decode("ascii")
    except (binascii.Error, ValueError):
        raise InvalidParamsError(f"{where} is not valid base64") from None


def public_metadata(meta: dict[str, Any] | None) -> dict[str, Any] | None:
    if not meta:
        return None
    out = {k: v for k, v in meta.items() if not k.startswith(INTERNAL_PREFIX)}
    return out or None


def direct_reply(message: Message | None) -> bool:
    return bool(message is not None and message.metadata and message.metadata.get(DIRECT_REPLY))


def history_slice(history: list[Message], length: int | None) -> list[Message]:
    if length is None:
        return history
    return history[-length:] if length > 0 else []


def _put(out: dict, key: str, value: Any) -> None:
    if value not in (None, "", [], {}):
        out[key] = value


@dataclass
class SendParams:
    message: Message
    metadata: dict[str, Any] | None
    blocking: bool
    history_length: int | None
    accepted_output_modes: list[str]
    push: PushConfig | None


@dataclass
class PushConfig:
    task_id: str
    id: str
    url: str
    token: str | None = None
    auth_scheme: str | None = None
    credentials: str | None = None

    def dump(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


def _file_in(f: dict, where: str, meta: dict | None, bytes_key: str, uri_key: str) -> FilePart:
    """A 0.3 file (JSON-RPC ``bytes``/``uri`` or proto ``fileWithBytes``/``fileWithUri``)."""
    media, name = string(f, "mimeType", where), string(f, "name", where)
    if get(f, bytes_key) is not None:
        return FilePart(
            bytes=_std_base64(get(f, bytes_key), f"{where}.{bytes_key}"), media_type=media, filename=name, metadata=meta
        )
    if get(f, uri_key) is not None:
        return FilePart(url=string(f, uri_key, where, required=True), media_type=media, filename=name, metadata=meta)
    raise InvalidParamsError(f"{where} holds neither {bytes_key} nor {uri_key}")


def _object(value: Any, where: str) -> dict:
    if not isinstance(value, dict):
        raise InvalidParamsError(f"{where} must be an object")
    return value


def _array(value: Any, where: str) -> list:
    """An optional list field (absent: empty)."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise InvalidParamsError(f"{where} must be a list")
    return value


def _text_part(d: dict, where: str, meta: dict | None) -> TextPart:
    text = get(d, "text")
    if not isinstance(text, str):
        raise InvalidParamsError(f"{where}.text must be a string")
    return TextPart(text=text, metadata=meta)


def _push_v03(c: PushConfig) -> dict[str, Any]:
    inner: dict[str, Any] = {"id": c.id, "url": c.url}
    _put(inner, "token", c.token)
    if c.auth_scheme:  # credentials are write-only: stored and sent to the webhook, never returned
        inner["authentication"] = {"schemes": [c.auth_scheme]}
    return inner


class Dialect:
    """One wire dialect; subclasses override the shapes that differ."""

    version = "1.0"
    name = "1.0"
    _STATES: dict[TaskState, str] = {s: "TASK_STATE_" + s.name for s in TaskState}
    _ROLES = {"user": "ROLE_USER", "agent": "ROLE_AGENT"}
    parts_key = "parts"

    def __init__(self) -> None:
        self._state_in = {v: k for k, v in self._STATES.items()}
        self._state_in.update({s.value: s for s in TaskState})
        self._state_in.update({"TASK_STATE_" + s.name: s for s in TaskState})
        self._state_in["TASK_STATE_CANCELLED"] = TaskState.CANCELED
        self._state_in["cancelled"] = TaskState.CANCELED
        self._role_in = {v: k for k, v in self._ROLES.items()} | {
            "user": "user",
            "agent": "agent",
            1: "user",
            2: "agent",
        }

    # ---- enums -------------------------------------------------------------------------------

    def state_out(self, state: TaskState) -> str:
        return self._STATES[state]

    def state_in(self, raw: Any, where: str = "status.state") -> TaskState | None:
        """A wire state; None for UNSPECIFIED/unknown (a remote may send it); InvalidParams otherwise."""
        if raw in ("TASK_STATE_UNSPECIFIED", "unknown", 0, None, ""):
            return None
        try:
            return self._state_in[raw]
        except (KeyError, TypeError):
            raise InvalidParamsError(f"{where}: unknown task state {raw!r}") from None

    def role_in(self, raw: Any, where: str) -> str:
        try:
            return self._role_in[raw]
        except (KeyError, TypeError):
            raise InvalidParamsError(f"{where}.role must be one of {sorted(self._ROLES.values())}") from None

    # ---- parts -------------------------------------------------------------------------------

    def part_in(self, d: Any, where: str):
        d = _object(d, where)
        meta = obj(d, "metadata", where)
        present = [k for k in ("text", "raw", "url", "data") if get(d, k) is not None]
        if len(present) != 1:
            raise InvalidParamsError(f"{where} must hold exactly one of text, raw, url, data")
        kind = present[0]
        if kind == "text":
            return _text_part(d, where, meta)
        if kind == "data":
            return DataPart(data=get(d, "data"), metadata=meta)
        media, filename = string(d, "mediaType", where), string(d, "filename", where)
        if kind == "raw":
            return FilePart(
                bytes=_std_base64(get(d, "raw"), f"{where}.raw"), media_type=media, filename=filename, metadata=meta
            )
        return FilePart(url=string(d, "url", where, required=True), media_type=media, filename=filename, metadata=meta)

    def part_out(self, p) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if isinstance(p, TextPart):
            out["text"] = p.text
        elif isinstance(p, DataPart):
            out["data"] = p.data
        else:
            if p.bytes is not None:
                out["raw"] = p.bytes
            else:
                out["url"] = p.url
            _put(out, "mediaType", p.media_type)
            _put(out, "filename", p.filename)
        _put(out, "metadata", p.metadata)
        return out

    def parts_in(self, d: dict, where: str, key: str | None = None) -> list:
        key = key or self.parts_key
        raw = get(d, key)
        if not isinstance(raw, list) or not raw:
            raise InvalidParamsError(f"{where}.{key} must be a non-empty list")
        return [self.part_in(p, f"{where}.{key}[{i}]") for i, p in enumerate(raw)]

    # ---- messages, artifacts, tasks ----------------------------------------------------------

    def message_in(self, d: Any, where: str = "message") -> Message:
        d = _object(d, where)
        if get(d, "role") is None:
            raise InvalidParamsError(f"{where}.role is required")
        try:
            return Message(
                message_id=string(d, "messageId", where, required=True),
                role=self.role_in(get(d, "role"), where),
                parts=self.parts_in(d, where),
                task_id=string(d, "taskId", where),
                context_id=string(d, "contextId", where),
                metadata=obj(d, "metadata", where),
            )
        except ValidationError as exc:
            raise InvalidParamsError(f"{where} is invalid: {exc.errors()[0]['msg']}") from None

    def message_out(self, m: Message) -> dict[str, Any]:
        out: dict[str, Any] = {
            "messageId": m.message_id,
            "role": self._ROLES[m.role],
            self.parts_key: [self.part_out(p) for p in m.parts],
        }
        _put(out, "contextId", m.context_id)
        _put(out, "taskId", m.task_id)
        _put(out, "metadata", public_metadata(m.metadata))
        return out

    def artifact_in(self, d: Any, where: str = "artifact") -> Artifact:
        d = _object(d, where)
        return Artifact(
            artifact_id=string(d, "artifactId", where) or f"artifact-{id(d):x}",
            name=string(d, "name", where),
            description=string(d, "description", where),
            parts=self.parts_in(d, where, "parts"),
            metadata=obj(d, "metadata", where),
        )

    def artifact_out(self, a: Artifact) -> dict[str, Any]:
        out: dict[str, Any] = {"artifactId": a.artifact_id}
        _put(out, "name", a.name)
        _put(out, "description", a.description)
        out["parts"] = [self.part_out(p) for p in a.parts]
        _put(out, "metadata", public_metadata(a.metadata))
        return out

    def status_out(self, s: TaskStatus) -> dict[str, Any]:
        out: dict[str, Any] = {"state": self.state_out(s.state)}
        if s.message is not None:
            out["message"] = self.message_out(s.message)
        out["timestamp"] = s.timestamp
        return out

    def status_in(self, d: Any, where: str = "status") -> TaskStatus | None:
        d = _object(d, where)
        state = self.state_in(get(d, "state"), f"{where}.state")
        if state is None:
            return None
        msg = get(d, "message") or get(d, "update")
        message = self.message_in(msg, f"{where}.message") if msg else None
        ts = string(d, "timestamp", where)
        return TaskStatus(state=state, message=message, **({"timestamp": ts} if ts else {}))

    def task_out(self, t: Task, history_length: int | None = None, include_artifacts: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = {"id": t.id, "contextId": t.context_id, "status": self.status_out(t.status)}
        if include_artifacts:
            _put(out, "artifacts", [self.artifact_out(a) for a in t.artifacts])
        _put(out, "history", [self.message_out(m) for m in history_slice(t.history, history_length)])
        _put(out, "metadata", public_metadata(t.metadata))
        return out

    def task_in(self, d: Any, where: str = "task") -> Task:
        """A remote agent's task (ids are the remote's)."""
        d = _object(d, where)
        status = self.status_in(get(d, "status") or {"state": "TASK_STATE_SUBMITTED"}, f"{where}.status")
        return Task(
            id=string(d, "id", where, required=True),
            context_id=string(d, "contextId", where) or "",
            status=status or TaskStatus(state=TaskState.WORKING),
            artifacts=[
                self.artifact_in(a, f"{where}.artifacts[{i}]")
                for i, a in enumerate(_array(get(d, "artifacts"), f"{where}.artifacts"))
            ],
            history=[
                self.message_in(m, f"{where}.history[{i}]")
                for i, m in enumerate(_array(get(d, "history"), f"{where}.history"))
            ],
            metadata=obj(d, "metadata", where) or {},
        )

    # ---- streaming and results ---------------------------------------------------------------

    def status_update_out(self, ev: TaskStatusUpdate) -> dict[str, Any]:
        out: dict[str, Any] = {"taskId": ev.task_id, "contextId": ev.context_id, "status": self.status_out(ev.status)}
        _put(out, "metadata", public_metadata(ev.metadata))
        return out

    def artifact_update_out(self, ev: TaskArtifactUpdate) -> dict[str, Any]:
        out: dict[str, Any] = {
            "taskId": ev.task_id,
            "contextId": ev.context_id,
            "artifact": self.artifact_out(ev.artifact),
        }
        if ev.append:
            out["append"] = True
        if ev.last_chunk:
            out["lastChunk"] = True
        _put(out, "metadata", public_metadata(ev.metadata))
        return out

    def stream_task(self, t: Task, history_length: int | None = None) -> dict[str, Any]:
        return {"task": self.task_out(t, history_length)}

    def stream_message(self, m: Message) -> dict[str, Any]:
        return {"message": self.message_out(m)}

    def stream_event(self, ev: TaskStatusUpdate | TaskArtifactUpdate) -> dict[str, Any]:
        if isinstance(ev, TaskStatusUpdate):
            return {"statusUpdate": self.status_update_out(ev)}
        return {"artifactUpdate": self.artifact_update_out(ev)}

    def send_result(self, result: Task | Message, history_length: int | None = None) -> dict[str, Any]:
        if isinstance(result, Message):
            return self.stream_message(result)
        return self.stream_task(result, history_length)

    def stream_in(self, d: Any) -> Task | Message | TaskStatusUpdate | TaskArtifactUpdate | None:
        """One streamed item (or a SendMessage result) from a remote agent, in canonical types."""
        d = _object(d, "a stream item")
        if get(d, "task") is not None:
            return self.task_in(get(d, "task"))
        if get(d, "message") is not None or get(d, "msg") is not None:
            return self.message_in(get(d, "message") or get(d, "msg"))
        if get(d, "statusUpdate") is not None:
            return self._status_update_in(get(d, "statusUpdate"))
        if get(d, "artifactUpdate") is not None:
            return self._artifact_update_in(get(d, "artifactUpdate"))
        raise InvalidParamsError("unrecognised stream item")

    def _status_update_in(self, d: Any) -> TaskStatusUpdate | None:
        d = _object(d, "statusUpdate")
        status = self.status_in(get(d, "status"), "statusUpdate.status")
        if status is None:
            return None
        return TaskStatusUpdate(
            task_id=string(d, "taskId", "statusUpdate") or "",
            context_id=string(d, "contextId", "statusUpdate") or "",
            status=status,
        )

    def _artifact_update_in(self, d: Any) -> TaskArtifactUpdate:
        d = _object(d, "artifactUpdate")
        return TaskArtifactUpdate(
            task_id=string(d, "taskId", "artifactUpdate") or "",
            context_id=string(d, "contextId", "artifactUpdate") or "",
            artifact=self.artifact_in(get(d, "artifact"), "artifactUpdate.artifact"),
            append=bool(get(d, "append")),
            last_chunk=bool(get(d, "lastChunk")),
        )

    # ---- requests ----------------------------------------------------------------------------

    def send_params_in(self, params: Any) -> SendParams:
        params = _object(params, "params")
        raw = get(params, "message")
        if raw is None:
            raw = get(params, "request")  # the 0.3 proto's field name
        if raw is None:
            raise InvalidParamsError("params.message is required")
        message = self.message_in(raw, "params.message")
        if message.role != "user":
            raise InvalidParamsError("params.message.role must be the user role")
        conf = obj(params, "configuration", "params") or {}
        modes = get(conf, "acceptedOutputModes") or []
        if not isinstance(modes, list) or not all(isinstance(m, str) for m in modes):
            raise InvalidParamsError("configuration.acceptedOutputModes must be a list of strings")
        push_raw = self._inline_push(conf)
        push = self.push_in(push_raw, "", "configuration.pushNotificationConfig") if push_raw else None
        return SendParams(
            message=message,
            metadata=obj(params, "metadata", "params"),
            blocking=self._blocking(conf),
            history_length=integer(conf, "historyLength", "configuration"),
            accepted_output_modes=modes,
            push=push,
        )

    def _blocking(self, conf: dict) -> bool:
        return not boolean(conf, "returnImmediately", "configuration")

    def _inline_push(self, conf: dict) -> dict | None:
        return obj(conf, "taskPushNotificationConfig", "configuration")

    def send_params_out(
        self,
        message: Message,
        *,
        blocking: bool = True,
        metadata: dict | None = None,
        history_length: int | None = None,
    ) -> dict[str, Any]:
        out: dict[str, Any] = {"message": self.message_out(message), "configuration": self._configuration_out(blocking)}
        if history_length is not None:
            out["configuration"]["historyLength"] = history_length
        _put(out, "metadata", metadata)
        return out

    def _configuration_out(self, blocking: bool) -> dict[str, Any]:
        return {"returnImmediately": not blocking}

    # ---- push notification configs -----------------------------------------------------------

    def push_in(self, d: Any, task_id: str, where: str = "params") -> PushConfig:
        d = _object(d, where)
        auth = obj(d, "authentication", where) or {}
        scheme = get(auth, "scheme")
        if scheme is None and isinstance(get(auth, "schemes"), list) and get(auth, "schemes"):
            scheme = get(auth, "schemes")[0]
        return PushConfig(
            task_id=string(d, "taskId", where) or task_id,
            id=string(d, "id", where) or "",
            url=string(d, "url", where, required=True),
            token=string(d, "token", where),
            auth_scheme=scheme if isinstance(scheme, str) and scheme else None,
            credentials=string(auth, "credentials", f"{where}.authentication") if auth else None,
        )

    def push_out(self, c: PushConfig) -> dict[str, Any]:
        out: dict[str, Any] = {"id": c.id, "taskId": c.task_id, "url": c.url}
        _put(out, "token", c.token)
        if c.auth_scheme:  # credentials are write-only: stored and sent to the webhook, never returned
            out["authentication"] = {"scheme": c.auth_scheme}
        return out

    def push_create_in(self, params: Any, task_id: str | None = None) -> PushConfig:
        params = _object(params, "params")
        cfg = self.push_in(params, task_id or "", "params")
        if not cfg.task_id:
            raise InvalidParamsError("params.taskId is required")
        return cfg

    def push_list_out(self, configs: list[PushConfig]) -> Any:
        return {"configs": [self.push_out(c) for c in configs]}

    _PUSH_TASK_KEY, _PUSH_ID_KEY = "taskId", "id"  # the params of push config get/list/delete

    def push_get_params(self, params: Any) -> tuple[str, str | None]:
        params = _object(params, "params")
        return string(params, self._PUSH_TASK_KEY, "params", required=True), string(params, self._PUSH_ID_KEY, "params")

    def push_list_params(self, params: Any) -> str:
        return string(_object(params, "params"), self._PUSH_TASK_KEY, "params", required=True)


class V03Dialect(Dialect):
    """A2A 0.3 JSON-RPC: JSON-Schema types with a ``kind`` discriminator."""

    version = "0.3"
    name = "0.3"
    _STATES = {s: s.value for s in TaskState}
    _ROLES = {"user": "user", "agent": "agent"}
    _PUSH_TASK_KEY, _PUSH_ID_KEY = "id", "pushNotificationConfigId"

    def part_in(self, d: Any, where: str):
        d = _object(d, where)
        kind = get(d, "kind")
        meta = obj(d, "metadata", where)
        if kind is None:  # tolerate a 1.0-shaped part
            return super().part_in(d, where)
        if kind == "text":
            return _text_part(d, where, meta)
        if kind == "data":
            data = get(d, "data")
            if not isinstance(data, dict):
                raise InvalidParamsError(f"{where}.data must be an object")
            return DataPart(data=data, metadata=meta)
        if kind == "file":
            f = obj(d, "file", where)
            if f is None:
                raise InvalidParamsError(f"{where}.file is required")
            return _file_in(f, f"{where}.file", meta, "bytes", "uri")
        raise InvalidParamsError(f"{where}.kind must be text, file or data")

    def part_out(self, p) -> dict[str, Any]:
        if isinstance(p, TextPart):
            out: dict[str, Any] = {"kind": "text", "text": p.text}
        elif isinstance(p, DataPart):
            out = {"kind": "data", "data": p.data if isinstance(p.data, dict) else {"value": p.data}}
        else:
            f: dict[str, Any] = {"bytes": p.bytes} if p.bytes is not None else {"uri": p.url}
            _put(f, "mimeType", p.media_type)
            _put(f, "name", p.filename)
            out = {"kind": "file", "file": f}
        _put(out, "metadata", p.metadata)
        return out

    def message_out(self, m: Message) -> dict[str, Any]:
        return {"kind": "message", **super().message_out(m)}

    def task_out(self, t: Task, history_length: int | None = None, include_artifacts: bool = True) -> dict[str, Any]:
        return {"kind": "task", **super().task_out(t, history_length, include_artifacts)}

    def status_update_out(self, ev: TaskStatusUpdate) -> dict[str, Any]:
        return {"kind": "status-update", **super().status_update_out(ev), "final": ev.final}

    def artifact_update_out(self, ev: TaskArtifactUpdate) -> dict[str, Any]:
        out = super().artifact_update_out(ev)
        return {"kind": "artifact-update", **out, "append": ev.append, "lastChunk": ev.last_chunk}

    def stream_task(self, t: Task, history_length: int | None = None) -> dict[str, Any]:
        return self.task_out(t, history_length)

    def stream_message(self, m: Message) -> dict[str, Any]:
        return self.message_out(m)

    def stream_event(self, ev):
        return self.status_update_out(ev) if isinstance(ev, TaskStatusUpdate) else self.artifact_update_out(ev)

    def stream_in(self, d: Any):
        d = _object(d, "a stream item")
        kind = get(d, "kind")
        if kind == "task":
            return self.task_in(d)
        if kind == "message":
            return self.message_in(d)
        if kind == "status-update":
            return self._status_update_in(d)
        if kind == "artifact-update":
            return self._artifact_update_in(d)
        return super().stream_in(d)

    def _blocking(self, conf: dict) -> bool:
        return boolean(conf, "blocking", "configuration") is not False

    def _inline_push(self, conf: dict) -> dict | None:
        return obj(conf, "pushNotificationConfig", "configuration")

    def _configuration_out(self, blocking: bool) -> dict[str, Any]:
        return {"blocking": blocking}

    def push_create_in(self, params: Any, task_id: str | None = None) -> PushConfig:
        params = _object(params, "params")
        inner = obj(params, "pushNotificationConfig", "params")
        if inner is None:
            raise InvalidParamsError("params.pushNotificationConfig is required")
        tid = string(params, "taskId", "params") or task_id
        if not tid:
            raise InvalidParamsError("params.taskId is required")
        return self.push_in(inner, tid, "params.pushNotificationConfig")

    def push_out(self, c: PushConfig) -> dict[str, Any]:
        return {"taskId": c.task_id, "pushNotificationConfig": _push_v03(c)}

    def push_list_out(self, configs: list[PushConfig]) -> Any:
        return [self.push_out(c) for c in configs]


class V03RestDialect(Dialect):
    """A2A 0.3 HTTP+JSON: the JSON form of the 0.3 proto (``content``, a ``file`` oneof, CANCELLED)."""

    version = "0.3"
    name = "0.3-rest"
    _STATES = {s: "TASK_STATE_" + s.name for s in TaskState} | {TaskState.CANCELED: "TASK_STATE_CANCELLED"}
    parts_key = "content"

    def part_in(self, d: Any, where: str):
        d = _object(d, where)
        meta = obj(d, "metadata", where)
        if get(d, "text") is not None:
            return _text_part(d, where, meta)
        if get(d, "file") is not None:
            return _file_in(obj(d, "file", where) or {}, f"{where}.file", meta, "fileWithBytes", "fileWithUri")
        if get(d, "data") is not None:
            inner = obj(d, "data", where)
            data = get(inner, "data", {}) if inner is not None else {}
            return DataPart(data=data, metadata=meta)
        raise InvalidParamsError(f"{where} must hold one of text, file, data")

    def part_out(self, p) -> dict[str, Any]:
        if isinstance(p, TextPart):
            out: dict[str, Any] = {"text": p.text}
        elif isinstance(p, DataPart):
            out = {"data": {"data": p.data if isinstance(p.data, dict) else {"value": p.data}}}
        else:
            f: dict[str, Any] = {"fileWithBytes": p.bytes} if p.bytes is not None else {"fileWithUri": p.url}
            _put(f, "mimeType", p.media_type)
            _put(f, "name", p.filename)
            out = {"file": f}
        _put(out, "metadata", p.metadata)
        return out

    def status_update_out(self, ev: TaskStatusUpdate) -> dict[str, Any]:
        return {**super().status_update_out(ev), "final": ev.final}

    def _blocking(self, conf: dict) -> bool:
        # A proto3 bool: an absent ``blocking`` is false (the 0.3 SDK reads it so, and its client
        # sends ``blocking: true`` when it wants to wait).
        return boolean(conf, "blocking", "configuration") is True

    def _inline_push(self, conf: dict) -> dict | None:
        return obj(conf, "pushNotification", "configuration") or obj(conf, "pushNotificationConfig", "configuration")

    _configuration_out = V03Dialect._configuration_out

    def push_create_in(self, params: Any, task_id: str | None = None) -> PushConfig:
        params = _object(params, "body")
        body = obj(params, "config", "body") or params
        inner = obj(body, "pushNotificationConfig", "body")
        if inner is None:
            raise InvalidParamsError("pushNotificationConfig is required")
        cfg = self.push_in(inner, task_id or "", "pushNotificationConfig")
        if not cfg.id:
            cfg.id = string(params, "configId", "body") or ""
        return cfg

    def push_out(self, c: PushConfig) -> dict[str, Any]:
        return {"name": f"tasks/{c.task_id}/pushNotificationConfigs/{c.id}", "pushNotificationConfig": _push_v03(c)}

    def push_list_out(self, configs: list[PushConfig]) -> Any:
        return {"configs": [self.push_out(c) for c in configs]}


V10 = Dialect()
V03 = V03Dialect()
V03_REST = V03RestDialect()
