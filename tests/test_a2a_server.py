"""The gateway's A2A face on the wire: cards (signing, caching, proxies), errors of both bindings and
both versions, the routing rule, per-agent scope, ListTasks, push notifications (delivery, retry,
SSRF policy) and a remote agent that is down."""

from __future__ import annotations

import asyncio
import email.utils
import json

import httpx
import nacl.signing
import pytest
import pytest_asyncio
from a2a.client import A2ACardResolver
from a2a.utils.signing import InvalidSignaturesError, create_signature_verifier
from jwt import PyJWK

from agents.echo import EchoWorker
from gateway.app import create_app
from gateway.core.egress import Egress
from protocols.a2a import A2AOptions, mount
from protocols.a2a.card import canonical_bytes
from protocols.a2a.connector import A2AConnector
from protocols.a2a.errors import InvalidParamsError
from protocols.a2a.push import PushPolicy
from registry.identity import b64url_decode
from tests.conftest import running_gateway, serve_app, sse_json, test_config
from tests.fixtures.a2a_support import V10, Frames, a2a_env
from tests.fixtures.a2a_webhook import webhook_receiver

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def env():
    async with a2a_env() as e:
        yield e


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def http(env):
    async with httpx.AsyncClient(base_url=env.url, timeout=20) as c:
        yield c


def rpc(method: str, params: dict | None = None, rid: int | str = 1) -> dict:
    body = {"jsonrpc": "2.0", "id": rid, "method": method}
    if params is not None:
        body["params"] = params
    return body


def msg(text: str, mid: str = "m1", **extra) -> dict:
    """A user message; one that starts a task names the echo agent unless it names another (a
    message that names none is routed by its text: test_gateway_routing_rule)."""
    if "taskId" not in extra:
        extra["metadata"] = {"agent": "echo", **extra.get("metadata", {})}
    return {"messageId": mid, "role": "ROLE_USER", "parts": [{"text": text}], **extra}


async def call(http, method, params=None, path="/a2a", headers=V10) -> dict:
    resp = await http.post(path, json=rpc(method, params), headers=headers)
    assert resp.status_code == 200
    return resp.json()


async def send(http, text="hi", path="/a2a", **extra) -> dict:
    body = await call(http, "SendMessage", {"message": msg(text, mid=f"m-{text}"), **extra}, path)
    return body["result"]["task"]


# ---- cards ---------------------------------------------------------------------------------


async def test_gateway_card_lists_agents_interfaces_and_capabilities(env, http):
    resp = await http.get("/.well-known/agent-card.json")
    assert resp.status_code == 200
    card = resp.json()
    assert {s["id"] for s in card["skills"]} == {"echo", "remote"}
    assert card["supportedInterfaces"] == [
        {"url": f"{env.url}/a2a", "protocolBinding": "JSONRPC", "protocolVersion": "1.0"},
        {"url": f"{env.url}/a2a/rest", "protocolBinding": "HTTP+JSON", "protocolVersion": "1.0"},
    ]
    assert card["capabilities"] == {"streaming": True, "pushNotifications": True, "extendedAgentCard": False}
    assert "url" not in card and "preferredTransport" not in card  # a strict 1.0 card by default


async def test_card_caching_headers_and_conditional_get(http):
    resp = await http.get("/.well-known/agent-card.json")
    assert "max-age=" in resp.headers["cache-control"]
    etag, last_modified = resp.headers["etag"], resp.headers["last-modified"]
    assert email.utils.parsedate_to_datetime(last_modified)
    again = await http.get("/.well-known/agent-card.json", headers={"If-None-Match": etag})
    assert again.status_code == 304 and again.content == b"" and again.headers["etag"] == etag
    since = await http.get("/.well-known/agent-card.json", headers={"If-Modified-Since": last_modified})
    assert since.status_code == 304
    other = await http.get("/.well-known/agent-card.json", headers={"If-None-Match": 'W/"other"'})
    assert other.status_code == 200


async def test_card_signature_verifies_with_jwks_and_the_sdk(env, http):
    card = (await http.get("/.well-known/agent-card.json")).json()
    jwks = (await http.get("/a2a/jwks.json")).json()
    sig = card["signatures"][0]
    header = json.loads(b64url_decode(sig["protected"]))
    assert header["alg"] == "EdDSA" and header["typ"] == "JOSE" and header["kid"] == jwks["keys"][0]["kid"]
    assert header["jku"].endswith("/a2a/jwks.json")
    node_key = getattr(env.app.state.runtime, "identity", None)
    if node_key is not None:  # signed with the gateway node's own key
        assert header["kid"].startswith(node_key.did + "#")
    key = nacl.signing.VerifyKey(b64url_decode(jwks["keys"][0]["x"]))
    from registry.identity import b64url_encode

    key.verify(f"{sig['protected']}.{b64url_encode(canonical_bytes(card))}".encode(), b64url_decode(sig["signature"]))

    # The official SDK's verifier, fed the key from the card's jku.
    resolver = A2ACardResolver(http, str(http.base_url))
    verifier = create_signature_verifier(lambda kid, jku: PyJWK(jwks["keys"][0]), ["EdDSA"])
    parsed = await resolver.get_agent_card(signature_verifier=verifier)
    parsed.description = "tampered"
    with pytest.raises(InvalidSignaturesError):
        verifier(parsed)


async def test_agent_card_per_agent_and_unknown_agent(env, http):
    card = (await http.get("/a2a/agents/echo/.well-known/agent-card.json")).json()
    assert card["name"] == "echo" and [s["id"] for s in card["skills"]] == ["echo"]
    assert card["supportedInterfaces"][0]["url"] == f"{env.url}/a2a/agents/echo"
    assert card["supportedInterfaces"][1]["url"] == f"{env.url}/a2a/agents/echo/rest"
    assert (await http.get("/a2a/agents/nobody/.well-known/agent-card.json")).status_code == 404


async def test_cards_use_the_public_url_and_optional_v03_fields():
    app = create_app(test_config(), workers=[EchoWorker()])
    mount(app, A2AOptions(public_url="https://gw.example.com/base/", card_v03_compat=True))
    async with serve_app(app) as url, httpx.AsyncClient(base_url=url, timeout=10) as http:
        card = (await http.get("/a2a/agents/echo/.well-known/agent-card.json")).json()
        urls = {i["url"] for i in card["supportedInterfaces"]}
        assert urls == {
            "https://gw.example.com/base/a2a/agents/echo",
            "https://gw.example.com/base/a2a/agents/echo/rest",
        }
        assert {i["protocolVersion"] for i in card["supportedInterfaces"]} == {"1.0", "0.3"}
        assert card["url"] == "https://gw.example.com/base/a2a/agents/echo" and card["preferredTransport"] == "JSONRPC"
        parsed = await A2ACardResolver(http, url + "/a2a/agents/echo").get_agent_card()
        assert {i.protocol_version for i in parsed.supported_interfaces} == {"1.0", "0.3"}


# ---- errors --------------------------------------------------------------------------------


def error_info_reason(body: dict) -> str:
    return body["error"]["data"][0]["reason"]


async def test_jsonrpc_errors(http):
    unknown = await call(http, "NoSuchMethod", {})
    assert unknown["error"]["code"] == -32601 and unknown["id"] == 1
    missing = await call(http, "SendMessage", {})
    assert missing["error"]["code"] == -32602
    bad_part = await call(http, "SendMessage", {"message": {"messageId": "x", "role": "ROLE_USER", "parts": [{}]}})
    assert bad_part["error"]["code"] == -32602
    not_found = await call(http, "GetTask", {"id": "nope"})
    assert not_found["error"]["code"] == -32001 and error_info_reason(not_found) == "TASK_NOT_FOUND"
    done = await send(http, "finished")
    again = await call(http, "CancelTask", {"id": done["id"]})
    assert again["error"]["code"] == -32002 and error_info_reason(again) == "TASK_NOT_CANCELABLE"
    terminal = await call(http, "SendMessage", {"message": msg("more", mid="m-more", taskId=done["id"])})
    assert terminal["error"]["code"] == -32004
    sub = await call(http, "SubscribeToTask", {"id": done["id"]})
    assert sub["error"]["code"] == -32004
    version = await call(http, "SendMessage", {"message": msg("v")}, headers={"A2A-Version": "99.0"})
    assert version["error"]["code"] == -32009 and error_info_reason(version) == "VERSION_NOT_SUPPORTED"
    no_header = await call(http, "SendMessage", {"message": msg("v")}, headers={})
    assert no_header["error"]["code"] == -32009  # a missing header means 0.3, which has no SendMessage
    ctype = await http.post("/a2a", content=b"{'not': 'json'}", headers={"Content-Type": "text/plain", **V10})
    assert ctype.json()["error"]["code"] == -32005
    parse = await http.post("/a2a", content=b"{oops", headers={"Content-Type": "application/json", **V10})
    assert parse.json()["error"]["code"] == -32700 and parse.json()["id"] is None
    invalid = await http.post("/a2a", json={"id": 3, "method": "GetTask"}, headers=V10)
    assert invalid.json()["error"]["code"] == -32600
    media = await call(
        http,
        "SendMessage",
        {
            "message": {
                "messageId": "f",
                "role": "ROLE_USER",
                "parts": [{"raw": "dGNr", "mediaType": "application/x-unknown"}],
            }
        },
    )
    assert media["error"]["code"] == -32005


async def test_jsonrpc_03_errors_have_no_error_info(http):
    body = await call(http, "tasks/get", {"id": "nope"}, headers={})
    assert body["error"]["code"] == -32001 and "data" not in body["error"]
    hint = await call(http, "tasks/get", {"id": "nope"}, headers=V10)
    assert hint["error"]["code"] == -32601 and "0.3" in hint["error"]["message"]


async def test_rest_errors(http):
    resp = await http.get("/a2a/rest/tasks/nope", headers=V10)
    assert resp.status_code == 404 and resp.headers["content-type"].startswith("application/json")
    err = resp.json()["error"]
    assert err["status"] == "NOT_FOUND" and err["details"][0]["reason"] == "TASK_NOT_FOUND"
    done = await send(http, "rest-done")
    cancel = await http.post(f"/a2a/rest/tasks/{done['id']}:cancel", headers=V10)
    assert cancel.status_code == 400 and cancel.json()["error"]["details"][0]["reason"] == "TASK_NOT_CANCELABLE"
    version = await http.post("/a2a/rest/message:send", json={"message": msg("x")}, headers={"A2A-Version": "99.0"})
    assert version.status_code == 400 and version.json()["error"]["details"][0]["reason"] == "VERSION_NOT_SUPPORTED"
    ctype = await http.post("/a2a/rest/message:send", content=b"x=1", headers={"Content-Type": "text/plain", **V10})
    assert ctype.status_code == 400 and ctype.json()["error"]["details"][0]["reason"] == "CONTENT_TYPE_NOT_SUPPORTED"
    empty = await http.post("/a2a/rest/message:send", json={}, headers=V10)
    assert empty.status_code == 400 and empty.json()["error"]["details"][0]["reason"] == "INVALID_PARAMS"
    legacy = await http.get("/a2a/rest/v1/tasks/nope")
    assert legacy.status_code == 404 and legacy.json()["type"] == "TaskNotFoundError"


async def test_oversize_body_is_413(http):
    resp = await http.post(
        "/a2a", content=b"x" * (5 * 1024 * 1024), headers={"Content-Type": "application/json", **V10}
    )
    assert resp.status_code == 413


async def test_extended_card_only_when_configured(http):
    body = await call(http, "GetExtendedAgentCard")
    assert body["error"]["code"] == -32007
    app = create_app(test_config(), workers=[EchoWorker()])
    mount(app, A2AOptions(extended_card={"description": "the extended card"}))
    async with serve_app(app) as url, httpx.AsyncClient(base_url=url, timeout=10) as h2:
        card = (await call(h2, "GetExtendedAgentCard"))["result"]
        assert card["description"] == "the extended card" and card["signatures"]
        rest = await h2.get("/a2a/rest/extendedAgentCard", headers=V10)
        assert rest.json()["description"] == "the extended card"


# ---- routing, scope, listing, streaming shapes ---------------------------------------------


async def test_gateway_routing_rule(http):
    to_remote = await call(http, "SendMessage", {"message": msg("r", mid="route-1"), "metadata": {"agent": "remote"}})
    remote_id = to_remote["result"]["task"]["id"]
    by_message = await call(http, "SendMessage", {"message": msg("r", mid="route-2", metadata={"agent": "remote"})})
    # A message that names no agent goes by its text to the agent whose skills match, or nowhere.
    unnamed = {"messageId": "route-3", "role": "ROLE_USER", "parts": [{"text": "echo"}]}
    default = await call(http, "SendMessage", {"message": unnamed})
    echo_id = default["result"]["task"]["id"]
    unmatched = await call(
        http, "SendMessage", {"message": {**unnamed, "messageId": "route-5", "parts": [{"text": "d"}]}}
    )
    assert unmatched["error"]["code"] == -32602
    unknown = await call(http, "SendMessage", {"message": msg("u", mid="route-4"), "metadata": {"agent": "ghost"}})
    assert unknown["error"]["code"] == -32602
    # Per-agent endpoints see only their agent's tasks; the gateway endpoint sees all.
    assert "result" in await call(http, "GetTask", {"id": remote_id}, path="/a2a/agents/remote")
    assert (await call(http, "GetTask", {"id": remote_id}, path="/a2a/agents/echo"))["error"]["code"] == -32001
    assert "result" in await call(http, "GetTask", {"id": echo_id}, path="/a2a/agents/echo")  # matched by its text
    assert "result" in await call(
        http, "GetTask", {"id": by_message["result"]["task"]["id"]}, path="/a2a/agents/remote"
    )


async def test_list_tasks_paging_filters_and_history_length(http):
    ctx = "ctx-list-paging"
    ids = (
        [(await send(http, f"p{i}", message=msg(f"p{i}", mid=f"page-{i}", contextId=ctx)))["id"] for i in range(3)]
        if False
        else []
    )
    for i in range(3):
        body = await call(http, "SendMessage", {"message": msg(f"p{i}", mid=f"page-{i}", contextId=ctx)})
        ids.append(body["result"]["task"]["id"])
    first = (await call(http, "ListTasks", {"contextId": ctx, "pageSize": 2}))["result"]
    assert first["totalSize"] == 3 and len(first["tasks"]) == 2 and first["nextPageToken"]
    assert all("artifacts" not in t for t in first["tasks"])  # includeArtifacts defaults to false
    second = (await call(http, "ListTasks", {"contextId": ctx, "pageSize": 2, "pageToken": first["nextPageToken"]}))[
        "result"
    ]
    assert len(second["tasks"]) == 1 and second["nextPageToken"] == ""
    assert {t["id"] for t in first["tasks"] + second["tasks"]} == set(ids)
    rest = (
        await http.get("/a2a/rest/tasks", params={"contextId": ctx, "status": "TASK_STATE_WORKING"}, headers=V10)
    ).json()
    assert rest["tasks"] == [] and rest["totalSize"] == 0
    done = await call(http, "ListTasks", {"contextId": ctx, "status": "TASK_STATE_COMPLETED", "pageSize": 2})
    assert done["result"]["totalSize"] == 3 and len(done["result"]["tasks"]) == 2 and done["result"]["nextPageToken"]
    full = (await call(http, "ListTasks", {"contextId": ctx, "includeArtifacts": True, "historyLength": 0}))["result"]
    assert all(t["artifacts"] and "history" not in t for t in full["tasks"])
    got = (await call(http, "GetTask", {"id": ids[0], "historyLength": 0}))["result"]
    assert "history" not in got
    assert (await call(http, "ListTasks", {"pageToken": "garbage!"}))["error"]["code"] == -32602


async def test_stream_frames_jsonrpc_rest_and_03(http):
    body = rpc("SendStreamingMessage", {"message": msg("abcdef", mid="s1", metadata={"chunks": 3})}, rid="s-1")
    async with http.stream("POST", "/a2a", json=body, headers=V10) as resp:
        assert resp.headers["content-type"].startswith("text/event-stream")
        frames = await sse_json(resp)
    assert all(f["id"] == "s-1" and f["jsonrpc"] == "2.0" for f in frames)
    kinds = [next(iter(f["result"])) for f in frames]
    assert kinds == ["task", "statusUpdate", "artifactUpdate", "artifactUpdate", "artifactUpdate", "statusUpdate"]
    chunks = [f["result"]["artifactUpdate"] for f in frames[2:5]]
    assert [c.get("append", False) for c in chunks] == [False, True, True] and chunks[-1]["lastChunk"] is True

    async with http.stream(
        "POST", "/a2a/rest/message:stream", json={"message": msg("r", mid="s2")}, headers=V10
    ) as resp:
        rest = await sse_json(resp)
    assert [next(iter(f)) for f in rest] == ["task", "statusUpdate", "artifactUpdate", "statusUpdate"]

    legacy = rpc(
        "message/stream",
        {
            "message": {"kind": "message", "messageId": "s3", "role": "user", "parts": [{"kind": "text", "text": "x"}]},
            "metadata": {"agent": "echo"},
        },
    )
    async with http.stream("POST", "/a2a", json=legacy) as resp:
        old = [f["result"] for f in await sse_json(resp)]
    assert [f["kind"] for f in old] == ["task", "status-update", "artifact-update", "status-update"]
    assert old[-1]["final"] is True and old[-1]["status"]["state"] == "completed"

    async with http.stream(
        "POST",
        "/a2a/rest/v1/message:stream",
        json={
            "request": {"message_id": "s4", "role": "ROLE_USER", "content": [{"text": "y"}]},
            "metadata": {"agent": "echo"},
        },
    ) as resp:
        old_rest = await sse_json(resp)
    assert (
        old_rest[-1]["statusUpdate"]["status"]["state"] == "TASK_STATE_COMPLETED"
        and old_rest[-1]["statusUpdate"]["final"] is True
    )
    assert old_rest[2]["artifactUpdate"]["artifact"]["parts"] == [{"text": "y"}]


# ---- push notifications --------------------------------------------------------------------


async def test_push_delivery_with_token_and_auth_on_continue(http):
    async with webhook_receiver() as hook:
        config = {"url": hook.url, "token": "tok-1", "authentication": {"scheme": "Bearer", "credentials": "s3cret"}}
        first = await call(
            http,
            "SendMessage",
            {
                "message": msg("q", mid="push-1", metadata={"ask": "more?"}),
                "configuration": {"taskPushNotificationConfig": config},
            },
        )
        task = first["result"]["task"]
        assert task["status"]["state"] == "TASK_STATE_INPUT_REQUIRED"
        await call(http, "SendMessage", {"message": msg("answer", mid="push-2", taskId=task["id"])})

        def completed(rs):
            return any(
                b.get("statusUpdate", {}).get("status", {}).get("state") == "TASK_STATE_COMPLETED" for _, b in rs
            )

        received = await hook.wait_for(completed)
        headers, _ = received[0]
        assert headers["x-a2a-notification-token"] == "tok-1" and headers["authorization"] == "Bearer s3cret"
        for _, body in received:
            assert len(body) == 1 and next(iter(body)) in ("statusUpdate", "artifactUpdate")
        states = [b["statusUpdate"]["status"]["state"] for _, b in received if "statusUpdate" in b]
        assert "TASK_STATE_INPUT_REQUIRED" in states and states[-1] == "TASK_STATE_COMPLETED"


async def test_push_config_crud_both_versions(http):
    task = (await call(http, "SendMessage", {"message": msg("wait", mid="crud-1", metadata={"ask": "?"})}))["result"][
        "task"
    ]
    created = await call(
        http,
        "CreateTaskPushNotificationConfig",
        {"taskId": task["id"], "id": "c1", "url": "https://example.com/hook", "token": "t"},
    )
    assert created["result"] == {"id": "c1", "taskId": task["id"], "url": "https://example.com/hook", "token": "t"}
    assert (await call(http, "GetTaskPushNotificationConfig", {"taskId": task["id"], "id": "c1"}))["result"][
        "url"
    ] == "https://example.com/hook"
    rest = await http.post(
        f"/a2a/rest/tasks/{task['id']}/pushNotificationConfigs",
        json={"id": "c2", "url": "https://example.org/h"},
        headers=V10,
    )
    assert rest.status_code == 200 and rest.json()["id"] == "c2"
    listed = (await call(http, "ListTaskPushNotificationConfigs", {"taskId": task["id"]}))["result"]["configs"]
    assert {c["id"] for c in listed} == {"c1", "c2"}
    legacy = (await call(http, "tasks/pushNotificationConfig/list", {"id": task["id"]}, headers={}))["result"]
    assert {c["pushNotificationConfig"]["id"] for c in legacy} == {"c1", "c2"} and legacy[0]["taskId"] == task["id"]
    assert (await call(http, "DeleteTaskPushNotificationConfig", {"taskId": task["id"], "id": "c1"}))["result"] == {}
    assert (await call(http, "DeleteTaskPushNotificationConfig", {"taskId": task["id"], "id": "c1"}))[
        "result"
    ] == {}  # idempotent
    assert (
        await http.delete(f"/a2a/rest/tasks/{task['id']}/pushNotificationConfigs/c2", headers=V10)
    ).status_code == 200
    gone = await call(http, "GetTaskPushNotificationConfig", {"taskId": task["id"], "id": "c1"})
    assert gone["error"]["code"] == -32001
    no_task = await call(http, "CreateTaskPushNotificationConfig", {"taskId": "nope", "url": "https://example.com/x"})
    assert no_task["error"]["code"] == -32001
    await call(http, "CancelTask", {"id": task["id"]})


async def test_push_03_config_gets_the_task(http):
    async with webhook_receiver() as hook:
        params = {
            "message": {
                "kind": "message",
                "messageId": "p03",
                "role": "user",
                "parts": [{"kind": "text", "text": "x"}],
            },
            "metadata": {"agent": "echo"},
            "configuration": {"pushNotificationConfig": {"url": hook.url, "token": "t03"}},
        }
        task = (await call(http, "message/send", params, headers={}))["result"]
        assert task["kind"] == "task"
        received = await hook.wait_for(lambda rs: any(b.get("status", {}).get("state") == "completed" for _, b in rs))
        assert all(b["kind"] == "task" and b["id"] == task["id"] for _, b in received)
        assert received[0][0]["x-a2a-notification-token"] == "t03"


async def test_push_retries_with_backoff_and_never_blocks_the_task(http):
    async with webhook_receiver(fail_first=2) as hook:
        config = {"url": hook.url}
        task = (
            await call(
                http,
                "SendMessage",
                {"message": msg("retry", mid="retry-1"), "configuration": {"taskPushNotificationConfig": config}},
            )
        )["result"]["task"]
        assert task["status"]["state"] == "TASK_STATE_COMPLETED"  # the failing webhook did not hold the task
        received = await hook.wait_for(
            lambda rs: any(
                b.get("statusUpdate", {}).get("status", {}).get("state") == "TASK_STATE_COMPLETED" for _, b in rs
            )
        )
        assert hook.attempts >= len(received) + 2
        states = [b["statusUpdate"]["status"]["state"] for _, b in received if "statusUpdate" in b]
        assert states[0] == "TASK_STATE_WORKING"  # the retried event came first: order kept


async def test_push_url_policy():
    """Webhook URLs pass the gateway's egress policy (and the push policy's own host allowlist)."""
    strict, push = Egress(), PushPolicy()
    for bad in (
        "http://127.0.0.1:9/x",
        "http://[::1]/x",
        "http://10.1.2.3/x",
        "http://169.254.169.254/latest",
        "http://[::ffff:169.254.169.254]/latest",
        "http://192.168.0.1/",
        "http://2130706433/",
        "ftp://example.com/x",
        "http:///nohost",
        "http://0.0.0.0/",
    ):
        with pytest.raises(InvalidParamsError):
            await push.check_url(bad, strict)
    await push.check_url("https://93.184.215.14/hook", strict)
    await push.check_url("http://127.0.0.1:9/x", Egress(["loopback"]))
    with pytest.raises(InvalidParamsError):
        await push.check_url("http://10.0.0.1/x", Egress(["loopback"]))
    await push.check_url("http://10.0.0.1/x", Egress(["private"]))
    allow = PushPolicy(allowed_hosts=frozenset({"hooks.example.com", ".partner.org"}))
    named = Egress(resolver=_resolves({"hooks.example.com": "93.184.215.14", "a.partner.org": "93.184.215.15"}))
    await allow.check_url("https://hooks.example.com/a", named)
    await allow.check_url("https://a.partner.org/a", named)
    with pytest.raises(InvalidParamsError):
        await allow.check_url("https://evil.example.com/a", named)


def _resolves(table: dict[str, str]):
    async def resolve(host: str, port: int) -> list[str]:
        if host not in table:
            raise OSError(f"{host} does not resolve")
        return [table[host]]

    return resolve


async def test_push_url_that_resolves_inside_is_refused():
    egress = Egress(resolver=_resolves({"inside.example.com": "127.0.0.1", "outside.example.com": "93.184.215.14"}))
    with pytest.raises(InvalidParamsError, match="egress policy"):
        await PushPolicy().check_url("http://inside.example.com/x", egress)
    await PushPolicy().check_url("http://outside.example.com/x", egress)


async def test_loopback_webhook_refused_by_the_egress_policy():
    app = create_app(test_config(egress_allow=("none",)), workers=[EchoWorker()])
    mount(app)  # a gateway whose egress policy allows no internal address, loopback included
    async with serve_app(app) as url, httpx.AsyncClient(base_url=url, timeout=10) as h2:
        body = await call(
            h2,
            "SendMessage",
            {"message": msg("x"), "configuration": {"taskPushNotificationConfig": {"url": "http://127.0.0.1:1/hook"}}},
        )
        assert body["error"]["code"] == -32602 and "egress policy" in body["error"]["message"]
        off = create_app(test_config(), workers=[EchoWorker()])
        mount(off, A2AOptions(push=PushPolicy(enabled=False)))
        async with serve_app(off) as url2, httpx.AsyncClient(base_url=url2, timeout=10) as h3:
            card = (await h3.get("/.well-known/agent-card.json")).json()
            assert card["capabilities"]["pushNotifications"] is False
            body = await call(h3, "CreateTaskPushNotificationConfig", {"taskId": "t", "url": "https://example.com/x"})
            assert body["error"]["code"] == -32003


# ---- a remote agent that is down -----------------------------------------------------------


async def test_remote_agent_down_fails_the_task_clearly():
    from tests.conftest import free_port

    dead = f"http://127.0.0.1:{free_port()}"
    async with running_gateway(test_config(), workers=[A2AConnector("down", dead)]) as (url, app):
        async with httpx.AsyncClient(base_url=url, timeout=10) as h:
            task = (await call(h, "SendMessage", {"message": msg("anyone?")}, path="/a2a/agents/down"))["result"][
                "task"
            ]
            assert task["status"]["state"] == "TASK_STATE_FAILED"
            text = task["status"]["message"]["parts"][0]["text"]
            assert text == "remote agent 'down': agent unreachable"
            assert (await h.get("/healthz")).status_code == 200
            again = await asyncio.wait_for(
                call(h, "SendMessage", {"message": msg("again", mid="m2")}, path="/a2a/agents/down"), 10
            )
            assert again["result"]["task"]["status"]["state"] == "TASK_STATE_FAILED"


async def test_subscription_stays_open_through_input_required(http):
    task = (await call(http, "SendMessage", {"message": msg("q", mid="sub-ir", metadata={"ask": "?"})}))["result"][
        "task"
    ]
    assert task["status"]["state"] == "TASK_STATE_INPUT_REQUIRED"
    body = rpc("SubscribeToTask", {"id": task["id"]})
    async with http.stream("POST", "/a2a", json=body, headers=V10) as resp:
        frames = Frames(resp)
        first = await frames.next()
        assert first["task"]["status"]["state"] == "TASK_STATE_INPUT_REQUIRED"
        await call(http, "SendMessage", {"message": msg("a", mid="sub-ir-2", taskId=task["id"])})
        states = []
        while (f := await frames.next()) is not None:
            if "statusUpdate" in f:
                states.append(f["statusUpdate"]["status"]["state"])
    assert states[-1] == "TASK_STATE_COMPLETED"  # the stream ended at the terminal state
