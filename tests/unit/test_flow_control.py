"""Flow control and time, enforced in the database: a queue's concurrency,
partition concurrency, rate limit and priority; delayed starts, debounce,
and schedules."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

import durable
from durable import Status

from .conftest import Cluster


def _statuses(cluster: Cluster, handles: list[Any]) -> list[str]:
    return [cluster.status(h.workflow_id).status.value for h in handles]


def _sleeper(cluster: Cluster, queue: str, name: str = "sleeper") -> Any:
    @cluster.dur.workflow(name=name, queue=queue)
    def sleeper(seconds: float) -> str:
        durable.sleep(seconds)  # suspended: the workflow keeps its slot
        return "done"

    return sleeper


def test_concurrency_holds_back_starts_until_a_slot_frees(cluster: Cluster) -> None:
    dur = cluster.dur
    dur.queue("q", concurrency=2)
    sleeper = _sleeper(cluster, "q")
    handles = [sleeper.start(10.0) for _ in range(5)]
    outcomes = cluster.drive()
    assert sorted(outcomes) == ["executed", "executed", "held", "held", "held"]
    assert sorted(_statuses(cluster, handles)) == ["ENQUEUED"] * 3 + ["PENDING"] * 2
    for _ in range(3):
        cluster.clock.advance(10.5)
        cluster.sweep()
        cluster.drive()
        assert _statuses(cluster, handles).count("PENDING") <= 2
    cluster.clock.advance(10.5)
    cluster.sweep()
    cluster.drive()
    assert _statuses(cluster, handles) == ["SUCCESS"] * 5


def test_the_sweeper_wakes_a_held_workflow_whose_wake_up_was_lost(cluster: Cluster) -> None:
    dur = cluster.dur
    dur.queue("q", concurrency=1)
    sleeper = _sleeper(cluster, "q")
    first, second = sleeper.start(10.0), sleeper.start(10.0)
    assert cluster.drive() == ["executed", "held"]
    cluster.clock.advance(10.5)
    cluster.sweep()
    dur.runner.deliver(*cluster.dispatcher.pending.pop(0), "q")  # the first ends...
    cluster.dispatcher.pending.clear()  # ...and its wake-up of the second is lost
    assert cluster.status(second.workflow_id).status is Status.ENQUEUED
    cluster.sweep()  # a free slot and a held workflow: the sweeper publishes it
    cluster.drive()
    cluster.clock.advance(10.5)
    cluster.sweep()
    cluster.drive()
    assert _statuses(cluster, [first, second]) == ["SUCCESS", "SUCCESS"]


def test_partition_concurrency_runs_one_per_key(cluster: Cluster) -> None:
    dur = cluster.dur
    dur.queue("p", partition_concurrency=1)
    sleeper = _sleeper(cluster, "p")
    a = [sleeper.options(partition_key="user-a").start(5.0) for _ in range(2)]
    b = [sleeper.options(partition_key="user-b").start(5.0) for _ in range(2)]
    cluster.drive()
    assert _statuses(cluster, a).count("PENDING") == 1 and _statuses(cluster, b).count("PENDING") == 1
    for _ in range(2):
        cluster.clock.advance(5.5)
        cluster.sweep()
        cluster.drive()
    assert _statuses(cluster, a + b) == ["SUCCESS"] * 4


def test_rate_limit_spaces_starts_with_database_timers(cluster: Cluster) -> None:
    dur = cluster.dur
    dur.queue("r", rate_limit="2/s")

    @dur.workflow(name="quick", queue="r")
    def quick() -> str:
        return "ok"

    handles = [quick.start() for _ in range(5)]
    cluster.drive()
    assert _statuses(cluster, handles).count("SUCCESS") == 2
    held = [cluster.dur.store.workflow_row(h.workflow_id) for h in handles]
    timers = sorted(r["redispatch_at_ms"] for r in held if r["status"] == "ENQUEUED")
    assert timers and all(t == timers[0] for t in timers)  # the instant the window has room again
    for _ in range(3):
        cluster.clock.advance(1.0)
        cluster.sweep()
        cluster.drive()
    assert _statuses(cluster, handles) == ["SUCCESS"] * 5
    starts = sorted(cluster.status(h.workflow_id).started_at for h in handles)
    for i in range(2, 5):  # never more than 2 starts inside any 1-second window
        assert (starts[i] - starts[i - 2]).total_seconds() >= 1.0


def test_priority_starts_the_highest_first(cluster: Cluster) -> None:
    dur = cluster.dur
    dur.queue("prio", concurrency=1, priority=True)
    sleeper = _sleeper(cluster, "prio")
    first = sleeper.start(10.0)
    cluster.drive()
    low = sleeper.options(priority=1).start(10.0)
    high = sleeper.options(priority=9).start(10.0)
    cluster.drive()
    assert _statuses(cluster, [first, low, high]) == ["PENDING", "ENQUEUED", "ENQUEUED"]
    cluster.clock.advance(10.5)
    cluster.sweep()
    dur.runner.deliver(*cluster.dispatcher.pending.pop(0), "prio")  # the first ends: a slot frees
    woken = [wid for wid, _ in cluster.dispatcher.pending]
    assert woken[:1] == [high.workflow_id]


def test_a_delayed_start_waits_for_its_database_timer(cluster: Cluster) -> None:
    dur = cluster.dur

    @dur.workflow(name="later")
    def later() -> str:
        return "ran"

    handle = later.options(delay=3).start()
    assert cluster.dispatcher.pending == []  # no broker ETA: nothing published yet
    assert dur.runner.execute(handle.workflow_id, "later") == "skipped"  # a stray message cannot start it
    cluster.clock.advance(2.0)
    cluster.sweep()
    assert cluster.dispatcher.pending == []
    cluster.clock.advance(1.0)
    cluster.sweep()
    cluster.drive()
    assert handle.result(timeout=0) == "ran"
    status = cluster.status(handle.workflow_id)
    assert (status.started_at - status.created_at).total_seconds() >= 3.0

    at = dt.datetime.fromtimestamp(cluster.clock.now_ms() / 1000 + 5, tz=dt.timezone.utc)
    scheduled = later.options(start_at=at).start()
    assert cluster.dur.store.workflow_row(scheduled.workflow_id)["start_at_ms"] == int(at.timestamp() * 1000)


def test_debounce_runs_once_with_the_last_inputs(cluster: Cluster) -> None:
    dur = cluster.dur
    seen: list[str] = []

    @dur.workflow(name="digest")
    def digest(text: str) -> str:
        seen.append(text)
        return text

    handles = []
    for i in range(10):
        handles.append(digest.options(dedup_key="digest-u1", debounce=1).start(f"v{i}"))
        cluster.clock.advance(0.2)
    assert len({h.workflow_id for h in handles}) == 1
    cluster.clock.advance(1.0)
    cluster.sweep()
    cluster.drive()
    assert seen == ["v9"]


def test_a_schedule_ticks_once_per_instant_whoever_sweeps(cluster: Cluster) -> None:
    dur = cluster.dur
    ticks: list[dt.datetime] = []

    @dur.scheduled(every=2.0, name="heartbeat")
    def heartbeat(scheduled_at: dt.datetime) -> None:
        ticks.append(scheduled_at)

    dur.runner.declare()
    for _ in range(6):
        cluster.clock.advance(1.0)
        cluster.sweep()
        cluster.sweep()  # a second worker's sweeper at the same instant
        cluster.drive()
    assert len(ticks) == 3 and len(set(ticks)) == 3
    assert all(t.timestamp() % 2 == 0 for t in ticks)  # aligned to the epoch
    ids = [w.workflow_id for w in dur.list_workflows(name="heartbeat")]
    assert all(i.startswith("heartbeat@") for i in ids)


def test_missed_ticks_follow_the_schedule_policy(cluster: Cluster) -> None:
    dur = cluster.dur
    runs: dict[str, list[dt.datetime]] = {"run_all": [], "run_latest": [], "skip": []}
    for policy in runs:
        def make(policy: str) -> Any:
            def tick(scheduled_at: dt.datetime) -> None:
                runs[policy].append(scheduled_at)
            return tick
        dur.scheduled(every=10.0, name=f"every-{policy}", missed=policy)(make(policy))
    dur.runner.declare()
    cluster.clock.advance(45.0)  # no worker ran for four ticks
    cluster.sweep()
    cluster.drive()
    assert len(runs["run_all"]) == 4 and len(runs["run_latest"]) == 1 and len(runs["skip"]) <= 1


def test_limits_and_options_are_checked_where_they_are_given(cluster: Cluster) -> None:
    dur = cluster.dur
    for bad in ({"concurrency": 0}, {"rate_limit": "fast"}, {"rate_limit": "0/s"},
                {"partition_concurrency": -1}, {"priority": "yes"}):
        with pytest.raises(ValueError):
            dur.queue("bad", **bad)
    with pytest.raises(ValueError, match="dedup_key"):
        _sleeper(cluster, "x").options(debounce=1)
    with pytest.raises(ValueError, match="not both"):
        _sleeper(cluster, "y", name="s2").options(delay=1, start_at=dt.datetime.now())
    with pytest.raises(ValueError, match="delay"):
        _sleeper(cluster, "z", name="s3").options(delay=float("nan"))
    with pytest.raises(ValueError, match="cron"):
        dur.scheduled(cron="every minute", name="bad-cron")
    with pytest.raises(ValueError, match="missed"):
        dur.scheduled(every=1, name="bad-missed", missed="sometimes")
    with pytest.raises(ValueError, match="exactly one"):
        dur.scheduled(name="neither")
    assert dur.list_workflows() == []


def test_operators_list_and_steer_queues_and_schedules(cluster: Cluster) -> None:
    dur = cluster.dur
    dur.queue("q", concurrency=1)
    sleeper = _sleeper(cluster, "q")
    ran: list[dt.datetime] = []

    @dur.scheduled(cron="*/15 * * * *", name="sync", timezone="Europe/Paris")
    def sync(scheduled_at: dt.datetime) -> None:
        ran.append(scheduled_at)

    dur.runner.declare()
    sleeper.start(10.0), sleeper.start(10.0)
    cluster.drive()
    [q] = [q for q in dur.list_queues() if q["name"] == "q"]
    assert (q["concurrency"], q["running"], q["backlog"]) == (1, 1, 1)
    [s] = dur.list_schedules()
    assert s["name"] == "sync" and s["cron"] == "*/15 * * * *" and not s["paused"]
    assert s["next_tick"].minute % 15 == 0
    dur.pause_schedule("sync")
    cluster.clock.advance(3600)
    cluster.sweep()
    cluster.drive()
    assert ran == [] and dur.list_schedules()[0]["paused"]
    dur.resume_schedule("sync")
    handle = dur.trigger_schedule("sync")
    cluster.drive()
    assert handle.status().status is Status.SUCCESS and len(ran) == 1
    with pytest.raises(ValueError, match="no schedule"):
        dur.pause_schedule("nope")


def test_the_web_client_takes_the_same_flow_options(cluster: Cluster, tmp_path) -> None:
    from durable import DurableClient

    dur = cluster.dur
    client = DurableClient(settings=dur.settings.with_overrides(home=str(tmp_path / "client")))
    client.clock = cluster.clock  # the test's time, as the app's
    delayed = client.enqueue("later", partition_key="user-1", delay=5, allow_unknown=True)
    row = dur.store.workflow_row(delayed.workflow_id)
    assert row["partition_key"] == "user-1" and row["start_at_ms"] == cluster.clock.now_ms() + 5000
    first = client.enqueue("digest", args=["a"], dedup_key="d", debounce=1, allow_unknown=True)
    second = client.enqueue("digest", args=["b"], dedup_key="d", debounce=1, allow_unknown=True)
    assert first.workflow_id == second.workflow_id
    assert dur.store.workflow_row(first.workflow_id)["inputs"] == '{"args":["b"],"kwargs":{}}'
    with pytest.raises(ValueError, match="dedup_key"):
        client.enqueue("digest", debounce=1, allow_unknown=True)
    client.store.db.dispose()
