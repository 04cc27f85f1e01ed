"""MCP adapter: the gateway's ``/mcp`` endpoint (Streamable HTTP, 2025-11-25 handshake era) and
federation of upstream MCP servers.

Layout: ``wire`` (JSON-RPC framing, SSE), ``sessions`` (session state, resumable event log and
cross-node mailboxes in the shared key/value store), ``server`` (transport, dispatch, ``mount``),
``upstream`` (pooled upstream sessions, aggregation, naming policy, rug-pull pins), ``agents``
(routable agents as tools and the canonical mapping), ``connector`` (an MCP server as the target
of a task from any other protocol: one tool call; its mapping table is in that module).

Use: ``create_app`` serves ``/mcp`` (started and stopped with the app) with the gateway's agents
as tools, and federates every live registry record with an ``endpoints.mcp`` URL (it leaves with
its record; ``follow_registry=False`` / ``INTERLACE_MCP_FOLLOW_REGISTRY=0`` turns that off). To
federate fixed upstream MCP servers too, call ``mount(app, upstreams=[("weather",
"http://host/mcp"), ...], settings=McpSettings(naming="pass-through"))`` before the app starts
(or set ``INTERLACE_MCP_UPSTREAMS``); ``app.state.mcp.upstreams.set_upstreams([...])`` swaps the
set at run time.

Settings (``McpSettings``, each also ``INTERLACE_MCP_<NAME>``): ``naming`` (prefix | pass-through),
``allowed_hosts`` / ``allowed_origins`` (DNS-rebinding defence: a foreign Host gets 421, a foreign
Origin 403; default loopback hosts only, so a gateway bound to 0.0.0.0 must list its public
names, e.g. ``INTERLACE_MCP_ALLOWED_HOSTS=gw1:*,gw.example.com:*``), ``call_timeout_s``,
``session_ttl_s``, ``event_ttl_s``, ``page_size``. Rug-pull state: ``GET /registry/agents/{did}``
shows ``mcp_tool_drift``; a re-registration (higher seq) re-pins, as does
``app.state.mcp.upstreams.repin(agent, tool)``.

Mapping between MCP and the canonical model (each row is tested in tests/test_mcp_agents.py):

| MCP                                                     | canonical                                                 |
|---------------------------------------------------------|-----------------------------------------------------------|
| tool ``<agent>`` (one per routable agent)               | ``runtime.submit(message, agent=<agent>)``                |
| that tool's ``description``                             | the agent record's description and skill names            |
| ``tools/call`` argument ``message`` (string)            | user Message, first part ``TextPart(text)``               |
| ``tools/call`` argument ``data`` (object)               | second part ``DataPart(data)``                            |
| ``send_task`` ``task_id`` + ``message``                 | ``runtime.continue_task(task_id, message)``               |
| ``notifications/cancelled`` for the call                | ``runtime.cancel(task_id)``                               |
| ``_meta.progressToken`` on the call                     | each task event -> ``notifications/progress``             |
| result ``content[]`` text                               | artifact ``TextPart``                                     |
| result text (JSON) + ``structuredContent``              | artifact ``DataPart`` (one dict: it; several: ``{data:[...]}``) |
| result ``image`` / ``audio`` content                    | ``FilePart`` bytes with ``image/*`` / ``audio/*`` type    |
| result embedded ``resource`` (text or blob)             | ``FilePart`` bytes of any other type                      |
| result ``resource_link``                                | ``FilePart`` with a ``url``                               |
| ``isError: true`` + the agent's message                 | task ``failed`` / ``rejected`` / ``canceled``, or not final in time (then canceled) |
| result text = the agent's question, ``structuredContent {task_id, state}`` | task ``input-required`` / ``auth-required`` |

Upstream MCP tools, resources and prompts are relayed as MCP (no canonical task): their
content passes through unchanged, and progress, logging, cancellation, sampling and elicitation
are relayed in both directions.
"""

from .server import McpServer, McpSettings, mount, routes, server_for, upstreams_from_env
from .upstream import Upstream, UpstreamSet

__all__ = ["McpServer", "McpSettings", "Upstream", "UpstreamSet", "mount", "routes", "server_for", "upstreams_from_env"]
