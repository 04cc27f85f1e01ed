"""The floor of the gateway: what adapters, workers and the roof stand on.

It imports only ``registry`` and ``schemas`` (tests/test_layering.py): the runtime (the one door
to tasks), the bus and store backends, configuration and the settings loader, the
authentication seam (``auth``: credentials -> principal), HTTP and SSE helpers, capability
routing, metrics and logs, the child processes the gateway runs (``children``: stdio MCP servers)
and files reloaded on change (``watched_file``).
"""

__version__ = "0.1.0"
