"""Gossiping nodes that require caller authentication: agents homed at another node are neither
listed nor routed to (a forwarded task would reach the home's /tasks without credentials, and
node-to-node requests are not signed yet), while records still gossip and local agents serve."""

from __future__ import annotations

import httpx
import yaml

from gateway.core.auth import api_key_digest
from tests.test_cluster_federation import Node, wait_for

KEY = "k-ops-0123456789abcdef"


def test_with_authentication_required_agents_homed_elsewhere_are_not_listed_or_routed(tmp_path):
    keys = tmp_path / "keys.yaml"
    keys.write_text(yaml.safe_dump([{"principal": "ops", "key_sha256": api_key_digest(KEY), "groups": []}]))
    auth = ("--api-keys", str(keys))
    a = Node("auth-a", tmp_path, extra=auth).start()
    b = Node("auth-b", tmp_path, join=a.hostport, echo=True, extra=auth).start()
    nodes = [a, b]
    headers = {"Authorization": f"Bearer {KEY}"}

    def get(node: Node, path: str) -> httpx.Response:
        return httpx.get(node.url + path, headers=headers, timeout=5)

    def members_alive() -> bool:
        try:
            return all(
                {m["id"]: m["state"] for m in get(n, "/cluster/members").json()["members"]}.get(other.name) == "alive"
                for n, other in ((a, b), (b, a))
            )
        except (httpx.HTTPError, ValueError, KeyError):
            return False

    try:
        wait_for(members_alive, 30, "A and B see each other alive", nodes)
        wait_for(
            lambda: any(r["name"] == "echo" for r in get(a, "/registry/agents").json()["agents"]),
            30,
            "B's echo record gossiped to A",
            nodes,
        )
        assert httpx.get(a.url + "/registry/agents", timeout=5).status_code == 401  # no key, no read
        message = {"role": "user", "parts": [{"kind": "text", "text": "hi"}]}
        at_a = httpx.post(
            a.url + "/tasks?wait=true", json={"agent": "echo", "message": message}, headers=headers, timeout=10
        )
        assert at_a.status_code == 404 and at_a.json()["error"]["code"] == "unknown_agent", at_a.text
        acp = get(a, "/acp/agents").json()["agents"]
        assert "echo" not in [x["name"] for x in acp]
        at_b = httpx.post(
            b.url + "/tasks?wait=true", json={"agent": "echo", "message": message}, headers=headers, timeout=10
        )
        assert at_b.json()["status"]["state"] == "completed", at_b.text
        assert "tasks are not forwarded" in (tmp_path / "auth-a.log").read_text()
    finally:
        for node in nodes:
            node.stop()
