"""Connecting to Redis in its three deployments, and what each Redis error means to a caller.

URLs:
  redis://host:port/db (rediss:// for TLS)          one Redis
  redis+cluster://host:port[,host:port...]          Redis Cluster (or Valkey cluster): any nodes
                                                    of it, the client finds the rest
  redis+sentinel://host:port[,host:port...]/name[/db]   the primary of service ``name`` as the
                                                    Sentinels name it, followed across failovers
Any of them may carry ``?queue_shards=N``: each agent's queue spans N streams (on a cluster, N
slots: a hot agent's queue on several nodes; the bound on a queue is per stream), and
``?replicas=N``: each write that accepts a task, records an event or acks
an entry is acknowledged only once N replicas have it (Redis ``WAIT``), so that a failover
loses no acknowledged write; when fewer replicas confirm within ``replica_timeout_ms`` the write
is reported unavailable (503), never acknowledged. Default 0: Redis's own asynchronous
replication.

Errors: ``unavailable`` covers every class that a retry can cure (lost connections, timeouts,
a cluster reshuffling or failing over, a demoted primary, a replica that did not confirm);
``BackendMisconfigured`` covers what only the operator can (a cluster URL pointed at a single
Redis or the reverse, wrong credentials), raised by ``check`` at start-up.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, parse_qsl, unquote, urlencode, urlsplit, urlunsplit

from gateway.core.backends.base import BackendMisconfigured, BackendUnavailable

try:
    import redis.asyncio as aioredis
    from redis import exceptions as rexc
    from redis.asyncio.cluster import ClusterNode, RedisCluster
    from redis.asyncio.retry import Retry
    from redis.asyncio.sentinel import Sentinel
    from redis.backoff import ExponentialBackoff
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError("the Redis backend needs the 'redis' extra: pip install 'interlace[redis]'") from exc

# Transient by class: connections, timeouts, loading, a cluster down or failing over (CLUSTERDOWN,
# MASTERDOWN, TRYAGAIN), redirections left over once the client's own retries are spent, a write
# that reached a demoted primary, memory pressure, a slot no node serves yet, a script that a
# just-promoted replica has not loaded (the client loads it on its first miss; a second miss is
# a topology change under the call).
_TRANSIENT = (
    rexc.ConnectionError,
    rexc.TimeoutError,
    rexc.ClusterError,
    rexc.AskError,
    rexc.TryAgainError,
    rexc.ReadOnlyError,
    rexc.NoScriptError,
    rexc.OutOfMemoryError,
    rexc.RedisClusterException,
    OSError,
)
# Transient replies that redis-py raises as a plain ResponseError: a blocked read that a role
# change ended, a primary without its replicas, a node still loading or that lost its primary.
_TRANSIENT_REPLIES = ("UNBLOCKED", "NOREPLICAS", "LOADING", "MASTERDOWN", "CLUSTERDOWN", "TRYAGAIN", "READONLY")


def transient(exc: BaseException) -> bool:
    if isinstance(exc, _TRANSIENT):
        return True
    if not isinstance(exc, rexc.ResponseError):
        return False
    reply = str(exc)
    if "of pipeline caused error: " in reply:  # redis-py's note on an error inside a pipeline
        reply = reply.split("of pipeline caused error: ", 1)[1].lstrip("('\"")
    # WAIT sent to a primary demoted under us (Sentinel): the next command reconnects.
    return reply.split(" ", 1)[0] in _TRANSIENT_REPLIES or "used with replica instances" in reply


def translate(fn):
    """Map every transient Redis failure to BackendUnavailable (503 + Retry-After upstream)."""

    @functools.wraps(fn)
    async def wrapper(*args, **kwargs):
        try:
            return await fn(*args, **kwargs)
        except BackendUnavailable:
            raise
        except Exception as exc:
            if transient(exc):
                raise BackendUnavailable(f"redis unavailable: {exc.__class__.__name__}") from exc
            raise

    return wrapper


_OPTIONS = ("replicas", "replica_timeout_ms", "queue_shards")  # Interlace's own URL options


@dataclass(frozen=True)
class Target:
    mode: str  # "single" | "cluster" | "sentinel"
    url: str
    replicas: int = 0
    replica_timeout_ms: int = 1_000
    queue_shards: int = 1


def parse(url: str) -> Target:
    scheme = url.split("://", 1)[0].lower()
    query = parse_qs(urlsplit(url).query)
    try:
        options = {name: int(query[name][0]) for name in _OPTIONS if name in query}
    except ValueError as exc:
        raise BackendMisconfigured(f"a Redis URL option is not a number: {exc}") from None
    modes = {"redis": "single", "rediss": "single", "unix": "single", "redis+cluster": "cluster"}
    modes |= {"rediss+cluster": "cluster", "redis+sentinel": "sentinel", "rediss+sentinel": "sentinel"}
    if scheme in modes:
        return Target(modes[scheme], url, **options)
    raise BackendMisconfigured(f"unknown Redis URL scheme {scheme!r}: redis://, redis+cluster:// or redis+sentinel://")


def _hosts(netloc: str, default_port: int) -> tuple[list[tuple[str, int]], str | None, str | None]:
    auth, _, hosts = netloc.rpartition("@")
    user, _, password = auth.partition(":") if auth else ("", "", "")
    out = []
    for hostport in hosts.split(","):
        bare = ":" not in hostport or hostport.endswith("]")  # no port ("[::1]" is a whole host)
        host, _, port = (hostport, "", "") if bare else hostport.rpartition(":")
        out.append((host.strip("[]"), int(port or default_port)))
    return out, unquote(user) or None, unquote(password) or None


# Every client: connect fast, keep sockets alive, and retry a command once or twice on a dropped
# connection (after a restart or failover the pool still holds sockets to the old process). Our
# writes are idempotent under a retry (submit carries a nonce, events are compare-and-set, acks
# and locks are idempotent, a doubled queue entry is a redelivery).
_COMMON: dict[str, Any] = dict(decode_responses=True, socket_connect_timeout=2, socket_keepalive=True)


def _retry() -> dict[str, Any]:
    return dict(
        retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), 2),
        retry_on_error=[rexc.ConnectionError, rexc.TimeoutError],
    )


class _Cluster(RedisCluster):
    """A cluster client that finds the stream of XREAD and XREADGROUP itself: redis-py asks a
    server (COMMAND GETKEYS, twice) for the keys of every command whose keys move, which would
    be two more round trips on each receive and each read of events."""

    async def _determine_slot(self, command: str, *args: Any) -> int:
        if command.upper() in ("XREAD", "XREADGROUP"):
            words = [a.decode().upper() if isinstance(a, bytes) else str(a).upper() for a in args]
            return self.keyslot(args[words.index("STREAMS") + 1])  # one stream a call here
        return await super()._determine_slot(command, *args)


def connect(target: Target) -> Any:
    """A client for ``target``: ``redis.asyncio.Redis`` (single, Sentinel) or ``RedisCluster``."""
    parts = urlsplit(target.url)
    if target.mode == "single":
        rest = [(k, v) for k, v in parse_qsl(parts.query) if k not in _OPTIONS]  # redis-py's own options stay
        url = urlunsplit(parts._replace(query=urlencode(rest)))
        return aioredis.Redis.from_url(url, health_check_interval=15, **_COMMON, **_retry())
    hosts, user, password = _hosts(parts.netloc, 6379 if target.mode == "cluster" else 26379)
    tls = parts.scheme.lower().startswith("rediss")
    if target.mode == "cluster":
        return _Cluster(
            startup_nodes=[ClusterNode(h, p) for h, p in hosts],
            username=user,
            password=password,
            ssl=tls,
            socket_timeout=None,  # blocking reads wait longer than any fixed socket timeout
            **_COMMON,
            **_retry(),
        )
    path = [p for p in parts.path.split("/") if p]
    if not path:
        raise BackendMisconfigured("a redis+sentinel:// URL names the service: redis+sentinel://host:port/NAME")
    sentinel = Sentinel(hosts, sentinel_kwargs={"socket_connect_timeout": 2}, username=user, password=password, ssl=tls)
    db = int(path[1]) if len(path) > 1 else 0
    return sentinel.master_for(path[0], db=db, **_COMMON, **_retry())


async def check(r: Any, target: Target) -> None:
    """Raise BackendMisconfigured when the URL's mode is not what the server is; transient
    failures (nothing listening yet) pass: the caller's own retries cover them."""
    try:
        if target.mode == "cluster":
            await r.initialize()
            return
        info = await r.info("cluster")
    except rexc.RedisClusterException as exc:
        if "cluster mode is not enabled" in str(exc).lower() or "cluster_enabled" in str(exc).lower():
            raise BackendMisconfigured(
                f"{_safe(target.url)} is not a Redis Cluster node (cluster mode is disabled): use redis://"
            ) from exc
        return
    except (rexc.AuthenticationError, rexc.AuthorizationError, rexc.NoPermissionError) as exc:
        raise BackendMisconfigured(f"Redis refused the credentials of {_safe(target.url)}: {exc}") from exc
    except rexc.ResponseError as exc:
        if "cluster support disabled" in str(exc).lower():
            raise BackendMisconfigured(
                f"{_safe(target.url)} is not a Redis Cluster node (cluster mode is disabled): use redis://"
            ) from exc
        raise
    except Exception as exc:
        if transient(exc):
            return
        raise
    if int(info.get("cluster_enabled", 0)):
        raise BackendMisconfigured(
            f"{_safe(target.url)} is a Redis Cluster node: use redis+cluster://host:port to reach the cluster"
        )


def _safe(url: str) -> str:
    """The URL without its credentials (never logged)."""
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return f"{parts.scheme}://{host}{parts.path}"
