"""Gossip federation with real processes: `interlace serve` nodes on 127.0.0.1, each with its own
embedded store (no shared Redis), on the fast gossip profile.

A module-wide federation of three nodes (A and B without agents, C with the in-process echo
agent) serves the tests that leave it as they found it; the failure tests add their own node
(D) or heal what they break. Every wait polls an HTTP view with a bound; nothing sleeps.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from agents.echo import EchoWorker
from agents.links import HttpLink
from agents.worker import WorkerRunner
from registry.gossip.envelope import seal
from registry.gossip.messages import UserMsg, encode_packet
from registry.identity import Identity
from registry.records import sign
from schemas.agent_record import AgentRecord, Tombstone
from tests.conftest import free_port, interlace_cmd, sse_json, subprocess_env

pytestmark = pytest.mark.timeout(90)

NET = "interlace"


class Node:
    """One `interlace serve` process, with a data directory of its own that outlives restarts
    (so a restarted node keeps its key, hence its DID)."""

    def __init__(
        self,
        name: str,
        logdir: Path,
        *,
        join: str | None = None,
        echo: bool = False,
        port: int | None = None,
        key: Path | None = None,
        extra: tuple[str, ...] = (),
    ) -> None:
        self.name, self.logdir, self.join, self.echo, self.key = name, logdir, join, echo, key
        self.extra = extra  # more `interlace serve` flags
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    @property
    def hostport(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> Node:
        args = [
            "serve",
            "--port",
            str(self.port),
            "--node-id",
            self.name,
            "--gossip-profile",
            "fast",
            "--gossip-faults",
            "--log-level",
            "info",
        ]
        if self.join:
            args += ["--join", self.join]
        if not self.echo:
            args.append("--no-echo")
        if self.key:
            args += ["--node-key", str(self.key)]
        args += ["--data-dir", str(self.logdir / f"{self.name}-data")]
        args += self.extra
        log = open(self.logdir / f"{self.name}.log", "ab")
        self.proc = subprocess.Popen(interlace_cmd(*args), env=subprocess_env(), stdout=log, stderr=subprocess.STDOUT)
        log.close()
        return self

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()

    def log_tail(self, lines: int = 15) -> str:
        path = self.logdir / f"{self.name}.log"
        text = path.read_text(errors="replace").splitlines() if path.exists() else []
        return f"--- {self.name} ---\n" + "\n".join(text[-lines:])


def wait_for(check, timeout: float, what: str, nodes: list[Node] = (), interval: float = 0.05):
    """Poll ``check()`` (sync) until it returns a truthy value; fail with node logs."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(httpx.HTTPError):
            got = check()
            if got:
                return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s: {what}\n" + "\n".join(n.log_tail() for n in nodes))
        time.sleep(interval)


async def await_for(check, timeout: float, what: str, nodes: list[Node] = (), interval: float = 0.05):
    """The async twin of ``wait_for`` (``check`` is a coroutine function)."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(httpx.HTTPError):
            got = await check()
            if got:
                return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s: {what}\n" + "\n".join(n.log_tail() for n in nodes))
        await asyncio.sleep(interval)


def view(url: str) -> dict:
    return httpx.get(f"{url}/cluster/members", timeout=5).json()


def states(url: str) -> dict[str, tuple[str, int]]:
    return {m["id"]: (m["state"], m["incarnation"]) for m in view(url)["members"]}


def all_alive(nodes: list[Node], names: list[str]) -> bool:
    for node in nodes:
        seen = states(node.url)
        if any(seen.get(n, ("?",))[0] != "alive" for n in names):
            return False
    return True


def records_named(url: str, name: str) -> list[dict]:
    return [
        r
        for r in httpx.get(f"{url}/registry/agents", params={"limit": 500}, timeout=5).json()["agents"]
        if r["name"] == name
    ]


def signed_record(
    identity: Identity,
    name: str,
    *,
    seq: int = 1,
    ttl: int = 600,
    home: str = "elsewhere",
    description: str = "a test agent",
    endpoints: dict | None = None,
) -> AgentRecord:
    now = int(time.time())
    return sign(
        AgentRecord.model_validate(
            {
                "did": identity.did,
                "name": name,
                "description": description,
                "version": "1",
                "skills": [{"id": name, "name": name}],
                "endpoints": endpoints or {"a2a": "http://127.0.0.1:9/a2a"},
                "home_node": home,
                "seq": seq,
                "issued_at": now,
                "expires_at": now + ttl,
                "network": NET,
            }
        ),
        identity,
    )


def get_record(url: str, did: str) -> dict | None:
    resp = httpx.get(f"{url}/registry/agents/{did}", timeout=5)
    return resp.json() if resp.status_code == 200 else None


@pytest.fixture(scope="module")
def logdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cluster-logs")


@pytest.fixture(scope="module")
def fed(logdir):
    """A (seed), B and C (echo agent) joined through A; all alive everywhere, C's echo known."""
    a = Node("node-a", logdir).start()
    b = Node("node-b", logdir, join=a.hostport).start()
    c = Node("node-c", logdir, join=a.hostport, echo=True).start()
    nodes = [a, b, c]
    try:
        wait_for(
            lambda: all_alive(nodes, ["node-a", "node-b", "node-c"]), 30, "three nodes see each other alive", nodes
        )
        wait_for(lambda: all(records_named(n.url, "echo") for n in nodes), 15, "C's echo record reaches A and B", nodes)
        yield {"a": a, "b": b, "c": c, "nodes": nodes}
    finally:
        for node in nodes:
            node.stop()


@pytest.fixture
async def http():
    async with httpx.AsyncClient(timeout=15) as client:
        yield client


def text_message(text: str) -> dict:
    return {"role": "user", "parts": [{"kind": "text", "text": text}]}


async def sse_events(http: httpx.AsyncClient, url: str) -> list[dict]:
    async with http.stream("GET", url) as resp:
        assert resp.status_code == 200
        return await sse_json(resp)


# ---- membership and registry -----------------------------------------------------------------


def test_members_show_state_incarnation_and_signing_did(fed):
    got = view(fed["a"].url)
    assert got["node"] == "node-a" and got["profile"] == "fast" and got["network"] == NET
    by_id = {m["id"]: m for m in got["members"]}
    assert set(by_id) == {"node-a", "node-b", "node-c"}
    for name, node in (("node-b", fed["b"]), ("node-c", fed["c"])):
        member = by_id[name]
        assert member["state"] == "alive" and member["incarnation"] >= 0 and member["addr"] == node.url
        assert member["did"] == view(node.url)["did"]  # learnt from its signed packets
    assert by_id["node-a"]["self"] and by_id["node-a"]["did"] == got["did"]


def test_agent_registered_at_one_node_reaches_all_and_expires_everywhere(fed):
    nodes = fed["nodes"]
    me = Identity.generate()
    record = signed_record(me, "short-lived", ttl=4)
    assert httpx.post(f"{fed['b'].url}/registry/agents", json=record.dump(), timeout=5).status_code == 201
    wait_for(lambda: all(get_record(n.url, me.did) for n in nodes), 5, "the record reaches every node", nodes)
    for node in nodes:
        got = get_record(node.url, me.did)
        assert got["signature"] == record.signature and got["seq"] == record.seq  # unaltered
    # The lease runs out at the time the agent signed: every node drops it by itself.
    wait_for(lambda: not any(get_record(n.url, me.did) for n in nodes), 10, "the record expires everywhere", nodes)


def test_deregistration_tombstone_spreads(fed):
    nodes = fed["nodes"]
    me = Identity.generate()
    record = signed_record(me, "leaving")
    assert httpx.post(f"{fed['a'].url}/registry/agents", json=record.dump(), timeout=5).status_code == 201
    wait_for(lambda: all(get_record(n.url, me.did) for n in nodes), 5, "the record reaches every node", nodes)
    tomb = sign(Tombstone(did=me.did, seq=2, issued_at=int(time.time()), network=NET), me)
    resp = httpx.request("DELETE", f"{fed['c'].url}/registry/agents/{me.did}", json=tomb.dump(), timeout=5)
    assert resp.status_code == 200
    wait_for(lambda: not any(get_record(n.url, me.did) for n in nodes), 5, "the tombstone reaches every node", nodes)


# ---- routing across nodes ---------------------------------------------------------------------


async def test_task_submitted_at_a_runs_at_c_and_streams_back(fed, http):
    a, c = fed["a"], fed["c"]
    resp = await http.post(
        f"{a.url}/tasks",
        json={"agent": "echo", "message": text_message("across the federation"), "metadata": {"chunks": 3}},
    )
    assert resp.status_code == 202, resp.text
    task = resp.json()
    events = await sse_events(http, f"{a.url}/tasks/{task['id']}/events")
    chunks = [e["artifact"]["parts"][0]["text"] for e in events if e["kind"] == "artifact-update"]
    assert "".join(chunks) == "across the federation" and len(chunks) == 3
    assert events[-1]["kind"] == "status-update" and events[-1]["status"]["state"] == "completed"
    assert all(e["task_id"] == task["id"] for e in events)
    done = (await http.get(f"{a.url}/tasks/{task['id']}")).json()
    assert done["artifacts"][0]["parts"][0]["text"] == "across the federation"
    # It ran at C, as a task that says where it came from.
    ran = [
        t
        for t in (await http.get(f"{c.url}/tasks", params={"limit": 500})).json()["tasks"]
        if t["metadata"].get("interlace.forwarded_from", {}).get("task_id") == task["id"]
    ]
    assert len(ran) == 1 and ran[0]["status"]["state"] == "completed"
    assert ran[0]["metadata"]["interlace.forwarded_from"]["node"] == "node-a"
    # A task routed by capability (no agent named) at B reaches C's echo the same way.
    by_skill = (
        await http.post(
            f"{fed['b'].url}/tasks?wait=true&timeout=15",
            json={"query": {"skill": "echo", "tags": ["echo"]}, "message": text_message("by capability")},
        )
    ).json()
    assert by_skill["status"]["state"] == "completed", by_skill
    assert by_skill["artifacts"][0]["parts"][0]["text"] == "by capability"
    assert by_skill["route"]["agent"].startswith("fwd-") and by_skill["route"]["skill"] == "echo"


async def test_input_required_and_cancel_cross_nodes(fed, http):
    a, c = fed["a"], fed["c"]
    # input-required at C pauses the task at A; the follow-up given at A resumes it at C.
    asked = (
        await http.post(
            f"{a.url}/tasks?wait=true&timeout=15",
            json={"agent": "echo", "message": text_message("first"), "metadata": {"ask": "and then?"}},
        )
    ).json()
    assert asked["status"]["state"] == "input-required", asked
    assert asked["history"][-1]["parts"][0]["text"] == "and then?"
    done = (
        await http.post(
            f"{a.url}/tasks?wait=true&timeout=15", json={"task_id": asked["id"], "message": text_message("second")}
        )
    ).json()
    assert done["status"]["state"] == "completed" and done["artifacts"][0]["parts"][0]["text"] == "second"

    # A failure at C fails the task at A with the agent's message.
    failed = (
        await http.post(
            f"{a.url}/tasks?wait=true&timeout=15",
            json={"agent": "echo", "message": text_message("x"), "metadata": {"fail": "no can do"}},
        )
    ).json()
    assert failed["status"]["state"] == "failed" and failed["status"]["message"]["parts"][0]["text"] == "no can do"

    # Cancel at A reaches the task running at C.
    slow = (
        await http.post(
            f"{a.url}/tasks", json={"agent": "echo", "message": text_message("slow"), "metadata": {"delay_ms": 30_000}}
        )
    ).json()

    async def remote():
        tasks = (await http.get(f"{c.url}/tasks", params={"limit": 500})).json()["tasks"]
        found = [t for t in tasks if t["metadata"].get("interlace.forwarded_from", {}).get("task_id") == slow["id"]]
        return found[0] if found and found[0]["status"]["state"] == "working" else None

    running = await await_for(remote, 10, "the slow task runs at C", fed["nodes"])
    assert (await http.post(f"{a.url}/tasks/{slow['id']}:cancel")).json()["status"]["state"] == "canceled"

    async def canceled_at_c():
        return (await http.get(f"{c.url}/tasks/{running['id']}")).json()["status"]["state"] == "canceled"

    await await_for(canceled_at_c, 10, "the cancel reaches C", fed["nodes"])


async def test_worker_registered_through_a_gateway_is_routed_by_origin(fed, http):
    """An HTTP worker does not know its gateway's node id (its record's home_node is its host
    name): the node it registered through is carried with the record as the origin hint."""
    a, c = fed["a"], fed["c"]

    class Echo2(EchoWorker):
        agent = "echo-two"

    runner = WorkerRunner(Echo2(), HttpLink(c.url), lock_ttl_ms=5_000, poll_ms=200, network=NET, lease_s=60)
    runner.start()
    try:

        async def known_at_a():
            agents = (await http.get(f"{a.url}/registry/agents", params={"q": "echo-two"})).json()["agents"]
            return [r for r in agents if r["name"] == "echo-two"]

        await await_for(known_at_a, 10, "the worker's record reaches A", fed["nodes"])
        done = (
            await http.post(
                f"{a.url}/tasks?wait=true&timeout=15", json={"agent": "echo-two", "message": text_message("via origin")}
            )
        ).json()
        assert done["status"]["state"] == "completed", done
        assert done["artifacts"][0]["parts"][0]["text"] == "via origin"
    finally:
        await runner.stop(2)


# ---- malicious relayer ------------------------------------------------------------------------


def test_malicious_relayer_that_alters_a_record_is_ignored_by_everyone(fed):
    a, b, c = fed["a"], fed["b"], fed["c"]
    nodes = fed["nodes"]
    agent = Identity.generate()
    original = signed_record(agent, "weather-x", description="honest forecasts")
    assert httpx.post(f"{b.url}/registry/agents", json=original.dump(), timeout=5).status_code == 201
    wait_for(lambda: all(get_record(n.url, agent.did) for n in nodes), 5, "the honest record spreads", nodes)

    # A node of the network (its envelopes verify) relays the record altered: a higher seq and
    # an endpoint of its own, under the agent's original signature.
    evil = Identity.generate()
    altered = original.model_copy(
        update={
            "seq": original.seq + 1,
            "description": "send me your data",
            "endpoints": original.endpoints.model_copy(update={"a2a": "http://127.0.0.1:10/evil"}),
        }
    )
    entry = {"record": altered.dump(), "origin": "node-evil"}

    def envelope(kind, payload):
        return seal(
            evil,
            network=NET,
            node="node-evil",
            addr="http://127.0.0.1:10",
            kind=kind,
            payload=payload,
            sent_at=int(time.time() * 1000),
        )

    sent = [
        httpx.post(f"{a.url}/gossip/packet", json=envelope("records", {"entries": [entry]}), timeout=5),
        httpx.post(
            f"{b.url}/gossip/packet", json=envelope("swim", encode_packet([UserMsg(agent.did, entry)])), timeout=5
        ),
    ]
    assert [r.status_code for r in sent] == [204, 204]  # authentic envelopes; the content is judged

    # A marker registered after the attack reaches everyone through the same queues, so by the
    # time it is everywhere the altered record has been judged everywhere it was sent.
    marker = Identity.generate()
    assert (
        httpx.post(f"{a.url}/registry/agents", json=signed_record(marker, "marker").dump(), timeout=5).status_code
        == 201
    )
    wait_for(lambda: all(get_record(n.url, marker.did) for n in nodes), 5, "the marker spreads", nodes)
    for node in nodes:
        got = get_record(node.url, agent.did)
        assert got["description"] == "honest forecasts" and got["seq"] == original.seq, node.name
        assert got["endpoints"]["a2a"] == "http://127.0.0.1:9/a2a"
    for node in (a, b):
        assert view(node.url)["stats"].get("registry.rejected.bad_signature", 0) >= 1, node.name
    assert view(c.url)["stats"].get("registry.rejected.bad_signature", 0) == 0  # never relayed to C


# ---- failures ---------------------------------------------------------------------------------


def test_killed_node_is_declared_dead_unrouted_rejoins_with_higher_incarnation_then_leaves(fed, logdir):
    a, b, c = fed["a"], fed["b"], fed["c"]
    d = Node("node-d", logdir, join=f"{a.hostport},{b.hostport}").start()
    # D's agent: an echo worker registered through D (C owns the name "echo": names belong to
    # the first DID that takes them, so D's agent has a name of its own)
    log = open(logdir / "worker-d.log", "ab")
    worker = subprocess.Popen(
        interlace_cmd("worker", "echo", "--gateway", d.url, "--name", "echo-d"),
        env=subprocess_env(),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    log.close()
    everyone = [a, b, c, d]
    try:
        wait_for(lambda: all_alive(everyone, ["node-a", "node-b", "node-c", "node-d"]), 30, "D joins", everyone)
        d_echo = wait_for(lambda: records_named(a.url, "echo-d"), 10, "D's agent's record reaches A", everyone)[0]
        ok = httpx.post(
            f"{a.url}/tasks?wait=true&timeout=15",
            timeout=20,
            json={"agent": d_echo["did"], "message": text_message("to d")},
        ).json()
        assert ok["status"]["state"] == "completed", ok
        inc_before = states(a.url)["node-d"][1]

        d.kill()  # SIGKILL: no leave
        killed_at = time.monotonic()
        survivors = [a, b, c]
        bound = max(view(n.url)["detection_bound_s"] for n in survivors)
        wait_for(
            lambda: all(states(n.url)["node-d"][0] == "dead" for n in survivors),
            3 * bound + 5,
            "every survivor declares D dead",
            survivors,
        )
        detected_s = time.monotonic() - killed_at
        print(f"\nSIGKILLed node declared dead by all 3 survivors in {detected_s:.2f} s (bound {bound:.2f} s)")
        assert detected_s <= bound + 1.0  # the configured bound, plus this test's polling

        # Its agents stop being routed to.
        gone = httpx.post(f"{a.url}/tasks", json={"agent": d_echo["did"], "message": text_message("to d")}, timeout=5)
        assert gone.status_code == 404 and gone.json()["error"]["code"] == "unknown_agent"
        assert "home node is down" in gone.json()["error"]["message"]
        agents = httpx.get(f"{a.url}/registry/agents", params={"limit": 500}, timeout=5).json()["agents"]
        others = [r["did"] for r in agents if r["did"] != d_echo["did"]]
        by_skill = httpx.post(
            f"{a.url}/tasks",
            timeout=5,
            json={"query": {"skill": "echo", "exclude": others}, "message": text_message("to d")},
        )
        assert by_skill.status_code == 404 and by_skill.json()["error"]["code"] == "no_match", by_skill.text
        closest = by_skill.json()["error"]["closest"]  # the match that cannot be reached, and why
        assert [(c["did"], c["excluded_by"]) for c in closest] == [(d_echo["did"], ["reachable"])]
        assert closest[0]["reasons"]["reachable"] == "its home node is down"

        dead_inc = states(a.url)["node-d"][1]
        d.start()  # same node id and address
        wait_for(lambda: all(states(n.url)["node-d"][0] == "alive" for n in survivors), 30, "D rejoins", everyone)
        for node in survivors:
            state, inc = states(node.url)["node-d"]
            assert inc > max(inc_before, dead_inc), (node.name, inc, inc_before, dead_inc)
        assert view(d.url)["incarnation"] > dead_inc

        d.stop()  # SIGTERM: a graceful leave, which everyone records as such (not as a failure)
        wait_for(lambda: all(states(n.url)["node-d"][0] == "left" for n in survivors), 10, "D leaves", survivors)
    finally:
        worker.kill()
        worker.wait(10)
        d.kill()


def test_partition_heals_and_records_converge(fed):
    a, b, c = fed["a"], fed["b"], fed["c"]
    nodes = fed["nodes"]
    assert httpx.post(f"{c.url}/gossip/faults", json={"block": ["*"]}, timeout=5).status_code == 200
    try:
        wait_for(lambda: all(states(n.url)["node-c"][0] == "dead" for n in (a, b)), 20, "A and B declare C dead", nodes)
        wait_for(
            lambda: all(states(c.url)[n][0] == "dead" for n in ("node-a", "node-b")),
            20,
            "C declares A and B dead",
            nodes,
        )
        gone = httpx.post(f"{a.url}/tasks", json={"agent": "echo", "message": text_message("x")}, timeout=5)
        assert gone.status_code == 404
        me = Identity.generate()
        during = signed_record(me, "during-partition")
        assert httpx.post(f"{a.url}/registry/agents", json=during.dump(), timeout=5).status_code == 201
        wait_for(lambda: get_record(b.url, me.did), 5, "B gets the record written during the partition", nodes)
        assert get_record(c.url, me.did) is None
    finally:
        assert httpx.post(f"{c.url}/gossip/faults", json={"block": []}, timeout=5).status_code == 200
    wait_for(lambda: all_alive(nodes, ["node-a", "node-b", "node-c"]), 30, "the partition heals", nodes)
    wait_for(lambda: get_record(c.url, me.did), 10, "C gets the record written during the partition", nodes)
    # C refuted the others' verdict by raising its incarnation; routing to it works again.
    assert states(a.url)["node-c"][1] >= 1
    done = httpx.post(
        f"{a.url}/tasks?wait=true&timeout=15", timeout=20, json={"agent": "echo", "message": text_message("healed")}
    ).json()
    assert done["status"]["state"] == "completed", done
