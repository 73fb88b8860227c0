"""A worker starting on a host finds the leases of that host's dead
processes and expires them at once, and its first sweep publishes their
workflows without waiting a sweep interval; live processes and other
hosts keep their leases."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import time

from durable import Status
from durable.local_processes import process_is_gone, this_host
from durable.recovery import Sweeper, reclaim_local_leases
from tests.harness import wait_for

from .conftest import Cluster, SimulatedCrash


def _dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def _start_held_workflow(cluster: Cluster, owner: str) -> str:
    dur = cluster.dur
    dur.runner.owner = lambda: owner

    @dur.step(name=f"hang-{owner}")
    def hang() -> None:
        raise SimulatedCrash()

    @dur.workflow(name=f"held-{owner}")
    def held() -> str:
        hang()
        return "done"

    handle = held.start()
    cluster.drive()
    return handle.workflow_id


def test_leases_of_dead_local_processes_are_expired_at_once(cluster: Cluster) -> None:
    host = this_host()
    dead = _start_held_workflow(cluster, f"{host}:{_dead_pid()}")
    alive = _start_held_workflow(cluster, f"{host}:{os.getppid()}")
    elsewhere = _start_held_workflow(cluster, f"some-other-host:{_dead_pid()}")

    now = cluster.clock.now_ms()  # long before any lease runs out
    assert reclaim_local_leases(cluster.dur.store, host, now) == [dead]
    assert cluster.sweep() == 1
    cluster.dur.runner.owner = lambda: f"{host}:{os.getpid()}"
    assert cluster.drive() == ["crashed"]  # it ran again at once (and its step crashed again)
    status = cluster.status(dead)
    assert status.recovery_attempts == 1 and "process gone" in (status.last_death or "")
    for untouched in (alive, elsewhere):
        assert cluster.status(untouched).recovery_attempts == 0
        assert cluster.status(untouched).status == Status.PENDING


def test_a_starting_sweeper_publishes_the_work_of_dead_local_processes_at_once(cluster: Cluster) -> None:
    host = this_host()
    dead = _start_held_workflow(cluster, f"{host}:{_dead_pid()}")
    alive = _start_held_workflow(cluster, f"{host}:{os.getppid()}")
    elsewhere = _start_held_workflow(cluster, f"some-other-host:{_dead_pid()}")
    cluster.dispatcher.published.clear()

    # no lease has run out, and the next sweep would be an hour away
    settings = dataclasses.replace(cluster.dur.settings, sweep_interval_seconds=3600.0)
    sweeper = Sweeper(cluster.dur.store, cluster.dispatcher, settings, cluster.clock)
    sweeper.start()
    try:
        wait_for(lambda: cluster.dispatcher.published, 10, "the first sweep")
    finally:
        sweeper.stop()
    assert cluster.dispatcher.published == [dead]
    for untouched in (alive, elsewhere):
        row = cluster.dur.store.workflow_row(untouched)
        assert row is not None and row["lease_expires_at_ms"] > cluster.clock.now_ms()


def test_a_lease_that_ran_out_while_the_worker_started_is_published_at_its_first_sweep(
    cluster: Cluster,
) -> None:
    """No dead local process here: the first sweep runs at once anyway (a
    slow start can outlast the lease of the worker it replaces)."""
    ran_out = _start_held_workflow(cluster, f"some-other-host:{_dead_pid()}")
    cluster.clock.advance(cluster.dur.settings.lease_seconds + 1)
    alive = _start_held_workflow(cluster, f"{this_host()}:{os.getppid()}")
    cluster.dispatcher.published.clear()

    settings = dataclasses.replace(cluster.dur.settings, sweep_interval_seconds=3600.0)
    sweeper = Sweeper(cluster.dur.store, cluster.dispatcher, settings, cluster.clock)
    sweeper.start()
    try:
        wait_for(lambda: cluster.dispatcher.published, 10, "the first sweep")
    finally:
        sweeper.stop()
    assert cluster.dispatcher.published == [ran_out]
    assert alive not in cluster.dispatcher.published


def test_a_reused_pid_is_not_the_owner() -> None:
    now_ms = int(time.time() * 1000)
    assert process_is_gone(_dead_pid(), now_ms)
    # this process started before "now": it may be the owner of a lease expiring later
    assert not process_is_gone(os.getppid(), now_ms + 5_000)
    # a process that started after a lease expired cannot have renewed it: its pid was reused
    fresh = subprocess.Popen(["sleep", "30"])
    try:
        assert process_is_gone(fresh.pid, now_ms - 3_600_000)
        assert not process_is_gone(fresh.pid, now_ms + 3_600_000)
    finally:
        fresh.kill()
        fresh.wait()
