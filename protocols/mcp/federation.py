"""Federation: the upstream MCP servers behind the gateway, their aggregated catalog, the naming
policy and the rug-pull pins.

``UpstreamSet`` holds one ``UpstreamClient`` (``protocols.mcp.client``) per (agent name, MCP URL),
which speaks the upstream's own era (2026-07-28 or a handshake-era session), or per stdio server
(``StdioUpstreamClient``, ``protocols.mcp.stdio_upstream``: a supervised child process);
``status`` says where each stands,
keeps each upstream's catalog (tools, resources, resource templates, prompts) fresh on
``list_changed``, and exposes the aggregate under a naming policy:

  ``prefix`` (default)   every upstream tool/prompt is exposed as ``{agent}{separator}{name}``
                         (separator ``__``; names stay within ``[A-Za-z0-9_.-]``)
  ``pass-through``       upstream names are kept unchanged; a name offered by more than one
                         upstream (or clashing with a gateway tool) is prefixed for every
                         upstream that offers it, so no call is ever ambiguous

Resource URIs are never renamed: a read goes to the upstream that lists the URI, else to the one
whose template matches it, else (a single upstream) to that upstream.

What one caller may use: the catalog methods take an optional ``Visible`` predicate,
``visible(upstream, kind, name)`` with ``kind`` one of ``tool``, ``prompt``, ``resource`` and
``name`` as the upstream lists it (a tool's or prompt's own name, a resource's URI, a template's
``uriTemplate``); the lists then hold only what it allows, and ``offered_to`` names the upstreams
that offer it anything. Names never depend on the caller: the naming policy works on the whole
catalog, so a name means the same thing to everyone (the caller's policy is the MCP service's
business, see methods.py).

Which upstreams: the options' fixed list (``configured_upstreams``) plus, unless turned off, every
live registry record with an ``endpoints.mcp`` URL (``registry_upstreams``). Every one is dialled
under the egress policy (``egress``: checked, pinned addresses, bounded responses; the MCP
service allows the hosts of the configured ones), and a failure is ``agent unreachable`` to
clients whatever it was (``UpstreamUnavailable``), its detail logged.

Rug-pull defence: each upstream tool definition (name, title, description, input and output
schema, annotations) is hashed (SHA-256 over canonical JSON) and pinned in the shared store the
first time it is seen (``mcp:pin:{agent}:{tool}``). A later definition with another hash is hidden
from ``tools/list``, refused by ``tools/call``, logged, counted on
``interlace_mcp_tool_definition_changes_total`` and listed by ``quarantined()`` until
``repin()`` accepts it. New tools are pinned on first sight (trust on first use).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from gateway.core.backends.base import KeyValue
from gateway.core.egress import Egress
from gateway.core.http_client import PooledClient
from gateway.core.runtime import Runtime
from protocols.mcp.client import Upstream, UpstreamClient, describe
from protocols.mcp.stdio_upstream import StdioUpstream, StdioUpstreamClient
from protocols.mcp.upstreams_file import entry

log = logging.getLogger("interlace.mcp.upstream")

PIN_TTL_S = 10 * 365 * 24 * 3600

# (upstream name, "tool" | "prompt" | "resource", name or URI as the upstream lists it) -> may the caller use it
Visible = Callable[[str, str, str], bool]


def sanitize(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)[:64] or "agent"


def tool_hash(tool: dict[str, Any]) -> str:
    keys = ("name", "title", "description", "inputSchema", "outputSchema", "annotations")
    subset = {k: tool[k] for k in keys if k in tool}
    raw = json.dumps(subset, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(raw.encode()).hexdigest()


def template_regex(template: str) -> re.Pattern:
    """RFC 6570 level 1-ish: ``{var}`` matches one path segment, ``{+var}``/``{var*}`` anything."""
    out, pos = [], 0
    for m in re.finditer(r"\{([^}]+)\}", template):
        out.append(re.escape(template[pos : m.start()]))
        expr = m.group(1)
        out.append(".+" if expr.startswith(("+", "#")) or expr.endswith("*") else "[^/?#]+")
        pos = m.end()
    out.append(re.escape(template[pos:]))
    return re.compile("^" + "".join(out) + "$")


def configured_upstreams(
    items: Iterable[Upstream | StdioUpstream | tuple | dict | str],
) -> list[Upstream | StdioUpstream]:
    """The options' fixed upstreams: ``Upstream``, ``StdioUpstream``, ``(name, url[, headers])``,
    ``{name, url, headers?, era?}`` (``era``: ``auto``, ``legacy`` or ``modern``, see ``Upstream``),
    ``{name, command, ...}`` (stdio, see ``protocols.mcp.upstreams_file``) or ``"name=url"``
    (``INTERLACE_MCP_UPSTREAMS="name=http://host/mcp,other=http://..."``; a malformed string is
    skipped)."""
    out: list[Upstream | StdioUpstream] = []
    for item in items:
        if isinstance(item, str):
            name, sep, url = item.strip().partition("=")
            if sep and name.strip() and url.strip():
                out.append(Upstream(name.strip(), url.strip()))
        else:
            out.append(upstream_of(item))
    return out


def upstream_of(item: Upstream | StdioUpstream | tuple | dict) -> Upstream | StdioUpstream:
    """An upstream from any of its forms: a dict with ``command`` is a stdio one
    (``protocols.mcp.upstreams_file.entry``)."""
    if isinstance(item, StdioUpstream):
        return item
    if isinstance(item, dict) and "command" in item:
        return entry(item)
    return Upstream.of(item)


def registry_upstreams(runtime: Runtime) -> list[Upstream]:
    """Live registry records with an ``endpoints.mcp`` URL, one upstream per agent name."""
    registry = getattr(runtime, "registry", None)
    out: dict[str, Upstream] = {}
    for record in sorted(registry.live() if registry is not None else [], key=lambda r: (r.name, r.did)):
        url = getattr(record.endpoints, "mcp", None)
        if url and record.name not in out:
            out[record.name] = Upstream(record.name, str(url))
    return list(out.values())


@dataclass
class Quarantined:
    upstream: str
    tool: str
    pinned: str
    current: str
    since: float
    definition: dict[str, Any] = field(repr=False, default_factory=dict)

    def dump(self) -> dict[str, Any]:
        return {
            "upstream": self.upstream,
            "tool": self.tool,
            "pinned_sha256": self.pinned,
            "current_sha256": self.current,
            "since": self.since,
            "definition": self.definition,
        }


class UpstreamSet:
    """Pooled sessions to the upstream MCP servers and their aggregated catalog."""

    def __init__(
        self,
        upstreams: Iterable[Upstream | StdioUpstream | tuple | dict] = (),
        *,
        kv: KeyValue,
        naming: str = "prefix",
        separator: str = "__",
        call_timeout_s: float = 60.0,
        registry=None,
        on_change: Callable[[set[str]], Awaitable[None]] | None = None,
        on_resource_updated: Callable[[str], Awaitable[None]] | None = None,
        on_log: Callable[[str, dict[str, Any]], Awaitable[None]] | None = None,
        egress: Egress | None = None,
    ) -> None:
        if naming not in ("prefix", "pass-through"):
            raise ValueError(f"naming must be 'prefix' or 'pass-through', not {naming!r}")
        self.kv, self.naming, self.separator = kv, naming, separator
        self.egress = egress or Egress()  # every upstream is dialled under it (gateway/core/egress.py)
        self.call_timeout_s = call_timeout_s
        self.on_change, self.on_resource_updated, self.on_log = on_change, on_resource_updated, on_log
        self.local_names: set[str] = set()  # gateway tools (agent and meta tools) upstream names must not shadow
        self.http: PooledClient | None = None  # one pooled client for every upstream, made at start
        self.clients: dict[str, UpstreamClient] = {}
        self._wanted = [upstream_of(u) for u in upstreams]
        self._tools: dict[str, tuple[UpstreamClient, dict[str, Any]]] = {}
        self._prompts: dict[str, tuple[UpstreamClient, dict[str, Any]]] = {}
        self._resources: dict[str, UpstreamClient] = {}
        self._templates: list[tuple[re.Pattern, str, UpstreamClient]] = []  # (regex, uriTemplate, owner)
        self._quarantine: dict[tuple[str, str], Quarantined] = {}
        self._keepers: dict[str, asyncio.Task] = {}
        self._refreshing: dict[str, asyncio.Task] = {}
        self._started = False
        self._metrics(registry)

    def _metrics(self, registry) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge

        r = registry or CollectorRegistry()
        self.m_changes = Counter(
            "interlace_mcp_tool_definition_changes",
            "Upstream tool definitions that changed after they were pinned",
            ["upstream", "tool"],
            registry=r,
        )
        self.m_quarantined = Gauge(
            "interlace_mcp_quarantined_tools",
            "Upstream tools hidden because their definition changed",
            ["upstream"],
            registry=r,
        )
        self.m_up = Gauge(
            "interlace_mcp_upstream_up", "1 when the upstream MCP session is established", ["upstream"], registry=r
        )

    # ---- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        # Idle connections are dropped before a typical server's keep-alive timeout (uvicorn: 5 s)
        # so a request rarely meets a connection the upstream is closing; calls are bounded by
        # their own timeouts, connecting by 10 s.
        self.http = PooledClient(self.egress, limit=200, keepalive_s=2.0, connect_timeout_s=10.0)
        self._started = True
        await self.set_upstreams(self._wanted)

    async def stop(self) -> None:
        self._started = False
        for task in [*self._keepers.values(), *self._refreshing.values()]:
            task.cancel()
        await asyncio.gather(*self._keepers.values(), *self._refreshing.values(), return_exceptions=True)
        await asyncio.gather(*(c.close() for c in self.clients.values()), return_exceptions=True)
        if self.http is not None:
            await self.http.aclose()

    async def set_upstreams(
        self, upstreams: Iterable[Upstream | StdioUpstream | tuple | dict], wait_s: float = 5.0
    ) -> None:
        """Replace the set of upstreams (the registry feeds this); new ones are connected,
        removed ones closed. Waits up to ``wait_s`` for new upstreams' first catalog."""
        wanted = {u.name: u for u in (upstream_of(x) for x in upstreams)}
        self._wanted = list(wanted.values())
        if not self._started:
            return
        for name in list(self.clients):
            if name not in wanted or wanted[name] != self.clients[name].upstream:
                client = self.clients.pop(name)
                keeper = self._keepers.pop(name, None)
                if keeper:
                    keeper.cancel()
                await client.close()
                self.m_up.labels(name).set(0)
        started = []
        for name, up in wanted.items():
            if name not in self.clients:
                self.clients[name] = self._client(up)
                self._keepers[name] = asyncio.create_task(self._keep(self.clients[name]), name=f"mcp-keeper-{name}")
                started.append(self.clients[name])
        if started:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._first_sync(started), wait_s)
        self._reindex()

    def _client(self, up: Upstream | StdioUpstream) -> UpstreamClient:
        if isinstance(up, StdioUpstream):
            return StdioUpstreamClient(up, on_notification=self._on_notification)
        return UpstreamClient(up, self.http, on_notification=self._on_notification)

    @staticmethod
    async def _first_sync(clients: list[UpstreamClient]) -> None:
        await asyncio.gather(*(c.first_attempt.wait() for c in clients))

    async def _keep(self, client: UpstreamClient) -> None:
        """Connect and load the catalog; reconnect with backoff while the upstream is down."""
        backoff, synced = 0.5, 0
        while True:
            try:
                if not client.connected or client.generation != synced:
                    await client.ensure()
                    # Every new upstream session (also one a call re-opened) re-reads the catalog:
                    # a definition swapped while we were away is caught by the pins.
                    generation = client.generation
                    await self._sync(client, {"tools", "resources", "resourceTemplates", "prompts"})
                    synced = generation
                    client.first_attempt.set()
                    self.m_up.labels(client.name).set(1)
                    log.info(
                        "upstream connected",
                        extra={"upstream": client.name, "era": client.era, "tools": len(client.catalog["tools"])},
                    )
                    await self._changed({"tools", "resources", "prompts"})
                    backoff = 0.5
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.m_up.labels(client.name).set(0)
                client.last_error = describe(exc)
                log.warning("upstream unavailable", extra={"upstream": client.name, "error": client.last_error})
                client.first_attempt.set()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 30.0)
                continue
            await asyncio.sleep(1.0 if client.connected else 0.1)

    async def _sync(self, client: UpstreamClient, kinds: set[str]) -> None:
        await client.refresh(sorted(kinds), self.call_timeout_s)
        if "tools" in kinds:
            await self._check_pins(client)
        self._reindex()

    async def _on_notification(self, client: UpstreamClient, msg: dict[str, Any]) -> None:
        method = msg.get("method")
        params = msg.get("params") or {}
        kinds = {
            "notifications/tools/list_changed": {"tools"},
            "notifications/resources/list_changed": {"resources", "resourceTemplates"},
            "notifications/prompts/list_changed": {"prompts"},
        }.get(method)
        if kinds:
            self._schedule_refresh(client, kinds)
        elif (
            method == "notifications/resources/updated"
            and self.on_resource_updated
            and isinstance(params.get("uri"), str)
        ):
            await self.on_resource_updated(params["uri"])
        elif method == "notifications/message" and self.on_log:
            await self.on_log(client.name, params)

    def _schedule_refresh(self, client: UpstreamClient, kinds: set[str]) -> None:
        async def run() -> None:
            try:
                await self._sync(client, kinds)
                await self._changed({"resources" if k == "resourceTemplates" else k for k in kinds})
            except Exception as exc:
                log.warning("upstream catalog refresh failed", extra={"upstream": client.name, "error": describe(exc)})

        task = asyncio.create_task(run())
        key = f"{client.name}:{','.join(sorted(kinds))}:{time.monotonic()}"
        self._refreshing[key] = task
        task.add_done_callback(lambda _: self._refreshing.pop(key, None))

    async def refresh_now(self, name: str | None = None) -> None:
        """Re-read every (or one) upstream's catalog now."""
        for client in list(self.clients.values()):
            if name is None or client.name == name:
                await self._sync(client, {"tools", "resources", "resourceTemplates", "prompts"})

    async def _changed(self, kinds: set[str]) -> None:
        if self.on_change:
            with contextlib.suppress(Exception):
                await self.on_change(kinds)

    # ---- rug-pull pins -----------------------------------------------------------------------

    async def _check_pins(self, client: UpstreamClient) -> None:
        current = set()
        for tool in client.catalog["tools"]:
            name = tool.get("name")
            if not isinstance(name, str):
                continue
            current.add(name)
            digest = tool_hash(tool)
            key = f"mcp:pin:{client.name}:{name}"
            if await self.kv.set(key, digest, PIN_TTL_S, only_new=True):
                self._quarantine.pop((client.name, name), None)
                continue
            pinned = await self.kv.get(key)
            if pinned is None or pinned == digest:
                self._quarantine.pop((client.name, name), None)
                continue
            prior = self._quarantine.get((client.name, name))
            if prior is None or prior.current != digest:
                self.m_changes.labels(client.name, name).inc()
                log.warning(
                    "upstream tool definition changed after it was pinned; hidden until re-pinned",
                    extra={"upstream": client.name, "tool": name, "pinned": pinned, "current": digest},
                )
            self._quarantine[(client.name, name)] = Quarantined(client.name, name, pinned, digest, time.time(), tool)
        for key in [k for k in self._quarantine if k[0] == client.name and k[1] not in current]:
            del self._quarantine[key]
        self.m_quarantined.labels(client.name).set(sum(1 for k in self._quarantine if k[0] == client.name))

    def quarantined(self) -> list[dict[str, Any]]:
        """Tools hidden because their definition changed since it was pinned (for /registry views)."""
        return [q.dump() for q in self._quarantine.values()]

    async def repin(self, upstream: str, tool: str | None = None) -> list[str]:
        """Accept the current definition of one tool (or all quarantined tools of ``upstream``)."""
        done = []
        for key, q in list(self._quarantine.items()):
            if key[0] == upstream and (tool is None or key[1] == tool):
                await self.kv.set(f"mcp:pin:{upstream}:{key[1]}", q.current, PIN_TTL_S)
                del self._quarantine[key]
                done.append(key[1])
        self.m_quarantined.labels(upstream).set(sum(1 for k in self._quarantine if k[0] == upstream))
        if done:
            self._reindex()
            await self._changed({"tools"})
        return done

    # ---- naming and lookup ---------------------------------------------------------------------

    def _exposed(self, kind: str) -> dict[str, tuple[UpstreamClient, dict[str, Any]]]:
        offers: dict[str, list[tuple[UpstreamClient, dict[str, Any]]]] = {}
        for client in self.clients.values():
            for item in client.catalog[kind]:
                name = item.get("name")
                if not isinstance(name, str):
                    continue
                if kind == "tools" and (client.name, name) in self._quarantine:
                    continue
                offers.setdefault(name, []).append((client, item))
        out: dict[str, tuple[UpstreamClient, dict[str, Any]]] = {}
        reserved = self.local_names if kind == "tools" else set()
        for name, owners in offers.items():
            keep = self.naming == "pass-through" and len(owners) == 1 and name not in reserved
            for client, item in owners:
                exposed = name if keep else f"{sanitize(client.name)}{self.separator}{name}"
                if exposed in out:
                    log.warning("duplicate upstream name skipped", extra={"upstream": client.name, "name": exposed})
                    continue
                out[exposed] = (client, item)
        return out

    def _reindex(self) -> None:
        self._tools = self._exposed("tools")
        self._prompts = self._exposed("prompts")
        self._resources, self._templates = {}, []
        for client in self.clients.values():
            for res in client.catalog["resources"]:
                uri = res.get("uri")
                if isinstance(uri, str):
                    self._resources.setdefault(uri, client)
            for tmpl in client.catalog["resourceTemplates"]:
                if isinstance(tmpl.get("uriTemplate"), str):
                    self._templates.append((template_regex(tmpl["uriTemplate"]), tmpl["uriTemplate"], client))

    def set_local_names(self, names: set[str]) -> None:
        if names != self.local_names:
            self.local_names = set(names)
            self._reindex()

    def tools(self, visible: Visible | None = None) -> list[dict[str, Any]]:
        return [
            {**item, "name": name}
            for name, (client, item) in self._tools.items()
            if visible is None or visible(client.name, "tool", item["name"])
        ]

    def prompts(self, visible: Visible | None = None) -> list[dict[str, Any]]:
        return [
            {**item, "name": name}
            for name, (client, item) in self._prompts.items()
            if visible is None or visible(client.name, "prompt", item["name"])
        ]

    def resources(self, visible: Visible | None = None) -> list[dict[str, Any]]:
        return [r for c in self.clients.values() for r in _listed(c, "resources", "uri", visible)]

    def templates(self, visible: Visible | None = None) -> list[dict[str, Any]]:
        return [t for c in self.clients.values() for t in _listed(c, "resourceTemplates", "uriTemplate", visible)]

    def offered_to(self, visible: Visible | None) -> set[str]:
        """The upstreams that offer the caller at least one tool, prompt, resource or template."""
        if visible is None:
            return self.names()
        offered = {c.name for c, item in self._tools.values() if visible(c.name, "tool", item["name"])}
        offered |= {c.name for c, item in self._prompts.values() if visible(c.name, "prompt", item["name"])}
        for c in self.clients.values():
            if c.name not in offered and (
                _listed(c, "resources", "uri", visible) or _listed(c, "resourceTemplates", "uriTemplate", visible)
            ):
                offered.add(c.name)
        return offered

    def resolve_tool(self, name: str) -> tuple[UpstreamClient, str] | Quarantined | None:
        hit = self._tools.get(name)
        if hit is not None:
            return hit[0], hit[1]["name"]
        for q in self._quarantine.values():
            if name in (q.tool, f"{sanitize(q.upstream)}{self.separator}{q.tool}"):
                return q
        return None

    def input_schema(self, name: str) -> Any:
        """The input schema of the exposed upstream tool ``name`` (None: no such tool)."""
        hit = self._tools.get(name)
        return hit[1].get("inputSchema") if hit else None

    def task_support(self, name: str) -> str | None:
        """The ``execution.taskSupport`` the exposed upstream tool ``name`` declares (None: none)."""
        hit = self._tools.get(name)
        execution = hit[1].get("execution") if hit else None
        return execution.get("taskSupport") if isinstance(execution, dict) else None

    def resolve_prompt(self, name: str) -> tuple[UpstreamClient, str] | None:
        hit = self._prompts.get(name)
        return (hit[0], hit[1]["name"]) if hit else None

    def resolve_uri(self, uri: str) -> tuple[UpstreamClient, str | None] | None:
        """The upstream that serves ``uri``, and the template it matched (None: it lists the URI,
        or it is the only upstream)."""
        if uri in self._resources:
            return self._resources[uri], None
        for pattern, template, client in self._templates:
            if pattern.match(uri):
                return client, template
        if len(self.clients) == 1:
            return next(iter(self.clients.values())), None
        return None

    def names(self) -> set[str]:
        return set(self.clients)

    def status(self) -> list[dict[str, Any]]:
        """Each upstream's connection: its era (``modern``, ``legacy``, None before it first
        connected) and protocol revision, whether it is up, and what went wrong last; a stdio
        upstream's process too (``StdioUpstreamClient.process_status``: state, process group,
        restarts, last exit, stderr tail)."""
        return [
            {
                "name": c.name,
                "url": c.url,
                "era": c.era,
                "protocol_version": c.protocol_version if c.era else None,
                "connected": c.connected,
                "last_error": c.last_error,
                **(c.process_status() if isinstance(c, StdioUpstreamClient) else {}),
            }
            for c in self.clients.values()
        ]


def _listed(client: UpstreamClient, kind: str, key: str, visible: Visible | None) -> list[dict[str, Any]]:
    """The resources (or templates) of ``client``'s catalog the caller may use, judged by ``key``
    (the URI or the URI template)."""
    items = client.catalog[kind]
    if visible is None:
        return list(items)
    return [i for i in items if isinstance(i.get(key), str) and visible(client.name, "resource", i[key])]
