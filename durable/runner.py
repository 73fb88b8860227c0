"""Runs one "look at workflow X" message: claim the workflow, then execute,
quarantine or reject it. Knows nothing of Celery; the worker binding calls
`Runner.execute` from its task, tests call it directly.

A claim that finds no live lease takes it; one that finds the previous
execution's lease expired counts a recovery, and past
`max_recovery_attempts` it quarantines the workflow instead
(MAX_RECOVERY_ATTEMPTS_EXCEEDED, already set by the claim).

The next link of a static chain (canvas.py) runs in the same delivery when
this worker consumes its queue (`local_links`, set by the worker binding):
the statement that ends a link inserts the next one already claimed by this
process, as a worker of that queue would have claimed it on receiving its
message, and the link runs at once. No message, no second commit, the same
lease, epoch and recovery as a published link (a dead process's claimed
link is expired and published by the sweeper). Within LOCAL_LINKS_SECONDS
of the delivery's start, so other messages get their turn; past it, or
when the link's queue is limited or not consumed here, it is published.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Protocol

from . import metrics
from . import serialization as ser
from . import tracing
from .database import retry_while_unavailable
from .dispatch import process_owner, publish_if_runnable
from .engine import ClaimNextLink, Collaborators, Ending, Execution
from .errors import MaxRecoveryAttemptsExceededError, UnknownWorkflowError
from .leases import LeaseKeeper
from .records import Status
from .breakers import CircuitBreaker
from .limits import QueueLimits
from .schedules import Schedule
from .store import HELD, NOT_GATED, Claim, claimed_columns, crash_text

logger = logging.getLogger("durable.runner")

# How long one delivery goes on running the links of a chain that follow
# (then the next is published: the worker's other messages get their turn).
LOCAL_LINKS_SECONDS = 2.0


class RegisteredWorkflow(Protocol):
    @property
    def fn(self) -> Callable[..., Any]: ...

    @property
    def max_recovery_attempts(self) -> int | None: ...

    @property
    def on_crash_queue(self) -> str | None:
        """Where the next attempt goes after an execution's process died
        (a dispatched step's `on_crash_queue`); None: where it was."""


class LocalLinks(Protocol):
    """Which workflows this worker runs at once instead of publishing
    (the worker binding: the queues it consumes, Celery's time limits,
    whether anyone watches task events)."""

    def runs_here(self, name: str, queue: str, carrier: str) -> bool:
        """Whether workflow `name` on `queue` may run in a delivery of
        `carrier` (the workflow whose message it is)."""


@dataclass(frozen=True)
class Delivery:
    """What one message came to. `kind`: "executed", "skipped" (a duplicate:
    the workflow ended, or a live execution holds it), "quarantined",
    "unknown" (no such workflow registered here) or "rerouted" (moved to its
    on_crash_queue). `ending`: how an execution stopped, when one ran."""

    kind: str  # or "held": its limited queue holds it back (flow.py)
    workflow_id: str
    ending: Ending | None = None
    error: str | None = None  # the recorded error of a workflow this delivery ended

    @property
    def ended(self) -> bool:
        """This delivery ended its workflow."""
        return self.kind in ("quarantined", "unknown") or (
            self.ending is not None and self.ending.kind in (Status.SUCCESS.value, Status.ERROR.value)
        )

    @property
    def next_link(self) -> Claim | None:
        return self.ending.next_link if self.ending is not None else None

    @property
    def failed(self) -> bool:
        return self.kind == "quarantined" or self.kind == "unknown" or (
            self.ending is not None and self.ending.kind == Status.ERROR.value
        )


class Runner:
    """Executes workflow messages in a worker process."""

    def __init__(
        self,
        collaborators: Collaborators,
        registry: Mapping[str, RegisteredWorkflow],
        owner: Callable[[], str] = process_owner,
        declared_queues: Mapping[str, QueueLimits] | None = None,
        declared_schedules: Mapping[str, Schedule] | None = None,
        declared_breakers: Mapping[str, CircuitBreaker] | None = None,
    ):
        self.collaborators = collaborators
        self.store = collaborators.store
        self.settings = collaborators.settings
        self.clock = collaborators.clock
        self.registry = registry
        self.owner = owner
        self.declared_queues = declared_queues if declared_queues is not None else {}
        self.declared_schedules = declared_schedules if declared_schedules is not None else {}
        self.declared_breakers = declared_breakers if declared_breakers is not None else {}
        self._limits: dict[str, QueueLimits] | None = None
        self.leases = LeaseKeeper(self.store, self.settings.lease_seconds, self.clock)
        self.local_links: LocalLinks | None = None  # set in a worker (celery_binding)

    def _max_recovery_attempts(self, name: str) -> int:
        workflow = self.registry.get(name)
        if workflow is not None and workflow.max_recovery_attempts is not None:
            return workflow.max_recovery_attempts
        return self.settings.max_recovery_attempts

    def execute(self, workflow_id: str, workflow_name: str | None = None) -> str:
        """What the message came to (see `Delivery.kind`)."""
        return self.deliver(workflow_id, workflow_name).kind

    def deliver(
        self, workflow_id: str, workflow_name: str | None = None, delivered_on: str | None = None
    ) -> Delivery:
        """Claim the workflow, then execute, quarantine, reroute or reject it.
        `delivered_on`: the queue the message came from, when known."""
        owner = self.owner()
        if self.leases.holds(workflow_id):  # another thread of this process runs it (threads pool)
            return Delivery("skipped", workflow_id)
        with self.store.db.pinned():
            limits = self.limits()
            gated = self._claim_gated(workflow_id, workflow_name, delivered_on, owner) if (
                delivered_on in limits
            ) else NOT_GATED
            if gated == HELD:
                return Delivery("held", workflow_id)
            claim = gated if isinstance(gated, Claim) else (
                None if gated is None else self._claim(workflow_id, workflow_name, owner)
            )
            if claim is None:
                return Delivery("skipped", workflow_id)
            self._count_claim(claim)
            claim_next = self._claim_next_link(claim, owner, limits)
            delivery = self._deliver_claimed(claim, workflow_id, delivered_on, owner, claim_next)
            self._note_end(claim, delivery, limits)
            while delivery.next_link is not None:  # a chain's next link, claimed here
                claim = delivery.next_link
                self._count_claim(claim)
                delivery = self._deliver_claimed(claim, claim.workflow_id, claim.queue, owner, claim_next)
                self._note_end(claim, delivery, limits)
            return delivery

    def _note_end(self, claim: Claim, delivery: Delivery, limits: Mapping[str, QueueLimits]) -> None:
        if delivery.ended:
            status = (
                Status.MAX_RECOVERY_ATTEMPTS_EXCEEDED.value if delivery.kind == "quarantined"
                else delivery.ending.kind if delivery.ending is not None else Status.ERROR.value
            )
            metrics.WORKFLOWS_ENDED.labels(claim.name, status).inc()
        if claim.queue in limits and delivery.ended:
            self._wake_held(claim.queue, limits[claim.queue])  # its slot is free

    def _claim_next_link(
        self, carrier: Claim, owner: str, limits: Mapping[str, QueueLimits]
    ) -> ClaimNextLink | None:
        """How this delivery claims a chain's next link to run it at once
        (see the module's docstring), or None: every link is published."""
        local = self.local_links
        if local is None or not carrier.continuation or carrier.queue in limits:
            return None
        until = time.monotonic() + LOCAL_LINKS_SECONDS
        lease_ms = int(self.leases.lease_seconds * 1000)

        def claim_next(row: dict[str, Any]) -> dict[str, Any] | None:
            workflow = self.registry.get(row["name"])
            if (
                time.monotonic() > until or workflow is None or workflow.on_crash_queue
                or row["queue"] in limits or row.get("start_at_ms") is not None or row.get("dedup_key")
                or not local.runs_here(row["name"], row["queue"], carrier.name)
            ):
                return None
            return claimed_columns(
                row, owner, self.clock.now_ms(), lease_ms, self._max_recovery_attempts(row["name"]),
                self.store.app_version,
            )

        return claim_next

    @staticmethod
    def _count_claim(claim: Claim) -> None:
        if claim.recovered:
            metrics.RECOVERIES.labels(metrics.death_cause(claim.last_death)).inc()
        elif not claim.steps:
            metrics.WORKFLOWS_STARTED.labels(claim.name).inc()
        if claim.status == Status.MAX_RECOVERY_ATTEMPTS_EXCEEDED.value:
            metrics.QUARANTINES.labels(claim.name).inc()

    def _deliver_claimed(
        self, claim: Claim, workflow_id: str, delivered_on: str | None, owner: str,
        claim_next: ClaimNextLink | None = None,
    ) -> Delivery:
        if claim.status == Status.MAX_RECOVERY_ATTEMPTS_EXCEEDED.value:
            return Delivery("quarantined", workflow_id, error=self._quarantine(claim))
        workflow = self.registry.get(claim.name)
        if workflow is None:
            return Delivery("unknown", workflow_id, error=self._reject_unknown(claim))
        if workflow.on_crash_queue:
            if claim.recovered and workflow.on_crash_queue != claim.queue:
                return self._reroute(claim, workflow.on_crash_queue, crashed=True)
            if delivered_on and delivered_on != claim.queue:
                # a message published before the move (a requeued or
                # swept one) must not run it on the pool it left
                return self._reroute(claim, claim.queue, crashed=False)
        self.leases.track(workflow_id, claim.epoch, owner)
        try:
            execution = Execution(claim, owner, self.collaborators, claim_next)
            ending = tracing.run_workflow(claim, owner, lambda: execution.run(workflow.fn))
        finally:
            self.leases.untrack(workflow_id)
        return Delivery("executed", workflow_id, ending, ending.error)

    # --- limited queues (flow.py) -------------------------------------------------

    def declare(self) -> dict[str, QueueLimits]:
        """Write the queues and schedules declared in code to the database
        (a worker does at start, before its pool forks), and read the limited
        queues, those declared by other code too."""
        now = self.clock.now_ms()
        for queue in self.declared_queues.values():
            retry_while_unavailable(lambda: self.store.upsert_queue(queue, now), "declaring a queue", clock=self.clock)
        for breaker in self.declared_breakers.values():
            retry_while_unavailable(
                lambda: self.store.upsert_breaker(breaker, now), "declaring a circuit breaker", clock=self.clock
            )
        for schedule in self.declared_schedules.values():
            retry_while_unavailable(
                lambda: self.store.upsert_schedule(schedule, now), "declaring a schedule", clock=self.clock
            )
        known = retry_while_unavailable(self.store.queue_limits, "reading queue limits", clock=self.clock)
        self._limits = {name: q for name, q in known.items() if q.limited}
        return self._limits

    def limits(self) -> dict[str, QueueLimits]:
        """The limited queues, read once per process."""
        return self._limits if self._limits is not None else self.declare()

    def _claim_gated(
        self, workflow_id: str, workflow_name: str | None, queue: str | None, owner: str
    ) -> Claim | str | None:
        lease_ms = int(self.leases.lease_seconds * 1000)  # longer where no parent process renews it
        return retry_while_unavailable(
            lambda: self.store.claim_gated(
                workflow_id, queue or "", owner, self.clock.now_ms(), lease_ms,
                self._max_recovery_attempts(workflow_name or ""),
            ),
            "claiming a workflow of a limited queue", clock=self.clock,
        )

    def _wake_held(self, queue: str, limits: QueueLimits) -> None:
        """A slot of the queue may have freed: publish the next held back."""
        if limits.concurrency is None and limits.partition_concurrency is None:
            return
        try:
            for row in self.store.held_to_wake(queue, limits, self.clock.now_ms()):
                self.collaborators.dispatcher.publish(row["workflow_id"], row["name"], row["queue"], row["priority"])
        except Exception as exc:  # noqa: BLE001 - the sweeper wakes them too
            logger.warning("could not wake the next workflow of queue %r: %s", queue, exc)

    def _reroute(self, claim: Claim, queue: str, crashed: bool) -> Delivery:
        """Release the claim and publish the workflow to `queue`. After a
        crash, the crash is noted against the step in flight (a dispatched
        step's workflow has one step, #0)."""
        now = self.clock.now_ms()
        crash = None
        if crashed:
            step_name = claim.steps[0]["name"] if 0 in claim.steps else claim.name.split(":", 1)[-1]
            attempts = claim.steps[0]["attempts"] if 0 in claim.steps else 0
            crash = (0, step_name, crash_text(claim.last_death, step_name, attempts + 1))
        moved = retry_while_unavailable(
            lambda: self.store.reroute(
                claim.workflow_id, claim.epoch, queue, now,
                now + int(self.settings.redelivery_seconds * 1000), crash,
            ),
            "moving a workflow to its on_crash_queue", clock=self.clock,
        )
        if moved and crashed:
            logger.warning(
                "workflow %s lost its worker (%s): next attempt on queue %r",
                claim.workflow_id, claim.last_death or "lease expired", queue,
            )
        if moved:
            self.collaborators.dispatcher.publish(claim.workflow_id, claim.name, queue)
        return Delivery("rerouted", claim.workflow_id)

    def _claim(self, workflow_id: str, workflow_name: str | None, owner: str) -> Claim | None:
        lease_ms = int(self.leases.lease_seconds * 1000)  # longer where no parent process renews it
        return retry_while_unavailable(
            lambda: self.store.claim(
                workflow_id, owner, self.clock.now_ms(), lease_ms,
                self._max_recovery_attempts, name_hint=workflow_name,
            ),
            "claiming a workflow", clock=self.clock,
        )

    def _quarantine(self, claim: Claim) -> str:
        """The claim quarantined the workflow (its error, last crash and the
        parent's wake-up are written); publish the parent now. Returns the
        error, serialized."""
        error = MaxRecoveryAttemptsExceededError(
            f"lost its worker {claim.recovery_attempts} times (max_recovery_attempts="
            f"{claim.max_recovery_attempts}); last: {claim.last_death or 'lease expired'}"
        )
        logger.error("workflow %s quarantined: %s", claim.workflow_id, error)
        if claim.parent_workflow_id:
            publish_if_runnable(self.store, self.collaborators.dispatcher, claim.parent_workflow_id)
        return ser.dumps_error(error)

    def _reject_unknown(self, claim: Claim) -> str:
        error = UnknownWorkflowError(
            f"no workflow named {claim.name!r} is registered in this worker "
            f"(known: {sorted(self.registry)[:20]})"
        )
        ended, parent = self.store.finish(
            claim.workflow_id, claim.epoch, Status.ERROR, self.clock.now_ms(),
            error=ser.dumps_error(error),
        )
        logger.error("%s", error)
        if ended and parent:
            publish_if_runnable(self.store, self.collaborators.dispatcher, parent)
        return ser.dumps_error(error)
