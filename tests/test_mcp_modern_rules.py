"""The 2026-07-28 rules of protocols/mcp/modern.py, without HTTP: which requests are modern, the
envelope's checks in their order, the mirrored headers (Mcp-Name, Mcp-Param-*, base64 form),
and the shape and HTTP status of a modern answer."""

from __future__ import annotations

import base64

import pytest
from starlette.datastructures import Headers

from protocols.mcp import modern
from protocols.mcp.wire import MCPError

V = "2026-07-28"
META = {
    "io.modelcontextprotocol/protocolVersion": V,
    "io.modelcontextprotocol/clientCapabilities": {},
    "io.modelcontextprotocol/clientInfo": {"name": "t", "version": "1"},
}
INFO = {"name": "interlace", "version": "0"}


def request(method: str = "tools/call", meta: dict | None = META, **params) -> dict:
    if method == "tools/call":
        params.setdefault("name", "echo")
    if meta is not None:
        params["_meta"] = meta
    return {"jsonrpc": "2.0", "id": 7, "method": method, "params": params}


def headers(msg: dict, *pairs: tuple[str, str], **changes: str | None) -> Headers:
    """The conformant headers of ``msg``, then ``changes`` (None removes one), then raw ``pairs``."""
    out = {"mcp-protocol-version": V, "mcp-method": msg["method"]}
    field = modern.NAME_FIELDS.get(msg["method"])
    if field:
        out["mcp-name"] = msg["params"][field]
    for name, value in changes.items():
        name = name.replace("_", "-").lower()
        if value is None:
            out.pop(name, None)
        else:
            out[name] = value
    raw = [(k.encode(), v.encode("latin-1")) for k, v in [*out.items(), *pairs]]
    return Headers(raw=raw)


def code_of(msg: dict, hdrs: Headers | None) -> int:
    with pytest.raises(MCPError) as err:
        modern.envelope(msg, hdrs)
    return err.value.code


def b64(text: str) -> str:
    return f"=?base64?{base64.b64encode(text.encode()).decode()}?="


def test_which_requests_are_modern():
    plain = Headers({})
    assert modern.is_modern(request(), plain)
    assert modern.is_modern(request(meta={"io.modelcontextprotocol/protocolVersion": "v9"}), plain)
    assert modern.is_modern({"jsonrpc": "2.0", "id": 1, "method": "ping"}, Headers({"mcp-protocol-version": V}))
    assert modern.is_modern({"jsonrpc": "2.0", "id": 1, "method": "server/discover"}, plain)
    legacy = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": "2025-11-25"}}
    assert not modern.is_modern(legacy, plain)
    assert not modern.is_modern(request(meta=None), Headers({"mcp-protocol-version": "2025-11-25"}))


def test_a_conformant_request_yields_its_envelope():
    msg = request(meta={**META, "io.modelcontextprotocol/logLevel": "info"})
    env = modern.envelope(msg, headers(msg))
    assert (env.version, env.capabilities, env.client_info, env.log_level) == (
        V,
        {},
        META[modern.META_CLIENT_INFO],
        "info",
    )
    without_info = request(meta={k: v for k, v in META.items() if k != modern.META_CLIENT_INFO})
    assert modern.envelope(without_info, headers(without_info)).client_info is None  # clientInfo is a SHOULD
    assert modern.envelope(msg, None).version == V  # off HTTP: no headers to check


@pytest.mark.parametrize(
    "meta",
    [
        None,
        {modern.META_CAPABILITIES: {}},
        {modern.META_VERSION: V},
        {**META, modern.META_CAPABILITIES: []},
        {**META, modern.META_CLIENT_INFO: "me"},
        {**META, modern.META_LOG_LEVEL: "loud"},
    ],
)
def test_a_malformed_envelope_is_invalid_params(meta):
    msg = request(meta=meta)
    assert code_of(msg, headers(msg)) == -32602


def test_headers_are_checked_before_the_version():
    msg = request(meta={**META, modern.META_VERSION: "v999"})
    assert code_of(msg, headers(msg)) == -32020  # the header says 2026-07-28, the body v999
    with pytest.raises(MCPError) as err:
        modern.envelope(msg, headers(msg, mcp_protocol_version="v999"))
    assert err.value.code == -32022 and err.value.data == {
        "supported": list(modern.wire.ALL_VERSIONS),
        "requested": "v999",
    }
    legacy = request(meta={**META, modern.META_VERSION: "2025-11-25"})
    with pytest.raises(MCPError) as err:
        modern.envelope(legacy, headers(legacy, mcp_protocol_version="2025-11-25"))
    assert err.value.code == -32022 and "handshake" in err.value.message


@pytest.mark.parametrize(
    "changes,pairs",
    [
        ({"mcp_protocol_version": None}, ()),
        ({"mcp_method": None}, ()),
        ({"mcp_method": "TOOLS/CALL"}, ()),  # values are case-sensitive
        ({"mcp_method": "tools/list"}, ()),
        ({"mcp_name": None}, ()),
        ({"mcp_name": "other"}, ()),
        ({"mcp_name": "=?base64?ZWNobw?="}, ()),  # padding missing
        ({"mcp_name": "=?base64?ZWN!!obw==?="}, ()),  # not the base64 alphabet
        ({"mcp_name": "=?base64?ZWNobx==?="}, ()),  # not canonical
        ({"mcp_name": "x" * (modern.MAX_HEADER_VALUE + 1)}, ()),
        ({"mcp_name": "\u00e9cho"}, ()),  # not visible ASCII (a Latin-1 byte)
        ({}, (("mcp-name", "echo"),)),  # sent twice
        ({}, (("mcp-method", "tools/call"),)),
    ],
)
def test_header_mismatches(changes, pairs):
    msg = request()
    assert code_of(msg, headers(msg, *pairs, **changes)) == -32020


def test_header_values_are_trimmed_and_base64_decoded():
    msg = request(name="naïve tool")
    assert modern.envelope(msg, headers(msg, mcp_name=b64("naïve tool"))).version == V
    msg = request()
    raw = Headers(
        raw=[(b"mcp-protocol-version", V.encode()), (b"mcp-method", b"  tools/call\t"), (b"mcp-name", b"echo ")]
    )
    assert modern.envelope(msg, raw).version == V
    read = request("resources/read", uri="test://a b")
    assert modern.envelope(read, headers(read, mcp_name=b64("test://a b"))).version == V
    nameless = request(name=5)  # the method answers a body without a string name
    assert modern.envelope(nameless, headers(nameless, mcp_name=None)).version == V


SCHEMA = {
    "type": "object",
    "properties": {
        "region": {"type": "string", "x-mcp-header": "Region"},
        "count": {"type": "integer", "x-mcp-header": "Count"},
        "dry": {"type": "boolean", "x-mcp-header": "Dry"},
        "where": {"type": "object", "properties": {"zone": {"type": "string", "x-mcp-header": "Zone"}}},
        "items": {"type": "array", "items": {"type": "string", "x-mcp-header": "Item"}},  # not on a properties chain
        "ratio": {"type": "number", "x-mcp-header": "Ratio"},  # numbers may not be mirrored
        "plain": {"type": "string"},
    },
}


def params(args: dict, **sent: str) -> None:
    modern.check_param_headers(SCHEMA, args, Headers({f"mcp-param-{k}": v for k, v in sent.items()}))


def test_marked_arguments_must_be_mirrored():
    params({})
    params({"region": None, "plain": "x", "items": ["a"], "ratio": 0.5})  # null, unmarked, unreachable: no header
    params({"region": "eu-west1", "count": 42, "dry": False}, region="eu-west1", count="42.0", dry="false")
    params({"where": {"zone": "b"}}, zone="b", other="ignored")
    params({"region": "Hello, 世界"}, region=b64("Hello, 世界"))
    params({"region": "=?base64?SGVsbG8="}, region="=?base64?SGVsbG8=")  # no suffix: a literal


@pytest.mark.parametrize(
    "args,sent",
    [
        ({"region": "eu"}, {}),
        ({"region": "eu"}, {"region": "us"}),
        ({}, {"region": "eu"}),
        ({"count": 42}, {"count": "43"}),
        ({"count": 42}, {"count": "4.2e1"}),
        ({"dry": True}, {"dry": "True"}),
        ({"where": {"zone": "b"}}, {}),
        ({"region": "Hello"}, {"region": "=?base64?SGVsbG8?="}),
        ({"region": {"not": "a scalar"}}, {"region": "x"}),
    ],
)
def test_param_header_mismatches(args, sent):
    with pytest.raises(MCPError) as err:
        params(args, **sent)
    assert err.value.code == -32020


def test_answers_get_their_modern_shape():
    listed = modern.finish(
        "tools/list", {"jsonrpc": "2.0", "id": 1, "result": {"tools": []}}, server_info=INFO, scope="public", ttl_ms=500
    )
    assert listed["result"] == {
        "tools": [],
        "resultType": "complete",
        "_meta": {modern.META_SERVER_INFO: INFO},
        "ttlMs": 500,
        "cacheScope": "public",
    }
    called = modern.finish(
        "tools/call",
        {"jsonrpc": "2.0", "id": 1, "result": {"content": [], "_meta": {"x": 1}}},
        server_info=INFO,
        scope="private",
        ttl_ms=500,
    )
    assert called["result"] == {
        "content": [],
        "resultType": "complete",
        "_meta": {"x": 1, modern.META_SERVER_INFO: INFO},
    }
    # A relayed result's own hints can only shorten the ttl and narrow the scope.
    relayed = {"jsonrpc": "2.0", "id": 1, "result": {"contents": [], "ttlMs": 20, "cacheScope": "private"}}
    read = modern.finish("resources/read", relayed, server_info=INFO, scope="public", ttl_ms=500)["result"]
    assert (read["ttlMs"], read["cacheScope"]) == (20, "private")


def test_errors_keep_their_shape_and_get_their_status():
    gone = {"jsonrpc": "2.0", "id": 1, "error": {"code": -32002, "message": "Resource not found", "data": {"uri": "u"}}}
    assert modern.finish("resources/read", gone, server_info=INFO, scope="public", ttl_ms=0)["error"] == {
        "code": -32602,
        "message": "Resource not found",
        "data": {"uri": "u"},
    }
    limited = {"jsonrpc": "2.0", "id": 1, "error": {"code": -31029, "message": "slow down", "data": {"retryAfter": 2}}}
    assert modern.finish("tools/call", limited, server_info=INFO, scope="public", ttl_ms=0)["error"]["code"] == -31029
    statuses = ((-32601, 404), (-32020, 400), (-32021, 400), (-32022, 400), (-32602, 400), (-31029, 429), (-32603, 200))
    for code, status in statuses:
        assert modern.http_status({"error": {"code": code, "message": ""}}) == status
    assert modern.http_status({"result": {}}) == 200
