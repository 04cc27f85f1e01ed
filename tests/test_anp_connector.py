"""The outbound ANP connector against the official SDK's server (FastANP, DIDWba on) and against
another Interlace gateway: signed calls, token reuse, each outbound row of the mapping table."""

from __future__ import annotations

import asyncio

import pytest

from agents.worker import TaskFailed
from gateway.core.runtime import Runtime
from protocols.anp import ANPOptions
from protocols.anp.client import ANPSigner, RemoteAgent, RemoteMethod
from protocols.anp.connector import ANPConnector, choose_call
from protocols.anp.didwba import did_for_host
from registry.identity import Identity
from schemas import DataPart, FilePart, Message, Task, TaskState, TextPart
from schemas.agent_record import record_from_card
from tests.conftest import free_port, test_config, wait_until
from tests.fixtures.anp_remote import fastanp_remote
from tests.fixtures.anp_support import anp_gateway, fetch_document, two_gateways


def message(*parts, **meta) -> Message:
    return Message(role="user", parts=list(parts), metadata=meta or None)


@pytest.fixture
async def setup(tmp_path, monkeypatch):
    """A gateway whose 'remote' agent is a FastANP server reached by an ANPConnector, signing as
    the gateway's did:wba (the node key is shared by the connector and the served document)."""
    key_file = tmp_path / "node.key"
    identity = Identity.generate()
    identity.save(key_file)
    port = free_port()
    gateway_base = f"http://localhost:{port}"
    signer = ANPSigner.for_host(identity, f"localhost:{port}")

    async def resolve(did: str):
        return await fetch_document(gateway_base, did) if did == signer.did else None

    async with fastanp_remote(monkeypatch, resolve) as remote:
        connector = ANPConnector("remote", f"{remote.url}/ad.json", signer=signer, description="a FastANP agent")
        async with anp_gateway(test_config(echo=False, node_key=str(key_file)), workers=[connector], port=port) as (
            url,
            app,
        ):
            yield app.state.runtime, remote, signer, connector


async def run(rt, msg: Message, **meta) -> Task:
    task = await rt.submit(msg, agent="remote", metadata=meta or None)
    return await rt.wait(task.id, 20)


async def test_signed_call_text_to_the_string_param_and_object_result(setup):
    rt, remote, signer, _ = setup
    task = await run(rt, message(TextPart(text="gateway"), **{"anp.method": "hello"}))
    assert task.state is TaskState.COMPLETED, task.status
    assert task.artifacts[0].name == "hello"
    assert task.artifacts[0].parts == [DataPart(data={"message": "Hello, gateway!", "caller": signer.did})]
    assert remote.callers == [signer.did]  # FastANP authenticated the gateway's did:wba


async def test_bearer_token_from_the_remote_is_reused(setup):
    rt, remote, signer, _ = setup
    for name in ("a", "b", "c"):
        assert (await run(rt, message(TextPart(text=name), **{"anp.method": "hello"}))).state is TaskState.COMPLETED
    assert signer.token(f"{remote.url}/rpc") is not None
    assert remote.resolutions == [signer.did]  # signed once, then the JWT the remote issued


async def test_data_part_names_method_and_params_string_result_is_text(setup):
    rt, *_ = setup
    task = await run(rt, message(DataPart(data={"method": "shout", "params": {"text": "hey"}})))
    assert task.state is TaskState.COMPLETED and task.artifacts[0].parts == [TextPart(text="HEY")]


async def test_object_data_part_is_the_params(setup):
    rt, *_ = setup
    task = await run(rt, message(DataPart(data={"name": "data"})), **{"anp.method": "hello"})  # task metadata names it
    assert task.artifacts[0].parts[0].data["message"] == "Hello, data!"
    task = await run(rt, message(TextPart(text="ignored")), **{"anp.method": "shout", "anp.params": {"text": "p"}})
    assert task.artifacts[0].parts == [TextPart(text="P")]


async def test_remote_error_fails_the_task(setup):
    rt, *_ = setup
    task = await run(rt, message(TextPart(text="kaboom"), **{"anp.method": "fail"}))
    assert task.state is TaskState.FAILED
    assert "remote ANP agent 'remote'" in task.status.message.text() and "kaboom" in task.status.message.text()
    task = await run(rt, message(TextPart(text="x"), **{"anp.method": "nope"}))
    assert task.state is TaskState.FAILED and "no method 'nope'" in task.status.message.text()


async def test_cancel_abandons_the_remote_call(setup):
    rt, remote, *_ = setup
    task = await rt.submit(message(DataPart(data={"method": "slow", "params": {"seconds": 30}})), agent="remote")
    await asyncio.wait_for(remote.slow_started.wait(), 10)
    await rt.cancel(task.id)
    await asyncio.wait_for(remote.slow_abandoned.wait(), 10)  # the HTTP exchange was closed
    assert (await rt.get(task.id)).state is TaskState.CANCELED


async def test_remote_refusing_authentication_fails_the_task(setup):
    rt, remote, _, connector = setup
    connector.signer = ANPSigner.for_host(Identity.generate(), "stranger.example")  # a DID the remote cannot resolve
    task = await run(rt, message(TextPart(text="x"), **{"anp.method": "hello"}))
    assert task.state is TaskState.FAILED
    text = task.status.message.text()
    assert "HTTP 401" in text and "DIDWba" in text


async def test_unreachable_remote_fails_the_task():
    signer = ANPSigner.for_host(Identity.generate(), "gw.example.com")
    dead = ANPConnector("remote", f"http://localhost:{free_port()}/ad.json", signer=signer)
    async with anp_gateway(test_config(echo=False), workers=[dead]) as (_, app):
        task = await run(app.state.runtime, message(TextPart(text="x")))
    assert task.state is TaskState.FAILED and "unreachable" in task.status.message.text()


async def test_gateway_to_gateway(tmp_path):
    """The connector against another Interlace gateway's /anp/agents/echo: send_message is chosen,
    text -> message, an object data part -> data, and the remote task's result is the data artifact."""
    async with two_gateways(tmp_path) as (app, remote_app, signer, _):
        rt = app.state.runtime
        task = await rt.submit(message(TextPart(text="hi"), DataPart(data={"k": 1})), agent="far-echo")
        task = await rt.wait(task.id, 20)
        assert task.state is TaskState.COMPLETED, task.status
        result = task.artifacts[0].parts[0].data
        assert result["state"] == "completed" and result["text"] == "hi" and result["data"] == [{"k": 1}]
        remote_task = await remote_app.state.runtime.get(result["task_id"])
        assert remote_task.owner == signer.did


def _remote(*methods: RemoteMethod) -> RemoteAgent:
    return RemoteAgent("http://r/ad.json", "r", "", {m.name: m for m in methods})


def _m(name: str, *params: tuple[str, str, bool]) -> RemoteMethod:
    return RemoteMethod(
        name, "", [{"name": n, "schema": {"type": t}, "required": r} for n, t, r in params], "http://r/rpc"
    )


def test_method_and_params_choice():
    task = Task()
    one = _remote(_m("only", ("q", "string", True)))
    assert choose_call(task, message(TextPart(text="t")), one)[1] == {"q": "t"}
    several = _remote(_m("a", ("x", "number", True), ("s", "string", False)), _m("b"))
    with pytest.raises(TaskFailed, match="several methods"):
        choose_call(task, message(TextPart(text="t")), several)
    assert choose_call(task, message(TextPart(text="t"), **{"anp.method": "a"}), several)[1] == {"s": "t"}
    with pytest.raises(TaskFailed, match="no string parameter"):
        choose_call(task, message(TextPart(text="t"), **{"anp.method": "b"}), several)
    with pytest.raises(TaskFailed, match="params must be a JSON object"):
        choose_call(task, message(TextPart(text="t"), **{"anp.method": "a", "anp.params": [1]}), several)
    with pytest.raises(TaskFailed, match="file parts"):
        choose_call(task, message(FilePart.from_bytes(b"x", media_type="text/plain")), one)
    gateway = _remote(_m("send_message", ("message", "string", True), ("data", "object", False)), _m("get_task"))
    method, params = choose_call(task, message(TextPart(text="t"), DataPart(data={"k": 1})), gateway)
    assert method.name == "send_message" and params == {"message": "t", "data": {"k": 1}}


def test_a_connector_from_a_registry_record_signs_as_the_gateway():
    card = {
        "name": "weather",
        "description": "Forecasts",
        "version": "1",
        "skills": [{"id": "forecast", "name": "Forecast", "description": "tomorrow's weather"}],
        "endpoints": {"anp": "https://weather.example/ad.json"},
    }
    record = record_from_card(card, Identity.generate().did, 1, 60, "interlace", "node")
    bus_only = record_from_card(
        {**card, "name": "local", "endpoints": {"bus": "local"}}, Identity.generate().did, 1, 60, "interlace", "node"
    )
    runtime = Runtime(test_config(echo=False, port=8123))
    options = ANPOptions(public_host="gw.example.com")
    connector = ANPConnector.from_record(record, runtime, options=options)
    assert (connector.agent, connector.ad_url, connector.description) == (
        "weather",
        "https://weather.example/ad.json",
        "Forecasts",
    )
    assert connector.card()["skills"][0]["id"] == "forecast" and connector.card()["endpoints"] == {"bus": "weather"}
    assert connector.signer.did == did_for_host("gw.example.com") and connector.signer.identity is runtime.identity
    assert ANPConnector.from_record(record, runtime, options=options).signer is connector.signer  # one token cache
    assert ANPConnector.from_record(record, runtime, options=ANPOptions()).signer.did == did_for_host("localhost:8123")
    with pytest.raises(ValueError):
        ANPConnector.from_record(bus_only, runtime, options=options)


async def test_gateway_to_gateway_cancel_reaches_the_remote_task(tmp_path):
    async with two_gateways(tmp_path) as (app, remote_app, _, _):
        rt, remote_rt = app.state.runtime, remote_app.state.runtime
        params = {"message": "slow", "metadata": {"delay_ms": 30000}}
        task = await rt.submit(message(TextPart(text="x")), agent="far-echo", metadata={"anp.params": params})

        async def remote_task():
            found = [
                t for t in (await remote_rt.backend.tasks.list(None, 10, None))[0] if t.history[0].text() == "slow"
            ]
            return found[0] if found else None

        remote = await wait_until(remote_task, timeout=10)
        await rt.cancel(task.id)

        async def remote_canceled():
            return (await remote_rt.get(remote.id)).state is TaskState.CANCELED

        await wait_until(remote_canceled, timeout=10)
        failed = await rt.submit(
            message(TextPart(text="x")),
            agent="far-echo",
            metadata={"anp.params": {"message": "m", "metadata": {"fail": "nope"}}},
        )
        failed = await rt.wait(failed.id, 20)
        assert failed.state is TaskState.FAILED and "nope" in failed.status.message.text()


async def test_a_registered_record_with_an_anp_endpoint_gets_a_connector(tmp_path, monkeypatch):
    """The gateway's registry connectors run the connector ``mount`` registered for a live
    record with an anp endpoint; it signs as the gateway's did:wba (node key = runtime.identity)."""
    from registry.records import sign

    port = free_port()
    host = f"localhost:{port}"
    did = f"did:wba:localhost%3A{port}"

    async def resolve(asked: str):
        return await fetch_document(f"http://{host}", asked) if asked == did else None

    async with fastanp_remote(monkeypatch, resolve) as remote:
        async with anp_gateway(test_config(echo=False), port=port, public_host=host) as (_, app):
            rt = app.state.runtime
            agent = Identity.generate()
            card = {
                "name": "hello-remote",
                "description": "says hello",
                "version": "1",
                "skills": [{"id": "hello", "name": "Hello"}],
                "endpoints": {"anp": f"{remote.url}/ad.json"},
            }
            await rt.registry.submit(
                sign(record_from_card(card, agent.did, 1, 60, rt.config.network, "elsewhere"), agent)
            )

            async def running():
                return app.state.connectors.running().get(agent.did) == "anp"

            await wait_until(running, timeout=10)
            task = await rt.submit(message(TextPart(text="registry"), **{"anp.method": "hello"}), agent="hello-remote")
            task = await rt.wait(task.id, 20)
            assert task.state is TaskState.COMPLETED, task.status
            assert task.artifacts[0].parts[0].data == {"message": "Hello, registry!", "caller": did}
