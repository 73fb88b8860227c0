"""The recovery sweeper: how soon a workflow nobody claimed is published
again, during and after a broker outage."""

from __future__ import annotations

from durable import Status
from durable.recovery import sweep_once

from .conftest import Cluster


class BrokerDown:
    """A dispatcher whose broker refuses every publish until it is back."""

    def __init__(self, inner: object) -> None:
        self.inner = inner
        self.up = False
        self.attempts = 0

    def publish(self, workflow_id: str, name: str, queue: str, priority: int = 0) -> bool:
        self.attempts += 1
        return self.up and self.inner.publish(workflow_id, name, queue, priority)  # type: ignore[attr-defined]


def test_a_message_lost_long_ago_is_published_again_within_the_cap(cluster: Cluster) -> None:
    dur = cluster.dur

    @dur.workflow()
    def waiting() -> str:
        return "ran"

    handle = waiting.start()
    cluster.dispatcher.pending.clear()  # the broker lost the message
    cluster.clock.advance(3600)  # an hour later nobody has claimed it
    assert cluster.sweep() == 1
    cluster.dispatcher.pending.clear()  # lost again
    cluster.clock.advance(dur.settings.redelivery_max_seconds)
    assert cluster.sweep() == 1, "waited an hour, yet published again within redelivery_max_seconds"
    cluster.drive()
    assert handle.result(timeout=5) == "ran"


def test_workflows_are_published_at_the_first_sweep_after_the_broker_returns(cluster: Cluster) -> None:
    dur = cluster.dur

    @dur.workflow()
    def patient(n: int) -> int:
        return n

    handles = [patient.start(n) for n in range(5)]
    cluster.dispatcher.pending.clear()  # the broker went down with the messages
    broker = BrokerDown(cluster.dispatcher)
    for _ in range(30):  # a long outage: sweeps every minute
        cluster.clock.advance(60)
        assert sweep_once(dur.store, broker, dur.settings, cluster.clock.now_ms()) == 0
    assert broker.attempts == 30  # one failed publish per sweep, not one per workflow
    broker.up = True
    cluster.clock.advance(1)
    assert sweep_once(dur.store, broker, dur.settings, cluster.clock.now_ms()) == 5
    cluster.drive()
    assert [h.result(timeout=5) for h in handles] == [0, 1, 2, 3, 4]
    assert all(dur.get(h.workflow_id).status == Status.SUCCESS for h in handles)
