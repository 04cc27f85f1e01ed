"""The matrix: every client protocol against every kind of target agent, through ONE gateway.

Clients (each the official one): MCP (the ``mcp`` SDK's Client, once per era: ``mcp`` opens a
2025-11-25 session, ``mcp-modern`` connects in ``auto`` mode and speaks 2026-07-28, stateless),
A2A (``a2a-sdk``'s client, 1.0, JSON-RPC), ACP (``acp-sdk``'s client, in its own environment),
ANP (the ``anp`` package's ANPCrawler, signing as a did:wba) and the internal HTTP API (httpx).
Targets: a bus worker in the gateway, and remote agents reached through the connector the gateway runs for their signed
registry records: an MCP server (``mcp`` SDK), an A2A agent (``a2a-sdk`` server), an ACP agent
(``acp-sdk`` server) and an ANP agent (FastANP). The fixture agents (tests/fixtures/matrix_*)
echo what they receive; markers in the text make them send a file, stream, wait, or fail.

Authentication is on, as on any gateway that is not a loopback quick start (matrix_env.py): the
gateway takes API keys (``--api-keys``) and an OpenID Connect issuer's tokens (``--auth-issuer``),
and every client is a principal of its own presenting its protocol's credentials the way its SDK
does: the internal API an API key as ``Authorization: Bearer``; A2A an API key through the
a2a-sdk's ``AuthInterceptor`` and credential service (the card's ``apiKey`` scheme); ACP an API
key in the acp-sdk client's headers; MCP the issuer's access token for the gateway's MCP resource,
on the httpx client the SDK's transport sends with (the federation cell too); ANP its did:wba
signatures (``/anp/*`` authenticates its callers itself). Each task belongs to its caller.
``test_without_credentials`` sends each face's call with none and gets that face's refusal: 401
with a ``Bearer`` challenge (MCP's names its RFC 9728 ``resource_metadata``, A2A's body is its
JSON-RPC error), or ANP's ``DIDWba`` challenge. Gateways without authentication are what the
rest of the suite runs on.

Each of the 30 cells (25 pairs, the MCP row twice) is checked four ways:
  ``test_content``   text + JSON data in, echoed back; text + a binary file in, echoed back; a
                     binary file out from the agent. Intact, or the documented degradation. The
                     task is owned by the client's principal, and no client credentials reached
                     the remote agents (those in this process: all but the ACP one).
  ``test_streaming`` an answer streamed in three pieces arrives as several events where both
                     sides stream (and as one, or none, where either cannot).
  ``test_cancel``    a cancel from the client ends the task and reaches the remote agent.
  ``test_errors``    a remote failure arrives as the client protocol's failure, with its text.
The tests after the cells check each row of the MCP connector's mapping table.

How a cell travels: client face -> canonical task -> the target's bus stream -> the bus worker, or
the connector for the target's protocol (A2AConnector, ACPConnector, ANPConnector, MCPConnector)
-> the remote agent. One exception: MCP client x MCP target is MCP federation (a default gateway
offers a registered MCP server's own tools, ``m-mcp__echo``, and relays the call; no task).

Degradations (asserted as written; everything else arrives intact), one item per place, where -- what:

- MCP client, file in -- an agent tool takes ``{message, data}`` (``tools/call`` arguments are
  JSON): the file travels base64 inside the data, ``{"file": {name, mimeType, data}}``, and the
  agent receives a data part. To an MCP target (federation) the file goes in that server's own tool
  argument (``files``), and comes back as image content
- ANP client, file in -- ``send_message`` takes ``{message, data}`` (JSON-RPC params): the same
  base64-in-data form
- ANP target, file in -- refused: the task fails with "file parts cannot be sent to an ANP agent
  (its JSON-RPC params are JSON)"
- ANP target, text + data -- one JSON-RPC result per call: the agent's ``{text, data}`` object
  arrives as one data part (a bare string result is a text part)
- ANP target, file out -- the agent's file arrives base64 inside that data part
- ANP target, streaming -- one result: the whole text arrives as one event
- ANP target, cancel -- ANP's JSON-RPC has no cancel: the gateway abandons the call (closes the
  connection) and the agent sees the disconnect
- ANP client, streaming -- ``send_message`` answers once: the whole text arrives in the result, no
  events
- ANP client, errors -- JSON-RPC error -32010 whose message is the agent's text
- MCP client, streaming -- each task event is one ``notifications/progress``; for an artifact event
  its message names the artifact ("artifact echo") instead of carrying the chunk, for an agent
  status message (an MCP target's progress) it is the text; the content comes in the result
- MCP target, file in -- the file goes base64 in the tool's ``files`` argument (the fixture tool
  declares one; a tool without one fails the task)
- MCP target, streaming -- progress notifications become ``working`` status messages (not artifact
  chunks); the result is one artifact with the whole text
- A2A on either side, data -- the a2a-sdk carries JSON as protobuf ``Value``: integers come back as
  floats (1 -> 1.0; equal as JSON numbers)
- internal API, streaming -- no streaming send: the client sets ``metadata["interlace.stream"]`` (so
  connectors stream) and follows ``GET /tasks/{id}/events``
- file names -- not part of the check: MCP image content has no name, and parts sent to an ACP agent
  carry none (an ACP part's name makes it an artifact); bytes and media type are checked everywhere
- ACP target, cancel -- the remote run is marked ``cancelled`` (the fixture counts the 202 to
  ``POST /runs/{id}/cancel``); acp-sdk 1.0.3 does not interrupt the agent's coroutine itself
"""

from __future__ import annotations

import asyncio
import base64

import httpx
import pytest
import pytest_asyncio

from agents.worker import TaskFailed
from protocols.mcp.connector import MCPConnector, choose_call, error_text, progress_event, result_parts
from registry.index import CapabilityQuery
from schemas import DataPart, FilePart, Message, Route, Task, TaskState, TextPart
from tests.conftest import free_port, running_gateway, test_config, wait_until
from tests.fixtures.acp_support import acp_python  # noqa: F401 - a fixture
from tests.fixtures.matrix_agents import FILE, FILE_B64, FILE_NAME, FILE_TYPE
from tests.fixtures.matrix_clients import file_in_data
from tests.fixtures.matrix_env import CLIENTS, TARGETS, agent_name, matrix_env
from tests.fixtures.mcp_support import UpstreamProcess
from tests.fixtures.mcp_upstream import PNG, POISONED, SAFE, WAV

# The first use builds the acp-sdk environment (pip, about a minute); every wait has its own bound.
pytestmark = [
    pytest.mark.asyncio(loop_scope="module"),
    pytest.mark.timeout(600),
    pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::mcp.shared.exceptions.MCPDeprecationWarning"),
]

DATA = {"n": 1, "list": [1, 2.5, "x", None], "nested": {"ok": True, "ü": "✓"}}
FILE_IN = (FILE, FILE_TYPE, FILE_NAME)
MCP = {"mcp", "mcp-modern"}  # the MCP client in each era: a 2025-11-25 session, stateless 2026-07-28
FILE_AS_DATA = {*MCP, "anp"}  # clients whose protocol has no file input: base64 inside the data
CLIENT_STREAMS = {*MCP, "a2a", "acp", "http"}
TARGET_STREAMS = {"bus", "mcp", "a2a", "acp"}
NOT_STREAMED: set[tuple[str, str]] = set()  # every pair where both sides stream does stream
RELAYED = {(c, "mcp") for c in MCP}  # MCP to MCP is federation: the server's own tools, relayed (no task)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def env(acp_python, tmp_path_factory):  # noqa: F811
    async with matrix_env(acp_python, tmp_path_factory.mktemp("matrix")) as e:
        yield e


cells = pytest.mark.parametrize("target", TARGETS)
clients = pytest.mark.parametrize("client", CLIENTS)


@cells
@clients
async def test_content(env, client, target):
    c, agent, tag = env.clients[client], agent_name(target), f"{client}>{target}"

    text = f"héllo ✓ {tag}, with data."
    out = await c.send(agent, text, DATA)
    assert out.state == "completed", out
    if target == "anp":
        assert out.texts == [] and out.data == [{"text": text, "data": DATA}] and out.files == []
    else:
        assert out.texts == [text] and out.data == [DATA] and out.files == []
    echoed = out.data[0]["data"] if target == "anp" else out.data[0]
    assert isinstance(echoed["n"], float) == ("a2a" in (client, target))  # protobuf Value numbers are doubles
    if (client, target) not in RELAYED:  # the task is its caller's: the principal its credentials name
        assert (await env.task_by_text(text)).owner == env.principals[client]

    text = f"héllo ✓ {tag}, with a file."
    out = await c.send(agent, text, file=FILE_IN)
    if client in FILE_AS_DATA and (client, target) not in RELAYED:
        carried = file_in_data(FILE_IN, None)
        assert out.state == "completed", out
        if target == "anp":
            assert out.data == [{"text": text, "data": carried}] and out.texts == []
        else:
            assert out.texts == [text] and out.data == [carried] and out.files == []
        assert base64.b64decode(carried["file"]["data"]) == FILE
    elif target == "anp":
        assert out.state == "failed" and "file parts cannot be sent to an ANP agent" in out.error, out
    else:
        assert out.state == "completed", out
        assert out.texts == [text] and out.files == [(FILE, FILE_TYPE)] and out.data == []

    text = f"[file] from the agent to {tag}."
    out = await c.send(agent, text)
    assert out.state == "completed", out
    if target == "anp":
        [answer] = out.data
        assert answer == {"text": text, "file": {"name": FILE_NAME, "mimeType": FILE_TYPE, "data": FILE_B64}}
        assert base64.b64decode(answer["file"]["data"]) == FILE
    else:
        assert out.texts == [text] and out.files == [(FILE, FILE_TYPE)]

    # The gateway calls upstreams with its own credentials, never its callers' (the ACP agent runs
    # in another process and is not watched).
    assert not [h for h in env.upstream_credentials for secret in env.secrets if secret in h]


@cells
@clients
async def test_streaming(env, client, target):
    c, agent = env.clients[client], agent_name(target)
    text = f"[chunks] a streamed answer, {client}>{target}, in three pieces."
    pieces, out = await c.stream(agent, text)
    assert out.state == "completed", out
    assert "".join(out.texts).endswith(text)
    if client in CLIENT_STREAMS and target in TARGET_STREAMS and (client, target) not in NOT_STREAMED:
        assert len(pieces) >= 3, pieces
        if client not in MCP or target == "mcp":  # MCP progress names artifact events, it does not carry them
            assert "".join(pieces[:3]) == text, pieces
    else:
        assert len(pieces) <= 1, pieces


@cells
@clients
async def test_cancel(env, client, target):
    c, agent, probe = env.clients[client], agent_name(target), env.probes[target]
    started_before, cancelled_before = await probe()

    async def started() -> None:
        async def seen():
            return (await probe())[0] > started_before

        await wait_until(seen, timeout=10, interval=0.05)

    state = await c.cancel(agent, f"[slow] cancel me, {client}>{target}.", started)
    assert state == "canceled"

    async def reached():
        return (await probe())[1] > cancelled_before

    await wait_until(reached, timeout=10, interval=0.05)


@cells
@clients
async def test_errors(env, client, target):
    c, agent = env.clients[client], agent_name(target)
    text = f"[fail] the remote says no, {client}>{target}."
    out = await c.send(agent, text)
    assert out.state == "failed", out
    assert text in out.error, out
    if client == "anp":
        assert "-32010" in out.error  # JSON-RPC error: the task ended (failed)


def without_credentials(client: str, text: str) -> tuple[str, dict, dict]:
    """The request by which ``client`` sends ``text`` to the bus agent, less its credentials:
    (path, JSON body, headers)."""
    agent = agent_name("bus")
    return {
        "mcp": (
            "/mcp",
            {
                "jsonrpc": "2.0",
                "id": 1,
                "method": "tools/call",
                "params": {"name": agent, "arguments": {"message": text}},
            },
            {"Accept": "application/json, text/event-stream", "MCP-Protocol-Version": "2025-11-25"},
        ),
        "mcp-modern": (
            "/mcp",
            {
                "jsonrpc": "2.0",
                "id": 1,
                "method": "tools/call",
                "params": {
                    "name": agent,
                    "arguments": {"message": text},
                    "_meta": {
                        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
                        "io.modelcontextprotocol/clientCapabilities": {},
                    },
                },
            },
            {
                "Accept": "application/json, text/event-stream",
                "MCP-Protocol-Version": "2026-07-28",
                "Mcp-Method": "tools/call",
                "Mcp-Name": agent,
            },
        ),
        "a2a": (
            f"/a2a/agents/{agent}",
            {
                "jsonrpc": "2.0",
                "id": 1,
                "method": "SendMessage",
                "params": {"message": {"messageId": "m-anonymous", "role": "ROLE_USER", "parts": [{"text": text}]}},
            },
            {"A2A-Version": "1.0"},
        ),
        "acp": ("/acp/runs", {"agent_name": agent, "input": [{"parts": [{"content": text}]}], "mode": "sync"}, {}),
        "anp": (
            f"/anp/agents/{agent}/rpc",
            {"jsonrpc": "2.0", "id": 1, "method": "send_message", "params": {"message": text}},
            {},
        ),
        "http": (
            "/tasks?wait=true",
            {"agent": agent, "message": {"role": "user", "parts": [{"kind": "text", "text": text}]}},
            {},
        ),
    }[client]


@clients
async def test_without_credentials(env, client):
    text = f"no credentials, {client}."
    path, body, headers = without_credentials(client, text)
    async with httpx.AsyncClient(base_url=env.gateway, timeout=10) as http:
        resp = await http.post(path, json=body, headers=headers)
    assert resp.status_code == 401, resp.text
    challenge = resp.headers["www-authenticate"]
    if client == "anp":
        assert challenge.startswith("DIDWba ") and "accept-signature" in resp.headers  # sign with RFC 9421
    else:
        assert challenge.startswith("Bearer") and "error=" not in challenge  # RFC 6750 3.1: none was sent
    if client in MCP:
        assert f'resource_metadata="{env.gateway}/.well-known/oauth-protected-resource/mcp"' in challenge
    if client == "a2a":
        assert resp.json()["error"]["code"] == -32000  # the JSON-RPC binding's authentication error
    if client == "acp":  # ACP's own error object, which the acp-sdk client raises as an ACPError
        assert resp.json() == {"code": "unauthorized", "message": resp.json()["message"], "data": None}
    assert await env.tasks_with_text(text) == []  # refused before anything ran


# ---- MCPConnector: each row of its mapping table (protocols/mcp/connector.py) ------------------------
# Against the official SDK server of the MCP tests (tests/fixtures/mcp_upstream.py), run by a
# connector that is a worker of the gateway; the cells above cover it registered from a record.


def user(*parts, **meta) -> Message:
    return Message(role="user", parts=list(parts), metadata=meta or None)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def everything():
    skills = [
        {"id": "test_simple_text", "name": "Simple text", "description": "answers a fixed text"},
        {"id": "test_echo", "name": "Echo", "description": "echoes"},
    ]
    with UpstreamProcess("everything") as upstream:
        connector = MCPConnector("everything", upstream.url, skills=skills)
        dead = MCPConnector("nowhere", f"http://127.0.0.1:{free_port()}/mcp")
        hasty = MCPConnector("hasty", upstream.url, timeout_s=0.5)
        async with running_gateway(test_config(echo=False), workers=[connector, dead, hasty]) as (_, app):
            yield app.state.runtime, connector


async def finished(rt, message: Message, agent: str = "everything", **kw) -> Task:
    task = await rt.submit(message, agent=agent, **kw)
    return await rt.wait(task.id, 20)


async def test_mcp_connector_tool_from_metadata_text_argument_structured_result(everything):
    rt, _ = everything
    task = await finished(rt, user(TextPart(text="hi"), tool="test_echo"))
    assert task.state is TaskState.COMPLETED, task.status
    [artifact] = task.artifacts
    assert artifact.name == "test_echo"
    assert artifact.parts == [TextPart(text="hi"), DataPart(data={"result": "hi"})]  # text + structuredContent


async def test_mcp_connector_media_and_resources_become_file_and_data_parts(everything):
    rt, _ = everything
    image = (await finished(rt, user(TextPart(text="x"), tool="test_image_content"))).artifacts[0].parts
    assert image == [FilePart.from_bytes(PNG, media_type="image/png")]
    audio = (await finished(rt, user(TextPart(text="x"), tool="test_audio_content"))).artifacts[0].parts
    assert audio == [FilePart.from_bytes(WAV, media_type="audio/wav")]
    [resource] = (
        (await finished(rt, user(TextPart(text="x"), **{"mcp.tool": "test_embedded_resource"}))).artifacts[0].parts
    )
    assert resource.raw() == b"This is an embedded resource content." and resource.media_type == "text/plain"
    assert resource.filename == "embedded-resource" and resource.metadata == {"mcp.uri": "test://embedded-resource"}
    mixed = (await finished(rt, user(TextPart(text="x"), tool="test_multiple_content_types"))).artifacts[0].parts
    assert mixed == [
        TextPart(text="Multiple content types test:"),
        FilePart.from_bytes(PNG, media_type="image/png"),
        DataPart(data={"test": "data", "value": 123}, metadata={"mcp.uri": "test://mixed-content-resource"}),
    ]


async def test_mcp_connector_data_part_is_the_arguments_text_the_only_string_one(everything):
    rt, _ = everything
    data = DataPart(data={"name": "ada", "address": {"city": "Paris"}})
    task = await finished(
        rt, user(TextPart(text="ignored: no free string argument"), data, tool="json_schema_2020_12_tool")
    )
    assert task.artifacts[0].parts[0] == TextPart(text='name=ada, address={"city": "Paris"}')
    task = await finished(rt, user(TextPart(text="bob"), tool="json_schema_2020_12_tool"))
    assert task.artifacts[0].parts[0] == TextPart(text="name=bob, address=null")  # its only string argument


async def test_mcp_connector_tool_choice_route_skill_and_refusals(everything):
    rt, _ = everything
    routed = await finished(rt, user(TextPart(text="x")), agent=None, query=CapabilityQuery(skill="test_simple_text"))
    assert routed.route.skill == "test_simple_text"
    assert routed.artifacts[0].parts == [TextPart(text="This is a simple text response for testing.")]
    several = await finished(rt, user(TextPart(text="x")))
    assert several.state is TaskState.FAILED and "has several tools" in several.status.message.text()
    unknown = await finished(rt, user(TextPart(text="x"), tool="nope"))
    assert unknown.state is TaskState.FAILED and "has no tool 'nope'" in unknown.status.message.text()
    file = await finished(
        rt,
        user(TextPart(text="x"), FilePart.from_bytes(b"\0", media_type="application/octet-stream"), tool="test_echo"),
    )
    assert file.state is TaskState.FAILED and "declares no 'files' array argument" in file.status.message.text()


async def test_mcp_connector_progress_becomes_working_messages(everything):
    rt, _ = everything
    task = await rt.submit(user(TextPart(text="x"), tool="test_tool_with_progress"), agent="everything")
    events = [s.event async for s in rt.follow(task.id)]
    progress = [e for e in events if e.kind == "status-update" and e.status.message is not None]
    assert [e.status.message.text() for e in progress] == ["step 0", "step 50", "step 100"]
    assert [e.metadata for e in progress] == [{"progress": v, "total": 100} for v in (0, 50, 100)]
    assert events[-1].status.state is TaskState.COMPLETED


async def test_mcp_connector_errors_and_refused_server_requests_fail_the_task(everything):
    rt, _ = everything
    failed = await finished(rt, user(TextPart(text="x"), tool="test_error_handling"))
    assert failed.state is TaskState.FAILED and "test_error_handling" in failed.status.message.text()
    asked = await finished(rt, user(TextPart(text="who?"), tool="test_elicitation"))  # elicitation: nobody to ask
    assert (
        asked.state is TaskState.FAILED
        and "elicitation/create is not available to a task" in asked.status.message.text()
    )
    nowhere = await finished(rt, user(TextPart(text="x")), agent="nowhere")
    assert nowhere.state is TaskState.FAILED
    assert nowhere.status.message.text() == "remote MCP server 'nowhere': agent unreachable"
    late = await finished(rt, user(DataPart(data={"seconds": 30}), tool="test_slow"), agent="hasty")
    assert late.state is TaskState.FAILED and "did not answer tools/call within 0.5 s" in late.status.message.text()

    async def cancelled_upstream():  # the abandoned call was cancelled there (notifications/cancelled)
        told = await finished(rt, user(TextPart(text="x"), tool="test_cancelled"))
        return told.artifacts[0].parts[0] == TextPart(text="cancelled")

    await wait_until(cancelled_upstream, timeout=10, interval=0.1)


async def test_mcp_connector_keeps_one_session_and_rereads_tools_after_list_changed(everything):
    rt, connector = everything
    await asyncio.gather(*(finished(rt, user(TextPart(text=str(i)), tool="test_echo")) for i in range(10)))
    session = connector.upstream()
    sid = session.session_id
    assert sid and session.generation == 1
    assert (await connector.tools())["mutable_tool"]["description"] == SAFE
    await finished(rt, user(TextPart(text="x"), tool="test_mutate_tool"))  # announces tools/list_changed

    async def reread():
        return (await connector.tools())["mutable_tool"]["description"] == POISONED

    await wait_until(reread, timeout=10)
    assert session.session_id == sid and session.generation == 1


async def test_mcp_connector_arguments_rows():
    def tool(properties: dict, required: list[str] = ()) -> dict:
        return {
            "t": {"name": "t", "inputSchema": {"type": "object", "properties": properties, "required": list(required)}}
        }

    task = Task()
    text = TextPart(text="hello")
    assert choose_call(task, user(text), tool({}))[1] == {"text": "hello"}  # no string argument: {text}
    assert choose_call(task, user(text), tool({"q": {"type": "string"}, "n": {"type": "integer"}}))[1] == {"q": "hello"}
    two = tool({"a": {"type": "string"}, "b": {"anyOf": [{"type": "string"}, {"type": "null"}]}}, ["b"])
    assert choose_call(task, user(text), two)[1] == {"b": "hello"}  # the first required string one
    declared = tool({"text": {"type": "string"}, "data": {"anyOf": [{"type": "object"}, {"type": "null"}]}})
    assert choose_call(task, user(text, DataPart(data={"k": 1})), declared)[1] == {"text": "hello", "data": {"k": 1}}
    numbers = tool({"n": {"type": "integer"}})
    assert choose_call(task, user(text, DataPart(data={"n": 2})), numbers)[1] == {"n": 2}  # the text is not sent
    files = tool({"files": {"type": "array"}})
    url = FilePart(url="https://example.com/a.pdf", media_type="application/pdf", filename="a.pdf")
    raw = FilePart.from_bytes(b"\x00\xff", media_type="image/png")
    assert choose_call(task, user(raw, url), files)[1] == {
        "files": [
            {"name": "file-0", "mimeType": "image/png", "data": "AP8="},
            {"name": "a.pdf", "mimeType": "application/pdf", "uri": "https://example.com/a.pdf"},
        ]
    }
    with pytest.raises(TaskFailed, match="at most one data part"):
        choose_call(task, user(DataPart(data={}), DataPart(data={})), numbers)
    with pytest.raises(TaskFailed, match="must be a JSON object"):
        choose_call(task, user(DataPart(data=[1])), numbers)
    with pytest.raises(TaskFailed, match="offers no tools"):
        choose_call(task, user(text), {})
    routed = Task(route=Route(agent="a", skill="not-a-tool"))  # a skill that names no tool: the only tool
    assert choose_call(routed, user(text), numbers)[0] == "t"


async def test_mcp_connector_result_rows():
    assert result_parts(
        {"content": [{"type": "resource_link", "uri": "https://x/r.csv", "name": "r.csv", "mimeType": "text/csv"}]}
    ) == [FilePart(url="https://x/r.csv", media_type="text/csv", filename="r.csv")]
    blob = {
        "type": "resource",
        "resource": {"uri": "file:///d/blob.bin", "mimeType": "application/octet-stream", "blob": "AP8="},
    }
    assert result_parts({"content": [blob, {"type": "nonsense"}, {"type": "image", "data": "not base64!"}]}) == [
        FilePart(
            bytes="AP8=",
            media_type="application/octet-stream",
            filename="blob.bin",
            metadata={"mcp.uri": "file:///d/blob.bin"},
        )
    ]
    structured = {
        "content": [{"type": "text", "text": '{"a": [1]}'}, {"type": "text", "text": "note"}],
        "structuredContent": {"a": [1]},
    }
    assert result_parts(structured) == [TextPart(text="note"), DataPart(data={"a": [1]})]  # the JSON copy is dropped
    assert (
        error_text({"isError": True, "content": [{"type": "text", "text": "bad"}, {"type": "text", "text": "input"}]})
        == "bad\ninput"
    )
    event = progress_event(Task(), {"progressToken": "t", "progress": 1, "total": 3})
    assert event.status.state is TaskState.WORKING and event.status.message.text() == "progress 1/3"
    assert event.metadata == {"progress": 1, "total": 3}
