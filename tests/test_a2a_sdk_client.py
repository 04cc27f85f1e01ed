"""The official ``a2a-sdk`` 1.3 client through the gateway, both bindings, 1.0 and 0.3, streaming and
not, to (a) the echo agent on the bus and (b) an ``a2a-sdk`` server agent behind the A2A connector."""

from __future__ import annotations

import asyncio

import httpx
import pytest
import pytest_asyncio
from a2a.types import CancelTaskRequest, GetTaskRequest, ListTasksRequest, SubscribeToTaskRequest, TaskState
from a2a.utils.errors import TaskNotCancelableError, TaskNotFoundError

from tests.conftest import wait_until
from tests.fixtures import a2a_remote
from tests.fixtures.a2a_support import a2a_env, as_dict, message, request, sdk_client, texts

pytestmark = pytest.mark.asyncio(loop_scope="module")

TARGETS = ["echo", "remote"]
BINDINGS = ["JSONRPC", "HTTP+JSON"]
VERSIONS = ["1.0", "0.3"]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def env():
    async with a2a_env() as e:
        yield e


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def http():
    async with httpx.AsyncClient(timeout=20) as c:
        yield c


@pytest.mark.parametrize("streaming", [False, True], ids=["send", "stream"])
@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("binding", BINDINGS)
@pytest.mark.parametrize("target", TARGETS)
async def test_send_and_get(env, http, target, binding, version, streaming):
    client = await sdk_client(http, env.target(target), binding, version, streaming=streaming)
    text = f"hello {target} {binding} {version}"
    events = [
        as_dict(ev)
        async for ev in client.send_message(
            request(message(text, message_id=f"m-{target}-{binding}-{version}-{streaming}"))
        )
    ]
    if streaming:
        assert [next(iter(e)) for e in events] == ["task", "statusUpdate", "artifactUpdate", "statusUpdate"]
        assert events[0]["task"]["status"]["state"] == "TASK_STATE_SUBMITTED"
        assert events[1]["statusUpdate"]["status"]["state"] == "TASK_STATE_WORKING"
        assert events[2]["artifactUpdate"]["artifact"]["parts"] == [{"text": text}]
        assert events[3]["statusUpdate"]["status"]["state"] == "TASK_STATE_COMPLETED"
        task_id = events[0]["task"]["id"]
    else:
        assert len(events) == 1 and "task" in events[0]
        task = events[0]["task"]
        assert task["status"]["state"] == "TASK_STATE_COMPLETED"
        assert texts(task) == text
        task_id = task["id"]
    got = as_dict(await client.get_task(GetTaskRequest(id=task_id)))
    assert got["status"]["state"] == "TASK_STATE_COMPLETED"
    assert texts(got) == text
    assert got["history"][0]["parts"] == [{"text": text}] and got["history"][0]["role"] == "ROLE_USER"


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("binding", BINDINGS)
@pytest.mark.parametrize("target", TARGETS)
async def test_subscribe_then_cancel(env, http, target, binding, version):
    plain = await sdk_client(http, env.target(target), binding, version, streaming=False)
    streamer = await sdk_client(http, env.target(target), binding, version, streaming=True)
    remote_cancels = len(a2a_remote.CANCELED)
    sent = [ev async for ev in plain.send_message(request(message("slow", delay_ms=30_000), return_immediately=True))]
    task = sent[-1].task
    assert task.status.state in (TaskState.TASK_STATE_SUBMITTED, TaskState.TASK_STATE_WORKING)

    subscription = streamer.subscribe(SubscribeToTaskRequest(id=task.id))
    first = await asyncio.wait_for(subscription.__anext__(), 10)
    assert first.WhichOneof("payload") == "task" and first.task.id == task.id

    canceled = await plain.cancel_task(CancelTaskRequest(id=task.id))
    assert canceled.status.state == TaskState.TASK_STATE_CANCELED

    async def drain():
        return [as_dict(e) async for e in subscription]

    rest = await asyncio.wait_for(drain(), 10)
    assert rest[-1]["statusUpdate"]["status"]["state"] == "TASK_STATE_CANCELED"
    with pytest.raises(TaskNotCancelableError):
        await plain.cancel_task(CancelTaskRequest(id=task.id))
    if target == "remote":  # the cancel reached the a2a-sdk agent behind the connector
        await wait_until(lambda: _async(len(a2a_remote.CANCELED) > remote_cancels), timeout=10)


async def _async(value):
    return value


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("binding", BINDINGS)
@pytest.mark.parametrize("target", TARGETS)
async def test_input_required_then_follow_up(env, http, target, binding, version):
    client = await sdk_client(http, env.target(target), binding, version, streaming=False)
    first = [as_dict(e) async for e in client.send_message(request(message("start", ask="which colour?")))][-1]["task"]
    assert first["status"]["state"] == "TASK_STATE_INPUT_REQUIRED"
    assert first["status"]["message"]["parts"] == [{"text": "which colour?"}]
    follow = message("blue", task_id=first["id"], context_id=first["contextId"])
    second = [as_dict(e) async for e in client.send_message(request(follow))][-1]["task"]
    assert second["id"] == first["id"] and second["contextId"] == first["contextId"]
    assert second["status"]["state"] == "TASK_STATE_COMPLETED"
    assert texts(second) == "blue"


@pytest.mark.parametrize("target", TARGETS)
async def test_context_groups_tasks_and_list(env, http, target):
    client = await sdk_client(http, env.target(target), "JSONRPC", "1.0", streaming=False)
    one = [e async for e in client.send_message(request(message("one")))][-1].task
    two = [e async for e in client.send_message(request(message("two", context_id=one.context_id)))][-1].task
    assert two.context_id == one.context_id and two.id != one.id
    listed = await client.list_tasks(ListTasksRequest(context_id=one.context_id))
    assert {t.id for t in listed.tasks} == {one.id, two.id}
    assert listed.total_size == 2


async def test_remote_direct_message_reply(env, http):
    client = await sdk_client(http, env.target("remote"), "HTTP+JSON", "1.0", streaming=False)
    events = [as_dict(e) async for e in client.send_message(request(message("hi", reply=True)))]
    assert list(events[-1]) == ["message"]
    assert events[-1]["message"]["parts"] == [{"text": "reply: hi"}]
    assert events[-1]["message"]["role"] == "ROLE_AGENT"


async def test_unknown_task_is_task_not_found(env, http):
    for binding in BINDINGS:
        client = await sdk_client(http, env.target("echo"), binding, "1.0", streaming=False)
        with pytest.raises(TaskNotFoundError):
            await client.get_task(GetTaskRequest(id="no-such-task"))
