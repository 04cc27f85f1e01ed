"""ACP <-> canonical mapping, row by row (the tables in protocols/acp/__init__.py): run states both
ways, parts both ways, runs, the event mapping, the connector's reading of remote events, the
endpoint convention, manifests from records and connectors made from records."""

from __future__ import annotations

import base64

import pytest

import protocols.acp as acp_pkg
from agents.worker import TaskFailed
from gateway.core.runtime import Runtime
from protocols.acp import wire
from protocols.acp.connector import ACPConnector, _Relay, split_endpoint
from protocols.acp.server import manifest_out
from protocols.acp.wire import ACPMessage, ACPPart, EventMapper, WireError, part_in, part_out
from registry.identity import Identity
from schemas import Artifact, DataPart, FilePart, Message, Route, Task, TaskArtifactUpdate, TaskState, TextPart
from schemas.agent_record import record_from_card
from tests.conftest import test_config

# ---- run states ---------------------------------------------------------------------------

STATE_ROWS = [
    (TaskState.SUBMITTED, "created"),
    (TaskState.WORKING, "in-progress"),
    (TaskState.INPUT_REQUIRED, "awaiting"),
    (TaskState.AUTH_REQUIRED, "awaiting"),
    (TaskState.COMPLETED, "completed"),
    (TaskState.FAILED, "failed"),
    (TaskState.CANCELED, "cancelled"),
    (TaskState.REJECTED, "failed"),
]

BACK_ROWS = [
    ("created", TaskState.SUBMITTED),
    ("in-progress", TaskState.WORKING),
    ("awaiting", TaskState.INPUT_REQUIRED),
    ("completed", TaskState.COMPLETED),
    ("failed", TaskState.FAILED),
    ("cancelled", TaskState.CANCELED),
    ("cancelling", TaskState.WORKING),
]


@pytest.mark.parametrize("state,status", STATE_ROWS, ids=[s.value for s, _ in STATE_ROWS])
def test_task_state_to_run_status(state, status):
    assert wire.run_status(state) == status
    assert f"| {state.value}" in acp_pkg.__doc__  # the docstring table has the row


@pytest.mark.parametrize("status,state", BACK_ROWS, ids=[s for s, _ in BACK_ROWS])
def test_run_status_to_task_state(status, state):
    assert wire.task_state(status) is state
    assert f"{status} -> {state.value}" in acp_pkg.__doc__


def test_every_task_state_has_a_row_and_unknown_statuses_are_refused():
    assert {s for s, _ in STATE_ROWS} == set(TaskState)
    with pytest.raises(WireError):
        wire.task_state("exploded")


# ---- parts --------------------------------------------------------------------------------


def p(**kw) -> ACPPart:
    return ACPPart.model_validate(kw)


def test_plain_text_part_and_the_default_type():
    assert part_in(p(content="hi")) == TextPart(text="hi")
    assert part_in(p(content="hi", content_type=None)) == TextPart(text="hi")
    assert part_in(p(content="hi", content_type="text/plain; charset=utf-8")) == TextPart(text="hi")
    assert part_out(TextPart(text="hi")) == {"content_type": "text/plain", "content": "hi", "content_encoding": "plain"}


def test_json_part_is_a_data_part():
    assert part_in(p(content='{"a": [1]}', content_type="application/json")) == DataPart(data={"a": [1]})
    vendor = part_in(p(content="[1]", content_type="application/vnd.x+json"))
    assert isinstance(vendor, DataPart) and vendor.metadata == {wire.CONTENT_TYPE: "application/vnd.x+json"}
    assert part_out(vendor)["content_type"] == "application/vnd.x+json"
    out = part_out(DataPart(data={"a": 1}))
    assert out == {"content_type": "application/json", "content": '{"a":1}', "content_encoding": "plain"}
    with pytest.raises(WireError):
        part_in(p(content="{nope", content_type="application/json"))


def test_other_text_types_stay_text_with_their_type():
    part = part_in(p(content="# t", content_type="text/markdown"))
    assert part == TextPart(text="# t", metadata={wire.CONTENT_TYPE: "text/markdown"})
    assert part_out(part)["content_type"] == "text/markdown"


def test_other_types_in_plain_encoding_become_file_bytes():
    part = part_in(p(content="<svg/>", content_type="image/svg+xml"))
    assert isinstance(part, FilePart) and part.raw() == b"<svg/>" and part.media_type == "image/svg+xml"


def test_base64_parts_are_files_and_any_base64_spelling_is_read():
    raw = b"\xff\xfe\x00binary?"
    std = base64.b64encode(raw).decode()
    part = part_in(p(content=std, content_type="image/png", content_encoding="base64"))
    assert isinstance(part, FilePart) and part.raw() == raw and part.media_type == "image/png"
    urlsafe = base64.urlsafe_b64encode(raw).decode().rstrip("=")
    assert part_in(p(content=urlsafe, content_type="image/png", content_encoding="base64")).raw() == raw
    assert part_out(part) == {"content_type": "image/png", "content": std, "content_encoding": "base64"}
    with pytest.raises(WireError):
        part_in(p(content="***", content_type="image/png", content_encoding="base64"))


def test_url_parts_are_file_references():
    part = part_in(p(content_url="http://x/f.pdf", content_type="application/pdf"))
    assert part == FilePart(url="http://x/f.pdf", media_type="application/pdf")
    assert part_out(part) == {"content_type": "application/pdf", "content_url": "http://x/f.pdf"}
    with pytest.raises(WireError):
        part_in(p(content="a", content_url="http://x/f"))


def test_names_and_part_metadata_are_kept():
    named = part_in(p(name="notes", content="n"))
    assert named.metadata == {wire.PART_NAME: "notes"}
    assert part_out(named)["name"] == "notes"
    assert part_in(p(name="notes", content="n"), keep_name=False) == TextPart(text="n")
    file = part_in(p(name="a.bin", content="AA==", content_type="application/octet-stream", content_encoding="base64"))
    assert file.filename == "a.bin"
    cited = part_in(p(content="c", metadata={"kind": "citation", "url": "http://s"}))
    assert part_out(cited)["metadata"] == {"kind": "citation", "url": "http://s"}


def test_an_artifact_name_names_its_parts():
    art = Artifact(name="report", parts=[TextPart(text="r"), FilePart(url="http://x/y", filename="y.txt")])
    assert [pt["name"] for pt in wire.artifact_parts_out(art)] == ["report", "report"]
    unnamed = Artifact(parts=[TextPart(text="r"), FilePart(url="http://x/y", filename="y.txt")])
    assert [pt.get("name") for pt in wire.artifact_parts_out(unnamed)] == [None, "y.txt"]


def test_input_messages_become_one_user_message_and_roles_are_checked():
    msgs = [
        ACPMessage.model_validate({"parts": [{"content": "a"}]}),
        ACPMessage.model_validate({"role": "agent/x", "parts": [{"content": "b"}]}),
    ]
    merged = wire.message_in(msgs)
    assert merged.role == "user" and [pt.text for pt in merged.parts] == ["a", "b"]
    with pytest.raises(ValueError):
        ACPMessage.model_validate({"role": "robot", "parts": [{"content": "a"}]})
    with pytest.raises(ValueError):
        ACPMessage.model_validate({"parts": []})


def test_agent_roles_use_only_characters_the_sdk_accepts():
    assert wire.agent_role("echo") == "agent/echo"
    assert wire.agent_role("my.agent v2") == "agent/my-agent-v2"
    assert wire.agent_role(None) == "agent"


# ---- runs ---------------------------------------------------------------------------------


def task_with(*history: Message, state=TaskState.WORKING, status_message=None, artifacts=()) -> Task:
    task = Task(route=Route(agent="echo"), history=list(history), artifacts=list(artifacts))
    task.status = task.status.model_copy(update={"state": state, "message": status_message})
    return task


def user(text):
    return Message(role="user", parts=[TextPart(text=text)])


def agent(text, **meta):
    return Message(role="agent", parts=[TextPart(text=text)], metadata=meta or None)


def test_run_ids_and_session_ids_are_uuids_of_the_canonical_ids():
    task = task_with(user("a"))
    run = wire.run_out(task)
    assert wire.from_uuid(run["run_id"]) == task.id and wire.from_uuid(run["session_id"]) == task.context_id
    odd = task.model_copy(update={"context_id": "ctx-1"})
    assert wire.run_out(odd)["session_id"] is None
    assert wire.from_uuid("not-a-uuid") is None and wire.from_uuid(None) is None


def test_output_holds_messages_then_artifacts_then_the_closing_message_and_no_questions():
    question, closing = agent("which?"), agent("done")
    art = Artifact(name="out", parts=[TextPart(text="result")])
    task = task_with(
        user("go"),
        agent("progress"),
        question,
        user("this"),
        closing,
        state=TaskState.COMPLETED,
        status_message=closing,
        artifacts=[art],
    )
    out = wire.run_out(task)["output"]
    assert [[pt["content"] for pt in m["parts"]] for m in out] == [["progress"], ["result"], ["done"]]
    assert out[1]["parts"][0]["name"] == "out" and all(m["role"] == "agent/echo" for m in out)


def test_an_interrupted_task_is_awaiting_with_its_question():
    question = agent("which?")
    for state in (TaskState.INPUT_REQUIRED, TaskState.AUTH_REQUIRED):
        run = wire.run_out(task_with(user("go"), question, state=state, status_message=question))
        assert run["status"] == "awaiting" and run["output"] == []
        assert run["await_request"] == {
            "type": "message",
            "message": {"role": "agent/echo", "parts": [part_out(TextPart(text="which?"))]},
        }


def test_failed_and_rejected_runs_carry_an_error():
    note = agent("broke")
    failed = wire.run_out(task_with(user("go"), note, state=TaskState.FAILED, status_message=note))
    assert failed["error"] == {"code": "server_error", "message": "broke", "data": {"state": "failed"}}
    assert failed["output"] == [] and failed["finished_at"] is not None
    rejected = wire.run_out(task_with(user("go"), state=TaskState.REJECTED))
    assert rejected["status"] == "failed" and rejected["error"]["data"] == {"state": "rejected"}
    assert wire.run_out(task_with(user("go")))["error"] is None


def test_the_event_mapper_turns_task_events_into_acp_events():
    task = Task(route=Route(agent="echo"), history=[user("go")])
    mapper = EventMapper(task)
    types = [mapper.created()["type"]]
    art = Artifact(artifact_id="a", parts=[TextPart(text="x")])
    for ev in (
        task.status_event(TaskState.WORKING),
        task.status_event(TaskState.WORKING, agent("thinking")),
        task.artifact_event(art),
        task.artifact_event(art, append=True),
        task.status_event(TaskState.AUTH_REQUIRED, agent("login")),
        task.status_event(TaskState.WORKING, user("creds")),
        task.status_event(TaskState.CANCELED),
    ):
        types += [e["type"] for e in mapper.feed(ev)]
    assert types == [
        "run.created",
        "run.in-progress",
        "message.created",
        "message.part",
        "message.completed",  # the progress message, whole
        "message.created",
        "message.part",
        "message.part",
        "message.completed",  # artifact chunks
        "run.awaiting",
        "run.in-progress",
        "run.cancelled",
    ]
    assert mapper.feed(task.status_event(TaskState.COMPLETED)) == []  # after a terminal state: ignored


def test_the_event_mapper_ends_a_failed_or_rejected_run_with_run_failed():
    for state in (TaskState.FAILED, TaskState.REJECTED):
        task = Task(route=Route(agent="echo"), history=[user("go")])
        events = EventMapper(task).feed(task.status_event(state, agent("no")))
        assert [e["type"] for e in events] == ["run.failed"] and events[0]["run"]["error"]["message"] == "no"


# ---- the connector's reading of remote events ----------------------------------------------


def relay() -> tuple[_Relay, Task]:
    task = Task(route=Route(agent="remote"), history=[user("go")])
    return _Relay(task, "remote"), task


def test_remote_parts_become_artifacts_unnamed_append_named_by_name():
    r, _ = relay()
    assert r.map({"type": "interlace.run_id", "run_id": "R1"}) == [] and r.run_id == "R1"
    assert r.map({"type": "run.in-progress", "run": {"run_id": "R1", "status": "in-progress"}}) == []
    assert r.map({"type": "message.created", "message": {"parts": []}}) == []
    a = r.map({"type": "message.part", "part": {"content": "ab"}})[0]
    b = r.map({"type": "message.part", "part": {"content": "cd"}})[0]
    n1 = r.map({"type": "message.part", "part": {"name": "report", "content": "r1"}})[0]
    n2 = r.map({"type": "message.part", "part": {"name": "report", "content": "r2"}})[0]
    assert (
        isinstance(a, TaskArtifactUpdate)
        and not a.append
        and b.append
        and a.artifact.artifact_id == b.artifact.artifact_id
    )
    assert (
        n1.artifact.name == "report"
        and not n1.append
        and n2.append
        and n1.artifact.artifact_id == n2.artifact.artifact_id
    )
    assert r.map({"type": "message.completed", "message": {"parts": [{"content": "abcd"}]}}) == []  # already streamed
    assert r.map({"type": "generic", "generic": {"thought": "hm"}}) == []
    done = r.map(
        {
            "type": "run.completed",
            "run": {"run_id": "R1", "status": "completed", "output": [{"parts": [{"content": "abcd"}]}]},
        }
    )
    assert [e.status.state for e in done] == [TaskState.COMPLETED] and r.final


def test_a_message_that_only_completes_and_a_final_output_are_read_whole():
    r, _ = relay()
    whole = r.map({"type": "message.completed", "message": {"parts": [{"content": "all at once"}]}})
    assert whole[0].artifact.parts == [TextPart(text="all at once")]
    r2, _ = relay()
    events = r2.settle(
        {"status": "completed", "output": [{"parts": [{"content": "x"}]}, {"parts": [{"name": "n", "content": "y"}]}]}
    )
    assert [type(e).__name__ for e in events] == ["TaskArtifactUpdate", "TaskArtifactUpdate", "TaskStatusUpdate"]
    assert events[1].artifact.name == "n"


def test_remote_awaiting_is_input_required_carrying_the_remote_run():
    r, _ = relay()
    r.learn("R9")
    run = {
        "run_id": "R9",
        "status": "awaiting",
        "await_request": {"type": "message", "message": {"parts": [{"content": "which?"}]}},
    }
    [ev] = r.map({"type": "run.awaiting", "run": run})
    assert ev.status.state is TaskState.INPUT_REQUIRED and ev.status.message.text() == "which?"
    assert ev.status.message.metadata == {wire.REMOTE_RUN: "R9"}


def test_remote_failure_cancel_and_error_events():
    r, _ = relay()
    with pytest.raises(TaskFailed, match="boom"):
        r.map({"type": "run.failed", "run": {"status": "failed", "error": {"code": "server_error", "message": "boom"}}})
    r, _ = relay()
    [ev] = r.map({"type": "run.cancelled", "run": {"status": "cancelled"}})
    assert ev.status.state is TaskState.CANCELED
    r, _ = relay()
    with pytest.raises(TaskFailed, match="bad"):
        r.map({"type": "error", "error": {"code": "server_error", "message": "bad"}})
    r, _ = relay()
    assert r.settle({"status": "cancelling"}) == [] and not r.final


def test_a_resumed_task_goes_back_to_its_remote_run():
    question = agent("which?", **{wire.REMOTE_RUN: "R1"})
    answered = Task(history=[user("go"), question, user("42")])
    assert ACPConnector._waiting_run(answered) == "R1"
    assert ACPConnector._waiting_run(Task(history=[user("go")])) is None
    assert ACPConnector._waiting_run(Task(history=[user("go"), question])) is None


# ---- endpoints, manifests, the factory ----------------------------------------------------


def test_endpoint_urls_name_the_server_and_optionally_the_agent():
    assert split_endpoint("http://h:1", "echo") == ("http://h:1", "echo")
    assert split_endpoint("http://h:1/acp/", "echo") == ("http://h:1/acp", "echo")
    assert split_endpoint("http://h:1/acp/agents/other", "echo") == ("http://h:1/acp", "other")


def record(name: str, endpoints: dict, **card):
    ident = Identity.generate()
    base = {
        "name": name,
        "description": f"{name} agent",
        "version": "2",
        "endpoints": endpoints,
        "skills": [
            {
                "id": "s1",
                "name": "Skill one",
                "description": "does one",
                "tags": ["t1"],
                "input_modes": ["text/plain"],
                "output_modes": ["application/json"],
                "examples": ["ex"],
            }
        ],
    }
    return record_from_card({**base, **card}, ident.did, 1, 60, "interlace", "node-1")


def test_a_manifest_is_made_from_the_record():
    rec = record("weather", {"acp": "http://h/acp"}, labels={"region": "eu"})
    m = manifest_out(rec)
    assert m["name"] == "weather" and m["description"] == "weather agent"
    assert m["input_content_types"] == ["text/plain"] and m["output_content_types"] == ["application/json"]
    assert m["metadata"]["capabilities"] == [{"name": "Skill one", "description": "does one"}]
    assert m["metadata"]["tags"] == ["t1"]
    ann = m["metadata"]["annotations"]["interlace"]
    assert ann == {
        "did": rec.did,
        "version": "2",
        "skills": ["s1"],
        "protocols": ["acp"],
        "labels": {"region": "eu"},
        "examples": ["ex"],
    }


def test_a_connector_from_a_record_reaches_its_acp_endpoint():
    runtime = Runtime(test_config(echo=False))
    named = ACPConnector.from_record(record("b", {"acp": "http://h/acp/agents/bee"}), runtime)
    assert (named.agent, named.base, named.remote_name) == ("b", "http://h/acp", "bee")
    plain = ACPConnector.from_record(record("a", {"acp": "http://h/acp"}), runtime)
    assert (plain.agent, plain.base, plain.remote_name) == ("a", "http://h/acp", "a")
    card = plain.card()
    assert card["skills"][0]["id"] == "s1" and card["endpoints"] == {"bus": "a"} and card["description"] == "a agent"
    with pytest.raises(ValueError):
        ACPConnector.from_record(record("d", {"a2a": "http://h/a2a"}), runtime)
