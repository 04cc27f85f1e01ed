"""The signed registry: acceptance rules on both backends, the HTTP routes, admission, the CLI."""

import asyncio
import json
import os
import time

import httpx
import pytest

from registry import service
from registry.identity import Identity
from registry.records import RecordRejected, sign
from registry.service import Registry
from schemas.agent_record import AgentRecord, Tombstone
from tests.conftest import interlace_cmd, running_gateway, subprocess_env, test_config

NET = "interlace"


def card(name="weather", **extra):
    base = {
        "name": name,
        "description": "Forecasts for a city",
        "version": "1.0.0",
        "skills": [
            {
                "id": "forecast",
                "name": "Forecast",
                "description": "weather forecast for a city",
                "tags": ["weather", "forecast"],
            }
        ],
        "endpoints": {"a2a": "http://127.0.0.1:9/a2a"},
    }
    base.update(extra)
    return base


def record(identity: Identity, seq=1, *, issued_at=None, ttl=600, network=NET, **card_extra) -> AgentRecord:
    now = int(time.time()) if issued_at is None else issued_at
    data = {
        **card(**card_extra),
        "did": identity.did,
        "seq": seq,
        "issued_at": now,
        "expires_at": now + ttl,
        "network": network,
        "home_node": "test",
    }
    return sign(AgentRecord.model_validate(data), identity)


def tombstone(identity: Identity, seq, did=None) -> Tombstone:
    t = Tombstone(did=did or identity.did, seq=seq, issued_at=int(time.time()), network=NET)
    return (
        sign(t, identity)
        if did is None
        else t.model_copy(
            update={
                "signature": sign(
                    Tombstone(did=identity.did, seq=seq, issued_at=t.issued_at, network=NET), identity
                ).signature
            }
        )
    )


@pytest.fixture
async def registry(backend):
    reg = Registry(backend.records, NET, skew_s=60)
    await reg.start()
    yield reg
    await reg.stop()


# ---- acceptance rules (both backends) ------------------------------------------------------


async def test_register_update_and_deregister(registry):
    me = Identity.generate()
    assert await registry.submit(record(me, 1)) == "created"
    assert await registry.submit(record(me, 2, description="better")) == "updated"
    assert registry.get(me.did).description == "better"
    assert [r.did for r in registry.by_name("weather")] == [me.did]
    assert await registry.submit(tombstone(me, 3)) == "deleted"
    assert registry.get(me.did) is None and registry.digest()[me.did] == 3
    with pytest.raises(RecordRejected) as info:  # a tombstoned DID cannot come back with an old record
        await registry.submit(record(me, 2))
    assert info.value.reason_code == "stale_seq"


def _forged(me: Identity) -> AgentRecord:
    good = record(me, 5)
    return good.model_copy(update={"description": "tampered"})


def _other_key(me: Identity) -> AgentRecord:
    mallory = Identity.generate()
    good = record(me, 5)
    return good.model_copy(update={"signature": sign(good.model_copy(update={"did": mallory.did}), mallory).signature})


@pytest.mark.parametrize(
    "make, code",
    [
        (_forged, "bad_signature"),
        (_other_key, "bad_signature"),  # Ed25519 cannot say whose key it was: the signature just fails
        (lambda me: record(me, 1), "stale_seq"),  # replay of the stored seq... (stored is 1)
        (lambda me: record(me, 0), "stale_seq"),  # ...and rollback
        (lambda me: record(me, 9, issued_at=int(time.time()) + 3600), "issued_in_future"),
        (lambda me: record(me, 9, issued_at=int(time.time()) - 3600, ttl=7200), "stale"),
        (lambda me: record(me, 9, network="elsewhere"), "wrong_network"),
        (lambda me: record(me, 9, issued_at=int(time.time()) - 3600, ttl=10), "expired"),
        (lambda me: tombstone(Identity.generate(), 9, did=me.did), "bad_signature"),  # not signed by the owner
    ],
    ids=["forged", "other-key", "replay", "rollback", "future", "stale", "network", "expired", "foreign-tombstone"],
)
async def test_bad_records_are_rejected_and_change_nothing(registry, make, code):
    me = Identity.generate()
    await registry.submit(record(me, 1))
    before = registry.get(me.did)
    with pytest.raises(RecordRejected) as info:
        await registry.submit(make(me))
    assert info.value.reason_code == code
    assert registry.get(me.did) == before


async def test_expired_records_disappear_by_themselves(registry):
    me = Identity.generate()
    await registry.submit(record(me, 1, ttl=2))
    assert registry.get(me.did) is not None
    await asyncio.sleep(2.1)
    assert registry.get(me.did) is None and registry.by_name("weather") == []


async def test_a_record_is_verified_once(registry, monkeypatch):
    calls = []
    real = service.verify_signature
    monkeypatch.setattr(service, "verify_signature", lambda m: (calls.append(m.did), real(m))[1])
    me = Identity.generate()
    rec = record(me, 1)
    await registry.submit(rec)
    with pytest.raises(RecordRejected):
        await registry.submit(rec)  # the same signed bytes again (as gossip would relay them)
    assert calls == [me.did]


async def test_a_second_node_sees_writes_through_the_store(backend, registry):
    other = Registry(backend.records, NET)
    await other.start()
    me = Identity.generate()
    await registry.submit(record(me, 1))

    async def seen():
        while other.get(me.did) is None:
            await asyncio.sleep(0.01)

    await asyncio.wait_for(seen(), 10)
    await other.stop()


# ---- HTTP --------------------------------------------------------------------------------


@pytest.fixture
async def http():
    async with running_gateway() as (url, _):
        async with httpx.AsyncClient(base_url=url, timeout=10) as client:
            yield client


async def test_http_register_get_list_and_delete(http):
    me = Identity.generate()
    first = await http.post("/registry/agents", json=record(me, 1).dump())
    assert first.status_code == 201 and first.json()["result"] == "created"
    assert (await http.post("/registry/agents", json=record(me, 2).dump())).status_code == 200
    got = await http.get(f"/registry/agents/{me.did}")
    assert got.status_code == 200 and got.json()["seq"] == 2 and got.json()["signature"]
    listing = (await http.get("/registry/agents", params={"tag": "weather"})).json()
    assert [a["did"] for a in listing["agents"]] == [me.did]
    assert (await http.get("/registry/agents", params={"protocol": "a2a"})).json()["total"] == 1
    assert (await http.get("/registry/agents", params={"protocol": "mcp"})).json()["total"] == 0
    assert (await http.get("/registry/agents", params={"q": "forecast city"})).json()["total"] == 1
    assert (await http.get("/registry/agents", params={"q": "stock prices"})).json()["total"] == 0
    everyone = (await http.get("/registry/agents")).json()
    assert {a["name"] for a in everyone["agents"]} == {"weather", "echo"}
    page = (await http.get("/registry/agents", params={"limit": 1})).json()
    assert len(page["agents"]) == 1 and page["next_cursor"] == "1"
    assert (await http.get("/registry/agents", params={"limit": 0})).status_code == 400
    gone = await http.request("DELETE", f"/registry/agents/{me.did}", json=tombstone(me, 3).dump())
    assert gone.status_code == 200
    assert (await http.get(f"/registry/agents/{me.did}")).status_code == 404


async def test_http_rejections_name_the_reason(http):
    me = Identity.generate()
    await http.post("/registry/agents", json=record(me, 5).dump())
    stored = (await http.get(f"/registry/agents/{me.did}")).json()
    cases = [
        (_forged(me).dump(), 400, "bad_signature"),
        (record(me, 5).dump(), 409, "stale_seq"),
        (record(me, 4).dump(), 409, "stale_seq"),
        (record(me, 9, network="elsewhere").dump(), 400, "wrong_network"),
        ({**record(me, 9).dump(), "surprise": 1}, 400, "invalid_record"),
        ({**record(me, 9).dump(), "cost": 1.5}, 400, "invalid_record"),
        ({**record(me, 9).dump(), "labels": {"x": 2.0}}, 400, "invalid_record"),
    ]
    for body, status, code in cases:
        resp = await http.post("/registry/agents", json=body)
        assert (resp.status_code, resp.json()["error"]["code"]) == (status, code), body
    float_err = (await http.post("/registry/agents", json={**record(me, 9).dump(), "cost": 1.5})).json()
    assert "float" in json.dumps(float_err)
    bad_json = await http.post("/registry/agents", content=b"{nope", headers={"content-type": "application/json"})
    assert bad_json.status_code == 400
    huge = {**record(me, 9).dump(), "description": "x" * 70_000}
    assert (await http.post("/registry/agents", json=huge)).status_code == 413
    foreign = tombstone(Identity.generate(), 10, did=me.did).dump()
    assert (await http.request("DELETE", f"/registry/agents/{me.did}", json=foreign)).json()["error"][
        "code"
    ] == "bad_signature"
    other = Identity.generate()
    mismatch = await http.request("DELETE", f"/registry/agents/{me.did}", json=tombstone(other, 10).dump())
    assert mismatch.status_code == 400
    assert (await http.get(f"/registry/agents/{me.did}")).json() == stored


async def test_openapi_document_describes_the_registry(http):
    doc = (await http.get("/openapi.json")).json()
    assert doc["openapi"].startswith("3.1")
    assert set(doc["paths"]) == {
        "/registry/agents",
        "/registry/agents/{did}",
        "/registry/revocations",
        "/registry/revocations/{did}",
    }
    assert set(doc["paths"]["/registry/agents/{did}"]) == {"get", "delete"}
    assert set(doc["paths"]["/registry/revocations"]) == {"get", "post"}
    assert {"AgentRecord", "Tombstone", "Revocation"} <= set(doc["components"]["schemas"])


async def test_token_admission():
    async with running_gateway(test_config(admission="token", registration_token="t0ken")) as (url, _):
        async with httpx.AsyncClient(base_url=url, timeout=10) as http:
            me = Identity.generate()
            assert (await http.post("/registry/agents", json=record(me, 1).dump())).status_code == 401
            wrong = await http.post(
                "/registry/agents", json=record(me, 1).dump(), headers={"Authorization": "Bearer x"}
            )
            assert wrong.status_code == 403
            ok = await http.post(
                "/registry/agents", json=record(me, 1).dump(), headers={"Authorization": "Bearer t0ken"}
            )
            assert ok.status_code == 201
            ok2 = await http.post(
                "/registry/agents", json=record(me, 2).dump(), headers={"Interlace-Registration-Token": "t0ken"}
            )
            assert ok2.status_code == 200


async def test_allowlist_admission(tmp_path):
    allowed, stranger = Identity.generate(), Identity.generate()
    path = tmp_path / "allow.txt"
    path.write_text(f"# agents we trust\n{allowed.did}\n")
    async with running_gateway(test_config(admission="allowlist", allowlist=str(path))) as (url, _):
        async with httpx.AsyncClient(base_url=url, timeout=10) as http:
            assert (await http.post("/registry/agents", json=record(allowed, 1).dump())).status_code == 201
            refused = await http.post("/registry/agents", json=record(stranger, 1).dump())
            assert refused.status_code == 403 and refused.json()["error"]["code"] == "not_allowed"


async def test_registry_writes_are_rate_limited():
    async with running_gateway(test_config(registry_write_rate=1.0, registry_write_burst=3)) as (url, _):
        async with httpx.AsyncClient(base_url=url, timeout=10) as http:
            me = Identity.generate()
            statuses = [(await http.post("/registry/agents", json=record(me, i).dump())) for i in range(1, 6)]
            assert [r.status_code for r in statuses[:3]] == [201, 200, 200]
            limited = statuses[3]
            assert limited.status_code == 429 and int(limited.headers["Retry-After"]) >= 1
            assert limited.json()["error"]["code"] == "rate_limited"


def test_open_admission_is_only_a_loopback_default():
    assert test_config().effective_admission() == "open"
    with pytest.raises(ValueError, match="admission"):
        test_config(host="0.0.0.0").effective_admission()
    assert test_config(host="0.0.0.0", registration_token="t").effective_admission() == "token"
    with pytest.raises(ValueError):
        test_config(admission="token").effective_admission()


async def test_tasks_reach_agents_by_name_or_did(http):
    echo = (await http.get("/registry/agents", params={"q": "echo"})).json()["agents"][0]
    body = {"message": {"role": "user", "parts": [{"kind": "text", "text": "by did"}]}}
    by_did = await http.post("/tasks?wait=true", json={"agent": echo["did"], **body})
    assert by_did.json()["artifacts"][0]["parts"][0]["text"] == "by did"


# ---- CLI ----------------------------------------------------------------------------------


async def cli(*args: str, **env: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *interlace_cmd(*args),
        env=subprocess_env(**env),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode, out.decode(), err.decode()


async def test_cli_keys_and_agent_lifecycle(tmp_path):
    key = tmp_path / "agent.key"
    rc, did, _ = await cli("keys", "new", str(key))
    did = did.strip()
    assert rc == 0 and did.startswith("did:key:z6Mk") and oct(os.stat(key).st_mode & 0o777) == "0o600"
    assert (await cli("keys", "show", str(key)))[1].strip() == did
    rc, _, err = await cli("keys", "new", str(key))
    assert rc == 1 and "exists" in err  # never overwrites by accident
    card_file = tmp_path / "agent.yaml"
    card_file.write_text(
        "name: weather\ndescription: Forecasts\nversion: '1.0'\n"
        "skills:\n  - id: forecast\n    name: Forecast\n    tags: [weather]\n"
        "endpoints:\n  a2a: http://127.0.0.1:9/a2a\n"
    )
    async with running_gateway(test_config(admission="token", registration_token="tk")) as (url, _):
        common = ("--gateway", url)
        rc, out, err = await cli(
            "agent", "register", "--key", str(key), "--card", str(card_file), *common, "--token", "tk"
        )
        assert rc == 0, err
        first = json.loads(out)
        rc, out, _ = await cli(
            "agent", "register", "--key", str(key), "--card", str(card_file), *common, INTERLACE_REGISTRATION_TOKEN="tk"
        )
        assert rc == 0 and json.loads(out)["seq"] > first["seq"] and json.loads(out)["result"] == "updated"
        rc, out, _ = await cli("agent", "list", "--tag", "weather", *common)
        assert [a["did"] for a in json.loads(out)["agents"]] == [did]
        rc, out, _ = await cli("agent", "show", did, *common)
        assert json.loads(out)["name"] == "weather"
        rc, _, err = await cli("agent", "register", "--key", str(key), "--card", str(card_file), *common)
        assert rc == 1 and "401" in err and "Traceback" not in err  # no token
        rc, out, _ = await cli("agent", "deregister", "--key", str(key), *common, "--token", "tk")
        assert rc == 0 and json.loads(out)["result"] == "deleted"
        rc, _, err = await cli("agent", "show", did, *common)
        assert rc == 1 and "404" in err
