"""Real Celery worker processes for integration tests, started and stopped by PID."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from durable import DurableClient, Settings

REPO = Path(__file__).resolve().parent.parent

# Timings that make a lost execution recovered, and a lost message
# republished, within seconds: the workers' environment in every suite.
FAST_RECOVERY = {
    "DURABLE_LEASE_SECONDS": "2",
    "DURABLE_SWEEP_INTERVAL_SECONDS": "0.5",
    "DURABLE_REDELIVERY_SECONDS": "3",
}


@dataclass
class Backend:
    """One place to run workflows: a system database and a broker."""

    name: str
    database_url: str
    broker_url: str
    home: Path
    extra_env: dict[str, str] = field(default_factory=dict)

    def env(self, effects_dir: Path, **overrides: str) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            DURABLE_HOME=str(self.home),
            DURABLE_DATABASE_URL=self.database_url,
            DURABLE_BROKER_URL=self.broker_url,
            DURABLE_IMPORTS="tests.workflows,tests.failure_workflows,tests.tx_workflows,tests.message_workflows,tests.dispatch_workflows,tests.flow_workflows,tests.saga_workflows,examples.user_pipeline.workflows",
            DURABLE_TEST_EFFECTS_DIR=str(effects_dir),
            PYTHONPATH=str(REPO),
        )
        env.update(FAST_RECOVERY)
        env.update(self.extra_env)
        env.update(overrides)
        return env

    def settings(self, **overrides: Any) -> Settings:
        """Settings for this process (a client): the backend's database, broker and home."""
        settings = Settings(home=str(self.home), database_url=self.database_url, broker_url=self.broker_url)
        return settings.with_overrides(**overrides)

    def client(self, **overrides: Any) -> DurableClient:
        return DurableClient(settings=self.settings(**overrides))


# The `durable` command of this virtualenv (pip install -e .).
DURABLE_BIN = Path(sys.executable).parent / "durable"

# How a worker is started: Celery's command line, or durable's (`durable
# worker`, Celery's worker command alone, in-process).
WORKER_COMMANDS = {
    "celery": [sys.executable, "-m", "celery", "-A", "workers.app", "worker"],
    "durable": [str(DURABLE_BIN), "worker", "-A", "workers.app"],
}


class Worker:
    """`celery -A workers.app worker` (or `durable worker -A workers.app`)
    in its own process group."""

    def __init__(self, env: dict[str, str], log_path: Path, concurrency: int = 2,
                 queues: str = "celery", pool: str = "prefork", name: str | None = None,
                 command: str = "celery"):
        self.env = env
        self.log_path = log_path
        self.name = name or f"w{uuid.uuid4().hex[:6]}"
        self.args = [
            *WORKER_COMMANDS[command],
            "-P", pool, "-c", str(concurrency), "-Q", queues, "-n", f"{self.name}@%h",
            "--loglevel=INFO", "--without-gossip", "--without-mingle", "--without-heartbeat",
        ]
        self.proc: subprocess.Popen | None = None

    def start(self, wait_ready: bool = True) -> "Worker":
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            self.args, env=self.env, cwd=str(REPO), stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        if wait_ready:
            self.wait_ready()
        return self

    def wait_ready(self, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"worker exited with {self.proc.returncode}:\n{self.log_tail()}")
            if b" ready." in self.log_path.read_bytes():
                return
            time.sleep(0.1)
        raise RuntimeError(f"worker not ready after {timeout_s}s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def children(self) -> list[int]:
        return child_pids(self.pid)

    def kill_all(self) -> None:
        """SIGKILL the main process and every child: a lost host."""
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=10)
        self.proc = None

    def stop(self, timeout_s: float = 15) -> None:
        """SIGTERM to the process group (a warm shutdown), SIGKILL after timeout_s."""
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=timeout_s)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            self.kill_all()
        self.proc = None


def child_pids(pid: int) -> list[int]:
    """Direct children of a process, read from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # the command name is in parentheses and may contain spaces
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == pid:
            found.append(int(entry.name))
    return sorted(found)


class WaitTimeout(AssertionError, TimeoutError):
    """A condition not met in time: a failed assertion in a test, a
    TimeoutError to the benchmarks, which poll with wait_for too."""


def wait_for(condition: Callable[[], object], timeout_s: float, what: str, interval_s: float = 0.05) -> Any:
    """Polls `condition` until it returns something true, and returns that."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval_s)
    raise WaitTimeout(f"timed out after {timeout_s}s waiting for {what}")
