"""A worker that lives through a Redis outage: one fix to kombu's Redis
transport, applied when durable configures a Celery app with a Redis broker.

With celery 5.7 and kombu 5.7, a worker whose Redis connection drops while
it holds delivered, unacknowledged messages (every running durable task:
`acks_late`) exits with `Unrecoverable error: AttributeError("'NoneType'
object has no attribute 'hostname'")`. On the connection error, Celery's
consumer first `collect()`s the connection, which detaches kombu's
`Connection` from its transport (`transport.client = None`), then closes it;
that close reaches the channel's restore of its unacknowledged messages,
which builds a new Redis connection pool from `transport.client`: None.
Celery ignores only the transport's connection and channel errors there, so
the AttributeError ends the worker. A task that finishes during the outage
acknowledges its message along the same path.

The fix: a channel whose transport was detached says so with a Redis
`ConnectionError`, which Celery ignores, and the consumer goes on to
reconnect when Redis is back. Nothing is lost: what kombu could not restore
or acknowledge stays in its unacknowledged set (restored after the
visibility timeout), and durable's sweeper publishes every unfinished
workflow again. The transport class and the broker URL stay kombu's own, so
logs and Flower show `redis://` as before.
"""

from __future__ import annotations

from typing import Any, Callable

from kombu.transport import redis
from redis.exceptions import ConnectionError as RedisConnectionError


def patch_kombu() -> None:
    """Apply the fix to kombu's Redis channel (once per process)."""
    original: Callable[..., Any] = redis.Channel._connparams
    if getattr(original, "durable_fix", False):
        return

    def _connparams(self: Any, asynchronous: bool = False) -> Any:
        if self.connection.client is None:
            raise RedisConnectionError("the broker connection was closed (Redis unreachable)")
        return original(self, asynchronous=asynchronous)

    setattr(_connparams, "durable_fix", True)
    setattr(redis.Channel, "_connparams", _connparams)


def fix_for(broker_url: str) -> None:
    """Apply the fix when the broker is Redis."""
    if broker_url.split("://", 1)[0] in ("redis", "rediss", "sentinel"):
        patch_kombu()
