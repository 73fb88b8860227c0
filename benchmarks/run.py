"""One command for every benchmark:

    .venv/bin/python -m benchmarks.run            # full: 6-8 minutes on 2 cores
    .venv/bin/python -m benchmarks.run --quick    # ~1.5 minutes
    .venv/bin/python -m benchmarks.run --only throughput,recovery

Starts its own Postgres and Redis on loopback (tests/servers.py), runs each
workload for each system in alternation (A B C, then C B A, ...), repeats,
prints medians and ratios and writes benchmarks/results/<stamp>.json.
Every process it starts is stopped by its PID.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.harness import Worker, child_pids, wait_for  # noqa: E402
from tests.servers import Postgres, Redis  # noqa: E402

PY = sys.executable
SYSTEMS = ("durable", "celery", "celery-careful", "dbos", "durable-threads")
# chains only, when named: durable with every link a message of its own (DURABLE_LOCAL_CHAIN_LINKS=0)
CHAIN_ONLY_SYSTEMS = ("durable-published",)
# celery: a chain with Celery's defaults (every task's result stored in the
# backend); celery-careful: what a careful user writes, intermediate results
# not stored (ignore_result on every task but the last).
CELERY_SYSTEMS = ("celery", "celery-careful")
DURABLE_SYSTEMS = ("durable", "durable-threads")
# durable-threads: 2 worker processes on Celery's threads pool, like DBOS's
# threads in 2 processes; 4 threads each (8 measured slower here).
THREADS_PER_PROCESS = 4


def log(*parts: Any) -> None:
    print(f"[{time.strftime('%H:%M:%S')}]", *parts, flush=True)


def median(values: list[float]) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))]


def wait_until(cond: Callable[[], Any], timeout: float, what: str, interval: float = 0.02) -> Any:
    """tests.harness.wait_for, polling every 20 ms unless told; raises a TimeoutError."""
    return wait_for(cond, timeout, what, interval)


def compile_bytecode() -> None:
    """Byte-compile the repository's packages, as an installed package is:
    with PYTHONDONTWRITEBYTECODE set (as on the benchmark machine) every
    worker would otherwise compile durable's modules from source at each
    start (~0.1-0.3 s of CPU). Site-packages were compiled when installed."""
    import compileall

    for package in ("durable", "workers", "config", "benchmarks", "tests"):
        compileall.compile_dir(str(REPO / package), quiet=1)


def per_round_ratio(rows: list[dict], ours: str, other: str, figure: str) -> float | None:
    """Median over rounds of ours/other (same round, same machine load), or None."""
    pairs = []
    for rd in sorted({r["round"] for r in rows}):
        a = [r for r in rows if r["round"] == rd and r["system"] == ours]
        b = [r for r in rows if r["round"] == rd and r["system"] == other]
        if a and b:
            pairs.append(a[0][figure] / b[0][figure])
    return median(pairs) if pairs else None


def celery_chains(system: str, n: int) -> None:
    """`n` of Celery's own chains of 10 no-op tasks, acks_late, to their ends;
    "celery-careful" stores no intermediate result."""
    from celery import chain

    from benchmarks.celery_app import noop

    handles = []
    for _ in range(n):
        tasks = [noop.si(k) for k in range(10)]
        if system == "celery-careful":
            tasks = [t.set(ignore_result=True) for t in tasks[:-1]] + tasks[-1:]
        handles.append(chain(*tasks).apply_async())
    for h in handles:
        h.get(timeout=300, interval=0.01)


def rss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


class QuietWorker(Worker):
    """tests.harness.Worker at log level WARNING (per-task INFO lines would
    cost plain Celery 10x what they cost durable); ready = pool children up,
    and each trial starts with a warm-up run anyway."""

    def __init__(self, env: dict[str, str], log_path: Path, app: str = "workers.app", concurrency: int = 2,
                 command: str = "celery"):
        super().__init__(env, log_path, concurrency=concurrency, command=command)
        self.concurrency = concurrency
        self.args = [a if a != "--loglevel=INFO" else "--loglevel=WARNING" for a in self.args]
        self.args[self.args.index("workers.app")] = app

    def wait_ready(self, timeout_s: float = 60) -> None:
        wait_until(
            lambda: (self.proc is not None and self.proc.poll() is not None and
                     (_ for _ in ()).throw(RuntimeError(self.log_tail())))
            or len(child_pids(self.pid)) >= self.concurrency,
            timeout_s, "worker pool children",
        )


class ThreadedDurableWorkers:
    """Two `celery -A workers.app worker -P threads` processes; ready when
    each answers a control ping (there are no pool children to count)."""

    def __init__(self, env: dict[str, str], logdir: Path, app: Any, n: int = 2, command: str = "durable"):
        self.workers = [QuietWorker(env, logdir / f"durable-threads-{uuid.uuid4().hex[:6]}.log",
                                    concurrency=THREADS_PER_PROCESS, command=command) for _ in range(n)]
        for w in self.workers:
            w.args[w.args.index("prefork")] = "threads"
        self.app = app

    def start(self, wait: bool = True) -> "ThreadedDurableWorkers":
        for w in self.workers:
            w.start(wait_ready=False)
        if wait:
            names = [w.name for w in self.workers]
            wait_until(lambda: len({r for reply in self.app.control.ping(timeout=0.5)
                                    for r in reply if r.split("@")[0] in names}) == len(names),
                       60, "threads workers answering a ping", 0.1)
        return self

    @property
    def pid(self) -> int:
        return self.workers[0].pid

    def stop(self) -> None:
        for w in self.workers:
            w.stop()


class DbosWorkers:
    """N DBOS processes (`python -m benchmarks.dbos_worker`), by PID."""

    def __init__(self, env: dict[str, str], logdir: Path, n: int = 2):
        self.env = env
        self.logdir = logdir
        self.n = n
        self.procs: list[subprocess.Popen] = []

    def start_one(self, wait: bool = True) -> subprocess.Popen:
        path = self.logdir / f"dbos-{uuid.uuid4().hex[:6]}.log"
        out = open(path, "ab")
        proc = subprocess.Popen([PY, "-m", "benchmarks.dbos_worker"], env=self.env, cwd=str(REPO),
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        proc.log_path = path  # type: ignore[attr-defined]
        self.procs.append(proc)
        if wait:
            wait_until(lambda: (proc.poll() is not None and (_ for _ in ()).throw(
                RuntimeError(path.read_text(errors="replace")[-3000:]))) or b"ready" in path.read_bytes(),
                90, "dbos worker ready", 0.05)
        return proc

    def start(self) -> "DbosWorkers":
        for _ in range(self.n):
            self.start_one()  # one at a time: each launch migrates the system database
        return self

    def kill(self, proc: subprocess.Popen) -> None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=10)
        self.procs.remove(proc)

    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def stop(self) -> None:
        for proc in list(self.procs):
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=10)
            except ProcessLookupError:
                pass
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
            self.procs.remove(proc)


class Bench:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.quick = args.quick
        self.tmp = Path(tempfile.mkdtemp(prefix="durable-bench-"))
        os.chmod(self.tmp, 0o755)
        self.markers = self.tmp / "markers"
        self.markers.mkdir()
        os.chmod(self.markers, 0o777)
        self.logs = self.tmp / "logs"
        self.logs.mkdir()
        self.pg: Postgres | None = None
        self.redis: Redis | None = None
        self.live: list[Any] = []  # workers to stop on the way out
        self.results: dict[str, Any] = {"raw": {}, "summary": {}}

    # --- infrastructure -----------------------------------------------------

    def start_servers(self) -> None:
        self.pg = Postgres(self.tmp / "pg").start()
        self.durable_url = self.pg.create_database("bench_durable")
        self.dbos_url = self.pg.create_database("bench_dbos").replace("postgresql+psycopg://", "postgresql://")
        self.raw_url = self.pg.create_database("bench_raw").replace("postgresql+psycopg://", "postgresql://")
        self.redis = Redis(self.tmp / "redis").start()
        base = self.redis.url.rsplit("/", 1)[0]
        self.durable_broker = base + "/0"
        self.celery_broker, self.celery_backend = base + "/1", base + "/2"
        log(f"postgres :{self.pg.port} (pid {self.pg.proc.pid}), redis :{self.redis.port} (pid {self.redis.proc.pid})")

        os.environ.update(self.base_env())
        from workers.app import dur  # reads the environment set above
        from durable import DurableClient
        import psycopg

        importlib.import_module("benchmarks.workloads")  # registers the bench.* workflows on dur

        self.dur = dur
        self.dur.migrate()
        self.client = DurableClient(database_url=self.durable_url, broker_url=self.durable_broker)
        self.sql = psycopg.connect(self.durable_url.replace("postgresql+psycopg://", "postgresql://"), autocommit=True)

    def base_env(self) -> dict[str, str]:
        env = dict(os.environ)
        for k in [k for k in env if k.startswith("DURABLE_")]:
            del env[k]
        env.update(
            PYTHONPATH=str(REPO),
            BENCH_DIR=str(self.markers),
            DURABLE_HOME=str(self.tmp / "home"),
            DURABLE_DATABASE_URL=self.durable_url,
            DURABLE_BROKER_URL=self.durable_broker,
            DURABLE_IMPORTS="benchmarks.workloads",
            BENCH_CELERY_BROKER=self.celery_broker,
            BENCH_CELERY_BACKEND=self.celery_backend,
            BENCH_DBOS_URL=self.dbos_url,
            BENCH_DBOS_CONCURRENCY=str(self.args.dbos_concurrency),
            BENCH_DBOS_POLL=str(self.args.dbos_poll),
        )
        return env

    def start_workers(self, system: str, wait: bool = True) -> Any:
        env = self.base_env()
        if system in ("durable", "durable-published"):
            if system == "durable-published":
                env["DURABLE_LOCAL_CHAIN_LINKS"] = "0"
            w = QuietWorker(env, self.logs / f"durable-{uuid.uuid4().hex[:6]}.log", "workers.app",
                            command=self.args.durable_command)
            w.start(wait_ready=wait)
        elif system in CELERY_SYSTEMS:
            w = QuietWorker(env, self.logs / f"celery-{uuid.uuid4().hex[:6]}.log", "benchmarks.celery_app")
            w.start(wait_ready=wait)
        elif system == "durable-threads":
            w = ThreadedDurableWorkers(env, self.logs, self.dur.celery, command=self.args.durable_command).start(wait)
        else:
            w = DbosWorkers(env, self.logs).start()
        self.live.append(w)
        return w

    def stop_workers(self, w: Any) -> None:
        w.stop()
        if w in self.live:
            self.live.remove(w)

    def shutdown(self) -> None:
        for w in list(self.live):
            try:
                w.stop()
            except Exception as exc:  # noqa: BLE001
                log("stopping a worker failed:", exc)
        if self.redis:
            self.redis.stop()
        if self.pg:
            self.pg.stop()
        if not self.args.keep:
            shutil.rmtree(self.tmp, ignore_errors=True)

    def dbos_client(self) -> Any:
        if not hasattr(self, "_dbos_client"):
            from dbos import DBOSClient

            self._dbos_client = DBOSClient(system_database_url=self.dbos_url)
        return self._dbos_client

    def flush_celery(self) -> None:
        import redis

        for url in (self.celery_broker, self.celery_backend):
            redis.Redis.from_url(url).flushdb()

    # --- enqueue + wait, per system ------------------------------------------------

    def enqueue(self, system: str, name: str, args: list, wid: str, latencies: dict | None = None, i: int = 0) -> Any:
        t = time.perf_counter()
        if system in DURABLE_SYSTEMS:
            if i % 2 == 0:
                self.dur.registry["bench." + name].options(workflow_id=wid).start(*args)
                kind = "start"
            else:
                self.client.enqueue("bench." + name, args=args, workflow_id=wid)
                kind = "client_enqueue"
            handle = wid
        elif system in CELERY_SYSTEMS:
            from celery import chain
            from benchmarks.celery_app import noop, blocker

            if name == "steps":
                tasks = [noop.si(k) for k in range(args[0])]
            else:  # recover
                tasks = [noop.si(0), blocker.si(args[0]), noop.si(1)]
            if system == "celery-careful":
                tasks = [t.set(ignore_result=True) for t in tasks[:-1]] + tasks[-1:]
            handle = chain(*tasks).apply_async()
            kind = "apply_async"
        else:
            handle = self.dbos_client().enqueue(
                {"queue_name": "bench", "workflow_name": "bench_" + name, "workflow_id": wid}, *args)
            kind = "client_enqueue"
        if latencies is not None:
            latencies.setdefault(kind, []).append((time.perf_counter() - t) * 1e6)
        return handle

    def durable_done(self, prefix: str) -> tuple[int, int | None]:
        row = self.sql.execute(
            "SELECT count(*), max(completed_at_ms) FROM durable_workflows "
            "WHERE workflow_id LIKE %s AND status = 'SUCCESS'", (prefix + "%",)).fetchone()
        return row[0], row[1]

    def dbos_done(self, prefix: str) -> tuple[int, int | None]:
        if not hasattr(self, "_dbos_sql"):
            import psycopg

            self._dbos_sql = psycopg.connect(self.dbos_url, autocommit=True)
        row = self._dbos_sql.execute(
            "SELECT count(*), max(completed_at) FROM dbos.workflow_status "
            "WHERE workflow_uuid LIKE %s AND status = 'SUCCESS'", (prefix + "%",)).fetchone()
        return row[0], row[1]

    def run_batch(self, system: str, count: int, n_steps: int, prefix: str,
                  latencies: dict | None = None, timeout: float = 300) -> float:
        """Enqueue `count` workflows of n_steps no-op steps; seconds from the
        first enqueue to the last completion."""
        handles = []
        t0 = time.time()
        for i in range(count):
            handles.append(self.enqueue(system, "steps", [n_steps], f"{prefix}{i}", latencies, i))
        if system in CELERY_SYSTEMS:
            end = t0
            for h in handles:
                h.get(timeout=timeout, interval=0.01)
            end = time.time()
            return end - t0
        done = self.durable_done if system in DURABLE_SYSTEMS else self.dbos_done
        _, last_ms = wait_until(lambda: (lambda c: c if c[0] >= count else None)(done(prefix)),
                                timeout, f"{system} {count} workflows", 0.05)
        return last_ms / 1000 - t0

    # --- workloads ----------------------------------------------------------------

    def pg_commit_rtt_us(self, n: int = 300) -> dict[str, float]:
        """One INSERT committed by itself (autocommit: a single round trip
        carrying the commit), and BEGIN; INSERT; COMMIT as a driver sends it."""
        import psycopg

        out = {}
        with psycopg.connect(self.raw_url, autocommit=True) as c:
            c.execute("CREATE TABLE IF NOT EXISTS rtt (id bigserial PRIMARY KEY, v text)")
            samples = []
            for i in range(n):
                t = time.perf_counter()
                c.execute("INSERT INTO rtt (v) VALUES (%s)", ("x",))
                samples.append((time.perf_counter() - t) * 1e6)
            out["insert_autocommit_us"] = statistics.median(samples)
        with psycopg.connect(self.raw_url) as c:
            samples = []
            for i in range(n):
                t = time.perf_counter()
                c.execute("INSERT INTO rtt (v) VALUES (%s)", ("x",))
                c.commit()
                samples.append((time.perf_counter() - t) * 1e6)
            out["begin_insert_commit_us"] = statistics.median(samples)
        return out

    def per_step_us(self, system: str, n: int, tag: str) -> float:
        """One workflow of n no-op steps alone: execution time / n."""
        wid = f"ps-{tag}"
        h = self.enqueue(system, "steps", [n], wid)
        if system in CELERY_SYSTEMS:
            t0 = time.time()
            h.get(timeout=300, interval=0.005)
            return (time.time() - t0) * 1e6 / n
        if system in DURABLE_SYSTEMS:
            wait_until(lambda: self.durable_done(wid)[0] >= 1, 300, "per-step workflow", 0.02)
            s, e = self.sql.execute("SELECT started_at_ms, completed_at_ms FROM durable_workflows "
                                    "WHERE workflow_id = %s", (wid,)).fetchone()
        else:
            wait_until(lambda: self.dbos_done(wid)[0] >= 1, 300, "per-step workflow", 0.02)
            s, e = self._dbos_sql.execute("SELECT started_at_epoch_ms, completed_at FROM dbos.workflow_status "
                                          "WHERE workflow_uuid = %s", (wid,)).fetchone()
        return (e - s) * 1000 / n

    def throughput_and_overhead(self) -> None:
        q = self.quick
        count = 100 if q else 500
        rounds = 2 if q else 3
        n_per_step = 200 if q else 1000  # a 1000-task Celery chain alone takes ~13 s
        raw = self.results["raw"].setdefault("throughput", [])
        for r in range(rounds):
            order = list(self.systems) if r % 2 == 0 else list(reversed(self.systems))
            for system in order:
                log(f"round {r + 1}/{rounds}: {system}")
                if system in CELERY_SYSTEMS:
                    self.flush_celery()
                w = self.start_workers(system)
                try:
                    self.run_batch(system, 2, 10, f"warm-{system}-{r}-")  # pool and connections warm
                    lat: dict[str, list[float]] = {}
                    secs = self.run_batch(system, count, 10, f"tp-{system}-{r}-", lat)
                    rtt = self.pg_commit_rtt_us()
                    step_us = self.per_step_us(system, n_per_step, f"{system}-{r}")
                    rec = dict(system=system, round=r, workflows=count, seconds=secs,
                               workflows_per_s=count / secs, steps_per_s=count * 10 / secs,
                               per_step_us=step_us, **rtt,
                               enqueue_us={k: dict(p50=pct(v, 0.5), p99=pct(v, 0.99), n=len(v)) for k, v in lat.items()},
                               enqueue_samples_us=lat)
                    raw.append(rec)
                    log(f"  {count / secs:.1f} wf/s, {count * 10 / secs:.0f} steps/s, {step_us:.0f} us/step "
                        f"(pg commit {rtt['insert_autocommit_us']:.0f} us), enqueue "
                        + ", ".join(f"{k} p50 {pct(v, .5):.0f} us p99 {pct(v, .99):.0f} us" for k, v in lat.items()))
                finally:
                    self.stop_workers(w)

    # canvases ----------------------------------------------------------------------

    def chains(self) -> None:
        """`dur.chain` of 10 no-op Celery tasks (each a dispatched step: its
        own Celery task, its result checkpointed before its ack) against
        Celery's own `chain` of the same 10 tasks with acks_late, by default
        (results stored) and careful (intermediate results not stored). Same
        worker count (2 prefork children), same Redis."""
        count = 30 if self.quick else 100
        rounds = 2 if self.quick else 3
        systems = [s for s in ("durable", "durable-published", "celery", "celery-careful")
                   if s in self.systems or s in self.chain_only_systems]
        raw = self.results["raw"].setdefault("chains", [])
        for r in range(rounds):
            for system in (systems if r % 2 == 0 else list(reversed(systems))):
                log(f"chains round {r + 1}/{rounds}: {system}")
                if system in CELERY_SYSTEMS:
                    self.flush_celery()
                w = self.start_workers(system)
                try:
                    for label, n in (("warm", 2), ("run", count)):
                        prefix = f"ch-{label}-{system}-{r}-"
                        t0 = time.time()
                        if system in ("durable", "durable-published"):
                            from benchmarks.workloads import noop_task

                            for i in range(n):
                                self.dur.chain(*[noop_task.si(k) for k in range(10)]).start(workflow_id=f"{prefix}{i}")
                            _, last_ms = wait_until(
                                lambda: (lambda c: c if c[0] >= n else None)(self.canvases_done(prefix)),
                                300, f"{n} durable chains", 0.05)
                            secs = last_ms / 1000 - t0
                        else:
                            celery_chains(system, n)
                            secs = time.time() - t0
                    raw.append(dict(system=system, round=r, chains=count, seconds=secs, chains_per_s=count / secs))
                    log(f"  {count / secs:.1f} chains/s ({count * 10 / secs:.0f} tasks/s)")
                finally:
                    self.stop_workers(w)

    def limits(self) -> None:
        """500 workflows of 10 no-op steps on a queue whose concurrency limit
        is set too high to bind, against the same workload on a queue
        without limits: the gate's cost on every start."""
        count = 100 if self.quick else 500
        rounds = 2 if self.quick else 3
        raw = self.results["raw"].setdefault("limits", [])
        kinds = ["unlimited", "limited"]
        for r in range(rounds):
            for kind in (kinds if r % 2 == 0 else list(reversed(kinds))):
                queue = "celery" if kind == "unlimited" else "bench-limited"
                log(f"limits round {r + 1}/{rounds}: {kind} (queue {queue})")
                w = QuietWorker(self.base_env(), self.logs / f"limits-{uuid.uuid4().hex[:6]}.log",
                                command=self.args.durable_command)
                w.args[w.args.index("-Q") + 1] = "celery,bench-limited"
                w.start()
                self.live.append(w)
                try:
                    for label, n in (("warm", 4), ("run", count)):
                        prefix = f"lim-{label}-{kind}-{r}-"
                        t0 = time.time()
                        for i in range(n):
                            self.dur.registry["bench.steps"].options(workflow_id=f"{prefix}{i}", queue=queue).start(10)
                        _, last_ms = wait_until(lambda: (lambda c: c if c[0] >= n else None)(self.durable_done(prefix)),
                                                300, f"{n} workflows on {queue}", 0.05)
                    secs = last_ms / 1000 - t0
                    raw.append(dict(kind=kind, round=r, workflows=count, seconds=secs, workflows_per_s=count / secs))
                    log(f"  {count / secs:.1f} wf/s")
                finally:
                    self.stop_workers(w)

    def canvases_done(self, prefix: str) -> tuple[int, int | None]:
        row = self.sql.execute(
            "SELECT count(*), max(completed_at_ms) FROM durable_workflows "
            "WHERE workflow_id LIKE %s AND name = 'durable.canvas' AND status = 'SUCCESS'",
            (prefix + "%",)).fetchone()
        return row[0], row[1]

    # recovery ----------------------------------------------------------------------

    def _marker_lines(self, tag: str) -> list[tuple[int, int, float]]:
        path = self.markers / f"recover-{tag}"
        if not path.exists():
            return []
        out = []
        for line in path.read_text().splitlines():
            a, pid, t = line.split()
            out.append((int(a), int(pid), float(t)))
        return out

    def recovery_trial(self, system: str, mode: str, tag: str, cap: float) -> float | None:
        """mode 'child': SIGKILL the pool child running the blocked step;
        'worker': SIGKILL the whole worker (process group) and start a fresh
        one at once. Returns seconds from the kill to the step restarting,
        or None if it did not within `cap`."""
        if system in CELERY_SYSTEMS:
            self.flush_celery()
        w = self.start_workers(system)
        try:
            self.run_batch(system, 1, 2, f"rwarm-{tag}-")
            self.enqueue(system, "recover", [tag], f"rec-{tag}")
            first = wait_until(lambda: self._marker_lines(tag), 60, "blocked step")[0]
            victim = first[1]
            t0 = time.time()
            if mode == "child":
                os.kill(victim, signal.SIGKILL)
            elif system == "dbos":
                proc = next(p for p in w.procs if p.pid == victim)
                w.kill(proc)
                w.start_one(wait=False)
            else:
                w.kill_all()
                self.live.remove(w)
                w = self.start_workers(system, wait=False)
            try:
                again = wait_until(lambda: len(self._marker_lines(tag)) > 1 and self._marker_lines(tag)[1], cap,
                                   "recovery", 0.01)
            except TimeoutError:
                return None
            # let the recovered run finish, so stopping this worker does not
            # interrupt it and leave a redelivery for the next trial
            try:
                if system == "durable":
                    wait_until(lambda: self.durable_done(f"rec-{tag}")[0], 10, "recovered workflow done")
                elif system == "dbos":
                    wait_until(lambda: self.dbos_done(f"rec-{tag}")[0], 10, "recovered workflow done")
                else:
                    time.sleep(0.5)
            except TimeoutError:
                log(f"  {system} {tag}: recovered workflow did not finish within 10 s")
            return again[2] - t0
        finally:
            self.stop_workers(w)

    def recovery(self) -> None:
        reps = 2 if self.quick else 5
        raw = self.results["raw"].setdefault("recovery", [])
        # the threads variant has no pool children, and its worker kill is the prefork one's
        systems = [s for s in self.systems if s != "durable-threads"]
        cases = [(s, "child") for s in systems if s != "dbos"] + [(s, "worker") for s in systems]
        caps = {"child": 30.0, "worker": 12.0 if self.quick else 25.0}
        for r in range(reps):
            for system, mode in (cases if r % 2 == 0 else list(reversed(cases))):
                if (system in CELERY_SYSTEMS and mode == "worker" and r > 0) or (mode == "worker" and r >= (1 if self.quick else 3)):
                    continue  # deterministic: Redis redelivers only after visibility_timeout (1 h)
                tag = f"{system}-{mode}-{r}"
                secs = self.recovery_trial(system, mode, tag, caps[mode])
                raw.append(dict(system=system, mode=mode, rep=r, seconds=secs, cap=caps[mode]))
                log(f"recovery {system} {mode} kill: " + (f"{secs:.2f} s" if secs is not None else f"> {caps[mode]} s (not recovered)"))

    # replay ----------------------------------------------------------------------

    def _gate_lines(self, tag: str) -> list[tuple[int, float]]:
        path = self.markers / f"gate-{tag}"
        if not path.exists():
            return []
        return [(int(a), float(t)) for a, t in (l.split() for l in path.read_text().splitlines())]

    def replay(self) -> None:
        sizes = [0, 1000, 10000]
        reps = 3 if self.quick else 7
        raw = self.results["raw"].setdefault("replay", [])
        w = self.start_workers("durable")
        try:
            tags = {n: f"replay-{n}-{uuid.uuid4().hex[:4]}" for n in sizes}
            for n, tag in tags.items():  # the 1000 and 10000 histories build in parallel on 2 children
                self.dur.registry["bench.replay"].options(workflow_id=tag).start(tag, n)
            for n, tag in tags.items():
                wait_until(lambda: self._gate_lines(tag) and self._suspended(tag), 300, f"{n}-step history")
            log("replay histories built:", {n: self._step_count(t) for n, t in tags.items()})
            for r in range(reps):
                for n in (sizes if r % 2 == 0 else list(reversed(sizes))):
                    tag = tags[n]
                    before = len(self._gate_lines(tag))
                    self.sql.execute("UPDATE durable_steps SET next_attempt_at_ms = 0 WHERE workflow_id = %s "
                                     "AND status = 'RETRYING'", (tag,))
                    t0 = time.time()
                    self.dur.dispatcher.publish(tag, "bench.replay", "celery")
                    line = wait_until(lambda: len(self._gate_lines(tag)) > before and self._gate_lines(tag)[before],
                                      120, "replay")
                    raw.append(dict(steps=n, rep=r, seconds=line[1] - t0))
                    wait_until(lambda: self._suspended(tag), 60, "suspended again")
                    log(f"replay of {n} steps: {(line[1] - t0) * 1000:.1f} ms")
        finally:
            self.stop_workers(w)

    def _suspended(self, wid: str) -> bool:
        row = self.sql.execute("SELECT lease_owner FROM durable_workflows WHERE workflow_id = %s", (wid,)).fetchone()
        return row is not None and row[0] is None

    def _step_count(self, wid: str) -> int:
        return self.sql.execute("SELECT count(*) FROM durable_steps WHERE workflow_id = %s", (wid,)).fetchone()[0]

    # memory ------------------------------------------------------------------------

    def memory(self) -> None:
        total = 1000 if self.quick else 10000
        raw = self.results["raw"].setdefault("memory", {})
        w = self.start_workers("durable")
        try:
            def snapshot() -> dict[str, int]:
                kids = child_pids(w.pid)
                return dict(main_kb=rss_kb(w.pid), children_kb=sum(rss_kb(p) for p in kids),
                            max_child_kb=max((rss_kb(p) for p in kids), default=0), children=len(kids))

            self.run_batch("durable", 100, 1, "mem-a-", timeout=300)
            time.sleep(0.5)
            raw["after_100"] = snapshot()
            t = self.run_batch("durable", total - 100, 1, "mem-b-", timeout=900)
            time.sleep(0.5)
            raw[f"after_{total}"] = snapshot()
            raw["total"] = total
            raw["seconds_for_rest"] = t
            log("memory:", raw)
        finally:
            self.stop_workers(w)

    # --- summary ------------------------------------------------------------------

    def summarize(self) -> None:
        s = self.results["summary"]
        tp = self.results["raw"].get("throughput", [])
        if tp:
            by = {sys_: [r for r in tp if r["system"] == sys_] for sys_ in self.systems}
            t = s["throughput"] = {}
            for sys_, rows in by.items():
                if not rows:
                    continue
                t[sys_] = dict(
                    workflows_per_s=median([r["workflows_per_s"] for r in rows]),
                    steps_per_s=median([r["steps_per_s"] for r in rows]),
                    per_step_us=median([r["per_step_us"] for r in rows]),
                    per_step_in_pg_commits=median([r["per_step_us"] / r["insert_autocommit_us"] for r in rows]),
                    pg_insert_autocommit_us=median([r["insert_autocommit_us"] for r in rows]),
                    pg_begin_insert_commit_us=median([r["begin_insert_commit_us"] for r in rows]),
                    enqueue={k: dict(p50=median([r["enqueue_us"][k]["p50"] for r in rows if k in r["enqueue_us"]]),
                                     p99=median([r["enqueue_us"][k]["p99"] for r in rows if k in r["enqueue_us"]]))
                             for k in {k for r in rows for k in r["enqueue_us"]}},
                )
            # ratios per round (same round = same machine load), then the median
            for ours in DURABLE_SYSTEMS:
                for other in ("celery", "celery-careful", "dbos"):
                    ratio = per_round_ratio(tp, ours, other, "workflows_per_s")
                    if ratio is not None:
                        t[f"{ours}_vs_{other}"] = ratio
        ch = self.results["raw"].get("chains", [])
        if ch:
            out = s["chains"] = {}
            for sys_ in sorted({r["system"] for r in ch}):
                out[sys_] = dict(chains_per_s=median([r["chains_per_s"] for r in ch if r["system"] == sys_]))
            for ours in ("durable", "durable-published"):
                for other in ("celery", "celery-careful"):
                    ratio = per_round_ratio(ch, ours, other, "chains_per_s")
                    if ratio is not None:
                        out[f"{ours}_vs_{other}"] = ratio
        lim = self.results["raw"].get("limits", [])
        if lim:
            out = s["limits"] = {k: dict(workflows_per_s=median([r["workflows_per_s"] for r in lim if r["kind"] == k]))
                                 for k in ("unlimited", "limited")}
            pairs = []
            for rd in sorted({r["round"] for r in lim}):
                a = [r for r in lim if r["round"] == rd and r["kind"] == "limited"]
                b = [r for r in lim if r["round"] == rd and r["kind"] == "unlimited"]
                if a and b:
                    pairs.append(a[0]["workflows_per_s"] / b[0]["workflows_per_s"])
            if pairs:
                out["limited_vs_unlimited"] = median(pairs)
        rec = self.results["raw"].get("recovery", [])
        if rec:
            out = s["recovery"] = {}
            for r in rec:
                out.setdefault(f"{r['system']}/{r['mode']}", []).append(r["seconds"])
            for k, v in list(out.items()):
                got = [x for x in v if x is not None]
                out[k] = dict(median_s=median(got), recovered=len(got), trials=len(v),
                              samples_s=sorted(round(x, 2) for x in got))
        rp = self.results["raw"].get("replay", [])
        if rp:
            out = s["replay"] = {}
            for n in sorted({r["steps"] for r in rp}):
                out[str(n)] = dict(median_ms=median([r["seconds"] * 1000 for r in rp if r["steps"] == n]))
            if "1000" in out and "10000" in out:
                base = out.get("0", {}).get("median_ms", 0.0)
                out["ratio_10000_vs_1000"] = out["10000"]["median_ms"] / out["1000"]["median_ms"]
                out["ratio_net_of_0_steps"] = (out["10000"]["median_ms"] - base) / max(1e-9, out["1000"]["median_ms"] - base)
        mem = self.results["raw"].get("memory")
        if mem and "after_100" in mem:
            total = mem["total"]
            a, b = mem["after_100"], mem[f"after_{total}"]
            s["memory"] = dict(
                total=total,
                children_kb_after_100=a["children_kb"], children_kb_after_total=b["children_kb"],
                children_growth=b["children_kb"] / a["children_kb"] - 1,
                main_kb_after_100=a["main_kb"], main_kb_after_total=b["main_kb"],
                main_growth=b["main_kb"] / a["main_kb"] - 1,
            )

    def table(self) -> str:
        s = self.results["summary"]
        lines = []
        f = lambda v, fmt="{:.1f}": "-" if v is None else fmt.format(v)  # noqa: E731
        if "limits" in s:
            m = s["limits"]
            lines.append("A queue with a concurrency limit too high to bind vs no limit (workflows of 10 no-op steps)")
            for k in ("unlimited", "limited"):
                lines.append(f"  {k:16} {f(m[k]['workflows_per_s'])} wf/s")
            if "limited_vs_unlimited" in m:
                lines.append(f"  limited / unlimited: {f(m['limited_vs_unlimited'], '{:.2f}')}x (median of per-round ratios)")
            lines.append("")
        if "chains" in s:
            c = s["chains"]
            lines.append("Chains of 10 no-op Celery tasks (2 worker processes): dur.chain vs Celery's chain with acks_late")
            for sys_ in ("durable", "durable-published", "celery", "celery-careful"):
                if sys_ in c:
                    lines.append(f"  {sys_:17} {f(c[sys_]['chains_per_s'])} chains/s")
            for ours in ("durable", "durable-published"):
                for other in ("celery", "celery-careful"):
                    if f"{ours}_vs_{other}" in c:
                        lines.append(f"  {ours} / {other}: {f(c[f'{ours}_vs_{other}'], '{:.2f}')}x (median of per-round ratios)")
            lines.append("")
        if "throughput" in s:
            t = s["throughput"]
            lines.append("Throughput (workflows of 10 no-op steps, 2 worker processes) and per-step overhead (1 workflow of 1000 steps; --quick: 200)")
            lines.append(f"(durable: prefork, 2 children; durable-threads: 2 processes x {THREADS_PER_PROCESS} threads "
                         "on Celery's threads pool; dbos: 2 processes x 8 threads)")
            lines.append(f"{'system':16} {'wf/s':>8} {'steps/s':>8} {'us/step':>8} {'pg commits/step':>16} {'enqueue p50 / p99 (us)':>40}")
            for sys_ in self.systems:
                if sys_ not in t:
                    continue
                r = t[sys_]
                enq = "; ".join(f"{k} {f(v['p50'], '{:.0f}')}/{f(v['p99'], '{:.0f}')}" for k, v in sorted(r["enqueue"].items()))
                lines.append(f"{sys_:16} {f(r['workflows_per_s']):>8} {f(r['steps_per_s'], '{:.0f}'):>8} "
                             f"{f(r['per_step_us'], '{:.0f}'):>8} {f(r['per_step_in_pg_commits'], '{:.2f}'):>16} {enq:>40}")
            pg = t.get("durable") or next(iter(v for k, v in t.items() if isinstance(v, dict)))
            lines.append(f"pg round trip (median of per-round medians): INSERT autocommit {pg['pg_insert_autocommit_us']:.0f} us, "
                         f"BEGIN+INSERT+COMMIT {pg['pg_begin_insert_commit_us']:.0f} us")
            for ours in DURABLE_SYSTEMS:
                for other in ("celery", "celery-careful", "dbos"):
                    if f"{ours}_vs_{other}" in t:
                        lines.append(f"{ours} / {other} throughput (median of per-round ratios): "
                                     f"{t[f'{ours}_vs_{other}']:.2f}x")
        if "recovery" in s:
            lines.append("")
            lines.append("Recovery latency: SIGKILL -> interrupted step starting again")
            for k, v in s["recovery"].items():
                lines.append(f"  {k:16} median {f(v['median_s'], '{:.2f}')} s  ({v['recovered']}/{v['trials']} recovered "
                             f"within cap; samples {v.get('samples_s', [])})")
        if "replay" in s:
            lines.append("")
            lines.append("Replay: publish -> next new step starting, workflow with N checkpointed steps")
            for k, v in s["replay"].items():
                if isinstance(v, dict):
                    lines.append(f"  N={k:>6}: median {v['median_ms']:.1f} ms")
            if "ratio_10000_vs_1000" in s["replay"]:
                lines.append(f"  ratio 10000/1000: {s['replay']['ratio_10000_vs_1000']:.2f} "
                             f"(net of the 0-step fixed cost: {s['replay']['ratio_net_of_0_steps']:.2f})")
        if "memory" in s:
            m = s["memory"]
            lines.append("")
            lines.append(f"Memory (durable worker RSS, 1-step workflows): pool children {m['children_kb_after_100'] / 1024:.1f} MiB after 100 -> "
                         f"{m['children_kb_after_total'] / 1024:.1f} MiB after {m['total']} ({m['children_growth'] * 100:+.1f}%); "
                         f"main {m['main_kb_after_100'] / 1024:.1f} -> {m['main_kb_after_total'] / 1024:.1f} MiB ({m['main_growth'] * 100:+.1f}%)")
        return "\n".join(lines)

    def run(self) -> int:
        parts = self.args.only.split(",") if self.args.only else ["throughput", "recovery", "replay", "memory", "chains", "limits"]
        self.systems = [s for s in SYSTEMS if s in self.args.systems.split(",")]
        self.chain_only_systems = [s for s in CHAIN_ONLY_SYSTEMS if s in self.args.systems.split(",")]
        started = time.time()
        compile_bytecode()
        try:
            self.start_servers()
            for part in parts:
                log(f"== {part}")
                getattr(self, {"throughput": "throughput_and_overhead"}.get(part, part))()
        finally:
            self.results["meta"] = dict(
                quick=self.quick, seconds=time.time() - started, command=" ".join(sys.argv),
                cpus=os.cpu_count(), loadavg_end=os.getloadavg(), dbos_concurrency=self.args.dbos_concurrency,
                dbos_poll=self.args.dbos_poll, at=time.strftime("%Y-%m-%dT%H:%M:%S"),
                durable_command=self.args.durable_command,
            )
            self.shutdown()
        self.summarize()
        out = REPO / "benchmarks" / "results"
        out.mkdir(exist_ok=True)
        path = out / f"{time.strftime('%Y%m%d-%H%M%S')}{'-quick' if self.quick else ''}.json"
        path.write_text(json.dumps(self.results, indent=1, default=str))
        print()
        print(self.table())
        print(f"\n{time.time() - started:.0f} s; JSON: {path}")
        return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="fewer workflows and rounds (~1.5 min)")
    p.add_argument("--only", default="", help="comma list of: throughput,recovery,replay,memory,chains,limits")
    p.add_argument("--systems", default=",".join(SYSTEMS), help="comma list of: " + ",".join(SYSTEMS + CHAIN_ONLY_SYSTEMS))
    p.add_argument("--dbos-concurrency", type=int, default=8,
                   help="DBOS worker_concurrency per process (2 processes); with 1, one dequeue per poll caps DBOS at 2/poll wf/s")
    p.add_argument("--dbos-poll", type=float, default=0.1, help="DBOS queue polling interval, s (DBOS default 1.0)")
    p.add_argument("--keep", action="store_true", help="keep the scratch directory (logs)")
    p.add_argument("--durable-command", choices=("durable", "celery"), default="durable",
                   help="start durable's workers with `durable worker -A workers.app` (default) or "
                        "`celery -A workers.app worker`")
    return Bench(p.parse_args(argv)).run()


if __name__ == "__main__":
    sys.exit(main())
