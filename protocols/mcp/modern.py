"""The 2026-07-28 ("modern") rules of MCP that do not depend on HTTP plumbing: which requests are
modern, the per-request envelope and its checks, the mirrored request headers, and the shape of
a modern answer.

A request is modern (``is_modern``) when its ``params._meta`` names a protocol version
(``io.modelcontextprotocol/protocolVersion``), when its ``MCP-Protocol-Version`` header names a
modern revision, or when it is ``server/discover`` (only a modern client sends it). Anything
else, ``initialize`` first of all, is served with sessions exactly as before
(streamable_http.py). A modern request is checked in this order and the first failure answers
(``envelope``), with HTTP 400 and before anything runs:

1. ``params._meta`` is an object carrying ``protocolVersion`` and ``clientCapabilities``
   -> -32602 (Invalid params)
2. the mirrored headers agree with the body: ``MCP-Protocol-Version`` = the envelope's version,
   ``Mcp-Method`` = ``method``, and for tools/call and prompts/get ``Mcp-Name`` = ``params.name``,
   for resources/read ``Mcp-Name`` = ``params.uri``, for tasks/get, tasks/update and tasks/cancel
   ``Mcp-Name`` = ``params.taskId`` (the tasks extension); each header at most once, trimmed of
   spaces and tabs, at most ``MAX_HEADER_VALUE`` bytes of visible ASCII, ``Mcp-Name`` possibly
   in the ``=?base64?...?=`` form (strict base64, canonical, UTF-8) -> -32020 (HeaderMismatch)
3. the version is one this gateway serves statelessly -> -32022 (UnsupportedProtocolVersion)
   with ``data: {supported: <every version it serves, both eras>, requested}``
4. the envelope's types: ``protocolVersion`` a string, ``clientCapabilities`` and
   ``clientInfo`` objects, ``logLevel`` a log level -> -32602

A fifth rule belongs to ``tools/call`` once the tool (and the caller's right to see it) is
known: every argument its input schema marks with ``x-mcp-header`` (on a chain of
``properties`` only) comes mirrored in ``Mcp-Param-{Name}``, absent when the argument is absent
or null, compared after base64 decoding and, for numbers, numerically
(``check_param_headers``) -> -32020. Unmarked ``Mcp-Param-*`` headers are ignored.

An answer (``finish``) gets ``resultType: "complete"`` and the gateway's ``serverInfo`` in its
``_meta``; the cacheable ones (server/discover, tools/list, prompts/list, resources/list,
resources/templates/list, resources/read) also get ``ttlMs`` and ``cacheScope`` (a relayed
result's own hints can only shorten or narrow them). The retired -32002 (resource not found)
becomes -32602 with the same ``data.uri`` (this revision reserves -32020..-32099 for the codes it
defines). ``http_status`` is the answer's HTTP status
when nothing was streamed before it: 400 for -32020, -32021, -32022 and malformed requests or
params (-32700, -32600, -32602, as the reference SDK answers them), 404 for -32601 (Method not
found), 429 for a quota's refusal (-31029), else 200.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import re
from collections.abc import Iterator, Mapping
from decimal import Decimal
from typing import Any

from starlette.datastructures import Headers

from protocols.mcp import wire
from protocols.mcp.wire import HEADER_MISMATCH, INVALID_PARAMS, MCPError

META_VERSION = "io.modelcontextprotocol/protocolVersion"
META_CAPABILITIES = "io.modelcontextprotocol/clientCapabilities"
META_CLIENT_INFO = "io.modelcontextprotocol/clientInfo"
META_LOG_LEVEL = "io.modelcontextprotocol/logLevel"
META_SERVER_INFO = "io.modelcontextprotocol/serverInfo"
META_SUBSCRIPTION = "io.modelcontextprotocol/subscriptionId"
ENVELOPE = (META_VERSION, META_CAPABILITIES, META_CLIENT_INFO, META_LOG_LEVEL)

# Far above any real tool name or resource URI, far below what an HTTP server buffers per header.
MAX_HEADER_VALUE = 8192
NAME_FIELDS = {
    "tools/call": "name",
    "prompts/get": "name",
    "resources/read": "uri",
    # the tasks extension's routing header (tasks_ext.py)
    "tasks/get": "taskId",
    "tasks/update": "taskId",
    "tasks/cancel": "taskId",
}
CACHEABLE = frozenset(
    {"server/discover", "tools/list", "prompts/list", "resources/list", "resources/templates/list", "resources/read"}
)
STATUS = {
    wire.PARSE_ERROR: 400,
    wire.INVALID_REQUEST: 400,
    INVALID_PARAMS: 400,
    HEADER_MISMATCH: 400,
    wire.MISSING_CLIENT_CAPABILITY: 400,
    wire.UNSUPPORTED_VERSION: 400,
    wire.METHOD_NOT_FOUND: 404,
    wire.RATE_LIMITED: 429,
}

# Handshake-era codes this revision retires or reserves: -32002 is -32602 now (with the same
# data.uri), and the quota refusal leaves the range -32020..-32099 kept for the spec's codes.
RENUMBERED = {wire.RESOURCE_NOT_FOUND: INVALID_PARAMS}
_HEADER_SAFE = re.compile(r"[\x20-\x7e\t]*")
_SENTINEL = re.compile(r"=\?base64\?(.*)\?=", re.DOTALL)
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # RFC 9110 field-name token
_DECIMAL = re.compile(r"-?[0-9]+(\.[0-9]+)?")


@dataclasses.dataclass(frozen=True, slots=True)
class Envelope:
    """What a modern request says about its client (its ``params._meta``), and its headers."""

    version: str
    capabilities: dict[str, Any]
    client_info: dict[str, Any] | None = None
    log_level: str | None = None
    headers: Headers | None = None  # None off HTTP: no mirrored headers to check


def is_modern(msg: dict[str, Any], headers: Headers) -> bool:
    params = msg.get("params")
    meta = params.get("_meta") if isinstance(params, dict) else None
    if isinstance(meta, dict) and META_VERSION in meta:
        return True
    return headers.get("mcp-protocol-version") in wire.MODERN_VERSIONS or msg.get("method") == "server/discover"


def mismatch(message: str) -> MCPError:
    return MCPError(HEADER_MISMATCH, f"Header mismatch: {message}")


def header(headers: Headers, name: str) -> str | None:
    """The one value of header ``name`` (OWS trimmed), None when absent; -32020 when it is sent
    twice, too long, or holds what a header value may not."""
    values = headers.getlist(name)
    if not values:
        return None
    if len(values) > 1:
        raise mismatch(f"{name} is sent more than once")
    value = values[0].strip(" \t")
    if len(value) > MAX_HEADER_VALUE:
        raise mismatch(f"{name} is longer than {MAX_HEADER_VALUE} bytes")
    if not _HEADER_SAFE.fullmatch(value):
        raise mismatch(f"{name} holds characters a header value may not carry")
    return value


def decode(value: str, name: str) -> str:
    """A header value with its ``=?base64?...?=`` form undone (anything else is literal)."""
    found = _SENTINEL.fullmatch(value)
    if found is None:
        return value
    payload = found.group(1)
    try:
        raw = base64.b64decode(payload, validate=True)
        if base64.b64encode(raw).decode("ascii") != payload:
            raise ValueError("not canonical")
        return raw.decode("utf-8")
    except (binascii.Error, ValueError):  # UnicodeDecodeError is a ValueError
        raise mismatch(f"{name} is not valid =?base64?...?= (strict, canonical base64 of UTF-8)") from None


def encode(value: str) -> str:
    """``value`` as a header value: verbatim when it is visible ASCII without edge whitespace,
    else in the ``=?base64?...?=`` form (``decode`` undoes it; an upstream client's side)."""
    if _HEADER_SAFE.fullmatch(value) and value == value.strip(" \t") and not _SENTINEL.fullmatch(value):
        return value
    return f"=?base64?{base64.b64encode(value.encode('utf-8')).decode('ascii')}?="


def envelope(msg: dict[str, Any], headers: Headers | None) -> Envelope:
    """The request's envelope, checked as the module docstring says (raises MCPError)."""
    params = msg.get("params")
    meta = params.get("_meta") if isinstance(params, dict) else None
    if not isinstance(meta, dict):
        raise MCPError(INVALID_PARAMS, f"params._meta is required, with {META_VERSION} and {META_CAPABILITIES}")
    missing = [key for key in (META_VERSION, META_CAPABILITIES) if key not in meta]
    if missing:
        raise MCPError(INVALID_PARAMS, f"params._meta lacks {' and '.join(missing)}")
    version = meta[META_VERSION]
    if headers is not None:
        _check_headers(msg, params, version, headers)
    if not isinstance(version, str):
        raise MCPError(INVALID_PARAMS, f"{META_VERSION} must be a string")
    if version not in wire.MODERN_VERSIONS:
        raise MCPError(
            wire.UNSUPPORTED_VERSION,
            "Unsupported protocol version"
            + (" (it is served with the initialize handshake)" if version in wire.SUPPORTED_VERSIONS else ""),
            {"supported": list(wire.ALL_VERSIONS), "requested": version},
        )
    caps, info, level = meta[META_CAPABILITIES], meta.get(META_CLIENT_INFO), meta.get(META_LOG_LEVEL)
    if not isinstance(caps, dict):
        raise MCPError(INVALID_PARAMS, f"{META_CAPABILITIES} must be an object")
    if info is not None and not isinstance(info, dict):
        raise MCPError(INVALID_PARAMS, f"{META_CLIENT_INFO} must be an object")
    if level is not None and level not in wire.LOG_LEVELS:
        raise MCPError(INVALID_PARAMS, f"{META_LOG_LEVEL} must be one of {', '.join(wire.LOG_LEVELS)}")
    return Envelope(version, caps, info, level, headers)


def _check_headers(msg: dict[str, Any], params: dict[str, Any], version: Any, headers: Headers) -> None:
    sent = header(headers, "mcp-protocol-version")
    if sent is None:
        raise mismatch("MCP-Protocol-Version is required")
    if sent != version:
        raise mismatch(f"MCP-Protocol-Version {sent!r} does not match the body's {META_VERSION}")
    method = header(headers, "mcp-method")
    if method is None:
        raise mismatch("Mcp-Method is required")
    if method != msg["method"]:
        raise mismatch(f"Mcp-Method {method!r} does not match the body's method {msg['method']!r}")
    field = NAME_FIELDS.get(msg["method"])
    value = params.get(field) if field else None
    if isinstance(value, str):  # a body without it is answered by the method (-32602)
        name = header(headers, "mcp-name")
        if name is None:
            raise mismatch(f"Mcp-Name is required for {msg['method']}")
        if decode(name, "Mcp-Name") != value:
            raise mismatch(f"Mcp-Name does not match the body's params.{field}")


# ---- x-mcp-header -------------------------------------------------------------------------------


def mirrored_arguments(schema: Any) -> Iterator[tuple[tuple[str, ...], str]]:
    """(property path, header name) of each argument ``schema`` marks with ``x-mcp-header``: on a
    chain of ``properties`` from the root, a header token, a string/integer/boolean property."""
    stack: list[tuple[tuple[str, ...], Any]] = [((), schema)]
    while stack:
        path, node = stack.pop()
        if not isinstance(node, dict):
            continue
        token = node.get("x-mcp-header")
        if path and isinstance(token, str) and _TOKEN.fullmatch(token):
            if node.get("type") in ("string", "integer", "boolean"):
                yield path, token
        props = node.get("properties")
        if isinstance(props, dict):
            stack.extend(((*path, key), sub) for key, sub in props.items() if isinstance(key, str))


def argument_at(arguments: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    node: Any = arguments
    for key in path:
        if not isinstance(node, Mapping):
            return None
        node = node.get(key)
    return node


def _same(value: Any, sent: str) -> bool:
    """Whether a mirrored header value stands for the argument ``value``."""
    if isinstance(value, bool):
        return sent == ("true" if value else "false")
    if isinstance(value, int | float):  # numerically: 42 matches "42" and "42.0"
        return _DECIMAL.fullmatch(sent) is not None and Decimal(sent) == Decimal(str(value))
    return isinstance(value, str) and sent == value


def check_param_headers(schema: Any, arguments: Mapping[str, Any], headers: Headers) -> None:
    """Raise -32020 unless the ``Mcp-Param-*`` headers mirror the marked arguments exactly."""
    for path, token in mirrored_arguments(schema):
        name = f"Mcp-Param-{token}"
        sent = header(headers, name)
        value = argument_at(arguments, path)
        where = ".".join(path)
        if value is None:
            if sent is not None:
                raise mismatch(f"{name} is sent but argument {where!r} is absent")
            continue
        if sent is None:
            raise mismatch(f"{name} is required: argument {where!r} is present")
        if not _same(value, decode(sent, name)):
            raise mismatch(f"{name} does not match argument {where!r}")


# ---- answers --------------------------------------------------------------------------------------


def finish(method: str, reply: dict[str, Any], *, server_info: dict[str, Any], scope: str, ttl_ms: int) -> dict:
    """A JSON-RPC answer in its 2026-07-28 shape (module docstring)."""
    error = reply.get("error")
    if isinstance(error, dict):
        code = RENUMBERED.get(error.get("code"))
        return reply if code is None else {**reply, "error": {**error, "code": code}}
    result = dict(reply.get("result") or {})
    result.setdefault("resultType", "complete")
    meta = result.get("_meta")
    result["_meta"] = {**(meta if isinstance(meta, dict) else {}), META_SERVER_INFO: server_info}
    if method in CACHEABLE and result["resultType"] == "complete":
        theirs = result.get("ttlMs")
        if isinstance(theirs, int) and not isinstance(theirs, bool) and 0 <= theirs < ttl_ms:
            ttl_ms = theirs
        result["ttlMs"] = ttl_ms
        result["cacheScope"] = "private" if "private" in (scope, result.get("cacheScope")) else "public"
    return {**reply, "result": result}


def http_status(reply: dict[str, Any]) -> int:
    error = reply.get("error")
    return STATUS.get(error.get("code"), 200) if isinstance(error, dict) else 200
