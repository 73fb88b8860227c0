"""A SIGKILLed pool child is reported by its worker, every time, and soon;
a lease keeper reports only leases really lost.

The first test runs real workers (SQLite with the filesystem broker, Postgres
with Redis) whose lease is far longer than the test: a killed execution can
only be handed on by the worker reporting its child's death
(DurableRequest.on_failure), never by its lease running out.
"""

from __future__ import annotations

import json
import logging
import os
import signal
from pathlib import Path

import pytest

from durable import DurableClient, Settings
from durable.client import new_workflow_row
from durable.database import Database
from durable.leases import LeaseKeeper
from durable.records import Status
from durable.store import Store
from tests.harness import Backend, Worker, wait_for
from tests.workflows import effects

KILLS = 5
SLOW_STEP = 4
# How fast the loss is noticed (the pool watch's 0.5 s against Celery's 5 s
# maintain_pool timer) is a figure for the benchmark (`benchmarks.run --only
# recovery`); this test checks that every kill is reported and handed on.


def client_for(backend: Backend) -> DurableClient:
    return DurableClient(settings=Settings(
        home=str(backend.home), database_url=backend.database_url, broker_url=backend.broker_url,
    ))


def step_runs(workflow_id: str, step: str) -> list[int]:
    return [pid for kind, pid, _ in effects(workflow_id) if kind == step]


def test_every_killed_child_is_reported_and_only_its_step_runs_again(
    backend: Backend, effects_dir: Path, tmp_path: Path
):
    env = backend.env(effects_dir, DURABLE_LEASE_SECONDS="300")
    worker = Worker(env, tmp_path / "worker.log", concurrency=1).start()
    client = client_for(backend)
    slow = f"step{SLOW_STEP}"
    victims: list[int] = []
    try:
        for _ in range(KILLS):
            handle = client.enqueue("ten_steps", kwargs={"pause_seconds": 300.0, "slow_step": SLOW_STEP})
            wid = handle.workflow_id
            (victim,) = wait_for(lambda: step_runs(wid, slow), 60, f"{slow} to start")
            assert victim in worker.children() and victim not in victims  # a fresh child each time
            victims.append(victim)
            os.kill(victim, signal.SIGKILL)
            wait_for(lambda: len(step_runs(wid, slow)) == 2, 60, f"{slow} to run again")

            assert handle.result(timeout=60)["sum"] == 385
            ran = [kind for kind, _, _ in effects(wid)]
            expected = [f"step{i}" for i in range(1, 11)]
            expected.insert(SLOW_STEP, slow)  # the killed step, and only it, ran twice
            assert ran == expected, ran
            status = handle.status()
            assert status.recovery_attempts == 1
            assert "SIGKILL" in (status.last_death or ""), status.last_death
            killed = client.list_steps(wid)[SLOW_STEP - 1]
            assert killed.name.endswith("numbered_step") and killed.crashes == 1
            crash = json.loads(killed.last_crash or "{}")
            assert crash["attempt"] == 1 and "SIGKILL" in crash["cause"], crash
    finally:
        worker.kill_all()


def test_children_recycled_by_max_tasks_per_child_are_not_reported_lost(
    backend: Backend, effects_dir: Path, tmp_path: Path
):
    """The watch runs the pool's own maintenance, nothing more: a child that
    exits after its task (max_tasks_per_child) is replaced, and no task is
    reported lost."""
    worker = Worker(backend.env(effects_dir), tmp_path / "worker.log", concurrency=2)
    worker.args.append("--max-tasks-per-child=1")
    worker.start()
    client = client_for(backend)
    try:
        handles = [client.enqueue("ten_steps") for _ in range(8)]
        for handle in handles:
            assert handle.result(timeout=60)["sum"] == 385
        pids = {pid for handle in handles for _, pid, _ in effects(handle.workflow_id)}
        assert len(pids) == len(handles)  # one child per workflow: each was recycled
        for handle in handles:
            status = handle.status()
            assert status.recovery_attempts == 0 and status.last_death is None
            assert [k for k, _, _ in effects(handle.workflow_id)] == [f"step{i}" for i in range(1, 11)]
        wait_for(lambda: len(worker.children()) == 2, 10, "the pool back to 2 children")
    finally:
        # the log line "Warm shutdown" comes at once; what follows it is not checked
        worker.stop(timeout_s=3)
    # stopping signals the whole process group: children exit with SIGTERM then
    running = worker.log_path.read_text(errors="replace").split("Warm shutdown")[0]
    assert "WorkerLostError" not in running
    assert "exited with" not in running


# --- the lease keeper -----------------------------------------------------------

NOW = 1_800_000_000_000
LEASE_MS = 5_000


@pytest.fixture(params=["sqlite", "postgres"])
def store(request, tmp_path: Path) -> Store:
    if request.param == "sqlite":
        return Store(Database(f"sqlite:///{tmp_path / 'store.sqlite3'}"))
    return Store(Database(request.getfixturevalue("create_pg_database")("leases")))


def claimed(store: Store, workflow_id: str, owner: str = "host:1") -> int:
    row = new_workflow_row(Settings(), "wf", [], {}, workflow_id=workflow_id)
    row["created_at_ms"] = row["updated_at_ms"] = NOW
    store.insert_workflow(row)
    claim = store.claim(workflow_id, owner, NOW, LEASE_MS)
    assert claim is not None
    return claim.epoch


def quiet_keeper(store) -> LeaseKeeper:
    """A keeper whose own thread stays asleep through the test: the test renews."""
    return LeaseKeeper(store, lease_seconds=3600)


class RacingStore:
    """The store, with `meanwhile` run between the keeper reading its epochs
    and renewing them: what the execution does in that window."""

    def __init__(self, store: Store, meanwhile):
        self.store = store
        self.meanwhile = meanwhile

    def renew_leases(self, owner: str, epochs: dict[str, int], until_ms: int) -> set[str]:
        self.meanwhile()
        return self.store.renew_leases(owner, epochs, until_ms)

    def __getattr__(self, name: str):
        return getattr(self.store, name)


def test_a_workflow_that_ends_during_the_renewal_is_not_reported(store: Store, caplog):
    ended, suspended, unfinished = (claimed(store, w) for w in ("ended", "suspended", "unfinished"))

    def meanwhile() -> None:
        store.finish("ended", ended, Status.SUCCESS, NOW + 1, output="null", has_parent=False)
        keeper.untrack("ended")
        # ended in the database, not untracked yet (it may be publishing its parent)
        store.finish("unfinished", unfinished, Status.ERROR, NOW + 1, error="{}", has_parent=False)
        store.suspend("suspended", suspended, None, NOW + 1)

    keeper = quiet_keeper(RacingStore(store, meanwhile))
    for workflow_id, epoch in (("ended", ended), ("suspended", suspended), ("unfinished", unfinished)):
        keeper.track(workflow_id, epoch, "host:1")
    with caplog.at_level(logging.INFO, logger="durable.leases"):
        assert keeper.renew_once(now_ms=NOW + 2) == set()
    assert caplog.records == []


def test_a_lease_taken_over_or_cancelled_is_reported(store: Store, caplog):
    taken, cancelled, kept = (claimed(store, w) for w in ("taken", "cancelled", "kept"))
    # the lease of "taken" expired (a frozen process) and another worker claimed it
    assert store.claim("taken", "host:2", NOW + LEASE_MS + 1, LEASE_MS) is not None
    store.cancel("cancelled", NOW + 1)

    keeper = quiet_keeper(store)
    for workflow_id, epoch in (("taken", taken), ("cancelled", cancelled), ("kept", kept)):
        keeper.track(workflow_id, epoch, "host:1")
    with caplog.at_level(logging.INFO, logger="durable.leases"):
        assert keeper.renew_once(now_ms=NOW + 2) == {"taken", "cancelled"}
    reports = {(r.levelname, r.getMessage()) for r in caplog.records}
    assert reports == {
        ("WARNING", "execution of workflow taken lost its lease: taken over by another execution"),
        ("INFO", "execution of workflow cancelled lost its lease: cancelled"),
    }
