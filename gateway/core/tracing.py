"""Traces: OpenTelemetry spans from the protocol faces through the runtime, the bus, the workers and
the outbound connectors, one trace per request.

Configuration is OpenTelemetry's own environment (``configure``, once per process, at the first
gateway or worker built): traces are on when an exporter is configured, ``OTEL_EXPORTER_OTLP_ENDPOINT``
(or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``) or ``OTEL_TRACES_EXPORTER`` (``otlp``, ``console``),
unless ``OTEL_TRACES_EXPORTER=none`` or ``OTEL_SDK_DISABLED=true``, and the ``[otel]`` extra is
installed (without it, a warning and no traces). The SDK reads the rest itself: ``OTEL_SERVICE_NAME``
(default here ``interlace``), ``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_TRACES_SAMPLER`` and its
``_ARG``, ``OTEL_EXPORTER_OTLP_*`` (headers, timeout; protocol ``http/protobuf``, or ``grpc`` when
``opentelemetry-exporter-otlp-proto-grpc`` is installed too), ``OTEL_BSP_*``, ``OTEL_PROPAGATORS``.

Off, every helper is a constant-time no-op: ``span`` returns one shared do-nothing span and nothing
is imported from OpenTelemetry. Whether tracing is on is decided once (``ON``), never per call.

Propagation (W3C ``traceparent``/``tracestate``/``baggage``, or the configured propagators):
inbound, ``InboundContext`` (an ASGI middleware the app adds only when on) makes the caller's
headers the ambient context of the request, and a face may parent its span on a carrier of its own
instead (MCP: ``params._meta``); the runtime stores the context of its span with the task
(``Task.trace``, serialized by both backends), so the worker that takes the task, in any process
or node, continues the trace (a follow-up that continues the task replaces it with the context of
its own request's trace, its span linked to the first: ``span(link=...)``); outbound, the
egress module adds the current context to every HTTP request the gateway makes
(``inject_missing``), and the MCP client also into ``params._meta``.

The faces' spans share ``task_attributes``/``record_task`` (the task a span handled) and
``server_attributes`` (where a CLIENT span's request goes). Span kinds are named here
(``SERVER`` ...) so callers need no OpenTelemetry import. Tests install
an SDK provider of their own (``install``) and remove it (``reset``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, MutableMapping
from typing import Any
from urllib.parse import urlsplit

from schemas import Task

log = logging.getLogger("interlace.tracing")

ON = False  # set once by configure() or install(); every helper checks it first
SERVER, CLIENT, INTERNAL, PRODUCER, CONSUMER = "SERVER", "CLIENT", "INTERNAL", "PRODUCER", "CONSUMER"
TRACE_KEYS = ("traceparent", "tracestate", "baggage")  # what a carrier may hold (W3C)

_configured = False
_tracer: Any = None
_provider: Any = None
_otel: Any = None  # the OpenTelemetry API modules, imported once tracing is on


class _NoSpan:
    """The span of tracing off: accepts everything, records nothing."""

    __slots__ = ()

    def __enter__(self) -> _NoSpan:
        return self

    def __exit__(self, *exc: Any) -> None:
        return None

    def set_attribute(self, key: str, value: Any) -> None:
        return None

    def set_attributes(self, attributes: Mapping[str, Any]) -> None:
        return None

    def update_name(self, name: str) -> None:
        return None

    def end(self) -> None:
        return None

    def is_recording(self) -> bool:
        return False


NO_SPAN = _NoSpan()


def configure(env: Mapping[str, str] | None = None) -> bool:
    """Turn tracing on when the environment configures an exporter (the module docstring); once
    per process, later calls return the first answer. Returns whether tracing is on."""
    global _configured
    if _configured:
        return ON
    _configured = True
    env = os.environ if env is None else env
    exporter = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    endpoint = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true" or exporter == "none":
        return False
    if not exporter and not endpoint:
        return False
    try:
        from opentelemetry import trace
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError:
        log.warning("OTEL_* configures traces but the [otel] extra is not installed: pip install 'interlace[otel]'")
        return False
    resource = Resource.create()
    if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
        resource = resource.merge(Resource({"service.name": "interlace"}))
    provider = TracerProvider(resource=resource)  # sampler: OTEL_TRACES_SAMPLER (the SDK reads it)
    try:
        provider.add_span_processor(BatchSpanProcessor(_exporter(exporter or "otlp", env)))
    except (ImportError, ValueError) as exc:
        log.warning("traces are off: %s", exc)
        return False
    trace.set_tracer_provider(provider)  # libraries that trace (SDK clients) join the same traces
    install(provider)
    log.info("traces on", extra={"exporter": exporter or "otlp", "endpoint": endpoint})
    return True


def _exporter(kind: str, env: Mapping[str, str]) -> Any:
    if kind == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()
    if kind != "otlp":
        raise ValueError(f"OTEL_TRACES_EXPORTER={kind!r} is not supported here (otlp, console, none)")
    protocol = env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get("OTEL_EXPORTER_OTLP_PROTOCOL") or ""
    if protocol.strip() == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    else:  # http/protobuf: OTLP's default, and what the [otel] extra installs
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    return OTLPSpanExporter()  # endpoint, headers, timeout, compression: OTEL_EXPORTER_OTLP_* (the SDK)


def install(provider: Any) -> None:
    """Trace with ``provider`` (an SDK ``TracerProvider``) from now on: ``configure`` calls it, and
    tests with an in-memory exporter. Build a gateway after this: its inbound middleware is added
    only when tracing is on when it is built."""
    global ON, _configured, _tracer, _provider, _otel
    from types import SimpleNamespace

    from opentelemetry import context, propagate, trace

    from gateway.core import __version__

    _otel = SimpleNamespace(context=context, propagate=propagate, trace=trace)
    _provider, _tracer = provider, provider.get_tracer("interlace", __version__)
    _configured = ON = True


def reset() -> None:
    """Tracing off again (tests)."""
    global ON, _tracer, _provider
    ON, _tracer, _provider = False, None, None


def span(
    name: str,
    kind: str = INTERNAL,
    attributes: Mapping[str, Any] | None = None,
    parent: Mapping | None = None,
    link: Mapping | None = None,
) -> Any:
    """A span to use as ``with span(...) as s:``: current inside the block, ended after it, status
    ERROR with the exception recorded if one escapes. Its parent is the context in ``parent`` (a
    carrier: headers, MCP ``_meta``, ``Task.trace``) when that holds one, else the current span;
    ``link``, a carrier too, names a span of another trace it follows from (a span link: the
    follow-up of a task links the task's first trace). Never hold it across a ``yield`` of an
    async generator: use ``start`` there."""
    if not ON:
        return NO_SPAN
    return _tracer.start_as_current_span(
        name,
        context=_parent(parent),
        kind=_otel.trace.SpanKind[kind],
        attributes=attributes or None,
        links=_links(link),
    )


def start(
    name: str, kind: str = INTERNAL, attributes: Mapping[str, Any] | None = None, parent: Mapping | None = None
) -> Any:
    """A span that is not made current (for an async generator's lifetime): end it yourself,
    pass ``headers_of(span)`` where its context must travel."""
    if not ON:
        return NO_SPAN
    return _tracer.start_span(
        name, context=_parent(parent), kind=_otel.trace.SpanKind[kind], attributes=attributes or None
    )


def _parent(carrier: Mapping | None) -> Any:
    current = _otel.context.get_current()
    if not carrier or not isinstance(carrier, Mapping) or not isinstance(carrier.get("traceparent"), str):
        return current
    return _otel.propagate.extract({k: carrier[k] for k in TRACE_KEYS if isinstance(carrier.get(k), str)}, current)


def _links(carrier: Mapping | None) -> list[Any] | None:
    if not carrier or not isinstance(carrier.get("traceparent"), str):
        return None
    context = _otel.propagate.extract({k: carrier[k] for k in TRACE_KEYS if isinstance(carrier.get(k), str)})
    linked = _otel.trace.get_current_span(context).get_span_context()
    return [_otel.trace.Link(linked)] if linked.is_valid else None


def current() -> Any:
    """The current span (``NO_SPAN`` when off)."""
    return _otel.trace.get_current_span() if ON else NO_SPAN


def fail(span: Any, error_type: str, description: str | None = None) -> None:
    """Mark ``span`` failed the semantic conventions' way: ``error.type`` and status ERROR."""
    if not ON or not span.is_recording():
        return
    span.set_attribute("error.type", error_type)
    span.set_status(_otel.trace.Status(_otel.trace.StatusCode.ERROR, description))


def task_attributes(task: Task) -> dict[str, str]:
    """What a span says about the task it handles: its id, context, agent (stream) and route."""
    attributes = {"interlace.task.id": task.id, "gen_ai.conversation.id": task.context_id}
    if task.route is not None:
        attributes["gen_ai.agent.name"] = task.route.agent
        attributes["interlace.route.reason"] = task.route.reason or ""
        if task.route.skill:
            attributes["interlace.route.skill"] = task.route.skill
    return attributes


def record_task(task: Task) -> None:
    """Put ``task_attributes`` on the current span: a face's span, once it knows the task its
    request created, continued or read."""
    if ON:
        current_span = _otel.trace.get_current_span()
        if current_span.is_recording():
            current_span.set_attributes(task_attributes(task))


def server_attributes(url: str) -> dict[str, Any]:
    """``server.address`` and ``server.port`` of a CLIENT span's request to ``url``."""
    parts = urlsplit(url)
    attributes: dict[str, Any] = {"server.address": parts.hostname or ""}
    if parts.port:
        attributes["server.port"] = parts.port
    return attributes


def carrier() -> dict[str, str] | None:
    """The current context as a W3C carrier (``{"traceparent": ...}``), to store or send; None
    when off or when no span is current."""
    if not ON:
        return None
    out: dict[str, str] = {}
    _otel.propagate.inject(out)
    return out or None


def headers_of(span: Any) -> dict[str, str]:
    """The carrier of ``span`` (one made with ``start``); empty when off."""
    if not ON:
        return {}
    out: dict[str, str] = {}
    _otel.propagate.inject(out, _otel.trace.set_span_in_context(span))
    return out


def inject(carrier: MutableMapping[str, Any]) -> None:
    """Put the current context into ``carrier``, replacing what it held (MCP ``_meta``: the
    gateway's span is the upstream's parent, not the client's)."""
    if ON:
        for key in TRACE_KEYS:
            carrier.pop(key, None)
        _otel.propagate.inject(carrier)


def inject_missing(headers: MutableMapping[str, Any]) -> None:
    """Put the current context into outgoing HTTP ``headers`` unless they carry one already
    (a stream's span, ``headers_of``). The egress module calls it for every request."""
    if ON and "traceparent" not in headers:
        _otel.propagate.inject(headers)


class InboundContext:
    """ASGI middleware: the W3C headers of an HTTP request become the ambient context of its
    handling, so every span it starts (a face's, the runtime's) joins the caller's trace. Added
    only when tracing is on."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not ON:  # not ON: tracing was reset (tests) after the app was built
            return await self.app(scope, receive, send)
        found = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"] if k in _TRACE_HEADERS}
        if "traceparent" not in found:
            return await self.app(scope, receive, send)
        token = _otel.context.attach(_otel.propagate.extract(found))
        try:
            await self.app(scope, receive, send)
        finally:
            _otel.context.detach(token)


_TRACE_HEADERS = frozenset(k.encode() for k in TRACE_KEYS)
