"""Two gateway nodes sharing Redis: any node answers A2A for any task (get, subscribe, cancel, push
configs, blocking send to an agent whose worker runs on the other node)."""

from __future__ import annotations

import httpx
import pytest

from agents.echo import EchoWorker
from gateway.app import create_app
from protocols.a2a import A2AOptions, mount
from protocols.a2a.push import PushPolicy
from tests.conftest import serve_app, test_config
from tests.fixtures.a2a_support import V10, Frames


async def rpc(http, method, params):
    resp = await http.post("/a2a", json={"jsonrpc": "2.0", "id": 1, "method": method, "params": params}, headers=V10)
    return resp.json()


def msg(text, mid, **meta):
    return {"messageId": mid, "role": "ROLE_USER", "parts": [{"text": text}], **({"metadata": meta} if meta else {})}


@pytest.mark.timeout(60)
async def test_any_node_answers_for_any_task(redis_server):
    redis_server.flush()
    node_a = create_app(test_config(redis_url=redis_server.url, node_id="node-a"), workers=[EchoWorker()])
    node_b = create_app(test_config(redis_url=redis_server.url, node_id="node-b"), workers=[])
    for app in (node_a, node_b):
        mount(app, A2AOptions(push=PushPolicy()))
    async with serve_app(node_a) as url_a, serve_app(node_b) as url_b:
        async with (
            httpx.AsyncClient(base_url=url_a, timeout=20) as a,
            httpx.AsyncClient(base_url=url_b, timeout=20) as b,
        ):
            # A blocking send on B runs on A's worker and returns the finished task.
            done = (await rpc(b, "SendMessage", {"message": msg("via b", "x-1"), "metadata": {"agent": "echo"}}))[
                "result"
            ]["task"]
            assert done["status"]["state"] == "TASK_STATE_COMPLETED"
            assert (await rpc(a, "GetTask", {"id": done["id"]}))["result"]["status"]["state"] == "TASK_STATE_COMPLETED"

            slow = (
                await rpc(
                    a,
                    "SendMessage",
                    {
                        "message": msg("slow", "x-2", delay_ms=30_000),
                        "metadata": {"agent": "echo"},
                        "configuration": {"returnImmediately": True},
                    },
                )
            )["result"]["task"]
            made = await rpc(
                a,
                "CreateTaskPushNotificationConfig",
                {"taskId": slow["id"], "id": "hook", "url": "https://example.com/h"},
            )
            assert "result" in made
            listed = (await rpc(b, "ListTaskPushNotificationConfigs", {"taskId": slow["id"]}))["result"]["configs"]
            assert [c["id"] for c in listed] == ["hook"]

            body = {"jsonrpc": "2.0", "id": 2, "method": "SubscribeToTask", "params": {"id": slow["id"]}}
            async with b.stream("POST", "/a2a", json=body, headers=V10) as stream:
                frames = Frames(stream)
                first = await frames.next()
                assert first["task"]["id"] == slow["id"]
                canceled = (await rpc(b, "CancelTask", {"id": slow["id"]}))["result"]
                assert canceled["status"]["state"] == "TASK_STATE_CANCELED"
                while True:
                    frame = await frames.next()
                    if frame.get("statusUpdate", {}).get("status", {}).get("state") == "TASK_STATE_CANCELED":
                        break
            assert (await rpc(a, "GetTask", {"id": slow["id"]}))["result"]["status"]["state"] == "TASK_STATE_CANCELED"
