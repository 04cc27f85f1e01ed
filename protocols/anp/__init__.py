"""The ANP adapter (Agent Network Protocol): the gateway's inbound ANP face (did:wba document,
Agent Descriptions, JSON-RPC with DIDWba authentication) and the outbound connector that runs
tasks on remote ANP agents.

Surface (alike in every adapter): ``routes(options)``, ``mount(app, options)``, ``Connector``
(``ANPConnector``, built by the gateway with ``Connector.from_record(record, runtime)``) and
``ANPOptions``.

Modules: ``didwba`` (did:wba identifiers, keys, proofs, the gateway's document), ``httpsig``
(the legacy DIDWba header; RFC 9421 itself is ``gateway.core.httpsig``), ``auth`` (request authentication, nonces,
bearer tokens, DID resolution with a cache), ``wire`` (ad.json, OpenRPC, the canonical mapping),
``options`` (``ANPOptions``, the host outbound calls sign as), ``server`` (routes, JSON-RPC
methods), ``client`` and ``connector`` (outbound).

Use: ``create_app`` serves ANP with ``ANPOptions.from_env()``: ``INTERLACE_ANP_PUBLIC_HOST``
(``host[:port]`` of the gateway's ``did:wba``; default: the Host of each request, so set it in
production: a DID derived from an IP address is not a valid did:wba), ``INTERLACE_ANP_PUBLIC_URL``
(base URL written into ad.json and OpenRPC), ``INTERLACE_ANP_WINDOW_S``, ``..._SKEW_S``,
``..._TOKEN_TTL_S``, ``..._DID_CACHE_TTL_S``, ``..._WAIT_S``. ``mount(app, ANPOptions(resolve=...))``
replaces the routes with other options, e.g. a DID resolver for tests (``resolve`` is any
``async (did) -> document``; the default fetches ``https://<host>/.well-known/did.json`` or
``https://<host>/<path>/did.json``; either way results are cached).

The gateway's did:wba document holds the node's Ed25519 key (``runtime.identity``). Gateway
nodes that share one public host name must share that key (``INTERLACE_NODE_KEY``), or a
caller may resolve one node's document and be answered, or be called, by another.

Not done here: the ANP meta-protocol (LLM-driven protocol negotiation, ``anp.meta_protocol``) is
out of scope, and so are ANP's end-to-end encryption (the gateway's document has no E2EE keys)
and ``/.well-known/agent-descriptions`` discovery. Callers must be did:wba (not did:web).

Mapping between ANP and the canonical model (each row is tested in tests/test_anp_server.py and
tests/test_anp_connector.py):

| ANP | canonical |
| --- | --- |
| ``/.well-known/did.json`` (did:wba, Multikey ``#key-1``) | ``runtime.identity``; ``service`` -> ``/anp/ad.json`` |
| ``/anp/agents/{name}/ad.json`` + OpenRPC ``send_message``... | one per name in ``runtime.known_agents()`` (*1) |
| DIDWba caller DID | ``Task.owner``: only that DID (or an admin) acts on the task |
| ``send_message`` ``message`` (string) | ``runtime.submit``: user Message, ``TextPart(message)`` |
| ``send_message`` ``data`` (object) | a further ``DataPart(data)`` |
| ``send_message`` ``context_id`` / ``metadata`` | task ``context_id`` / task metadata (``anp.*`` keys dropped) |
| ``send_message`` ``agent`` (at ``/anp/rpc``) | the agent routed to (name or DID) (*2) |
| ``send_message`` ``task_id`` + ``message`` | ``runtime.continue_task`` (the task waits for input) |
| ``send_message`` waits ``wait_s`` | ``runtime.wait`` |
| result ``state``, ``text``, ``data``, ``artifacts`` | task state; joined artifact text parts, data parts, artifacts |
| result ``state: input-required`` + ``message`` | task input-required + the agent's question |
| result ``state: working`` | not final within ``wait_s``: poll ``get_task`` |
| error -32010 ``{task_id, state}`` (*3) | task ``failed`` / ``rejected`` / ``canceled`` (from ``send_message``) |
| ``get_task`` ``task_id`` [``wait_s``] | ``runtime.get`` [``runtime.wait``] (a failed task is a result, not an error) |
| ``cancel_task`` ``task_id`` | ``runtime.cancel``; error -32002 when already final |
| error -32001 / -32003 / -32050 | task not found (or another caller's) / ``UnknownAgent`` / backend unavailable |
| error -32029 ``{retryAfter}`` | the caller is past a quota: HTTP 429 + ``Retry-After`` (a batch: 200 + the header) |
| outbound: JSON-RPC call (*4) | a task for an agent whose record has an ``anp`` endpoint (``ANPConnector``) |
| outbound: method (*5) | the task's last user message |
| outbound: params (*6) | the message's data and text parts (file parts fail the task) |
| outbound: result (string) | artifact ``TextPart`` |
| outbound: result (other JSON) | artifact ``DataPart`` |
| outbound: JSON-RPC error / HTTP error / 401 | task ``failed`` with the remote's message |

(*1) with its record's description, skills, did.
(*2) ``/anp/agents/{name}/rpc`` fixes the agent.
(*3) the error's message is the agent's text.
(*4) signed as the gateway's did:wba.
(*5) method = metadata ``anp.method``, or a data part ``{method, params}``, or the remote's only method
(``send_message`` on another gateway).
(*6) params = metadata ``anp.params``, else the object data part (under ``data`` if the method declares
an object ``data``) plus the text as the first string param.
"""

from protocols.anp.connector import ANPConnector as Connector
from protocols.anp.options import ANPOptions
from protocols.anp.server import mount, routes

__all__ = ["Connector", "ANPOptions", "mount", "routes"]
