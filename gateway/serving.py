"""The HTTP server of ``interlace serve``: uvicorn, with the bounds it lacks against slow clients.

uvicorn (httptools) closes a keep-alive connection idle between requests, but waits for a
request's head as long as a client likes: one that trickles header lines (slowloris, P14 of the
security review) holds its connection and a file descriptor indefinitely, and its
``limit_concurrency`` counts such connections too, so it would refuse the well-behaved client
instead. ``BoundedHttp`` is uvicorn's httptools protocol plus:

- a head deadline: a request's head (request line and headers) must be complete within
  ``header_timeout_s`` of the connection opening or of the request's first byte (else 408, and
  the connection is closed);
- a head size bound, ``max_header_bytes`` (431, closed): httptools has none;
- a connection cap, ``max_connections``: a connection past it closes the connection idle longest
  (waiting for its head, or between requests), so a well-behaved client is served whatever slow
  ones hold; only when every connection is busy with a request is the new one refused (503);
- keep-alive limits: a connection idle ``keepalive_timeout_s`` between requests is closed
  (uvicorn's own timer), and one that has served ``keepalive_max_requests`` is closed after that
  response;
- a bound on the rest of a body answered early (413): uvicorn reads and drops it, so that the
  client sees the answer, but only for ``body_timeout_s``; then the connection is closed (else a
  client could hold it forever, sending a body nobody reads).

The cap must stay below the open-file limit (past it accept() fails before any cap could choose
whom to close: P14 under ``ulimit -n 200``), so the server raises the soft limit towards the hard
one when it is low, and lowers the cap to what the limit leaves otherwise (``connection_cap``).

Request bodies are bounded in the app (``gateway.core.http.BodyGuard``: a read deadline and a
budget of bytes buffered at once). Together: memory for connections stays within
``max_connections`` x (a head of ``max_header_bytes`` + uvicorn's buffers, at most ~320 KiB while
a body is read, + ~10 KiB of protocol state) + the body budget (``max_buffered_body_bytes`` +
64 KiB per request); tests/test_slow_clients.py measures it.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from gateway.core.config import Config

log = logging.getLogger("interlace.serving")

FD_RESERVE = 256  # descriptors kept for what is not an inbound connection: Redis, upstreams, files


class BoundedHttp(HttpToolsProtocol):
    """One connection (see the module docstring); ``bounded_protocol`` makes the per-server class."""

    config_bounds: Config
    cap: int
    idle: OrderedDict[BoundedHttp, None]  # the server's idle connections, idle longest first

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._head_timer: asyncio.TimerHandle | None = None
        self._drop_timer: asyncio.TimerHandle | None = None
        self._head_bytes = 0
        self._served = 0
        if len(self.connections) > self.cap and not self._evict_idlest():
            self._reject(503, "Service Unavailable", "the server is at its connection limit")
            return
        self._await_head()
        self.idle[self] = None

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_head_timer()
        self._stop_drop_timer()
        self.idle.pop(self, None)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._head_timer is not None:  # a head still incomplete after this chunk
            self._head_bytes += len(data)
            if self._head_bytes > self.config_bounds.max_header_bytes:
                self._reject(431, "Request Header Fields Too Large", "the request head is too large")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._head_timer is None:  # the first byte of a request after a keep-alive pause
            self._await_head()

    def on_headers_complete(self) -> None:
        self._stop_head_timer()
        self.idle.pop(self, None)
        self._served += 1
        before = self.cycle
        super().on_headers_complete()
        if self.cycle is not before and self._served >= self.config_bounds.keepalive_max_requests:
            self.cycle.keep_alive = False  # uvicorn answers with "connection: close" and closes

    def on_message_complete(self) -> None:
        if self._drop_timer is not None:  # the rest of a body answered early is dropped: now idle
            self._stop_drop_timer()
            self._await_head()
            self.idle[self] = None
        super().on_message_complete()

    def on_response_complete(self) -> None:
        cycle = self.cycle  # the one answered, unless a pipelined request's head came meanwhile
        more_body = cycle is not None and cycle.response_complete and cycle.more_body
        super().on_response_complete()
        if more_body and not self.transport.is_closing():  # answered before its body was all read
            self._drop_timer = self.loop.call_later(self.config_bounds.body_timeout_s, self.transport.close)
        elif self.timeout_keep_alive_task is not None:  # waiting for the next request
            self.idle[self] = None

    def _await_head(self) -> None:
        self._head_bytes = 0
        self._head_timer = self.loop.call_later(self.config_bounds.header_timeout_s, self._head_timeout)

    def _stop_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _stop_drop_timer(self) -> None:
        if self._drop_timer is not None:
            self._drop_timer.cancel()
            self._drop_timer = None

    def _head_timeout(self) -> None:
        self._head_timer = None
        self._reject(408, "Request Timeout", "the request head did not arrive in time")

    def _evict_idlest(self) -> bool:
        idlest = next((c for c in self.idle if c is not self), None)
        if idlest is None:
            return False
        self.idle.pop(idlest)
        idlest._stop_head_timer()
        idlest.transport.close()
        return True

    def _reject(self, status: int, reason: str, message: str) -> None:
        """Answer ``status`` (unless a response is under way) and close the connection."""
        self._stop_head_timer()
        self.idle.pop(self, None)
        if self.transport.is_closing():
            return
        if self.cycle is None or self.cycle.response_complete:
            retry = "retry-after: 1\r\n" if status == 503 else ""
            head = (
                f"HTTP/1.1 {status} {reason}\r\ncontent-type: text/plain; charset=utf-8\r\n"
                f"content-length: {len(message)}\r\n{retry}connection: close\r\n\r\n"
            )
            self.transport.write(head.encode() + message.encode())
        self.transport.close()


def bounded_protocol(config: Config) -> type[BoundedHttp]:
    """The protocol class of one server: ``config``'s bounds and one registry of idle connections."""
    attrs = {"config_bounds": config, "cap": connection_cap(config.max_connections), "idle": OrderedDict()}
    return type("BoundedHttp", (BoundedHttp,), attrs)


def connection_cap(wanted: int) -> int:
    """The connection cap in force: ``wanted``, within what the open-file limit leaves after
    ``FD_RESERVE`` (the soft limit is raised towards the hard one first when it is lower)."""
    try:
        import resource
    except ImportError:  # not on POSIX: no limit to consult
        return wanted
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = wanted + FD_RESERVE
    if soft != resource.RLIM_INFINITY and soft < needed:
        raised = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (raised, hard))
            soft = raised
        except (ValueError, OSError):
            pass
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return wanted
    cap = max(16, soft - FD_RESERVE)
    log.warning(f"max_connections lowered to {cap}: the open-file limit is {soft}", extra={"wanted": wanted})
    return cap


async def listening(app) -> None:
    """Tell ``app`` its listener is bound: its gossip may join now (``gateway.cluster``). A
    server that runs the app other than through ``build_server`` calls this once started."""
    cluster = getattr(getattr(app, "state", None), "cluster", None)
    if cluster is not None:
        cluster.join()


class _Server(uvicorn.Server):
    """uvicorn that calls ``listening`` once its sockets are bound (uvicorn runs the lifespan
    startup before it binds, and exits when the bind fails)."""

    def __init__(self, app, config: uvicorn.Config) -> None:
        super().__init__(config)
        self._app = app

    async def startup(self, sockets=None) -> None:
        await super().startup(sockets)
        if self.started:
            await listening(self._app)


def build_server(app, config: Config) -> uvicorn.Server:
    """uvicorn serving ``app`` as ``interlace serve`` does (the CLI, benchmarks and tests use it)."""
    return _Server(
        app,
        uvicorn.Config(
            app,
            host=config.host,
            port=config.port,
            http=bounded_protocol(config),
            log_config=None,
            access_log=False,
            lifespan="on",
            timeout_graceful_shutdown=int(config.shutdown_grace_s),
            timeout_keep_alive=config.keepalive_timeout_s,  # type: ignore[arg-type]
            # uvicorn believes X-Forwarded-For from 127.0.0.1 by default: only named proxies here
            proxy_headers=config.forwarded_allow_ips is not None,
            forwarded_allow_ips=config.forwarded_allow_ips or "",
        ),
    )
