"""JSON-RPC 2.0 framing for MCP: protocol versions, error codes, messages and their classification."""

from __future__ import annotations

import json
from typing import Any

from gateway.core import strict_json

# Handshake-era ("legacy") revisions this gateway serves with sessions (newest first).
SUPPORTED_VERSIONS = ("2025-11-25", "2025-06-18", "2025-03-26")
LATEST_VERSION = SUPPORTED_VERSIONS[0]
# Stateless ("modern") revisions: every request carries its version in params._meta (modern.py).
MODERN_VERSIONS = ("2026-07-28",)
ALL_VERSIONS = (*MODERN_VERSIONS, *SUPPORTED_VERSIONS)  # server/discover's supportedVersions
DEFAULT_HEADER_VERSION = "2025-03-26"  # assumed when MCP-Protocol-Version is absent (spec)
PRIMING_SINCE = "2025-11-25"  # SSE priming events (id + empty data + retry) from this revision on

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
RESOURCE_NOT_FOUND = -32002
REQUEST_CANCELLED = -32800
# The caller is past one of its quotas (HTTP 429: "29"); data {"retryAfter": seconds}. Outside
# -32000..-32099, which MCP keeps filling with codes of its own (2026-07-28 reserves -32020..-32099),
# so one code serves both eras.
RATE_LIMITED = -31029
# 2026-07-28 (each answered with HTTP 400).
HEADER_MISMATCH = -32020
MISSING_CLIENT_CAPABILITY = -32021
UNSUPPORTED_VERSION = -32022

LOG_LEVELS = ("debug", "info", "notice", "warning", "error", "critical", "alert", "emergency")


class MCPError(Exception):
    """A JSON-RPC error to send back (code, message, optional data)."""

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(message)
        self.code, self.message, self.data = code, message, data

    def body(self) -> dict[str, Any]:
        err: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.data is not None:
            err["data"] = self.data
        return err


def result(id: Any, value: dict[str, Any]) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": id, "result": value}


def rate_limited(message: str, retry_after: int) -> MCPError:
    """The error of a request refused by one of the caller's quotas (HTTP 429 when it is the reply)."""
    return MCPError(RATE_LIMITED, message, {"retryAfter": retry_after})


def error(id: Any, exc: MCPError) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": id, "error": exc.body()}


def notification(method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
    msg: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
    if params is not None:
        msg["params"] = params
    return msg


def request(id: Any, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
    msg = notification(method, params)
    msg["id"] = id
    return msg


def _valid_id(value: Any) -> bool:
    return isinstance(value, (str, int)) and not isinstance(value, bool)


def classify(msg: Any) -> str:
    """'request' | 'notification' | 'response'; raises MCPError(INVALID_REQUEST) otherwise."""
    if isinstance(msg, list):
        raise MCPError(INVALID_REQUEST, "batches are not supported (removed in 2025-06-18)")
    if not isinstance(msg, dict) or msg.get("jsonrpc") != "2.0":
        raise MCPError(INVALID_REQUEST, "not a JSON-RPC 2.0 message")
    if "method" in msg:
        if not isinstance(msg["method"], str) or not msg["method"]:
            raise MCPError(INVALID_REQUEST, "method must be a non-empty string")
        if "params" in msg and not isinstance(msg["params"], dict):
            raise MCPError(INVALID_REQUEST, "params must be an object")
        if "id" not in msg:
            return "notification"
        if not _valid_id(msg["id"]):
            raise MCPError(INVALID_REQUEST, "id must be a string or an integer")
        return "request"
    if _valid_id(msg.get("id")) and (("result" in msg) != ("error" in msg)):
        return "response"
    raise MCPError(INVALID_REQUEST, "neither a request, a notification nor a response")


def parse(body: bytes) -> Any:
    try:
        return strict_json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MCPError(PARSE_ERROR, f"Parse error: {exc}") from None


def dumps(msg: Any) -> str:
    return json.dumps(msg, separators=(",", ":"), ensure_ascii=False)
