"""A Redis outage of 45 s under a live worker: the worker reconnects when
Redis is back and finishes workflows, those in flight during the outage
included. With celery/kombu 5.7.0 alone, the worker exited on the dropped
connection (`AttributeError: 'NoneType' object has no attribute 'hostname'`,
kombu restoring its unacknowledged messages through a connection already
closed)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.harness import Backend, Worker, wait_for
from tests.servers import Redis

OUTAGE_SECONDS = 45


@pytest.fixture
def own_redis(tmp_path: Path):
    """A Redis of this test's own, which it stops and starts again."""
    server = Redis(tmp_path / "redis").start()
    yield server
    server.stop()


def test_a_worker_lives_through_a_45_s_redis_outage(own_redis: Redis, create_pg_database, tmp_path: Path,
                                                    effects_dir: Path) -> None:
    backend = Backend("postgres", create_pg_database("outage"), own_redis.url, tmp_path / "home")
    client = backend.client(redelivery_seconds=3.0)
    worker = Worker(backend.env(effects_dir), tmp_path / "worker.log", concurrency=2).start()
    try:
        assert client.enqueue("ten_steps").result(timeout=60)["sum"] == 385
        # in flight when Redis goes: its message is delivered and unacknowledged
        in_flight = client.enqueue("slow_workflow", args=["during", 5.0])
        wait_for(lambda: client.get(in_flight.workflow_id).status.value == "PENDING", 30, "the slow workflow to start")
        own_redis.stop()
        deadline = time.monotonic() + OUTAGE_SECONDS
        while time.monotonic() < deadline:
            assert worker.proc is not None and worker.proc.poll() is None, (
                f"the worker exited during the Redis outage:\n{worker.log_tail()}"
            )
            time.sleep(1)
        own_redis.start()  # the same port
        assert in_flight.result(timeout=90) == "during"
        after = client.enqueue("ten_steps")
        assert after.result(timeout=90)["sum"] == 385
        assert worker.proc is not None and worker.proc.poll() is None, worker.log_tail()
    finally:
        worker.kill_all()
        client.close()
