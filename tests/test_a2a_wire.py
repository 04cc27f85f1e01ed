"""One test per row of the mapping table in protocols/a2a/wire.py: canonical <-> A2A 1.0, 0.3 JSON-RPC
and 0.3 REST, both directions."""

from __future__ import annotations

import dataclasses

import pytest

from protocols.a2a import errors
from protocols.a2a.errors import InvalidParamsError
from protocols.a2a.wire import DIRECT_REPLY, V03, V03_REST, V10, PushConfig, direct_reply
from schemas import Artifact, DataPart, FilePart, Message, Task, TaskState, TaskStatus, TextPart

B64 = "dGNr"  # b"tck"


def roundtrip(dialect, part):
    return dialect.part_in(dialect.part_out(part), "p")


@pytest.mark.parametrize(
    "part, v10, v03, v03rest",
    [
        (
            TextPart(text="hi", metadata={"k": 1}),
            {"text": "hi", "metadata": {"k": 1}},
            {"kind": "text", "text": "hi", "metadata": {"k": 1}},
            {"text": "hi", "metadata": {"k": 1}},
        ),
        (
            DataPart(data={"a": [1, 2]}),
            {"data": {"a": [1, 2]}},
            {"kind": "data", "data": {"a": [1, 2]}},
            {"data": {"data": {"a": [1, 2]}}},
        ),
        (
            FilePart(bytes=B64, media_type="text/plain", filename="o.txt"),
            {"raw": B64, "mediaType": "text/plain", "filename": "o.txt"},
            {"kind": "file", "file": {"bytes": B64, "mimeType": "text/plain", "name": "o.txt"}},
            {"file": {"fileWithBytes": B64, "mimeType": "text/plain", "name": "o.txt"}},
        ),
        (
            FilePart(url="https://x/o.txt", media_type="text/plain"),
            {"url": "https://x/o.txt", "mediaType": "text/plain"},
            {"kind": "file", "file": {"uri": "https://x/o.txt", "mimeType": "text/plain"}},
            {"file": {"fileWithUri": "https://x/o.txt", "mimeType": "text/plain"}},
        ),
    ],
    ids=["text", "data", "file-bytes", "file-url"],
)
def test_part_rows(part, v10, v03, v03rest):
    assert V10.part_out(part) == v10 and V03.part_out(part) == v03 and V03_REST.part_out(part) == v03rest
    for dialect in (V10, V03, V03_REST):
        assert roundtrip(dialect, part) == part


def test_data_part_non_object_is_wrapped_in_03():
    assert V03.part_out(DataPart(data=[1, 2])) == {"kind": "data", "data": {"value": [1, 2]}}
    assert V10.part_out(DataPart(data=[1, 2])) == {"data": [1, 2]}


def test_raw_bytes_accept_url_safe_unpadded_base64():
    assert V10.part_in({"raw": "-_8"}, "p").bytes == "+/8="
    with pytest.raises(InvalidParamsError):
        V10.part_in({"raw": "!!"}, "p")
    with pytest.raises(InvalidParamsError):
        V10.part_in({"text": "a", "url": "b"}, "p")


def test_message_row_roles_parts_ids_and_internal_metadata():
    m = Message(
        message_id="m",
        role="agent",
        parts=[TextPart(text="x")],
        task_id="t",
        context_id="c",
        metadata={"a": 1, "interlace.secret": 2},
    )
    assert V10.message_out(m) == {
        "messageId": "m",
        "role": "ROLE_AGENT",
        "parts": [{"text": "x"}],
        "contextId": "c",
        "taskId": "t",
        "metadata": {"a": 1},
    }
    assert V03.message_out(m)["kind"] == "message" and V03.message_out(m)["role"] == "agent"
    assert V03_REST.message_out(m)["content"] == [{"text": "x"}] and "parts" not in V03_REST.message_out(m)
    back = V10.message_in(V10.message_out(m))
    assert (back.message_id, back.role, back.task_id, back.context_id) == ("m", "agent", "t", "c")
    snake = V03_REST.message_in(
        {"message_id": "s", "role": "ROLE_USER", "content": [{"text": "y"}], "context_id": "c2"}
    )
    assert snake.message_id == "s" and snake.role == "user" and snake.context_id == "c2"
    with pytest.raises(InvalidParamsError):
        V10.message_in({"messageId": "m", "role": "ROLE_ROBOT", "parts": [{"text": "x"}]})
    with pytest.raises(InvalidParamsError):
        V10.message_in({"role": "ROLE_USER", "parts": [{"text": "x"}]})


@pytest.mark.parametrize("state", list(TaskState))
def test_state_row(state):
    assert V10.state_out(state) == "TASK_STATE_" + state.name
    assert V03.state_out(state) == state.value
    assert V03_REST.state_out(state) == (
        "TASK_STATE_CANCELLED" if state is TaskState.CANCELED else "TASK_STATE_" + state.name
    )
    for dialect in (V10, V03, V03_REST):
        assert dialect.state_in(dialect.state_out(state)) is state
    assert V10.state_in("TASK_STATE_UNSPECIFIED") is None and V03.state_in("unknown") is None


def test_task_status_and_artifact_rows():
    t = Task(
        id="t",
        context_id="c",
        status=TaskStatus(state=TaskState.COMPLETED, timestamp="2026-01-01T00:00:00.000Z"),
        history=[
            Message(role="user", parts=[TextPart(text="q")], message_id="1"),
            Message(role="agent", parts=[TextPart(text="a")], message_id="2"),
        ],
        artifacts=[Artifact(artifact_id="a1", name="n", description="d", parts=[TextPart(text="r")])],
        metadata={"x": 1},
    )
    out = V10.task_out(t)
    assert out["status"] == {"state": "TASK_STATE_COMPLETED", "timestamp": "2026-01-01T00:00:00.000Z"}
    assert out["artifacts"] == [{"artifactId": "a1", "name": "n", "description": "d", "parts": [{"text": "r"}]}]
    assert out["metadata"] == {"x": 1} and len(out["history"]) == 2
    assert [m["messageId"] for m in V10.task_out(t, history_length=1)["history"]] == ["2"]
    assert "history" not in V10.task_out(t, history_length=0)
    assert "artifacts" not in V10.task_out(t, include_artifacts=False)
    assert V03.task_out(t)["kind"] == "task"
    back = V03.task_in(V03.task_out(t))
    assert back.id == "t" and back.state is TaskState.COMPLETED and back.artifacts[0].parts == [TextPart(text="r")]


def test_event_rows():
    t = Task(id="t", context_id="c")
    status = t.status_event(TaskState.WORKING)
    art = t.artifact_event(Artifact(artifact_id="a", parts=[TextPart(text="x")]), append=True, last_chunk=True)
    assert set(V10.stream_event(status)) == {"statusUpdate"} and "final" not in V10.stream_event(status)["statusUpdate"]
    assert (
        V10.stream_event(art)["artifactUpdate"]["append"] is True
        and V10.stream_event(art)["artifactUpdate"]["lastChunk"] is True
    )
    old = V03.stream_event(status)
    assert old["kind"] == "status-update" and old["final"] is False and old["status"]["state"] == "working"
    assert V03.stream_event(art)["kind"] == "artifact-update"
    assert V03_REST.stream_event(t.status_event(TaskState.COMPLETED))["statusUpdate"]["final"] is True
    for dialect in (V10, V03, V03_REST):
        parsed = dialect.stream_in(dialect.stream_event(art))
        assert parsed.append and parsed.last_chunk and parsed.artifact.parts == [TextPart(text="x")]
        parsed_status = dialect.stream_in(dialect.stream_event(status))
        assert parsed_status.status.state is TaskState.WORKING


def test_direct_reply_row():
    reply = Message(role="agent", parts=[TextPart(text="hi")], metadata={DIRECT_REPLY: True})
    assert direct_reply(reply)
    assert V10.send_result(reply) == {
        "message": {"messageId": reply.message_id, "role": "ROLE_AGENT", "parts": [{"text": "hi"}]}
    }
    assert V03.send_result(reply)["kind"] == "message"
    assert isinstance(V03_REST.stream_in({"msg": V03_REST.message_out(reply)}), Message)


def test_push_config_rows():
    """Credentials are read in and never written out (write-only); everything else round-trips."""
    c = PushConfig(task_id="t", id="c1", url="https://h/x", token="tok", auth_scheme="Bearer", credentials="s")
    assert V10.push_out(c) == {
        "id": "c1",
        "taskId": "t",
        "url": "https://h/x",
        "token": "tok",
        "authentication": {"scheme": "Bearer"},
    }
    assert V03.push_out(c) == {
        "taskId": "t",
        "pushNotificationConfig": {
            "id": "c1",
            "url": "https://h/x",
            "token": "tok",
            "authentication": {"schemes": ["Bearer"]},
        },
    }
    assert V03_REST.push_out(c)["name"] == "tasks/t/pushNotificationConfigs/c1"
    given_v10 = {**V10.push_out(c), "authentication": {"scheme": "Bearer", "credentials": "s"}}
    assert V10.push_create_in(given_v10) == c
    given_v03 = V03.push_out(c)
    given_v03["pushNotificationConfig"]["authentication"]["credentials"] = "s"
    assert V03.push_create_in(given_v03) == c
    without = dataclasses.replace(c, credentials=None)
    assert V03_REST.push_create_in({"parent": "tasks/t", "config": V03_REST.push_out(c)}, "t") == without


def test_send_params_blocking_per_dialect():
    m = {"messageId": "m", "role": "ROLE_USER", "parts": [{"text": "x"}]}
    assert V10.send_params_in({"message": m}).blocking is True
    assert V10.send_params_in({"message": m, "configuration": {"returnImmediately": True}}).blocking is False
    m03 = {"kind": "message", "messageId": "m", "role": "user", "parts": [{"kind": "text", "text": "x"}]}
    assert V03.send_params_in({"message": m03}).blocking is True
    assert V03.send_params_in({"message": m03, "configuration": {"blocking": False}}).blocking is False
    rest = {"request": {"messageId": "m", "role": "ROLE_USER", "content": [{"text": "x"}]}}
    assert V03_REST.send_params_in(rest).blocking is False  # proto3: an absent bool is false
    assert V03_REST.send_params_in({**rest, "configuration": {"blocking": True}}).blocking is True
    with pytest.raises(InvalidParamsError):
        V10.send_params_in({"message": {**m, "role": "ROLE_AGENT"}})


# A2A 1.0.1 §5.4 (docs/specification.md of a2aproject/A2A at tag v1.0.1), row by row:
# error, JSON-RPC code, gRPC status, HTTP status, and the ErrorInfo reason we send.
SPEC_5_4 = [
    ("TaskNotFoundError", -32001, "NOT_FOUND", 404, "TASK_NOT_FOUND"),
    ("TaskNotCancelableError", -32002, "FAILED_PRECONDITION", 400, "TASK_NOT_CANCELABLE"),
    ("PushNotificationNotSupportedError", -32003, "FAILED_PRECONDITION", 400, "PUSH_NOTIFICATION_NOT_SUPPORTED"),
    ("UnsupportedOperationError", -32004, "FAILED_PRECONDITION", 400, "UNSUPPORTED_OPERATION"),
    ("ContentTypeNotSupportedError", -32005, "INVALID_ARGUMENT", 400, "CONTENT_TYPE_NOT_SUPPORTED"),
    ("InvalidAgentResponseError", -32006, "INTERNAL", 500, "INVALID_AGENT_RESPONSE"),
    ("ExtendedAgentCardNotConfiguredError", -32007, "FAILED_PRECONDITION", 400, "EXTENDED_AGENT_CARD_NOT_CONFIGURED"),
    ("ExtensionSupportRequiredError", -32008, "FAILED_PRECONDITION", 400, "EXTENSION_SUPPORT_REQUIRED"),
    ("VersionNotSupportedError", -32009, "FAILED_PRECONDITION", 400, "VERSION_NOT_SUPPORTED"),
]


@pytest.mark.parametrize("name, code, status, http, reason", SPEC_5_4, ids=[row[0] for row in SPEC_5_4])
def test_error_table_is_the_spec_mapping(name, code, status, http, reason):
    cls = getattr(errors, name)
    assert errors.BY_CODE[code] is cls
    err = cls("why")
    rest = err.rest("1.0")["error"]
    assert (rest["code"], rest["status"], rest["details"][0]["reason"]) == (http, status, reason)
    rpc = err.jsonrpc("1.0")
    assert rpc["code"] == code and rpc["data"][0]["reason"] == reason and rpc["data"][0]["domain"] == "a2a-protocol.org"
    legacy = err.rest("0.3")
    assert legacy["error"]["code"] == http and legacy["type"] in (name, "AuthenticatedExtendedCardNotConfiguredError")


def test_every_error_class_has_an_http_status_for_its_grpc_status():
    for cls in errors.BY_CODE.values():
        assert cls().http == errors.HTTP_STATUS[cls.status]
