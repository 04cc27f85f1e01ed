"""Agents whose home node is down leave every list, with real processes: three `interlace serve`
nodes gossiping on the fast profile (the helpers of test_cluster_federation), the official `mcp`
client at A, C hosting the echo agent. Killing C removes echo from A's MCP tools (announced with
notifications/tools/list_changed), A2A card and ACP agents; C restarted with its node key brings
it back. Every wait polls or awaits with a bound; nothing sleeps.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import httpx
import mcp_types as types
import pytest
from mcp import Client
from mcp.shared.exceptions import MCPError

from registry.identity import Identity
from tests.test_cluster_federation import Node, all_alive, await_for, records_named, signed_record, view, wait_for

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::mcp.shared.exceptions.MCPDeprecationWarning"),
]


async def listed_at(url: str, mcp: Client, http: httpx.AsyncClient) -> dict[str, set[str]]:
    """The agent names each face of the node at ``url`` offers."""
    card = (await http.get(f"{url}/.well-known/agent-card.json")).json()
    acp = (await http.get(f"{url}/acp/agents", params={"limit": 1000})).json()
    return {
        "mcp": {t.name for t in (await mcp.list_tools()).tools},
        "a2a": {s["id"] for s in card["skills"]},
        "acp": {a["name"] for a in acp["agents"]},
    }


def c_is(http: httpx.AsyncClient, node: Node, state: str):
    """A check for await_for: ``node`` sees node-c in ``state``."""

    async def check() -> bool:
        members = (await http.get(f"{node.url}/cluster/members")).json()["members"]
        return any(m["id"] == "node-c" and m["state"] == state for m in members)

    return check


async def test_agents_of_a_dead_node_leave_every_list_and_come_back_with_it(tmp_path):
    key = tmp_path / "node-c.key"
    Identity.generate().save(key)
    a = Node("node-a", tmp_path).start()
    b = Node("node-b", tmp_path, join=a.hostport).start()
    c = Node("node-c", tmp_path, join=a.hostport, echo=True, key=key).start()
    nodes = [a, b, c]
    changed = asyncio.Event()

    async def on_message(message) -> None:
        if isinstance(message, types.ToolListChangedNotification):
            changed.set()

    async def announced(what: str) -> None:
        try:
            await asyncio.wait_for(changed.wait(), 10)
        except TimeoutError:
            raise AssertionError(f"no notifications/tools/list_changed at A: {what}") from None
        changed.clear()

    try:
        wait_for(lambda: all_alive(nodes, ["node-a", "node-b", "node-c"]), 30, "the three nodes see each other", nodes)
        wait_for(lambda: records_named(a.url, "echo"), 15, "C's echo record reaches A", nodes)
        c_did = view(c.url)["did"]
        async with (
            httpx.AsyncClient(timeout=10) as http,
            Client(f"{a.url}/mcp", mode="legacy", cache=None, message_handler=on_message) as mcp,
        ):
            assert all("echo" in names for names in (await listed_at(a.url, mcp, http)).values())

            # The client opens its GET stream in the background: it is open (and notifications
            # flow) once an agent registered at A is announced there.
            for attempt in range(20):
                probe = signed_record(Identity.generate(), f"probe-{attempt}")
                assert (await http.post(f"{a.url}/registry/agents", json=probe.dump())).status_code == 201
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(changed.wait(), 0.5)
                    break
            else:
                raise AssertionError("no notifications/tools/list_changed at A after 20 agents registered")
            changed.clear()

            c.kill()  # SIGKILL: no leave
            bound = view(a.url)["detection_bound_s"]
            await await_for(c_is(http, a, "dead"), 3 * bound + 5, "A declares C dead", nodes)
            await announced("after C was declared dead")
            now = await listed_at(a.url, mcp, http)
            assert all("echo" not in names and probe.name in names for names in now.values()), now
            assert records_named(a.url, "echo")  # the record is still live: unreachable, not gone
            with pytest.raises(MCPError, match="Unknown tool"):
                await mcp.call_tool("echo", {"message": "x"})

            c.start()  # same node id, key and address
            started = time.monotonic()
            await await_for(c_is(http, a, "alive"), 30, "C rejoins", nodes)
            assert view(c.url)["did"] == c_did
            await announced("after C came back")

            async def echo_everywhere() -> bool:
                return all("echo" in names for names in (await listed_at(a.url, mcp, http)).values())

            await await_for(echo_everywhere, 30 - (time.monotonic() - started), "echo is listed at A again", nodes)
            back = await mcp.call_tool("echo", {"message": "back"})
            assert not back.is_error and back.content[0].text == "back"
    finally:
        for node in nodes:
            node.stop()
