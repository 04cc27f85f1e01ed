"""A small outbound A2A client on a pooled aiohttp session: card discovery and the task operations.

It speaks JSON-RPC and HTTP+JSON, each in 1.0 and in 0.3, and parses every reply into canonical
types with the same dialects the server uses (ids stay the remote agent's). It picks the first
interface of the card it can speak (cards list interfaces in order of preference; a 0.3 card's
``url``/``preferredTransport`` first, then its ``additionalInterfaces``).

aiohttp rather than httpx: this client sits on the connector's hot path, and an aiohttp request
costs about a quarter of the CPU of an httpx one (0.19 vs 0.74 ms per JSON-RPC call measured on
the benchmark machine), which is most of what the gateway adds to a call. The session comes
from the egress policy (``Egress.aiohttp_session``: checked and pinned addresses, no redirects).
Replies are bounded (``gateway.core.egress.read_body``: size and reading time; per line of a
stream, read by ``gateway.core.sse.read_events``) so a remote cannot exhaust the gateway's memory.

Errors: anything short of a reply in A2A's own shape (no connection, a timeout, an HTTP error
without an A2A error body, a body that is not JSON or not JSON-RPC, a card that is not a card)
is ``RemoteAgentError(UNREACHABLE)``, one text for every such case, with what happened in
``detail`` for the log; only an A2A error the agent sent is passed on in its own words.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp

from gateway.core import tracing
from gateway.core.egress import MAX_RESPONSE_BYTES, UNREACHABLE, ResponseTooLarge, read_body
from gateway.core.sse import Event, LineTooLong, read_events
from protocols.a2a import telemetry
from protocols.a2a.errors import A2AError, RemoteAgentError
from protocols.a2a.wire import V03, V03_REST, V10, Dialect, get
from schemas import Message, Task, TaskArtifactUpdate, TaskStatusUpdate

StreamItem = Task | Message | TaskStatusUpdate | TaskArtifactUpdate
BINDINGS = ("JSONRPC", "HTTP+JSON")
MAX_REPLY_BYTES = MAX_RESPONSE_BYTES


@dataclass(frozen=True)
class RemoteInterface:
    url: str
    binding: str
    version: str  # "1.0" | "0.3"


@dataclass
class RemoteCard:
    name: str
    interfaces: list[RemoteInterface]
    streaming: bool
    raw: dict[str, Any]

    def preferred(self) -> RemoteInterface:
        if not self.interfaces:
            raise RemoteAgentError(
                f"the card of {self.name!r} lists no JSON-RPC or HTTP+JSON interface this gateway speaks"
            )
        return self.interfaces[0]


def _version(raw: Any) -> str | None:
    text = str(raw or "").strip()
    if not text:
        return None
    if text.startswith("1."):
        return "1.0"
    if text.startswith("0.3"):
        return "0.3"
    return None


def parse_card(d: Any, card_url: str = "") -> RemoteCard:
    if not isinstance(d, dict):
        raise _unreachable(f"the agent card at {card_url} is not a JSON object", retryable=False)
    out: list[RemoteInterface] = []
    for i in get(d, "supportedInterfaces") or []:
        if not isinstance(i, dict):
            continue
        binding = get(i, "protocolBinding") or get(i, "transport")
        version = _version(get(i, "protocolVersion")) or "1.0"
        if binding in BINDINGS and isinstance(get(i, "url"), str):
            out.append(RemoteInterface(get(i, "url"), binding, version))
    if not out and isinstance(get(d, "url"), str):  # a 0.3 card
        legacy = _version(get(d, "protocolVersion")) or "0.3"
        out.append(RemoteInterface(get(d, "url"), get(d, "preferredTransport") or "JSONRPC", legacy))
        for i in get(d, "additionalInterfaces") or []:
            if isinstance(i, dict) and isinstance(get(i, "url"), str):
                out.append(RemoteInterface(get(i, "url"), get(i, "transport") or "", legacy))
        out = [i for i in out if i.binding in BINDINGS]
    caps = get(d, "capabilities") or {}
    return RemoteCard(str(get(d, "name") or card_url), out, bool(isinstance(caps, dict) and get(caps, "streaming")), d)


_TRANSPORT_ERRORS = (aiohttp.ClientError, asyncio.TimeoutError, ResponseTooLarge)


def _unreachable(detail: str, *, retryable: bool = True) -> RemoteAgentError:
    return RemoteAgentError(UNREACHABLE, retryable=retryable, detail=detail)


async def _request(
    http: aiohttp.ClientSession,
    method: str,
    url: str,
    headers: dict[str, str],
    body: Any = None,
    params: dict | None = None,
) -> tuple[int, str, bytes]:
    """(status, content type, body) of one request (``body``, when given, is sent as JSON)."""
    async with http.request(method, url, json=body, headers=headers, params=params) as resp:
        return resp.status, resp.headers.get("Content-Type", ""), await _read_body(resp)


async def _read_body(resp: aiohttp.ClientResponse) -> bytes:
    """The whole body, within the egress bounds (``MAX_REPLY_BYTES``, reading time)."""
    if (resp.content_length or 0) > MAX_REPLY_BYTES:
        raise ResponseTooLarge(f"the reply is larger than {MAX_REPLY_BYTES} bytes ({resp.content_length} declared)")
    return await read_body(resp.content.iter_any(), MAX_REPLY_BYTES)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, asyncio.TimeoutError):
        return "timed out"
    return f"{exc.__class__.__name__}: {exc}" if str(exc) else exc.__class__.__name__


async def fetch_card(http: aiohttp.ClientSession, card_url: str) -> RemoteCard:
    try:
        status, _, raw = await _request(http, "GET", card_url, {"A2A-Version": "1.0"})
    except _TRANSPORT_ERRORS as exc:
        raise _unreachable(f"cannot fetch the agent card at {card_url}: {_describe(exc)}") from None
    if status != 200:
        raise _unreachable(f"the agent card at {card_url} answered HTTP {status}", retryable=status >= 500)
    try:
        return parse_card(json.loads(raw), card_url)
    except ValueError:
        raise _unreachable(f"the agent card at {card_url} is not JSON", retryable=False) from None


_METHODS = {
    "1.0": {
        "send": "SendMessage",
        "stream": "SendStreamingMessage",
        "get": "GetTask",
        "cancel": "CancelTask",
        "subscribe": "SubscribeToTask",
        "list": "ListTasks",
    },
    "0.3": {
        "send": "message/send",
        "stream": "message/stream",
        "get": "tasks/get",
        "cancel": "tasks/cancel",
        "subscribe": "tasks/resubscribe",
    },
}


class A2AClient:
    """Calls one interface of a remote agent; every error is a RemoteAgentError with a readable message."""

    # Sends ask for no history back (historyLength 0): the connector maps the status and the
    # artifacts of the remote task; its copy of the conversation is only bytes to send and parse.
    SENT_HISTORY = 0

    def __init__(
        self, http: aiohttp.ClientSession, interface: RemoteInterface, headers: dict[str, str] | None = None
    ) -> None:
        self.http, self.iface = http, interface
        self.rest = interface.binding == "HTTP+JSON"
        self.dialect: Dialect = (V03_REST if self.rest else V03) if interface.version == "0.3" else V10
        self.headers = {"A2A-Version": interface.version, **(headers or {})}
        self._ids = itertools.count(1)
        self.base = interface.url.rstrip("/")
        self._v1 = "/v1" if interface.version == "0.3" else ""

    # ---- public operations -------------------------------------------------------------------

    async def send(self, message: Message, *, blocking: bool = True, metadata: dict | None = None) -> Task | Message:
        params = self.dialect.send_params_out(
            message, blocking=blocking, metadata=metadata, history_length=self.SENT_HISTORY
        )
        with telemetry.client_span("SendMessage", self.base, params) as span:
            if self.rest:
                result = await self._rest("POST", "/message:send", params)
            else:
                result = await self._rpc("send", params)
            telemetry.answered(span, result)
        item = self._parse(result)
        if not isinstance(item, (Task, Message)):
            raise _unreachable(
                "the remote agent answered SendMessage with neither a task nor a message", retryable=False
            )
        return item

    def stream(self, message: Message, *, metadata: dict | None = None) -> AsyncIterator[StreamItem]:
        params = self.dialect.send_params_out(message, metadata=metadata, history_length=self.SENT_HISTORY)
        if self.rest:
            return self._rest_stream("POST", "/message:stream", params)
        return self._rpc_stream("stream", params)

    def subscribe(self, task_id: str) -> AsyncIterator[StreamItem]:
        if self.rest:
            return self._rest_stream("GET", f"/tasks/{task_id}:subscribe", None)
        return self._rpc_stream("subscribe", {"id": task_id})

    async def get_task(self, task_id: str) -> Task:
        with telemetry.client_span("GetTask", self.base, {"id": task_id}):
            result = await (
                self._rest("GET", f"/tasks/{task_id}", None) if self.rest else self._rpc("get", {"id": task_id})
            )
        return self.dialect.task_in(result)

    async def list_tasks(self, context_id: str) -> list[Task]:
        """Tasks of one context (ListTasks is A2A 1.0; a 0.3 agent raises RemoteAgentError)."""
        if self.iface.version == "0.3":
            raise RemoteAgentError("A2A 0.3 has no ListTasks")
        query = {"contextId": context_id, "pageSize": 100}
        with telemetry.client_span("ListTasks", self.base):
            result = await (self._rest("GET", "/tasks", None, params=query) if self.rest else self._rpc("list", query))
        tasks = result.get("tasks") if isinstance(result, dict) else None
        return [self.dialect.task_in(t) for t in tasks or []]

    async def cancel(self, task_id: str) -> Task:
        with telemetry.client_span("CancelTask", self.base, {"id": task_id}):
            result = await (
                self._rest("POST", f"/tasks/{task_id}:cancel", {})
                if self.rest
                else self._rpc("cancel", {"id": task_id})
            )
        return self.dialect.task_in(result)

    # ---- transport ---------------------------------------------------------------------------

    def _parse(self, d: Any) -> StreamItem | None:
        try:
            return self.dialect.stream_in(d)
        except A2AError as exc:
            raise _unreachable(f"the remote agent sent an invalid reply: {exc.message}", retryable=False) from None

    def _envelope(self, op: str, params: Any) -> dict[str, Any]:
        return {"jsonrpc": "2.0", "id": next(self._ids), "method": _METHODS[self.iface.version][op], "params": params}

    @staticmethod
    def _rpc_result(body: Any) -> Any:
        if not isinstance(body, dict):
            raise _unreachable("the remote agent sent a reply that is not a JSON-RPC response", retryable=False)
        if "error" in body:
            err = body["error"] if isinstance(body["error"], dict) else {}
            raise RemoteAgentError(
                f"the remote agent answered error {err.get('code')}: {err.get('message')}", code=err.get("code")
            )
        return body.get("result")

    async def _rpc(self, op: str, params: Any) -> Any:
        try:
            status, ctype, raw = await _request(self.http, "POST", self.base, self.headers, self._envelope(op, params))
        except _TRANSPORT_ERRORS as exc:
            raise _unreachable(f"cannot reach the remote agent at {self.base}: {_describe(exc)}") from None
        if status >= 400 and not ctype.startswith("application/json"):
            raise _unreachable(f"the remote agent at {self.base} answered HTTP {status}", retryable=status >= 500)
        try:
            return self._rpc_result(json.loads(raw))
        except ValueError:
            raise _unreachable(
                f"the remote agent at {self.base} sent a reply that is not JSON", retryable=False
            ) from None

    async def _rest(self, method: str, path: str, body: Any, params: dict | None = None) -> Any:
        url = f"{self.base}{self._v1}{path}"
        try:
            status, _, raw = await _request(self.http, method, url, self.headers, body, params)
        except _TRANSPORT_ERRORS as exc:
            raise _unreachable(f"cannot reach the remote agent at {self.base}: {_describe(exc)}") from None
        try:
            data = json.loads(raw)
        except ValueError:
            raise _unreachable(f"{url} answered HTTP {status} without JSON", retryable=status >= 500) from None
        if status >= 400:
            raise _rest_error(status, data, url)
        return data

    async def _rpc_stream(self, op: str, params: Any) -> AsyncIterator[StreamItem]:
        async for data in self._sse(op, "POST", self.base, self._envelope(op, params)):
            item = self._parse(self._rpc_result(data))
            if item is not None:
                yield item

    async def _rest_stream(self, method: str, path: str, body: Any) -> AsyncIterator[StreamItem]:
        op = "subscribe" if path.endswith(":subscribe") else "stream"
        async for data in self._sse(op, method, f"{self.base}{self._v1}{path}", body):
            item = self._parse(data)
            if item is not None:
                yield item

    async def _sse(self, op: str, method: str, url: str, body: Any) -> AsyncIterator[Any]:
        # The stream's span is not made current: it lives across this generator's yields.
        span = telemetry.start_client(_METHODS["1.0"][op], self.base, body.get("params", body) if body else None)
        try:
            async for payload in self._sse_traced(method, url, body, tracing.headers_of(span)):
                yield payload
        except Exception as exc:
            tracing.fail(span, type(exc).__name__, str(exc)[:200])
            raise
        finally:
            span.end()

    async def _sse_traced(self, method: str, url: str, body: Any, trace: dict[str, str]) -> AsyncIterator[Any]:
        headers = {**self.headers, "Accept": "text/event-stream", **trace}
        try:
            async with self.http.request(method, url, json=body, headers=headers) as resp:
                if "text/event-stream" not in resp.headers.get("Content-Type", ""):
                    raw = await _read_body(resp)
                    try:
                        reply = json.loads(raw)
                    except ValueError:
                        raise _unreachable(
                            f"{url} answered HTTP {resp.status} without a stream", retryable=resp.status >= 500
                        ) from None
                    if self.rest:
                        raise _rest_error(resp.status, reply, url)
                    yield reply
                    return
                async for event in _events(resp):
                    if not event.data:
                        continue
                    payload = json.loads(event.data)
                    if event.event == "error":
                        raise _rest_error(400, payload, url)
                    yield payload
        except _TRANSPORT_ERRORS as exc:
            raise _unreachable(f"the stream from the remote agent at {self.base} broke: {_describe(exc)}") from None
        except json.JSONDecodeError:
            raise _unreachable(f"{url} streamed an event that is not JSON", retryable=False) from None


async def _events(resp: aiohttp.ClientResponse) -> AsyncIterator[Event]:
    """The events of an SSE response; one line may not pass ``MAX_REPLY_BYTES``."""
    try:
        async for event in read_events(resp.content.iter_any(), MAX_REPLY_BYTES):
            yield event
    except LineTooLong as exc:
        raise ResponseTooLarge(str(exc)) from None


def _rest_error(status: int, data: Any, url: str) -> RemoteAgentError:
    """An HTTP+JSON error reply: the agent's own A2A error message, else unreachable."""
    err = data.get("error") if isinstance(data, dict) else None
    if isinstance(err, dict) and err.get("message"):
        return RemoteAgentError(
            f"the remote agent answered: {err.get('message')}", code=status, detail=f"{url} answered HTTP {status}"
        )
    return _unreachable(f"{url} answered HTTP {status}", retryable=status >= 500)
