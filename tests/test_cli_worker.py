"""`durable worker`: Celery's worker command started in durable's process
(durable/worker_command.py), without Celery's umbrella command line. A real
worker started through it runs workflows with the options it was given;
bad arguments end it at once with a usage error, before anything starts."""

from __future__ import annotations

import os
import signal
import sys
import subprocess
from pathlib import Path

import pytest

from tests.harness import DURABLE_BIN, REPO, Backend, Worker


def run_worker_command(*args: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """`durable worker ARGS` on an embedded SQLite database (no server)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DURABLE_")}
    env.update(DURABLE_DATABASE_URL=f"sqlite:///{tmp_path / 'x.sqlite3'}", DURABLE_HOME=str(tmp_path))
    return subprocess.run([str(DURABLE_BIN), "worker", *args], env=env, cwd=str(REPO),
                          capture_output=True, text=True, timeout=120)


def test_a_worker_started_by_durable_worker_runs_workflows_with_its_options(
    pg_backend: Backend, effects_dir: Path, tmp_path: Path
) -> None:
    worker = Worker(pg_backend.env(effects_dir), tmp_path / "worker.log", concurrency=2,
                    queues="celery,cli-queue", command="durable")
    assert worker.args[:4] == [str(DURABLE_BIN), "worker", "-A", "workers.app"]
    worker.start()
    client = pg_backend.client()
    try:
        # -Q: a workflow on the second queue; -c 2: two pool children
        handle = client.enqueue("ten_steps", queue="cli-queue")
        assert handle.result(timeout=60)["sum"] == 385
        assert len(worker.children()) == 2
        log = worker.log_path.read_text()
        assert f"{worker.name}@" in log and "cli-queue" in log and "concurrency: 2 (prefork)" in log
        # SIGTERM: Celery's warm shutdown, exit code 0
        assert worker.proc is not None
        os.killpg(worker.pid, signal.SIGTERM)
        assert worker.proc.wait(timeout=30) == 0
    finally:
        worker.kill_all()
        client.store.db.dispose()


@pytest.mark.parametrize(("args", "expected"), [
    (["-A", "no_such_module"], "Invalid value for '-A' / '--app': no module named 'no_such_module'"),
    (["-A", "durable.cli"], "no Celery app in 'durable.cli'"),
    (["-c", "2", "--app=durable.cli:cli"], "'durable.cli:cli' is a Group, not a Celery app"),
    (["-Q", "celery", "-A"], "'-A' / '--app': needs a value"),
    (["--no-such-option"], "No such option '--no-such-option'"),
    (["-c", "many"], "Invalid value for '-c' / '--concurrency'"),
    (["-P", "nonesuch"], "Invalid value for '-P' / '--pool'"),
    (["--detach"], "durable worker runs in the foreground"),
])
def test_bad_arguments_are_a_usage_error_and_start_nothing(args: list[str], expected: str, tmp_path: Path) -> None:
    result = run_worker_command(*args, tmp_path=tmp_path)
    assert result.returncode == 2, result
    assert expected in result.stderr and "Usage: durable worker" in result.stderr
    assert "Traceback" not in result.stderr and " ready." not in result.stdout + result.stderr


@pytest.mark.parametrize("args", [["--help"], ["-h"], ["--", "--help"]])
def test_help_lists_celerys_worker_options_and_the_app(args: list[str], tmp_path: Path) -> None:
    result = run_worker_command(*args, tmp_path=tmp_path)
    assert result.returncode == 0, result
    for option in ("-A, --app APP", "--concurrency", "--queues", "--without-mingle", "--loglevel"):
        assert option in result.stdout


def test_celerys_worker_command_is_loaded_without_pygments_which_stays_importable() -> None:
    code = (
        "import sys; from durable.worker_command import celerys_worker_command; celerys_worker_command(); "
        "import celery.bin.base as base; assert base.LEXER is None, base.LEXER; "
        "import pygments.lexers; assert sys.modules['pygments'] is not None; print('ok')"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=str(REPO), capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "ok", result.stderr


def test_the_demo_kills_a_worker_mid_workflow_and_the_next_one_skips_completed_steps(tmp_path: Path) -> None:
    """README's first command (`./scripts/demo` runs `durable demo`), on the
    embedded default with nothing configured: it exits 0 only when the
    steps checkpointed before the kill did not run again."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DURABLE_")}
    env["PYTHONPATH"] = str(REPO)
    done = subprocess.run([str(DURABLE_BIN), "demo"], env=env, cwd=str(tmp_path),
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "status SUCCESS, recovery_attempts 1" in done.stdout
    assert "completed steps were skipped on replay: yes" in done.stdout
    assert (tmp_path / ".durable").is_dir()  # under the directory it runs in
