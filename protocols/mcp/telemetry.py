"""MCP spans, as the OpenTelemetry semantic conventions for MCP name them (``gateway.core.tracing``).

* ``server_span`` wraps ``MCPService.answer``: a SERVER span ``{mcp.method.name} {target}``
  (target: the tool or prompt name), parented on the request's ``params._meta`` trace context
  (MCP 2026-07-28, SEP-414), else on the caller's HTTP headers. Attributes: ``mcp.method.name``,
  ``jsonrpc.request.id``, ``mcp.session.id`` (sessions), ``mcp.protocol.version`` (the envelope's,
  2026-07-28), ``network.transport`` ``tcp``, ``network.protocol.name`` ``http``, and on
  ``tools/call`` ``gen_ai.tool.name`` with ``gen_ai.operation.name`` ``execute_tool``, on
  ``prompts/get`` ``gen_ai.prompt.name``. A JSON-RPC error sets ``error.type`` and
  ``rpc.response.status_code`` to its code; a tool result with ``isError`` sets ``error.type``
  ``tool_error``.
* ``client_span`` wraps ``UpstreamClient.request``: the same span as a CLIENT one (with
  ``server.address``/``server.port``) around a request to an upstream server, whose trace context
  goes into the request's ``params._meta`` (as the spec carries it; the egress module puts it in
  the HTTP headers too).

Off (``tracing.ON`` false), each wrapper is one test and the wrapped call.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

from gateway.core import tracing

_TARGETS = {"tools/call": "gen_ai.tool.name", "prompts/get": "gen_ai.prompt.name"}


def _attributes(method: str, params: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The span name and the method's own attributes."""
    attributes: dict[str, Any] = {"mcp.method.name": method}
    name = params.get("name")
    key = _TARGETS.get(method)
    if key is None or not isinstance(name, str):
        return method, attributes
    attributes[key] = name
    if method == "tools/call":
        attributes["gen_ai.operation.name"] = "execute_tool"
    return f"{method} {name}", attributes


def _outcome(span: Any, method: str, reply: dict[str, Any]) -> None:
    """Mark a failed reply: a JSON-RPC error, or a tool result that is an error."""
    error = reply.get("error")
    if isinstance(error, dict):
        code = str(error.get("code"))
        span.set_attribute("rpc.response.status_code", code)
        tracing.fail(span, code, str(error.get("message", ""))[:200])
    elif method == "tools/call" and isinstance(reply.get("result"), dict) and reply["result"].get("isError"):
        tracing.fail(span, "tool_error")


def server_span(answer: Callable[[Any, Any], Awaitable[dict[str, Any]]]):
    @functools.wraps(answer)
    async def traced(service: Any, call: Any) -> dict[str, Any]:
        if not tracing.ON:
            return await answer(service, call)
        meta = call.params.get("_meta")
        name, attributes = _attributes(call.method, call.params)
        attributes.update({"jsonrpc.request.id": str(call.id), "network.transport": "tcp"})
        attributes["network.protocol.name"] = "http"
        if call.sid:
            attributes["mcp.session.id"] = call.sid
        if call.envelope is not None:
            attributes["mcp.protocol.version"] = call.envelope.version
        elif isinstance(call.session.get("v"), str):
            attributes["mcp.protocol.version"] = call.session["v"]
        with tracing.span(name, tracing.SERVER, attributes, meta if isinstance(meta, dict) else None) as span:
            reply = await answer(service, call)
            _outcome(span, call.method, reply)
            return reply

    return traced


def client_span(request: Callable[..., Awaitable[dict[str, Any]]]):
    @functools.wraps(request)
    async def traced(client: Any, method: str, params: dict[str, Any] | None, **kw: Any) -> dict[str, Any]:
        if not tracing.ON:
            return await request(client, method, params, **kw)
        params = dict(params or {})
        name, attributes = _attributes(method, params)
        url = urlsplit(client.url)
        if url.hostname:
            attributes.update({"server.address": url.hostname, "network.transport": "tcp"})
            if url.port:
                attributes["server.port"] = url.port
        else:  # a stdio upstream (stdio_upstream.py): a child process, reached through pipes
            attributes["network.transport"] = "pipe"
        with tracing.span(name, tracing.CLIENT, attributes) as span:
            meta = dict(params.get("_meta") or {}) if isinstance(params.get("_meta"), dict) else {}
            tracing.inject(meta)
            params["_meta"] = meta
            try:
                result = await request(client, method, params, **kw)
            except Exception as exc:  # recorded on the span as it ends; error.type names it
                code = getattr(exc, "code", None)
                tracing.fail(span, str(code) if code is not None else type(exc).__name__)
                raise
            if method == "tools/call" and result.get("isError"):
                tracing.fail(span, "tool_error")
            return result

    return traced
