"""The canonical model: JSON round trips, part validation and the legal state transitions."""

import pytest
from pydantic import TypeAdapter, ValidationError

from schemas import (
    LEGAL_TRANSITIONS,
    Artifact,
    DataPart,
    FilePart,
    InvalidTransition,
    Message,
    Route,
    Task,
    TaskArtifactUpdate,
    TaskEvent,
    TaskState,
    TaskStatus,
    TaskStatusUpdate,
    TextPart,
)

S = TaskState


def sample_message() -> Message:
    return Message(
        role="user",
        parts=[
            TextPart(text="héllo ✓"),
            DataPart(data={"n": 1, "nested": [1, "two", None, True]}),
            FilePart.from_bytes(b"\x00\x01binary\xff", media_type="application/octet-stream", filename="b.bin"),
            FilePart(url="https://example.com/a.png", media_type="image/png"),
        ],
        metadata={"k": "v"},
    )


def sample_task() -> Task:
    msg = sample_message()
    task = Task(history=[msg], metadata={"a": 1}, route=Route(agent="echo", reason="named"))
    task = task.apply(task.status_event(S.WORKING))
    return task.apply(task.artifact_event(Artifact(name="out", parts=msg.parts)))


@pytest.mark.parametrize(
    "model",
    [
        TextPart(text="x"),
        DataPart(data=[1, 2]),
        FilePart.from_bytes(b"abc"),
        sample_message(),
        Artifact(parts=[TextPart(text="a")]),
        TaskStatus(state=S.INPUT_REQUIRED, message=sample_message()),
        Route(agent="echo"),
        sample_task(),
        TaskStatusUpdate(task_id="t", context_id="c", status=TaskStatus(state=S.COMPLETED)),
        TaskArtifactUpdate(task_id="t", context_id="c", artifact=Artifact(parts=[TextPart(text="a")]), append=True),
    ],
    ids=lambda m: type(m).__name__,
)
def test_json_round_trip(model):
    again = type(model).model_validate_json(model.model_dump_json())
    assert again == model
    assert type(model).model_validate(model.dump()) == model


def test_event_union_round_trip():
    adapter = TypeAdapter(TaskEvent)
    for event in (
        TaskStatusUpdate(task_id="t", context_id="c", status=TaskStatus(state=S.WORKING)),
        TaskArtifactUpdate(task_id="t", context_id="c", artifact=Artifact(parts=[DataPart(data={})])),
    ):
        assert adapter.validate_json(event.model_dump_json()) == event


def test_binary_file_part_is_preserved():
    raw = bytes(range(256))
    part = FilePart.from_bytes(raw, media_type="application/octet-stream")
    assert FilePart.model_validate_json(part.model_dump_json()).raw() == raw


@pytest.mark.parametrize(
    "bad",
    [
        {"kind": "file", "media_type": "x/y"},  # neither bytes nor url
        {"kind": "file", "bytes": "AAAA", "url": "https://x"},  # both
        {"kind": "file", "bytes": "not base64!"},
        {"kind": "text"},  # missing text
        {"kind": "video", "text": "x"},  # unknown kind
        {"kind": "text", "text": "x", "extra": 1},  # unknown field
    ],
)
def test_invalid_parts_rejected(bad):
    with pytest.raises(ValidationError):
        Message.model_validate({"role": "user", "parts": [bad]})


def test_message_needs_parts_and_a_known_role():
    with pytest.raises(ValidationError):
        Message(role="user", parts=[])
    with pytest.raises(ValidationError):
        Message.model_validate({"role": "system", "parts": [{"kind": "text", "text": "x"}]})


def test_final_flag_follows_state():
    for state in S:
        ev = TaskStatusUpdate(task_id="t", context_id="c", status=TaskStatus(state=state), final=False)
        assert ev.final == (state.terminal or state.interrupted)


@pytest.mark.parametrize("current", list(S))
@pytest.mark.parametrize("requested", list(S))
def test_transitions(current, requested):
    task = Task(status=TaskStatus(state=current))
    event = task.status_event(requested)
    if requested in LEGAL_TRANSITIONS[current]:
        assert task.apply(event).state is requested
    else:
        with pytest.raises(InvalidTransition) as info:
            task.apply(event)
        assert info.value.current is current and info.value.requested is requested
        assert task.state is current  # the original is untouched


def test_terminal_states_allow_nothing():
    for state in (S.COMPLETED, S.FAILED, S.CANCELED, S.REJECTED):
        assert state.terminal and not LEGAL_TRANSITIONS[state]


def test_artifact_after_terminal_is_illegal():
    task = Task(status=TaskStatus(state=S.COMPLETED))
    with pytest.raises(InvalidTransition):
        task.apply(task.artifact_event(Artifact(parts=[TextPart(text="late")])))


def test_artifact_append_and_replace():
    task = Task(status=TaskStatus(state=S.WORKING))
    task = task.apply(task.artifact_event(Artifact(artifact_id="a", parts=[TextPart(text="he")])))
    task = task.apply(task.artifact_event(Artifact(artifact_id="a", parts=[TextPart(text="llo")]), append=True))
    task = task.apply(task.artifact_event(Artifact(artifact_id="a", parts=[DataPart(data=1)]), append=True))
    assert [p.model_dump(exclude_none=True) for p in task.artifacts[0].parts] == [
        {"kind": "text", "text": "hello"},
        {"kind": "data", "data": 1},
    ]
    task = task.apply(task.artifact_event(Artifact(artifact_id="a", parts=[TextPart(text="new")])))
    assert task.artifacts[0].parts == [TextPart(text="new")]


def test_status_message_goes_to_history():
    task = Task()
    note = Message(role="agent", parts=[TextPart(text="need more")])
    task = task.apply(task.status_event(S.INPUT_REQUIRED, note))
    assert task.history[-1] == note and task.state.interrupted


def test_event_for_another_task_is_refused():
    task = Task()
    with pytest.raises(ValueError):
        task.apply(Task().status_event(S.WORKING))
