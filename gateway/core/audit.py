"""The audit log: who did what to which target, and how it ended; one JSON object per line.

Its own logger, ``interlace.audit``: with ``--audit-log FILE`` its records go to that file only
(JSON lines, appended), otherwise they join the gateway's log. A record holds the principal's id
and kind, the action (``call``, ``read``, ``cancel``, ``register``, ``deregister``, ``admin``),
the target (an agent, a task's agent, a registered agent's name, or a federated MCP item as
``{upstream}:{tool, prompt or URI}``), the outcome (``ok``, ``not_found`` for a task the caller
may not see, ``denied`` by policy, or an error code) and the task id where there is one. Never
a token or a message: only identifiers.
"""

from __future__ import annotations

import logging

from gateway.core.logs import JsonFormatter
from gateway.core.principal import Principal

log = logging.getLogger("interlace.audit")
log.setLevel(logging.INFO)  # --log-level quiets the gateway's log, never its audit trail


def record(principal: Principal, action: str, target: str | None, outcome: str, task_id: str | None = None) -> None:
    extra = {"principal": principal.id, "principal_kind": principal.kind, "action": action, "target": target}
    extra["outcome"] = outcome
    if task_id is not None:
        extra["task_id"] = task_id
    log.info("audit", extra=extra)


def to_file(path: str) -> logging.Handler:
    """Send audit records to ``path`` (JSON lines) instead of the gateway's log; the handler, to close."""
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(JsonFormatter())
    log.addHandler(handler)
    log.propagate = False
    return handler
