"""ANP spans (``gateway.core.tracing``). ANP has no OpenTelemetry semantic conventions of its own;
its calls are JSON-RPC, so its spans are RPC spans named by the JSON-RPC method, as the RPC
conventions name them, with the GenAI agent attributes of the task a call sends or reads.

ANP carries trace context only in HTTP headers (W3C ``traceparent``): inbound, the gateway's
``InboundContext`` middleware makes it the request's context; outbound, the egress module adds
it to every request.

* ``server_span``: a SERVER span ``{rpc.method}`` (``send_message``) around one method call of
  a request (a batch has one per call), with ``rpc.system.name`` ``jsonrpc``, ``rpc.method``,
  ``gen_ai.agent.name`` on a per-agent endpoint or when the call names one, ``gen_ai.operation.name``
  ``invoke_agent`` on ``send_message``, and the task (``tracing.record_task``:
  ``interlace.task.id``, ``gen_ai.agent.name``, ``gen_ai.conversation.id``) once the method
  knows it. A JSON-RPC error sets ``error.type`` and ``rpc.response.status_code`` to its code.
* ``client_span``: the same as a CLIENT span around a call to a remote agent, with
  ``jsonrpc.request.id`` and ``server.address``/``server.port``.
"""

from __future__ import annotations

from typing import Any

from gateway.core import tracing

_INVOKES = frozenset({"send_message"})


def _attributes(method: str, agent: Any) -> dict[str, Any]:
    attributes = {"rpc.system.name": "jsonrpc", "rpc.method": method}
    if method in _INVOKES:
        attributes["gen_ai.operation.name"] = "invoke_agent"
    if isinstance(agent, str) and agent:
        attributes["gen_ai.agent.name"] = agent
    return attributes


def server_span(method: str, agent: Any = None) -> Any:
    if not tracing.ON:
        return tracing.NO_SPAN
    return tracing.span(method, tracing.SERVER, _attributes(method, agent))


def failed(span: Any, code: Any, message: str | None = None) -> None:
    """Mark a call answered with a JSON-RPC error (or a client's call that failed)."""
    if not span.is_recording():
        return
    if isinstance(code, int):
        span.set_attribute("rpc.response.status_code", str(code))
    tracing.fail(span, str(code), message)


def client_span(method: str, url: str, request_id: str, agent: str | None = None) -> Any:
    """A current CLIENT span for one JSON-RPC call."""
    if not tracing.ON:
        return tracing.NO_SPAN
    attributes = {**_attributes(method, agent), "jsonrpc.request.id": request_id, **tracing.server_attributes(url)}
    return tracing.span(method, tracing.CLIENT, attributes)
