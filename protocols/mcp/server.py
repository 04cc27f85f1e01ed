"""``/mcp`` on a gateway app: its routes, ``mount``, and the app's one MCP service.

A gateway app has one ``MCPService`` (``app.state.mcp``, see ``service_for``), started and
stopped with the app's lifespan, served over Streamable HTTP (``StreamableHTTP``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from gateway.core.http import replace_routes
from protocols.mcp.methods import MCPOptions, MCPService
from protocols.mcp.streamable_http import StreamableHTTP
from schemas.agent_record import AgentRecord

ROUTE_PREFIX = "mcp"
METHODS = ["GET", "POST", "DELETE"]


def service_for(app: Any, options: MCPOptions | None = None) -> MCPService:
    """The app's MCP service: the one ``mount`` set, else a new one with ``options`` (default:
    ``INTERLACE_MCP_*``, and the gateway's ``--mcp-upstreams`` file). The gateway app starts it
    with its lifespan and stops it before the runtime."""
    service = getattr(app.state, "mcp", None)
    if service is None:
        runtime = app.state.runtime
        options = options or MCPOptions.from_env(upstreams_file=runtime.config.mcp_upstreams_file)
        service = MCPService(runtime, options)
        app.state.mcp = service
    return service


def routes(options: MCPOptions | None = None) -> list[BaseRoute]:
    """``/mcp``, served by the app's MCP service (``service_for(app, options)``)."""
    binding: StreamableHTTP | None = None

    async def endpoint(request: Request) -> Response:
        nonlocal binding
        service = service_for(request.app, options)
        if binding is None or binding.service is not service:
            binding = StreamableHTTP(service)
        return await binding.endpoint(request)

    return [Route("/mcp", endpoint, methods=METHODS, name=f"{ROUTE_PREFIX}:endpoint")]


def mount(app: Any, options: MCPOptions | None = None) -> MCPService:
    """Serve ``/mcp`` on a gateway app (``create_app``) with these options (default:
    ``INTERLACE_MCP_*``), before the app starts; the app's lifespan starts and stops it.
    ``options.upstreams`` are the fixed upstream MCP servers to federate."""
    service = MCPService(app.state.runtime, options or MCPOptions.from_env())
    app.state.mcp = service
    route = Route("/mcp", StreamableHTTP(service).endpoint, methods=METHODS, name=f"{ROUTE_PREFIX}:endpoint")
    replace_routes(app, ROUTE_PREFIX, [route])
    return service


def tool_drift(app: Any) -> Callable[[AgentRecord], dict]:
    """For ``GET /registry/agents/{did}``: the tools of an MCP agent hidden since their definition
    changed after it was pinned (rug-pull defence), until the owner re-registers."""

    def annotate(record: AgentRecord) -> dict:
        if record.endpoints.mcp is None:
            return {}
        drift = [q for q in service_for(app).upstreams.quarantined() if q["upstream"] == record.name]
        return {"mcp_tool_drift": drift}

    return annotate
