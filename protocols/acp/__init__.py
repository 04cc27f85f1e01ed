"""The ACP adapter (Agent Communication Protocol, i-am-bee/acp, OpenAPI 0.2.0 / acp-sdk 1.0.x):
the gateway's inbound ACP REST face under ``/acp`` and the outbound connector that runs tasks on
remote ACP agents.

Surface (alike in every adapter): ``routes(options)``, ``mount(app, options)``, ``Connector``
(``ACPConnector``, built by the gateway with ``Connector.from_record(record, runtime)``) and
``ACPOptions`` (``ACPOptions.from_env()``: ``INTERLACE_ACP_PUBLIC_URL``, ``..._SYNC_TIMEOUT_S``).

Modules: ``wire`` (canonical <-> ACP translations), ``server`` (the routes, ``ACPOptions``),
``client`` and ``connector`` (outbound; the gateway's registry connectors run one for every live
record with an ``acp`` endpoint and no ``bus`` one). ACP is frozen (merged into A2A), so the
server side reads leniently: unknown fields are ignored and a body needs no Content-Type.

Run states (each row is tested in tests/test_acp_wire.py):

| canonical TaskState | ACP run status | back (remote run status -> canonical)                 |
|---------------------|----------------|-------------------------------------------------------|
| submitted           | created        | created -> submitted                                   |
| working             | in-progress    | in-progress -> working                                 |
| input-required      | awaiting       | awaiting -> input-required                             |
| auth-required       | awaiting (*1)  |                                                        |
| completed           | completed      | completed -> completed                                 |
| failed              | failed         | failed -> failed                                       |
| canceled            | cancelled      | cancelled -> canceled                                  |
| rejected            | failed (*2)    |                                                        |
| (none) (*3)         |                | cancelling -> working                                  |

(*1) ACP has no auth state; the agent's message is the ``await_request``.
(*2) with ``error.data.state = "rejected"``.
(*3) a canonical cancel is immediate: ``POST /runs/{id}/cancel`` answers 202 with ``cancelled``.

Other objects:

| ACP | canonical |
| --- | --- |
| Run ``run_id`` (UUID) | Task ``id`` (the same UUID, hex) |
| Run ``session_id`` (UUID); ``session`` object | Task ``context_id`` (hex); carried ``history``/``state`` (*4) |
| Run ``agent_name`` / POST ``agent_name`` | ``runtime.submit(agent=...)`` / Task ``route.agent`` |
| POST ``input`` (one or more Messages) | one user Message with all their parts, in order |
| resume ``await_resume.message`` | ``runtime.continue_task(task_id, message)`` |
| Run ``await_request.message`` | the interrupted task's status message |
| Run ``output`` | agent messages (not questions), then one message with every artifact's parts (*5) |
| Run ``error {code, message, data}`` | failed/rejected status message text |
| Message ``role`` user / ``agent/<name>`` | Message ``role`` user / agent |
| part ``text/plain``, plain | ``TextPart(text)`` |
| part ``application/json`` or ``*+json``, plain | ``DataPart(json)`` (other +json types keep their type in metadata) |
| part other ``text/*``, plain | ``TextPart`` with metadata ``interlace.acp.content_type`` |
| part other type, plain | ``FilePart`` (bytes = UTF-8 of the content), ``media_type`` |
| part any type, ``content_encoding: base64`` | ``FilePart(bytes, media_type)`` |
| part ``content_url`` | ``FilePart(url, media_type)`` |
| part ``name`` (an artifact) | ``Artifact(name)`` on output; on input the name is kept in metadata (*6) |
| part ``metadata`` (citation / trajectory) | part metadata ``interlace.acp.metadata`` |
| stream ``run.<status>`` events (*7) | status updates (submitted, working, interrupted, terminal) |
| stream ``message.created``/``message.part``/``message.completed`` | artifact updates (and agent status messages) |
| AgentManifest | AgentRecord: name, description, skills' modes -> content types, skills -> capabilities, tags (*8) |
| error ``not_found`` 404 / ``invalid_input`` 422 / ``server_error`` (*9) | unknown agent, run or session / bad body |

(*4) the carried ``history``/``state`` are kept in the shared kv.
(*5) then, last, the completing status message.
(*6) and, for a file, as its ``filename``.
(*7) ``run.created``/``run.in-progress``/``run.awaiting``/``run.completed``/``run.failed``/``run.cancelled``.
(*8) and DID, version, skill ids, protocols, labels, examples under ``metadata.annotations.interlace``.
(*9) ``server_error`` 403, 500, 503: wrong run state, internal, bus down (in that order).

Not carried: ``generic`` events (neither way), Message ``created_at``/``completed_at`` (the
SDK fills them), a carried session's history for the agent (it is listed again by
``GET /sessions/{id}``, not loaded into the task), a context id that is not a UUID (its runs
have ``session_id: null``).
"""

from protocols.acp.connector import ACPConnector as Connector
from protocols.acp.server import ACPOptions, mount, routes

__all__ = ["Connector", "ACPOptions", "mount", "routes"]
