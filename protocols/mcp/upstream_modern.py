"""The 2026-07-28 ("modern") era of an upstream MCP server, spoken behind ``UpstreamClient``.

``discover`` finds an upstream's era the way the official SDK's ``auto`` mode does: it sends
``server/discover`` at 2026-07-28, and an answer whose ``supportedVersions`` lists a revision of
``wire.MODERN_VERSIONS`` makes the upstream modern. Any other answer (an HTTP error, a JSON-RPC
error, a result without a modern revision, a body that is not JSON-RPC) is no evidence of the
modern era: None, and the client falls back to ``initialize``. Only -32022 naming no revision
the gateway speaks is an incompatibility (``UpstreamUnavailable``); a network failure is no
verdict at all and propagates.

``ModernWire`` then speaks the era for one upstream, so that callers of ``UpstreamClient`` see
the same requests, server->client requests and notifications as from a handshake-era upstream:

- every request carries the envelope in ``params._meta`` (protocol version, the gateway's client
  capabilities and info, and log level ``debug``: one upstream serves many clients, so messages
  are filtered per client at relay time, as in the handshake era; it is sent whether or not the
  upstream declares ``logging``, which the SDK's modern servers do not, though they log) and the
  mirrored headers: ``MCP-Protocol-Version``, ``Mcp-Method``, ``Mcp-Name`` and, for
  ``tools/call``, ``Mcp-Param-{X}`` for each argument that the tool's input schema (from the
  client's catalog) marks ``x-mcp-header``;
- an ``input_required`` result becomes server->client requests (``elicitation/create``,
  ``sampling/createMessage``, ``roots/list``) handed to the request's ``on_message`` exactly as
  a handshake-era upstream's would arrive, with ids of this module's making and the upstream's
  key in ``params._meta["interlace/inputKey"]`` (mrtr.py asks a modern client by it, so the
  key survives the gateway; a session's client is asked without it); their answers, given
  back through ``UpstreamClient.respond``, go to the upstream as ``inputResponses`` in a retry of
  the same request with the echoed ``requestState`` (at most ``MAX_ROUNDS`` rounds). A refused
  one ends the request with the refusal: the era has no error form for an input response;
- ``resultType`` and the upstream's ``serverInfo`` are taken off results (the gateway's own era
  shapes its answers); cache hints stay, so a modern client's answer can narrow them; a resource
  read's -32602 with ``data.uri`` is the handshake era's -32002 again (the modern face renumbers
  it for modern clients);
- ``resources/subscribe`` and ``resources/unsubscribe`` (gone from the era) change the resource
  list of the one ``subscriptions/listen`` stream kept open per upstream, and return once the
  upstream acknowledged the new filter (a new stream is opened before the old one is closed, so
  nothing falls between them); that stream's list-changed and resource-updated notifications
  go to ``on_notification`` as a handshake-era upstream's GET stream's do. A stream the upstream
  ends is opened again with the same filter (backing off while it is down), and a reconnection
  keeps the subscriptions; ``listening`` says whether an acknowledged stream is up. ``ping`` and
  ``logging/setLevel`` (gone too) are answered here.

It holds no HTTP code: it sends through its client's ``_exchange`` (one request, its stream's
messages to ``on_message``) and ``post_stream`` (a listen stream), the client's transport.

An upstream that announced 2026-07-28 and then refuses it (-32022, or an answer that is not
JSON-RPC) fails the request with UpstreamUnavailable saying so, and its connection is dropped:
the next use discovers its era again, so one that went back to the handshake era is followed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from protocols.mcp import modern, wire
from protocols.mcp.mrtr import KEY_META
from protocols.mcp.upstream_errors import UpstreamRefused, UpstreamUnavailable
from protocols.mcp.wire import MCPError

if TYPE_CHECKING:
    from protocols.mcp.client import MessageHandler, UpstreamClient

log = logging.getLogger("interlace.mcp.upstream")

CLIENT_INFO = {"name": "interlace-gateway", "version": "0.1.0"}
CLIENT_CAPABILITIES = {"sampling": {}, "elicitation": {"form": {}, "url": {}}, "roots": {"listChanged": True}}
MAX_ROUNDS = 8  # input_required rounds of one request before the upstream is deemed stuck
ACK_TIMEOUT_S = 10.0  # bound on the upstream's acknowledgement of a subscriptions/listen stream
OPEN_ACK_S = 2.0  # ... while connecting: a slow acknowledgement must not fail the connection
ANSWERED_HERE = {"ping": {}, "logging/setLevel": {}}  # removed from the era: nothing to relay
LIST_FLAGS = {"tools": "toolsListChanged", "prompts": "promptsListChanged", "resources": "resourcesListChanged"}
ACKNOWLEDGED = "notifications/subscriptions/acknowledged"


@dataclass(frozen=True)
class Discovery:
    """What a modern upstream's ``server/discover`` said."""

    version: str
    capabilities: dict[str, Any]
    server_info: dict[str, Any]


def _envelope(version: str) -> dict[str, Any]:
    return {
        modern.META_VERSION: version,
        modern.META_CAPABILITIES: CLIENT_CAPABILITIES,
        modern.META_CLIENT_INFO: CLIENT_INFO,
        modern.META_LOG_LEVEL: "debug",
    }


def _headers(client: UpstreamClient, version: str, method: str, params: dict[str, Any]) -> dict[str, str]:
    h = dict(client.upstream.headers)
    h["Accept"] = "application/json, text/event-stream"
    h["MCP-Protocol-Version"] = version
    h["Mcp-Method"] = method
    field = modern.NAME_FIELDS.get(method)
    if field is not None and isinstance(params.get(field), str):
        h["Mcp-Name"] = modern.encode(params[field])
    if method == "tools/call":
        h.update(_param_headers(client, params))
    return h


def _param_headers(client: UpstreamClient, params: dict[str, Any]) -> dict[str, str]:
    """``Mcp-Param-{X}`` for the arguments the catalogued tool's schema marks ``x-mcp-header``."""
    schema = next((t.get("inputSchema") for t in client.catalog["tools"] if t.get("name") == params.get("name")), None)
    arguments = params.get("arguments")
    if not isinstance(arguments, dict):
        return {}
    out = {}
    for path, token in modern.mirrored_arguments(schema):
        value = modern.argument_at(arguments, path)
        if isinstance(value, bool):
            out[f"Mcp-Param-{token}"] = "true" if value else "false"
        elif isinstance(value, str | int | float):
            out[f"Mcp-Param-{token}"] = modern.encode(str(value))
    return out


async def discover(client: UpstreamClient) -> Discovery | None:
    """The upstream's ``server/discover`` answer when it speaks 2026-07-28; None when it is a
    handshake-era server (module docstring)."""
    version = wire.MODERN_VERSIONS[0]
    params = {"_meta": _envelope(version)}
    rid = client.next_id()
    body = wire.request(rid, "server/discover", params)
    try:
        result = await client._exchange(body, rid, None, _headers(client, version, "server/discover", params))
    except MCPError as exc:
        supported = exc.data.get("supported") if isinstance(exc.data, dict) else None
        if exc.code == wire.UNSUPPORTED_VERSION and isinstance(supported, list):
            if not any(v in wire.ALL_VERSIONS for v in supported):
                raise UpstreamUnavailable(client.name, f"speaks only protocol versions {supported}") from None
        return None
    except UpstreamRefused:
        return None
    versions = result.get("supportedVersions")
    if not isinstance(versions, list) or version not in versions:
        return None
    caps, meta = result.get("capabilities"), result.get("_meta")
    info = meta.get(modern.META_SERVER_INFO) if isinstance(meta, dict) else None
    return Discovery(version, caps if isinstance(caps, dict) else {}, info if isinstance(info, dict) else {})


def _not_found(method: str, exc: MCPError) -> bool:
    """Whether ``exc`` is this era's "resource not found": -32602 with ``data.uri`` (the handshake
    era's -32002, which the gateway's modern face renumbers back for its modern clients)."""
    return (
        method == "resources/read"
        and exc.code == wire.INVALID_PARAMS
        and isinstance(exc.data, dict)
        and isinstance(exc.data.get("uri"), str)
    )


def _complete(result: dict[str, Any]) -> dict[str, Any]:
    """A modern result without the era's bookkeeping."""
    out = {k: v for k, v in result.items() if k != "resultType"}
    meta = out.get("_meta")
    if isinstance(meta, dict) and modern.META_SERVER_INFO in meta:
        rest = {k: v for k, v in meta.items() if k != modern.META_SERVER_INFO}
        if rest:
            out["_meta"] = rest
        else:
            del out["_meta"]
    return out


class ModernWire:
    """The 2026-07-28 side of one ``UpstreamClient`` (module docstring)."""

    def __init__(self, client: UpstreamClient, version: str, subscribed: Iterable[str] = ()) -> None:
        self.client, self.version = client, version
        self._answers: dict[str, asyncio.Future] = {}  # our ids of pending input requests -> their answer
        self.subscribed: set[str] = set(subscribed)  # resources subscribed on the listen stream
        self._listener: asyncio.Task | None = None
        self.listening = asyncio.Event()  # set while the upstream's acknowledged listen stream lasts
        self._relisten = asyncio.Lock()

    # ---- requests ----------------------------------------------------------------------------

    async def request(self, method: str, params: dict[str, Any], on_message: MessageHandler | None) -> dict[str, Any]:
        if method in ANSWERED_HERE:
            return dict(ANSWERED_HERE[method])
        if method in ("resources/subscribe", "resources/unsubscribe"):
            return await self._subscription(method, params)
        meta = params.get("_meta")
        first = {**params, "_meta": {**(meta if isinstance(meta, dict) else {}), **_envelope(self.version)}}
        sent = first
        for _ in range(MAX_ROUNDS):
            result = await self._send(method, sent, on_message)
            if result.get("resultType") != "input_required":
                return _complete(result)
            sent = {**first, "inputResponses": await self._ask(result.get("inputRequests"), on_message)}
            if isinstance(result.get("requestState"), str):
                sent["requestState"] = result["requestState"]
        raise UpstreamUnavailable(self.client.name, f"still asked for input after {MAX_ROUNDS} rounds of {method}")

    async def _send(self, method: str, params: dict[str, Any], on_message: MessageHandler | None) -> dict[str, Any]:
        client = self.client
        rid = client.next_id()
        headers = _headers(client, self.version, method, params)
        try:
            return await client._exchange(wire.request(rid, method, params), rid, on_message, headers)
        except MCPError as exc:
            if _not_found(method, exc):  # the gateway speaks the handshake era's code inside
                raise MCPError(wire.RESOURCE_NOT_FOUND, exc.message, exc.data) from None
            if exc.code != wire.UNSUPPORTED_VERSION:
                raise
            detail = f"-32022 {exc.message}"
        except UpstreamRefused as exc:
            detail = exc.detail
        why = f"announced {self.version} in server/discover, then answered {method} with: {detail}"
        client._lost(why)
        raise UpstreamUnavailable(client.name, why)

    async def _ask(self, requests: Any, on_message: MessageHandler | None) -> dict[str, Any]:
        """Each input request as a server->client request to ``on_message``; the answers by key."""
        if not isinstance(requests, dict) or not requests:
            raise UpstreamUnavailable(self.client.name, "answered input_required without inputRequests")
        if any(not isinstance(r, dict) or not isinstance(r.get("method"), str) for r in requests.values()):
            raise UpstreamUnavailable(self.client.name, "sent a malformed input request")
        if on_message is None:
            raise MCPError(wire.INVALID_REQUEST, "the upstream needs input and no client can give it")
        loop = asyncio.get_running_loop()
        asked = {key: f"interlace-input-{secrets.token_hex(8)}" for key in requests}
        for rid in asked.values():
            self._answers[rid] = loop.create_future()

        async def one(key: str) -> Any:
            rid, params = asked[key], requests[key].get("params")
            params = params if isinstance(params, dict) else {}
            meta = params.get("_meta") if isinstance(params.get("_meta"), dict) else {}
            keyed = {**params, "_meta": {**meta, KEY_META: key}}  # a modern client is asked by the same key
            await on_message(wire.request(rid, requests[key]["method"], keyed))
            return await self._answers[rid]

        try:
            answers = await asyncio.gather(*(one(key) for key in requests))
        finally:
            for rid in asked.values():
                self._answers.pop(rid, None)
        for answer in answers:
            if isinstance(answer, MCPError):
                raise answer
        return dict(zip(requests, answers, strict=True))

    def answer(self, id: Any, result: dict[str, Any] | None, error: MCPError | None) -> bool:
        """Take the answer to one of our input requests (False: ``id`` is not one of ours)."""
        future = self._answers.get(id) if isinstance(id, str) else None
        if future is None:
            return False
        if not future.done():
            future.set_result(error if error is not None else (result or {}))
        return True

    # ---- subscriptions/listen -------------------------------------------------------------------

    async def open(self) -> None:
        """Listen for the upstream's change notifications. A stream the upstream refuses now is
        tried again in the background (a handshake-era GET stream is too); one it does not
        serve at all (-32601) is not."""
        with contextlib.suppress(MCPError, UpstreamUnavailable):
            await self._restart(keep_trying=True, wait_s=OPEN_ACK_S)

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            await asyncio.gather(self._listener, return_exceptions=True)
            self._listener = None
        self.listening.clear()
        for future in self._answers.values():  # the requests waiting on them end as a broken connection would
            if not future.done():
                future.set_exception(UpstreamUnavailable(self.client.name, "connection closed"))

    async def _subscription(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        uri = params.get("uri")
        if not isinstance(uri, str):
            raise MCPError(wire.INVALID_PARAMS, "params.uri (string) is required")
        before = set(self.subscribed)
        if method == "resources/subscribe":
            self.subscribed.add(uri)
        else:
            self.subscribed.discard(uri)
        if self.subscribed != before:
            try:
                await self._restart()
            except (MCPError, UpstreamUnavailable):
                self.subscribed = before
                raise
        return {}

    def _filter(self) -> dict[str, Any]:
        caps = self.client.capabilities
        wanted: dict[str, Any] = {
            flag: True
            for cap, flag in LIST_FLAGS.items()
            if isinstance(caps.get(cap), dict) and caps[cap].get("listChanged")
        }
        if self.subscribed:
            wanted["resourceSubscriptions"] = sorted(self.subscribed)
        return wanted

    async def _restart(self, *, keep_trying: bool = False, wait_s: float = ACK_TIMEOUT_S) -> None:
        """Open a listen stream with the current filter, wait for its acknowledgement, then close
        the one it replaces. When it fails, the old one stays, unless ``keep_trying``."""
        async with self._relisten:
            old, wanted = self._listener, self._filter()
            new = None
            if wanted:
                acked = asyncio.get_running_loop().create_future()
                acked.add_done_callback(lambda f: f.cancelled() or f.exception())  # read, whoever waits
                new = asyncio.create_task(self._listen(wanted, acked), name=f"mcp-listen-{self.client.name}")
                try:
                    async with asyncio.timeout(wait_s):
                        await asyncio.shield(acked)
                except (TimeoutError, MCPError, UpstreamUnavailable) as exc:
                    if not keep_trying:
                        new.cancel()
                        raise (
                            UpstreamUnavailable(self.client.name, "did not acknowledge subscriptions/listen")
                            if isinstance(exc, TimeoutError)
                            else exc
                        ) from None
            self._listener = new
            if old is not None:
                old.cancel()

    async def _listen(self, wanted: dict[str, Any], acked: asyncio.Future) -> None:
        """One listen stream, opened again (with backoff) whenever the upstream ends it."""
        client, backoff = self.client, 0.5
        while True:
            params = {"notifications": wanted, "_meta": _envelope(self.version)}
            rid = client.next_id()

            async def handle(msg: dict[str, Any]) -> None:
                nonlocal backoff
                method = msg.get("method")
                if method == ACKNOWLEDGED:
                    backoff = 0.5
                    self.listening.set()
                    if not acked.done():
                        acked.set_result(None)
                elif isinstance(method, str) and "id" not in msg:
                    await client.on_notification(client, _untagged(msg))

            try:
                headers = _headers(client, self.version, "subscriptions/listen", params)
                await client.post_stream(wire.request(rid, "subscriptions/listen", params), headers, handle)
            except (MCPError, UpstreamUnavailable) as exc:
                if not acked.done():
                    acked.set_exception(exc)
                if isinstance(exc, MCPError) and exc.code == wire.METHOD_NOT_FOUND:
                    return  # the upstream has no listen stream to offer
                log.debug("upstream listen stream failed", extra={"upstream": client.name, "error": str(exc)})
            if asyncio.current_task() is self._listener:  # not a stream being replaced
                self.listening.clear()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 30.0)


def _untagged(msg: dict[str, Any]) -> dict[str, Any]:
    """A listen stream's notification without its subscription id (the gateway has one stream)."""
    params = msg.get("params")
    if not isinstance(params, dict) or not isinstance(params.get("_meta"), dict):
        return msg
    meta = {k: v for k, v in params["_meta"].items() if k != modern.META_SUBSCRIPTION}
    rest = {k: v for k, v in params.items() if k != "_meta"}
    return {**msg, "params": {**rest, "_meta": meta} if meta else rest}
