"""MCP adapter: the gateway's ``/mcp`` endpoint (Streamable HTTP in both eras: 2026-07-28
stateless, and the 2025-11-25 / 2025-06-18 / 2025-03-26 handshake with sessions), federation of
upstream MCP servers, and the outbound connector.

Layout: ``wire`` (JSON-RPC framing, versions, error codes), ``sessions`` (session state, resumable
event log and cross-node mailboxes in the shared key/value store), ``streamable_http`` (the
binding: which era a POST belongs to, POST/GET/DELETE of sessions, Host/Origin and session
headers, SSE streams and resumption), ``modern`` (the 2026-07-28 rules: the per-request envelope,
the mirrored headers, the shape of an answer), ``stateless_http`` (the 2026-07-28 binding: one
POST, one request, cancellation by closing the stream), ``mrtr`` (2026-07-28 input-required results
for what an upstream or an agent asks of the client) and ``request_state`` (their signed
``requestState``), ``listen`` (``subscriptions/listen``
streams and the change feed nodes share), ``methods`` (``MCPService``: initialize, notifications,
server/discover, tools, resources, prompts, completion, logging; ``MCPOptions``), ``tasks_ext``
(MCP tasks over canonical tasks: the 2026-07-28 ``io.modelcontextprotocol/tasks`` extension and
the 2025-11-25 tasks utility), ``server``
(``routes``, ``mount``, the app's service), ``agents``
(routable agents as tools, the meta tools and the canonical mapping), ``client`` (the MCP client:
one pooled session with a remote MCP server), ``stdio_upstream`` (a stdio MCP server as a
supervised child process beneath the same client logic), ``upstreams_file`` (the operator's
upstream file, HTTP and stdio entries, reloaded on change), ``federation`` (the upstream set,
aggregation, naming policy, rug-pull pins), ``connector`` (``MCPConnector``: an MCP server as the target of a
task from any other protocol: one tool call; its mapping table is in that module).

Use: ``create_app`` serves ``/mcp`` (started and stopped with the app) with the gateway's agents
as tools, and federates every live registry record with an ``endpoints.mcp`` URL (it leaves with
its record; ``follow_registry=False`` / ``INTERLACE_MCP_FOLLOW_REGISTRY=0`` turns that off). To
federate fixed upstream MCP servers too, call ``mount(app, MCPOptions(upstreams=[("weather",
"http://host/mcp"), ...], naming="pass-through"))`` before the app starts (or set
``INTERLACE_MCP_UPSTREAMS="weather=http://host/mcp,..."``; ``MCPOptions.from_env(**overrides)``
reads the environment for what is not given, ``MCPOptions(...)`` does not);
``app.state.mcp.upstreams.set_upstreams([...])`` swaps the set at run time.

Options (``MCPOptions``, each also ``INTERLACE_MCP_<NAME>``): ``upstreams``, ``upstreams_file``
(``interlace serve --mcp-upstreams FILE``), ``naming`` (prefix |
pass-through), ``allowed_hosts`` / ``allowed_origins`` (DNS-rebinding defence: a foreign Host gets
421, a foreign Origin 403; default loopback hosts only, so a gateway bound to 0.0.0.0 must list
its public names, e.g. ``INTERLACE_MCP_ALLOWED_HOSTS=gw1:*,gw.example.com:*``),
``call_timeout_s``, ``session_ttl_s``, ``event_ttl_s``, ``page_size``, ``cache_ttl_ms``,
``task_ttl_ms`` and ``task_poll_ms`` (MCP tasks, tasks_ext.py). Rug-pull state:
``GET /registry/agents/{did}`` shows ``mcp_tool_drift``; a re-registration (higher seq) re-pins,
as does ``app.state.mcp.upstreams.repin(agent, tool)``.

``find_agents`` and ``send_task`` by query match agents to text with the registry's capability
index (the one capability routing uses).

What each caller sees and may call (agent tools, upstream tools, prompts, resources) is the
operator's policy's: see methods.py; a denied item answers exactly as an unknown one.

Mapping between MCP and the canonical model (each row is tested in tests/test_mcp_agents.py):

| MCP | canonical |
| --- | --- |
| tool ``<agent>`` (one per routable agent) | ``runtime.submit(message, agent=<agent>)`` |
| that tool's ``description`` | the agent record's description and skill names |
| ``tools/call`` argument ``message`` (string) | user Message, first part ``TextPart(text)`` |
| ``tools/call`` argument ``data`` (object) | second part ``DataPart(data)`` |
| ``send_task`` ``task_id`` + ``message`` | ``runtime.continue_task(task_id, message)`` |
| ``notifications/cancelled`` for the call (2026-07-28: its response stream closed) | ``runtime.cancel(task_id)`` |
| the call as an MCP task (*4) | the same task: MCP task id = canonical id |
| ``tasks/get``; ``tasks/cancel`` | ``runtime.get``; ``runtime.cancel`` |
| ``tasks/update`` answer (``tasks/result``'s elicitation, 2025-11-25) | ``runtime.continue_task`` |
| ``_meta.progressToken`` on the call | each task event -> ``notifications/progress`` |
| result ``content[]`` text | artifact ``TextPart`` |
| result text (JSON) + ``structuredContent`` | artifact ``DataPart`` (one dict: it; several: ``{data:[...]}``) |
| result ``image`` / ``audio`` content | ``FilePart`` bytes with ``image/*`` / ``audio/*`` type |
| result embedded ``resource`` (text or blob) | ``FilePart`` bytes of any other type |
| result ``resource_link`` | ``FilePart`` with a ``url`` |
| ``isError: true`` + the agent's message | task ``failed`` / ``rejected`` / ``canceled``, or not final in time (*1) |
| result text = the agent's question, ``structuredContent`` (*2) | task ``input-required`` / ``auth-required`` |
| (2026-07-28, elicitation declared) ``input_required``, ``inputRequests.input`` asks it (*3) | ``input-required`` |
| retry: ``inputResponses.input`` accepted (``content.message``) | ``runtime.continue_task(task_id, message)`` |
| retry: ``inputResponses.input`` declined or cancelled | ``runtime.cancel(task_id)`` |

(*1) a task not final in time is then canceled.
(*2) ``structuredContent`` is ``{task_id, state}``.
(*3) tested in tests/test_mcp_mrtr.py, with the rows below it (mrtr.py).
(*4) the extension declared (2026-07-28) or ``params.task`` (2025-11-25); this row and the two
below it are tested in tests/test_mcp_tasks.py, the status mapping is in tasks_ext.py.

Upstream MCP tools, resources and prompts are relayed as MCP (no canonical task): their
content passes through unchanged, and progress, logging, cancellation, sampling and elicitation
are relayed in both directions (to a 2026-07-28 client, sampling, elicitation and roots as
input-required results: mrtr.py). A tool that declares task support may run as a task the
gateway holds instead (tasks_ext.py).
"""

from protocols.mcp.connector import MCPConnector as Connector
from protocols.mcp.methods import MCPOptions
from protocols.mcp.server import mount, routes

__all__ = ["Connector", "MCPOptions", "mount", "routes"]
