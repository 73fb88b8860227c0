"""`durable worker`: a Celery worker started in this process, without
Celery's umbrella command line.

`celery -A APP worker` imports every Celery subcommand (and what they use:
click-repl, prompt-toolkit) and every installed `celery.commands` plugin
(Flower's web stack) before it reads its arguments, a good part of a
worker's start; for a worker restarted on its host, start-up is time to
recovery (docs/operations.md, "Start-up time"). Here only Celery's own
`worker` command is loaded: it parses the arguments, so the options
(`-Q -c -P -n -l -E --without-mingle ...`), their meaning, their
`CELERY_WORKER_*` environment variables and the app's own worker options
are Celery's. `-A`/`--app` is read first, since the options' defaults
come from the app.

The garbage collector is paused while the worker starts: importing the
libraries a worker runs on (Celery, kombu, redis-py, SQLAlchemy, psycopg)
leaves ~95,000 objects to the collector, and the ~240 collections that
triggers (one of them full) took ~0.2 s of a ~1.2 s start. What is
created then lives as long as the worker: once it is built, before its
pool forks, it is frozen (`gc.freeze`: left out of later collections,
here and in the pool's children) and collection resumes. Cyclic garbage
made during the start is kept with it (~800 objects in the benchmark's
worker).

Installed packages' metadata is read once while the worker starts: kombu
(its serializers, its exchange matchers) and Celery (its result backends)
each scan every installed distribution for entry points, ~10 ms a scan,
and redis-py reads its own version from its metadata for every client it
builds (~2-3 ms each, 4 at a start): ~50 ms of a start, ~15 ms read once.
"""

from __future__ import annotations

import copy
import gc
import os
import sys
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Sequence

import click

APP_FLAGS = ("-A", "--app")
DETACH_FLAGS = ("-D", "--detach")
HELP_FLAGS = ("-h", "--help")


def run(args: Sequence[str]) -> int:
    """Start a worker with `celery worker`'s arguments, `-A APP` among them
    (default: $DURABLE_CELERY_APP, or workers.app); returns the worker's
    exit code once it stops."""
    args = list(args)
    if args[:1] == ["--"]:
        args = args[1:]  # `durable worker -- OPTIONS`, the wrapper's older form
    if any(arg in DETACH_FLAGS for arg in args):
        raise click.UsageError(
            "durable worker runs in the foreground: start it from a process manager "
            "(systemd, supervisord, a container), or use `celery -A APP worker --detach`"
        )
    from celery import maybe_patch_concurrency

    # before the concurrency patch, which imports the pool and with it kombu and Celery's
    # imports, which read entry points (importlib.metadata loads only stdlib modules that
    # an eventlet/gevent patch leaves alone: email, zipfile, csv)
    with package_metadata_read_once() as forget_once_ready, collector_paused_until_built() as resume_once_built:
        maybe_patch_concurrency(["worker", *args])  # -P eventlet/gevent: patch before anything else loads
        resume_once_built()  # imports Celery's signals: after the patch
        forget_once_ready()
        code = start_worker(args)
    return code if isinstance(code, int) else 0


def start_worker(args: list[str]) -> Any:
    """Celery's worker command, run with `args`: what it returns once the worker stops."""
    celerys_worker_command()  # before the app, as `celery` imports it
    from celery.bin.base import CLIContext

    wants_help = any(arg in HELP_FLAGS for arg in args)
    app = None if wants_help else load_app(app_named(args))
    return worker_command(app).main(
        args=["--help" if arg == "-h" else arg for arg in args], prog_name="durable worker",
        obj=CLIContext(app=app, no_color=None, workdir=None),
        auto_envvar_prefix="CELERY_WORKER", standalone_mode=False,
    )


@contextmanager
def collector_paused_until_built() -> Iterator[Callable[[], None]]:
    """No garbage collection from here until the worker is built. Call the
    function it gives (once Celery may be imported) to resume on Celery's
    `celeryd_after_setup`, sent as the worker starts its steps, before the
    pool forks: what exists then is frozen and collection resumes. Resumed
    also if the worker stops, or fails, before that."""
    if not gc.isenabled():  # paused by someone else: theirs to resume
        yield lambda: None
        return
    signals: list[Any] = []

    def resume(**_: Any) -> None:
        if not gc.isenabled():
            gc.freeze()
            gc.enable()

    def resume_once_built() -> None:
        from celery.signals import celeryd_after_setup

        celeryd_after_setup.connect(resume, weak=False)
        signals.append(celeryd_after_setup)

    gc.disable()
    try:
        yield resume_once_built
    finally:
        for signal in signals:
            signal.disconnect(resume)
        gc.enable()


@contextmanager
def package_metadata_read_once() -> Iterator[Callable[[], None]]:
    """While the worker starts, `importlib.metadata.version` and
    `importlib.metadata.entry_points(group=...)` answer from what they read
    the first time (one scan of every installed distribution's entry
    points, each package's version once). Call the function it gives (once
    Celery may be imported) to end that on Celery's `worker_ready`, and in
    each pool child as it starts; it ends also when the worker stops or
    fails before. Installed packages do not change during a start; a
    version not found, or a call with other arguments, is not cached."""
    import importlib.metadata

    real_version, real_entry_points = importlib.metadata.version, importlib.metadata.entry_points
    versions: dict[str, str] = {}
    every_entry_point: list[Any] = []
    reading_once = [True]  # modules that imported these functions by name keep calling them

    def version(distribution_name: str) -> str:
        if not reading_once[0]:
            return real_version(distribution_name)
        if distribution_name not in versions:
            versions[distribution_name] = real_version(distribution_name)
        return versions[distribution_name]

    def entry_points(**params: Any) -> Any:
        if not reading_once[0] or set(params) != {"group"}:
            return real_entry_points(**params)
        if not every_entry_point:
            every_entry_point.append(real_entry_points())
        return every_entry_point[0].select(**params)

    signals: list[Any] = []

    def forget(**_: Any) -> None:
        reading_once[0] = False
        if importlib.metadata.version is version:
            importlib.metadata.version = real_version
        if importlib.metadata.entry_points is entry_points:
            importlib.metadata.entry_points = real_entry_points
        versions.clear()
        every_entry_point.clear()

    def forget_once_ready() -> None:
        from celery.signals import worker_process_init, worker_ready

        for signal in (worker_ready, worker_process_init):
            signal.connect(forget, weak=False)
            signals.append(signal)

    importlib.metadata.version = version
    importlib.metadata.entry_points = entry_points
    try:
        yield forget_once_ready
    finally:
        for signal in signals:
            signal.disconnect(forget)
        forget()


def app_named(args: Sequence[str]) -> str:
    """The app `-A`/`--app` names in `args` (the last one given), else the default."""
    name = os.environ.get("DURABLE_CELERY_APP") or "workers.app"
    for index, arg in enumerate(args):
        if arg in APP_FLAGS:
            if index + 1 >= len(args):
                raise click.BadParameter("needs a value", param_hint="'-A' / '--app'")
            name = args[index + 1]
        elif arg.startswith("--app="):
            name = arg.partition("=")[2]
        elif arg.startswith("-A") and len(arg) > 2:
            name = arg[2:]
    return name


def load_app(app_name: str) -> Any:
    """The Celery app `-A` names, found as Celery finds it (the module's
    `app` or `celery`, the current directory on the import path); a usage
    error when there is none. An app module that fails while it is
    imported raises its own error, traceback and all."""
    from celery import Celery
    from celery.app.utils import find_app

    hint = "'-A' / '--app'"
    try:
        app = find_app(app_name)
    except ModuleNotFoundError as exc:
        if exc.name is None or not app_name.replace(":", ".").startswith(exc.name):
            raise  # the app's module exists, and imports something that does not
        raise click.BadParameter(f"no module named {exc.name!r}", param_hint=hint) from None
    except AttributeError as exc:
        raise click.BadParameter(f"no Celery app in {app_name!r} ({exc})", param_hint=hint) from None
    if not isinstance(app, Celery):
        raise click.BadParameter(f"{app_name!r} is a {type(app).__name__}, not a Celery app", param_hint=hint)
    return app


def worker_command(app: Any) -> click.Command:
    """Celery's `worker` command with `-A` (read already by `app_named`)
    and the options the app adds to it, as `celery` adds them
    (`app.user_options['worker']` and the preload ones)."""
    worker = celerys_worker_command()
    from celery.bin.base import CeleryOption, consume_preload_options

    command: click.Command = copy.copy(worker)
    app_option = CeleryOption(
        list(APP_FLAGS), expose_value=False, allow_from_autoenv=False, metavar="APP", help_group="Worker Options",
        help="the Celery app: a module (its `app` or `celery`) or module:attribute; "
             "default $DURABLE_CELERY_APP, or workers.app",
    )
    command.params = [app_option, *worker.params]
    if app is not None:
        command.params.extend(app.user_options.get("worker", []))
        preload = app.user_options.get("preload", ())
        if preload:
            command.params.extend(preload)
            command.callback = consume_preload_options(command.callback)
    return command


def celerys_worker_command() -> click.Command:
    """`celery.bin.worker.worker`, imported with Pygments hidden: Celery's
    command helpers (celery.bin.base) build a Pygments lexer and formatter
    when they are imported, if Pygments is installed, to colour the JSON
    `celery inspect` prints; a worker prints none, and they cost ~0.09 s."""
    if "celery.bin.worker" not in sys.modules:
        hidden = {name: sys.modules.pop(name) for name in list(sys.modules)
                  if name == "pygments" or name.startswith("pygments.")}
        sys.modules["pygments"] = None  # type: ignore[assignment]  # `import pygments` raises ImportError
        try:
            import celery.bin.worker  # noqa: F401
        finally:
            del sys.modules["pygments"]
            sys.modules.update(hidden)
    from celery.bin.worker import worker

    command: click.Command = worker
    return command
