"""The shape of `durable/`: layers that import only downward, no import
circle, no module importing another's underscore names, and a web-app
client that loads nothing of the engine or the worker. Reads the source
with `ast`; needs no server."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "durable"

# The layer order, written once: a module may import from its own layer
# (without a circle) and from the layers before it, never from a later one.
LAYERS: list[tuple[str, set[str]]] = [
    ("foundations", {
        "settings", "errors", "records", "serialization", "schema", "database", "db_errors",
        "retry", "clock", "context", "timeouts", "limits", "schedules", "metrics", "sagas", "breakers", "inputs", "local_processes", "fork_guard", "embedded_broker", "redis_broker", "migrations", "tracing", "status_rows", "parked_connections",
    }),
    ("store", {"store"}),
    ("dispatch", {"dispatch", "task_messages", "background_publish", "async_start", "handle", "starting", "recorded_inputs", "mailbox", "in_transaction"}),
    ("engine", {"engine", "step_protocol", "step_attempts", "child_workflows", "messaging", "transactions", "runner", "leases", "recovery", "retention"}),
    ("surfaces", {
        "app", "functions", "client", "contrib", "helpers", "dispatched_steps", "canvas", "flow_admin", "workflow_admin", "celery_binding", "pool_watch", "local_links", "cli", "worker_command", "dashboard", "demo",
        "__init__", "__main__",
    }),
]

# What a web app that only enqueues must not load.
WORKER_SIDE = [
    "durable.engine", "durable.runner", "durable.celery_binding", "durable.leases",
    "durable.pool_watch", "durable.local_links", "durable.recovery", "durable.app", "durable.messaging",
    "durable.transactions", "durable.step_attempts", "durable.child_workflows",
]


def layer_of(module: str) -> int:
    """Layer index of a module named like 'durable.store.base'."""
    parts = module.split(".")
    top = parts[1] if len(parts) > 1 else "__init__"
    for index, (_, members) in enumerate(LAYERS):
        if top in members:
            return index
    raise AssertionError(f"{module} is in no layer: add it to LAYERS in {__file__}")


def module_name(path: Path) -> str:
    relative = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(relative.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def durable_imports(path: Path) -> list[tuple[str, list[str], int]]:
    """(imported module, names taken from it, line) for every import of a
    durable module anywhere in the file, TYPE_CHECKING blocks included."""
    tree = ast.parse(path.read_text(), str(path))
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(a.name, [], node.lineno) for a in node.names if a.name.split(".")[0] == "durable"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "durable":
                continue
            names = [a.name for a in node.names]
            if node.module is None or _is_package(target):
                # `from . import x` / `from .store import base`: x may be a submodule
                for name in names:
                    submodule = f"{target}.{name}"
                    if _exists(submodule):
                        found.append((submodule, [], node.lineno))
                    else:
                        found.append((target, [name], node.lineno))
            else:
                found.append((target, names, node.lineno))
    return found


def _exists(module: str) -> bool:
    path = PACKAGE.parent.joinpath(*module.split("."))
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def _is_package(module: str) -> bool:
    return (PACKAGE.parent.joinpath(*module.split(".")) / "__init__.py").exists()


def import_graph() -> dict[str, list[tuple[str, list[str], int]]]:
    return {
        module_name(path): durable_imports(path)
        for path in sorted(PACKAGE.rglob("*.py"))
    }


def test_every_import_goes_down_the_layers() -> None:
    upward = []
    for module, imports in import_graph().items():
        if module == "durable":
            continue  # the package re-exports the public API of every layer
        for target, _, line in imports:
            if target == "durable":
                continue  # importing a submodule runs the package; it names nothing here
            if layer_of(target) > layer_of(module):
                upward.append(
                    f"{module}:{line} imports {target} "
                    f"({LAYERS[layer_of(module)][0]} -> {LAYERS[layer_of(target)][0]})"
                )
    assert upward == []


def test_there_is_no_import_circle() -> None:
    graph = {
        module: sorted({t for t, _, _ in imports if t != module and t != "durable"})
        for module, imports in import_graph().items()
    }
    circles = []
    state: dict[str, str] = {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for target in graph.get(module, []):
            if state.get(target) == "open":
                circles.append(" -> ".join(path[path.index(target):] + [target]))
            elif target not in state:
                visit(target, path + [target])
        state[module] = "done"

    for module in graph:
        if module not in state:
            visit(module, [module])
    assert circles == []


def test_no_module_imports_another_modules_private_names() -> None:
    private = [
        f"{module}:{line} takes {name} from {target}"
        for module, imports in import_graph().items()
        for target, names, line in imports
        for name in names
        if name.startswith("_") and not name.startswith("__")
    ]
    assert private == []


def test_the_web_app_client_loads_nothing_of_the_engine_or_the_worker() -> None:
    script = (
        "import sys\n"
        "from durable.client import DurableClient\n"
        "from durable import DurableClient, WorkflowHandle, Settings, Status\n"
        f"print(sorted(m for m in {WORKER_SIDE!r} if m in sys.modules))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
        cwd=str(PACKAGE.parent),
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_relative_imports_resolve_to_the_modules_they_name() -> None:
    """The checks above read what they think they read."""
    targets = {t for t, _, _ in durable_imports(PACKAGE / "store" / "base.py")}
    assert targets == {"durable.database", "durable.records", "durable.schema", "durable.store.prebuilt"}
    client = {t for t, _, _ in durable_imports(PACKAGE / "client.py")}
    assert "durable.mailbox" in client and "durable.handle" in client
    assert layer_of("durable.store.execution") < layer_of("durable.engine") < layer_of("durable.app")
