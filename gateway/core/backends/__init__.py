"""Bus and store backends: ``embedded`` (default) or ``redis`` (when a Redis URL is configured)."""

from gateway.core.backends.base import (
    Backend,
    BackendError,
    BackendMisconfigured,
    BackendUnavailable,
    Delivery,
    Finished,
    InvalidCursor,
    KeyValue,
    Limits,
    QueueFull,
    StoredEvent,
    TaskExists,
    TaskNotFound,
)
from gateway.core.backends.embedded import EmbeddedBackend


def open_backend(redis_url: str | None, limits: Limits | None = None) -> Backend:
    if redis_url:
        from gateway.core.backends.redis import RedisBackend  # optional extra

        return RedisBackend(redis_url, limits)
    return EmbeddedBackend(limits)


__all__ = [
    "Backend",
    "BackendError",
    "BackendMisconfigured",
    "BackendUnavailable",
    "Delivery",
    "EmbeddedBackend",
    "Finished",
    "InvalidCursor",
    "KeyValue",
    "Limits",
    "QueueFull",
    "StoredEvent",
    "TaskExists",
    "TaskNotFound",
    "open_backend",
]
