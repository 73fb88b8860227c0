"""Throwaway Postgres, Redis and RabbitMQ servers on free loopback ports, for tests,
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
from typing import Callable


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


class PortTaken(RuntimeError):
    """The server could not listen: its port was taken between our choice
    and its bind (another server, or a client's ephemeral port)."""


# how a server says its port is taken, in its log
_PORT_TAKEN = ("address already in use", "could not create any tcp/ip sockets")


def _log_says_port_taken(log_path: Path, offset: int) -> bool:
    try:
        with open(log_path, "rb") as f:
            f.seek(offset)
            text = f.read().decode(errors="replace").lower()
    except OSError:
        return False
    return any(s in text for s in _PORT_TAKEN)


def _exited(proc: subprocess.Popen, what: str, log_path: Path, offset: int) -> RuntimeError:
    if _log_says_port_taken(log_path, offset):
        return PortTaken(f"{what} could not bind its port (exit code {proc.returncode})")
    return RuntimeError(f"{what} exited with code {proc.returncode} while starting (log: {log_path})")


def _wait_for_port(port: int, timeout_s: float, proc: subprocess.Popen, what: str,
                   log_path: Path, offset: int) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise _exited(proc, what, log_path, offset)
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on 127.0.0.1:{port} within {timeout_s}s")


def _start_with_retries(server: "Postgres | Redis | RabbitMQ", launch: Callable[[], None], what: str) -> None:
    """Launches the server; when its port was taken meanwhile, tries again:
    on a fresh port before anyone was told this one, on the same port (a
    restart: clients know it) once whatever held it let go."""
    attempts = 8
    for attempt in range(attempts):
        try:
            launch()
            server.started_once = True
            return
        except PortTaken:
            server.stop_quietly()
            if attempt == attempts - 1:
                raise
            if server.started_once:
                time.sleep(0.5)
            else:
                server.port = free_port()


def _stop_quietly(proc: subprocess.Popen | None, sig: int = signal.SIGKILL) -> None:
    if proc is not None and proc.poll() is None:
        _stop_pid(proc.pid, sig, proc)


def _redis_pid(port: int) -> int | None:
    """The process ID the Redis server on this port reports, or None."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as conn:
            conn.settimeout(2)
            conn.sendall(b"INFO server\r\n")
            reply = b""
            while b"\r\n" not in reply:
                chunk = conn.recv(65536)
                if not chunk:
                    return None
                reply += chunk
            header, _, body = reply.partition(b"\r\n")
            if not header.startswith(b"$"):
                return None  # an error (-LOADING ...) or not Redis
            size = int(header[1:])
            while len(body) < size:
                chunk = conn.recv(65536)
                if not chunk:
                    return None
                body += chunk
    except (OSError, ValueError):
        return None
    for line in body.decode(errors="replace").splitlines():
        if line.startswith("process_id:"):
            return int(line.split(":", 1)[1])
    return None


# Settings for a server whose data is thrown away when the tests end: no
# flush to disk at commit or checkpoint (a CREATE DATABASE, one per test,
# costs a few milliseconds instead of a quarter of a second). What a
# committed transaction makes visible is the same; only an operating-system
# crash could lose it. Not for benchmarks, nor for servers the tests crash.
THROWAWAY = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}


@dataclass
class Postgres:
    directory: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None
    started_once: bool = False  # clients may know the port: a restart keeps it
    # extra server settings (-c name=value), e.g. THROWAWAY
    settings: dict[str, str] = field(default_factory=dict)

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
        _start_with_retries(self, self._launch, "postgres")
        return self

    def _launch(self) -> None:
        log_path = self.directory / "postgres.log"
        offset = log_path.stat().st_size if log_path.exists() else 0
        with open(log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [
                    _pg_bin("postgres"), "-D", str(self.data), "-p", str(self.port),
                    "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={self.directory}",
                    "-c", "max_connections=300", "-c", "shared_buffers=128MB",
                    *[arg for name, value in self.settings.items() for arg in ("-c", f"{name}={value}")],
                ],
                stdout=log, stderr=log, start_new_session=True, user=_postgres_user(),
                cwd=str(self.directory),
            )
        _wait_for_port(self.port, 30, self.proc, "postgres", log_path, offset)
        self._wait_ready(log_path, offset)

    def _wait_ready(self, log_path: Path, offset: int) -> None:
        """Until this server (not another one that took the port) answers."""
        assert self.proc is not None
        deadline = time.monotonic() + 30
        # something else on the port may accept the connection and never answer
        env = dict(os.environ, PGCONNECT_TIMEOUT="3")
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise _exited(self.proc, "postgres", log_path, offset)
            try:
                done = subprocess.run(
                    [_pg_bin("psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "durable",
                     "-d", "postgres", "-tAc", "SHOW data_directory"],
                    capture_output=True, text=True, env=env, timeout=10,
                )
            except subprocess.TimeoutExpired:
                continue
            if self.proc.poll() is not None:
                raise _exited(self.proc, "postgres", log_path, offset)
            if done.returncode == 0:
                if Path(done.stdout.strip()).resolve() != self.data.resolve():
                    raise PortTaken(f"another postgres answers on port {self.port}")
                return
            time.sleep(0.1)
        raise RuntimeError("postgres did not accept connections")

    def stop_quietly(self) -> None:
        _stop_quietly(self.proc, signal.SIGQUIT)
        self.proc = None

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
    started_once: bool = False

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, persist: bool = False) -> "Redis":
        self.directory.mkdir(parents=True, exist_ok=True)
        _start_with_retries(self, lambda: self._launch(persist), "redis-server")
        return self

    def _launch(self, persist: bool) -> None:
        server = shutil.which("redis-server") or "/usr/bin/redis-server"
        args = [server, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.directory),
                "--daemonize", "no", "--protected-mode", "yes"]
        args += ["--appendonly", "yes", "--appendfsync", "always"] if persist else ["--save", "", "--appendonly", "no"]
        log_path = self.directory / "redis.log"
        offset = log_path.stat().st_size if log_path.exists() else 0
        with open(log_path, "ab") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=log, start_new_session=True)
        _wait_for_port(self.port, 15, self.proc, "redis-server", log_path, offset)
        self._check_own(log_path, offset)

    def _check_own(self, log_path: Path, offset: int) -> None:
        """The server listening on the port is this process, not another that took it."""
        assert self.proc is not None
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            pid = _redis_pid(self.port)
            if self.proc.poll() is not None:
                raise _exited(self.proc, "redis-server", log_path, offset)
            if pid is not None:
                if pid != self.proc.pid:
                    raise PortTaken(f"another redis-server answers on port {self.port}")
                return
            time.sleep(0.1)
        raise RuntimeError(f"redis-server on port {self.port} did not answer INFO")

    def stop_quietly(self) -> None:
        _stop_quietly(self.proc)
        self.proc = None

    def stop(self, hard: bool = False) -> None:
        if self.proc is None:
            return
        _stop_pid(self.proc.pid, signal.SIGKILL if hard else signal.SIGTERM, self.proc)
        self.proc = None


@dataclass
class RabbitMQ:
    """A RabbitMQ node of its own (Debian's rabbitmq-server): its own data
    directory, node name, Erlang cookie and port mapper (epmd), all on free
    loopback ports; the server and its epmd are stopped by their PIDs."""

    directory: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None
    epmd: subprocess.Popen | None = None
    started_once: bool = False
    epmd_port: int = field(default_factory=free_port)
    dist_port: int = field(default_factory=free_port)

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}//"

    @property
    def node(self) -> str:
        return f"durable{self.port}@localhost"

    def start(self) -> "RabbitMQ":
        self.directory.mkdir(parents=True, exist_ok=True)
        try:
            _start_with_retries(self, self._launch, "rabbitmq-server")
        except BaseException:
            self.stop(hard=True)
            raise
        return self

    def _env(self) -> dict[str, str]:
        base = self.directory
        return dict(
            os.environ,
            HOME=str(base),  # its Erlang cookie
            ERL_EPMD_PORT=str(self.epmd_port),
            ERL_EPMD_ADDRESS="127.0.0.1",
            RABBITMQ_NODENAME=self.node,
            RABBITMQ_NODE_IP_ADDRESS="127.0.0.1",
            RABBITMQ_NODE_PORT=str(self.port),
            RABBITMQ_DIST_PORT=str(self.dist_port),
            RABBITMQ_MNESIA_BASE=str(base / "mnesia"),
            RABBITMQ_LOG_BASE=str(base / "log"),
            RABBITMQ_LOGS="-",  # to stdout: its log file below
            RABBITMQ_CONFIG_FILE=str(base / "rabbitmq"),
            RABBITMQ_ADVANCED_CONFIG_FILE=str(base / "advanced.config"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(base / "enabled_plugins"),
            RABBITMQ_PID_FILE=str(base / "rabbitmq.pid"),
            RUNNING_UNDER_SYSTEMD="true",  # `exec erl`: the PID is the server's own
        )

    def _launch(self) -> None:
        server = "/usr/lib/rabbitmq/bin/rabbitmq-server"
        if not os.path.exists(server):
            raise RuntimeError("RabbitMQ not found: install the rabbitmq-server package")
        (self.directory / "enabled_plugins").write_text("[].\n")
        log_path = self.directory / "rabbitmq.log"
        offset = log_path.stat().st_size if log_path.exists() else 0
        env = self._env()
        with open(log_path, "ab") as log:
            if self.epmd is None or self.epmd.poll() is not None:
                # our own port mapper, not a daemon: the node would start one that outlives it
                self.epmd = subprocess.Popen(
                    [shutil.which("epmd") or "/usr/bin/epmd", "-port", str(self.epmd_port), "-address", "127.0.0.1"],
                    stdout=log, stderr=log, start_new_session=True, env=env,
                )
                _wait_for_port(self.epmd_port, 15, self.epmd, "epmd", log_path, offset)
            self.proc = subprocess.Popen(
                [server], stdout=log, stderr=log, start_new_session=True, env=env, cwd=str(self.directory),
            )
        _wait_for_port(self.port, 90, self.proc, "rabbitmq-server", log_path, offset)
        self._check_own(log_path, offset)

    def _check_own(self, log_path: Path, offset: int) -> None:
        """The node answering AMQP on the port is this one (its cluster name is its node name)."""
        import amqp

        assert self.proc is not None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise _exited(self.proc, "rabbitmq-server", log_path, offset)
            try:
                conn = amqp.Connection(f"127.0.0.1:{self.port}", userid="guest", password="guest", connect_timeout=3)
                conn.connect()
                name = conn.server_properties.get("cluster_name", "")
                conn.close()
            except Exception:  # noqa: BLE001 - not up yet
                time.sleep(0.2)
                continue
            if name.split("@")[0] != self.node.split("@")[0]:
                raise PortTaken(f"another RabbitMQ ({name}) answers on port {self.port}")
            return
        raise RuntimeError(f"rabbitmq-server on port {self.port} did not accept AMQP connections")

    def stop_quietly(self) -> None:
        _stop_quietly(self.proc)
        self.proc = None

    def stop(self, hard: bool = False, keep_epmd: bool = False) -> None:
        """SIGTERM (a clean stop) or SIGKILL; the port mapper too unless kept
        for a restart."""
        if self.proc is not None:
            _stop_pid(self.proc.pid, signal.SIGKILL if hard else signal.SIGTERM, self.proc, timeout_s=60)
            self.proc = None
        if self.epmd is not None and not keep_epmd:
            _stop_pid(self.epmd.pid, signal.SIGTERM, self.epmd)
            self.epmd = None


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
