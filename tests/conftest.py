"""Shared fixtures: a real redis-server, backends of both kinds, and live gateways on free ports.

A gateway keeps its node key in a data directory (default under the user's data home). Tests
never touch the real one: every ``test_config`` and every ``subprocess_env`` gets a fresh data
directory of its own (so two gateways of one test are two identities), and the whole session's
``XDG_DATA_HOME`` points into a temporary directory for anything built otherwise.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import dataclasses
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import uvicorn

from gateway.app import create_app
from gateway.core.backends import Backend, EmbeddedBackend, Limits
from gateway.core.config import Config
from gateway.core.sse import read_events
from gateway.serving import build_server, listening

REPO = Path(__file__).resolve().parent.parent

_SCRATCH = tempfile.mkdtemp(prefix="interlace-tests-")
atexit.register(shutil.rmtree, _SCRATCH, ignore_errors=True)
os.environ["XDG_DATA_HOME"] = os.path.join(_SCRATCH, "xdg-data")


def data_dir() -> str:
    """A fresh, empty data directory for one gateway (removed at the end of the session)."""
    return tempfile.mkdtemp(prefix="data-", dir=_SCRATCH)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisProcess:
    """A real redis-server on a free loopback port, with AOF so a restart keeps acked writes."""

    def __init__(self, appendfsync: str = "always") -> None:
        self.appendfsync = appendfsync  # tests: every acked write on disk; benchmarks: "everysec"
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed: apt-get install -y redis-server (see README)")
        self.binary = binary
        self.dir = tempfile.mkdtemp(prefix="interlace-redis-")
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                self.dir,
                "--appendonly",
                "yes",
                "--appendfsync",
                self.appendfsync,
                "--save",
                "",
                "--protected-mode",
                "yes",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), 0.2) as s:
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    return
            time.sleep(0.02)
        raise RuntimeError("redis-server did not start")

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(5)
            self.proc = None

    def flush(self) -> None:
        with socket.create_connection(("127.0.0.1", self.port), 2) as s:
            s.sendall(b"FLUSHALL\r\n")
            s.recv(16)


@pytest.fixture(scope="session")
def redis_server():
    server = RedisProcess()
    server.start()
    yield server
    server.kill()
    shutil.rmtree(server.dir, ignore_errors=True)


@pytest.fixture(scope="session")
def redis_cluster():
    """A 3-master Redis Cluster (no replicas), shared by the session."""
    from tests.redis_topologies import RedisCluster

    cluster = RedisCluster(masters=3)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def redis_sentinel():
    """A Sentinel-watched primary with one replica, shared by the session."""
    from tests.redis_topologies import RedisSentinel

    sentinel = RedisSentinel()
    try:
        sentinel.start()
        yield sentinel
    finally:
        sentinel.stop()


# The Redis deployments a backend test runs against: backend kind -> its session fixture.
REDIS_KINDS = {"redis": "redis_server", "redis-cluster": "redis_cluster", "redis-sentinel": "redis_sentinel"}


FAST = Limits(visibility_timeout_ms=1_000, max_queue=1_000, max_deliveries=5, retention_s=600)


def make_backend(kind: str, redis_url: str | None, limits: Limits = FAST) -> Backend:
    limits = dataclasses.replace(limits)  # tests tweak limits: never share one object
    if kind == "embedded":
        return EmbeddedBackend(limits)
    assert kind in REDIS_KINDS, kind
    from gateway.core.backends.redis import RedisBackend

    return RedisBackend(redis_url, limits)


@pytest.fixture(params=["embedded", *REDIS_KINDS])
def backend_kind(request) -> str:
    return request.param


@pytest.fixture
def backend_url(backend_kind, request) -> str | None:
    """The Redis URL of ``backend_kind``'s deployment, emptied for the test (None: embedded)."""
    if backend_kind == "embedded":
        return None
    server = request.getfixturevalue(REDIS_KINDS[backend_kind])
    server.flush()
    return server.url


@pytest.fixture
async def backend(backend_kind, backend_url) -> AsyncIterator[Backend]:
    b = make_backend(backend_kind, backend_url)
    yield b
    await b.close()


@contextlib.asynccontextmanager
async def serve_app(
    app, port: int | None = None, *, bounded: Config | None = None, grace_s: float | None = None
) -> AsyncIterator[str]:
    """Run an ASGI app with uvicorn inside the test's event loop; yields its base URL. With
    ``bounded``, the server is the one ``interlace serve`` runs, with that config's bounds; with
    ``grace_s``, stopping it cuts the requests still open after that long (streams)."""
    port = port or free_port()
    if bounded is None:
        config = uvicorn.Config(
            app, host="127.0.0.1", port=port, log_config=None, lifespan="on", timeout_graceful_shutdown=grace_s
        )
        server = uvicorn.Server(config)
    else:
        server = build_server(app, dataclasses.replace(bounded, host="127.0.0.1", port=port))
    task = asyncio.create_task(server.serve())
    deadline = time.monotonic() + 10
    while not server.started:
        if task.done() or time.monotonic() > deadline:
            raise RuntimeError("gateway did not start")
        await asyncio.sleep(0.01)
    await listening(app)  # bound: gossip may join (build_server's server has said so already)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 15)


def test_config(**overrides) -> Config:
    base = dict(visibility_timeout_ms=1_000, shutdown_grace_s=2.0, wait_timeout_s=10.0)
    if "node_key" not in overrides:
        base["data_dir"] = data_dir()
    base.update(overrides)
    return Config(**base)


test_config.__test__ = False  # a helper, not a test, when imported into a test module


@contextlib.asynccontextmanager
async def running_gateway(config: Config | None = None, **kw) -> AsyncIterator[tuple[str, object]]:
    """A live gateway (embedded backend unless config says Redis); yields (base URL, app)."""
    app = create_app(config or test_config(), **kw)
    async with serve_app(app) as url:
        yield url, app


@pytest.fixture
async def gateway() -> AsyncIterator[str]:
    async with running_gateway() as (url, _):
        yield url


@pytest.fixture
async def client(gateway) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=gateway, timeout=15) as c:
        yield c


def interlace_cmd(*args: str) -> list[str]:
    """The CLI as a subprocess, with this interpreter (no reliance on PATH)."""
    return [sys.executable, "-m", "gateway.cli", *args]


def stop_process(proc: subprocess.Popen, timeout: float = 15) -> None:
    """SIGTERM (a graceful stop), then SIGKILL if it does not exit in time."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def subprocess_env(**extra: str) -> dict[str, str]:
    """The environment of a CLI subprocess: this checkout first on the path, a data directory of
    its own (``--data-dir`` on the command line wins over it), and ``extra``."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["INTERLACE_DATA_DIR"] = data_dir()
    env.update(extra)
    return env


async def wait_until(predicate, timeout: float = 10.0, interval: float = 0.02):
    """Poll an async predicate until truthy (for state that has no event to await)."""
    deadline = time.monotonic() + timeout
    while True:
        result = await predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(interval)


async def sse_json(resp: httpx.Response) -> list:
    """The JSON data of every event of an open SSE response, to its end (events without data skipped)."""
    return [event.json() async for event in read_events(resp.aiter_bytes()) if event.data]
