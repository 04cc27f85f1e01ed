"""Gossiping nodes that require caller authentication forward tasks to the node an agent lives
at with requests signed by the forwarding node's key (RFC 9421), asserting the task's owner; the
home believes that only from a node it trusts: the ``--trust`` list when given, else its live
gossip members. Real ``interlace serve`` processes with API keys for two principals."""

from __future__ import annotations

import time

import httpx
import pytest
import yaml

from gateway.authn import on_behalf_of
from gateway.cluster import FORWARDED_FROM
from gateway.core.auth import api_key_digest
from gateway.core.httpsig import did_key_method, sign_request
from registry.identity import Identity
from tests.test_cluster_federation import Node, text_message, wait_for

pytestmark = pytest.mark.timeout(120)

KEYS = {"alice": "k-alice-0123456789abcdef", "bob": "k-bob-0123456789abcdef"}


def as_(who: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS[who]}"}


def start_pair(tmp, name: str, trust: bool) -> dict:
    """Node A (no agents) and node B (the echo agent) joined, requiring API keys; with ``trust``
    each lists both node DIDs in ``--trust``."""
    keys = tmp / "keys.yaml"
    keys.write_text(
        yaml.safe_dump(
            [
                {"principal": p, "key_sha256": api_key_digest(k), "groups": ["research"] if p == "alice" else []}
                for p, k in KEYS.items()
            ]
        )
    )
    ids = {}
    for side in ("a", "b"):
        ids[side] = Identity.generate()
        ids[side].save(tmp / f"{name}-{side}.key")
    extra: tuple[str, ...] = ("--api-keys", str(keys))
    if trust:
        (tmp / f"{name}-nodes.txt").write_text(f"{ids['a'].did}\n{ids['b'].did}\n")
        extra += ("--trust", str(tmp / f"{name}-nodes.txt"))
    a = Node(f"{name}-a", tmp, key=tmp / f"{name}-a.key", extra=extra).start()
    b = Node(f"{name}-b", tmp, join=a.hostport, echo=True, key=tmp / f"{name}-b.key", extra=extra).start()
    nodes = [a, b]

    def members_alive() -> bool:
        return all(
            {
                m["id"]: m["state"]
                for m in httpx.get(n.url + "/cluster/members", headers=as_("bob"), timeout=5).json()["members"]
            }.get(other.name)
            == "alive"
            for n, other in ((a, b), (b, a))
        )

    def echo_at_a() -> bool:
        agents = httpx.get(a.url + "/registry/agents", headers=as_("bob"), timeout=5).json()["agents"]
        return any(r["name"] == "echo" for r in agents)

    try:
        wait_for(members_alive, 30, "A and B see each other alive", nodes)
        wait_for(echo_at_a, 30, "B's echo record gossiped to A", nodes)
    except BaseException:
        for node in nodes:
            node.stop()
        raise
    return {"a": a, "b": b, "ids": ids, "nodes": nodes}


@pytest.fixture(scope="module", params=[True, False], ids=["trust-list", "gossip-members"])
def pair(request, tmp_path_factory):
    env = start_pair(tmp_path_factory.mktemp("cluster-auth"), "trust" if request.param else "members", request.param)
    yield env
    for node in env["nodes"]:
        node.stop()


def test_a_task_forwarded_under_required_authentication_runs_at_the_home_for_its_owner(pair):
    a, b = pair["a"], pair["b"]
    assert "echo" in [
        x["name"] for x in httpx.get(a.url + "/acp/agents", headers=as_("alice"), timeout=5).json()["agents"]
    ]
    done = httpx.post(
        a.url + "/tasks?wait=true&timeout=15",
        json={"agent": "echo", "message": text_message("from alice at A")},
        headers=as_("alice"),
        timeout=20,
    )
    local = done.json()
    assert local["status"]["state"] == "completed", done.text
    assert local["artifacts"][0]["parts"][0]["text"] == "from alice at A"
    assert local["owner"] == "alice"

    def forwarded(who: str) -> list[dict]:
        listed = httpx.get(b.url + "/tasks", params={"limit": 500}, headers=as_(who), timeout=5).json()["tasks"]
        return [t for t in listed if t["metadata"].get(FORWARDED_FROM, {}).get("task_id") == local["id"]]

    remote = forwarded("alice")  # at the home the task is alice's, not node A's
    assert len(remote) == 1 and remote[0]["owner"] == "alice" and remote[0]["status"]["state"] == "completed"
    assert remote[0]["owner_groups"] == ["research"]  # judged at the home by the groups alice has at A
    assert forwarded("bob") == []
    assert httpx.get(f"{b.url}/tasks/{remote[0]['id']}", headers=as_("bob"), timeout=5).status_code == 404


def signed_submit(url: str, identity: Identity, owner: str, *, keyid_of: Identity | None = None, **kw) -> dict:
    body = httpx.Request("POST", url, json={"agent": "echo", "message": text_message("signed")}).read()
    asserted = on_behalf_of(owner)
    keyid = did_key_method((keyid_of or identity).did)
    return {
        "content": body,
        "headers": {
            "content-type": "application/json",
            **asserted,
            **sign_request(identity, keyid, "POST", url, body, covered=asserted, lifetime_s=60, **kw),
        },
    }


def test_the_home_believes_an_asserted_owner_only_from_a_trusted_node(pair):
    b, node_a = pair["b"], pair["ids"]["a"]
    url = b.url + "/tasks?wait=true&timeout=10"

    def refused(resp: httpx.Response, reason: str) -> None:
        assert resp.status_code == 401 and resp.json()["error"]["code"] == "unauthorized", resp.text
        assert reason in resp.json()["error"]["message"]

    request = signed_submit(url, node_a, "alice")
    accepted = httpx.post(url, timeout=15, **request)
    assert accepted.status_code == 200 and accepted.json()["status"]["state"] == "completed", accepted.text
    assert accepted.json()["owner"] == "alice"
    refused(httpx.post(url, timeout=5, **request), "the nonce has already been used")  # replayed
    refused(
        httpx.post(url, timeout=5, **signed_submit(url, Identity.generate(), "alice")), "not a trusted gateway node"
    )
    refused(httpx.post(url, timeout=5, **signed_submit(url, Identity.generate(), "alice", keyid_of=node_a)), "verify")
    expired = signed_submit(url, node_a, "alice", created=int(time.time()) - 120)
    refused(httpx.post(url, timeout=5, **expired), "older than")
    tampered = signed_submit(url, node_a, "alice")
    tampered["content"] = tampered["content"].replace(b"signed", b"forged")
    refused(httpx.post(url, timeout=5, **tampered), "Content-Digest does not match")
    unsigned = {"content-type": "application/json", **on_behalf_of("alice")}
    refused(httpx.post(url, content=request["content"], headers=unsigned, timeout=5), "authentication required")
    # a client of the home sending the header itself is just that client
    as_bob = httpx.post(url, content=request["content"], headers={**unsigned, **as_("bob")}, timeout=15)
    assert as_bob.status_code == 200 and as_bob.json()["owner"] == "bob", as_bob.text
