"""durable: durable workflows on Celery, every step checkpointed before its
message is acknowledged. See DESIGN.md for the contract."""

from . import errors
from .app import Durable, StartOptions, StepFunction, WorkflowFunction
from .client import DurableClient, WorkflowHandle
from .context import Context, context, gather, now, sleep
from .messaging import get_event, recv, send, set_event
from .records import ErrorInfo, Status, StepInfo, StepStatus, WorkflowStatus
from .retry import RetryPolicy, backoff_delay_seconds
from .settings import Settings

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
    "send",
    "recv",
    "set_event",
    "get_event",
    "errors",
]
