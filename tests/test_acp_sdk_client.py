"""The official ``acp-sdk`` client (1.0.3, in its own environment: see fixtures/acp_support.py)
against the gateway's ACP face: discovery, the three run modes, await/resume, cancel, event
replay, sessions, MIME-typed parts and errors. The client runs once, every scenario in one
process (its start-up dominates); each test checks one scenario's result."""

from __future__ import annotations

import asyncio
import base64
import json

import pytest
import pytest_asyncio

from tests.conftest import running_gateway, test_config
from tests.fixtures import acp_support
from tests.fixtures.acp_support import EnvError, ensure_acp_python, gateway_agents, run_sdk_client

acp_python = acp_support.acp_python  # the fixture, used by name

# The first use builds the acp-sdk environment (pip, about a minute): more than the suite's 120 s
# default may be needed for that test; every wait inside the tests has its own bound.
pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(600)]

SCENARIOS = "discovery,sync,str_input,async_mode,stream,resume,resume_stream,cancel,events,session,parts,errors,failing"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def results(acp_python):
    async with running_gateway(test_config(), workers=gateway_agents()) as (url, _):
        out = await run_sdk_client(acp_python, f"{url}/acp", SCENARIOS, timeout=90)
        healthy = await _healthz(url)
    out["_healthy"] = healthy
    return out


async def _healthz(url: str) -> bool:
    import httpx

    async with httpx.AsyncClient(timeout=5) as http:
        return (await http.get(f"{url}/healthz")).status_code == 200


def scenario(results, name):
    got = results[name]
    assert not (isinstance(got, dict) and got.get("raised")), f"{name}: {got}"
    return got


async def test_discovery_lists_the_gateway_agents_and_their_manifests(results):
    got = scenario(results, "discovery")
    assert got["ping"] is None  # the SDK's ping returns None when the server answered {}
    assert {"echo", "asker", "chunker"} <= set(got["names"])
    echo = got["echo"]
    assert echo["name"] == "echo" and "text/plain" in echo["input_content_types"]
    assert echo["metadata"]["capabilities"][0]["name"] == "Echo"
    assert echo["metadata"]["annotations"]["interlace"]["did"].startswith("did:key:")


async def test_run_sync_completes_with_the_agent_output(results):
    got = scenario(results, "sync")
    assert got["run"]["status"] == "completed" and got["text"] == "Howdy!"
    assert got["run"]["output"][0]["role"] == "agent/echo"
    assert got["run"]["finished_at"] is not None


async def test_a_plain_string_input_is_accepted(results):
    assert scenario(results, "str_input")["text"] == "a plain string"


async def test_run_async_answers_created_then_completes_when_polled(results):
    got = scenario(results, "async_mode")
    assert got["first"]["status"] == "created" and got["first"]["output"] == []
    assert got["run"]["status"] == "completed" and got["text"] == "later"


async def test_run_stream_sends_run_and_message_events(results):
    got = scenario(results, "stream")
    assert got["types"][:2] == ["run.created", "run.in-progress"]
    assert got["types"][-1] == "run.completed"
    assert got["parts"] == ["ab", "cd", "ef"]
    assert "message.created" in got["types"] and "message.completed" in got["types"]


async def test_await_and_resume_in_sync_mode(results):
    got = scenario(results, "resume")
    first = got["first"]
    assert first["status"] == "awaiting"
    assert first["await_request"]["type"] == "message"
    assert first["await_request"]["message"]["parts"][0]["content"] == "which config?"
    assert got["done"]["status"] == "completed" and got["text"] == "cfg=42"
    assert got["done"]["run_id"] == first["run_id"]


async def test_await_ends_the_stream_and_resume_streams_the_rest(results):
    got = scenario(results, "resume_stream")
    assert got["types"] == ["run.created", "run.in-progress", "run.awaiting"]
    assert got["resumed"][0] == "run.in-progress" and got["resumed"][-1] == "run.completed"
    assert got["last"]["run"]["output"][0]["parts"][0]["content"] == "x"


async def test_cancel_then_cancel_again_is_refused(results):
    got = scenario(results, "cancel")
    assert got["canceled"]["status"] == "cancelled"
    assert got["status"]["status"] == "cancelled"
    assert got["again"]["raised"] == "ACPError" and got["again"]["code"] == "server_error"


async def test_events_replay_the_run(results):
    got = scenario(results, "events")
    assert got["types"] == [
        "run.created",
        "run.in-progress",
        "message.created",
        "message.part",
        "message.part",
        "message.part",
        "message.completed",
        "run.completed",
    ]


async def test_a_client_session_spans_runs_and_its_history_loads(results):
    got = scenario(results, "session")
    assert got["sessions"][0] == got["sessions"][1] == got["id"]
    assert got["history"] == ["first", "first", "second", "second"]


async def test_mime_typed_parts_round_trip_through_the_echo_agent(results):
    got = scenario(results, "parts")
    parts = got["run"]["output"][0]["parts"]
    by_type = {p["content_type"]: p for p in parts}
    assert by_type["image/png"]["content_encoding"] == "base64"
    assert base64.b64decode(by_type["image/png"]["content"]) == base64.b64decode(got["png"])
    assert json.loads(by_type["application/json"]["content"]) == {"k": [1, 2]}
    assert by_type["text/markdown"]["content"] == "# md"
    assert by_type["application/pdf"]["content_url"] == "http://example.invalid/f.pdf"
    named = [p for p in parts if p["content"] == "named"]
    assert named[0]["name"] == "notes.txt"


async def test_errors_reach_the_client_as_acp_errors(results):
    got = scenario(results, "errors")
    for case in ("run_unknown_agent", "agent_unknown", "run_unknown", "session_unknown"):
        assert got[case]["raised"] == "ACPError" and got[case]["code"] == "not_found", case


async def test_a_failed_run_carries_the_agent_message(results):
    run = scenario(results, "failing")["run"]
    assert run["status"] == "failed" and run["error"]["message"] == "it broke"


async def test_the_gateway_stayed_healthy(results):
    assert results["_healthy"] is True


async def test_an_environment_that_cannot_be_built_fails_with_pip_output(tmp_path):
    requirements = tmp_path / "requirements.txt"
    requirements.write_text(f"{tmp_path / 'missing-1.0-py3-none-any.whl'}\n")  # pip fails at once, offline
    with pytest.raises(EnvError) as failed:
        await asyncio.to_thread(ensure_acp_python, lambda _: None, root=tmp_path / "venv", requirements=requirements)
    message = str(failed.value)
    assert "could not build the acp-sdk environment" in message and "missing-1.0-py3-none-any.whl" in message
    assert not (tmp_path / "venv").exists()  # nothing half-built is left to be mistaken for ready
