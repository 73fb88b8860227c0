"""Checking a start's arguments by the workflow's name alone, as a web app
does (it has no workflow code): against the parameters every worker records
at its start (`durable_workflow_schemas`, see inputs.py)."""

from __future__ import annotations

import json
from typing import Any, Sequence

from .clock import Clock
from .database import Database, retry_while_unavailable
from .db_errors import is_transient
from .errors import DatabaseUnavailableError, UnknownWorkflowError
from .inputs import check_against_schema
from .starting import START_WAIT_SECONDS
from .store.workflow_schemas import workflow_schema

INTERNAL_PREFIX = "durable."  # dispatched steps, canvases: never recorded


class RecordedInputs:
    """The parameters workers recorded for each workflow, as a client checks
    arguments against them. A workflow's record is kept for
    CACHE_SECONDS (a deploy that changes a signature is seen that late)."""

    CACHE_SECONDS = 10.0

    def __init__(self, db: Database, clock: Clock):
        self.db = db
        self.clock = clock
        # name -> (read at, any workflow recorded, its parameters or None, validators)
        self._cache: dict[str, tuple[float, bool, dict[str, Any] | None, dict[str, Any]]] = {}

    def check(
        self, workflow_name: str, args: Sequence[Any], kwargs: dict[str, Any], allow_unknown: bool
    ) -> None:
        """WorkflowInputError when the arguments do not fit the recorded
        parameters; UnknownWorkflowError for a name never recorded (unless
        allowed, or nothing is recorded at all)."""
        if workflow_name.startswith(INTERNAL_PREFIX):  # dispatched steps, canvases: not recorded
            return
        cached = self._cache.get(workflow_name)
        fresh = cached is None or self.clock.monotonic() - cached[0] > self.CACHE_SECONDS
        if fresh:
            cached = self._read(workflow_name)
        assert cached is not None
        _, any_recorded, recorded, validators = cached
        if recorded is None and any_recorded and not allow_unknown:
            if not fresh:  # a refusal is never from the cache: a worker may have just recorded it
                self._cache.pop(workflow_name)
                return self.check(workflow_name, args, kwargs, allow_unknown)
            raise UnknownWorkflowError(
                f"no worker has registered a workflow named {workflow_name!r} (workers record "
                "theirs at start): check the name, or pass allow_unknown=True to enqueue it "
                "for workers yet to come; nothing was written"
            )
        if recorded is not None:
            check_against_schema(workflow_name, recorded, args, kwargs, validators)

    def known(self, workflow_name: str, allow_unknown: bool) -> bool:
        """Whether check() would decide from what it holds, reading nothing."""
        if workflow_name.startswith(INTERNAL_PREFIX):
            return True
        cached = self._cache.get(workflow_name)
        if cached is None or self.clock.monotonic() - cached[0] > self.CACHE_SECONDS:
            return False
        _, any_recorded, recorded, _ = cached
        return recorded is not None or not any_recorded or allow_unknown

    def _read(self, workflow_name: str) -> tuple[float, bool, dict[str, Any] | None, dict[str, Any]]:
        try:
            any_recorded, text = retry_while_unavailable(
                lambda: workflow_schema(self.db, workflow_name), "reading a workflow's parameters",
                give_up_after_seconds=START_WAIT_SECONDS, clock=self.clock,
            )
        except Exception as exc:
            if is_transient(exc):
                raise DatabaseUnavailableError(
                    f"could not start workflow {workflow_name!r}: the database is unavailable ({exc})"
                ) from exc
            raise
        recorded = None if text is None else json.loads(text)
        entry = self._cache[workflow_name] = (self.clock.monotonic(), any_recorded, recorded, {})
        return entry
