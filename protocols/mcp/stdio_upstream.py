"""An upstream MCP server that speaks stdio: a supervised child process behind the same
``UpstreamClient`` protocol logic as an HTTP upstream (``protocols.mcp.client``).

``StdioUpstream`` is the operator's entry (``{name, command: [argv...], env, env_passthrough,
cwd, restart}``, see ``protocols.mcp.upstreams_file``); ``StdioUpstreamClient`` replaces the
HTTP transport beneath ``UpstreamClient``: JSON-RPC messages are lines on the child's stdin and
stdout (MCP stdio transport), the rest (requests, timeouts and cancellation, the catalog, what a
server sends to a client) is the shared logic.

One child serves every caller (a process is not a session): concurrent requests are multiplexed
by request id. stdio carries no per-request stream, so what the server sends on its own is
attributed like this:

- a response: to the request with its id;
- ``notifications/progress``: to the request whose progress token it names (the gateway gives
  each relayed request a token of its own);
- a request (sampling, elicitation, roots) or a log message: to the one relayed request in flight
  that can take it; with none (or several: the wire cannot say which) a request is answered as an
  HTTP upstream's unrelated request is, and a log message is the upstream's, shown to the callers
  it offers something (``on_notification``);
- ``notifications/cancelled`` of a request it sent: to whoever received that request;
- the rest (list changes, resource updates): ``on_notification``, as an HTTP upstream's GET stream.

Supervision (``gateway.core.children`` starts and stops the process): the child starts with
exactly the environment named, in its own process group, ended with the gateway even on SIGKILL.
It is (re)started with backoff: ``backoff_s`` doubling to ``max_backoff_s`` after each run shorter
than ``stable_s``; ``crash_loop_restarts`` restarts within ``crash_loop_window_s`` is a crash loop
(logged as an error, restarts every ``max_backoff_s``). ``restart``: ``always`` (default),
``on-failure`` (not after a clean exit) or ``never``. A server that stops answering (no pong to a
ping every ``ping_interval_s`` within ``ping_timeout_s``, no answer to ``initialize``), writes
something that is not JSON-RPC to stdout, or a line over 16 MiB, is killed with its group and
restarted. Meanwhile its calls fail at once (``UpstreamUnavailable``: ``agent unreachable``) and
every other upstream keeps working. Its stderr goes to the gateway's log under its name, bounded
(``gateway.core.children.StderrLog``). ``process_status()`` says where it stands (state, process
group, restarts, last exit, stderr tail), for consoles (``UpstreamSet.status``).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from gateway.core import children
from gateway.core.aio import wait_cancelled
from protocols.mcp import wire
from protocols.mcp.client import MessageHandler, UpstreamClient, UpstreamTimeout, UpstreamUnavailable, result_of
from protocols.mcp.wire import MCPError

log = logging.getLogger("interlace.mcp.upstream")

RESTART_POLICIES = ("always", "on-failure", "never")


@dataclass(frozen=True)
class RestartPolicy:
    policy: str = "always"
    backoff_s: float = 0.5
    max_backoff_s: float = 60.0
    stable_s: float = 30.0
    crash_loop_restarts: int = 5
    crash_loop_window_s: float = 60.0
    ping_interval_s: float = 15.0
    ping_timeout_s: float = 10.0
    stop_grace_s: float = 5.0

    def __post_init__(self) -> None:
        if self.policy not in RESTART_POLICIES:
            raise ValueError(f"restart must be one of {', '.join(RESTART_POLICIES)}, not {self.policy!r}")


@dataclass(frozen=True)
class StdioUpstream:
    """One stdio MCP server: its name, its command, the environment it gets (``env`` plus the
    gateway's variables named in ``env_passthrough``, nothing else), its working directory."""

    name: str
    command: tuple[str, ...]
    env: tuple[tuple[str, str], ...] = ()
    env_passthrough: tuple[str, ...] = ()
    cwd: str | None = None
    restart: RestartPolicy = field(default_factory=RestartPolicy)

    url = ""  # not dialled: nothing for the egress policy to allow
    headers: tuple[tuple[str, str], ...] = ()
    era = "legacy"  # the handshake over stdio (no server/discover probe)


class StdioUpstreamClient(UpstreamClient):
    """An ``UpstreamClient`` whose transport is a supervised child process (see the module docstring)."""

    def __init__(
        self,
        upstream: StdioUpstream,
        *,
        on_notification: Callable[[UpstreamClient, dict[str, Any]], Awaitable[None]],
        connect_timeout_s: float = 10.0,
    ) -> None:
        super().__init__(upstream, None, on_notification=on_notification, connect_timeout_s=connect_timeout_s)  # type: ignore[arg-type]
        self.spec = upstream
        self.policy = upstream.restart
        self.state = "starting"  # running | exited | backoff | crash-loop | stopped (see _set_state)
        self._state_changed = asyncio.Event()
        self.pgid: int | None = None  # the child's process group
        self.restarts = 0
        self.last_exit: str | None = None
        self.started_at: float | None = None
        self.next_start_at: float | None = None
        self.stderr = children.StderrLog(upstream.name, log)
        self._proc: asyncio.subprocess.Process | None = None
        self._supervisor: asyncio.Task | None = None
        self._write_lock = asyncio.Lock()
        self._kill_reason: str | None = None
        self._failures = 0  # short runs in a row
        self._crash_looping = False
        self._recent: collections.deque[float] = collections.deque()  # restart times within the crash-loop window
        # request id -> (its response, who takes what the server sends for it)
        self._pending: dict[Any, tuple[asyncio.Future, MessageHandler | None]] = {}
        self._progress: dict[str, MessageHandler] = {}  # progress token (JSON) -> its request's handler
        self._asked: dict[str, MessageHandler] = {}  # server request id (JSON) -> the handler it went to

    # ---- the process --------------------------------------------------------------------------

    def _start_supervisor(self) -> None:
        if self._supervisor is None and not self._closed:
            self._supervisor = asyncio.create_task(self._supervise(), name=f"mcp-stdio-{self.name}")

    async def _supervise(self) -> None:
        spec, policy = self.spec, self.policy
        env = children.child_environment(dict(spec.env), spec.env_passthrough)
        delay = 0.0
        while not self._closed:
            if delay:
                self.next_start_at = time.monotonic() + delay
                await asyncio.sleep(delay)
                self.next_start_at = None
            self.started_at, self._kill_reason = None, None
            self._set_state("starting")
            try:
                proc = await self._spawn(env)
            except OSError as exc:  # e.g. a cwd that does not exist
                outcome: int | str = f"could not start: {exc.strerror or exc}"
            else:
                outcome = await self._run(proc)
            if self._closed:
                break
            self.last_exit = f"exited with code {outcome}" if isinstance(outcome, int) else outcome
            self._lost(self.last_exit)
            if policy.policy == "never" or (policy.policy == "on-failure" and outcome == 0):
                self._set_state("stopped")
                log.warning("stdio upstream stopped", extra={"upstream": self.name, "reason": self.last_exit})
                return
            ran = time.monotonic() - self.started_at if self.started_at is not None else 0.0
            delay = self._backoff(short=ran < policy.stable_s)
            log.warning(
                "stdio upstream restarting",
                extra={"upstream": self.name, "reason": self.last_exit, "in_s": round(delay, 2), "state": self.state},
            )

    async def _spawn(self, env: dict[str, str]) -> asyncio.subprocess.Process:
        """Start the process; one started while the gateway was closing it is stopped, not lost."""
        spec, grace_s = self.spec, self.policy.stop_grace_s
        spawning = asyncio.ensure_future(children.spawn(spec.command, env, spec.cwd, grace_s=grace_s))
        try:
            return await asyncio.shield(spawning)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await children.stop(await spawning, grace_s)
            raise

    def _set_state(self, state: str) -> None:
        self.state = state
        self._state_changed.set()  # wakes whoever waits for this change ...
        self._state_changed = asyncio.Event()  # ... and the next waits for the next

    def _backoff(self, *, short: bool) -> float:
        """The wait before the next start; sets ``state`` (backoff or crash-loop)."""
        policy, now = self.policy, time.monotonic()
        self.restarts += 1
        self._failures = self._failures + 1 if short else 0
        self._recent.append(now)
        while self._recent and now - self._recent[0] > policy.crash_loop_window_s:
            self._recent.popleft()
        if len(self._recent) >= policy.crash_loop_restarts:
            if not self._crash_looping:  # said once, not at every restart of the loop
                log.error(
                    "stdio upstream is crash-looping",
                    extra={"upstream": self.name, "restarts": len(self._recent), "reason": self.last_exit},
                )
            self._crash_looping = True
            self._set_state("crash-loop")
            return policy.max_backoff_s
        self._crash_looping = False
        self._set_state("backoff")
        return 0.0 if not self._failures else min(policy.backoff_s * 2 ** (self._failures - 1), policy.max_backoff_s)

    async def _run(self, proc: asyncio.subprocess.Process) -> int | str:
        """Serve through ``proc`` until it exits; its exit code, or why it was killed."""
        self._proc, self.pgid, self.started_at = proc, proc.pid, time.monotonic()
        tasks = [
            asyncio.create_task(self._read(proc), name=f"mcp-stdio-out-{self.name}"),
            asyncio.create_task(self.stderr.drain(proc.stderr), name=f"mcp-stdio-err-{self.name}"),
        ]
        self._set_state("running")
        health = asyncio.create_task(self._health(), name=f"mcp-stdio-health-{self.name}")
        try:
            code = await proc.wait()
        finally:
            self._set_state("exited")
            health.cancel()
            children.kill_group(proc)  # whatever it started goes with it
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 2.0)
            for task in tasks:
                task.cancel()
            await asyncio.gather(health, *tasks, return_exceptions=True)
            self._proc = None
            self._fail_pending(self._kill_reason or f"exited with code {proc.returncode}")
        return self._kill_reason or code

    def _kill(self, reason: str) -> None:
        """End the current process now (it broke the protocol or hung); the supervisor restarts it."""
        proc = self._proc
        if proc is None or proc.returncode is not None or self._kill_reason:
            return
        self._kill_reason = reason
        log.warning("stdio upstream killed", extra={"upstream": self.name, "reason": reason})
        children.kill_group(proc)

    async def _health(self) -> None:
        """Handshake at once (a restarted server serves again without waiting for a call), then
        ping: a server that does not answer is killed."""
        try:
            await self.ensure()
        except UpstreamUnavailable as exc:
            self._kill(f"no session: {exc.detail}")
            return
        while True:
            await asyncio.sleep(self.policy.ping_interval_s)
            try:
                await self.request("ping", {}, timeout=self.policy.ping_timeout_s)
            except UpstreamTimeout:
                self._kill(f"hung: no answer to ping within {self.policy.ping_timeout_s:g} s")
                return
            except MCPError:
                pass  # an error is an answer
            except UpstreamUnavailable:
                return  # it is going away: the supervisor sees to it

    def _fail_pending(self, reason: str) -> None:
        for fut, _ in self._pending.values():
            if not fut.done():
                fut.set_exception(UpstreamUnavailable(self.name, reason))

    async def close(self) -> None:
        self._closed = True  # first: the supervisor must not restart what is being stopped
        proc = self._proc
        if proc is not None:
            await children.stop(proc, self.policy.stop_grace_s)
        if self._supervisor is not None:
            await wait_cancelled(self._supervisor)
        await super().close()
        self._set_state("stopped")

    def process_status(self) -> dict[str, Any]:
        """Where the process stands, for consoles and status pages."""
        now = time.monotonic()
        running = self._proc is not None
        return {
            "transport": "stdio",
            "command": list(self.spec.command),
            "state": self.state,
            "pgid": self.pgid if running else None,  # the keeper's pid (gateway.core.children)
            "restarts": self.restarts,
            "last_exit": self.last_exit,
            "uptime_s": round(now - self.started_at, 3) if running and self.started_at else None,
            "next_start_in_s": round(max(0.0, self.next_start_at - now), 3) if self.next_start_at else None,
            "stderr_tail": list(self.stderr.tail),
            "stderr_lines_not_logged": self.stderr.dropped_total,
        }

    # ---- the transport beneath UpstreamClient -------------------------------------------------

    async def _handshake(self) -> None:
        self._start_supervisor()
        while self.state != "running":  # starting: bounded by ensure()'s connect timeout
            if self.state != "starting":
                raise UpstreamUnavailable(self.name, f"{self.state} ({self.last_exit})")
            await self._state_changed.wait()
        rid, body = self._initialize_request()
        await self._initialized(await self._reply(body, rid, None), None)

    async def _listen(self) -> None:
        """No GET stream: what it would carry arrives on stdout (``_route``)."""

    async def _post_message(self, msg: dict[str, Any]) -> None:
        proc = self._proc
        if proc is None or proc.stdin is None or self.state != "running":
            raise UpstreamUnavailable(self.name, f"not running ({self.state})")
        line = json.dumps(msg, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"
        try:
            async with self._write_lock:
                proc.stdin.write(line)
                await proc.stdin.drain()
        except (ConnectionError, RuntimeError) as exc:
            raise UpstreamUnavailable(self.name, f"its stdin is closed ({exc.__class__.__name__})") from None

    async def _exchange(self, body: dict[str, Any], rid: int, on_message: MessageHandler | None) -> dict[str, Any]:
        return result_of(await self._reply(body, rid, on_message))

    async def _reply(self, body: dict[str, Any], rid: int, on_message: MessageHandler | None) -> dict[str, Any]:
        """Send the request ``body``; its response (what the server sends for it goes to ``on_message``)."""
        fut: asyncio.Future = asyncio.get_running_loop().create_future()
        self._pending[rid] = (fut, on_message)
        meta = (body.get("params") or {}).get("_meta")
        token = json.dumps(meta.get("progressToken")) if isinstance(meta, dict) and "progressToken" in meta else None
        if token is not None and on_message is not None:
            self._progress[token] = on_message
        try:
            await self._post_message(body)
            return await fut
        finally:
            self._pending.pop(rid, None)
            if token is not None:
                self._progress.pop(token, None)
            for key in [k for k, h in self._asked.items() if h is on_message]:
                del self._asked[key]

    async def _read(self, proc: asyncio.subprocess.Process) -> None:
        """The child's stdout: one JSON-RPC message a line; anything else ends the process."""
        assert proc.stdout is not None
        while True:
            try:
                line = await proc.stdout.readline()
            except ValueError:  # asyncio.LimitOverrunError, re-raised by readline as ValueError
                self._kill("wrote a line on stdout longer than 16 MiB")
                return
            if not line:
                return
            if not line.strip():
                continue
            try:
                msg = json.loads(line)
            except ValueError:
                self._kill(f"wrote something that is not JSON-RPC on stdout: {line[:200]!r}")
                return
            for one in msg if isinstance(msg, list) else [msg]:
                if not isinstance(one, dict):
                    self._kill(f"wrote something that is not JSON-RPC on stdout: {line[:200]!r}")
                    return
                try:
                    await self._route(one)
                except Exception:  # a relay's bug must not stop the reader every caller depends on
                    log.exception("stdio upstream message not relayed", extra={"upstream": self.name})

    def _takers(self) -> list[MessageHandler]:
        """The handlers of the relayed requests in flight (the gateway's own requests have none)."""
        return [handler for _, handler in self._pending.values() if handler is not None]

    async def _route(self, msg: dict[str, Any]) -> None:
        method = msg.get("method")
        if not isinstance(method, str):  # a response
            hit = self._pending.get(msg.get("id"))
            if hit is not None and not hit[0].done():
                hit[0].set_result(msg)
            return
        params = msg.get("params") if isinstance(msg.get("params"), dict) else {}
        takers = self._takers()
        if "id" in msg:  # a request of the server's
            if method != "ping" and len(takers) == 1:
                self._asked[json.dumps(msg["id"])] = takers[0]
                await self._dispatch(msg, takers[0])
            elif len(takers) > 1 and method != "ping":
                why = f"{method}: {len(takers)} calls are in flight and stdio cannot tell which one asks"
                await self._post_quiet(wire.error(msg["id"], MCPError(wire.INVALID_REQUEST, why)))
            else:
                await self._on_get_message(msg)
        elif method == "notifications/progress":
            handler = self._progress.get(json.dumps(params.get("progressToken")))
            if handler is not None:
                await handler(msg)
        elif method == "notifications/cancelled":
            handler = self._asked.pop(json.dumps(params.get("requestId")), None)
            if handler is not None:
                await handler(msg)
        elif method == "notifications/message" and len(takers) == 1:
            await takers[0](msg)
        else:
            await self.on_notification(self, msg)
