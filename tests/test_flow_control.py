"""Flow control and schedules across real worker processes, Postgres and
Redis: limits hold across every worker, held workflows cost no slot and are
started when one frees, delayed starts wait on database timers, and a
schedule's ticks run once each whatever the number of workers."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from durable import Durable, Status
from tests.flow_workflows import most_at_once, spans
from tests.harness import Backend, Worker, wait_for

QUEUES = "celery,limited,partitioned,rated"


@pytest.fixture
def backend(pg_backend: Backend) -> Backend:
    return pg_backend


@pytest.fixture
def workers(backend: Backend, effects_dir: Path, tmp_path: Path) -> Iterator[Callable[..., Worker]]:
    started: list[Worker] = []

    def start(concurrency: int = 2, **env: str) -> Worker:
        worker = Worker(backend.env(effects_dir, **env), tmp_path / f"w{len(started)}.log",
                        concurrency=concurrency, queues=QUEUES)
        started.append(worker)
        return worker.start()

    yield start
    for worker in started:
        worker.kill_all()


@pytest.fixture
def dur(backend: Backend) -> Iterator[Durable]:
    """This process's app: the workflows by name and queue, to start them
    with options (their code runs in the workers)."""
    app = Durable(settings=backend.settings(redelivery_seconds=3.0))
    for name, queue in (("flow.hold", "limited"), ("flow.started", "rated"), ("flow.latest", None)):
        app.workflow(name=name, queue=queue)(lambda *args: None)
    yield app
    app.store.db.dispose()


def _start(dur: Durable, name: str, *args: Any, **options: Any) -> Any:
    return dur.registry[name].options(**options).start(*args)


def test_concurrency_holds_across_three_workers(dur, workers):
    for _ in range(3):
        workers(concurrency=2)
    handles = [_start(dur, "flow.hold", f"k{i}", 0.5) for i in range(20)]
    for handle in handles:
        handle.result(timeout=120)
    runs = spans("hold.spans")
    assert len(runs) == 20
    assert most_at_once(runs) <= 2  # timestamps the steps wrote, across all processes
    assert len({pid for _, _, _, pid in runs}) > 1


def test_partition_concurrency_runs_one_per_key_and_partitions_overlap(dur, workers):
    workers(concurrency=2)
    workers(concurrency=2)
    handles = [
        _start(dur, "flow.hold", f"{part}-{i}", 0.4, partition_key=part, queue="partitioned")
        for i in range(5) for part in ("a", "b")
    ]
    for handle in handles:
        handle.result(timeout=120)
    runs = spans("hold.spans")
    by_part = {part: [r for r in runs if r[0].startswith(part)] for part in ("a", "b")}
    assert most_at_once(by_part["a"]) == 1 and most_at_once(by_part["b"]) == 1
    assert most_at_once(runs) == 2  # the two partitions ran side by side


def test_rate_limit_spaces_starts_across_workers(dur, workers, client):
    workers(concurrency=2)
    workers(concurrency=2)
    handles = [_start(dur, "flow.started", f"r{i}") for i in range(20)]
    for handle in handles:
        handle.result(timeout=120)
    starts = sorted(client.get(h.workflow_id).started_at.timestamp() for h in handles)
    for i in range(5, 20):  # never more than 5 starts inside any 1-second window
        assert starts[i] - starts[i - 5] >= 0.999
    assert starts[-1] - starts[0] >= 3.0


def test_a_killed_worker_gives_back_its_slots(dur, workers, client):
    victim = workers(concurrency=2)
    handles = [_start(dur, "flow.hold", f"s{i}", 30.0 if i < 2 else 0.2) for i in range(4)]
    wait_for(lambda: sum(client.get(h.workflow_id).status is Status.PENDING for h in handles) == 2,
             60, "two workflows holding the slots")
    victim.kill_all()
    workers(concurrency=2)
    for handle in handles:
        handle.result(timeout=120)
    keys = sorted(key for key, _, _, _ in spans("hold.spans"))
    assert keys == ["s0", "s1", "s2", "s3"]  # the killed ones re-ran (no checkpoint); nothing ran twice after


def test_a_delayed_start_survives_a_flushed_broker(backend, dur, workers, client):
    import redis as redis_client

    workers(concurrency=2)
    t0 = time.time()
    handle = _start(dur, "flow.latest", "d", "late", delay=3)
    redis_client.Redis.from_url(backend.broker_url).flushdb()
    assert handle.result(timeout=60) == "late"
    status = client.get(handle.workflow_id)
    assert status.started_at.timestamp() >= t0 + 3.0


def test_debounce_runs_once_with_the_last_inputs(dur, workers, client):
    workers(concurrency=2)
    handles = []
    for i in range(10):
        handles.append(_start(dur, "flow.latest", "deb", f"v{i}", dedup_key="deb-1", debounce=1))
        time.sleep(0.2)
    assert len({h.workflow_id for h in handles}) == 1
    assert handles[0].result(timeout=60) == "v9"
    time.sleep(1.0)
    runs = (Path(os.environ["DURABLE_TEST_EFFECTS_DIR"]) / "latest.runs").read_text().split("\n")
    assert [line.split()[1] for line in runs if line] == ["v9"]


def test_a_schedule_ticks_once_each_with_three_workers_and_one_killed(workers, client, effects_dir):
    started = [workers(concurrency=1, DURABLE_TEST_SCHEDULES="1") for _ in range(3)]
    t0 = time.time()
    time.sleep(5.5)
    started[1].kill_all()
    time.sleep(5.5)
    t1 = time.time()
    time.sleep(2.5)  # the last tick of the window finishes
    ticks = sorted(float(key) for key, _, _, _ in spans("ticks"))
    window = [t for t in ticks if t0 + 2.5 <= t <= t1 - 0.5]
    # every even second in the window (range's end is exclusive: one past t1)
    expected = [t for t in range(int(t0 + 2.5) // 2 * 2, int(t1) + 1, 2) if t0 + 2.5 <= t <= t1 - 0.5]
    assert window == expected, (ticks, expected)  # no gap, no double
    assert len(ticks) == len(set(ticks))
