"""Fuzzing the internal API (/tasks, /route): never a 5xx, always ``{"error": {code, message}}``
when refused, and a refused submission stores no task."""

from __future__ import annotations

import pytest

pytest.importorskip("hypothesis", reason="the fuzz suite needs Hypothesis: pip install -e '.[dev]'")

from hypothesis import example, given
from hypothesis import strategies as st

from tests.fixtures.fuzz import (
    TOO_DEEP,
    dumps,
    gateway_error,
    header_values,
    in_process,
    json_values,
    maybe,
    no_server_error,
    objects,
    path_segment,
    raw_bodies,
    task_ids,
    texts,
    with_data,
)

ROLES = st.sampled_from(["user", "agent", "system", ""])
MEDIA = st.sampled_from(["text/plain", "image/png", "application/json", "x", ""])
parts = st.one_of(
    objects({"kind": st.just("text"), "text": maybe(texts), "metadata": maybe(st.just({}))}),
    objects({"kind": st.just("data"), "data": json_values(max_leaves=4)}),
    objects(
        {
            "kind": maybe(st.just("file")),
            "bytes": maybe(st.sampled_from(["aGk=", "not base64", ""])),
            "url": maybe(st.sampled_from(["http://127.0.0.1:9/f", "relative"])),
            "media_type": maybe(MEDIA),
            "filename": maybe(texts),
        }
    ),
)
messages = objects(
    {
        "role": maybe(ROLES),
        "parts": maybe(st.lists(parts, max_size=3)),
        "message_id": maybe(texts),
        "task_id": maybe(texts),
        "context_id": maybe(texts),
        "metadata": maybe(st.dictionaries(texts, json_values(max_leaves=3), max_size=3)),
    }
)
queries = objects(
    {
        "text": maybe(texts),
        "skill": maybe(texts),
        "tags": maybe(st.lists(texts, max_size=3)),
        "protocol": maybe(st.sampled_from(["mcp", "a2a", "bus", "smtp"])),
        "max_cost": maybe(st.integers(-5, 2**60)),
        "max_latency_ms": maybe(st.integers(-5, 2**40)),
        "exclude": maybe(st.lists(texts, max_size=2)),
    }
)
submissions = objects(
    {
        "agent": maybe(st.sampled_from(["echo", "no-such-agent", ""])),
        "query": maybe(queries),
        "task_id": maybe(texts),
        "message": maybe(messages),
        "context_id": maybe(texts),
        "metadata": maybe(st.dictionaries(texts, json_values(max_leaves=3), max_size=3)),
    }
)
query_params = st.dictionaries(
    st.sampled_from(["wait", "timeout", "limit", "cursor", "context_id", "after"]), header_values, max_size=3
)


@pytest.fixture
async def gateway():
    async with in_process() as gateway:
        yield gateway


async def check_submit(gateway, body: bytes, params: dict) -> None:
    before = await task_ids(gateway.runtime)
    resp = await gateway.request("POST", "/tasks", content=body, params=params)
    no_server_error(resp)
    if resp.status_code >= 400:
        gateway_error(resp)
        assert await task_ids(gateway.runtime) == before, "a refused submission stored a task"
    else:
        assert resp.status_code in (200, 202), resp.status_code
        assert resp.json()["id"] in await task_ids(gateway.runtime)
    gateway.errors.check()


@given(body=raw_bodies, params=query_params)
@example(body=TOO_DEEP, params={})
@example(
    body=with_data('{"agent": "echo", "message": {"role": "user", "parts": [{"kind": "data", "data": @}]}}'), params={}
)
async def test_submit_any_body(gateway, body, params):
    await check_submit(gateway, body, params)


@given(body=submissions, params=query_params)
@example(body={"agent": "echo", "message": {"role": "user", "parts": [{"kind": "text", "text": "\ud800"}]}}, params={})
@example(
    body={"agent": "echo", "message": {"role": "user", "parts": [{"kind": "data", "data": float("nan")}]}}, params={}
)
async def test_submit_fuzzed_fields(gateway, body, params):
    await check_submit(gateway, dumps(body), params)


@given(
    task_id=texts,
    method=st.sampled_from(["GET /tasks/{}", "POST /tasks/{}:cancel", "GET /tasks/{}/events"]),
    params=query_params,
    headers=st.dictionaries(st.sampled_from(["last-event-id", "content-type"]), header_values, max_size=2),
)
async def test_task_routes(gateway, task_id, method, params, headers):
    verb, path = method.split(" ")
    resp = await gateway.request(verb, path.format(path_segment(task_id)), params=params, headers=headers)
    no_server_error(resp)
    if resp.status_code >= 400:
        gateway_error(resp)
    gateway.errors.check()


@given(params=query_params)
@example(params={"cursor": ":"})
async def test_list(gateway, params):
    resp = await gateway.request("GET", "/tasks", params=params)
    no_server_error(resp)
    if resp.status_code >= 400:
        gateway_error(resp)
    else:
        assert isinstance(resp.json()["tasks"], list)
    gateway.errors.check()


@given(body=st.one_of(raw_bodies, queries.map(dumps)), params=query_params)
async def test_route(gateway, body, params):
    resp = await gateway.request("POST", "/route", content=body, params=params)
    no_server_error(resp)
    if resp.status_code >= 400:
        gateway_error(resp)
    gateway.errors.check()
