"""ACP spans (``gateway.core.tracing``). ACP has no OpenTelemetry semantic conventions of its own,
so its spans are HTTP spans named by route, as the HTTP conventions name them, with the GenAI
agent attributes of the run they create or resume.

ACP carries trace context only in HTTP headers (W3C ``traceparent``): inbound, the gateway's
``InboundContext`` middleware makes it the request's context; outbound, the egress module adds
it to every request (a stream's span passes its own, ``tracing.headers_of``).

* ``server_span``: a SERVER span ``{http.request.method} {http.route}`` (``POST /acp/runs``)
  around one request of the face, with ``http.request.method``, ``http.route``,
  ``http.response.status_code``; creating or resuming a run adds ``gen_ai.operation.name``
  ``invoke_agent``, and the run's task (``tracing.record_task``: ``interlace.task.id``,
  ``gen_ai.agent.name``, ``gen_ai.conversation.id``) once the handler knows it. An ACP error
  sets ``error.type`` to its code (``not_found``, ``server_error`` ...).
* ``client_span``/``start_client``: the same as a CLIENT span (``url.template`` for the route,
  ``server.address``/``server.port``, ``gen_ai.agent.name`` of the remote agent) around a
  request to a remote ACP server.
"""

from __future__ import annotations

from typing import Any

from gateway.core import tracing

# Routes that run an agent: creating a run, resuming one.
_INVOKES = frozenset(
    {("POST", "/acp/runs"), ("POST", "/acp/runs/{run_id}"), ("POST", "/runs"), ("POST", "/runs/{run_id}")}
)


def server_span(method: str, route: str) -> Any:
    if not tracing.ON:
        return tracing.NO_SPAN
    attributes = {"http.request.method": method, "http.route": route, "network.protocol.name": "http"}
    if (method, route) in _INVOKES:
        attributes["gen_ai.operation.name"] = "invoke_agent"
    return tracing.span(f"{method} {route}", tracing.SERVER, attributes)


def answered(span: Any, status: int, error_code: str | None = None, message: str | None = None) -> None:
    """Record the response: its status, and the ACP error it carries."""
    if not span.is_recording():
        return
    span.set_attribute("http.response.status_code", status)
    if error_code is not None:
        tracing.fail(span, error_code, message)


def _client_attributes(method: str, route: str, url: str, agent: str | None) -> dict[str, Any]:
    attributes = {"http.request.method": method, "url.template": route, **tracing.server_attributes(url)}
    if (method, route) in _INVOKES:
        attributes["gen_ai.operation.name"] = "invoke_agent"
    if agent:
        attributes["gen_ai.agent.name"] = agent
    return attributes


def client_span(method: str, route: str, url: str, agent: str | None = None) -> Any:
    """A current CLIENT span for one request/response exchange."""
    if not tracing.ON:
        return tracing.NO_SPAN
    return tracing.span(f"{method} {route}", tracing.CLIENT, _client_attributes(method, route, url, agent))


def start_client(method: str, route: str, url: str, agent: str | None = None) -> Any:
    """A CLIENT span for a stream (not current: end it when the stream ends)."""
    if not tracing.ON:
        return tracing.NO_SPAN
    return tracing.start(f"{method} {route}", tracing.CLIENT, _client_attributes(method, route, url, agent))
