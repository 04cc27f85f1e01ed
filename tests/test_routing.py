"""Capability routing (gateway/core/routing.py): the latency tracker, POST /route (dry run) and
tasks sent by capability through the gateway."""

import time

import httpx
import pytest

from gateway.core.routing import LatencyTracker
from registry.identity import Identity
from registry.records import sign
from schemas.agent_record import AgentRecord
from tests.conftest import running_gateway, test_config


def record(identity: Identity, name: str, skill: dict, *, cost: int | None = None, seq: int = 1) -> AgentRecord:
    now = int(time.time())
    data = {
        "did": identity.did,
        "name": name,
        "description": "",
        "version": "1",
        "skills": [skill],
        "endpoints": {"a2a": f"http://127.0.0.1:9/{name}"},
        "seq": seq,
        "issued_at": now,
        "expires_at": now + 600,
        "network": "interlace",
        "home_node": "test",
    }
    if cost is not None:
        data["cost"] = cost
    return sign(AgentRecord.model_validate(data), identity)


TRANSLATE = {
    "id": "translate",
    "name": "Translate",
    "description": "translate text between languages",
    "tags": ["language", "translation"],
}
WEATHER = {"id": "forecast", "name": "Forecast", "description": "weather forecast for a city", "tags": ["weather"]}


@pytest.fixture
async def http():
    async with running_gateway() as (url, app):
        async with httpx.AsyncClient(base_url=url, timeout=10) as client:
            client.app = app
            yield client


async def register(http, *records):
    for r in records:
        assert (await http.post("/registry/agents", json=r.dump())).status_code in (200, 201)


async def test_dry_run_ranks_by_text_then_cost_with_reasons(http):
    cheap, dear, weather = Identity.generate(), Identity.generate(), Identity.generate()
    await register(
        http,
        record(cheap, "babel", TRANSLATE, cost=10),
        record(dear, "lingo", TRANSLATE, cost=900_000),
        record(weather, "sky", WEATHER),
    )
    result = (await http.post("/route", json={"text": "translate this text into French"})).json()
    names = [c["agent"] for c in result["candidates"]]
    assert names[:2] == ["babel", "lingo"] and "sky" not in names
    assert result["candidates"][0]["reasons"] and result["candidates"][0]["score"] > result["candidates"][1]["score"]


async def test_hard_filters_and_no_match_lists_the_closest(http):
    await register(http, record(Identity.generate(), "babel", TRANSLATE, cost=500))
    resp = await http.post("/route", json={"text": "translate", "max_cost": 100})
    assert resp.status_code == 200 and resp.json()["candidates"] == []
    closest = resp.json()["closest"]
    assert closest[0]["agent"] == "babel" and "max_cost" in " ".join(closest[0]["excluded_by"])
    body = {
        "query": {"text": "translate", "max_cost": 100},
        "message": {"role": "user", "parts": [{"kind": "text", "text": "hola"}]},
    }
    task = await http.post("/tasks", json=body)
    assert task.status_code == 404 and task.json()["error"]["code"] == "no_match"
    assert task.json()["error"]["closest"][0]["agent"] == "babel"  # never a random agent


async def test_no_match_without_a_shared_word_lists_the_closest_with_reasons(http):
    await register(http, record(Identity.generate(), "babel", TRANSLATE), record(Identity.generate(), "sky", WEATHER))
    query = {"text": "book a flight to Tokyo"}
    resp = await http.post("/route", json=query)
    assert resp.status_code == 200 and resp.json()["candidates"] == []
    task = await http.post(
        "/tasks", json={"query": query, "message": {"role": "user", "parts": [{"kind": "text", "text": "NRT, Friday"}]}}
    )
    assert task.status_code == 404 and task.json()["error"]["code"] == "no_match"
    for closest in (resp.json()["closest"], task.json()["error"]["closest"]):
        assert {"babel", "sky"} <= {c["agent"] for c in closest}
        for c in closest:
            assert c["excluded_by"] == ["text"] and c["reasons"]["text"] == "no word of the query matches its skills"


async def test_no_match_with_no_agent_registered_says_so():
    query = {"text": "book a flight to Tokyo"}
    async with running_gateway(test_config(echo=False)) as (url, _):
        async with httpx.AsyncClient(base_url=url, timeout=10) as http:
            resp = await http.post("/route", json=query)
            assert resp.status_code == 200
            assert resp.json()["closest"] == [] and resp.json()["note"] == "no agent is registered"
            task = await http.post(
                "/tasks", json={"query": query, "message": {"role": "user", "parts": [{"kind": "text", "text": "x"}]}}
            )
            error = task.json()["error"]
            assert task.status_code == 404 and error["code"] == "no_match"
            assert error["message"] == "no agent is registered" and error["closest"] == []


async def test_task_by_capability_reaches_the_best_agent(http):
    body = {
        "query": {"text": "echo a message back", "tags": ["echo"]},
        "message": {"role": "user", "parts": [{"kind": "text", "text": "routed"}]},
    }
    resp = await http.post("/tasks?wait=true", json=body)
    task = resp.json()
    assert task["status"]["state"] == "completed" and task["artifacts"][0]["parts"][0]["text"] == "routed"
    assert task["route"]["agent"] == "echo" and task["route"]["skill"] == "echo" and "score" in task["route"]["reason"]


async def test_agent_and_query_are_exclusive_and_queries_are_validated(http):
    msg = {"role": "user", "parts": [{"kind": "text", "text": "x"}]}
    both = await http.post("/tasks", json={"agent": "echo", "query": {"text": "echo"}, "message": msg})
    assert both.status_code == 400
    assert (await http.post("/route", json={"text": "x", "max_cost": 1.5})).status_code == 400
    assert (await http.post("/route", json={"colour": "red"})).status_code == 400


async def test_load_observed_by_the_node_spreads_ties(http):
    a, b = Identity.generate(), Identity.generate()
    await register(http, record(a, "left", WEATHER), record(b, "right", WEATHER))
    firsts = {
        (await http.post("/route", json={"text": "weather forecast"})).json()["candidates"][0]["agent"]
        for _ in range(4)
    }
    assert firsts == {"left", "right"}  # equal agents share the load
    http.app.state.runtime.capabilities.accepted("left")  # one task in flight at "left"
    ranked = (await http.post("/route", json={"text": "weather forecast"})).json()["candidates"]
    assert ranked[0]["agent"] == "right"


async def test_embeddings_mode_is_used_when_configured():
    async with running_gateway(test_config(embeddings=True)) as (url, _):
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            result = (await client.post("/route", json={"text": "say my words again unchanged"})).json()
            best = result["candidates"][0]
            assert result["mode"] == "embeddings" and best["agent"] == "echo" and best["reasons"]["cosine"] > 0.2


def test_latency_tracker_ewma():
    t = LatencyTracker(alpha=0.5)
    assert t.get("a") is None and t.get_ms("a") is None
    assert t.observe("a", 0.100) == pytest.approx(0.100)  # first observation seeds
    assert t.observe("a", 0.300) == pytest.approx(0.200)
    assert t.observe("a", 0.300) == pytest.approx(0.250)
    assert t.get("a") == pytest.approx(0.250) and t.get_ms("a") == pytest.approx(250.0)
    assert len(t) == 1
    for bad in (-0.1, float("nan"), float("inf")):
        with pytest.raises(ValueError):
            t.observe("a", bad)
    t.forget("a")
    assert t.get("a") is None
    with pytest.raises(ValueError):
        LatencyTracker(alpha=0.0)
    small = LatencyTracker(max_agents=2)
    for d in "abc":
        small.observe(d, 0.01)
    assert small.get("a") is None and small.get("c") is not None
    assert LatencyTracker().alpha == 0.2
