"""The command line as a user runs it, configuration precedence, and the compose file."""

import asyncio
import contextlib
import os
import re
import signal
import subprocess
from pathlib import Path

import httpx
import pytest
import yaml

from gateway.cli import build_parser
from gateway.cluster import check_config
from gateway.core.auth import AuthMode
from gateway.core.config import Config
from gateway.core.node_identity import default_data_dir
from registry.identity import Identity
from tests.conftest import REPO, free_port, interlace_cmd, stop_process, subprocess_env
from tests.test_registry import record as registry_record


def test_version():
    out = subprocess.run(interlace_cmd("version"), env=subprocess_env(), capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and out.stdout.startswith("interlace ")


def test_flags_beat_env_beat_defaults():
    env = {"INTERLACE_PORT": "9000", "INTERLACE_REDIS_URL": "redis://env:6379/0", "INTERLACE_ECHO": "false"}
    assert Config.load({}, env={}).port == 8080
    from_env = Config.load({}, env=env)
    assert (from_env.port, from_env.redis_url, from_env.echo) == (9000, "redis://env:6379/0", False)
    flagged = Config.load({"port": 9100, "redis_url": None}, env=env)
    assert flagged.port == 9100 and flagged.redis_url == "redis://env:6379/0"


def test_bad_env_value_is_a_clear_error():
    with pytest.raises(ValueError, match="INTERLACE_PORT"):
        Config.load({}, env={"INTERLACE_PORT": "eighty"})
    out = subprocess.run(
        interlace_cmd("serve"), env=subprocess_env(INTERLACE_PORT="eighty"), capture_output=True, text=True, timeout=30
    )
    assert out.returncode == 2 and "INTERLACE_PORT" in out.stderr and "Traceback" not in out.stderr


@pytest.mark.parametrize(
    "command", [("serve", "--port", "0", "--node-key"), ("worker", "echo", "--key")], ids=["serve", "worker"]
)
@pytest.mark.parametrize("problem", ["group-readable", "missing", "malformed"])
def test_a_refused_key_file_is_one_line_and_exit_status_2(tmp_path, command, problem):
    key = tmp_path / "node.key"
    if problem != "missing":
        Identity.generate().save(key)
    if problem == "group-readable":
        os.chmod(key, 0o640)
    elif problem == "malformed":
        key.write_text("{not json")
    out = subprocess.run(
        interlace_cmd(*command, str(key)), env=subprocess_env(), capture_output=True, text=True, timeout=30
    )
    assert out.returncode == 2, out.stderr
    assert out.stderr.count("\n") == 1 and out.stderr.startswith("interlace: ") and "Traceback" not in out.stderr
    assert str(key) in out.stderr


@contextlib.contextmanager
def process(*args: str, **env: str):
    proc = subprocess.Popen(
        interlace_cmd(*args), env=subprocess_env(**env), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        yield proc
    finally:
        stop_process(proc)


async def _until_ok(client: httpx.AsyncClient, method: str, path: str, timeout: float = 20, **kw) -> httpx.Response:
    async def attempt():
        while True:
            with contextlib.suppress(httpx.TransportError):
                resp = await client.request(method, path, **kw)
                if resp.status_code < 300:
                    return resp
            await asyncio.sleep(0.1)

    return await asyncio.wait_for(attempt(), timeout)


async def test_serve_with_no_flags_answers_with_the_echo_agent():
    port = free_port()
    with process("serve", INTERLACE_PORT=str(port)) as proc:  # only the port differs from a bare `interlace serve`
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            await _until_ok(client, "GET", "/readyz")
            resp = await client.post(
                "/tasks?wait=true",
                json={"agent": "echo", "message": {"role": "user", "parts": [{"kind": "text", "text": "hi"}]}},
            )
            assert resp.json()["artifacts"][0]["parts"][0]["text"] == "hi"
        proc.send_signal(signal.SIGTERM)
        proc.wait(15)  # uvicorn re-raises SIGTERM after its graceful shutdown
        logs = proc.stderr.read().decode()
    assert '"msg": "gateway stopped"' in logs  # the lifespan shutdown ran: workers stopped cleanly
    lines = [line for line in logs.splitlines() if line.strip()]
    assert lines and all(line.startswith("{") for line in lines)  # structured JSON logs
    assert '"msg": "task accepted"' in logs


async def test_external_worker_through_the_gateway():
    port = free_port()
    with process("serve", "--port", str(port), "--no-echo"):
        url = f"http://127.0.0.1:{port}"
        async with httpx.AsyncClient(base_url=url, timeout=10) as client:
            await _until_ok(client, "GET", "/readyz")
            missing = await client.post(
                "/tasks", json={"agent": "echo", "message": {"role": "user", "parts": [{"kind": "text", "text": "x"}]}}
            )
            assert missing.status_code == 404  # no echo worker yet
            with process("worker", "echo", "--gateway", url):
                body = {"agent": "echo", "message": {"role": "user", "parts": [{"kind": "text", "text": "remote"}]}}
                resp = await _until_ok(client, "POST", "/tasks?wait=true", json=body)
                assert resp.json()["artifacts"][0]["parts"][0]["text"] == "remote"
            # The worker stopped gracefully: it deregistered with a signed tombstone on its way out.
            assert (await client.get("/registry/agents")).json()["total"] == 0


# ---- docker-compose.yml: every command is real (tests/compose runs the stack itself) ---------


def compose():
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())


def test_compose_has_redis_three_gateways_an_echo_and_a_model_worker():
    services = compose()["services"]
    commands = {name: svc.get("command", []) for name, svc in services.items()}
    gateways = [n for n, c in commands.items() if c[:2] == ["interlace", "serve"]]
    workers = [n for n, c in commands.items() if c[:2] == ["interlace", "worker"]]
    assert "redis" in services and len(gateways) == 3
    assert sorted(commands[n][2] for n in workers) == ["echo", "model"]
    for name, svc in services.items():
        for dep in svc.get("depends_on", {}):
            assert dep in services, f"{name} depends on unknown service {dep}"
        # Trusted to run unattended: restarted when it fails, bounded in memory and CPU.
        assert svc["restart"] == "unless-stopped" and svc["mem_limit"] and svc["cpus"], name
    assert (REPO / "Dockerfile").exists()


def test_compose_keeps_secrets_off_command_lines_and_state_in_volumes():
    spec = compose()
    for name, svc in spec["services"].items():
        assert not [a for a in svc.get("command", []) if "token" in a and a != "token"], name
        assert not [k for k in svc.get("environment", {}) if "TOKEN" in k or "KEY" in k], name
        for volume in svc.get("volumes", []):
            assert volume.split(":")[0] in spec["volumes"], f"{name}: {volume} is not a named volume"
    assert spec["secrets"]["api_keys"] == {"file": "./api-keys.yaml"}
    redis = spec["services"]["redis"]["command"]
    assert (
        redis[redis.index("--appendonly") + 1] == "yes" and "redis-data:/data" in spec["services"]["redis"]["volumes"]
    )


def test_ci_creates_the_compose_files_as_the_readme_says():
    # .ci/run brings the stack up with the files README "Deploying with docker-compose" has an
    # operator create, made by the same commands.
    section = (REPO / "README.md").read_text().split("## Deploying with docker-compose", 1)[1]
    block = section.split("```sh", 1)[1].split("```", 1)[0]
    commands = [line.split("  #", 1)[0].strip() for line in block.splitlines()]
    commands = [c for c in commands if c.startswith(("printf", "head", "chmod"))]
    ci = [line.strip() for line in (REPO / ".ci" / "run").read_text().splitlines()]
    assert len(commands) == 4 and all(c in ci for c in commands), commands


@pytest.mark.parametrize(
    "name", [n for n, s in compose()["services"].items() if s.get("command", [""])[0] == "interlace"]
)
def test_compose_commands_are_valid_interlace_invocations(name):
    command = compose()["services"][name]["command"]
    parser = build_parser()
    args = parser.parse_args(command[1:])  # exits (fails the test) on an unknown flag or subcommand
    if args.command == "serve":
        assert args.host == "0.0.0.0" and args.redis_url.startswith("redis://redis:")
        # The gateway would start: a public bind names its authentication (or explicitly none),
        # its admission, and its gossip (none: the gateways share Redis; else --trust).
        flags = {k: v for k, v in vars(args).items() if k not in ("command", "kind")}
        service = compose()["services"][name]
        # The environment compose gives it: its own (defaults of ${NAME:-default} taken), and the
        # .env file README "Deploying with docker-compose" has the operator write.
        env = {k: re.sub(r"\$\{\w+:-(.*)\}", r"\1", str(v)) for k, v in service.get("environment", {}).items()}
        assert service["env_file"] == ".env"
        env["INTERLACE_REGISTRATION_TOKEN"] = "from-the-env-file"
        config = Config.load(flags, env=env)
        assert config.effective_auth() is AuthMode.REQUIRED  # an API key on every call
        assert config.api_keys == "/run/secrets/api_keys" and "api_keys" in service["secrets"]
        assert config.effective_admission() == "token"
        check_config(config)
        assert config.gossip is False
    else:
        assert args.redis_url.startswith("redis://redis:")


async def spoofed_registry_writes(port: int, count: int) -> list[int]:
    """``count`` registry writes from loopback, each naming another X-Forwarded-For."""
    me = Identity.generate()
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
        await _until_ok(client, "GET", "/readyz")
        statuses = []
        for i in range(count):
            headers = {"X-Forwarded-For": f"198.51.100.{i}"}
            resp = await client.post("/registry/agents", json=registry_record(me, i + 1).dump(), headers=headers)
            statuses.append(resp.status_code)
        return statuses


async def test_x_forwarded_for_is_believed_only_from_named_proxies():
    # Security review P12: uvicorn trusted X-Forwarded-For from loopback, so a local client chose
    # the address its registry rate limit was keyed on and was never limited.
    port = free_port()
    with process("serve", "--port", str(port), "--no-echo", "--no-gossip"):
        statuses = await spoofed_registry_writes(port, 30)
    assert statuses.count(429) >= 5 and set(statuses) <= {200, 201, 429}, statuses
    port = free_port()
    with process("serve", "--port", str(port), "--no-echo", "--no-gossip", "--forwarded-allow-ips", "127.0.0.1"):
        statuses = await spoofed_registry_writes(port, 30)
    assert 429 not in statuses, statuses  # a named proxy's forwarded addresses are the clients


# ---- the node key persists; gossip on a public bind names its members ---------------------


async def node_did(port: int) -> str:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
        return (await _until_ok(client, "GET", "/cluster/members")).json()["did"]


async def test_the_node_key_is_made_once_and_kept_across_restarts(tmp_path):
    # Security review P19: without --node-key every start made a new node identity.
    data = tmp_path / "data"
    dids = []
    for _ in range(2):
        port = free_port()
        with process("serve", "--port", str(port), "--no-echo", "--data-dir", str(data)):
            dids.append(await node_did(port))
    assert dids[0] == dids[1] and dids[0].startswith("did:key:z6Mk")
    key = data / "node.key"
    assert Identity.load(key).did == dids[0]
    assert (os.stat(key).st_mode & 0o777, os.stat(data).st_mode & 0o777) == (0o600, 0o700)
    # The environment names the directory too; --node-key wins over both.
    port = free_port()
    with process("serve", "--port", str(port), "--no-echo", INTERLACE_DATA_DIR=str(data)):
        assert await node_did(port) == dids[0]
    other = tmp_path / "other.key"
    Identity.generate().save(other)
    port = free_port()
    with process("serve", "--port", str(port), "--no-echo", "--node-key", str(other), "--data-dir", str(data)):
        assert await node_did(port) == Identity.load(other).did


def test_the_default_data_directory_is_under_the_users_data_home(tmp_path):
    assert default_data_dir({"XDG_DATA_HOME": str(tmp_path)}) == tmp_path / "interlace"
    assert default_data_dir({}) == Path.home() / ".local" / "share" / "interlace"
    assert default_data_dir({"XDG_DATA_HOME": "relative/dir"}) == Path.home() / ".local" / "share" / "interlace"
    # Without --data-dir a node keeps its key there (a temporary XDG_DATA_HOME here, as in every
    # test); a refused start has made it, so that `interlace keys show` names the DID to trust.
    xdg = tmp_path / "xdg"
    out = subprocess.run(
        interlace_cmd("serve", "--port", "0", "--host", "0.0.0.0", "--allow-anonymous", "--admission", "open"),
        env={k: v for k, v in subprocess_env(XDG_DATA_HOME=str(xdg)).items() if k != "INTERLACE_DATA_DIR"},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 2 and (xdg / "interlace" / "node.key").exists()
    assert f"interlace keys show {xdg / 'interlace' / 'node.key'}" in out.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        ([], "gossip on 0.0.0.0 needs --trust FILE, the DIDs of the member nodes"),
        (["--trust", "EMPTY"], "lists no node DID"),
        (["--trust", "WRONG"], "'node-b', which is no node DID"),
    ],
)
def test_gossip_on_a_public_bind_refuses_to_start_without_a_trust_list(tmp_path, args, message):
    (tmp_path / "EMPTY").write_text("# nobody yet\n")
    (tmp_path / "WRONG").write_text(f"{Identity.generate().did}\nnode-b\n")
    args = [str(tmp_path / a) if a in ("EMPTY", "WRONG") else a for a in args]
    public = ("serve", "--host", "0.0.0.0", "--port", str(free_port()), "--allow-anonymous", "--admission", "open")
    out = subprocess.run(
        interlace_cmd(*public, *args), env=subprocess_env(), capture_output=True, text=True, timeout=30
    )
    assert out.returncode == 2, out.stderr
    assert out.stderr.count("\n") == 1 and out.stderr.startswith("interlace: ") and "Traceback" not in out.stderr
    assert message in out.stderr
    if not args:
        assert out.stderr.rstrip().endswith("or --no-gossip")


def test_gossip_on_a_public_bind_starts_with_a_trust_list_or_not_at_all(tmp_path):
    trust = tmp_path / "nodes.txt"
    trust.write_text(f"# the federation\n{Identity.generate().did}\n")
    public = {"host": "0.0.0.0", "allow_anonymous": True, "admission": "open"}
    check_config(Config.load({**public, "trust": str(trust)}, env={}))
    check_config(Config.load(public, env={"INTERLACE_GOSSIP": "false"}))
    check_config(Config.load({**public, "gossip": False}, env={}))
    check_config(Config.load({"host": "127.0.0.1"}, env={}))  # loopback: any node of the network
    with pytest.raises(ValueError, match="--no-gossip"):
        check_config(Config.load(public, env={}))
