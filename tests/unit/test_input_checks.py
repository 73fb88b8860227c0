"""Bad input is refused at once with a clear error, and nothing is written."""

from __future__ import annotations

import math

import pytest

from durable import RetryPolicy, StartOptions
from durable.errors import SerializationError
from durable.starting import MAX_NAME_LENGTH, derived_child_id, new_workflow_row

from .conftest import Cluster


@pytest.mark.parametrize("options, message", [
    (dict(queue="q" * 1000), "queue must be a non-empty string of at most 255"),
    (dict(queue=""), "queue must be a non-empty string"),
    (dict(workflow_id="order\n1"), "control characters"),
    (dict(workflow_id="order\x001"), "control characters"),
    (dict(dedup_key="k" * 256), "dedup_key"),
    (dict(timeout=math.inf), "timeout must be a finite number"),
    (dict(timeout=math.nan), "timeout must be a finite number"),
    (dict(timeout=True), "timeout must be a finite number"),
    (dict(priority=10), "priority"),
])
def test_start_options_are_checked(options: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        StartOptions(**options)  # type: ignore[arg-type]


@pytest.mark.parametrize("policy, message", [
    (dict(interval_seconds=math.nan), "interval must be a finite number"),
    (dict(max_interval_seconds=math.inf), "max_interval must be a finite number"),
    (dict(backoff=math.nan), "backoff must be a finite number"),
    (dict(timeout_seconds=math.inf), "timeout must be a finite number"),
    (dict(retries=True), "retries must be an integer"),
])
def test_retry_policies_are_checked(policy: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RetryPolicy(**policy)  # type: ignore[arg-type]


def test_names_are_checked_when_decorating(cluster: Cluster) -> None:
    dur = cluster.dur
    with pytest.raises(ValueError, match="workflow name"):
        dur.workflow(name="w" * 300)(lambda: None)
    with pytest.raises(ValueError, match="step name"):
        dur.step(name="bad\nname")(lambda: None)


def test_arguments_are_a_list_and_keyword_names(cluster: Cluster) -> None:
    dur = cluster.dur

    @dur.workflow()
    def process_order(order_id: str) -> str:
        return order_id

    # what DurableClient.enqueue receives from a web app
    with pytest.raises(TypeError, match="args must be a list or tuple"):
        new_workflow_row(dur.settings, "process_order", "o-1", {})  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="string keys"):
        new_workflow_row(dur.settings, "process_order", [], {1: "x"})  # type: ignore[dict-item]
    assert dur.list_workflows() == []  # nothing was written


def test_a_payload_over_the_limit_is_refused_before_anything_is_written(cluster: Cluster) -> None:
    dur = cluster.dur
    limit = dur.settings.max_payload_bytes

    @dur.workflow()
    def takes_blob(blob: str) -> int:
        return len(blob)

    with pytest.raises(SerializationError, match="DURABLE_MAX_PAYLOAD_BYTES"):
        takes_blob.start("x" * (limit + 1))
    assert dur.list_workflows() == [] and cluster.dispatcher.published == []

    @dur.step()
    def makes_blob() -> str:
        return "y" * (limit + 1)

    @dur.workflow()
    def returns_blob() -> str:
        return makes_blob()

    handle = returns_blob.start()
    cluster.drive()
    with pytest.raises(SerializationError, match="the result of step"):
        handle.result(timeout=5)


def test_a_childs_derived_id_fits_its_column_and_is_stable() -> None:
    parent = "p" * MAX_NAME_LENGTH
    child = derived_child_id(parent, 12)
    assert len(child) <= MAX_NAME_LENGTH and child.endswith("-12")
    assert child == derived_child_id(parent, 12) != derived_child_id(parent, 13)
    assert derived_child_id("short", 3) == "short-3"
