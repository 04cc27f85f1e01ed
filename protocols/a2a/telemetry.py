"""A2A spans, as the OpenTelemetry semantic conventions for A2A name them (``gateway.core.tracing``).

A2A carries trace context only in HTTP headers (W3C ``traceparent``): inbound, the gateway's
``InboundContext`` middleware makes it the request's context; outbound, the egress module adds it
to every request (a stream's span passes its own, ``tracing.headers_of``).

* ``server_span``: a SERVER span named ``{a2a.method.name}`` (the 1.0 operation name, for 0.3
  and HTTP+JSON requests too: ``SendMessage``, ``GetTask`` ...) around one request of either
  binding, with ``a2a.protocol.version``, ``jsonrpc.request.id`` (JSON-RPC), ``a2a.task.id`` and
  ``a2a.message.id`` from the params, ``gen_ai.agent.name`` on a per-agent endpoint, and
  ``a2a.task.id``/``a2a.task.state`` of the task answered (``answered``).
* ``client_span``/``start_client``: the same as a CLIENT span around a request to a remote
  agent, with ``server.address``/``server.port``.
"""

from __future__ import annotations

from typing import Any

from gateway.core import tracing


def _params(params: Any) -> dict[str, Any]:
    """``a2a.task.id`` and ``a2a.message.id`` named by a request's params."""
    out: dict[str, Any] = {}
    if not isinstance(params, dict):
        return out
    message = params.get("message") if isinstance(params.get("message"), dict) else {}
    task_id = params.get("taskId") or params.get("id") or message.get("taskId")
    if isinstance(task_id, str):
        out["a2a.task.id"] = task_id
    if isinstance(message.get("messageId"), str):
        out["a2a.message.id"] = message["messageId"]
    return out


def server_span(
    method: str, version: str, params: Any = None, *, request_id: Any = None, agent: str | None = None
) -> Any:
    if not tracing.ON:
        return tracing.NO_SPAN
    attributes = {"a2a.method.name": method, "a2a.protocol.version": version, **_params(params)}
    if request_id is not None:
        attributes["jsonrpc.request.id"] = str(request_id)
    if agent:
        attributes["gen_ai.agent.name"] = agent
    return tracing.span(method, tracing.SERVER, attributes)


def answered(span: Any, result: Any) -> None:
    """Record the task a reply carries (a 1.0 ``{"task": ...}``, or a task itself)."""
    if not span.is_recording() or not isinstance(result, dict):
        return
    task = result.get("task") if isinstance(result.get("task"), dict) else result
    if isinstance(task.get("id"), str) and isinstance(task.get("status"), dict):
        span.set_attribute("a2a.task.id", task["id"])
        if isinstance(task["status"].get("state"), str):
            span.set_attribute("a2a.task.state", task["status"]["state"])


def _client_attributes(method: str, url: str, params: Any) -> dict[str, Any]:
    return {"a2a.method.name": method, **tracing.server_attributes(url), **_params(params)}


def client_span(method: str, url: str, params: Any = None) -> Any:
    """A current CLIENT span for one request/response exchange."""
    if not tracing.ON:
        return tracing.NO_SPAN
    return tracing.span(method, tracing.CLIENT, _client_attributes(method, url, params))


def start_client(method: str, url: str, params: Any = None) -> Any:
    """A CLIENT span for a stream (not current: end it when the stream ends)."""
    if not tracing.ON:
        return tracing.NO_SPAN
    return tracing.start(method, tracing.CLIENT, _client_attributes(method, url, params))
