"""The README's worked example of authentication and authorization runs as written.

Its keys file and policy are the ones a gateway here loads; its ``interlace serve`` line parses;
its MCP and A2A client programs run unchanged (but for the gateway's address) against that
gateway, with a token from a real issuer (tests/fixtures/oauth_server.py) and with the API keys
the README names; and what they see is what the README says they see.
"""

from __future__ import annotations

import contextlib
import re
import shlex

import httpx
import pytest
import yaml

from gateway.app import create_app
from gateway.cli import build_parser
from gateway.core.auth import api_key_digest
from protocols import a2a, mcp
from tests.conftest import REPO, free_port, serve_app, test_config
from tests.fixtures.oauth_server import running_oauth_server

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

CI_BOT, INTERN = "ak-alice-2f9c41d7e8b3", "ak-bob-7d0e3a95c1f4"


def example() -> dict[str, str]:
    """The code blocks of the README's worked example, by the file name on their first line
    (``sh`` for the command)."""
    readme = (REPO / "README.md").read_text()
    section = readme.split("### A worked example", 1)[1].split("\n### ", 1)[0]
    blocks = {}
    for lang, body in re.findall(r"```(\w+)\n(.*?)```", section, re.S):
        first = body.splitlines()[0]
        name = first.lstrip("# ").split(":")[0] if first.startswith("#") else lang
        blocks[name] = body
    return blocks


def test_the_keys_are_the_digests_of_the_keys_the_readme_names_and_the_command_parses():
    blocks = example()
    keys = {k["principal"]: k["key_sha256"] for k in yaml.safe_load(blocks["keys.yaml"])}
    assert keys == {"ci-bot": api_key_digest(CI_BOT), "intern": api_key_digest(INTERN)}
    argv = shlex.split(blocks["sh"].replace("\\\n", " "))
    args = build_parser().parse_args(argv[1:])
    assert args.policy == "policy.yaml" and args.api_keys == "keys.yaml" and args.audit_log == "audit.jsonl"


@contextlib.asynccontextmanager
async def example_gateway(tmp_path):
    blocks = example()
    (tmp_path / "keys.yaml").write_text(blocks["keys.yaml"])
    (tmp_path / "policy.yaml").write_text(blocks["policy.yaml"])
    async with running_oauth_server() as idp:
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        config = test_config(
            port=port,
            public_url=base,
            auth_issuer=idp.issuer,
            api_keys=str(tmp_path / "keys.yaml"),
            policy=str(tmp_path / "policy.yaml"),
        )
        app = create_app(config)
        mcp.mount(app, mcp.MCPOptions(call_timeout_s=10))
        a2a.mount(app)
        async with serve_app(app, port):
            yield base, idp


async def run_program(name: str, base: str, token: str, monkeypatch, capsys) -> str:
    """Run the README's program ``name`` against ``base`` with ``TOKEN``; what it printed."""
    source = example()[name].replace('GATEWAY = "https://gw.example.com"', f'GATEWAY = "{base}"')
    source = source.replace("asyncio.run(main())", "")
    monkeypatch.setenv("TOKEN", token)
    namespace: dict = {}
    exec(compile(source, name, "exec"), namespace)  # noqa: S102 - the README's own program
    capsys.readouterr()
    await namespace["main"]()
    return capsys.readouterr().out


def leaves(error: BaseException) -> list[BaseException]:
    """The exceptions inside (nested) exception groups."""
    if isinstance(error, BaseExceptionGroup):
        return [leaf for inner in error.exceptions for leaf in leaves(inner)]
    return [error]


async def test_the_clients_of_the_example_see_what_the_readme_says(tmp_path, monkeypatch, capsys):
    async with example_gateway(tmp_path) as (base, idp):
        person = idp.issue(aud=f"{base}/mcp", groups=["research"])
        out = await run_program("mcp_client.py", base, person, monkeypatch, capsys)
        assert "'echo'" in out and "hello over MCP" in out
        out = await run_program("mcp_client.py", base, CI_BOT, monkeypatch, capsys)
        assert "hello over MCP" in out
        out = await run_program("a2a_client.py", base, idp.issue(aud=base, groups=["research"]), monkeypatch, capsys)
        assert "hello over A2A" in out and "TASK_STATE_COMPLETED" in out
        async with httpx.AsyncClient(base_url=base, timeout=10) as http:
            card = await http.get("/a2a/agents/echo/.well-known/agent-card.json", headers={"X-API-Key": INTERN})
            assert card.status_code == 404
        with pytest.raises(BaseExceptionGroup) as refused:  # the SDK raises the JSON-RPC error
            await run_program("mcp_client.py", base, INTERN, monkeypatch, capsys)
        assert "Unknown tool: echo" in str(leaves(refused.value))
        assert capsys.readouterr().out.strip() == "['find_agents', 'send_task']"  # no echo for the intern
