"""durable: durable workflows on Celery, every step checkpointed before its
message is acknowledged. See docs/design.md for the contract.

The names that need the engine and the worker binding (`Durable` and the
messaging helpers) are imported on first use, so that a web app's
`from durable import DurableClient` loads neither. So are the client's
(`DurableClient`, `WorkflowHandle`, `StartOptions`: Celery, SQLAlchemy,
the drivers): `import durable` alone loads none of them, and `durable
worker` imports them once its start-up has paused the garbage collector
(durable/worker_command.py).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from . import errors
from .context import Context, context, gather, now, patched, sleep
from .records import ErrorInfo, Status, StepInfo, StepStatus, WorkflowStatus
from .retry import RetryPolicy, backoff_delay_seconds
from .sagas import compensate, saga
from .settings import Settings

if TYPE_CHECKING:
    from .app import Durable
    from .client import DurableClient, WorkflowHandle
    from .starting import StartOptions
    from .functions import StepFunction, WorkflowFunction
    from .helpers import get_event, recv, send, set_event

_LAZY = {
    "DurableClient": "durable.client",
    "WorkflowHandle": "durable.client",
    "StartOptions": "durable.starting",
    "Durable": "durable.app",
    "WorkflowFunction": "durable.functions",
    "StepFunction": "durable.functions",
    "send": "durable.helpers",
    "recv": "durable.helpers",
    "set_event": "durable.helpers",
    "get_event": "durable.helpers",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'durable' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__all__ = [
    "Durable",
    "DurableClient",
    "WorkflowHandle",
    "WorkflowFunction",
    "StepFunction",
    "StartOptions",
    "WorkflowStatus",
    "StepInfo",
    "ErrorInfo",
    "Status",
    "StepStatus",
    "RetryPolicy",
    "backoff_delay_seconds",
    "Settings",
    "Context",
    "context",
    "sleep",
    "now",
    "gather",
    "patched",
    "saga",
    "compensate",
    "send",
    "recv",
    "set_event",
    "get_event",
    "errors",
]
