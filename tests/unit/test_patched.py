"""Safe deploys: `durable.patched` lets a deploy change a workflow's steps
while executions of the old code are suspended mid-way."""

from __future__ import annotations

from typing import Any

import pytest

import durable
from durable import Status
from durable.errors import NonDeterministicWorkflowError

from .conftest import Cluster

DAY = 86_400


def _deploy(cluster: Cluster, name: str, fn: Any) -> None:
    """New code for a registered workflow, as new workers would run it."""
    cluster.dur.registry[name].fn = fn


def test_a_deploy_that_changes_steps_lets_suspended_executions_finish(cluster: Cluster) -> None:
    dur = cluster.dur
    ran: list[str] = []

    def step(label: str) -> Any:
        @dur.step(name=label)
        def run() -> str:
            ran.append(label)
            return label
        return run

    charge_v1, charge_v2, ship = step("charge"), step("charge_v2"), step("ship")

    @dur.workflow(name="order")
    def order_v1() -> list[str]:
        first = charge_v1()
        durable.sleep(DAY)
        return [first, ship()]

    old = [order_v1.start() for _ in range(5)]
    cluster.drive()
    assert [h.status().status for h in old] == [Status.PENDING] * 5  # all five suspended at the sleep

    def order_v2() -> list[str]:
        first = charge_v2() if durable.patched("charge-v2") else charge_v1()
        durable.sleep(DAY)
        return [first, ship()]

    _deploy(cluster, "order", order_v2)
    new = order_v1.start()
    cluster.drive()
    cluster.clock.advance(DAY + 1)
    cluster.sweep()
    cluster.drive()
    assert [h.result(timeout=0) for h in old] == [["charge", "ship"]] * 5  # recorded before the patch
    assert new.result(timeout=0) == ["charge_v2", "ship"]  # new starts take the new path
    assert ran.count("charge") == 5 and ran.count("charge_v2") == 1
    assert [s.name for s in dur.list_steps(new.workflow_id)][0] == "durable.patch:charge-v2"


def test_real_divergence_is_still_non_determinism(cluster: Cluster) -> None:
    dur = cluster.dur

    @dur.step(name="a")
    def a() -> int:
        return 1

    @dur.step(name="b")
    def b() -> int:
        return 2

    @dur.workflow(name="diverges")
    def v1() -> int:
        a()
        durable.sleep(DAY)
        return 0

    handle = v1.start()
    cluster.drive()
    _deploy(cluster, "diverges", lambda: b())  # changed without a patch
    cluster.clock.advance(DAY + 1)
    cluster.sweep()
    cluster.drive()
    with pytest.raises(NonDeterministicWorkflowError):
        handle.result(timeout=0)


def test_patched_outside_a_workflow_and_bad_ids() -> None:
    assert durable.patched("anything") is True
    for bad in ("", None, "x" * 201):
        with pytest.raises(ValueError):
            durable.patched(bad)  # type: ignore[arg-type]


def test_each_execution_records_the_app_version_it_ran(cluster: Cluster) -> None:
    dur = cluster.dur

    @dur.workflow(name="versioned")
    def versioned() -> str:
        durable.sleep(DAY)
        return "done"

    dur.store.app_version = "v1"  # as DURABLE_APP_VERSION=v1 sets it
    handle = versioned.start()
    cluster.drive()
    assert handle.status().app_version == "v1"
    dur.store.app_version = "v2"  # the deploy: new workers
    cluster.clock.advance(DAY + 1)
    cluster.sweep()
    cluster.drive()
    assert handle.result(timeout=0) == "done" and handle.status().app_version == "v2"
