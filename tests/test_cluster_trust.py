"""Federation you can trust (security review P18), with real `interlace serve` processes.

An attacker holds a key (a fresh did:key, or one a trust list names) and POSTs signed gossip
envelopes to a node: records meant to skip admission, an `Alive` that would move a member to a
capture listener, a `PingReq` that would make the node dial it. A loopback listener that counts
connections stands in for the capture server: it must see none. Every wait polls a node's own
view (``/cluster/members``, the registry) with a bound; nothing sleeps.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from registry.gossip.envelope import seal
from registry.gossip.messages import Alive, PingReq, UserMsg, encode_packet
from registry.identity import Identity
from tests.conftest import free_port, serve_app
from tests.test_cluster_federation import NET, Node, await_for, signed_record, text_message

pytestmark = pytest.mark.timeout(120)

TOKEN = "registration-token-0123456789"


class Capture:
    """A loopback TCP listener that counts the connections made to it (and answers nothing)."""

    def __init__(self) -> None:
        self.connections = 0
        self.url = ""

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        writer.close()

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Capture]:
        server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        try:
            yield self
        finally:
            server.close()
            await server.wait_closed()


class FakeNode:
    """The attacker's own gossip address: a loopback server that keeps the packets it gets."""

    def __init__(self, identity: Identity, name: str) -> None:
        self.identity, self.name, self.received = identity, name, []
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"

    async def _packet(self, request: Request) -> Response:
        self.received.append(await request.json())
        return Response(status_code=204)

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/gossip/packet", self._packet, methods=["POST"])])

    def envelope(self, kind: str, payload, *, node: str | None = None, addr: str | None = None) -> dict:
        return seal(
            self.identity,
            network=NET,
            node=node or self.name,
            addr=addr or self.url,
            kind=kind,
            payload=payload,
            sent_at=int(time.time() * 1000),
        )

    def nacked(self, seq: int) -> bool:
        return any(
            m.get("type") == "nack" and m.get("seq") == seq for env in self.received for m in env.get("payload", [])
        )


async def view(node: Node) -> dict:
    """The node's /cluster/members (async: the test's own servers share this event loop)."""
    async with httpx.AsyncClient(timeout=5) as http:
        return (await http.get(f"{node.url}/cluster/members")).json()


async def stats(node: Node) -> dict[str, int]:
    return (await view(node))["stats"]


async def members(node: Node) -> dict[str, dict]:
    return {m["id"]: m for m in (await view(node))["members"]}


async def record_of(node: Node, did: str) -> dict | None:
    async with httpx.AsyncClient(timeout=5) as http:
        resp = await http.get(f"{node.url}/registry/agents/{did}")
    return resp.json() if resp.status_code == 200 else None


def keyed(tmp: Path, name: str) -> tuple[Identity, Path]:
    identity, path = Identity.generate(), tmp / f"{name}.key"
    identity.save(path)
    return identity, path


def start(nodes: list[Node]) -> None:
    for node in nodes:
        node.start()


def stop(nodes: list[Node]) -> None:
    for node in nodes:
        node.stop()


async def up(nodes: list[Node], *names: str) -> None:
    """Until every node sees all ``names`` alive."""

    async def check() -> bool:
        seen = [await members(n) for n in nodes]
        return all(m.get(x, {}).get("state") == "alive" for m in seen for x in names)

    await await_for(check, 30, f"{names} alive everywhere", nodes)


@pytest.fixture(scope="module")
def tmp(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cluster-trust")
    (path / "token").write_text(TOKEN + "\n")
    return path


@pytest.fixture
async def capture() -> AsyncIterator[Capture]:
    async with Capture().running() as c:
        yield c


# ---- records relayed by gossip meet admission ---------------------------------------------------


async def test_a_token_node_without_a_trust_list_drops_every_relayed_record(tmp, capture):
    # P18: `--admission token`, no `--trust`: a records envelope signed by a fresh did:key went
    # live (204) and the node then sent a task to the capture server.
    node = Node("lonely", tmp, extra=("--admission", "token", "--registration-token-file", str(tmp / "token")))
    start([node])
    try:
        await up([node], "lonely")
        evil = FakeNode(Identity.generate(), "node-evil")
        agents = [Identity.generate(), Identity.generate()]
        entry = [
            {"record": signed_record(a, f"injected-{i}", endpoints={"a2a": capture.url}).dump()}
            for i, a in enumerate(agents)
        ]
        async with httpx.AsyncClient(base_url=node.url, timeout=10) as http:
            sent = [
                await http.post("/gossip/packet", json=evil.envelope("records", {"entries": entry[:1]})),
                await http.post(
                    "/gossip/packet", json=evil.envelope("swim", encode_packet([UserMsg(agents[1].did, entry[1])]))
                ),
            ]
            assert [r.status_code for r in sent] == [204, 204]  # authentic envelopes; their records are judged

            async def judged() -> bool:
                return (await stats(node)).get("registry.rejected.untrusted_node", 0) >= 2

            await await_for(judged, 10, "both relayed records refused", [node])
            assert [await record_of(node, a.did) for a in agents] == [None, None]
            task = await http.post("/tasks", json={"agent": "injected-0", "message": text_message("secret")})
            assert task.status_code == 404 and task.json()["error"]["code"] == "unknown_agent"
            # a direct write still needs the token
            assert (await http.post("/registry/agents", json=signed_record(agents[0], "x").dump())).status_code == 401
    finally:
        stop([node])
    assert capture.connections == 0


async def test_the_allowlist_applies_to_relayed_records(tmp):
    listed, stranger = Identity.generate(), Identity.generate()
    (tmp / "allowlist").write_text(listed.did + "\n")
    a = Node("allow-a", tmp, extra=("--admission", "allowlist", "--allowlist", str(tmp / "allowlist")))
    b = Node("allow-b", tmp, join=a.hostport)  # open (loopback): registers anyone
    start([a, b])
    try:
        await up([a, b], "allow-a", "allow-b")
        async with httpx.AsyncClient(base_url=b.url, timeout=10) as http:
            for who, name in ((stranger, "unlisted"), (listed, "listed")):
                assert (await http.post("/registry/agents", json=signed_record(who, name).dump())).status_code == 201

        async def listed_relayed() -> bool:
            refused = (await stats(a)).get("registry.rejected.not_allowed", 0)
            return await record_of(a, listed.did) is not None and refused >= 1

        await await_for(listed_relayed, 15, "the listed record relayed, the other refused", [a, b])
        assert await record_of(a, stranger.did) is None and await record_of(b, stranger.did) is not None
    finally:
        stop([a, b])


# ---- a trusted federation: who may say what ------------------------------------------------------


@pytest.fixture(scope="module")
def trusted(tmp):
    """A and B with token admission, each trusting A, B and T; T is a key the test holds (a
    trusted node with no process: its gossip address is a FakeNode)."""
    ids = {name: keyed(tmp, name) for name in ("a", "b", "t")}
    (tmp / "nodes.txt").write_text("".join(f"{identity.did}\n" for identity, _ in ids.values()))
    common = (
        "--admission",
        "token",
        "--registration-token-file",
        str(tmp / "token"),
        "--trust",
        str(tmp / "nodes.txt"),
    )
    a = Node("node-a", tmp, key=ids["a"][1], extra=common)
    b = Node("node-b", tmp, key=ids["b"][1], join=a.hostport, extra=common)
    start([a, b])
    yield {"a": a, "b": b, "t": ids["t"][0], "nodes": [a, b]}
    stop([a, b])


async def test_a_token_federation_takes_relayed_records_only_from_trusted_nodes(trusted):
    a, b = trusted["a"], trusted["b"]
    await up([a, b], "node-a", "node-b")
    honest, via_t, via_stranger = Identity.generate(), Identity.generate(), Identity.generate()
    async with httpx.AsyncClient(timeout=10) as http:
        written = await http.post(
            f"{b.url}/registry/agents",
            json=signed_record(honest, "honest").dump(),
            headers={"Authorization": f"Bearer {TOKEN}"},
        )
        assert written.status_code == 201
        stranger = FakeNode(Identity.generate(), "node-x")
        refused = await http.post(
            f"{a.url}/gossip/packet",
            json=stranger.envelope("records", {"entries": [{"record": signed_record(via_stranger, "s").dump()}]}),
        )
        assert refused.status_code == 403 and refused.json()["error"]["code"] == "untrusted"
        t = FakeNode(trusted["t"], "node-t")
        relayed = await http.post(
            f"{a.url}/gossip/packet",
            json=t.envelope("records", {"entries": [{"record": signed_record(via_t, "t").dump()}]}),
        )
        assert relayed.status_code == 204

    async def both_in() -> bool:
        return await record_of(a, honest.did) is not None and await record_of(a, via_t.did) is not None

    await await_for(both_in, 15, "records from trusted nodes go live", trusted["nodes"])
    assert await record_of(a, via_stranger.did) is None


async def test_no_packet_steers_where_a_node_sends(trusted, capture):
    """P18: `Alive(addr=<capture>)` and `PingReq(target_addr=<capture>)` made the node POST there."""
    a, b = trusted["a"], trusted["b"]
    await up([a, b], "node-a", "node-b")
    t = FakeNode(trusted["t"], "node-t")  # trusted, not yet a member
    before = (await members(a))["node-b"]
    async with serve_app(t.app(), t.port), httpx.AsyncClient(base_url=a.url, timeout=10) as http:

        async def swim(*msgs, **kw) -> httpx.Response:
            return await http.post("/gossip/packet", json=t.envelope("swim", encode_packet(list(msgs)), **kw))

        # A non-member: about another member, about a stranger, about itself at another address.
        for msg in (Alive("node-b", capture.url, 99), Alive("node-y", capture.url, 0), Alive("node-t", capture.url, 0)):
            assert (await swim(msg)).status_code == 204
        assert set(await members(a)) == {"node-a", "node-b"}
        # A member (it announces itself at the address it signs with) about another member.
        assert (await swim(Alive("node-t", t.url, 0))).status_code == 204
        assert (await members(a))["node-t"]["addr"] == t.url
        assert (await swim(Alive("node-b", capture.url, before["incarnation"] + 100))).status_code == 204
        # Its ping-reqs naming the capture address, for a member and for a node nobody knows.
        assert (await swim(PingReq(7001, "node-b", capture.url))).status_code == 204
        assert (await swim(PingReq(7002, "node-z", capture.url))).status_code == 204
        # Claiming to be B, or signed by a key no trust list names.
        impostor = await swim(Alive("node-b", capture.url, 10_000), node="node-b", addr=b.url)
        assert impostor.status_code == 403 and impostor.json()["error"]["code"] == "impersonation"
        stranger = FakeNode(Identity.generate(), "node-x")
        untrusted = await http.post(
            "/gossip/packet", json=stranger.envelope("swim", encode_packet([Alive("node-b", capture.url, 10_000)]))
        )
        assert untrusted.status_code == 403 and untrusted.json()["error"]["code"] == "untrusted"

        # The helper answered T (a nack to the address T signs) instead of dialling the capture.
        async def nacked() -> bool:
            return t.nacked(7001) and t.nacked(7002)

        await await_for(nacked, 10, "A nacks both ping-reqs", [a, b])
        sent_before = (await stats(a)).get("gossip.sent", 0)

        async def gossiped_on() -> bool:  # many probe and gossip rounds later ...
            return (await stats(a)).get("gossip.sent", 0) >= sent_before + 40

        await await_for(gossiped_on, 30, "A keeps gossiping", [a, b])
    after = (await members(a))["node-b"]
    assert (after["addr"], after["state"]) == (b.url, "alive")  # ... B is where it was, alive
    assert after["incarnation"] < before["incarnation"] + 100
    assert (await stats(a)).get("gossip.dropped.unannounced", 0) == 0  # nothing even tried to reach it
    assert capture.connections == 0
