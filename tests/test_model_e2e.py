"""The model worker called from the official MCP and A2A clients through the gateway (tiny model, CPU)."""

from __future__ import annotations

import httpx
import pytest

pytest.importorskip("torch", reason="the model extra is not installed: pip install torch==2.13.0 '.[model]'")

from mcp import Client  # noqa: E402

from agents.model.hf import TransformersBackend  # noqa: E402
from agents.model.tiny import build_tiny_model  # noqa: E402
from agents.model.worker import ModelWorker  # noqa: E402
from tests.conftest import running_gateway  # noqa: E402
from tests.fixtures.a2a_support import as_dict, message, request, sdk_client, texts  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    backend = TransformersBackend.load(str(build_tiny_model(tmp_path_factory.mktemp("tiny") / "m")), device="cpu")
    return backend.model, backend.tokenizer


async def direct(gateway: str) -> str:
    """The same request through the internal task API (greedy decoding: the same answer)."""
    body = {"agent": "model", "message": {"role": "user", "parts": [{"kind": "text", "text": "Hello there"}]}}
    async with httpx.AsyncClient(base_url=gateway, timeout=60) as http:
        task = (await http.post("/tasks?wait=true", json=body)).json()
    assert task["status"]["state"] == "completed"
    text = task["artifacts"][0]["parts"][0]["text"]
    assert text  # six tokens of a random model: garbage, but never empty
    return text


@pytest.fixture
async def gateway(tiny):
    worker = ModelWorker(TransformersBackend(tiny[0], tiny[1], max_batch=4), agent="model", default_max_tokens=6)
    async with running_gateway(workers=[worker]) as (url, _):
        yield url


async def test_mcp_client_calls_the_model_worker(gateway, tiny):
    async with Client(f"{gateway}/mcp", mode="legacy") as client:
        assert "model" in [t.name for t in (await client.list_tools()).tools]
        res = await client.call_tool("model", {"message": "Hello there"})
        assert not res.is_error
        assert res.content[0].text == await direct(gateway)


@pytest.mark.parametrize("streaming", [False, True])
async def test_a2a_client_calls_the_model_worker(gateway, tiny, streaming):
    async with httpx.AsyncClient(timeout=60) as http:
        client = await sdk_client(http, f"{gateway}/a2a/agents/model", "JSONRPC", "1.0", streaming=streaming)
        events = [
            as_dict(e) async for e in client.send_message(request(message("Hello there", message_id=f"m-{streaming}")))
        ]
        final = events[-1]  # the task (blocking send) or the last status update (stream)
        task = final["task"] if "task" in final else await _get(client, final["statusUpdate"]["taskId"])
        assert task["status"]["state"] == "TASK_STATE_COMPLETED"
        assert texts(task) == await direct(gateway)


async def _get(client, task_id: str) -> dict:
    from a2a.types import GetTaskRequest

    return as_dict(await client.get_task(GetTaskRequest(id=task_id)))
