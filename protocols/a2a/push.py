"""A2A push notifications: config storage, webhook URL policy (SSRF) and delivery with retries.

* Configs live in the shared key/value store (``a2a:push:<task id>``), so any gateway node can
  create, read, list or delete them, and they expire with the task's retention.
* URL policy: the gateway's egress policy (gateway/core/egress.py: http(s), no internal address
  unless the operator allows it), plus an optional host allowlist of the push policy's own. A
  URL is checked when the config is created (as far as can be told then: a literal address, a
  name that resolves) and every delivery dials only checked addresses (a name may re-point later:
  the address checked is the address dialled). Redirects are not followed.
* Delivery: one follower per task across the cluster (a key/value lease) reads the task's
  events and POSTs one StreamResponse per event to every config (0.3 configs get the Task, as
  0.3 agents sent). Each webhook has its own ordered queue with retries and exponential
  backoff, so a slow or failing webhook never blocks the task or the other webhooks.
  Headers: ``X-A2A-Notification-Token`` (the config's token), ``Authorization: <scheme>
  <credentials>`` when the config has authentication.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import httpx

from gateway.core.backends import StoredEvent
from gateway.core.egress import Egress, EgressRefused
from protocols.a2a.errors import InvalidParamsError
from protocols.a2a.wire import V03, V10, PushConfig
from schemas import Task, TaskStatusUpdate

log = logging.getLogger("interlace.a2a.push")

MAX_CONFIGS_PER_TASK = 16


@dataclass(frozen=True)
class PushPolicy:
    enabled: bool = True
    allowed_hosts: frozenset[str] | None = None  # exact host names, or ".example.com" for a domain
    max_attempts: int = 4
    backoff_s: float = 0.5  # first retry delay; doubles each time
    timeout_s: float = 5.0
    queue_size: int = 1000

    def _host_allowed(self, host: str) -> bool:
        if self.allowed_hosts is None:
            return True
        return any(host == h or (h.startswith(".") and host.endswith(h)) for h in self.allowed_hosts)

    async def check_url(self, url: str, egress: Egress) -> None:
        """Refuse a webhook URL that this policy or the egress policy forbids (as far as can be told now)."""
        try:
            parts = urlsplit(url)
            parts.port  # noqa: B018 - raises ValueError for a port that is no number (or out of range)
        except ValueError:  # "http://[::1": an unclosed IPv6 literal
            parts = None
        if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
            raise InvalidParamsError("push notification url must be an absolute http(s) URL")
        host = parts.hostname.lower()
        if not self._host_allowed(host):
            raise InvalidParamsError(f"push notification host {host!r} is not on the allowlist")
        try:
            await egress.check_endpoint(url)
        except EgressRefused as exc:
            log.info("push notification url refused", extra={"url": url, "error": str(exc)})
            raise InvalidParamsError("push notification url is not allowed by this gateway's egress policy") from None


class PushStore:
    """Push configs per task in the shared key/value store."""

    def __init__(self, kv, ttl_s: int) -> None:
        self.kv, self.ttl_s = kv, ttl_s

    @staticmethod
    def _key(task_id: str) -> str:
        return f"a2a:push:{task_id}"

    async def list(self, task_id: str) -> list[tuple[PushConfig, str]]:
        raw = await self.kv.get(self._key(task_id))
        if not raw:
            return []
        return [(PushConfig(**c["config"]), c.get("version", "1.0")) for c in json.loads(raw)]

    async def _write(self, task_id: str, items: list[tuple[PushConfig, str]]) -> None:
        if not items:
            await self.kv.delete(self._key(task_id))
            return
        body = json.dumps([{"config": c.dump(), "version": v} for c, v in items])
        await self.kv.set(self._key(task_id), body, self.ttl_s)

    async def put(self, config: PushConfig, version: str) -> PushConfig:
        if not config.id:
            config.id = config.task_id  # A2A: the config id defaults to the task id
        items = [(c, v) for c, v in await self.list(config.task_id) if c.id != config.id]
        if len(items) >= MAX_CONFIGS_PER_TASK:
            raise InvalidParamsError(f"a task holds at most {MAX_CONFIGS_PER_TASK} push notification configs")
        items.append((config, version))
        await self._write(config.task_id, items)
        return config

    async def get(self, task_id: str, config_id: str) -> PushConfig | None:
        return next((c for c, _ in await self.list(task_id) if c.id == config_id), None)

    async def delete(self, task_id: str, config_id: str) -> None:
        items = await self.list(task_id)
        kept = [(c, v) for c, v in items if c.id != config_id]
        if len(kept) != len(items):
            await self._write(task_id, kept)


@dataclass
class _Webhook:
    config: PushConfig
    version: str
    queue: asyncio.Queue
    worker: asyncio.Task | None = field(default=None, repr=False)


class PushDispatcher:
    """Follows tasks that have push configs and delivers their events to the webhooks."""

    def __init__(
        self, runtime, store: PushStore, policy: PushPolicy, http: httpx.AsyncClient, max_follow_s: float
    ) -> None:
        self.runtime, self.store, self.policy, self.http = runtime, store, policy, http
        self.max_follow_s = max_follow_s
        self.owner = f"{runtime.node_id}-{uuid.uuid4().hex[:6]}"
        self._followers: dict[str, asyncio.Task] = {}
        self._hooks: dict[tuple[str, str], _Webhook] = {}
        self.delivered = 0  # successful POSTs (for tests and metrics)

    async def watch(self, task_id: str, after: str | None) -> None:
        """Deliver the task's events after ``after`` (None: from its first event) to its webhooks."""
        if task_id in self._followers:
            return
        lease_s = 60
        if not await self.runtime.kv.set(f"a2a:pushfollow:{task_id}", self.owner, lease_s, only_new=True):
            return  # another node follows this task
        self._followers[task_id] = asyncio.create_task(
            self._follow(task_id, after, lease_s), name=f"a2a-push-{task_id}"
        )

    async def _follow(self, task_id: str, after: str | None, lease_s: int) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.max_follow_s
        renew_at = loop.time() + lease_s / 3
        try:
            while loop.time() < deadline:
                terminal = False
                async for stored in self.runtime.follow(task_id, after):
                    after = stored.event_id
                    if loop.time() > renew_at:
                        await self.runtime.kv.set(f"a2a:pushfollow:{task_id}", self.owner, lease_s)
                        renew_at = loop.time() + lease_s / 3
                    if not await self._dispatch(task_id, stored):
                        return  # no configs left
                    ev = stored.event
                    terminal = isinstance(ev, TaskStatusUpdate) and ev.status.state.terminal
                if terminal:
                    return
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the backend went away (shutdown) or the task expired
            log.info("push follower stopped", extra={"task_id": task_id, "error": exc.__class__.__name__})
        finally:
            self._followers.pop(task_id, None)
            try:
                await self.runtime.kv.delete(f"a2a:pushfollow:{task_id}")
            except Exception:
                pass

    async def _dispatch(self, task_id: str, stored: StoredEvent) -> bool:
        configs = await self.store.list(task_id)
        if not configs:
            return False
        task: Task | None = None
        for config, version in configs:
            if version == "0.3":
                task = task or await self.runtime.get(task_id)
                body = V03.task_out(task)
            else:
                body = V10.stream_event(stored.event)
            hook = self._hooks.get((task_id, config.id))
            if hook is None or hook.config != config:
                if hook is not None and hook.worker is not None:
                    hook.worker.cancel()
                hook = _Webhook(config, version, asyncio.Queue(self.policy.queue_size))
                hook.worker = asyncio.create_task(self._deliver(hook), name=f"a2a-webhook-{config.id}")
                self._hooks[(task_id, config.id)] = hook
            if hook.queue.full():
                hook.queue.get_nowait()  # drop the oldest rather than grow without bound
                log.warning("webhook queue full; dropped an event", extra={"task_id": task_id})
            hook.queue.put_nowait(body)
            if isinstance(stored.event, TaskStatusUpdate) and stored.event.status.state.terminal:
                hook.queue.put_nowait(None)  # the webhook's worker ends after the last event
        return True

    async def _deliver(self, hook: _Webhook) -> None:
        cfg = hook.config
        headers = {"Content-Type": "application/json", "A2A-Version": hook.version}
        if cfg.token:
            headers["X-A2A-Notification-Token"] = cfg.token
        if cfg.auth_scheme and cfg.credentials:
            headers["Authorization"] = f"{cfg.auth_scheme} {cfg.credentials}"
        try:
            while True:
                body = await hook.queue.get()
                if body is None:
                    return
                await self._post(cfg, headers, body)
        finally:
            if self._hooks.get((cfg.task_id, cfg.id)) is hook:
                self._hooks.pop((cfg.task_id, cfg.id), None)

    async def _post(self, cfg: PushConfig, headers: dict[str, str], body: dict) -> None:
        delay = self.policy.backoff_s
        for attempt in range(1, self.policy.max_attempts + 1):
            try:
                resp = await self.http.post(cfg.url, json=body, headers=headers, timeout=self.policy.timeout_s)
                if resp.status_code < 300:
                    self.delivered += 1
                    return
                if resp.status_code < 500 and resp.status_code != 429:
                    log.warning(
                        "webhook refused a notification", extra={"task_id": cfg.task_id, "status": resp.status_code}
                    )
                    return
            except (httpx.HTTPError, OSError) as exc:  # a refusal by the egress policy too (no packet sent)
                log.info(
                    "webhook delivery failed",
                    extra={"task_id": cfg.task_id, "attempt": attempt, "error": f"{exc.__class__.__name__}: {exc}"},
                )
            if attempt < self.policy.max_attempts:
                await asyncio.sleep(delay)
                delay *= 2
        log.warning("webhook delivery gave up", extra={"task_id": cfg.task_id, "attempts": self.policy.max_attempts})

    async def close(self) -> None:
        tasks = list(self._followers.values()) + [h.worker for h in self._hooks.values() if h.worker is not None]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
