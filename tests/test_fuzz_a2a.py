"""Fuzzing the A2A face: JSON-RPC (``/a2a``, ``/a2a/agents/{name}``) and HTTP+JSON (``/a2a/rest``,
1.0 paths and 0.3 under ``/v1``), with every dialect's request shapes (protocols/a2a/wire.py)
fuzzed. Never a 5xx or an internal error; JSON-RPC errors carry the request's id, REST errors are
``google.rpc.Status`` bodies (with ``type`` on the 0.3 face); a refused request stores no task.

Push webhooks may point only at 127.0.0.1 here (``PUSH``, and loopback only where the egress
policy allows it): a fuzzed URL never makes the gateway resolve or dial a name."""

from __future__ import annotations

import pytest

pytest.importorskip("hypothesis", reason="the fuzz suite needs Hypothesis: pip install -e '.[dev]'")

from hypothesis import example, given
from hypothesis import strategies as st

from gateway.core import strict_json
from protocols import a2a
from protocols.a2a.errors import BY_CODE, CallerRefusedError, InvalidParamsError
from protocols.a2a.jsonrpc import METHODS
from protocols.a2a.push import PushPolicy
from protocols.a2a.wire import V03, V03_REST, V10
from tests.fixtures.fuzz import (
    TOO_DEEP,
    body_json,
    cross_site_refused,
    dumps,
    header_values,
    in_process,
    json_values,
    jsonrpc_error,
    maybe,
    no_server_error,
    objects,
    one_field_fuzzed,
    path_segment,
    raw_bodies,
    request_id,
    sse_data,
    task_ids,
    texts,
)

# Webhooks only on 127.0.0.1 (a name is never resolved, nothing else is dialled), one try each.
PUSH = PushPolicy(allowed_hosts=frozenset({"127.0.0.1"}), max_attempts=1, timeout_s=1.0)
CODES = set(BY_CODE) | {CallerRefusedError.code}

metadata = maybe(
    st.dictionaries(st.sampled_from(["agent", "x", "interlace.stream"]), maybe(st.sampled_from(["echo", "nobody"])))
)
media = maybe(st.sampled_from(["text/plain", "image/png", "application/x-unknown", "", "a/b;c=d"]))
b64 = maybe(st.sampled_from(["aGk=", "aGk", "a-_b", "not base64!", ""]))
urls = maybe(
    st.sampled_from(
        ["http://127.0.0.1:9/hook", "http://10.0.0.1/", "http://[::1", "http://127.0.0.1:x/", "ftp://x", ""]
    )
)
parts_10 = st.one_of(
    objects({"text": maybe(texts)}, required=("text",)),
    objects({"data": json_values(max_leaves=3)}, required=("data",)),
    objects({"raw": b64, "mediaType": media, "filename": maybe(texts)}, required=("raw",)),
    objects({"url": urls, "mediaType": media}, required=("url",)),
    objects({"text": maybe(texts), "data": json_values(max_leaves=3), "raw": b64, "url": urls}),
)
files_03 = objects({"bytes": b64, "uri": urls, "mimeType": media, "name": maybe(texts)})
parts_03 = st.one_of(
    objects({"kind": st.just("text"), "text": maybe(texts)}, required=("kind", "text")),
    objects(
        {"kind": st.just("data"), "data": maybe(st.dictionaries(texts, texts, max_size=2))}, required=("kind", "data")
    ),
    objects({"kind": st.just("file"), "file": maybe(files_03)}, required=("kind", "file")),
    objects({"kind": maybe(st.sampled_from(["text", "image"])), "text": maybe(texts), "file": maybe(files_03)}),
)
files_rest = objects({"fileWithBytes": b64, "fileWithUri": urls, "mimeType": media})
parts_rest = st.one_of(
    objects({"text": maybe(texts)}, required=("text",)),
    objects({"file": maybe(files_rest)}, required=("file",)),
    objects({"data": maybe(objects({"data": json_values(max_leaves=3)}))}, required=("data",)),
)
roles = maybe(st.sampled_from(["ROLE_USER", "user", 1, "ROLE_AGENT", "agent", 2, 0, "ROLE_UNSPECIFIED"]))


def messages(parts: st.SearchStrategy, key: str) -> st.SearchStrategy:
    return objects(
        {
            "messageId": maybe(texts),
            "role": roles,
            key: maybe(st.lists(parts, min_size=1, max_size=3)),
            "taskId": maybe(texts),
            "contextId": maybe(texts),
            "metadata": metadata,
        },
        required=("messageId", "role", key),
    )


push_configs = objects(
    {
        "url": urls,
        "id": maybe(texts),
        "taskId": maybe(texts),
        "token": maybe(texts),
        "authentication": maybe(
            objects({"scheme": maybe(texts), "schemes": maybe(st.lists(texts)), "credentials": texts})
        ),
    },
    required=("url",),
)
configurations = objects(
    {
        "acceptedOutputModes": maybe(st.lists(texts, max_size=2)),
        "historyLength": maybe(st.integers(-3, 2**40)),
        "returnImmediately": maybe(st.booleans()),
        "blocking": maybe(st.sampled_from([True, False, "true", "no"])),
        "pushNotificationConfig": maybe(push_configs),
        "taskPushNotificationConfig": maybe(push_configs),
    }
)


def send_params(parts: st.SearchStrategy, key: str) -> st.SearchStrategy:
    return objects(
        {"message": maybe(messages(parts, key)), "configuration": maybe(configurations), "metadata": metadata},
        required=("message",),
    )


task_params = objects(
    {
        "id": maybe(texts),
        "historyLength": maybe(st.one_of(st.integers(-3, 2**40), st.floats(), texts)),
        "taskId": maybe(texts),
        "pushNotificationConfigId": maybe(texts),
        "pushNotificationConfig": maybe(push_configs),
        "contextId": maybe(texts),
        "status": maybe(st.sampled_from(["TASK_STATE_COMPLETED", "completed", "bogus", 3])),
        "pageSize": maybe(st.integers(-1, 1000)),
        "pageToken": maybe(st.sampled_from(["", "bzo1MA", "!!", "\ud800"])),
        "includeArtifacts": maybe(st.booleans()),
        "statusTimestampAfter": maybe(st.sampled_from(["2024-01-01T00:00:00Z", "0001-01-01T00:00:00+14:00", "x"])),
    }
)
params_10 = st.one_of(send_params(parts_10, "parts"), task_params, push_configs)
params_03 = st.one_of(send_params(parts_03, "parts"), task_params)
versions = st.sampled_from([None, "", "1.0", "0.3", "1", "1.x", "2.0", "0.2", " 1.0 ", "abc"])
ids = st.one_of(st.integers(-(2**63), 2**63), texts, st.none(), st.booleans(), st.floats(), st.just({}))


def rpc(method: st.SearchStrategy, params: st.SearchStrategy) -> st.SearchStrategy:
    return st.builds(lambda m, p, i: {"jsonrpc": "2.0", "id": i, "method": m, "params": p}, method, maybe(params), ids)


envelopes = st.one_of(
    rpc(st.sampled_from(sorted(METHODS["1.0"])), params_10),
    rpc(st.sampled_from(sorted(METHODS["0.3"])), params_03),
    objects({"jsonrpc": maybe(st.just("2.0")), "id": ids, "method": maybe(texts), "params": json_values(max_leaves=4)}),
)


@pytest.fixture
async def gateway():
    async with in_process(mount=lambda app: a2a.mount(app, a2a.A2AOptions(push=PUSH))) as gateway:
        yield gateway


def check_rpc_reply(msg, rid) -> bool:
    """One JSON-RPC answer of the A2A face; True when it is an error."""
    assert isinstance(msg, dict) and msg.get("jsonrpc") == "2.0", msg
    if "error" in msg:
        err = jsonrpc_error(msg, rid)
        assert err["code"] in CODES, err
        return True
    assert msg["id"] == rid and "result" in msg, (msg, rid)
    return False


async def check_rpc(gateway, path: str, body: bytes, sent, version: str | None, ctype: str | None) -> None:
    headers = {} if version is None else {"A2A-Version": version}
    if ctype is not None:
        headers["Content-Type"] = ctype
    before = await task_ids(gateway.runtime)
    resp = await gateway.request("POST", path, content=body, headers=headers)
    no_server_error(resp)
    if cross_site_refused(resp):
        return
    assert resp.status_code == 200, (resp.status_code, resp.text[:300])
    rid = request_id(sent)
    if resp.headers["content-type"].startswith("text/event-stream"):
        refused = [check_rpc_reply(m, rid) for m in sse_data(resp)][:1] == [True]
    else:
        refused = check_rpc_reply(body_json(resp), rid)
    if refused:
        assert await task_ids(gateway.runtime) == before, "a refused request stored a task"
    gateway.errors.check()


paths_rpc = st.sampled_from(["/a2a", "/a2a/", "/a2a/agents/echo", "/a2a/agents/nobody"])
ctypes = st.one_of(
    st.none(), st.sampled_from(["application/json", "application/a2a+json", "text/plain"]), header_values
)


@given(path=paths_rpc, body=raw_bodies, version=versions, ctype=ctypes)
@example(path="/a2a", body=TOO_DEEP, version=None, ctype=None)
async def test_rpc_any_body(gateway, path, body, version, ctype):
    try:
        sent = strict_json.loads(body)
    except ValueError:
        sent = None
    await check_rpc(gateway, path, body, sent, version, ctype)


@given(path=paths_rpc, envelope=envelopes, version=versions)
async def test_rpc_envelopes(gateway, path, envelope, version):
    await check_rpc(gateway, path, dumps(envelope), envelope, version, "application/json")


@given(path=paths_rpc, envelope=rpc(st.sampled_from(sorted(METHODS["1.0"])), params_10))
async def test_rpc_10_methods(gateway, path, envelope):
    await check_rpc(gateway, path, dumps(envelope), envelope, "1.0", "application/json")


@given(path=paths_rpc, envelope=rpc(st.sampled_from(sorted(METHODS["0.3"])), params_03))
async def test_rpc_03_methods(gateway, path, envelope):
    await check_rpc(gateway, path, dumps(envelope), envelope, None, "application/json")


SEND_10 = {
    "jsonrpc": "2.0",
    "id": 7,
    "method": "SendMessage",
    "params": {
        "message": {"messageId": "m1", "role": "ROLE_USER", "parts": [{"text": "hello"}]},
        "configuration": {"taskPushNotificationConfig": {"url": "http://127.0.0.1:9/hook"}},
    },
}
SEND_03 = {
    "jsonrpc": "2.0",
    "id": "r1",
    "method": "message/send",
    "params": {
        "message": {"messageId": "m1", "role": "user", "parts": [{"kind": "text", "text": "hello"}], "kind": "message"},
        "configuration": {"pushNotificationConfig": {"url": "http://127.0.0.1:9/hook"}, "blocking": True},
    },
}
MESSAGE_FIELDS = ["messageId", "role", "parts", "parts.0", "taskId", "contextId", "metadata", "metadata.agent"]
PART_FIELDS_10 = ["text", "data", "raw", "url", "mediaType", "filename", "metadata"]
PART_FIELDS_03 = ["kind", "text", "data", "file", "file.bytes", "file.uri", "file.mimeType", "metadata"]
CONFIG_FIELDS = ["acceptedOutputModes", "historyLength", "returnImmediately", "blocking"]
PUSH_FIELDS = ["url", "id", "token", "authentication", "authentication.scheme", "authentication.credentials"]


def send_fields(push_key: str, part_fields: list[str]) -> list[str]:
    return [
        "id",
        "params",
        "params.message",
        "params.metadata",
        "params.metadata.agent",
        *(f"params.message.{f}" for f in MESSAGE_FIELDS),
        *(f"params.message.parts.0.{f}" for f in part_fields),
        *(f"params.configuration.{f}" for f in CONFIG_FIELDS),
        f"params.configuration.{push_key}",
        *(f"params.configuration.{push_key}.{f}" for f in PUSH_FIELDS),
    ]


@given(
    envelope=st.one_of(
        one_field_fuzzed(SEND_10, send_fields("taskPushNotificationConfig", PART_FIELDS_10)),
        one_field_fuzzed(SEND_03, send_fields("pushNotificationConfig", PART_FIELDS_03)),
    ),
    path=st.sampled_from(["/a2a", "/a2a/agents/echo"]),
)
@example(
    envelope={
        **SEND_10,
        "params": {**SEND_10["params"], "configuration": {"taskPushNotificationConfig": {"url": "http://[::1"}}},
    },
    path="/a2a",
)
async def test_send_message_one_field_fuzzed(gateway, envelope, path):
    """A good SendMessage (1.0) or message/send (0.3) with one field fuzzed, so the value gets
    past the envelope to the message, part, configuration and push checks."""
    version = "1.0" if envelope["method"] == "SendMessage" else "0.3"
    await check_rpc(gateway, path, dumps(envelope), envelope, version, "application/json")


# ---- HTTP+JSON -----------------------------------------------------------------------------------

REST_OPS = [
    ("POST", "/message:send"),
    ("POST", "/message:stream"),
    ("GET", "/tasks"),
    ("POST", "/tasks/{t}:cancel"),
    ("GET", "/tasks/{t}:subscribe"),
    ("POST", "/tasks/{t}/pushNotificationConfigs"),
    ("GET", "/tasks/{t}/pushNotificationConfigs"),
    ("GET", "/tasks/{t}/pushNotificationConfigs/{c}"),
    ("DELETE", "/tasks/{t}/pushNotificationConfigs/{c}"),
    ("GET", "/tasks/{t}"),
    ("GET", "/extendedAgentCard"),
    ("GET", "/card"),
]
rest_bodies = st.one_of(
    raw_bodies,
    send_params(parts_10, "parts").map(dumps),
    send_params(parts_rest, "content").map(dumps),
    objects({"config": maybe(objects({"pushNotificationConfig": maybe(push_configs)})), "configId": texts}).map(dumps),
    push_configs.map(dumps),
)
queries = st.dictionaries(
    st.sampled_from(
        ["historyLength", "pageSize", "pageToken", "status", "contextId", "includeArtifacts", "A2A-Version"]
    ),
    header_values,
    max_size=3,
)


@given(
    op=st.sampled_from(REST_OPS),
    prefix=st.sampled_from(["/a2a/rest", "/a2a/rest/v1", "/a2a/agents/echo/rest", "/a2a/agents/echo/rest/v1"]),
    task_id=texts,
    config_id=texts,
    body=rest_bodies,
    query=queries,
    version=versions,
)
@example(op=("GET", "/tasks"), prefix="/a2a/rest", task_id="", config_id="", body=b"", query={}, version="1.0")
async def test_rest(gateway, op, prefix, task_id, config_id, body, query, version):
    method, path = op
    url = prefix + path.format(t=path_segment(task_id), c=path_segment(config_id))
    headers = {} if version is None else {"A2A-Version": version}
    before = await task_ids(gateway.runtime)
    content = body if method == "POST" else None
    resp = await gateway.request(method, url, content=content, params=query, headers=headers)
    no_server_error(resp)
    if resp.status_code >= 400 and not cross_site_refused(resp):
        error = body_json(resp)["error"]
        if isinstance(error["code"], str):  # the router's own 404/405: no A2A operation at this path
            assert resp.status_code in (404, 405) and error["code"] in ("not_found", "method_not_allowed"), error
        else:
            assert error["code"] == resp.status_code and isinstance(error["status"], str), error
            assert isinstance(error["message"], str) and isinstance(error["details"], list), error
            if "/v1/" in url:
                assert isinstance(body_json(resp)["type"], str)
        assert await task_ids(gateway.runtime) == before, "a refused request stored a task"
    elif resp.headers.get("content-type", "").startswith("text/event-stream"):
        for item in sse_data(resp):
            assert isinstance(item, dict)
    gateway.errors.check()


# ---- the dialects alone ---------------------------------------------------------------------------


statuses = objects(
    {
        "state": maybe(
            st.sampled_from(["TASK_STATE_WORKING", "completed", "input-required", "TASK_STATE_CANCELLED", 0])
        ),
        "message": maybe(messages(parts_10, "parts")),
        "timestamp": maybe(st.sampled_from(["2024-01-01T00:00:00Z", "yesterday", ""])),
    }
)
artifacts = objects({"artifactId": maybe(texts), "name": maybe(texts), "parts": maybe(st.lists(parts_10, max_size=2))})
remote_tasks = objects(
    {
        "id": maybe(texts),
        "contextId": maybe(texts),
        "kind": maybe(st.sampled_from(["task", "message", "status-update", "artifact-update"])),
        "status": maybe(statuses),
        "artifacts": maybe(st.lists(artifacts, max_size=2)),
        "history": maybe(st.lists(messages(parts_03, "parts"), max_size=2)),
        "metadata": metadata,
    }
)
remote_items = st.one_of(
    json_values(max_leaves=16),
    remote_tasks,
    objects({"task": maybe(remote_tasks), "message": maybe(messages(parts_10, "parts"))}),
    objects({"statusUpdate": maybe(objects({"taskId": texts, "status": maybe(statuses)}))}),
    objects({"artifactUpdate": maybe(objects({"taskId": texts, "artifact": maybe(artifacts), "append": texts}))}),
)


@given(item=remote_items, dialect=st.sampled_from([V10, V03, V03_REST]))
@example(item={"statusUpdate": False}, dialect=V10)
@example(item={"statusUpdate": []}, dialect=V10)
@example(item={"artifactUpdate": "x"}, dialect=V10)
@example(item={"task": {"id": "t", "artifacts": 5}}, dialect=V10)
@example(item={"kind": "task", "id": "t", "history": True}, dialect=V03)
def test_stream_items_of_a_remote_agent(item, dialect):
    """What a remote agent sends back (task, message, events): canonical types or InvalidParamsError."""
    try:
        dialect.stream_in(item)
    except InvalidParamsError:
        pass
