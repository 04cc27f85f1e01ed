"""Gossip federation of gateway nodes: membership, registry anti-entropy, routing across nodes.

Each gateway runs one SWIM + Lifeguard member (``registry.gossip.swim``) over HTTP
(``registry.gossip.transport``), with signed envelopes (``registry.gossip.envelope``) and the
registry's anti-entropy as its delegate (``registry.gossip.sync``). This module is the glue:

  POST /gossip/packet     a signed envelope from a peer (204; 4xx with a reason code if refused,
                          503 ``overloaded`` when the gossip inbox is full)
  GET  /cluster/members   this node's view: members with state and incarnation, counters
  POST /gossip/faults     test-only (``gossip_faults``, loopback): {"block": [addr, ...] | ["*"]}

Configuration (``gateway.core.config``): ``join`` (seed list ``host:port,...``), ``trust`` (a file of
node DIDs allowed to gossip, one per line; absent = any node of the network, which only a loopback
bind may choose: elsewhere gossip refuses to start without it, as admission does without a token or
an allowlist), ``public_url`` (the address peers reach this node at; default ``http://host:port``),
``gossip_profile`` (``lan``, ``local`` or ``fast``), ``gossip`` (off: no membership at all; nodes
that share one Redis need none). The node's key, whose DID the other nodes' trust files list, is
the same on every start (``gateway.core.node_identity``).

Gossip starts (the node joins through its seeds) only once the HTTP listener is bound: the
server calls ``Cluster.join`` (``gateway.serving.listening``); a node that fails to bind stops
without ever having announced itself.

Routing across nodes (the choice, documented here): every record names its ``home_node``; a
home is a member id, through membership mapped to that member's public URL (the record's
``home_node`` when it names a member, else the origin hint that gossip carries with the record,
see ``registry.gossip.sync``). ``Runtime.resolve_agent`` asks ``Cluster.place`` which bus stream
a task goes to:

1. a record whose home is this node, is unknown, or that has no ``bus`` endpoint is routed as
   on a single node (its stream here; agents with protocol endpoints are for the protocol
   connectors, which reach the agent's own endpoint directly);
2. otherwise a record whose home is an *alive* member (or, failing that, a suspect one) is
   reached through a forwarding connector: a ``Worker`` on a per-record stream here
   (``fwd-<hash>``) that submits the task to the home's internal API by DID
   (``POST {home}/tasks``), follows ``GET {home}/tasks/{id}/events`` (SSE) and maps every event
   onto the local task, continues it there after input-required (``POST {home}/tasks`` with
   ``task_id``) and cancels it there when the local task is canceled
   (``POST {home}/tasks/{id}:cancel``). Local records win over remote ones;
3. records whose home is dead or has left are not routed to (``UnknownAgent``), and are not
   listed either: ``Cluster.reachable`` is the runtime's test of which agents every protocol
   face lists (``Runtime.known_agents``), and each membership change is signalled to the
   runtime (``Runtime.agents_changed``), so MCP sessions get ``tools/list_changed``.

Forwarded requests carry no caller credentials: each is signed with this node's key (RFC 9421,
keyid its ``did:key`` verification method, covering method, target URI, authority, the body's
``Content-Digest`` and ``Interlace-On-Behalf-Of``; valid for 60 s, nonce single-use; see
``gateway.core.httpsig``) and asserts the local task's owner in ``Interlace-On-Behalf-Of``. The
home believes the assertion only from a node it trusts (``Cluster.trusts``, checked by
``gateway.authn.NodeSignatures``), so the task it creates has the original owner, and following,
continuing and cancelling it work as that owner. Trusted nodes: with ``--trust``, exactly the
DIDs in that file (authoritative); without it, the DID of any member currently alive or suspect
whose packets this node has verified. The second is as strong as admission to the gossip
itself, which without ``--trust`` (on loopback only) is any node of the network.

The remote task id is kept in the backend's key/value store under the local task id, so a
redelivered forwarded task follows the remote task instead of submitting it twice. A task that
arrived forwarded is never forwarded again (no chains when two nodes' views disagree).

Trust model and limits:

* every packet is authenticated hop by hop (signed envelope: network id, trust list, freshness,
  replay); records are authenticated end to end by their agents' signatures, so a relay can
  neither forge nor alter them;
* a member's identity is its node DID (bound to its member id by the transport): only the member
  itself moves its address, a ping-req reaches only a member at the address this node holds,
  and this node POSTs only to seeds, members' addresses and the signed address of the packet it
  answers (``registry.gossip.swim``, ``registry.gossip.transport``). What SWIM relays about the
  *state* of other members (alive/suspect/dead) is believed as in SWIM, from members: a trusted
  node could still lie about a third node's health, or name a member it is the first to tell
  this node of under its own DID;
* a trusted node is believed about the owners it asserts (and their groups): a federation's
  nodes must share one namespace of principals (one issuer, the same API key names);
* a record relayed by gossip passes this node's admission as a direct write does
  (``registry_api.relay_refusal``): the allowlist applies to it; a token network takes relayed
  records only from the nodes of ``--trust`` (none without it), since a token proves nothing
  once relayed; ``open`` takes them all. The name rules (``registry.names``: a relayed record
  that would squat a name is refused), revocations and the lease cap apply to it here as to a
  direct write;
* an operator's revocation (``/registry/revocations``) is signed by the node it was made at and
  relayed like a record; a node believes a relayed one only from a node it trusts as above
  (``Registry.revokers``: the trust list, else a live member);
* each push/pull carries the whole digest (did -> seq), fine up to ~10^4 records; beyond,
  bucketed (Merkle) digests would be needed;
* nodes sharing one Redis already share registry and bus; if they also gossip with each other,
  a task for an agent "homed" at a sibling takes one HTTP hop it did not need.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import json
import logging
import random
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from agents.links import HttpLink
from agents.worker import TaskFailed, Worker, WorkerRunner
from gateway.authn import ON_BEHALF_OF, on_behalf_of
from gateway.core.backends import StoredEvent
from gateway.core.config import Config, is_loopback
from gateway.core.egress import Egress
from gateway.core.http import HttpError, json_response, read_json
from gateway.core.http_client import PooledClient, TransportError
from gateway.core.httpsig import RequestSigner
from gateway.core.node_identity import node_key_path
from gateway.core.principal import SYSTEM
from gateway.registry_api import relay_refusal
from gateway.supervisor import Supervisor
from registry.did_list import load_did_list
from registry.gossip.envelope import ADDR, EnvelopeRejected
from registry.gossip.swim import MemberEvent, State, SwimNode
from registry.gossip.sync import RegistrySync
from registry.gossip.transport import HttpGossip, detection_bound, profile
from registry.identity import Identity
from registry.service import stream_of
from schemas import Message, Task, TaskArtifactUpdate, TaskEvent, TaskState, TaskStatusUpdate
from schemas.agent_record import AgentRecord

log = logging.getLogger("interlace.cluster")

FORWARDED_FROM = "interlace.forwarded_from"  # task metadata at the home node: {node, task_id}
_LOOPBACK = {"127.0.0.1", "::1", "localhost"}
_KEEPALIVE_S = 4.0  # below uvicorn's 5 s keep-alive timeout
_REJECT_STATUS = {
    "malformed": 400,
    "bad_signature": 401,
    "stale": 401,
    "replayed": 401,
    "wrong_network": 403,
    "untrusted": 403,
    "impersonation": 403,
    "overloaded": 503,
}


def check_config(config: Config) -> None:
    """Raise ValueError naming what is wrong with the gossip settings (before anything starts)."""
    if not config.gossip:
        return
    profile(config.gossip_profile)
    for url in [advertised_url(config.host, config.port, config.public_url), *seed_urls(config.join)]:
        if not ADDR.match(url):
            raise ValueError(f"{url!r} is not a base URL like http://host:port (check --public-url / --join)")
    if not config.trust:
        if not is_loopback(config.host):
            raise ValueError(
                f"gossip on {config.host} needs --trust FILE, the DIDs of the member nodes (this node's: "
                f"interlace keys show {node_key_path(config)}), or --no-gossip"
            )
        return
    try:
        trusted = load_did_list(config.trust)
    except OSError as exc:
        raise ValueError(f"cannot read the trust file {config.trust}: {exc.strerror}") from None
    if not trusted:
        raise ValueError(f"the trust file {config.trust} lists no node DID")
    wrong = sorted(did for did in trusted if not did.startswith("did:key:"))
    if wrong:
        raise ValueError(f"the trust file {config.trust} lists {wrong[0]!r}, which is no node DID (did:key:...)")


def seed_urls(join: str | None) -> list[str]:
    """``host:port,host:port`` (or full URLs) -> base URLs."""
    out = []
    for item in (join or "").split(","):
        item = item.strip().rstrip("/")
        if item:
            out.append(item if "://" in item else f"http://{item}")
    return out


def advertised_url(host: str, port: int, public_url: str | None) -> str:
    if public_url:
        return public_url.rstrip("/")
    if host in ("0.0.0.0", "::", ""):
        host = socket.gethostname()
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


class HomeGone(Exception):
    """The forwarded task's home node was declared dead (or left) while it ran."""


class Cluster:
    """One gateway's membership, anti-entropy and cross-node routing (see the module docstring)."""

    def __init__(self, supervisor: Supervisor) -> None:
        runtime = supervisor.runtime
        cfg = runtime.config
        check_config(cfg)
        self.supervisor, self.runtime, self.node_id = supervisor, runtime, runtime.node_id
        self.profile_name = cfg.gossip_profile
        self.swim_config = profile(cfg.gossip_profile)
        self.addr = advertised_url(cfg.host, cfg.port, cfg.public_url)
        self.seeds = seed_urls(cfg.join)
        trusted = load_did_list(cfg.trust) if cfg.trust else None
        admit = functools.partial(relay_refusal, runtime.admission, load_did_list(cfg.allowlist), trusted)
        self.sync = RegistrySync(runtime.registry, runtime.node_id, admit)
        self.node = SwimNode(runtime.node_id, self.addr, self.swim_config, rng=random.Random(), delegate=self.sync)
        self.client: httpx.AsyncClient | None = None  # made in start (an SSL context costs ms)
        self.gossip = HttpGossip(
            self.node,
            runtime.identity,
            cfg.network,
            client=None,
            max_age_ms=cfg.skew_s * 1000,
            trusted=trusted,
            on_events=self._on_events,
        )
        self.sync.attach(self.gossip)
        self._forwarders: dict[str, WorkerRunner] = {}  # stream -> runner
        self._links: dict[str, _HomeLink] = {}  # home base URL -> pooled client of its task API
        self._gone: dict[str, asyncio.Event] = {}  # member id -> set while it is dead or left
        self._sweeper: asyncio.Task | None = None
        self.joined = False
        runtime.placement, runtime.reachable = self.place, self.reachable
        # revocations relayed by gossip count when signed by a node trusted as a forwarder is
        runtime.registry.revokers = lambda did: did == runtime.identity.did or self.trusts(did)

    # ---- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        # Gossip and forwarding dial peers under the egress policy; the seeds are the operator's own.
        self.egress = self.runtime.egress.allowing(*self.seeds)
        self.client = self.gossip.client = self.egress.httpx_client(
            limits=httpx.Limits(max_connections=256, max_keepalive_connections=64, keepalive_expiry=_KEEPALIVE_S)
        )
        await self.sync.start()
        self._sweeper = asyncio.create_task(self._sweep(), name="forwarder-sweep")

    def join(self) -> None:
        """Start gossip and join through the seeds; called once the HTTP listener is bound
        (``gateway.serving.listening``), never before: a node that cannot serve its address
        must not announce it. Idempotent."""
        if self.joined:
            return
        self.joined = True
        self.gossip.start(self.seeds)
        log.info(
            "gossip started",
            extra={"node": self.node_id, "addr": self.addr, "seeds": self.seeds, "profile": self.profile_name},
        )

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        grace = self.runtime.config.shutdown_grace_s
        await asyncio.gather(*(self.supervisor.stop(r) for r in self._forwarders.values()), return_exceptions=True)
        self._forwarders.clear()
        await self.gossip.stop(leave_timeout_s=min(2.0, grace))
        await self.sync.stop()
        await asyncio.gather(*(link.close() for link in self._links.values()), return_exceptions=True)
        if self.client is not None:
            await self.client.aclose()

    def _on_events(self, events: list[MemberEvent]) -> None:
        for ev in events:
            log.info(
                "member %s",
                ev.new.value if ev.new else "reaped",
                extra={
                    "member": ev.member,
                    "addr": ev.addr,
                    "incarnation": ev.incarnation,
                    "old": ev.old.value if ev.old else None,
                },
            )
            gone = self._gone.setdefault(ev.member, asyncio.Event())
            if ev.new in (State.DEAD, State.LEFT, None):
                gone.set()
            elif gone.is_set():
                self._gone[ev.member] = asyncio.Event()
        self.runtime.agents_changed()  # the agents homed at these members may come or go

    # ---- placement ----------------------------------------------------------------------------

    def home_of(self, record: AgentRecord) -> str | None:
        """The member the record's agent lives at, or None when unknown (treated as local)."""
        members = self.node.members
        if record.home_node in members:
            return record.home_node
        origin = self.sync.origin.get(record.did)
        return origin if origin in members else None

    def _remote_home(self, record: AgentRecord) -> str | None:
        """The member a task for ``record`` is forwarded to; None when it is routed here."""
        home = self.home_of(record)
        if home is None or home == self.node_id or record.endpoints.bus is None:
            return None
        return home

    def reachable(self, record: AgentRecord) -> bool:
        """Whether ``place`` would place a task on ``record`` (routed here, or its home is alive or
        suspect); starts nothing."""
        home = self._remote_home(record)
        return home is None or self.node.members[home].state in (State.ALIVE, State.SUSPECT)

    def trusts(self, did: str) -> bool:
        """Whether a request signed by ``did`` comes from a node that may assert task owners here:
        on the trust list when there is one, else a live member's (module docstring)."""
        if self.gossip.trusted is not None:
            return did in self.gossip.trusted
        dids = self.gossip.dids
        return any(dids.get(m.id) == did for m in self.node.members.values() if m.state in (State.ALIVE, State.SUSPECT))

    def place(self, records: list[AgentRecord]) -> str | None:
        """The bus stream for a task to one of ``records`` (see the module docstring)."""
        local, alive, suspect = [], [], []
        for record in records:
            home = self._remote_home(record)
            if home is None:
                local.append(record)
                continue
            state = self.node.members[home].state
            if state is State.ALIVE:
                alive.append((record, home))
            elif state is State.SUSPECT:
                suspect.append((record, home))
        if local:
            return stream_of(local[0])
        if alive or suspect:
            record, home = random.choice(alive or suspect)
            return self._forwarder(record.did, home)
        return None

    def _forwarder(self, did: str, home: str) -> str:
        stream = "fwd-" + hashlib.sha256(f"{home}\n{did}".encode()).hexdigest()[:32]
        if stream not in self._forwarders:
            # it serves a record published by someone else: it registers nothing of its own
            self._forwarders[stream] = self.supervisor.start(ForwardWorker(self, stream, did, home), register=False)
            log.info("forwarding connector started", extra={"did": did, "home": home, "stream": stream})
        return stream

    async def _sweep(self) -> None:
        """Stop forwarders whose record is gone and whose stream is empty."""
        while True:
            await asyncio.sleep(30)
            for stream, runner in list(self._forwarders.items()):
                worker: ForwardWorker = runner.worker  # type: ignore[assignment]
                if self.runtime.registry.get(worker.did) is not None:
                    continue
                with contextlib.suppress(Exception):
                    if await self.runtime.backend.bus.depth(stream) == 0:
                        del self._forwarders[stream]
                        await self.supervisor.stop(runner)

    def link(self, home: str) -> tuple[_HomeLink, asyncio.Event]:
        """The home's task API client and an event set if the home is declared dead; raises
        TaskFailed when the home is not a live member."""
        member = self.node.members.get(home)
        if member is None or member.state not in (State.ALIVE, State.SUSPECT):
            raise TaskFailed(f"the agent's home node {home} is unreachable")
        link = self._links.get(member.addr)
        if link is None:
            link = self._links[member.addr] = _HomeLink(member.addr, self.runtime.identity, self.egress)
        return link, self._gone.setdefault(home, asyncio.Event())

    # ---- views ------------------------------------------------------------------------------

    def members_view(self) -> dict[str, Any]:
        now = time.monotonic()
        members = [
            {
                "id": m.id,
                "addr": m.addr,
                "state": m.state.value,
                "incarnation": m.incarnation,
                "did": self.runtime.identity.did if m.id == self.node_id else self.gossip.dids.get(m.id),
                "since_s": round(max(0.0, now - m.state_change), 3),
                "self": m.id == self.node_id,
            }
            for m in sorted(self.node.members.values(), key=lambda m: m.id)
        ]
        return {
            "node": self.node_id,
            "did": self.runtime.identity.did,
            "addr": self.addr,
            "network": self.runtime.config.network,
            "incarnation": self.node.incarnation,
            "profile": self.profile_name,
            "health": self.node.awareness.score,
            "detection_bound_s": round(detection_bound(self.swim_config, len(members)), 3),
            "members": members,
            "stats": {
                **{f"gossip.{k}": v for k, v in self.gossip.stats.items()},
                **{f"registry.{k}": v for k, v in self.sync.stats.items()},
            },
            "forwarders": len(self._forwarders),
            "blocked": self.gossip.blocked,
        }


class _HomeLink(HttpLink):
    """A home node's task API (``HttpLink``'s SSE reader), every request signed with this node's
    key, on a pool that drops idle connections before the server's keep-alive timeout (uvicorn:
    5 s), so a request never races the server closing the connection it reuses."""

    def __init__(self, base_url: str, identity: Identity, egress: Egress) -> None:  # HttpLink's only makes its client
        self.http = PooledClient(
            egress,
            base_url=base_url,
            timeout_s=30.0,
            keepalive_s=_KEEPALIVE_S,
            sign=RequestSigner(identity, covered_headers=[ON_BEHALF_OF]).headers_for,
        )

    def task_events(self, task_id: str, after: str | None, owner: dict[str, str]) -> AsyncIterator[StoredEvent]:
        return self.follow(f"/tasks/{task_id}/events", after, owner)


async def _until(events: AsyncIterator, gone: asyncio.Event) -> AsyncIterator:
    """Items of ``events`` until it ends; HomeGone as soon as ``gone`` is set."""
    it = events.__aiter__()
    waiter = asyncio.ensure_future(gone.wait())
    try:
        while True:
            step = asyncio.ensure_future(it.__anext__())
            await asyncio.wait({step, waiter}, return_when=asyncio.FIRST_COMPLETED)
            if not step.done():
                step.cancel()
                raise HomeGone()
            try:
                yield step.result()
            except StopAsyncIteration:
                return
    finally:
        waiter.cancel()
        with contextlib.suppress(Exception):
            await it.aclose()


class ForwardWorker(Worker):
    """Runs a task on the agent's home node and mirrors its events here (module docstring)."""

    version = "1"
    concurrency = 64

    def __init__(self, cluster: Cluster, stream: str, did: str, home: str) -> None:
        self.cluster, self.agent, self.did, self.home = cluster, stream, did, home
        self.description = f"forwards tasks for {did} to node {home}"

    async def handle(self, task: Task) -> AsyncIterator[TaskEvent]:
        if FORWARDED_FROM in task.metadata:  # our view and the sender's disagree: no chains
            raise TaskFailed(f"the agent does not live at node {self.cluster.node_id} (its home is {self.home})")
        link, gone = self.cluster.link(self.home)
        # the home's task gets the same owner; the gateway's own tasks go as this node (no assertion)
        owner = on_behalf_of(task.owner, task.owner_groups or ()) if task.owner not in (None, SYSTEM.id) else {}
        kv = self.cluster.runtime.backend.kv
        key = f"fwd:{task.id}"
        raw = await kv.get(key)
        remote: dict[str, Any] = json.loads(raw) if raw else {}
        turns = sum(1 for m in task.history if m.role == "user")
        message = [m for m in task.history if m.role == "user"][-1]
        if remote.get("home") != self.home:
            remote = {
                "home": self.home,
                "task_id": await self._submit(link, task, message, owner),
                "turns": turns,
                "after": None,
            }
            await kv.set(key, json.dumps(remote), self.cluster.runtime.config.retention_s)
        elif remote["turns"] < turns:  # a follow-up after input-required
            await self._post(link, "/tasks", {"task_id": remote["task_id"], "message": _outgoing(message)}, owner)
            remote["turns"] = turns
            await kv.set(key, json.dumps(remote), self.cluster.runtime.config.retention_s)
        settled = False
        try:
            async for remote_event in self._follow(link, gone, remote, owner):
                event = _mirror(task, remote_event)
                if event is None:
                    continue
                if isinstance(event, TaskStatusUpdate) and event.status.state.interrupted:
                    await kv.set(key, json.dumps(remote), self.cluster.runtime.config.retention_s)
                settled = isinstance(event, TaskStatusUpdate) and event.final
                yield event
                if settled:
                    return
        finally:
            # Interrupted: by a cancel (the local task is canceled by now: cancel it at the
            # home too), or by this node shutting down (leave it running; a redelivery follows it).
            current = None if settled else await asyncio.shield(self.cluster.runtime.backend.tasks.get(task.id))
            if current is not None and current.state is TaskState.CANCELED:
                await asyncio.shield(self._cancel_remote(link, remote["task_id"], owner))

    async def _follow(
        self, link: _HomeLink, gone: asyncio.Event, remote: dict[str, Any], owner: dict[str, str]
    ) -> AsyncIterator[TaskEvent]:
        """The remote task's events as events of the local task; resumes a dropped stream while
        the home lives (a few times), fails the task when the home is gone."""
        task_id = remote["task_id"]
        for attempt in range(5):
            try:
                async for stored in _until(link.task_events(task_id, remote["after"], owner), gone):
                    remote["after"] = stored.event_id
                    yield stored.event
                    if isinstance(stored.event, TaskStatusUpdate) and stored.event.final:
                        return
            except HomeGone:
                raise TaskFailed(f"the agent's home node {self.home} failed while running the task") from None
            except (TransportError, OSError) as exc:
                log.warning("lost the remote event stream", extra={"home": self.home, "error": exc.__class__.__name__})
            await asyncio.sleep(0.2 * (attempt + 1))
        raise TaskFailed(f"lost contact with the agent's home node {self.home}")

    async def _submit(self, link: _HomeLink, task: Task, message: Message, owner: dict[str, str]) -> str:
        metadata = {**task.metadata, FORWARDED_FROM: {"node": self.cluster.node_id, "task_id": task.id}}
        body = await self._post(
            link,
            "/tasks",
            {"agent": self.did, "message": _outgoing(message), "context_id": task.context_id, "metadata": metadata},
            owner,
        )
        return body["id"]

    async def _post(self, link: _HomeLink, path: str, body: dict[str, Any], owner: dict[str, str]) -> dict[str, Any]:
        try:
            resp = await link.http.request("POST", path, json=body, headers=owner, timeout=10.0)
        except (TransportError, OSError) as exc:
            raise TaskFailed(f"the agent's home node {self.home} is unreachable ({exc.__class__.__name__})") from None
        if resp.status_code >= 400:
            try:
                detail = resp.json().get("error", {}).get("message") or resp.text[:200]
            except ValueError:
                detail = resp.text[:200]
            raise TaskFailed(f"node {self.home} refused the task: {detail}")
        return resp.json()

    async def _cancel_remote(self, link: _HomeLink, task_id: str, owner: dict[str, str]) -> None:
        try:
            await link.http.request("POST", f"/tasks/{task_id}:cancel", headers=owner, timeout=3.0)
        except Exception:
            log.info("could not cancel the remote task", extra={"home": self.home, "task_id": task_id})


def _outgoing(message: Message) -> dict[str, Any]:
    return message.model_dump(mode="json", exclude_none=True, exclude={"task_id", "context_id"})


def _mirror(task: Task, event: TaskEvent) -> TaskEvent | None:
    """A remote task's event as the same event of the local task (None: nothing to mirror)."""
    if isinstance(event, TaskArtifactUpdate):
        return task.artifact_event(event.artifact, append=event.append, last_chunk=event.last_chunk)
    message = event.status.message
    if event.status.state is TaskState.WORKING and message is None:
        return None  # the local runner already marked the task working
    if message is not None:
        message = message.model_copy(update={"task_id": task.id, "context_id": task.context_id})
    return task.status_event(event.status.state, message)


# ---- HTTP -----------------------------------------------------------------------------------


def _cluster(request: Request) -> Cluster:
    cluster = getattr(request.app.state, "cluster", None)
    if cluster is None:
        raise HttpError(404, "not_found", "gossip is disabled on this node")
    return cluster


async def gossip_packet(request: Request) -> Response:
    cluster = _cluster(request)
    data = await read_json(request)
    try:
        cluster.gossip.deliver(data)
    except EnvelopeRejected as exc:
        raise HttpError(_REJECT_STATUS.get(exc.code, 400), exc.code, exc.message) from None
    return Response(status_code=204)


async def members(request: Request) -> Response:
    return json_response(_cluster(request).members_view())


async def faults(request: Request) -> Response:
    cluster = _cluster(request)
    if not cluster.runtime.config.gossip_faults or (request.client.host if request.client else "") not in _LOOPBACK:
        raise HttpError(404, "not_found", "fault injection is off")
    body = await read_json(request)
    block = body.get("block") if isinstance(body, dict) else None
    if not isinstance(block, list) or not all(isinstance(a, str) for a in block):
        raise HttpError(400, "invalid_request", 'expected {"block": [address, ...]} ("*" blocks everyone)')
    cluster.gossip.block(block)
    return json_response({"blocked": cluster.gossip.blocked})


routes = [
    Route("/gossip/packet", gossip_packet, methods=["POST"]),
    Route("/gossip/faults", faults, methods=["POST"]),
    Route("/cluster/members", members, methods=["GET"]),
]
