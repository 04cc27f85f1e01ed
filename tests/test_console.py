"""The console's rights, over HTTP: nothing without signing in, a non-admin sees what the policy
lets it call and its own tasks, admins everything; state changes need the page's CSRF token and
are audited. (What the pages look like and do in a browser: tests/browser.)"""

from __future__ import annotations

import contextlib
import logging
import re

import httpx
import pytest
import yaml

from agents.echo import EchoWorker
from gateway.core.auth import api_key_digest
from tests.conftest import running_gateway, test_config

ADMIN_KEY, ALICE_KEY = "admin-key-0123456789abcdef", "alice-key-0123456789abcdef"


class Secret(EchoWorker):
    agent = "secret"


@contextlib.asynccontextmanager
async def gateway(tmp_path):
    keys = tmp_path / "keys.yaml"
    keys.write_text(
        yaml.safe_dump(
            [
                {"principal": "root", "key_sha256": api_key_digest(ADMIN_KEY), "groups": ["admin"]},
                {"principal": "alice", "key_sha256": api_key_digest(ALICE_KEY), "groups": []},
            ]
        )
    )
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        yaml.safe_dump(
            {
                "rules": [
                    {"allow": {"groups": ["admin"]}},
                    {"allow": {"principal": "alice", "agent": "echo", "action": ["call", "read", "cancel"]}},
                ]
            }
        )
    )
    config = test_config(api_keys=str(keys), policy=str(policy))
    async with running_gateway(config, workers=[EchoWorker(), Secret()]) as (url, app):
        async with httpx.AsyncClient(base_url=url, timeout=15) as http:
            yield http, app


async def signed_in(http: httpx.AsyncClient, key: str) -> httpx.AsyncClient:
    """A browser-like client holding the console's session cookie for ``key``."""
    resp = await http.post("/ui/login", data={"credential": key, "next": "/ui/tasks"})
    assert resp.status_code == 303 and resp.headers["location"] == "/ui/tasks"
    cookie = resp.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/ui" in cookie
    assert key not in cookie  # the session names the principal, never the credential
    browser = httpx.AsyncClient(base_url=http.base_url, timeout=15, cookies=resp.cookies)
    return browser


async def csrf(browser: httpx.AsyncClient, page: str = "/ui") -> str:
    html = (await browser.get(page)).text
    return re.search(r'name="csrf-token" content="([^"]+)"', html).group(1)


async def submit(http: httpx.AsyncClient, key: str, agent: str) -> str:
    body = {"agent": agent, "message": {"role": "user", "parts": [{"kind": "text", "text": f"{agent} task"}]}}
    resp = await http.post("/tasks?wait=true", json=body, headers={"Authorization": f"Bearer {key}"})
    assert resp.status_code == 200, resp.text
    return resp.json()["id"]


async def test_nothing_without_signing_in(tmp_path):
    async with gateway(tmp_path) as (http, app):
        task = await submit(http, ADMIN_KEY, "echo")
        for page in ("/ui", "/ui/agents", "/ui/tasks", "/ui/tasks.json", f"/ui/tasks/{task}", "/ui/metrics.json"):
            resp = await http.get(page)
            assert resp.status_code == 303 and resp.headers["location"].startswith("/ui/login"), page
        resp = await http.get(f"/ui/tasks/{task}/events")
        assert resp.status_code == 303
        for action in (f"/ui/tasks/{task}/cancel", "/ui/playground", "/ui/agents/did:key:z6Mk/revoke"):
            resp = await http.post(action, json={}, headers={"X-CSRF-Token": "guess"})
            assert resp.status_code == 401, action
        assert (await app.state.runtime.get(task)).state.value == "completed"
        # A bad credential at the sign-in page, a forged cookie, and a wrong one are refused.
        bad = await http.post("/ui/login", data={"credential": "nope"})
        assert bad.status_code == 401 and "set-cookie" not in bad.headers and "unknown API key" in bad.text
        forged = await http.get("/ui/tasks", cookies={"interlace_console": "eyJpZCI6InJvb3QifQ.AAAA"})
        assert forged.status_code == 303
        wrong_bearer = await http.get("/ui/tasks", headers={"Authorization": "Bearer wrong"})
        assert wrong_bearer.status_code == 401


async def test_a_non_admin_sees_what_the_policy_lets_it_call_and_its_own_tasks(tmp_path):
    async with gateway(tmp_path) as (http, app):
        rt = app.state.runtime
        mine, root = await submit(http, ALICE_KEY, "echo"), await submit(http, ADMIN_KEY, "secret")
        secret_did = rt.registry.by_name("secret")[0].did
        async with await signed_in(http, ALICE_KEY) as alice:
            agents = (await alice.get("/ui/agents")).text
            assert 'data-name="echo"' in agents and 'data-name="secret"' not in agents
            assert (await alice.get(f"/ui/agents/{secret_did}")).status_code == 404
            listed = (await alice.get("/ui/tasks.json")).json()["tasks"]
            assert [t["id"] for t in listed] == [mine]
            assert (await alice.get(f"/ui/tasks/{root}")).status_code == 404
            assert (await alice.get(f"/ui/tasks/{mine}")).status_code == 200
            routed = (await alice.get("/ui/routing", params={"text": "echo", "tags": "echo"})).text
            assert "secret" not in routed
            assert "secret" not in str((await alice.get("/ui/metrics.json")).json())
            token = await csrf(alice)
            revoke = await alice.post(f"/ui/agents/{secret_did}/revoke", headers={"X-CSRF-Token": token})
            assert revoke.status_code == 403 and not rt.registry.revoked(secret_did)
            cancel = await alice.post(f"/ui/tasks/{root}/cancel", headers={"X-CSRF-Token": token})
            assert cancel.status_code == 404
            played = await alice.post(
                "/ui/playground", json={"agent": "secret", "text": "x"}, headers={"X-CSRF-Token": token}
            )
            assert played.status_code in (403, 404), played.text


async def test_admins_see_everything_and_actions_need_the_csrf_token(tmp_path, caplog):
    async with gateway(tmp_path) as (http, app):
        rt = app.state.runtime
        alice_task = await submit(http, ALICE_KEY, "echo")
        secret_did = rt.registry.by_name("secret")[0].did
        async with await signed_in(http, ADMIN_KEY) as root:
            agents = (await root.get("/ui/agents")).text
            assert 'data-name="echo"' in agents and 'data-name="secret"' in agents
            assert alice_task in [t["id"] for t in (await root.get("/ui/tasks.json")).json()["tasks"]]
            by_alice = (await root.get("/ui/tasks.json", params={"principal": "alice"})).json()["tasks"]
            assert [t["id"] for t in by_alice] == [alice_task]
            # Without the page's token, or with another session's, nothing happens.
            assert (await root.post(f"/ui/agents/{secret_did}/revoke")).status_code == 403
            other = await csrf(await signed_in(http, ALICE_KEY))
            assert (
                await root.post(f"/ui/agents/{secret_did}/revoke", headers={"X-CSRF-Token": other})
            ).status_code == 403
            # A cross-site form post never reaches the console.
            forged = await root.post(
                f"/ui/agents/{secret_did}/revoke",
                content=b"x=1",
                headers={"Origin": "https://evil.example", "Content-Type": "application/x-www-form-urlencoded"},
            )
            assert forged.status_code == 403 and not rt.registry.revoked(secret_did)
            with caplog.at_level(logging.INFO, logger="interlace.audit"):
                token = await csrf(root)
                resp = await root.post(f"/ui/agents/{secret_did}/revoke", headers={"X-CSRF-Token": token})
            assert resp.status_code == 200 and resp.json()["dropped"] == "secret"
            assert rt.registry.revoked(secret_did)
            audited = [
                r for r in caplog.records if r.name == "interlace.audit" and getattr(r, "target", None) == secret_did
            ]
            assert audited and audited[-1].principal == "root" and audited[-1].outcome == "ok"


async def test_sign_in_goes_back_only_to_the_console(tmp_path):
    async with gateway(tmp_path) as (http, _):
        for target in ("//evil.example/x", "https://evil.example", "/ui/../admin", "/elsewhere"):
            resp = await http.post("/ui/login", data={"credential": ALICE_KEY, "next": target})
            assert resp.status_code == 303 and resp.headers["location"] == "/ui", target


@pytest.mark.parametrize("bad", [{"agent": "echo"}, {"agent": "echo", "data": "{not json"}, {"agent": "", "text": "x"}])
async def test_the_playground_refuses_bad_input_clearly(bad):
    async with running_gateway(test_config()) as (url, _):
        async with httpx.AsyncClient(base_url=url, timeout=10) as http:
            token = await csrf(http)
            resp = await http.post("/ui/playground", json=bad, headers={"X-CSRF-Token": token})
            assert resp.status_code == 400 and resp.json()["error"]["message"]
            assert "Traceback" not in resp.text


def test_a_traced_task_shows_its_trace_id():
    from gateway.console.views import _trace_id
    from schemas import Task

    traced = Task(trace={"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"})
    assert _trace_id(traced) == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert _trace_id(Task()) is None and _trace_id(Task(trace={"traceparent": "garbage"})) is None
