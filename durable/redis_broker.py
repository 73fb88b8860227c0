"""Two fixes to kombu's Redis transport, applied when durable configures a
Celery app with a Redis broker: a worker that lives through a Redis outage,
and one Redis client per channel rather than one per command.

A worker that lives through a Redis outage:

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

One client per channel: kombu's channel builds a new `redis.Redis` for every
publish, acknowledgement and unacked-index write (`conn_or_acquire`), and
redis-py's constructor fills a case-insensitive dict of ~170 response
callbacks each time (redis/redis-py#3624): ~0.2 ms of CPU per call, as much
as the command's round trip, three times per task (its publish, its
unacked-index write, its ack). The client holds no connection of its own
(each command borrows one from the channel's pool, as before), so one client
per pool is the same as a new one per call; a channel whose pool is rebuilt
(a reconnection) builds a new client with it.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Iterator


def patch_kombu() -> None:
    """Apply the fix to kombu's Redis channel (once per process). Imported
    here, not with durable: redis-py 8 loads asyncio and ssl with itself
    (~0.4 s), which a client or command on another broker never needs."""
    from kombu.transport import redis
    from redis.exceptions import ConnectionError as RedisConnectionError

    original: Callable[..., Any] = redis.Channel._connparams
    if getattr(original, "durable_fix", False):
        return

    def _connparams(self: Any, asynchronous: bool = False) -> Any:
        if self.connection.client is None:
            raise RedisConnectionError("the broker connection was closed (Redis unreachable)")
        return original(self, asynchronous=asynchronous)

    setattr(_connparams, "durable_fix", True)
    setattr(redis.Channel, "_connparams", _connparams)
    setattr(redis.Channel, "conn_or_acquire", conn_or_acquire)


@contextmanager
def conn_or_acquire(self: Any, client: Any = None) -> Iterator[Any]:
    """kombu's `Channel.conn_or_acquire`, with the channel's client kept
    for as long as its connection pool."""
    if client:
        yield client
        return
    pool = self.pool  # (re)built here when the channel reconnected
    cached = self.__dict__.get("_durable_client")
    if cached is None or cached[0] is not pool:
        cached = self.__dict__["_durable_client"] = (pool, self._create_client())
    yield cached[1]


def fix_for(broker_url: str) -> None:
    """Apply the fix when the broker is Redis."""
    if broker_url.split("://", 1)[0] in ("redis", "rediss", "sentinel"):
        patch_kombu()
