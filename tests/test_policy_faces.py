"""The policy decides what each caller sees and may do, on every face (issue 14, "Policy").

One gateway (module-scoped) with API keys for alice (group ``research``) and bob (group
``guests``), a ``--policy`` file, two agents (``echo`` for both groups, ``archive`` for research
only: a message naming no agent whose text matches it goes to it only for research), a federated
MCP upstream ``everything`` (the fixture server; bob may not call its ``test_error_handling`` tool, read its
``test://static-binary`` resource or get its ``test_prompt_with_image`` prompt) and a second
upstream that is down (so a URI no upstream lists is not relayed to a single upstream, and
"unknown" means the gateway's own answer). ANP callers are DIDs: carol may call echo, dave
nothing. For each face: what each caller sees, and that a denied item answers exactly as an
unknown one. Then registry writes (who may register which names), the audit log, and a policy
reload that changes what a caller sees without a restart.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid

import httpx
import pytest
import pytest_asyncio
import yaml
from anp.anp_crawler.anp_crawler import ANPCrawler
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client

from agents.echo import EchoWorker
from gateway.app import create_app
from gateway.core import audit
from gateway.core.auth import api_key_digest
from protocols import a2a, acp, anp, mcp
from registry.identity import Identity
from registry.records import sign
from schemas.agent_record import AgentRecord, Tombstone
from tests.conftest import free_port, serve_app, test_config
from tests.fixtures.anp_support import LocalResolver, make_caller, signed_post, signer
from tests.fixtures.mcp_support import GetStream, ModernRaw, RawSession, UpstreamProcess, listening, next_message

pytestmark = [
    pytest.mark.asyncio(loop_scope="module"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::mcp.shared.exceptions.MCPDeprecationWarning"),
]

KEYS = {"alice": "k-alice-0123456789abcdef", "bob": "k-bob-0123456789abcdef"}
GROUPS = {"alice": ["research"], "bob": ["guests"]}
V10 = {"A2A-Version": "1.0"}
UNKNOWN = "nope"  # an agent, tool, prompt that does not exist


def policy_text(carol: str, guests: list[str], guest_upstream: bool = True) -> str:
    rules = [
        {"name": "research", "allow": {"groups": "research", "agent": ["echo", "archive", "everything"]}},
        {"name": "guests", "allow": {"groups": "guests", "agent": guests + (["everything"] if guest_upstream else [])}},
        {"name": "no-errors", "deny": {"groups": "guests", "upstream": "everything", "tool": "test_error_handling"}},
        {"name": "no-binary", "deny": {"groups": "guests", "resource": "test://static-binary"}},
        {"name": "no-image", "deny": {"groups": "guests", "prompt": "test_prompt_with_image"}},
        {"name": "carol", "allow": {"principal": carol, "agent": "echo"}},
        {"name": "teams", "allow": {"action": "register", "agent": "team-*"}},
    ]
    return yaml.safe_dump({"rules": rules})


class Archive(EchoWorker):
    agent = "archive"
    description = "Keeps documents in the archive and finds them again."

    def skills(self) -> list[dict]:
        skill = super().skills()[0]
        return [
            {
                **skill,
                "id": "archive",
                "name": "Archive",
                "description": "store archived documents",
                "tags": ["archive"],
            }
        ]


class Gateway:
    def __init__(self, url: str, app, policy_path, carol, dave) -> None:
        self.url, self.app, self.policy_path, self.carol, self.dave = url, app, policy_path, carol, dave
        self.sessions: list[httpx.AsyncClient] = []  # MCP sessions' clients, closed with the gateway

    def http(self, who: str | None = None) -> httpx.AsyncClient:
        """A client of the gateway with ``who``'s API key (None: without credentials)."""
        headers = {"Authorization": f"Bearer {KEYS[who]}"} if who else {}
        return httpx.AsyncClient(base_url=self.url, timeout=20, headers=headers)

    @property
    def mcp(self):
        return self.app.state.mcp

    async def set_policy(self, text: str) -> None:
        self.policy_path.write_text(text)
        assert self.app.state.runtime.policy_file.reload()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def gw(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("faces")
    keys = tmp / "keys.yaml"
    keys.write_text(
        yaml.safe_dump(
            [{"principal": p, "key_sha256": api_key_digest(k), "groups": GROUPS[p]} for p, k in KEYS.items()]
        )
    )
    carol, dave = make_caller(tmp, "carol"), make_caller(tmp, "dave")
    policy = tmp / "policy.yaml"
    policy.write_text(policy_text(carol.did, ["echo"]))
    with UpstreamProcess("everything") as up:
        app = create_app(test_config(api_keys=str(keys), policy=str(policy)), workers=[EchoWorker(), Archive()])
        down = f"http://127.0.0.1:{free_port()}/mcp"
        mcp.mount(app, mcp.MCPOptions(upstreams=(("everything", up.url), ("down", down)), call_timeout_s=10))
        a2a.mount(app)
        acp.mount(app)
        anp.mount(app, anp.ANPOptions.from_env(resolve=LocalResolver(carol, dave)))
        async with serve_app(app) as base:
            async with asyncio.timeout(60):  # the upstreams' first catalogs (or first failure)
                await asyncio.gather(*(c.first_attempt.wait() for c in app.state.mcp.upstreams.clients.values()))
            gateway = Gateway(base.replace("127.0.0.1", "localhost"), app, policy, carol, dave)
            yield gateway
            for http in gateway.sessions:
                await http.aclose()


def renamed(error: dict, name: str, to: str) -> dict:
    """An error body with ``name`` (a denied item) written as ``to`` (an unknown one)."""
    return json.loads(json.dumps(error).replace(name, to))


# ---- MCP ------------------------------------------------------------------------------------------


async def mcp_session(gw: Gateway, who: str) -> RawSession:
    http = gw.http(who)
    gw.sessions.append(http)
    raw = RawSession(http, gw.url + "/mcp")
    await raw.initialize()
    return raw


async def test_mcp_lists_show_only_what_each_caller_may_use(gw):
    seen = {}
    for who in ("alice", "bob", "alice"):  # interleaved: one caller's view never leaks into the next
        raw = await mcp_session(gw, who)
        seen[who] = {
            "tools": {t["name"] for t in (await raw.call("tools/list"))["result"]["tools"]},
            "prompts": {p["name"] for p in (await raw.call("prompts/list"))["result"]["prompts"]},
            "resources": {r["uri"] for r in (await raw.call("resources/list"))["result"]["resources"]},
            "templates": [
                t["uriTemplate"] for t in (await raw.call("resources/templates/list"))["result"]["resourceTemplates"]
            ],
        }
    alice, bob = seen["alice"], seen["bob"]
    assert {"echo", "archive", "find_agents", "send_task", "everything__test_error_handling"} <= alice["tools"]
    assert bob["tools"] == alice["tools"] - {"archive", "everything__test_error_handling"}
    assert "everything__test_echo" in bob["tools"]  # the same name for everyone
    assert bob["prompts"] == alice["prompts"] - {"everything__test_prompt_with_image"}
    assert (
        bob["resources"] == alice["resources"] - {"test://static-binary"} and "test://static-text" in bob["resources"]
    )
    assert bob["templates"] == alice["templates"] == ["test://template/{id}/data"]
    # The official client sees the same list.
    async with (
        gw.http("bob") as http,
        streamable_http_client(f"{gw.url}/mcp", http_client=http) as (read, write, *_),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        assert {t.name for t in (await session.list_tools()).tools} == bob["tools"]


async def test_mcp_a_denied_item_answers_exactly_as_an_unknown_one(gw):
    alice, bob = await mcp_session(gw, "alice"), await mcp_session(gw, "bob")
    checks = [  # (method, params for a denied item, the denied name, the unknown name)
        ("tools/call", {"name": "archive", "arguments": {"message": "x"}}, "archive", UNKNOWN),
        ("tools/call", {"name": "everything__test_error_handling", "arguments": {}}, "test_error_handling", UNKNOWN),
        ("prompts/get", {"name": "everything__test_prompt_with_image"}, "test_prompt_with_image", UNKNOWN),
        ("resources/read", {"uri": "test://static-binary"}, "static-binary", UNKNOWN),
        ("resources/subscribe", {"uri": "test://static-binary"}, "static-binary", UNKNOWN),
        (
            "completion/complete",
            {
                "ref": {"type": "ref/prompt", "name": "everything__test_prompt_with_image"},
                "argument": {"name": "a", "value": ""},
            },
            "test_prompt_with_image",
            UNKNOWN,
        ),
        (
            "completion/complete",
            {"ref": {"type": "ref/resource", "uri": "test://static-binary"}, "argument": {"name": "a", "value": ""}},
            "static-binary",
            UNKNOWN,
        ),
    ]
    for method, params, name, unknown in checks:
        denied = await bob.call(method, params)
        missing = await bob.call(method, renamed(params, name, unknown))
        assert "error" in denied and renamed(denied["error"], name, unknown) == missing["error"], (method, denied)
        allowed = await alice.call(method, params)
        assert "result" in allowed, (method, allowed)
    # What bob may use works for him.
    echoed = await bob.call("tools/call", {"name": "everything__test_echo", "arguments": {"text": "hi"}})
    assert echoed["result"]["content"][0]["text"] == "hi"
    read = await bob.call("resources/read", {"uri": "test://template/7/data"})
    assert "result" in read, read


async def test_mcp_find_agents_and_send_task_never_name_or_pick_a_denied_agent(gw):
    alice, bob = await mcp_session(gw, "alice"), await mcp_session(gw, "bob")

    async def found(raw: RawSession, query: str) -> set[str]:
        res = await raw.call("tools/call", {"name": "find_agents", "arguments": {"query": query}})
        return {a["name"] for a in res["result"]["structuredContent"]["agents"]}

    assert await found(alice, "") == {"echo", "archive", "everything"}
    assert await found(bob, "") == {"echo", "everything"}  # "down" offers nothing, to anyone
    assert await found(bob, "archived documents") == set() and "archive" in await found(alice, "archived documents")

    async def sent(raw: RawSession, target: str) -> dict:
        args = {"agent_or_query": target, "message": "m"}
        return (await raw.call("tools/call", {"name": "send_task", "arguments": args}))["result"]

    assert not (await sent(alice, "archived documents")).get("isError")
    for target in ("archive", "archived documents"):
        denied, missing = await sent(bob, target), await sent(bob, f"{UNKNOWN} {UNKNOWN}")
        assert denied["isError"] and renamed(denied, target, f"{UNKNOWN} {UNKNOWN}") == missing, (target, denied)


async def modern_client(gw: Gateway, who: str | None) -> ModernRaw:
    """Stateless (2026-07-28) requests with ``who``'s API key."""
    http = gw.http(who)
    gw.sessions.append(http)
    return ModernRaw(http, gw.url + "/mcp")


async def test_mcp_a_modern_request_gets_the_view_a_session_gets(gw):
    lists = (
        ("tools/list", "tools", "name"),
        ("prompts/list", "prompts", "name"),
        ("resources/list", "resources", "uri"),
        ("resources/templates/list", "resourceTemplates", "uriTemplate"),
    )
    for who in ("alice", "bob"):
        legacy, modern = await mcp_session(gw, who), await modern_client(gw, who)
        for method, key, field in lists:
            seen = (await legacy.call(method))["result"][key]
            _, reply = await modern.call(method)
            assert [x[field] for x in reply["result"][key]] == [x[field] for x in seen], (who, method)
            assert reply["result"]["cacheScope"] == "private"  # what a caller lists is decided for them
    resp, _ = await (await modern_client(gw, None)).call("tools/list")
    assert resp.status_code == 401
    bob = await modern_client(gw, "bob")
    checks = [
        ("tools/call", {"name": "archive", "arguments": {"message": "x"}}, "archive"),
        ("tools/call", {"name": "everything__test_error_handling", "arguments": {}}, "test_error_handling"),
        ("prompts/get", {"name": "everything__test_prompt_with_image"}, "test_prompt_with_image"),
        ("resources/read", {"uri": "test://static-binary"}, "static-binary"),
    ]
    for method, params, name in checks:
        _, denied = await bob.call(method, params)
        _, missing = await bob.call(method, renamed(params, name, UNKNOWN))
        assert renamed(denied["error"], name, UNKNOWN) == missing["error"], (method, denied)
    _, echoed = await bob.call("tools/call", {"name": "everything__test_echo", "arguments": {"text": "hi"}})
    assert echoed["result"]["content"][0]["text"] == "hi"


async def test_mcp_listen_streams_follow_the_policy(gw):
    """A listen stream is acknowledged only the resources its caller may read, is told when a
    reload changes the caller's lists, and no longer gets updates of what it may not read."""
    alice, bob = await modern_client(gw, "alice"), await modern_client(gw, "bob")
    watched = ["test://watched-resource", "test://static-binary", "test://nothing"]
    wanted = {"toolsListChanged": True, "resourceSubscriptions": watched}
    try:
        async with listening(bob, wanted) as (_, bob_ack, bobs), listening(alice, wanted) as (_, alice_ack, alices):
            assert bob_ack["params"]["notifications"]["resourceSubscriptions"] == ["test://watched-resource"]
            assert (
                alice_ack["params"]["notifications"]["resourceSubscriptions"] == watched[:2]
            )  # nobody serves the third
            await gw.set_policy(policy_text(gw.carol.did, ["echo", "archive"], guest_upstream=False))
            for stream in (bobs, alices):
                assert (await next_message(stream))["method"] == "notifications/tools/list_changed"
            _, touched = await alice.call("tools/call", {"name": "everything__test_touch_resource", "arguments": {}})
            assert "result" in touched
            assert (await next_message(alices))["params"]["uri"] == "test://watched-resource"
            assert gw.app.state.runtime.policy_file.reload()  # a marker: list_changed to every stream
            assert (await next_message(bobs))["method"] == "notifications/tools/list_changed"  # no update first
    finally:
        await gw.set_policy(policy_text(gw.carol.did, ["echo"]))


# ---- A2A ------------------------------------------------------------------------------------------


async def rpc(http: httpx.AsyncClient, method: str, params: dict, path: str = "/a2a") -> dict:
    body = {"jsonrpc": "2.0", "id": 1, "method": method, "params": params}
    return (await http.post(path, json=body, headers=V10)).json()


def message(text: str = "hi", **metadata) -> dict:
    msg = {"messageId": uuid.uuid4().hex, "role": "ROLE_USER", "parts": [{"text": text}]}
    return {"message": msg, **({"metadata": metadata} if metadata else {})}


async def test_a2a_cards_list_what_their_caller_may_call(gw):
    async with gw.http() as anyone, gw.http("alice") as alice, gw.http("bob") as bob:
        skills = {}
        for who, http in (("anyone", anyone), ("alice", alice), ("bob", bob)):
            resp = await http.get("/.well-known/agent-card.json")
            assert resp.status_code == 200
            skills[who] = {s["id"] for s in resp.json()["skills"]}
            private = who != "anyone"
            assert resp.headers["cache-control"].startswith("private" if private else "public")
            assert "Authorization" in resp.headers["vary"]
            extended = await rpc(http, "GetExtendedAgentCard", {})
            if private:
                assert {s["id"] for s in extended["result"]["skills"]} == skills[who]
        assert skills == {"anyone": set(), "alice": {"archive", "echo"}, "bob": {"echo"}}

        card = "/a2a/agents/{}/.well-known/agent-card.json"
        assert (await alice.get(card.format("archive"))).status_code == 200
        denied, missing = await bob.get(card.format("archive")), await bob.get(card.format(UNKNOWN))
        assert denied.status_code == missing.status_code == 404
        assert renamed(denied.json(), "archive", UNKNOWN) == missing.json()
        assert (await anyone.get(card.format("echo"))).status_code == 404  # anonymous may call nothing
        bad = await anyone.get("/.well-known/agent-card.json", headers={"Authorization": "Bearer not-a-key"})
        assert bad.status_code == 401 and bad.headers["www-authenticate"].startswith("Bearer")

        denied = await rpc(bob, "GetExtendedAgentCard", {}, "/a2a/agents/archive")
        missing = await rpc(bob, "GetExtendedAgentCard", {}, f"/a2a/agents/{UNKNOWN}")
        assert "error" in denied and renamed(denied, "archive", UNKNOWN) == missing
        assert "result" in await rpc(alice, "GetExtendedAgentCard", {}, "/a2a/agents/archive")


async def test_a2a_messages_to_a_denied_agent_are_as_to_an_unknown_one(gw):
    async with gw.http("alice") as alice, gw.http("bob") as bob:
        for denied, missing in [
            (
                await rpc(bob, "SendMessage", message(), "/a2a/agents/archive"),
                await rpc(bob, "SendMessage", message(), f"/a2a/agents/{UNKNOWN}"),
            ),
            (
                await rpc(bob, "SendMessage", message(agent="archive")),
                await rpc(bob, "SendMessage", message(agent=UNKNOWN)),
            ),
        ]:
            assert "error" in denied and renamed(denied, "archive", UNKNOWN) == missing, denied
        rest = await bob.post("/a2a/agents/archive/rest/message:send", json=message(), headers=V10)
        rest_missing = await bob.post(f"/a2a/agents/{UNKNOWN}/rest/message:send", json=message(), headers=V10)
        assert (
            rest.status_code == rest_missing.status_code
            and renamed(rest.json(), "archive", UNKNOWN) == rest_missing.json()
        )

        async def routed(http: httpx.AsyncClient, text: str) -> str | int:  # a message that names no agent
            body = await rpc(http, "SendMessage", message(text))
            if "error" in body:
                return body["error"]["code"]
            result = body["result"]
            task_id = result["task"]["id"] if "task" in result else result["message"]["taskId"]
            return (await http.get(f"/tasks/{task_id}")).json()["route"]["agent"]

        assert await routed(alice, "archived documents") == "archive"  # routed by its text
        assert await routed(bob, "archived documents") == -32602  # never to the denied one, nor a default
        assert await routed(bob, "echo") == "echo"


# ---- ACP, /tasks, /route, registry reads ----------------------------------------------------------


async def test_acp_tasks_route_and_registry_reads_hide_a_denied_agent(gw):
    async with gw.http("alice") as alice, gw.http("bob") as bob:
        assert [a["name"] for a in (await alice.get("/acp/agents")).json()["agents"]] == ["archive", "echo"]
        assert [a["name"] for a in (await bob.get("/acp/agents")).json()["agents"]] == ["echo"]
        run = {"mode": "sync", "input": [{"role": "user", "parts": [{"content": "x", "content_type": "text/plain"}]}]}
        archive_did = gw.app.state.runtime.registry.by_name("archive")[0].did

        def fill(body: dict | None, name: str) -> dict | None:
            return json.loads(json.dumps(body).replace("{}", name)) if body else None

        for method, path, body in [
            ("GET", "/acp/agents/{}", None),
            ("POST", "/acp/runs", {**run, "agent_name": "{}"}),
            ("POST", "/tasks", {"agent": "{}", "message": {"role": "user", "parts": [{"kind": "text", "text": "x"}]}}),
            ("GET", "/registry/agents/{}", None),
        ]:
            name = archive_did if path.startswith("/registry") else "archive"
            denied = await bob.request(method, path.format(name), json=fill(body, name))
            missing = await bob.request(method, path.format(UNKNOWN), json=fill(body, UNKNOWN))
            assert denied.status_code == missing.status_code == 404, (path, denied.text)
            assert renamed(denied.json(), name, UNKNOWN) == missing.json(), (path, denied.text, missing.text)
            assert (await alice.request(method, path.format(name), json=fill(body, name))).status_code in (200, 202)

        listed = {
            who: {r["name"] for r in (await http.get("/registry/agents")).json()["agents"]}
            for who, http in (("alice", alice), ("bob", bob))
        }
        assert listed == {"alice": {"archive", "echo"}, "bob": {"echo"}}

        query = {"text": "archived documents"}
        mine = (await alice.post("/route", json=query)).json()
        assert mine["candidates"][0]["agent"] == "archive"
        theirs = (await bob.post("/route", json=query)).json()
        assert "archive" not in {c["agent"] for c in theirs["candidates"] + theirs["closest"]}
        assert archive_did not in json.dumps(theirs)


# ---- ANP ------------------------------------------------------------------------------------------


async def signed_get(http: httpx.AsyncClient, caller, url: str) -> httpx.Response:
    return await http.get(url, headers=signer(caller).get_auth_header(url, force_new=True, method="GET"))


async def test_anp_descriptions_are_for_the_did_that_signs_the_fetch(gw):
    url = gw.url
    async with httpx.AsyncClient(timeout=20) as http:
        unsigned = (await http.get(f"{url}/anp/ad.json")).json()
        assert unsigned["ad:agents"] == []  # anonymous may call nothing
        carols = await signed_get(http, gw.carol, f"{url}/anp/ad.json")
        assert carols.status_code == 200 and "authentication-info" in carols.headers  # a token to reuse
        assert [a["name"] for a in carols.json()["ad:agents"]] == ["echo"]
        assert (await signed_get(http, gw.dave, f"{url}/anp/ad.json")).json()["ad:agents"] == []
        for doc in ("ad.json", "openrpc.json"):
            assert (await signed_get(http, gw.carol, f"{url}/anp/agents/echo/{doc}")).status_code == 200
            denied = await signed_get(http, gw.carol, f"{url}/anp/agents/archive/{doc}")
            missing = await signed_get(http, gw.carol, f"{url}/anp/agents/{UNKNOWN}/{doc}")
            assert denied.status_code == missing.status_code == 404
            assert renamed(denied.json(), "archive", UNKNOWN) == missing.json()
        forged = await http.get(f"{url}/anp/ad.json", headers={"Authorization": "DIDWba did=x, nonce=y, signature=z"})
        assert forged.status_code == 401 and forged.headers["www-authenticate"].startswith("DIDWba")
        # The SDK's crawler signs its fetches, and so sees carol's agents.
        crawler = ANPCrawler(gw.carol.doc_path, gw.carol.key_path, cache_enabled=False)
        _, tools = await crawler.fetch_text(f"{url}/anp/agents/echo/ad.json")
        assert [t["function"]["name"] for t in tools] == ["send_message", "get_task", "cancel_task"]


async def test_anp_calls_to_a_denied_agent_are_as_to_an_unknown_one(gw):
    url = gw.url
    async with httpx.AsyncClient(timeout=20) as http:

        async def send(agent: str) -> dict:
            body = {"jsonrpc": "2.0", "id": 1, "method": "send_message", "params": {"message": "hi", "agent": agent}}
            return (await signed_post(http, signer(gw.carol), f"{url}/anp/rpc", body)).json()

        assert (await send("echo"))["result"]["text"] == "hi"
        denied, missing = await send("archive"), await send(UNKNOWN)
        assert "error" in denied and renamed(denied, "archive", UNKNOWN) == missing
        body = {"jsonrpc": "2.0", "id": 1, "method": "send_message", "params": {"message": "hi"}}
        denied = await signed_post(http, signer(gw.carol), f"{url}/anp/agents/archive/rpc", body)
        missing = await signed_post(http, signer(gw.carol), f"{url}/anp/agents/{UNKNOWN}/rpc", body)
        assert denied.status_code == missing.status_code == 404
        assert renamed(denied.json(), "archive", UNKNOWN) == missing.json()
        # Without a signature nobody learns which agents exist: every name is a 401.
        for agent in ("archive", UNKNOWN):
            assert (await http.post(f"{url}/anp/agents/{agent}/rpc", json=body)).status_code == 401


# ---- registry writes, audit -----------------------------------------------------------------------


def signed_record(identity: Identity, name: str, seq: int = 1) -> AgentRecord:
    now = int(time.time())
    data = {
        "did": identity.did,
        "name": name,
        "description": "a team agent",
        "version": "1.0.0",
        "skills": [{"id": "team", "name": "Team", "description": "team work", "tags": ["team"]}],
        "endpoints": {"bus": name},
        "seq": seq,
        "issued_at": now,
        "expires_at": now + 600,
        "network": "interlace",
        "home_node": "test",
    }
    return sign(AgentRecord.model_validate(data), identity)


def signed_tombstone(identity: Identity, seq: int) -> Tombstone:
    return sign(Tombstone(did=identity.did, seq=seq, issued_at=int(time.time()), network="interlace"), identity)


async def test_registry_writes_are_the_policys_and_every_refusal_is_audited(gw, tmp_path):
    handler = audit.to_file(str(tmp_path / "audit.jsonl"))
    team, rogue, forger = Identity.generate(), Identity.generate(), Identity.generate()
    try:
        async with gw.http() as anyone, gw.http("bob") as bob:
            created = await anyone.post("/registry/agents", json=signed_record(team, "team-a").dump())
            assert created.status_code == 201, created.text
            refused = await anyone.post("/registry/agents", json=signed_record(rogue, "archive-2").dump())
            assert refused.status_code == 403, refused.text
            error = refused.json()["error"]
            assert (
                error["code"] == "denied_by_policy"
                and rogue.did in error["message"]
                and "'archive-2'" in error["message"]
            )
            # A record that is not really its DID's is refused for its signature, never judged.
            forged = signed_record(forger, "archive-3").model_copy(update={"did": rogue.did})
            assert (await anyone.post("/registry/agents", json=forged.dump())).status_code == 400
            # A record that came another way (as gossip relays it) is not its DID's to remove here.
            await gw.app.state.runtime.registry.submit(signed_record(rogue, "archive-4"))
            gone = await anyone.request(
                "DELETE", f"/registry/agents/{rogue.did}", json=signed_tombstone(rogue, 2).dump()
            )
            assert gone.status_code == 403 and gone.json()["error"]["code"] == "denied_by_policy"
            assert gw.app.state.runtime.registry.get(rogue.did) is not None
            deleted = await anyone.request(
                "DELETE", f"/registry/agents/{team.did}", json=signed_tombstone(team, 2).dump()
            )
            assert deleted.status_code == 200, deleted.text
            # Denied calls on the other faces are audited too.
            raw = RawSession(bob, gw.url + "/mcp")
            await raw.initialize()
            await raw.call("tools/call", {"name": "archive", "arguments": {"message": "x"}})
            await raw.call("tools/call", {"name": "everything__test_error_handling", "arguments": {}})
            await raw.call("resources/read", {"uri": "test://static-binary"})
            assert (
                await bob.post(
                    "/tasks",
                    json={"agent": "archive", "message": {"role": "user", "parts": [{"kind": "text", "text": "x"}]}},
                )
            ).status_code == 404
    finally:
        audit.log.removeHandler(handler)
        audit.log.propagate = True
        handler.close()
    lines = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    seen = {(r["principal"], r["action"], r["target"], r["outcome"]) for r in lines}
    assert {
        (team.did, "register", "team-a", "ok"),
        (rogue.did, "register", "archive-2", "denied"),
        (rogue.did, "deregister", "archive-4", "denied"),
        (team.did, "deregister", "team-a", "ok"),
        ("bob", "call", "archive", "denied"),
        ("bob", "call", "everything:test_error_handling", "denied"),
        ("bob", "call", "everything:test://static-binary", "denied"),
    } <= seen, seen
    assert not any(k in (tmp_path / "audit.jsonl").read_text() for k in KEYS.values())


# ---- reload ---------------------------------------------------------------------------------------


async def test_a_policy_reload_changes_what_a_caller_sees_without_a_restart(gw):
    """Guests get archive and lose the upstream: bob's lists, card and agents change at once, his
    GET stream is told (list_changed), and the upstream's news (a log message that belongs to no
    request, a subscribed resource's update) reaches alice but no longer bob."""
    alice, bob = await mcp_session(gw, "alice"), await mcp_session(gw, "bob")
    for raw in (bob, alice):  # bob first: the gateway decides for his session before it tells alice
        assert "result" in await raw.call("logging/setLevel", {"level": "debug"})
        assert "result" in await raw.call("resources/subscribe", {"uri": "test://watched-resource"})
    try:
        async with GetStream(bob) as bobs, GetStream(alice) as alices, gw.http("bob") as http:
            await gw.set_policy(policy_text(gw.carol.did, ["echo", "archive"], guest_upstream=False))
            for stream in (bobs, alices):
                await stream.until("notifications/tools/list_changed")
            tools = {t["name"] for t in (await bob.call("tools/list"))["result"]["tools"]}
            assert "archive" in tools and not any(t.startswith("everything__") for t in tools)
            assert (await bob.call("prompts/list"))["result"]["prompts"] == []
            assert {s["id"] for s in (await http.get("/.well-known/agent-card.json")).json()["skills"]} == {
                "archive",
                "echo",
            }
            assert [a["name"] for a in (await http.get("/acp/agents")).json()["agents"]] == ["archive", "echo"]

            for tool in ("test_log_unrelated", "test_touch_resource"):
                assert "result" in await alice.call("tools/call", {"name": f"everything__{tool}", "arguments": {}})
            await alices.until("notifications/message")
            await alices.until("notifications/resources/updated")
            assert gw.app.state.runtime.policy_file.reload()  # a marker: list_changed to every stream
            told = [await bobs.until("notifications/") for _ in range(3)]
            assert all("list_changed" in t for t in told), told  # nothing of the upstream came first
    finally:
        await gw.set_policy(policy_text(gw.carol.did, ["echo"]))


async def test_a_task_naming_a_denied_tool_of_an_mcp_agent_is_refused_on_every_face(gw):
    """The MCP face judges a federated tool by name; a task for a registered MCP agent that names
    the tool in its metadata (or a follow-up's) is judged the same way when it is submitted."""
    tools = Identity.generate()
    record = signed_record(tools, "team-tools").model_dump(mode="json", exclude_none=True)
    record["endpoints"] = {"mcp": f"http://127.0.0.1:{free_port()}/mcp"}
    rules = [
        {"allow": {"groups": "research", "agent": "team-tools"}},
        {"deny": {"upstream": "team-tools", "tool": "drop_*"}},
        {"allow": {"action": "register", "agent": "team-*"}},
    ]
    await gw.set_policy(yaml.safe_dump({"rules": rules}))
    try:
        async with gw.http() as anyone, gw.http("alice") as alice:
            resp = await anyone.post("/registry/agents", json=sign(AgentRecord.model_validate(record), tools).dump())
            assert resp.status_code == 201, resp.text

            def task(tool: str) -> dict:
                meta = {"tool": tool}
                return {
                    "agent": "team-tools",
                    "message": {"role": "user", "parts": [{"kind": "text", "text": "x"}]},
                    "metadata": meta,
                }

            denied = await alice.post("/tasks", json=task("drop_everything"))
            assert denied.status_code == 404 and denied.json()["error"]["code"] == "unknown_agent", denied.text
            assert (await alice.post("/tasks", json=task("list_rows"))).status_code == 202
            a2a_body = {
                "jsonrpc": "2.0",
                "id": 1,
                "method": "SendMessage",
                "params": {
                    "message": {
                        "messageId": uuid.uuid4().hex,
                        "role": "ROLE_USER",
                        "parts": [{"text": "x"}],
                        "metadata": {"tool": "drop_everything"},
                    },
                    "configuration": {"returnImmediately": True},
                },
            }
            out = (await alice.post("/a2a/agents/team-tools", json=a2a_body, headers=V10)).json()
            assert "error" in out and "drop_everything" in out["error"]["message"], out
            gone = await anyone.request(
                "DELETE", f"/registry/agents/{tools.did}", json=signed_tombstone(tools, 2).dump()
            )
            assert gone.status_code == 200, gone.text
    finally:
        await gw.set_policy(policy_text(gw.carol.did, ["echo"]))
