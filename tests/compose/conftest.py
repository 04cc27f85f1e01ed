"""The stack of docker-compose.yml, brought up once for the suite.

Needs Docker (``docker compose`` or ``docker-compose``), the images built or buildable (on a
machine with no registry, ``../shared/tools/compose-up.sh`` provides the base images; see
``.ci/run``), and the files README "Deploying with docker-compose" has you create in the
checkout: ``.env``, ``admin.key`` and ``api-keys.yaml``. The default ``python -m pytest`` never
collects this directory (``norecursedirs`` in pyproject); run it by path:
``python -m pytest tests/compose``.

The fixture starts from nothing (``down -v``), times ``up -d`` to the first answered task, and
leaves the stack to the last test, which takes it down; it takes it down itself if that test
did not run.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from tests.conftest import REPO

GATEWAYS = {
    "gateway-1": "http://127.0.0.1:8081",
    "gateway-2": "http://127.0.0.1:8082",
    "gateway-3": "http://127.0.0.1:8083",
}
FIGURES: dict[str, float] = {}  # printed at the end of the run (pytest_terminal_summary)


def compose_command() -> list[str]:
    """``docker compose`` (v2) where the plugin is installed, else ``docker-compose`` (1.29)."""
    if shutil.which("docker") and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    pytest.fail("neither `docker compose` nor `docker-compose` is installed (see .ci/run)")


def compose(*args: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess:
    return run([*compose_command(), *args], timeout=timeout, check=check)


def docker(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
    return run(["docker", *args], timeout=timeout, check=check)


def run(argv: list[str], *, timeout: float, check: bool) -> subprocess.CompletedProcess:
    done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    if check and done.returncode != 0:
        pytest.fail(f"{' '.join(argv)} exited {done.returncode}:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
    return done


def container(service: str) -> str:
    """The id of the one container of ``service`` (running or not)."""
    ids = compose("ps", "-q", service).stdout.split()
    assert len(ids) == 1, f"{service}: containers {ids}"
    return ids[0]


def inspect(service: str) -> dict:
    return json.loads(docker("inspect", container(service)).stdout)[0]


def health(service: str) -> str | None:
    state = inspect(service)["State"]
    return state.get("Health", {}).get("Status") or state.get("Status")


def env_file() -> dict[str, str]:
    """``.env`` as compose reads it: ``NAME=value`` lines, comments and blank lines skipped."""
    out = {}
    for line in (REPO / ".env").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            name, value = line.split("=", 1)
            out[name.strip()] = value.strip()
    return out


@dataclass(frozen=True)
class Stack:
    api_key: str
    registration_token: str
    project: str  # compose's project name (its containers', networks' and volumes' label)

    def client(self, gateway: str, **kw) -> httpx.AsyncClient:
        headers = {"Authorization": f"Bearer {self.api_key}"}
        return httpx.AsyncClient(base_url=GATEWAYS[gateway], headers=headers, timeout=kw.pop("timeout", 30), **kw)


def echo_task(text: str, agent: str = "echo") -> dict:
    return {"agent": agent, "message": {"role": "user", "parts": [{"kind": "text", "text": text}]}}


async def first_answer(stack: Stack, gateway: str, agent: str, timeout: float) -> dict:
    """Submit to ``agent`` until a task is answered (the stack, or the agent, may not be up yet)."""

    async def attempt() -> dict:
        async with stack.client(gateway) as client:
            while True:
                with contextlib.suppress(httpx.TransportError):
                    resp = await client.post("/tasks?wait=true&timeout=20", json=echo_task("first", agent))
                    if resp.status_code == 200 and resp.json()["status"]["state"] == "completed":
                        return resp.json()
                await asyncio.sleep(0.2)  # not up yet: the only thing to wait on is the next try

    async with asyncio.timeout(timeout):
        return await attempt()


@pytest.fixture(scope="session")
def stack() -> Iterator[Stack]:
    missing = [name for name in (".env", "admin.key", "api-keys.yaml") if not (REPO / name).is_file()]
    if missing:
        pytest.fail(f"create {', '.join(missing)} first (README: Deploying with docker-compose)")
    compose("down", "-v", "--remove-orphans")
    started = time.monotonic()
    compose("up", "-d", timeout=1800)
    FIGURES["up -d returned (s)"] = time.monotonic() - started
    project = inspect("redis")["Config"]["Labels"]["com.docker.compose.project"]
    stack = Stack((REPO / "admin.key").read_text().strip(), env_file()["INTERLACE_REGISTRATION_TOKEN"], project)
    asyncio.run(first_answer(stack, "gateway-1", "echo", timeout=180))
    FIGURES["up to the first answered task (s)"] = time.monotonic() - started
    try:
        yield stack
    finally:
        if compose("ps", "-q", check=False).stdout.strip():
            logs = compose("logs", "--no-color", "--tail", "40", check=False).stdout
            compose("down", "-v", "--remove-orphans", check=False)
            print(f"\n--- the stack's last log lines ---\n{logs[-8000:]}")


def pytest_terminal_summary(terminalreporter):
    if FIGURES:
        terminalreporter.section("compose figures")
        for name, value in FIGURES.items():
            terminalreporter.write_line(f"{name}: {value:.1f}")
