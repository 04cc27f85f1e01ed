"""The gateway's ANP face with the official ``anp`` package as the client (ANPCrawler,
DIDWbaAuthHeader): documents, and each row of the inbound mapping table."""

from __future__ import annotations

import httpx
import pytest
from anp.anp_crawler.anp_crawler import ANPCrawler
from anp.proof import verify_w3c_proof
from cryptography.hazmat.primitives.asymmetric import ed25519

from agents.echo import EchoWorker
from protocols.anp.didwba import did_for_host
from schemas import DataPart, TextPart
from tests.conftest import test_config
from tests.fixtures.anp_support import LocalResolver, anp_gateway, call, make_caller, signed_post, signer


class OtherEcho(EchoWorker):
    agent = "echo2"


@pytest.fixture
async def anp(tmp_path):
    alice, bob = make_caller(tmp_path, "alice"), make_caller(tmp_path, "bob")
    resolver = LocalResolver(alice, bob)
    async with anp_gateway(workers=[EchoWorker(), OtherEcho()], resolve=resolver) as (url, app):
        async with httpx.AsyncClient(timeout=20) as http:
            yield url, app, http, alice, bob


def rpc_url(url: str, agent: str | None = "echo") -> str:
    return f"{url}/anp/agents/{agent}/rpc" if agent else f"{url}/anp/rpc"


async def test_did_document_from_the_request_host(anp):
    url, app, http, *_ = anp
    doc = (await http.get(f"{url}/.well-known/did.json")).json()
    port = url.rsplit(":", 1)[1]
    assert doc["id"] == f"did:wba:localhost%3A{port}"
    assert doc["service"][0]["serviceEndpoint"] == f"{url}/anp/ad.json"
    identity = app.state.runtime.identity
    public = ed25519.Ed25519PublicKey.from_public_bytes(bytes(identity.verify_key))
    assert verify_w3c_proof(doc, public, expected_purpose="assertionMethod")
    bad = await http.get(f"{url}/.well-known/did.json", headers={"Host": "evil/../x"})
    assert bad.status_code == 400 and "INTERLACE_ANP_PUBLIC_HOST" in bad.json()["error"]["message"]


async def test_did_document_from_the_configured_public_host():
    async with anp_gateway(public_host="gw.example.com:8443", public_url="https://gw.example.com:8443") as (url, _):
        async with httpx.AsyncClient(timeout=10) as http:
            doc = (await http.get(f"{url}/.well-known/did.json")).json()
            ad = (await http.get(f"{url}/anp/ad.json")).json()
    assert doc["id"] == did_for_host("gw.example.com:8443") == "did:wba:gw.example.com%3A8443"
    assert doc["service"][0]["serviceEndpoint"] == "https://gw.example.com:8443/anp/ad.json"
    assert ad["did"] == doc["id"]
    assert ad["interfaces"][0]["content"]["servers"][0]["url"] == "https://gw.example.com:8443/anp/rpc"


async def test_agent_descriptions_and_openrpc(anp):
    url, app, http, *_ = anp
    ad = (await http.get(f"{url}/anp/agents/echo/ad.json")).json()
    assert ad["@type"] == "ad:AgentDescription" and ad["@context"]["@vocab"] == "https://schema.org/"
    assert ad["name"] == "echo" and "Echo" in ad["description"]
    assert ad["security"] == "didwba_sc" and ad["securityDefinitions"]["didwba_sc"]["scheme"] == "didwba"
    assert ad["did"] == (await http.get(f"{url}/.well-known/did.json")).json()["id"]
    assert ad["identifier"] == app.state.runtime.registry.by_name("echo")[0].did
    openrpc = ad["interfaces"][0]["content"]
    assert ad["interfaces"][0]["protocol"] == "openrpc" and openrpc["openrpc"] == "1.3.2"
    assert openrpc["servers"][0]["url"] == rpc_url(url)
    assert [m["name"] for m in openrpc["methods"]] == ["send_message", "get_task", "cancel_task"]
    assert (await http.get(f"{url}/anp/agents/echo/openrpc.json")).json() == openrpc
    assert ad["interfaces"][1] == {
        "@type": "ad:APIInterface",
        "protocol": "JSON-RPC 2.0",
        "description": "the same methods, as an OpenRPC document",
        "url": f"{url}/anp/agents/echo/openrpc.json",
    }
    gateway = (await http.get(f"{url}/anp/ad.json")).json()
    assert {a["name"] for a in gateway["ad:agents"]} == {"echo", "echo2"}
    send = gateway["interfaces"][0]["content"]["methods"][0]
    assert send["params"][0]["name"] == "agent" and send["params"][0]["schema"]["enum"] == ["echo", "echo2"]
    for path in ("/anp/agents/nope/ad.json", "/anp/agents/nope/openrpc.json"):
        assert (await http.get(url + path)).status_code == 404
    assert (
        await signed_post(http, signer(anp[3]), rpc_url(url, "nope"), {"jsonrpc": "2.0", "id": 1, "method": "get_task"})
    ).status_code == 404


async def test_crawler_sends_text_and_data(anp):
    """Rows: message -> TextPart, data -> DataPart, caller -> the owner; result text/data/artifacts."""
    url, app, http, alice, _ = anp
    crawler = ANPCrawler(alice.doc_path, alice.key_path, cache_enabled=False)
    _, tools = await crawler.fetch_text(f"{url}/anp/agents/echo/ad.json")
    assert [t["function"]["name"] for t in tools] == ["send_message", "get_task", "cancel_task"]
    out = await crawler.execute_tool_call("send_message", {"message": "hello", "data": {"n": 1}})
    assert out["success"], out
    result = out["result"]
    assert result["state"] == "completed" and result["text"] == "hello" and result["data"] == [{"n": 1}]
    assert result["artifacts"][0]["parts"] == [{"kind": "text", "text": "hello"}, {"kind": "data", "data": {"n": 1}}]
    task = await app.state.runtime.get(result["task_id"])
    assert task.history[0].parts == [TextPart(text="hello"), DataPart(data={"n": 1})]
    assert task.owner == alice.did
    assert task.route.agent == "echo"


async def test_context_and_metadata(anp):
    url, app, http, alice, _ = anp
    resp = await call(
        http,
        signer(alice),
        rpc_url(url),
        "send_message",
        {
            "message": "m",
            "context_id": "ctx-1",
            "metadata": {"k": "v", "anp.caller": "did:wba:forged.example", "owner": "did:wba:forged.example"},
        },
    )
    task = await app.state.runtime.get(resp["result"]["task_id"])
    assert task.context_id == resp["result"]["context_id"] == "ctx-1"
    assert task.metadata == {"k": "v", "owner": "did:wba:forged.example"}  # metadata is only metadata
    assert task.owner == alice.did


async def test_failed_task_is_a_jsonrpc_error(anp):
    url, _, http, alice, _ = anp
    crawler = ANPCrawler(alice.doc_path, alice.key_path, cache_enabled=False)
    await crawler.fetch_text(f"{url}/anp/agents/echo/ad.json")
    out = await crawler.execute_tool_call("send_message", {"message": "x", "metadata": {"fail": "boom"}})
    assert not out["success"] and "-32010" in out["error"] and "boom" in out["error"]
    resp = await call(http, signer(alice), rpc_url(url), "send_message", {"message": "x", "metadata": {"fail": "bang"}})
    assert resp["error"]["code"] == -32010 and resp["error"]["message"] == "bang"
    assert resp["error"]["data"]["state"] == "failed"
    got = await call(http, signer(alice), rpc_url(url), "get_task", {"task_id": resp["error"]["data"]["task_id"]})
    assert got["result"]["state"] == "failed" and got["result"]["message"] == "bang"  # a result, not an error


async def test_input_required_then_continue(anp):
    url, _, http, alice, _ = anp
    auth = signer(alice)
    first = (
        await call(http, auth, rpc_url(url), "send_message", {"message": "hi", "metadata": {"ask": "your name?"}})
    )["result"]
    assert first["state"] == "input-required" and first["message"] == "your name?"
    second = (await call(http, auth, rpc_url(url), "send_message", {"message": "alice", "task_id": first["task_id"]}))[
        "result"
    ]
    assert second["state"] == "completed" and second["text"] == "alice" and second["task_id"] == first["task_id"]
    again = await call(http, auth, rpc_url(url), "send_message", {"message": "more", "task_id": first["task_id"]})
    assert again["error"]["code"] == -32002  # not waiting for input any more


async def test_working_get_task_and_cancel(anp):
    url, _, http, alice, _ = anp
    auth = signer(alice)
    slow = (
        await call(
            http, auth, rpc_url(url), "send_message", {"message": "x", "metadata": {"delay_ms": 20000}, "wait_s": 0}
        )
    )["result"]
    assert slow["state"] in ("submitted", "working")
    canceled = (await call(http, auth, rpc_url(url), "cancel_task", {"task_id": slow["task_id"]}))["result"]
    assert canceled["state"] == "canceled"
    assert (await call(http, auth, rpc_url(url), "cancel_task", {"task_id": slow["task_id"]}))["error"][
        "code"
    ] == -32002
    quick = (
        await call(
            http, auth, rpc_url(url), "send_message", {"message": "y", "metadata": {"delay_ms": 300}, "wait_s": 0}
        )
    )["result"]
    done = (await call(http, auth, rpc_url(url), "get_task", {"task_id": quick["task_id"], "wait_s": 10}))["result"]
    assert done["state"] == "completed" and done["text"] == "y"
    canceled_send = await call(http, auth, rpc_url(url), "get_task", {"task_id": slow["task_id"]})
    assert canceled_send["result"]["state"] == "canceled"


@pytest.fixture(params=["embedded", "redis"])
async def anp_on_both_backends(request, tmp_path):
    alice, bob = make_caller(tmp_path, "alice"), make_caller(tmp_path, "bob")
    config = test_config()
    if request.param == "redis":
        server = request.getfixturevalue("redis_server")
        server.flush()
        config = test_config(redis_url=server.url)
    async with anp_gateway(config, workers=[EchoWorker(), OtherEcho()], resolve=LocalResolver(alice, bob)) as (
        url,
        app,
    ):
        async with httpx.AsyncClient(timeout=20) as http:
            yield url, app, http, alice, bob


async def test_tasks_are_private_to_their_caller_and_scope(anp_on_both_backends):
    """Security review P1-P2 over ANP (the owner is the caller's DID), on both backends."""
    url, _, http, alice, bob = anp_on_both_backends
    task_id = (await call(http, signer(alice), rpc_url(url), "send_message", {"message": "secret"}))["result"][
        "task_id"
    ]
    for method in ("get_task", "cancel_task"):
        assert (await call(http, signer(bob), rpc_url(url), method, {"task_id": task_id}))["error"]["code"] == -32001
    assert (await call(http, signer(bob), rpc_url(url), "send_message", {"message": "x", "task_id": task_id}))["error"][
        "code"
    ] == -32001
    assert (await call(http, signer(alice), rpc_url(url, "echo2"), "get_task", {"task_id": task_id}))["error"][
        "code"
    ] == -32001
    assert (await call(http, signer(alice), rpc_url(url, None), "get_task", {"task_id": task_id}))["result"][
        "text"
    ] == "secret"
    assert (await call(http, signer(alice), rpc_url(url), "get_task", {"task_id": "nope"}))["error"]["code"] == -32001


async def test_gateway_scope_routes_by_agent(anp):
    url, app, http, alice, _ = anp
    auth = signer(alice)
    by_name = (await call(http, auth, rpc_url(url, None), "send_message", {"agent": "echo2", "message": "a"}))["result"]
    assert by_name["state"] == "completed" and (await app.state.runtime.get(by_name["task_id"])).route.agent == "echo2"
    did = app.state.runtime.registry.by_name("echo")[0].did
    by_did = (await call(http, auth, rpc_url(url, None), "send_message", {"agent": did, "message": "b"}))["result"]
    assert (await app.state.runtime.get(by_did["task_id"])).route.agent == "echo"
    assert (await call(http, auth, rpc_url(url, None), "send_message", {"agent": "nope", "message": "c"}))["error"][
        "code"
    ] == -32003
    assert (await call(http, auth, rpc_url(url, None), "send_message", {"message": "c"}))["error"]["code"] == -32602
    assert (await call(http, auth, rpc_url(url), "send_message", {"agent": "echo2", "message": "c"}))["error"][
        "code"
    ] == -32602


async def test_bearer_token_is_issued_and_reused(anp):
    url, _, http, alice, _ = anp
    auth = signer(alice)
    body = {"jsonrpc": "2.0", "id": 1, "method": "send_message", "params": {"message": "one"}}
    first = await signed_post(http, auth, rpc_url(url), body)
    assert first.status_code == 200 and first.headers["authentication-info"].startswith('access_token="')
    assert first.headers["authorization"].startswith("Bearer ")
    auth.update_token(rpc_url(url), dict(first.headers))
    second = await signed_post(http, auth, rpc_url(url), body, reuse_token=True)
    assert second.status_code == 200 and second.json()["result"]["text"] == "one"
    assert "authentication-info" not in second.headers  # the token itself was accepted


async def test_jsonrpc_protocol_errors(anp):
    url, _, http, alice, _ = anp
    auth = signer(alice)
    assert (await call(http, auth, rpc_url(url), "no_such_method"))["error"]["code"] == -32601
    assert (await call(http, auth, rpc_url(url), "get_task", {"task_id": "t", "extra": 1}))["error"]["code"] == -32602
    assert (await call(http, auth, rpc_url(url), "send_message", {"message": 5}))["error"]["code"] == -32602
    assert (await call(http, auth, rpc_url(url), "send_message", {"message": "x", "wait_s": -1}))["error"][
        "code"
    ] == -32602
    bad = await signed_post(http, auth, rpc_url(url), b"{not json")
    assert bad.status_code == 200 and bad.json()["error"]["code"] == -32700
    xml = await signed_post(http, auth, rpc_url(url), b"<x/>", content_type="text/xml")
    assert xml.json()["error"]["code"] == -32700
    batch = await signed_post(
        http,
        auth,
        rpc_url(url),
        [
            {"jsonrpc": "2.0", "id": 1, "method": "send_message", "params": {"message": "a"}},
            {"jsonrpc": "2.0", "id": 2, "method": "get_task", "params": {"task_id": "nope"}},
        ],
    )
    answers = sorted(batch.json(), key=lambda r: r["id"])
    assert answers[0]["result"]["text"] == "a" and answers[1]["error"]["code"] == -32001
    too_many = await signed_post(
        http, auth, rpc_url(url), [{"jsonrpc": "2.0", "id": i, "method": "get_task"} for i in range(33)]
    )
    assert too_many.json()["error"]["code"] == -32600
    note = await signed_post(
        http, auth, rpc_url(url), {"jsonrpc": "2.0", "method": "get_task", "params": {"task_id": "x"}}
    )
    assert note.status_code == 204


def test_options_from_the_environment():
    from protocols.anp import ANPOptions

    opts = ANPOptions.from_env(
        {
            "INTERLACE_ANP_PUBLIC_HOST": "gw.example.com:8443",
            "INTERLACE_ANP_WINDOW_S": "120",
            "INTERLACE_ANP_WAIT_S": "2.5",
        },
        token_ttl_s=60,
    )
    assert (opts.public_host, opts.window_s, opts.wait_s, opts.token_ttl_s) == ("gw.example.com:8443", 120, 2.5, 60)
    with pytest.raises(ValueError, match="INTERLACE_ANP_WINDOW_S"):
        ANPOptions.from_env({"INTERLACE_ANP_WINDOW_S": "soon"})


async def test_backend_unavailable_is_a_jsonrpc_error(anp, monkeypatch):
    from gateway.core.backends import BackendUnavailable

    url, app, http, alice, _ = anp

    async def down(*args, **kwargs):
        raise BackendUnavailable("bus down")

    monkeypatch.setattr(app.state.runtime, "submit", down)
    resp = await call(http, signer(alice), rpc_url(url), "send_message", {"message": "x"})
    assert resp["error"]["code"] == -32050 and "bus down" in resp["error"]["message"]


async def test_the_default_app_serves_anp(client):
    """create_app's own routes (ANPOptions.from_env, HTTPS resolution): documents and a 401 challenge."""
    host = client.base_url.netloc.decode().replace("127.0.0.1", "localhost")
    doc = (await client.get("/.well-known/did.json", headers={"Host": host})).json()
    assert doc["id"] == did_for_host(host)
    assert (await client.get("/anp/agents/echo/ad.json")).json()["name"] == "echo"
    resp = await client.post(
        "/anp/rpc", json={"jsonrpc": "2.0", "id": 1, "method": "get_task", "params": {"task_id": "x"}}
    )
    assert resp.status_code == 401 and resp.headers["www-authenticate"].startswith("DIDWba")


async def test_a_caller_allowlist_refuses_other_dids_before_fetching_their_documents(tmp_path):
    alice, bob = make_caller(tmp_path, "alice"), make_caller(tmp_path, "bob")
    resolver = LocalResolver(alice, bob)
    callers = tmp_path / "callers.txt"
    callers.write_text(f"# who may call over ANP\n{alice.did}\n")
    async with anp_gateway(resolve=resolver, callers=str(callers)) as (url, _):
        async with httpx.AsyncClient(timeout=20) as http:
            ok = await call(http, signer(alice), rpc_url(url), "send_message", {"message": "hi"})
            assert ok["result"]["text"] == "hi"
            fetched = resolver.calls
            resp = await signed_post(
                http, signer(bob), rpc_url(url), {"jsonrpc": "2.0", "id": 1, "method": "send_message", "params": {}}
            )
    assert resp.status_code == 403 and resp.json()["error"]["code"] == "forbidden", resp.text
    assert bob.did in resp.json()["error"]["message"]
    assert resolver.calls == fetched  # bob's DID document was never fetched
