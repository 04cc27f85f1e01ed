"""The internal HTTP API, health endpoints, metrics and bad input, against a live gateway."""

import asyncio
import json

import httpx

from gateway.core.config import Config
from tests.conftest import running_gateway, test_config, wait_until


def message(text="hello", **meta):
    msg = {"role": "user", "parts": [{"kind": "text", "text": text}]}
    if meta:
        msg["metadata"] = meta
    return msg


async def depth(client, agent="echo") -> float:
    for line in (await client.get("/metrics")).text.splitlines():
        if line.startswith(f'interlace_queue_depth{{agent="{agent}"}}'):
            return float(line.split()[-1])
    return 0.0


async def test_health_and_readiness(client):
    assert (await client.get("/healthz")).json()["status"] == "ok"
    ready = await client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["backend"] == "embedded"


async def test_submit_and_wait_round_trips_every_part_kind(client):
    parts = [
        {"kind": "text", "text": "héllo"},
        {"kind": "data", "data": {"k": [1, 2, {"x": None}]}},
        {"kind": "file", "bytes": "AAEC/w==", "media_type": "application/octet-stream", "filename": "b.bin"},
    ]
    resp = await client.post("/tasks?wait=true", json={"agent": "echo", "message": {"role": "user", "parts": parts}})
    assert resp.status_code == 200
    task = resp.json()
    assert task["status"]["state"] == "completed"
    assert task["artifacts"][0]["parts"] == parts
    assert resp.headers["location"] == f"/tasks/{task['id']}"


async def test_submit_without_wait_then_get(client):
    resp = await client.post("/tasks", json={"agent": "echo", "message": message(delay_ms=200)})
    assert resp.status_code == 202
    task_id = resp.json()["id"]
    events = client.stream("GET", f"/tasks/{task_id}/events")
    async with events as stream:
        kinds = [line async for line in stream.aiter_lines() if line.startswith("event:")]
    assert kinds[-1] == "event: status-update"
    got = await client.get(f"/tasks/{task_id}")
    assert got.json()["status"]["state"] == "completed"


async def test_sse_events_and_resume_after_last_event_id(client):
    task = (
        await client.post("/tasks?wait=true", json={"agent": "echo", "message": message("abcdef", chunks=3)})
    ).json()

    async def read(headers=None):
        out = []
        async with client.stream("GET", f"/tasks/{task['id']}/events", headers=headers or {}) as s:
            assert s.headers["content-type"].startswith("text/event-stream")
            current = {}
            async for line in s.aiter_lines():
                if line.startswith("id: "):
                    current["id"] = line[4:]
                elif line.startswith("data: "):
                    current["data"] = json.loads(line[6:])
                elif not line and current:
                    out.append(current)
                    current = {}
        return out

    everything = await read()
    assert [e["data"]["kind"] for e in everything] == ["status-update"] + ["artifact-update"] * 3 + ["status-update"]
    assert len({e["id"] for e in everything}) == len(everything)
    resumed = await read({"Last-Event-ID": everything[2]["id"]})
    assert resumed == everything[3:]


async def test_list_by_context(client):
    ids = []
    for _ in range(3):
        r = await client.post("/tasks?wait=true", json={"agent": "echo", "message": message(), "context_id": "ctx-42"})
        ids.append(r.json()["id"])
    await client.post("/tasks?wait=true", json={"agent": "echo", "message": message(), "context_id": "other"})
    page = (await client.get("/tasks", params={"context_id": "ctx-42", "limit": 2})).json()
    assert [t["id"] for t in page["tasks"]] == ids[::-1][:2]
    rest = (await client.get("/tasks", params={"context_id": "ctx-42", "cursor": page["next_cursor"]})).json()
    assert [t["id"] for t in rest["tasks"]] == ids[:1] and rest["next_cursor"] is None


async def test_list_by_state(client):
    running = await client.post(
        "/tasks", json={"agent": "echo", "message": message(delay_ms=10_000), "context_id": "s"}
    )
    done = await client.post("/tasks?wait=true", json={"agent": "echo", "message": message(), "context_id": "s"})

    async def working() -> bool:
        return (await client.get(f"/tasks/{running.json()['id']}")).json()["status"]["state"] == "working"

    await wait_until(working)
    for state, expected in (("working", running), ("completed", done)):
        listed = (await client.get("/tasks", params={"context_id": "s", "state": state})).json()["tasks"]
        assert [t["id"] for t in listed] == [expected.json()["id"]], state
    assert (await client.get("/tasks", params={"state": "failed"})).json()["tasks"] == []
    bad = await client.get("/tasks", params={"state": "done"})
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_request"
    assert (await client.get("/tasks", params={"cursor": "x"})).status_code == 400
    await client.post(f"/tasks/{running.json()['id']}:cancel")


async def test_cancel_running_task(client):
    resp = await client.post("/tasks", json={"agent": "echo", "message": message(delay_ms=10_000)})
    task_id = resp.json()["id"]
    canceled = await client.post(f"/tasks/{task_id}:cancel")
    assert canceled.status_code == 200 and canceled.json()["status"]["state"] == "canceled"
    assert (await client.get(f"/tasks/{task_id}")).json()["status"]["state"] == "canceled"
    # The echo handler was interrupted and its entry acked: the queue drains well before 10 s.
    for _ in range(200):
        if await depth(client) == 0:
            break
        await asyncio.sleep(0.02)
    assert await depth(client) == 0


async def test_cancel_of_finished_task_is_a_clear_error_and_changes_nothing(client):
    task = (await client.post("/tasks?wait=true", json={"agent": "echo", "message": message()})).json()
    resp = await client.post(f"/tasks/{task['id']}:cancel")
    assert resp.status_code == 409
    assert resp.json()["error"]["code"] == "not_cancelable"
    assert "completed" in resp.json()["error"]["message"]
    assert (await client.get(f"/tasks/{task['id']}")).json() == task


async def test_multi_turn_input_required_then_follow_up(client):
    first = await client.post("/tasks?wait=true", json={"agent": "echo", "message": message("start", ask="which one?")})
    task = first.json()
    assert first.status_code == 200 and task["status"]["state"] == "input-required"
    assert task["history"][-1]["parts"][0]["text"] == "which one?"
    follow = await client.post("/tasks?wait=true", json={"task_id": task["id"], "message": message("the blue one")})
    done = follow.json()
    assert done["status"]["state"] == "completed" and done["id"] == task["id"]
    assert done["artifacts"][0]["parts"][0]["text"] == "the blue one"
    again = await client.post("/tasks", json={"task_id": task["id"], "message": message("more")})
    assert again.status_code == 409 and again.json()["error"]["code"] == "not_continuable"


async def test_metrics_count_accepted_completed_failed_and_latency(client):
    await client.post("/tasks?wait=true", json={"agent": "echo", "message": message()})
    await client.post("/tasks?wait=true", json={"agent": "echo", "message": message(fail="boom")})
    text = (await client.get("/metrics")).text
    assert 'interlace_tasks_accepted_total{agent="echo"} 2.0' in text
    assert 'interlace_tasks_completed_total{agent="echo"} 1.0' in text
    assert 'interlace_tasks_failed_total{agent="echo"} 1.0' in text
    assert 'interlace_task_latency_seconds_count{agent="echo"} 2.0' in text
    assert 'interlace_queue_depth{agent="echo"} 0.0' in text


# ---- bad input: a JSON error, and nothing enqueued ------------------------------------------


async def assert_nothing_enqueued(client):
    assert await depth(client) == 0
    assert (await client.get("/tasks")).json()["tasks"] == []


async def test_malformed_json_is_400(client):
    resp = await client.post(
        "/tasks", content=b'{"agent": "echo", "message": ', headers={"content-type": "application/json"}
    )
    assert resp.status_code == 400 and resp.json()["error"]["code"] == "invalid_json"
    await assert_nothing_enqueued(client)


async def test_schema_violations_are_400_with_details(client):
    for body in (
        {"agent": "echo"},
        {"agent": "echo", "message": {"role": "user", "parts": []}},
        {"agent": "echo", "message": message(), "surprise": 1},
        {"agent": "echo", "message": {"role": "agent", "parts": [{"kind": "text", "text": "x"}]}},
        {"message": message()},
        [1, 2, 3],
    ):
        resp = await client.post("/tasks", json=body)
        assert resp.status_code == 400, body
        assert resp.json()["error"]["code"] == "invalid_request"
    await assert_nothing_enqueued(client)


async def test_unknown_agent_is_404(client):
    resp = await client.post("/tasks", json={"agent": "nobody", "message": message()})
    assert resp.status_code == 404 and resp.json()["error"]["code"] == "unknown_agent"
    await assert_nothing_enqueued(client)


async def test_unknown_task_is_404(client):
    for method, path in (("GET", "/tasks/nope"), ("POST", "/tasks/nope:cancel"), ("GET", "/tasks/nope/events")):
        resp = await client.request(method, path)
        assert resp.status_code == 404 and resp.json()["error"]["code"] == "not_found"


async def test_unknown_route_and_method_are_json(client):
    assert (await client.get("/nowhere")).json()["error"]["code"] == "not_found"
    resp = await client.delete("/tasks")
    assert resp.status_code == 405 and resp.json()["error"]["code"] == "method_not_allowed"


async def test_bad_query_parameters_are_400(client):
    resp = await client.post("/tasks?wait=true&timeout=abc", json={"agent": "echo", "message": message()})
    assert resp.status_code == 400
    resp = await client.post("/tasks?wait=true&timeout=99999", json={"agent": "echo", "message": message()})
    assert resp.status_code == 400
    await assert_nothing_enqueued(client)


async def test_oversize_body_is_413_and_limit_is_configurable():
    async with running_gateway(test_config(max_body_bytes=1024)) as (url, _):
        async with httpx.AsyncClient(base_url=url, timeout=10) as client:
            big = {"agent": "echo", "message": message("x" * 2000)}
            resp = await client.post("/tasks", json=big)
            assert resp.status_code == 413 and resp.json()["error"]["code"] == "payload_too_large"

            async def chunked():  # no Content-Length: the limit still holds
                for _ in range(4):
                    yield b"x" * 512

            resp = await client.post("/tasks", content=chunked())
            assert resp.status_code == 413
            assert (
                await client.post("/tasks?wait=true", json={"agent": "echo", "message": message()})
            ).status_code == 200
            text = (await client.get("/metrics")).text
            assert 'interlace_tasks_accepted_total{agent="echo"} 1.0' in text


async def test_default_body_limit_is_4_mib():
    assert Config().max_body_bytes == 4 * 1024 * 1024


async def test_worker_api_refuses_foreign_clients_without_token():
    async with running_gateway(test_config(worker_token="s3cret")) as (url, _):
        async with httpx.AsyncClient(base_url=url, timeout=10) as client:
            body = {"agent": "echo", "consumer": "x", "block_ms": 0}
            assert (await client.post("/bus/receive", json=body)).status_code == 401
            wrong = await client.post("/bus/receive", json=body, headers={"Authorization": "Bearer nope"})
            assert wrong.status_code == 401
            ok = await client.post("/bus/receive", json=body, headers={"Authorization": "Bearer s3cret"})
            assert ok.status_code == 200 and ok.json() == {"deliveries": []}


async def test_routes_added_or_swapped_later_resolve_as_an_ordered_search_would():
    """The router looks only at routes sharing the path's first segment; that must never hide a
    route: one added after start, one swapped in ahead of an old one, one with a parameter first."""
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    from gateway.app import create_app
    from gateway.core.http import replace_routes

    def text(body):
        return lambda request: PlainTextResponse(body)

    app = create_app(test_config())
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as client:
        assert (await client.get("/healthz")).json()["status"] == "ok"  # builds the index
        app.add_route("/late/{x}", text("late"), methods=["GET"])
        assert (await client.get("/late/1")).text == "late"
        replace_routes(app, "t", [Route("/healthz", text("swapped"), name="t:healthz")])
        assert (await client.get("/healthz")).text == "swapped"
        app.router.routes.insert(0, Route("/{anything}/x", text("wild")))
        assert (await client.get("/tasks/x")).text == "wild"
        assert (await client.get("/tasks/y")).status_code == 404  # /tasks/{task_id}: no such task
        assert (await client.put("/healthz")).status_code == 405
