"""The roof: the Starlette app, the CLI, the routes of the internal API, the cluster, the
supervisor of workers, and the desktop bridge (``mcp_bridge``: ``interlace mcp stdio``). It wires
the core (``gateway.core``), the adapters (``protocols``) and the agents together; nothing below it imports it.
"""

from gateway.core import __version__

__all__ = ["__version__"]
