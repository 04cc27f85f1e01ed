"""stdio upstreams: real stdio MCP servers as supervised children of the gateway (the SDK-built
fixture in stdio mode, a misbehaving SDK-built server, the official everything server from npm),
the relays through one shared child, the exact environment, faults (crash, hang, garbage on
stdout, a stderr flood) that leave the gateway and other upstreams serving, no orphans (stop,
removal, SIGKILL of the gateway), the upstream file, and the console's view of a process."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import httpx
import mcp_types as types
import pytest
import yaml
from mcp import Client
from opentelemetry.trace import SpanKind

from gateway.cli import build_parser
from gateway.core.auth import api_key_digest
from protocols.mcp.stdio_upstream import RestartPolicy, StdioUpstream
from protocols.mcp.upstreams_file import load_upstreams
from tests import test_tracing
from tests.conftest import REPO, data_dir, free_port, test_config, wait_until
from tests.fixtures.mcp_support import NODE_DIR, UPSTREAM_SCRIPT, mcp_gateway, node_tools
from tests.test_console import ADMIN_KEY, ALICE_KEY, signed_in

pytestmark = pytest.mark.filterwarnings(
    "ignore::DeprecationWarning", "ignore::mcp.shared.exceptions.MCPDeprecationWarning"
)

FAULTY = REPO / "tests" / "fixtures" / "mcp_stdio_faulty.py"
QUICK = RestartPolicy(backoff_s=0.1, max_backoff_s=1.0, ping_interval_s=0.5, ping_timeout_s=2.0, stop_grace_s=2.0)


def sdk_server(name: str = "py") -> StdioUpstream:
    return StdioUpstream(name, (sys.executable, str(UPSTREAM_SCRIPT), "--stdio", "--name", name), restart=QUICK)


def faulty(name: str = "f", **kw) -> StdioUpstream:
    return StdioUpstream(name, (sys.executable, str(FAULTY)), restart=QUICK, **kw)


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1][0] != "Z"  # a zombie is dead, only not yet reaped
    except OSError:
        return False


async def gone(*pids: int, timeout: float = 15) -> None:
    await wait_until(lambda: asyncio.sleep(0, result=not any(alive(p) for p in pids)), timeout=timeout)


def status_of(server, name: str) -> dict:
    return next(s for s in server.upstreams.status() if s["name"] == name)


def text(result) -> str:
    return result.content[0].text


async def test_sdk_stdio_server_serves_every_relay():
    """Tools, prompts, resources and completion; progress, logging, sampling and elicitation
    relayed to the one caller in flight, through one child shared by every client."""
    seen, logs, progress = {}, [], []

    async def sampling(context, params: types.CreateMessageRequestParams):
        seen["sampling"] = params.messages[0].content.text
        return types.CreateMessageResult(role="assistant", content=types.TextContent(text="four"), model="stub")

    async def elicitation(context, params):
        seen["elicitation"] = params.message
        return types.ElicitResult(action="accept", content={"username": "ada", "email": "ada@example.com"})

    async def on_log(params):
        logs.append(params.data)

    async def on_progress(value, total, message):
        progress.append(value)

    async with mcp_gateway([sdk_server()]) as (url, server), asyncio.timeout(90):
        callbacks = dict(sampling_callback=sampling, elicitation_callback=elicitation, logging_callback=on_log)
        async with Client(url, mode="legacy", **callbacks) as client:
            names = {t.name for t in (await client.list_tools()).tools}
            assert {"py__test_echo", "py__test_sampling", "echo"} <= names
            assert text(await client.call_tool("py__test_echo", {"text": "over stdio"})) == "over stdio"
            res = await client.call_tool("py__test_sampling", {"prompt": "2+2?"})
            assert text(res) == "LLM response: four" and seen["sampling"] == "2+2?"
            res = await client.call_tool("py__test_elicitation", {"message": "who are you?"})
            assert "ada@example.com" in text(res) and seen["elicitation"] == "who are you?"
            await client.set_logging_level("debug")
            await client.call_tool("py__test_tool_with_logging", {})
            assert logs == ["Tool execution started", "Tool processing data", "Tool execution completed"]
            await client.call_tool("py__test_tool_with_progress", {}, progress_callback=on_progress)
            assert progress == [0, 50, 100]
            gp = await client.get_prompt("py__test_prompt_with_arguments", {"arg1": "a", "arg2": "b"})
            assert "arg1='a'" in gp.messages[0].content.text
            rr = await client.read_resource("test://template/42/data")
            assert json.loads(rr.contents[0].text)["id"] == "42"
        async with Client(url, mode="legacy") as first, Client(url, mode="auto") as second:
            calls = [c.call_tool("py__test_echo", {"text": f"{i}"}) for i in range(25) for c in (first, second)]
            results = await asyncio.gather(*calls)
            assert sorted(text(r) for r in results) == sorted(str(i) for i in range(25) for _ in (0, 1))
        [status] = server.upstreams.status()
        assert status["state"] == "running" and status["restarts"] == 0 and status["transport"] == "stdio"
        assert server.upstreams.clients["py"].generation == 1  # one child, one session, for everyone


async def test_list_changes_and_rug_pull_pins_hold_over_stdio():
    async with mcp_gateway([sdk_server()]) as (url, server), asyncio.timeout(60):
        async with Client(url, mode="legacy") as client:
            assert text(await client.call_tool("py__test_mutate_tool", {})) == "mutated"

            async def quarantined() -> bool:
                return [q["tool"] for q in server.upstreams.quarantined()] == ["mutable_tool"]

            await wait_until(quarantined, timeout=20)  # list_changed arrived on stdout, the catalog was re-read
            assert "py__mutable_tool" not in {t.name for t in (await client.list_tools()).tools}
            res = await client.call_tool("py__mutable_tool", {"x": 1})
            assert res.is_error and "changed its definition" in text(res)


async def test_cancellation_reaches_the_stdio_server():
    async with mcp_gateway([sdk_server()], call_timeout_s=0.5) as (url, _), asyncio.timeout(60):
        async with Client(url, mode="legacy") as client:
            res = await client.call_tool("py__test_slow", {"seconds": 30})
            assert res.is_error and "did not answer" in text(res)

            async def cancelled() -> bool:
                return text(await client.call_tool("py__test_cancelled", {})) == "cancelled"

            await wait_until(cancelled, timeout=10)


async def test_the_child_gets_exactly_the_environment_named(tmp_path, monkeypatch):
    monkeypatch.setenv("GATEWAY_SECRET", "never-for-children")
    monkeypatch.setenv("SERVER_TOKEN", "for-the-server")
    up = faulty(env=(("MODE", "test"),), env_passthrough=("SERVER_TOKEN", "NOT_SET_ANYWHERE"), cwd=str(tmp_path))
    async with mcp_gateway([up]) as (url, server), asyncio.timeout(60):
        async with Client(url, mode="legacy") as client:
            me = json.loads(text(await client.call_tool("f__whoami", {})))
        assert me["cwd"] == str(tmp_path)
        # The environment it was started with (Python later adds LC_CTYPE to its own, PEP 538).
        with open(f"/proc/{me['pid']}/environ", "rb") as f:
            env = dict(item.split(b"=", 1) for item in f.read().split(b"\0") if item)
        assert env == {b"MODE": b"test", b"SERVER_TOKEN": b"for-the-server"}
        assert server.upstreams.status()[0]["pgid"] != me["pid"]  # the keeper's, the group leader


async def other_upstream_works(client: Client) -> None:
    assert text(await client.call_tool("ok__echo", {"text": "still here"})) == "still here"


async def recovered(client: Client, server, restarts: int = 1) -> None:
    """The faulty upstream was restarted and serves again."""

    async def serving() -> bool:
        status = status_of(server, "f")
        if status["restarts"] < restarts or not status["connected"]:
            return False
        return not (await client.call_tool("f__echo", {"text": "back"})).is_error

    await wait_until(serving, timeout=30, interval=0.1)


@pytest.mark.parametrize(
    "fault, reason",
    [
        ("crash", "exited with code 3"),
        ("hang", "hung: no answer to ping"),
        ("garbage", "not JSON-RPC on stdout"),
    ],
)
async def test_a_broken_server_fails_its_calls_and_is_restarted(fault, reason):
    async with mcp_gateway([faulty(), faulty("ok")], call_timeout_s=20) as (url, server), asyncio.timeout(90):
        async with Client(url, mode="legacy") as client:
            first_pid = server.upstreams.clients["f"].pgid
            started = time.monotonic()
            res = await client.call_tool(f"f__{fault}", {})
            assert res.is_error and text(res) == "upstream 'f': agent unreachable"
            assert time.monotonic() - started < 15  # failed by the supervisor, not by the call timeout
            await other_upstream_works(client)
            await recovered(client, server)
            status = status_of(server, "f")
            assert reason in status["last_exit"] and status["pgid"] != first_pid and status["state"] == "running"
            await other_upstream_works(client)
        assert not alive(first_pid)


async def test_a_server_that_never_answers_initialize_is_restarted():
    silent = StdioUpstream("silent", (sys.executable, "-c", "import time; time.sleep(600)"), restart=QUICK)
    async with mcp_gateway([silent, faulty("ok")]) as (url, server), asyncio.timeout(60):

        async def restarted() -> bool:
            return status_of(server, "silent")["restarts"] >= 1

        await wait_until(restarted, timeout=30)
        assert status_of(server, "silent")["last_exit"].startswith("no session: no answer to")
        async with Client(url, mode="legacy") as client:
            await other_upstream_works(client)


async def test_a_crash_loop_backs_off(tmp_path):
    crasher = StdioUpstream(
        "loop",
        (sys.executable, "-c", "import sys; sys.stderr.write('no luck\\n'); sys.exit(7)"),
        restart=RestartPolicy(backoff_s=0.05, max_backoff_s=30.0, crash_loop_restarts=3, crash_loop_window_s=60),
    )
    missing = StdioUpstream("missing", ("no-such-server-anywhere",), restart=crasher.restart)
    async with mcp_gateway([crasher, missing, faulty("ok")]) as (url, server), asyncio.timeout(60):

        async def looping() -> bool:
            return all(status_of(server, name)["state"] == "crash-loop" for name in ("loop", "missing"))

        await wait_until(looping, timeout=20)
        status = status_of(server, "loop")
        assert status["restarts"] == 3 and status["last_exit"] == "exited with code 7"
        assert status["stderr_tail"][-1] == "no luck" and 25 < status["next_start_in_s"] <= 30
        status = status_of(server, "missing")
        assert status["last_exit"] == "exited with code 127"
        assert status["stderr_tail"][-1] == "cannot start no-such-server-anywhere: No such file or directory"
        async with Client(url, mode="legacy") as mcp:
            await other_upstream_works(mcp)


async def test_a_stderr_flood_is_bounded(caplog):
    caplog.set_level("INFO", logger="interlace.mcp.upstream")
    started = time.monotonic()
    async with mcp_gateway([faulty(), faulty("ok")]) as (url, server), asyncio.timeout(90):
        async with Client(url, mode="legacy") as client:
            flood = asyncio.create_task(client.call_tool("f__flood", {"megabytes": 64}))
            await other_upstream_works(client)  # the gateway serves while the flood runs
            assert text(await flood) == "flooded"
            assert text(await client.call_tool("f__echo", {"text": "fine"})) == "fine"
        status = status_of(server, "f")
        assert status["restarts"] == 0 and status["stderr_lines_not_logged"] > 60_000
        assert len(status["stderr_tail"]) == 50 and status["stderr_tail"][-1] == "x" * 1023
    logged = [r for r in caplog.records if getattr(r, "stream", None) == "stderr" and r.upstream == "f"]
    # 64 Ki lines, of which at most a burst of 200 and 20 a second are logged
    assert 0 < len(logged) <= 200 + 20 * (time.monotonic() - started)
    assert any(getattr(r, "dropped", 0) for r in caplog.records)


async def test_no_orphans_when_an_entry_goes_or_the_gateway_stops():
    async with mcp_gateway([faulty(), faulty("g")]) as (url, server), asyncio.timeout(60):
        async with Client(url, mode="legacy") as client:
            f_child = json.loads(text(await client.call_tool("f__whoami", {})))["pid"]
            f_grandchild = int(text(await client.call_tool("f__grandchild", {})))
            g_child = json.loads(text(await client.call_tool("g__whoami", {})))["pid"]
        keepers = [server.upstreams.clients[n].pgid for n in ("f", "g")]
        await server.upstreams.set_upstreams([faulty("g")])  # f goes, with what it started
        await gone(f_child, f_grandchild, keepers[0])
        assert alive(g_child)
    await gone(g_child, keepers[1])


async def test_no_orphans_when_the_gateway_is_killed(tmp_path):
    """SIGKILL of `interlace serve` (no cleanup runs): the children and theirs die anyway."""
    upstreams = tmp_path / "upstreams.yaml"
    upstreams.write_text(yaml.safe_dump([{"name": "f", "command": [sys.executable, str(FAULTY)]}]))
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO), "INTERLACE_DATA_DIR": str(data_dir())}
    args = ["serve", "--port", str(port), "--no-gossip", "--no-echo", "--mcp-upstreams", str(upstreams)]
    gateway = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        url = f"http://127.0.0.1:{port}/mcp"

        async def up() -> bool:
            try:
                async with Client(url, mode="legacy") as client:
                    return "f__whoami" in {t.name for t in (await client.list_tools()).tools}
            except Exception:
                return False

        async with asyncio.timeout(60):
            await wait_until(up, timeout=40, interval=0.2)
            async with Client(url, mode="legacy") as client:
                child = json.loads(text(await client.call_tool("f__whoami", {})))["pid"]
                grandchild = int(text(await client.call_tool("f__grandchild", {})))
            keeper = int(open(f"/proc/{child}/stat").read().split(") ")[1].split()[1])  # its parent
            assert alive(keeper) and keeper != gateway.pid
            gateway.send_signal(signal.SIGKILL)
            gateway.wait(10)
            await gone(child, grandchild, keeper)
    finally:
        if gateway.poll() is None:
            gateway.kill()
            gateway.wait(10)


async def test_the_upstream_file_is_reloaded(tmp_path, caplog):
    path = tmp_path / "upstreams.yaml"
    entry = {"name": "f", "command": [sys.executable, str(FAULTY)], "restart": {"ping_interval_s": 1}}
    path.write_text(yaml.safe_dump([entry]))
    async with mcp_gateway(upstreams_file=str(path)) as (url, server), asyncio.timeout(60):
        first = server.upstreams.clients["f"].pgid
        path.write_text(yaml.safe_dump([{**entry, "name": "g"}]))

        async def swapped() -> bool:
            return set(server.upstreams.clients) == {"g"} and server.upstreams.clients["g"].connected

        await wait_until(swapped, timeout=30)
        await gone(first)
        async with Client(url, mode="legacy") as client:
            names = {t.name for t in (await client.list_tools()).tools}
            assert "g__echo" in names and "f__echo" not in names
        path.write_text("- name: [broken")  # a broken file keeps what is running

        async def refused() -> bool:
            return any(r.getMessage().startswith("MCP upstream file not reloaded") for r in caplog.records)

        await wait_until(refused, timeout=20)
        assert set(server.upstreams.clients) == {"g"} and server.upstreams.clients["g"].connected


def test_the_upstream_file_is_checked(tmp_path):
    path = tmp_path / "u.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "upstreams": [
                    {"name": "web", "url": "http://127.0.0.1:9/mcp", "headers": {"Authorization": "Bearer x"}},
                    {
                        "name": "fs",
                        "command": ["npx", "-y", "@modelcontextprotocol/server-filesystem", "/srv"],
                        "env": {"DEBUG": 1},
                        "env_passthrough": ["PATH", "HOME"],
                        "cwd": "/tmp",
                        "restart": "on-failure",
                    },
                ]
            }
        )
    )
    web, fs = load_upstreams(path)
    assert web.headers == (("Authorization", "Bearer x"),)
    assert fs.command[0] == "npx" and fs.env == (("DEBUG", "1"),) and fs.restart.policy == "on-failure"
    for bad, why in [
        ([{"name": "x"}], "either url (HTTP) or command"),
        ([{"name": "x", "command": "npx"}], "command must be a list"),
        ([{"name": "x", "command": ["a"], "restart": "sometimes"}], "restart must be one of"),
        ([{"name": "x", "command": ["a"], "environment": {}}], "unknown keys ['environment']"),
        ([{"name": "x", "command": ["a"]}, {"name": "x", "url": "http://h/mcp"}], "names given twice: x"),
    ]:
        path.write_text(yaml.safe_dump(bad))
        with pytest.raises(ValueError, match=why.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
            load_upstreams(path)


def test_the_readme_examples_hold(tmp_path):
    section = (REPO / "README.md").read_text().split("## MCP servers behind the gateway", 1)[1].split("\n## ", 1)[0]
    example = tmp_path / "upstreams.yaml"
    example.write_text(section.split("```yaml", 1)[1].split("```", 1)[0])
    weather, files, github = load_upstreams(example)
    assert weather.url.startswith("https://") and files.env_passthrough == ("PATH", "HOME")
    assert github.cwd == "/srv/repos" and github.restart.policy == "on-failure"
    host = json.loads(section.split("```json", 1)[1].split("```", 1)[0])["mcpServers"]["interlace"]
    args = build_parser().parse_args(host["args"])
    assert host["command"] == "interlace" and (args.command, args.kind) == ("mcp", "stdio")
    assert args.gateway == "https://gw.example.com" and args.token_file


@pytest.fixture(scope="module")
def everything_server():
    """The official everything server (npm, stdio mode) and the Node it runs on."""
    if shutil.which("npm") is None:
        pytest.skip("npm is not installed")
    node = node_tools() / "node"
    script = NODE_DIR / "node_modules" / "@modelcontextprotocol" / "server-everything" / "dist" / "index.js"
    return StdioUpstream("everything", (str(node), str(script), "stdio"), restart=QUICK)


async def test_the_official_everything_server_over_stdio(everything_server, monkeypatch):
    monkeypatch.setenv("GATEWAY_SECRET", "never-for-children")
    progress, seen = [], {}

    async def sampling(context, params: types.CreateMessageRequestParams):
        seen["sampling"] = params.messages[0].content.text
        return types.CreateMessageResult(role="assistant", content=types.TextContent(text="hi"), model="stub")

    async def elicitation(context, params):
        seen["elicitation"] = params.message
        return types.ElicitResult(action="decline")

    async def on_progress(value, total, message):
        progress.append(value)

    callbacks = dict(sampling_callback=sampling, elicitation_callback=elicitation)
    async with mcp_gateway([everything_server]) as (url, server), asyncio.timeout(120):
        async with Client(url, mode="legacy", **callbacks) as client:
            tools = {t.name for t in (await client.list_tools()).tools}
            assert {"everything__echo", "everything__get-sum", "everything__get-env"} <= tools, sorted(tools)
            assert text(await client.call_tool("everything__echo", {"message": "via npm"})) == "Echo: via npm"
            assert "5" in text(await client.call_tool("everything__get-sum", {"a": 2, "b": 3}))
            env = json.loads(text(await client.call_tool("everything__get-env", {})))
            assert "GATEWAY_SECRET" not in env and "PATH" not in env  # nothing it was not given
            name = "everything__trigger-long-running-operation"
            await client.call_tool(name, {"duration": 1, "steps": 2}, progress_callback=on_progress)
            assert progress == [1, 2]
            await client.call_tool("everything__trigger-sampling-request", {"prompt": "hello", "maxTokens": 5})
            assert seen["sampling"].endswith("hello")
            res = await client.call_tool("everything__trigger-elicitation-request", {})
            assert seen["elicitation"] and "decline" in json.dumps([c.model_dump() for c in res.content]).lower()
            prompts = [p.name for p in (await client.list_prompts()).prompts]
            assert any(p.startswith("everything__") for p in prompts)
            resources = (await client.list_resources()).resources
            assert resources and (await client.read_resource(str(resources[0].uri))).contents
        assert server.upstreams.status()[0]["state"] == "running"


async def test_the_console_shows_a_stdio_process_to_admins_only(tmp_path):
    """/ui/upstreams: the process (state, command, stderr tail) is for admins; a caller who may
    use the upstream's tools sees those, not the command line or its stderr."""
    keys, policy = tmp_path / "keys.yaml", tmp_path / "policy.yaml"
    keys.write_text(
        yaml.safe_dump(
            [
                {"principal": "root", "key_sha256": api_key_digest(ADMIN_KEY), "groups": ["admin"]},
                {"principal": "alice", "key_sha256": api_key_digest(ALICE_KEY), "groups": []},
            ]
        )
    )
    rules = [{"allow": {"groups": ["admin"]}}, {"allow": {"principal": "alice", "upstream": "f"}}]
    policy.write_text(yaml.safe_dump({"rules": rules}))
    config = test_config(api_keys=str(keys), policy=str(policy))
    async with mcp_gateway([faulty()], config=config) as (url, server), asyncio.timeout(60):
        server.upstreams.clients["f"].stderr.line(b"started on stdio")
        async with httpx.AsyncClient(base_url=url.removesuffix("/mcp"), timeout=15) as http:
            async with await signed_in(http, ADMIN_KEY) as admin:
                page = (await admin.get("/ui/upstreams")).text
                assert 'data-name="f"' in page and "running" in page and str(FAULTY) in page
                assert "started on stdio" in page
            async with await signed_in(http, ALICE_KEY) as alice:
                page = (await alice.get("/ui/upstreams")).text
                assert 'data-name="f"' in page and "echo" in page
                assert str(FAULTY) not in page and "started on stdio" not in page


spans = test_tracing.spans  # the in-memory exporter fixture


async def test_a_traced_call_carries_its_context_over_the_pipe(spans):
    async with mcp_gateway([sdk_server()]) as (url, _), asyncio.timeout(60):
        async with Client(url, mode="legacy") as client:
            keys = text(await client.call_tool("py__test_request_meta", {}))
        assert "traceparent" in keys  # W3C trace context in params._meta, as over HTTP
    [call] = [
        s
        for s in spans.get_finished_spans()
        if s.kind == SpanKind.CLIENT and s.attributes.get("gen_ai.tool.name") == "test_request_meta"
    ]
    assert call.attributes["network.transport"] == "pipe" and "server.address" not in call.attributes
