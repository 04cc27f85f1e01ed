"""Real Redis deployments on loopback for the tests and benchmarks: a Redis Cluster (masters, and
optionally a replica each) and a Sentinel-watched primary with one replica, all from Debian's
``redis-server`` (``--cluster-enabled`` / ``--sentinel``). Every wait is bounded."""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from tests.conftest import free_port

SERVICE = "interlace"


def cli(port: int, *args: str, timeout: float = 5) -> str:
    """One command through ``redis-cli`` (its reply as text; '' when the server does not answer)."""
    try:
        done = subprocess.run(
            ["redis-cli", "-h", "127.0.0.1", "-p", str(port), *args], capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        return ""
    return done.stdout.strip()


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.05)


class _Servers:
    """``extra``: more redis-server arguments for every server (the benchmarks ask for AOF)."""

    def __init__(self, extra: tuple[str, ...] = ()) -> None:
        self.extra = extra
        self.binary = shutil.which("redis-server")
        if self.binary is None or shutil.which("redis-cli") is None:
            raise RuntimeError("redis-server and redis-cli are needed: apt-get install -y redis-server")
        self.dir = Path(tempfile.mkdtemp(prefix="interlace-redis-topology-"))
        self.procs: dict[int, subprocess.Popen] = {}
        self._args: dict[int, tuple[str, ...]] = {}

    def _spawn(self, port: int, *args: str) -> None:
        workdir = self.dir / str(port)
        workdir.mkdir(exist_ok=True)
        self._args[port] = args
        base = ["--port", str(port), "--bind", "127.0.0.1", "--dir", str(workdir), "--save", "", "--appendonly", "no"]
        self.procs[port] = subprocess.Popen(
            [self.binary, *base, *args, *self.extra], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        wait_for(lambda: cli(port, "PING", timeout=1) == "PONG", 10, f"redis-server on {port}")

    def kill(self, port: int) -> None:
        """SIGKILL one server (a crash: nothing flushed, no goodbye to its peers)."""
        proc = self.procs.pop(port)
        proc.send_signal(signal.SIGKILL)
        proc.wait(5)

    def restart(self, port: int) -> None:
        """Start a killed server again on its port, with its directory (a cluster node keeps its
        node id and rejoins; a former master comes back as its successor's replica)."""
        self._spawn(port, *self._args[port])

    def stop(self) -> None:
        for port in list(self.procs):
            self.kill(port)
        shutil.rmtree(self.dir, ignore_errors=True)


class RedisCluster(_Servers):
    """``masters`` masters (and ``replicas`` replicas each) on free loopback ports."""

    def __init__(self, masters: int = 3, replicas: int = 0, extra: tuple[str, ...] = ()) -> None:
        super().__init__(extra)
        self.ports = [free_port() for _ in range(masters * (1 + replicas))]
        self.replicas = replicas
        self.url = "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in self.ports[:masters])

    def start(self) -> None:
        for port in self.ports:
            self._spawn(
                port,
                "--cluster-enabled", "yes",
                "--cluster-port", str(free_port()),
                "--cluster-config-file", f"nodes-{port}.conf",
                "--cluster-node-timeout", "1000",
                "--cluster-replica-validity-factor", "0",  # a replica may always take over
            )  # fmt: skip
        nodes = [f"127.0.0.1:{p}" for p in self.ports]
        created = subprocess.run(
            ["redis-cli", "--cluster", "create", *nodes, "--cluster-replicas", str(self.replicas), "--cluster-yes"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        if created.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed: {created.stdout[-500:]} {created.stderr[-500:]}")
        wait_for(self.healthy, 30, "the cluster to be ok on every node")

    def healthy(self) -> bool:
        return all("cluster_state:ok" in cli(p, "CLUSTER", "INFO", timeout=1) for p in self.procs)

    def masters(self) -> list[int]:
        """Ports of the nodes that are masters now."""
        return [p for p in self.procs if "role:master" in cli(p, "INFO", "replication", timeout=1)]

    def flush(self) -> None:
        for port in self.masters():
            cli(port, "FLUSHALL")


class RedisSentinel(_Servers):
    """A primary, one replica and one Sentinel watching them (quorum 1)."""

    def __init__(self) -> None:
        super().__init__()
        self.primary, self.replica, self.sentinel = free_port(), free_port(), free_port()
        self.url = f"redis+sentinel://127.0.0.1:{self.sentinel}/{SERVICE}"

    def start(self) -> None:
        self._spawn(self.primary)
        self._spawn(self.replica, "--replicaof", "127.0.0.1", str(self.primary))
        wait_for(lambda: "connected_slaves:1" in cli(self.primary, "INFO", "replication"), 20, "the replica to sync")
        conf = self.dir / "sentinel.conf"
        conf.write_text(
            f"sentinel monitor {SERVICE} 127.0.0.1 {self.primary} 1\n"
            f"sentinel down-after-milliseconds {SERVICE} 1000\n"
            f"sentinel failover-timeout {SERVICE} 10000\n"
        )
        # The Sentinel rewrites its file; redis-server wants the file first on its command line.
        self.procs[self.sentinel] = subprocess.Popen(
            [self.binary, str(conf), "--sentinel", "--port", str(self.sentinel), "--bind", "127.0.0.1"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for(lambda: cli(self.sentinel, "PING", timeout=1) == "PONG", 10, "the sentinel")
        wait_for(self._knows_replica, 20, "the sentinel to see the replica")

    def _knows_replica(self) -> bool:
        return f"{self.replica}" in cli(self.sentinel, "SENTINEL", "REPLICAS", SERVICE)

    def current_primary(self) -> int:
        reply = cli(self.sentinel, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", SERVICE).split()
        return int(reply[1])

    def failover(self) -> int:
        """Switch primaries through the Sentinel; returns the new primary's port once it serves
        writes and the old one follows it."""
        before = self.current_primary()
        after = self.replica if before == self.primary else self.primary
        with contextlib.suppress(Exception):
            cli(self.sentinel, "SENTINEL", "FAILOVER", SERVICE)
        wait_for(lambda: self.current_primary() == after, 30, "the sentinel to name the new primary")
        wait_for(lambda: "role:master" in cli(after, "INFO", "replication"), 30, "the new primary")
        return after

    def flush(self) -> None:
        cli(self.current_primary(), "FLUSHALL")
        # The replica must have the flush too before a test relies on an empty store after a switch.
        cli(self.current_primary(), "WAIT", "1", "2000")
