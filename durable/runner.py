"""Runs one "look at workflow X" message: claim the workflow, then execute,
quarantine or reject it. Knows nothing of Celery; the worker binding calls
`Runner.execute` from its task, tests call it directly.

A claim that finds no live lease takes it; one that finds the previous
execution's lease expired counts a recovery, and past
`max_recovery_attempts` it quarantines the workflow instead
(MAX_RECOVERY_ATTEMPTS_EXCEEDED, already set by the claim).
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Mapping, Protocol

from . import serialization as ser
from .database import retry_while_unavailable
from .dispatch import process_owner, publish_if_runnable
from .engine import Collaborators, Execution
from .errors import UnknownWorkflowError
from .leases import LeaseKeeper
from .records import Status
from .store import Claim

logger = logging.getLogger("durable.runner")


class RegisteredWorkflow(Protocol):
    @property
    def fn(self) -> Callable[..., Any]: ...

    @property
    def max_recovery_attempts(self) -> int | None: ...


class Runner:
    """Executes workflow messages in a worker process."""

    def __init__(
        self,
        collaborators: Collaborators,
        registry: Mapping[str, RegisteredWorkflow],
        owner: Callable[[], str] = process_owner,
    ):
        self.collaborators = collaborators
        self.store = collaborators.store
        self.settings = collaborators.settings
        self.clock = collaborators.clock
        self.registry = registry
        self.owner = owner
        self.leases = LeaseKeeper(self.store, self.settings.lease_seconds, self.clock)

    def _max_recovery_attempts(self, name: str) -> int:
        workflow = self.registry.get(name)
        if workflow is not None and workflow.max_recovery_attempts is not None:
            return workflow.max_recovery_attempts
        return self.settings.max_recovery_attempts

    def execute(self, workflow_id: str, workflow_name: str | None = None) -> str:
        """What the message came to: "executed", "skipped" (a duplicate: the
        workflow ended, or a live execution holds it), "quarantined" or
        "unknown" (no such workflow registered here)."""
        owner = self.owner()
        with self.store.db.pinned():
            claim = self._claim(workflow_id, workflow_name, owner)
            if claim is None:
                return "skipped"
            if claim.status == Status.MAX_RECOVERY_ATTEMPTS_EXCEEDED.value:
                self._quarantine(claim)
                return "quarantined"
            workflow = self.registry.get(claim.name)
            if workflow is None:
                self._reject_unknown(claim)
                return "unknown"
            self.leases.track(workflow_id, claim.epoch, owner)
            try:
                Execution(claim, owner, self.collaborators).run(workflow.fn)
            finally:
                self.leases.untrack(workflow_id)
            return "executed"

    def _claim(self, workflow_id: str, workflow_name: str | None, owner: str) -> Claim | None:
        lease_ms = int(self.settings.lease_seconds * 1000)
        return retry_while_unavailable(
            lambda: self.store.claim(
                workflow_id, owner, self.clock.now_ms(), lease_ms,
                self._max_recovery_attempts, name_hint=workflow_name,
            ),
            "claiming a workflow", clock=self.clock,
        )

    def _quarantine(self, claim: Claim) -> None:
        """The claim quarantined the workflow (its error, last crash and the
        parent's wake-up are written); publish the parent now."""
        logger.error(
            "workflow %s quarantined: lost its worker %d times (max_recovery_attempts=%d); last: %s",
            claim.workflow_id, claim.recovery_attempts, claim.max_recovery_attempts,
            claim.last_death or "lease expired",
        )
        if claim.parent_workflow_id:
            publish_if_runnable(self.store, self.collaborators.dispatcher, claim.parent_workflow_id)

    def _reject_unknown(self, claim: Claim) -> None:
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
