"""Fuzzing the ACP face (``/acp``, protocols/acp/wire.py): never a 5xx, every error ACP's own
``{"code", "message", "data"}`` with one of its codes, and a refused run stores no task."""

from __future__ import annotations

import uuid
from urllib.parse import unquote

import pytest

pytest.importorskip("hypothesis", reason="the fuzz suite needs Hypothesis: pip install -e '.[dev]'")

from hypothesis import example, given
from hypothesis import strategies as st

from tests.fixtures.fuzz import (
    TOO_DEEP,
    body_json,
    cross_site_refused,
    dumps,
    header_values,
    in_process,
    no_server_error,
    one_field_fuzzed,
    path_segment,
    raw_bodies,
    sse_data,
    task_ids,
    texts,
    with_data,
)

CODES = {"not_found", "invalid_input", "server_error"}
RUN = {
    "agent_name": "echo",
    "input": [{"role": "user", "parts": [{"content_type": "text/plain", "content": "hello"}]}],
    "mode": "sync",
}
PART = ["content_type", "content", "content_encoding", "content_url", "name", "metadata"]
RUN_FIELDS = [
    "agent_name",
    "input",
    "input.0",
    "input.0.role",
    "input.0.parts",
    "input.0.parts.0",
    *(f"input.0.parts.0.{f}" for f in PART),
    "mode",
    "session_id",
    "session",
    "session.id",
    "session.history",
    "session.state",
]
RESUME = {"await_resume": {"type": "message", "message": RUN["input"][0]}, "mode": "sync"}
RESUME_FIELDS = ["run_id", "await_resume", "await_resume.type", "await_resume.message", "mode"]
run_ids = st.one_of(texts, st.uuids().map(str), st.just("a0a0a0a0-0000-4000-8000-000000000000"))


@pytest.fixture
async def gateway():
    async with in_process() as gateway:
        yield gateway


async def check(gateway, method: str, path: str, **kw) -> None:
    before = await task_ids(gateway.runtime)
    resp = await gateway.request(method, path, **kw)
    no_server_error(resp)
    if cross_site_refused(resp):
        return
    if resp.status_code in (404, 405) and "\n" in unquote(path) and "error" in body_json(resp):
        return  # the router's own answer: no route pattern, the /acp fallback's included, matches a line break
    if resp.status_code >= 400:
        err = body_json(resp)
        assert set(err) == {"code", "message", "data"} and err["code"] in CODES, err
        assert isinstance(err["message"], str), err
        assert await task_ids(gateway.runtime) == before, "a refused request stored a task"
    elif resp.headers.get("content-type", "").startswith("text/event-stream"):
        events = sse_data(resp)
        assert events and all(isinstance(e, dict) and isinstance(e.get("type"), str) for e in events), events
    gateway.errors.check()


@given(body=raw_bodies, ctype=st.one_of(st.none(), header_values))
@example(body=TOO_DEEP, ctype=None)
@example(body=with_data('{"agent_name": "echo", "input": [{"parts": [{"content": "x", "metadata": @}]}]}'), ctype=None)
async def test_create_any_body(gateway, body, ctype):
    await check(gateway, "POST", "/acp/runs", content=body, headers={} if ctype is None else {"content-type": ctype})


@given(run=one_field_fuzzed(RUN, RUN_FIELDS))
@example(run={**RUN, "input": [{"parts": [{"content_type": "application/json", "content": "NaN"}]}]})
@example(run={**RUN, "input": [{"parts": [{"content_type": "application/json", "content": "[" * 2000}]}]})
@example(run={**RUN, "input": [{"parts": [{"content_type": "application/json", "content": '"\\ud800"'}]}]})
async def test_create_one_field_fuzzed(gateway, run):
    await check(gateway, "POST", "/acp/runs", content=dumps(run))


@given(run_id=run_ids, body=st.one_of(raw_bodies, one_field_fuzzed(RESUME, RESUME_FIELDS).map(dumps)))
@example(run_id="/\n0", body=b"")
async def test_resume(gateway, run_id, body):
    await check(gateway, "POST", f"/acp/runs/{path_segment(run_id)}", content=body)


@given(
    route=st.sampled_from(
        [
            "GET /acp/runs/{}",
            "POST /acp/runs/{}/cancel",
            "GET /acp/runs/{}/events",
            "GET /acp/runs/{}/messages/0",
            "GET /acp/runs/{}/messages/-1",
            "GET /acp/sessions/{}",
            "GET /acp/agents/{}",
            "PUT /acp/runs/{}",
            "GET /acp/{}",
        ]
    ),
    run_id=run_ids,
)
async def test_run_routes(gateway, route, run_id):
    method, path = route.split(" ")
    await check(gateway, method, path.format(path_segment(run_id)))


@given(params=st.dictionaries(st.sampled_from(["limit", "offset"]), header_values, max_size=2))
async def test_agents(gateway, params):
    await check(gateway, "GET", "/acp/agents", params=params)


async def test_a_finished_run_answers_every_route(gateway):
    """The routes above with a run that exists (the fuzzed ids never name one)."""
    resp = await gateway.request("POST", "/acp/runs", content=dumps(RUN))
    run_id = resp.json()["run_id"]
    assert uuid.UUID(run_id)
    for method, path in [("GET", ""), ("POST", "/cancel"), ("GET", "/events"), ("GET", "/messages/0")]:
        await check(gateway, method, f"/acp/runs/{run_id}{path}")
    await check(gateway, "POST", f"/acp/runs/{run_id}", content=dumps(RESUME))
