"""The upstream file (``--mcp-upstreams FILE``, ``INTERLACE_MCP_UPSTREAMS_FILE``): the operator's
upstream MCP servers, HTTP or stdio, reloaded when the file changes.

YAML: a list of entries, or ``{upstreams: [...]}``. Each entry is one of

  {name, url, headers: {NAME: value}}                           an HTTP upstream
  {name, command: [argv...], env: {NAME: value},                a stdio upstream: a child process
   env_passthrough: [NAME...], cwd: DIR, restart: POLICY}       (protocols.mcp.stdio_upstream)

A stdio server gets exactly ``env`` plus the gateway's variables named in ``env_passthrough``
(secrets stay in the gateway's environment and are named, not copied, if you like); nothing else,
so a server that needs PATH or HOME names them. ``restart`` is ``always`` (default),
``on-failure`` or ``never``, or a mapping of ``RestartPolicy`` fields (``policy``, ``backoff_s``,
``max_backoff_s``, ``stable_s``, ``crash_loop_restarts``, ``crash_loop_window_s``,
``ping_interval_s``, ``ping_timeout_s``, ``stop_grace_s``).

``load_upstreams(path)`` reads the file (a ValueError names the file, the entry and the key);
``entry(data)`` reads one entry. ``UpstreamsFile`` holds the current list and calls its
listener after each change that parses (a broken file keeps the last good list and is logged),
polled like the policy file (``gateway.core.watched_file``). A changed entry restarts its
server; a removed one is stopped with its process group. The egress policy allows the hosts of
the HTTP entries present at start; one added later is dialled under the gateway's egress policy
as it stands (``--egress-allow`` names what else may be reached).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import yaml

from gateway.core.aio import wait_cancelled
from gateway.core.settings import yaml_problem
from gateway.core.watched_file import file_version, watch
from protocols.mcp.client import Upstream
from protocols.mcp.stdio_upstream import RestartPolicy, StdioUpstream

log = logging.getLogger("interlace.mcp.upstream")

HTTP_KEYS = {"name", "url", "headers"}
STDIO_KEYS = {"name", "command", "env", "env_passthrough", "cwd", "restart"}
RESTART_KEYS = {f.name for f in dataclasses.fields(RestartPolicy)}


def _strings(value: Any, what: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(x, str) and x for x in value):
        raise ValueError(f"{what} must be a list of non-empty strings")
    return tuple(value)


def _mapping(value: Any, what: str) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, dict):
        raise ValueError(f"{what} must be a mapping of names to values")
    out = []
    for key, val in value.items():
        if not isinstance(key, str) or not key or isinstance(val, (dict, list)) or val is None:
            raise ValueError(f"{what}: {key!r} must be a name with a string value")
        out.append((key, str(val).lower() if isinstance(val, bool) else str(val)))
    return tuple(out)


def _restart(value: Any) -> RestartPolicy:
    if value is None:
        return RestartPolicy()
    if isinstance(value, str):
        return RestartPolicy(policy=value)
    if not isinstance(value, dict):
        raise ValueError("restart must be a policy name or a mapping")
    unknown = set(value) - RESTART_KEYS
    if unknown:
        raise ValueError(f"restart: unknown keys {sorted(unknown)}")
    for key, val in value.items():
        if key != "policy" and (not isinstance(val, (int, float)) or isinstance(val, bool) or val < 0):
            raise ValueError(f"restart.{key} must be a number >= 0")
    return RestartPolicy(**value)


def entry(data: Any) -> Upstream | StdioUpstream:
    """One upstream entry (see the module docstring); a ValueError says what is wrong."""
    if not isinstance(data, dict):
        raise ValueError("an entry must be a mapping")
    name = data.get("name")
    if not isinstance(name, str) or not name.strip():
        raise ValueError("name is required")
    if ("url" in data) == ("command" in data):
        raise ValueError(f"{name}: give either url (HTTP) or command (stdio)")
    allowed = HTTP_KEYS if "url" in data else STDIO_KEYS
    unknown = set(data) - allowed
    if unknown:
        raise ValueError(f"{name}: unknown keys {sorted(unknown)}")
    if "url" in data:
        url = data["url"]
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise ValueError(f"{name}: url must be an http(s) URL")
        return Upstream(name, url, _mapping(data.get("headers") or {}, f"{name}: headers"))
    command = _strings(data["command"], f"{name}: command")
    if not command:
        raise ValueError(f"{name}: command must not be empty")
    cwd = data.get("cwd")
    if cwd is not None and (not isinstance(cwd, str) or not cwd):
        raise ValueError(f"{name}: cwd must be a directory")
    try:
        restart = _restart(data.get("restart"))
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{name}: {exc}") from None
    return StdioUpstream(
        name=name,
        command=command,
        env=_mapping(data.get("env") or {}, f"{name}: env"),
        env_passthrough=_strings(data.get("env_passthrough") or [], f"{name}: env_passthrough"),
        cwd=cwd,
        restart=restart,
    )


def load_upstreams(path: str | Path) -> list[Upstream | StdioUpstream]:
    where = f"the MCP upstream file {path}"
    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read {where}: {getattr(exc, 'strerror', None) or exc}") from None
    except yaml.YAMLError as exc:
        raise ValueError(f"{where} is not valid YAML{yaml_problem(exc)}") from None
    if isinstance(data, dict) and set(data) == {"upstreams"}:
        data = data["upstreams"]
    if data is None:
        data = []
    if not isinstance(data, list):
        raise ValueError(f"{where} must be a list of upstreams (or {{upstreams: [...]}})")
    out: list[Upstream | StdioUpstream] = []
    for i, item in enumerate(data, 1):
        try:
            out.append(entry(item))
        except ValueError as exc:
            raise ValueError(f"{where}, entry {i}: {exc}") from None
    names = [u.name for u in out]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValueError(f"{where}: names given twice: {', '.join(twice)}")
    return out


class UpstreamsFile:
    """The current upstreams of a file: loaded at construction (ValueError if it does not parse),
    then reloaded on change while started; ``listener(upstreams)`` runs after each reload."""

    def __init__(self, path: str | Path, *, interval_s: float = 1.0) -> None:
        self.path, self.interval_s = Path(path), interval_s
        self._seen: tuple[int, ...] | None = None
        self._watcher: asyncio.Task | None = None
        self._listener: Callable[[list[Upstream | StdioUpstream]], Awaitable[None]] | None = None
        self.current = self.load()

    def load(self) -> list[Upstream | StdioUpstream]:
        self._seen = file_version(self.path)  # first: a write during the read shows as a newer version
        return load_upstreams(self.path)

    async def reload(self) -> None:
        try:
            upstreams = self.load()
        except ValueError as exc:
            log.error("MCP upstream file not reloaded, keeping the last good one", extra={"reason": str(exc)})
            return
        if upstreams == self.current:
            return
        self.current = upstreams
        log.info("MCP upstream file reloaded", extra={"path": str(self.path), "upstreams": len(upstreams)})
        if self._listener is not None:
            await self._listener(upstreams)

    def start(self, listener: Callable[[list[Upstream | StdioUpstream]], Awaitable[None]]) -> None:
        self._listener = listener
        if self._watcher is None:
            self._watcher = asyncio.create_task(
                watch(self.path, lambda: self._seen, self.reload, self.interval_s), name="mcp-upstreams-file"
            )

    async def stop(self) -> None:
        if self._watcher is not None:
            await wait_cancelled(self._watcher)
            self._watcher = None
