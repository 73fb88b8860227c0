"""A workflow's inputs checked against its parameters' type hints.

By function (`wf.start(...)`): the arguments are bound to the signature and
each annotated parameter is validated with a pydantic `TypeAdapter` in
strict mode (the function receives exactly the values given: "10" is not
an int). By name (`DurableClient.enqueue`), without the workflow's code:
workers record each workflow's parameters as JSON Schema
(`Parameters.json_schema`), and `check_against_schema` binds the arguments
to that record and validates each one's JSON form with `jsonschema`.

Either way a mismatch raises `WorkflowInputError` naming the parameter,
before anything is written. A parameter without a type hint, or with one
pydantic cannot describe, accepts anything.
"""

from __future__ import annotations

import inspect
import json
import logging
import typing
from typing import Any, Callable

from .errors import WorkflowInputError

logger = logging.getLogger("durable.inputs")

_POSITIONAL = ("POSITIONAL_ONLY", "POSITIONAL_OR_KEYWORD")
_BY_KEYWORD = ("POSITIONAL_OR_KEYWORD", "KEYWORD_ONLY")


class Parameters:
    """One workflow function's parameters and the validators of their hints
    (built on first use: pydantic is imported then, not at import time)."""

    def __init__(self, fn: Callable[..., Any], workflow_name: str):
        self.workflow_name = workflow_name
        try:
            self.signature: inspect.Signature | None = inspect.signature(fn)
        except (TypeError, ValueError):  # a builtin or a C callable: nothing to check
            self.signature = None
        self._hints = _type_hints(fn)
        self._adapters: dict[str, Any] | None = None

    def check(self, args: Any, kwargs: Any) -> None:
        """WorkflowInputError unless the arguments bind to the signature and
        each one is of its parameter's annotated type."""
        if self.signature is None:
            return
        try:
            bound = self.signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise WorkflowInputError(self.workflow_name, _parameter_named_in(str(exc)), str(exc)) from None
        adapters = self._validators()
        for name, value in bound.arguments.items():
            adapter = adapters.get(name)
            if adapter is None:
                continue
            kind = self.signature.parameters[name].kind
            if kind is inspect.Parameter.VAR_POSITIONAL:
                items = [(f"{name}[{i}]", v) for i, v in enumerate(value)]
            elif kind is inspect.Parameter.VAR_KEYWORD:
                items = list(value.items())
            else:
                items = [(name, value)]
            for label, item in items:
                _validate_python(self.workflow_name, label, adapter, item)

    def json_schema(self) -> dict[str, Any]:
        """What workers record: each parameter's name, kind, whether it is
        required, and the JSON Schema of its type (of one item for *args and
        **kwargs; {} when unannotated or not describable)."""
        if self.signature is None:
            return {"parameters": None}
        adapters = self._validators()
        described = []
        for name, parameter in self.signature.parameters.items():
            schema: dict[str, Any] = {}
            adapter = adapters.get(name)
            if adapter is not None:
                try:
                    schema = adapter.json_schema()
                except Exception:  # noqa: BLE001 - a type with no JSON form: anything
                    schema = {}
            described.append({
                "name": name,
                "kind": parameter.kind.name,
                "required": parameter.default is inspect.Parameter.empty
                and parameter.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD),
                "schema": schema,
            })
        return {"parameters": described}

    def _validators(self) -> dict[str, Any]:
        if self._adapters is None:
            adapters = {}
            for name, hint in self._hints.items():
                if self.signature is not None and name in self.signature.parameters:
                    adapter = _adapter(hint)
                    if adapter is not None:
                        adapters[name] = adapter
            self._adapters = adapters
        return self._adapters


def _type_hints(fn: Callable[..., Any]) -> dict[str, Any]:
    target = fn if inspect.isfunction(fn) or inspect.ismethod(fn) else getattr(fn, "__call__", fn)
    try:
        hints = typing.get_type_hints(target)
    except Exception:  # noqa: BLE001 - a hint that does not resolve: leave them all unchecked
        logger.debug("type hints of %r do not resolve: its inputs are not checked", fn, exc_info=True)
        return {}
    hints.pop("return", None)
    return {k: v for k, v in hints.items() if v is not Any}


def _adapter(hint: Any) -> Any:
    from pydantic import ConfigDict, TypeAdapter

    try:
        return TypeAdapter(hint)
    except Exception:  # noqa: BLE001 - try again as an arbitrary class (an isinstance check)
        pass
    try:
        return TypeAdapter(hint, config=ConfigDict(arbitrary_types_allowed=True))
    except Exception:  # noqa: BLE001 - not describable: unchecked
        return None


def _validate_python(workflow_name: str, parameter: str, adapter: Any, value: Any) -> None:
    from pydantic import ValidationError

    try:
        adapter.validate_python(value, strict=True)
    except ValidationError as exc:
        raise WorkflowInputError(workflow_name, parameter, _first_error(exc)) from None


def _first_error(exc: Any) -> str:
    errors = exc.errors(include_url=False)
    if not errors:
        return str(exc)
    first = errors[0]
    where = ".".join(str(p) for p in first.get("loc", ()))
    text = f"{first.get('msg', 'invalid')} (got {first.get('input')!r:.80})"
    return f"{where}: {text}" if where else text


def _parameter_named_in(message: str) -> str | None:
    """The parameter a binding error names ("missing a required argument: 'x'")."""
    if "'" in message:
        return message.split("'")[1]
    return None


# --- by name, against the recorded JSON Schema -------------------------------------


def check_against_schema(
    workflow_name: str, recorded: dict[str, Any], args: Any, kwargs: Any, validators: dict[str, Any] | None = None,
) -> None:
    """Bind `args`/`kwargs` to the recorded parameters (as Python binds a
    call) and validate each value's JSON form against its parameter's
    schema. `validators` caches the compiled schemas between calls."""
    parameters = recorded.get("parameters")
    if parameters is None:
        return
    positional = [p for p in parameters if p["kind"] in _POSITIONAL]
    var_positional = next((p for p in parameters if p["kind"] == "VAR_POSITIONAL"), None)
    var_keyword = next((p for p in parameters if p["kind"] == "VAR_KEYWORD"), None)
    by_keyword = {p["name"]: p for p in parameters if p["kind"] in _BY_KEYWORD}
    given: list[tuple[dict[str, Any], str, Any]] = []
    named: set[str] = set()
    for index, value in enumerate(args):
        if index < len(positional):
            given.append((positional[index], positional[index]["name"], value))
            named.add(positional[index]["name"])
        elif var_positional is not None:
            given.append((var_positional, f"{var_positional['name']}[{index - len(positional)}]", value))
        else:
            raise WorkflowInputError(
                workflow_name, None,
                f"takes {len(positional)} positional argument(s) but {len(args)} were given",
            )
    for key, value in kwargs.items():
        parameter = by_keyword.get(key)
        if parameter is None:
            if var_keyword is None:
                raise WorkflowInputError(workflow_name, key, "unexpected keyword argument")
            given.append((var_keyword, key, value))
            continue
        if key in named:
            raise WorkflowInputError(workflow_name, key, "got multiple values for this argument")
        given.append((parameter, key, value))
        named.add(key)
    for parameter in parameters:
        if parameter["required"] and parameter["name"] not in named:
            raise WorkflowInputError(workflow_name, parameter["name"], "missing a required argument")
    cache = validators if validators is not None else {}
    for parameter, label, value in given:
        if not parameter["schema"]:
            continue
        validator = cache.get(parameter["name"])
        if validator is None:
            validator = cache[parameter["name"]] = _json_validator(parameter["schema"])
        error = next(iter(validator.iter_errors(_jsonable(value))), None)
        if error is not None:
            where = ".".join(str(p) for p in error.absolute_path)
            detail = f"{where}: {error.message}" if where else error.message
            raise WorkflowInputError(workflow_name, label, detail[:300])


def _json_validator(schema: dict[str, Any]) -> Any:
    import jsonschema

    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    return cls(schema)


def _jsonable(value: Any) -> Any:
    """A value as the JSON Schema sees it: what pydantic would write as JSON
    (a datetime as its ISO string, a dataclass as an object)."""
    from pydantic_core import to_jsonable_python

    try:
        return to_jsonable_python(value)
    except Exception:  # noqa: BLE001 - not JSON-able by pydantic: let the schema judge it as is
        return value


def dumps_schema(parameters: Parameters) -> str:
    return json.dumps(parameters.json_schema(), sort_keys=True)
