"""Run the user pipeline against real workers, optionally killing them at random.

    python -m examples.user_pipeline.run --version transaction
    python -m examples.user_pipeline.run --version plain --chaos-seconds 20 \\
        --database-url postgresql+psycopg://u:p@localhost/db --broker-url redis://localhost:6379/0

With no URLs it runs on the embedded default (SQLite + filesystem broker under
DURABLE_HOME). It starts its own `celery -A workers.app worker` processes,
enqueues the pipeline, SIGKILLs pool processes and whole workers (starting
replacements) while it runs, then prints the row count of the users table.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import create_engine

from durable import DurableClient, Settings

REPO = Path(__file__).resolve().parents[2]
MODULE = "examples.user_pipeline.workflows"


@dataclass
class Report:
    version: str
    workflow_id: str
    status: str
    result: object
    rows: int
    distinct_users: int
    elapsed_seconds: float
    children_killed: int = 0
    workers_killed: int = 0

    def summary(self) -> str:
        return (
            f"{self.version}: workflow {self.status} in {self.elapsed_seconds:.1f}s; "
            f"{self.rows} rows, {self.distinct_users} distinct users, "
            f"{self.rows - self.distinct_users} duplicates; killed {self.children_killed} pool "
            f"processes and {self.workers_killed} whole workers"
        )


class WorkerProcess:
    """One `celery worker` in its own process group, so it can be killed whole."""

    def __init__(self, env: dict[str, str], log_dir: Path, concurrency: int):
        self.log_path = log_dir / f"worker-{time.monotonic_ns()}.log"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "workers.app", "worker", "-P", "prefork",
             "-c", str(concurrency), "-n", f"pipeline-{self.log_path.stem}@%h", "--loglevel=WARNING",
             "--without-gossip", "--without-mingle", "--without-heartbeat"],
            env=env, cwd=str(REPO), stdout=open(self.log_path, "ab"), stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def children(self) -> list[int]:
        found = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    stat = (entry / "stat").read_text()
                except OSError:
                    continue
                if int(stat.rsplit(")", 1)[1].split()[1]) == self.proc.pid:
                    found.append(int(entry.name))
        return found

    def kill(self, sig: int = signal.SIGKILL) -> None:
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


class Chaos(threading.Thread):
    """Every `interval` seconds, SIGKILL a pool process (most often) or a whole
    worker, which is replaced at once, until stopped or `seconds` have passed."""

    def __init__(self, pool: list[WorkerProcess], start_worker, seconds: float,
                 interval: float = 1.5, seed: int = 7):
        super().__init__(daemon=True)
        self.pool, self.start_worker = pool, start_worker
        self.seconds, self.interval = seconds, interval
        self.rng = random.Random(seed)
        self.stopped = threading.Event()
        self.children_killed = self.workers_killed = 0

    def run(self) -> None:
        deadline = time.monotonic() + self.seconds
        while not self.stopped.wait(self.interval * (0.5 + self.rng.random())):
            if time.monotonic() > deadline:
                return
            victim = self.rng.choice(self.pool)
            if self.rng.random() < 0.7:
                # a worker restarted a moment ago has no pool children yet:
                # strike one that has, so a slow machine sees the chaos too
                forked = [w for w in self.pool if w.children()]
                pids = self.rng.choice(forked).children() if forked else []
                if pids:
                    os.kill(self.rng.choice(pids), signal.SIGKILL)  # the master forks a new one
                    self.children_killed += 1
            else:
                victim.kill()
                self.pool.remove(victim)
                self.pool.append(self.start_worker())
                self.workers_killed += 1


def run(version: str, settings: Settings, workers: int = 2, concurrency: int = 2,
        chaos_seconds: float = 0.0, pause_seconds: float = 0.05, timeout_seconds: float = 300.0,
        log_dir: Path | None = None, extra_env: dict[str, str] | None = None) -> Report:
    log_dir = log_dir or Path(tempfile.mkdtemp(prefix="user-pipeline-"))
    # workers run from the repository root: make the embedded paths absolute
    settings = settings.with_overrides(home=str(Path(settings.home).resolve()))
    env = dict(os.environ)
    env.update(
        DURABLE_HOME=settings.home,
        DURABLE_DATABASE_URL=settings.resolved_database_url,
        DURABLE_BROKER_URL=settings.resolved_broker_url,
        DURABLE_APP_DATABASE_URL=settings.app_database_url,
        DURABLE_IMPORTS=MODULE,
        PYTHONPATH=str(REPO),
    )
    env.update(extra_env or {})
    app_engine = create_engine(settings.app_database_url or settings.resolved_database_url)
    _reset_table(app_engine, version)

    pool = [WorkerProcess(env, log_dir, concurrency) for _ in range(workers)]
    chaos = Chaos(pool, lambda: WorkerProcess(env, log_dir, concurrency), chaos_seconds)
    client = DurableClient(settings=settings)
    started = time.monotonic()
    try:
        handle = client.enqueue("user_pipeline", args=[version], kwargs={"pause_seconds": pause_seconds})
        if chaos_seconds > 0:
            chaos.start()
        try:
            result: object = handle.result(timeout=timeout_seconds)
        except Exception as exc:  # the report says how it ended
            result = f"{type(exc).__name__}: {exc}"
        chaos.stopped.set()
        elapsed = time.monotonic() - started
        from examples.user_pipeline.workflows import count_rows

        rows, distinct = count_rows(app_engine, version)
        return Report(version, handle.workflow_id, handle.status().status.value, result, rows, distinct,
                      elapsed, chaos.children_killed, chaos.workers_killed)
    finally:
        chaos.stopped.set()
        if chaos.is_alive():
            chaos.join(timeout=30)
        for worker in list(pool):
            worker.kill(signal.SIGTERM)
        app_engine.dispose()


def _reset_table(engine, version: str) -> None:
    """Start from an empty users table so the count means this run."""
    from examples.user_pipeline.workflows import TABLES, metadata

    metadata.create_all(engine, checkfirst=True)
    with engine.begin() as conn:
        conn.execute(TABLES[version].delete())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", choices=["plain", "transaction"], default="transaction")
    parser.add_argument("--database-url", help="system database (default: DURABLE_DATABASE_URL or embedded SQLite)")
    parser.add_argument("--broker-url", help="broker (default: DURABLE_BROKER_URL or embedded filesystem)")
    parser.add_argument("--app-database-url", help="application database for the users table (default: the system one)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--chaos-seconds", type=float, default=15.0, help="kill workers at random this long (0: never)")
    parser.add_argument("--pause-seconds", type=float, default=0.05, help="pause in each page after writing")
    args = parser.parse_args(argv)
    settings = Settings.from_env().with_overrides(
        database_url=args.database_url, broker_url=args.broker_url, app_database_url=args.app_database_url,
    )
    report = run(args.version, settings, args.workers, args.concurrency, args.chaos_seconds, args.pause_seconds)
    print(report.summary())
    if args.version == "transaction":
        return 0 if report.status == "SUCCESS" and report.rows == report.distinct_users == 1000 else 1
    return 0 if report.status == "SUCCESS" else 1


if __name__ == "__main__":
    sys.exit(main())
