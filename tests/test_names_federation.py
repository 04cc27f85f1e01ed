"""Revocation end to end across two real `interlace serve` processes that gossip: an operator
revokes a DID at one node, its record goes from both, neither lets it register again, and lifting
the revocation at the other node restores both. A name owned at one node is owned at the other."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import httpx
import pytest

from registry.identity import Identity
from tests.conftest import interlace_cmd, subprocess_env
from tests.test_cluster_federation import Node, all_alive, get_record, signed_record, wait_for

pytestmark = pytest.mark.timeout(90)


def interlace(*args: str) -> tuple[int, str, str]:
    done = subprocess.run(interlace_cmd(*args), env=subprocess_env(), capture_output=True, text=True, timeout=60)
    return done.returncode, done.stdout, done.stderr


def revoked_at(url: str) -> list[str]:
    return [r["did"] for r in httpx.get(f"{url}/registry/revocations", timeout=5).json()["revocations"]]


def register(url: str, identity: Identity, name: str, seq: int) -> httpx.Response:
    return httpx.post(f"{url}/registry/agents", json=signed_record(identity, name, seq=seq).dump(), timeout=5)


def test_a_revocation_at_one_node_holds_at_both_until_lifted(tmp_path: Path):
    a = Node("node-a", tmp_path).start()
    b = Node("node-b", tmp_path, join=a.hostport).start()
    nodes = [a, b]
    try:
        wait_for(lambda: all_alive(nodes, ["node-a", "node-b"]), 30, "the two nodes see each other", nodes)
        agent, owner, squatter = Identity.generate(), Identity.generate(), Identity.generate()
        assert register(a.url, agent, "doomed", 1).status_code == 201
        assert register(a.url, owner, "owned", 1).status_code == 201
        wait_for(lambda: get_record(b.url, agent.did) and get_record(b.url, owner.did), 10, "records reach B", nodes)
        taken = register(b.url, squatter, "owned", 1)  # B learnt the owner by gossip
        assert taken.status_code == 409 and taken.json()["error"]["code"] == "name_taken"

        rc, out, err = interlace("agent", "revoke", agent.did, "--gateway", a.url)
        assert rc == 0 and json.loads(out)["dropped"] == "doomed", err
        wait_for(lambda: revoked_at(b.url) == [agent.did], 10, "the revocation reaches B", nodes)
        for node in nodes:
            assert get_record(node.url, agent.did) is None, node.name
            again = register(node.url, agent, "doomed", 2)
            assert again.status_code == 403 and again.json()["error"]["code"] == "revoked", node.name
        revocation = httpx.get(f"{b.url}/registry/revocations", timeout=5).json()["revocations"][0]
        assert revocation["node"] == httpx.get(f"{a.url}/cluster/members", timeout=5).json()["did"]  # A signed it

        rc, out, err = interlace("agent", "unrevoke", agent.did, "--gateway", b.url)
        assert rc == 0 and json.loads(out)["revoked"] is False, err
        wait_for(lambda: revoked_at(a.url) == [], 10, "the lifting reaches A", nodes)
        assert register(a.url, agent, "doomed", 3).status_code == 201
        wait_for(lambda: get_record(b.url, agent.did), 10, "the agent is back at B", nodes)
    finally:
        for node in nodes:
            node.stop()
