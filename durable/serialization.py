"""JSON with codecs for common types. No pickle: nothing read back can run
code beyond building a dataclass, Enum or pydantic model of a class it
finds by name, and that name is resolved from an allowlist before anything
is imported (see `resolve_class`).

A tagged value is a one-key object {"$type": ...}; a plain dict that happens to
use a "$" key is escaped, so any JSON-able dict round-trips unchanged.

A value is checked when it is written: a class that another process could
not find (defined in `__main__` or inside a function) or that its stored
fields could not rebuild (a dataclass field with `init=False`) is refused
with SerializationError at the start or step that produced it, not found
out on replay.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import decimal
import enum
import importlib
import inspect
import json
import sys
import traceback as tb
import uuid
from typing import Any, Callable

from .errors import (
    AwaitedWorkflowCancelledError,
    AwaitedWorkflowMaxRecoveryAttemptsExceededError,
    SerializationError,
    WorkflowFailedError,
    WorkflowTimeoutError,
)
from .records import Status

FORMAT = "json-v1"  # recorded beside every payload

_TAG = "$t"
_VALUE = "v"


def _qualified_name(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


# --- which classes a stored value may name ------------------------------------

_registered_types: dict[str, type] = {}  # "module:qualname" -> class
_allowed_modules: set[str] = set()  # modules (and their submodules) that may be imported
_readable: dict[type, str | None] = {}  # class -> why it cannot be read back (None: it can)


def register_type(cls: type) -> type:
    """Allow stored values to name `cls` (usable as a class decorator).
    Every class this process serializes is registered as it is written."""
    _registered_types[_qualified_name(cls)] = cls
    return cls


def allow_module(name: str) -> None:
    """Allow stored values to name classes of module `name` or of any module
    under it (a package), importing it if it is not imported yet. Modules
    a process has already imported (its workflows', DURABLE_IMPORTS) need
    no allowing."""
    if not name or not all(part.isidentifier() for part in name.split(".")):
        raise ValueError(f"not a module name: {name!r}")
    _allowed_modules.add(name)


def _module_allowed(module_name: str) -> bool:
    parts = module_name.split(".")
    return any(".".join(parts[:i]) in _allowed_modules for i in range(1, len(parts) + 1))


def resolve_class(module_name: str, qualname: str) -> Any:
    """The object a stored name refers to, from (1) the types registered in
    this process, (2) a module this process has already imported, or (3) a
    module allowed with `allow_module`, the only case that imports. Any
    other name raises SerializationError before anything is imported."""
    registered = _registered_types.get(f"{module_name}:{qualname}")
    if registered is not None:
        return registered
    module = sys.modules.get(module_name)
    if module is None:
        if not _module_allowed(module_name):
            raise SerializationError(
                f"stored class {module_name}:{qualname} is in module {module_name!r}, which this "
                "process has not imported and may not import: import it in the worker "
                "(DURABLE_IMPORTS), or allow it with durable.serialization.allow_module()"
            )
        try:
            module = importlib.import_module(module_name)
        except Exception as exc:  # noqa: BLE001 - any import failure is a bad stored name here
            raise SerializationError(f"cannot import module {module_name!r} of a stored class: {exc}") from exc
    obj: Any = module
    for part in qualname.split("."):
        if not part.isidentifier():
            raise SerializationError(f"not a class name: {module_name}:{qualname}")
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise SerializationError(f"stored class {module_name}:{qualname} does not exist") from None
    return obj


def _unreadable_reason(cls: type) -> str | None:
    """Why a value of `cls` written now could not be read back by another
    process (None: it can). Cached: this runs for every tagged value."""
    if cls in _readable:
        return _readable[cls]
    name = f"{cls.__module__}.{cls.__qualname__}"
    reason: str | None = None
    if "<locals>" in cls.__qualname__:
        reason = f"class {name} is defined inside a function: no other process can find it"
    elif cls.__module__ == "__main__":
        reason = (
            f"class {name} is defined in __main__ (the script being run): a worker cannot import "
            "it; define it in a module"
        )
    else:
        try:
            found = resolve_class(cls.__module__, cls.__qualname__) if cls.__module__ in sys.modules else None
        except SerializationError:
            found = None
        if found is not cls:
            reason = f"class {name} cannot be found again under its own name"
        elif dataclasses.is_dataclass(cls):
            reason = _dataclass_unbuildable(cls, name)
    _readable[cls] = reason
    if reason is None:
        register_type(cls)
    return reason


def _dataclass_unbuildable(cls: type, name: str) -> str | None:
    """A dataclass is read back as cls(**its fields): each field must be a
    parameter of its constructor, and every required parameter a field."""
    field_names = [f.name for f in dataclasses.fields(cls)]
    not_init = [f.name for f in dataclasses.fields(cls) if not f.init]
    if not_init:
        return (
            f"dataclass {name} has fields with init=False ({', '.join(not_init)}): it cannot be "
            "rebuilt from its stored fields; store a plain dict or a dataclass without them"
        )
    try:
        parameters = inspect.signature(cls).parameters.values()
    except (TypeError, ValueError):
        return None  # no signature to compare: trust the generated __init__
    if any(p.kind is p.VAR_KEYWORD for p in parameters):
        accepted = set(field_names)
    else:
        accepted = {p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    required = {
        p.name for p in parameters
        if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    }
    missing = sorted(required - set(field_names))
    unknown = sorted(set(field_names) - accepted)
    if missing or unknown:
        return (
            f"dataclass {name} cannot be rebuilt from its stored fields: its constructor "
            + (f"requires {', '.join(missing)}, which are not fields" if missing else "")
            + ("; " if missing and unknown else "")
            + (f"does not take {', '.join(unknown)}" if unknown else "")
        )
    return None


def _checked(cls: type) -> str:
    reason = _unreadable_reason(cls)
    if reason is not None:
        raise SerializationError(f"cannot store a {cls.__qualname__}: {reason}")
    return _qualified_name(cls)


def _is_pydantic_model(value: Any) -> bool:
    return hasattr(type(value), "model_dump") and hasattr(type(value), "model_validate")


def _encode(value: Any) -> Any:
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, enum.Enum):  # before int/str: IntEnum is an int
        return {_TAG: "enum", "cls": _checked(type(value)), _VALUE: _encode(value.value)}
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            return {_TAG: "float", _VALUE: repr(value)}
        return value
    if isinstance(value, list):
        return [_encode(v) for v in value]
    if isinstance(value, dict):
        if all(isinstance(k, str) for k in value):
            encoded = {k: _encode(v) for k, v in value.items()}
            if any(k.startswith("$") for k in value):
                return {_TAG: "dict", _VALUE: encoded}
            return encoded
        return {_TAG: "map", _VALUE: [[_encode(k), _encode(v)] for k, v in value.items()]}
    if isinstance(value, tuple):
        return {_TAG: "tuple", _VALUE: [_encode(v) for v in value]}
    if isinstance(value, (set, frozenset)):
        kind = "frozenset" if isinstance(value, frozenset) else "set"
        return {_TAG: kind, _VALUE: [_encode(v) for v in value]}
    if isinstance(value, dt.datetime):
        return {_TAG: "datetime", _VALUE: value.isoformat()}
    if isinstance(value, dt.date):
        return {_TAG: "date", _VALUE: value.isoformat()}
    if isinstance(value, dt.time):
        return {_TAG: "time", _VALUE: value.isoformat()}
    if isinstance(value, dt.timedelta):
        return {_TAG: "timedelta", _VALUE: value.total_seconds()}
    if isinstance(value, uuid.UUID):
        return {_TAG: "uuid", _VALUE: str(value)}
    if isinstance(value, decimal.Decimal):
        return {_TAG: "decimal", _VALUE: str(value)}
    if isinstance(value, (bytes, bytearray)):
        return {_TAG: "bytes", _VALUE: base64.b64encode(bytes(value)).decode("ascii")}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        cls_name = _checked(type(value))
        fields = {f.name: _encode(getattr(value, f.name)) for f in dataclasses.fields(value)}
        return {_TAG: "dataclass", "cls": cls_name, _VALUE: fields}
    if _is_pydantic_model(value):
        cls_name = _checked(type(value))
        data = value.model_dump(mode="json")
        return {_TAG: "pydantic", "cls": cls_name, _VALUE: data}
    raise SerializationError(
        f"cannot serialize a value of type {type(value).__module__}.{type(value).__qualname__}: "
        f"{_short_repr(value)} (durable stores JSON; use a dataclass, pydantic model or plain data)"
    )


def _decode(value: Any) -> Any:
    if isinstance(value, list):
        return [_decode(v) for v in value]
    if not isinstance(value, dict):
        return value
    tag = value.get(_TAG)
    if tag is None:
        return {k: _decode(v) for k, v in value.items()}
    raw: Any = value.get(_VALUE)  # JSON: what it holds depends on the tag
    if tag == "dict":
        return {k: _decode(v) for k, v in raw.items()}
    if tag == "map":
        return {_decode(k): _decode(v) for k, v in raw}
    if tag == "tuple":
        return tuple(_decode(v) for v in raw)
    if tag == "set":
        return {_decode(v) for v in raw}
    if tag == "frozenset":
        return frozenset(_decode(v) for v in raw)
    if tag == "float":
        return float(raw)
    if tag == "datetime":
        return dt.datetime.fromisoformat(raw)
    if tag == "date":
        return dt.date.fromisoformat(raw)
    if tag == "time":
        return dt.time.fromisoformat(raw)
    if tag == "timedelta":
        return dt.timedelta(seconds=raw)
    if tag == "uuid":
        return uuid.UUID(raw)
    if tag == "decimal":
        return decimal.Decimal(raw)
    if tag == "bytes":
        return base64.b64decode(raw, validate=True)
    if tag in ("enum", "dataclass", "pydantic"):
        cls = _import_class(value["cls"], tag)
        if tag == "enum":
            return cls(_decode(raw))
        if tag == "dataclass":
            return cls(**{k: _decode(v) for k, v in raw.items()})
        return cls.model_validate(raw)
    raise SerializationError(f"unknown stored type tag {tag!r}")


def _import_class(name: Any, tag: str) -> Any:
    if not isinstance(name, str) or ":" not in name:
        raise SerializationError(f"bad stored {tag} class name {name!r}")
    module_name, _, qualname = name.partition(":")
    cls = resolve_class(module_name, qualname)
    valid = (
        (tag == "enum" and isinstance(cls, type) and issubclass(cls, enum.Enum))
        or (tag == "dataclass" and dataclasses.is_dataclass(cls))
        or (tag == "pydantic" and hasattr(cls, "model_validate"))
    )
    if not valid:
        raise SerializationError(f"stored class {name!r} is not a {tag}")
    return cls


def _short_repr(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False)  # json.dumps builds one per call


def dumps(value: Any) -> str:
    """Encode a value as JSON text; SerializationError names what cannot be stored."""
    try:
        return _ENCODER.encode(_encode(value))
    except SerializationError:
        raise
    except (TypeError, ValueError, RecursionError) as exc:
        raise SerializationError(f"cannot serialize value: {exc}") from exc


def loads(text: str | None) -> Any:
    """Decode a stored value; any failure (bad JSON, an unknown or refused
    class, a constructor that raises) is a SerializationError."""
    if text is None:
        return None
    try:
        return _decode(json.loads(text))
    except SerializationError:
        raise
    except Exception as exc:  # noqa: BLE001 - whatever a stored value makes fail
        raise SerializationError(f"cannot read stored value: {type(exc).__name__}: {exc}") from exc


def dumps_inputs(args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    return dumps({"args": list(args), "kwargs": kwargs})


def loads_inputs(text: str) -> tuple[list[Any], dict[str, Any]]:
    data = loads(text)
    if (not isinstance(data, dict) or not isinstance(data.get("args"), list)
            or not isinstance(data.get("kwargs"), dict)):
        raise SerializationError(f"stored inputs are not {{args, kwargs}}: {_short_repr(data)}")
    return list(data["args"]), dict(data["kwargs"])


# --- errors -----------------------------------------------------------------


def error_to_dict(exc: BaseException) -> dict[str, Any]:
    """Type, message and traceback, plus the constructor arguments when they are JSON-able."""
    record: dict[str, Any] = {
        "type": f"{type(exc).__module__}.{type(exc).__qualname__}",
        "message": _safe_text(exc, str),
        "traceback": _safe_text(exc, lambda e: "".join(tb.format_exception(type(e), e, e.__traceback__))),
    }
    try:
        reduced = exc.__reduce__()
        args = reduced[1] if isinstance(reduced, tuple) and len(reduced) > 1 else exc.args
        record["args"] = _encode(list(args))
        json.dumps(record["args"])
    except Exception:
        record.pop("args", None)
    return record


def _safe_text(exc: BaseException, render: Callable[[BaseException], str]) -> str:
    """User exceptions may fail to render (a __str__ that raises): an error
    must still be recorded, or its workflow would stay PENDING."""
    try:
        return render(exc)
    except Exception as failure:  # noqa: BLE001 - any failure to render
        return f"<{type(exc).__qualname__}: could not be rendered: {type(failure).__qualname__}>"


def dumps_error(exc: BaseException) -> str:
    return json.dumps(error_to_dict(exc), separators=(",", ":"))


def loads_error(text: str | None) -> dict[str, Any] | None:
    if text is None:
        return None
    try:
        record = json.loads(text)
    except Exception as exc:  # noqa: BLE001 - bad JSON, too deep
        raise SerializationError(f"cannot read stored error: {type(exc).__name__}: {exc}") from exc
    if not isinstance(record, dict):
        raise SerializationError(f"stored error is not an object: {_short_repr(record)}")
    return record


def rebuild_error(record: dict[str, Any], workflow_id: str = "") -> BaseException:
    """The stored error as an exception of its own type when that type can be
    imported and rebuilt from its arguments; WorkflowFailedError otherwise."""
    type_name = str(record.get("type", "Exception"))
    module_name, _, qualname = type_name.rpartition(".")
    try:
        cls = resolve_class(module_name or "builtins", qualname)
        if not (isinstance(cls, type) and issubclass(cls, BaseException)):
            raise TypeError(type_name)
        args = _decode(record["args"]) if "args" in record else [record.get("message", "")]
        exc = cls(*args)
    except Exception:
        exc = WorkflowFailedError(workflow_id, type_name, record.get("message", ""))
    notes = [f"original traceback:\n{record.get('traceback', '')}"]
    if sys.version_info >= (3, 11):
        exc.__notes__ = notes
    else:  # before 3.11 notes are a plain attribute (not shown in tracebacks)
        setattr(exc, "__notes__", notes)
    return exc


def outcome_error(workflow_id: str, status: str, error_text: str | None) -> BaseException:
    """The exception that awaiting a workflow which ended this way raises."""
    record = loads_error(error_text) or {}
    if status == Status.MAX_RECOVERY_ATTEMPTS_EXCEEDED.value:
        return AwaitedWorkflowMaxRecoveryAttemptsExceededError(
            f"workflow {workflow_id!r} was quarantined: {record.get('message', '')}"
        )
    if status == Status.CANCELLED.value:
        if record.get("type", "").endswith("WorkflowTimeoutError"):
            return WorkflowTimeoutError(record.get("message", f"workflow {workflow_id!r} timed out"))
        return AwaitedWorkflowCancelledError(f"workflow {workflow_id!r} was cancelled")
    return rebuild_error(record, workflow_id)
