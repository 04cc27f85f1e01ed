"""``interlace mcp stdio``: the official `mcp` SDK's stdio client launches the bridge, which relays
to a real gateway that requires credentials (API keys), with the caller's token from a file:
agent tools and a federated upstream's tools, a sampling request from the upstream answered by
the host, the gateway's own notifications (the session's GET stream), and a token the gateway
refuses."""

from __future__ import annotations

import asyncio
import os
import sys

import mcp_types as types
import pytest
import yaml
from mcp import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client

from gateway.core.auth import api_key_digest
from tests.conftest import REPO, test_config
from tests.fixtures.mcp_support import UpstreamProcess, mcp_gateway

pytestmark = pytest.mark.filterwarnings(
    "ignore::DeprecationWarning", "ignore::mcp.shared.exceptions.MCPDeprecationWarning"
)

KEY = "k-alice-0123456789abcdef"


@pytest.fixture
async def secured(tmp_path):
    keys = tmp_path / "keys.yaml"
    keys.write_text(yaml.safe_dump([{"principal": "alice", "key_sha256": api_key_digest(KEY), "groups": ["dev"]}]))
    with UpstreamProcess("u") as up:
        async with mcp_gateway([("u", up.url)], config=test_config(api_keys=str(keys))) as (url, _):
            yield url


def bridge(url: str, token_file) -> StdioServerParameters:
    """How a desktop host launches it (``interlace mcp stdio ...``), from this checkout."""
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(REPO)}
    args = ["-m", "gateway.cli", "mcp", "stdio", "--gateway", url.removesuffix("/mcp"), "--token-file", str(token_file)]
    return StdioServerParameters(command=sys.executable, args=args, env=env)


async def test_a_stdio_host_reaches_the_gateway_with_its_token(secured, tmp_path):
    token = tmp_path / "token"
    token.write_text(KEY + "\n")
    asked = {}

    async def sampling(context, params: types.CreateMessageRequestParams):
        asked["prompt"] = params.messages[0].content.text
        return types.CreateMessageResult(role="assistant", content=types.TextContent(text="four"), model="stub")

    async with (
        asyncio.timeout(60),
        stdio_client(bridge(secured, token)) as (read, write),
        ClientSession(read, write, sampling_callback=sampling) as session,
    ):
        init = await session.initialize()
        assert init.server_info.name == "interlace"
        names = {t.name for t in (await session.list_tools()).tools}
        assert {"echo", "find_agents", "u__test_echo"} <= names
        res = await session.call_tool("echo", {"message": "from a desktop host"})
        assert not res.is_error and res.content[0].text == "from a desktop host"
        res = await session.call_tool("u__test_echo", {"text": "federated"})
        assert res.content[0].text == "federated"
        res = await session.call_tool("u__test_sampling", {"prompt": "2+2?"})
        assert res.content[0].text == "LLM response: four" and asked["prompt"] == "2+2?"
        calls = [session.call_tool("u__test_echo", {"text": str(i)}) for i in range(10)]
        assert sorted(r.content[0].text for r in await asyncio.gather(*calls)) == sorted(map(str, range(10)))


async def test_the_gateways_own_notifications_reach_the_host(secured, tmp_path):
    """The session's GET stream, relayed: the host hears that the tool list changed."""
    token = tmp_path / "token"
    token.write_text(KEY)
    changed = asyncio.Event()

    async def on_message(message) -> None:
        if isinstance(message, types.ToolListChangedNotification):
            changed.set()

    async with (
        asyncio.timeout(60),
        stdio_client(bridge(secured, token)) as (read, write),
        ClientSession(read, write, message_handler=on_message) as session,
    ):
        await session.initialize()
        await session.list_tools()
        assert (await session.call_tool("u__test_mutate_tool", {})).content[0].text == "mutated"
        await changed.wait()


async def test_a_refused_token_is_a_clear_error(secured, tmp_path):
    token = tmp_path / "token"
    token.write_text("not-a-key\n")
    async with (
        asyncio.timeout(60),
        stdio_client(bridge(secured, token)) as (read, write),
        ClientSession(read, write) as session,
    ):
        with pytest.raises(Exception, match="HTTP 401"):
            await session.initialize()
