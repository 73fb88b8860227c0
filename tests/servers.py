"""Throwaway Postgres and Redis servers on free loopback ports, for tests,
the chaos suite and benchmarks. Each is started by its PID and stopped by it.

    python -m tests.servers start DIR   # prints export lines for the shell
    python -m tests.servers stop DIR
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pg_bin(name: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if not candidates:
        raise RuntimeError(f"PostgreSQL's {name} not found: install the postgresql package")
    return candidates[-1]


def _postgres_user() -> str | None:
    """Postgres refuses to run as root: run its programs as the postgres user
    (directly, not through runuser, so that its PID is the server's own)."""
    return "postgres" if os.geteuid() == 0 else None


def _wait_for_port(port: int, timeout_s: float, proc: subprocess.Popen, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with code {proc.returncode} while starting")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{what} did not listen on 127.0.0.1:{port} within {timeout_s}s")


@dataclass
class Postgres:
    directory: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None

    @property
    def data(self) -> Path:
        return self.directory / "pgdata"

    def url(self, database: str = "durable") -> str:
        return f"postgresql+psycopg://durable@127.0.0.1:{self.port}/{database}"

    def init(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            uid = pwd.getpwnam("postgres").pw_uid
            os.chown(self.directory, uid, -1)
        subprocess.run(
            [_pg_bin("initdb"), "-D", str(self.data), "-U", "durable", "--auth=trust", "-E", "UTF8", "--no-sync"],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, user=_postgres_user(),
            cwd=str(self.directory),
        )

    def start(self) -> "Postgres":
        if not self.data.exists():
            self.init()
        log = open(self.directory / "postgres.log", "ab")
        self.proc = subprocess.Popen(
            [
                _pg_bin("postgres"), "-D", str(self.data), "-p", str(self.port),
                "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={self.directory}",
                "-c", "max_connections=300", "-c", "shared_buffers=128MB",
            ],
            stdout=log, stderr=log, start_new_session=True, user=_postgres_user(),
            cwd=str(self.directory),
        )
        _wait_for_port(self.port, 30, self.proc, "postgres")
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            done = subprocess.run(
                [_pg_bin("psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "durable",
                 "-d", "postgres", "-tAc", "SELECT 1"],
                capture_output=True,
            )
            if done.returncode == 0:
                return
            time.sleep(0.2)
        raise RuntimeError("postgres did not accept connections")

    def create_database(self, name: str) -> str:
        exists = subprocess.run(
            [_pg_bin("psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "durable", "-d", "postgres",
             "-tAc", f"SELECT 1 FROM pg_database WHERE datname = '{name}'"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()
        if not exists:
            subprocess.run(
                [_pg_bin("psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "durable", "-d", "postgres",
                 "-c", f'CREATE DATABASE "{name}"'],
                check=True, capture_output=True,
            )
        return self.url(name)

    def stop(self, mode: str = "fast") -> None:
        """mode: 'fast' (SIGINT), 'immediate' (SIGQUIT: crash-like, recovery on restart)."""
        if self.proc is None:
            return
        sig = {"smart": signal.SIGTERM, "fast": signal.SIGINT, "immediate": signal.SIGQUIT}[mode]
        _stop_pid(self.proc.pid, sig, self.proc)
        self.proc = None


@dataclass
class Redis:
    directory: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, persist: bool = False) -> "Redis":
        self.directory.mkdir(parents=True, exist_ok=True)
        server = shutil.which("redis-server") or "/usr/bin/redis-server"
        args = [server, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.directory),
                "--daemonize", "no", "--protected-mode", "yes"]
        args += ["--appendonly", "yes", "--appendfsync", "always"] if persist else ["--save", "", "--appendonly", "no"]
        log = open(self.directory / "redis.log", "ab")
        self.proc = subprocess.Popen(args, stdout=log, stderr=log, start_new_session=True)
        _wait_for_port(self.port, 15, self.proc, "redis-server")
        return self

    def stop(self, hard: bool = False) -> None:
        if self.proc is None:
            return
        _stop_pid(self.proc.pid, signal.SIGKILL if hard else signal.SIGTERM, self.proc)
        self.proc = None


def _stop_pid(pid: int, sig: int, proc: subprocess.Popen | None = None, timeout_s: float = 20) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return
    if proc is not None:
        try:
            proc.wait(timeout=timeout_s)
            return
        except subprocess.TimeoutExpired:
            pass
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    if proc is not None:
        proc.wait(timeout=10)


def _main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[1] not in ("start", "stop"):
        print(__doc__, file=sys.stderr)
        return 2
    directory = Path(argv[2])
    if argv[1] == "start":
        pg = Postgres(directory / "pg").start()
        pg.create_database("durable")
        redis = Redis(directory / "redis").start()
        (directory / "pids").write_text(f"{pg.proc.pid} {redis.proc.pid}\n")
        print(f"export DURABLE_TEST_PG_URL={pg.url('durable')}")
        print(f"export DURABLE_TEST_PG_ADMIN_PORT={pg.port}")
        print(f"export DURABLE_TEST_REDIS_URL={redis.url}")
        return 0
    pids = (directory / "pids").read_text().split()
    _stop_pid(int(pids[0]), signal.SIGINT)
    _stop_pid(int(pids[1]), signal.SIGTERM)
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv))
