"""The gateway's ACP face on the wire (plain HTTP): run modes and their headers, bodies without a
Content-Type, paging, every kind of bad input (each answered with an ACP error body and the
gateway still healthy), carried sessions, and two gateway nodes sharing Redis."""

from __future__ import annotations

import json
import uuid

import httpx
import pytest
import pytest_asyncio

from gateway.app import create_app
from protocols.acp import ACPOptions, mount
from tests.conftest import running_gateway, serve_app, test_config, wait_until
from tests.fixtures.acp_support import gateway_agents, stream, text_of

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def http():
    async with running_gateway(test_config(), workers=gateway_agents()) as (url, _):
        async with httpx.AsyncClient(base_url=url, timeout=20) as c:
            yield c


def body(agent="echo", text="hello", mode="sync", **extra):
    return {
        "agent_name": agent,
        "input": [{"role": "user", "parts": [{"content": text, "content_type": "text/plain"}]}],
        "mode": mode,
        **extra,
    }


def assert_acp_error(resp: httpx.Response, status: int, code: str):
    assert resp.status_code == status, resp.text
    err = resp.json()
    assert set(err) == {"code", "message", "data"} and err["code"] == code and err["message"], err


async def test_ping(http):
    resp = await http.get("/acp/ping")
    assert resp.status_code == 200 and resp.json() == {}


async def test_agents_are_paged_with_limit_and_offset(http):
    names = [a["name"] for a in (await http.get("/acp/agents", params={"limit": 100})).json()["agents"]]
    assert names == sorted(names) and {"asker", "chunker", "echo", "failer", "sleeper"} <= set(names)
    page = (await http.get("/acp/agents", params={"limit": 2, "offset": 1})).json()["agents"]
    assert [a["name"] for a in page] == names[1:3]
    assert len((await http.get("/acp/agents")).json()["agents"]) == min(10, len(names))


@pytest.mark.parametrize("query", [{"limit": 0}, {"limit": 1001}, {"limit": "ten"}, {"offset": -1}])
async def test_bad_paging_is_invalid_input(http, query):
    assert_acp_error(await http.get("/acp/agents", params=query), 422, "invalid_input")


async def test_an_agent_manifest_by_name_and_by_did(http):
    echo = (await http.get("/acp/agents/echo")).json()
    assert echo["name"] == "echo"
    did = echo["metadata"]["annotations"]["interlace"]["did"]
    assert (await http.get(f"/acp/agents/{did}")).json()["name"] == "echo"
    assert_acp_error(await http.get("/acp/agents/nobody"), 404, "not_found")


async def test_a_body_without_content_type_is_accepted(http):
    raw = json.dumps(body(text="bare")).encode()
    resp = await http.post("/acp/runs", content=raw, headers={"content-type": ""})
    assert resp.status_code == 200 and text_of(resp.json()) == "bare"


async def test_every_mode_names_the_run_in_a_header(http):
    sync = await http.post("/acp/runs", json=body())
    assert sync.status_code == 200 and sync.headers["run-id"] == sync.json()["run_id"]
    run = sync.json()
    assert run["status"] == "completed" and run["agent_name"] == "echo" and uuid.UUID(run["session_id"])
    async_ = await http.post("/acp/runs", json=body(mode="async"))
    assert (
        async_.status_code == 202
        and async_.json()["status"] == "created"
        and async_.headers["run-id"] == async_.json()["run_id"]
    )
    resp, events = await stream(http, "/acp/runs", body(mode="stream"))
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/event-stream")
    assert resp.headers["run-id"] == events[0]["run"]["run_id"]
    assert [e["type"] for e in events][0] == "run.created" and events[-1]["type"] == "run.completed"


async def test_a_run_is_read_back_and_its_events_replayed(http):
    run = (await http.post("/acp/runs", json=body(agent="chunker", text="abcdef"))).json()
    got = await http.get(f"/acp/runs/{run['run_id']}")
    assert got.json() == run
    assert (await http.get(f"/acp/runs/{uuid.UUID(run['run_id']).hex}")).json()["run_id"] == run[
        "run_id"
    ]  # any UUID spelling
    events = (await http.get(f"/acp/runs/{run['run_id']}/events")).json()["events"]
    parts = [e["part"]["content"] for e in events if e["type"] == "message.part"]
    assert parts == ["ab", "cd", "ef"] and events[-1]["run"]["status"] == "completed"


async def test_resume_in_async_mode_then_poll(http):
    run = (await http.post("/acp/runs", json=body(agent="asker"))).json()
    assert run["status"] == "awaiting"
    resume = {
        "run_id": run["run_id"],
        "await_resume": {"type": "message", "message": {"parts": [{"content": "42"}]}},
        "mode": "async",
    }
    resp = await http.post(f"/acp/runs/{run['run_id']}", json=resume)
    assert resp.status_code == 202 and resp.json()["status"] == "in-progress"

    async def finished():
        got = (await http.get(f"/acp/runs/{run['run_id']}")).json()
        return got if got["status"] == "completed" else None

    done = await wait_until(finished)
    assert text_of(done) == "42" and done["await_request"] is None


@pytest.mark.parametrize(
    "payload",
    [
        b"{not json",
        b"[1, 2]",
        json.dumps({"input": [{"parts": [{"content": "x"}]}]}).encode(),  # no agent_name
        json.dumps({"agent_name": "echo", "input": []}).encode(),
        json.dumps({"agent_name": "echo", "input": [{"parts": []}]}).encode(),
        json.dumps({"agent_name": "echo", "input": [{"role": "robot", "parts": [{"content": "x"}]}]}).encode(),
        json.dumps({**body(), "mode": "later"}).encode(),
        json.dumps({**body(), "session_id": "not-a-uuid"}).encode(),
        json.dumps({**body(), "session_id": str(uuid.uuid4()), "session": {"id": str(uuid.uuid4())}}).encode(),
        json.dumps(
            body()
            | {"input": [{"parts": [{"content": "%%%", "content_type": "image/png", "content_encoding": "base64"}]}]}
        ).encode(),
        json.dumps(body() | {"input": [{"parts": [{"content": "{", "content_type": "application/json"}]}]}).encode(),
        json.dumps(body() | {"input": [{"parts": [{"content": "a", "content_url": "http://x/y"}]}]}).encode(),
    ],
    ids=[
        "bad-json",
        "not-object",
        "no-agent",
        "empty-input",
        "empty-parts",
        "bad-role",
        "bad-mode",
        "bad-session-id",
        "session-mismatch",
        "bad-base64",
        "bad-json-part",
        "content-and-url",
    ],
)
async def test_invalid_input_is_422(http, payload):
    assert_acp_error(await http.post("/acp/runs", content=payload), 422, "invalid_input")


async def test_unknown_agent_run_and_session_are_404(http):
    assert_acp_error(await http.post("/acp/runs", json=body(agent="nobody")), 404, "not_found")
    missing = str(uuid.uuid4())
    for path in (
        f"/acp/runs/{missing}",
        f"/acp/runs/{missing}/events",
        "/acp/runs/not-a-uuid",
        f"/acp/sessions/{missing}",
        "/acp/sessions/x",
    ):
        assert_acp_error(await http.get(path), 404, "not_found")
    assert_acp_error(await http.post(f"/acp/runs/{missing}/cancel"), 404, "not_found")


async def test_cancel_of_a_finished_run_is_403(http):
    run = (await http.post("/acp/runs", json=body())).json()
    assert_acp_error(await http.post(f"/acp/runs/{run['run_id']}/cancel"), 403, "server_error")


async def test_cancel_of_a_running_run_is_202_and_the_run_stays_cancelled(http):
    run = (await http.post("/acp/runs", json=body(agent="sleeper", mode="async"))).json()
    resp = await http.post(f"/acp/runs/{run['run_id']}/cancel")
    assert resp.status_code == 202 and resp.json()["status"] == "cancelled"
    assert (await http.get(f"/acp/runs/{run['run_id']}")).json()["status"] == "cancelled"


async def test_bad_resumes(http):
    done = (await http.post("/acp/runs", json=body())).json()
    resume = {"await_resume": {"type": "message", "message": {"parts": [{"content": "x"}]}}, "mode": "sync"}
    assert_acp_error(await http.post(f"/acp/runs/{done['run_id']}", json=resume), 403, "server_error")  # not awaiting
    waiting = (await http.post("/acp/runs", json=body(agent="asker"))).json()
    path = f"/acp/runs/{waiting['run_id']}"
    assert_acp_error(await http.post(path, json={**resume, "await_resume": {"type": "other"}}), 403, "server_error")
    assert_acp_error(await http.post(path, json={**resume, "run_id": str(uuid.uuid4())}), 422, "invalid_input")
    assert_acp_error(await http.post(path, json={"mode": "sync"}), 422, "invalid_input")
    assert_acp_error(await http.post(path, json={"await_resume": {"type": "message"}}), 422, "invalid_input")
    assert_acp_error(await http.post(path, content=b"nope"), 422, "invalid_input")
    assert (await http.get(path)).json()["status"] == "awaiting"  # none of that touched the run
    ok = await http.post(path, json=resume)
    assert ok.status_code == 200 and ok.json()["status"] == "completed"


async def test_a_carried_session_keeps_its_history_and_adds_the_gateway_runs(http):
    sid = str(uuid.uuid4())
    carried = {"id": sid, "history": ["http://elsewhere.invalid/resources/1"], "state": None}
    run = (await http.post("/acp/runs", json=body(text="one", session=carried))).json()
    assert run["session_id"] == sid
    again = (await http.post("/acp/runs", json=body(text="two", session_id=sid))).json()
    session = (await http.get(f"/acp/sessions/{sid}")).json()
    assert session["id"] == sid and session["state"] is None
    history = session["history"]
    assert history[0] == "http://elsewhere.invalid/resources/1" and len(history) == 5
    assert all(u.startswith(str(http.base_url).rstrip("/") + "/acp/runs/") for u in history[1:])
    loaded = [(await http.get(u)).json() for u in history[1:]]
    assert [m["role"] for m in loaded] == ["user", "agent/echo", "user", "agent/echo"]
    assert [m["parts"][0]["content"] for m in loaded] == ["one", "one", "two", "two"]
    assert again["run_id"] in history[3]
    assert_acp_error(await http.get(f"/acp/runs/{run['run_id']}/messages/9"), 404, "not_found")


async def test_other_paths_under_acp_get_acp_errors(http):
    assert_acp_error(await http.get("/acp/nothing-here"), 404, "not_found")
    assert_acp_error(await http.delete("/acp/runs"), 405, "server_error")  # as the SDK's server answers


async def test_the_gateway_is_healthy_after_all_that(http):
    assert (await http.get("/healthz")).status_code == 200
    assert (await http.post("/acp/runs", json=body(text="still here"))).json()["status"] == "completed"


async def test_two_nodes_sharing_redis_serve_the_same_runs_and_sessions(redis_server):
    redis_server.flush()
    cfg = dict(redis_url=redis_server.url)
    async with (
        running_gateway(test_config(**cfg), workers=gateway_agents()) as (a_url, _),
        running_gateway(test_config(echo=False, **cfg), workers=[]) as (b_url, _),
    ):
        async with (
            httpx.AsyncClient(base_url=a_url, timeout=20) as a,
            httpx.AsyncClient(base_url=b_url, timeout=20) as b,
        ):
            assert "asker" in [x["name"] for x in (await b.get("/acp/agents", params={"limit": 100})).json()["agents"]]
            sid = str(uuid.uuid4())
            carried = {"id": sid, "history": ["http://elsewhere.invalid/r/1"]}
            run = (
                await b.post("/acp/runs", json=body(agent="asker", session=carried))
            ).json()  # accepted by B, run by A's worker
            assert run["status"] == "awaiting"
            resume = {
                "await_resume": {"type": "message", "message": {"parts": [{"content": "from A"}]}},
                "mode": "sync",
            }
            done = (await a.post(f"/acp/runs/{run['run_id']}", json=resume)).json()
            assert done["status"] == "completed" and text_of(done) == "from A"
            assert (await b.get(f"/acp/runs/{run['run_id']}")).json()["status"] == "completed"
            session = (await a.get(f"/acp/sessions/{sid}")).json()
            assert session["history"][0] == "http://elsewhere.invalid/r/1" and len(session["history"]) == 3


async def test_mount_options_sync_timeout_and_public_url():
    app = create_app(test_config(), workers=gateway_agents())
    mount(app, ACPOptions(sync_timeout_s=0.2, public_url="https://gw.example/"))
    async with serve_app(app) as url, httpx.AsyncClient(base_url=url, timeout=20) as http:
        slow = await http.post("/acp/runs", json=body(agent="sleeper"))
        assert (
            slow.status_code == 200 and slow.json()["status"] == "in-progress"
        )  # sync gave up waiting, the run goes on
        await http.post(f"/acp/runs/{slow.json()['run_id']}/cancel")
        run = (await http.post("/acp/runs", json=body())).json()
        history = (await http.get(f"/acp/sessions/{run['session_id']}")).json()["history"]
        assert history and all(u.startswith("https://gw.example/acp/runs/") for u in history)
        assert len([r for r in app.router.routes if getattr(r, "name", "") == "acp:runs"]) == 1  # replaced, not added
