"""Agents registered with a protocol endpoint get a connector on the gateway, following the registry."""

import time

import httpx

from registry.identity import Identity
from registry.records import sign
from schemas.agent_record import AgentRecord, Tombstone
from tests.conftest import running_gateway, wait_until
from tests.fixtures.a2a_remote import remote_agent


def a2a_record(identity: Identity, url: str, seq: int) -> AgentRecord:
    now = int(time.time())
    return sign(
        AgentRecord.model_validate(
            {
                "did": identity.did,
                "name": "remote-echo",
                "description": "an a2a-sdk agent",
                "version": "1",
                "skills": [{"id": "echo", "name": "Echo"}],
                "endpoints": {"a2a": url},
                "seq": seq,
                "issued_at": now,
                "expires_at": now + 600,
                "network": "interlace",
                "home_node": "elsewhere",
            }
        ),
        identity,
    )


async def test_registered_a2a_agent_is_reached_through_its_connector_and_dropped_on_deregister():
    agent = Identity.generate()
    async with remote_agent() as remote_url, running_gateway() as (url, app):
        async with httpx.AsyncClient(base_url=url, timeout=20) as http:
            assert (
                await http.post("/registry/agents", json=a2a_record(agent, remote_url, 1).dump())
            ).status_code == 201
            assert app.state.connectors.running() == {agent.did: "a2a"}
            body = {"agent": "remote-echo", "message": {"role": "user", "parts": [{"kind": "text", "text": "across"}]}}
            task = (await http.post("/tasks?wait=true", json=body)).json()
            assert task["status"]["state"] == "completed"
            assert "across" in "".join(p.get("text", "") for a in task["artifacts"] for p in a["parts"])

            # A lease renewal (same endpoint) keeps the same connector running.
            runner = app.state.connectors._running[agent.did][1]
            assert (
                await http.post("/registry/agents", json=a2a_record(agent, remote_url, 2).dump())
            ).status_code == 200
            assert app.state.connectors._running[agent.did][1] is runner

            tomb = sign(Tombstone(did=agent.did, seq=3, issued_at=int(time.time()), network="interlace"), agent)
            assert (await http.request("DELETE", f"/registry/agents/{agent.did}", json=tomb.dump())).status_code == 200

            async def stopped():
                return app.state.connectors.running() == {}

            await wait_until(stopped, 10)
            assert (await http.post("/tasks", json=body)).status_code == 404


async def test_bus_agents_get_no_connector():
    async with running_gateway() as (_, app):
        assert app.state.runtime.registry.by_name("echo")  # the in-process echo agent is registered...
        assert app.state.connectors.running() == {}  # ...and served by its worker, not a connector


async def test_every_shipped_protocol_has_a_connector_by_default():
    async with running_gateway() as (url, app):
        async with httpx.AsyncClient(base_url=url, timeout=20) as http:
            expected = {}
            for kind, endpoint in (
                ("a2a", "http://127.0.0.1:9/a2a"),
                ("acp", "http://127.0.0.1:9/acp"),
                ("anp", "http://127.0.0.1:9/ad.json"),
                ("mcp", "http://127.0.0.1:9/mcp"),
            ):
                who = Identity.generate()
                now = int(time.time())
                record = sign(
                    AgentRecord.model_validate(
                        {
                            "did": who.did,
                            "name": f"far-{kind}",
                            "version": "1",
                            "skills": [{"id": "x", "name": "X"}],
                            "endpoints": {kind: endpoint},
                            "seq": 1,
                            "issued_at": now,
                            "expires_at": now + 600,
                            "network": "interlace",
                            "home_node": "elsewhere",
                        }
                    ),
                    who,
                )
                assert (await http.post("/registry/agents", json=record.dump())).status_code == 201
                expected[who.did] = kind
            assert app.state.connectors.running() == expected
