"""How reaching an upstream MCP server fails, whatever era it speaks (``protocols.mcp.client``,
``protocols.mcp.upstream_modern``)."""

from __future__ import annotations

from gateway.core.egress import UNREACHABLE


class UpstreamUnavailable(Exception):
    """The upstream cannot be reached or broke the protocol. The message is client-safe and the
    same whatever happened (``agent unreachable``: telling a refused port from an HTTP 404 would
    make the gateway a port scanner); ``detail`` says what happened, for the log."""

    def __init__(self, name: str, detail: str) -> None:
        super().__init__(f"upstream {name!r}: {UNREACHABLE}")
        self.detail = detail


class UpstreamRefused(UpstreamUnavailable):
    """The upstream answered, but not in JSON-RPC: an HTTP error without a JSON-RPC error body, or
    a body of another type. Era discovery reads it as "not a 2026-07-28 server"."""


class UpstreamTimeout(Exception):
    pass
