"""Bus and store backends: ``embedded`` (default) or ``redis`` (when a Redis URL is configured)."""

from gateway.backends.base import (
    Backend,
    BackendError,
    BackendUnavailable,
    Delivery,
    Finished,
    Limits,
    QueueFull,
    StoredEvent,
    TaskExists,
    TaskNotFound,
)
from gateway.backends.embedded import EmbeddedBackend


def open_backend(redis_url: str | None, limits: Limits | None = None) -> Backend:
    if redis_url:
        from gateway.backends.redis import RedisBackend  # optional extra

        return RedisBackend(redis_url, limits)
    return EmbeddedBackend(limits)


__all__ = [
    "Backend", "BackendError", "BackendUnavailable", "Delivery", "EmbeddedBackend", "Finished", "Limits",
    "QueueFull", "StoredEvent", "TaskExists", "TaskNotFound", "open_backend",
]
