"""The chaos driver: real Postgres, Redis (or RabbitMQ) and Celery workers,
a mixed load, faults at random but reproducible times, then invariants.

    .venv/bin/python -m tests.chaos.driver --seconds 300 --workflows 1000 --seed N [--broker rabbitmq]

See tests/chaos/README.md. Exits 0 only when every invariant holds.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from sqlalchemy import create_engine, text

from tests.harness import REPO, Backend, Worker
from tests.servers import Postgres, RabbitMQ, Redis

TERMINAL = ("SUCCESS", "ERROR", "CANCELLED", "MAX_RECOVERY_ATTEMPTS_EXCEEDED")
MEMORY_QUEUE = "chaos-memory"
CLOCK_QUEUE = "chaos-clock"  # consumed by clock-ahead workers only (besides the shared queue)
CLOCK_AHEAD_S = 120  # how far ahead a clock_ahead worker's wall clock reads
# A gil_hold step holds the GIL this many leases (at least 3 are checked). Its
# length is CPU work sized by a rate measured when the worker starts (a busy
# start measured it 22 % slow once: 5.1 s held of 6.5 asked): room to spare.
GIL_LEASES = 4.5
GIL_WORKFLOWS = 1  # gil_hold workflows per fault (each costs GIL_LEASES leases of CPU)
CLOCK_WORKFLOWS = 3  # workflows sent to the clock-ahead workers' own queue per clock_ahead fault
CHAIN_SHARE = 0.15  # of the load: a dur.chain of 2-5 plain Celery tasks instead of a chaos_order
LINK_WORKFLOW = "durable.task:chaos.link"

# Every kind the full run injects (with Redis as the broker), each scheduled
# at least once.
FAULT_WEIGHTS = {
    "kill_child": 5,
    "kill_worker": 3,
    "freeze_worker": 2,
    "oom": 2,
    "redis_restart": 1,
    "redis_lose_data": 1,
    "pg_restart_fast": 1,
    "pg_restart_immediate": 1,
    "gil_hold": 1,
    "clock_ahead": 1,
}


def fault_weights(broker: str, kinds: str | None = None) -> dict[str, int]:
    """The kinds for this broker (its restarts are the broker's own), or
    those of them named in `kinds` (comma-separated)."""
    weights = {kind.replace("redis", broker): weight for kind, weight in FAULT_WEIGHTS.items()}
    if kinds:
        unknown = set(kinds.split(",")) - set(weights)
        if unknown:
            raise SystemExit(f"unknown fault kinds for {broker}: {sorted(unknown)}; known: {sorted(weights)}")
        weights = {kind: weights[kind] for kind in kinds.split(",")}
    return weights


def log(message: str) -> None:
    print(f"[chaos {time.strftime('%H:%M:%S')}] {message}", flush=True)


@dataclass
class Report:
    seed: int
    workflows: int = 0
    steps: int = 0
    faults: collections.Counter = field(default_factory=collections.Counter)
    recoveries: int = 0
    steps_with_crashes: int = 0
    dedup_rejected: int = 0
    skipped_deliveries: int = 0
    fenced_writes: int = 0
    unexplained_reruns: int = 0
    worker_exits: int = 0
    discarded_runs: int = 0
    zombie_runs_fenced: int = 0
    takeovers: int = 0  # claims of a lease another execution held (expired, or the holder known dead)
    takeovers_of_dead: int = 0
    takeovers_of_live: collections.Counter = field(default_factory=collections.Counter)  # by why
    recoveries_for_live: int = 0
    gil_runs: int = 0
    chains: int = 0  # dur.chain workflows checked
    gil_held_min: float | None = None
    clock_steps: int = 0  # step runs in processes whose wall clock read ahead
    clock_skew_s: tuple[float, float] | None = None  # (min, max) seen in those
    clock_claims: int = 0  # claims made by clock-ahead processes
    drain_seconds: float | None = None
    drain_after_load_seconds: float | None = None
    active_at_last_fault: int | None = None
    violations: list[str] = field(default_factory=list)

    def violate(self, message: str) -> None:
        self.violations.append(message)


class Chaos:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.seed = args.seed
        self.fault_rng = random.Random(self.seed)
        self.load_rng = random.Random(self.seed * 7919 + 1)
        self.dir = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="durable-chaos-"))
        self.dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.dir, 0o755)
        self.effects = self.dir / "effects.log"
        self.report = Report(seed=self.seed)
        self.pg: Postgres | None = None
        self.redis: Redis | None = None
        self.rabbitmq: RabbitMQ | None = None
        self.weights = fault_weights(args.broker, args.kinds)
        self.workers: list[Worker] = []
        self.memory_worker: Worker | None = None
        self.all_workers: list[Worker] = []
        self.cgroup: Path | None = None
        self.engine = None
        self.client = None
        self.enqueued: list[tuple[str, str, dict]] = []  # (workflow_id, name, params)
        self.dedup_keys: list[str] = []
        self.enqueue_done = threading.Event()
        self.stop_load = threading.Event()
        self.lock = threading.RLock()
        self.stop_supervisor = threading.Event()
        self.load_end: float | None = None
        self.frozen_pids: set[int] = set()
        self.disturbed_pids: set[int] = set()  # processes a fault killed or froze
        # wall time (this host's, = Postgres's clock_timestamp()) until which
        # a process is known alive: killed by a fault, or retired (warm shutdown)
        self.alive_until: dict[int, float] = {}
        self.frozen_windows: dict[int, list[tuple[float, float]]] = collections.defaultdict(list)
        self.skewed: set[Worker] = set()  # clock_ahead workers (and their replacements)
        self.skewed_pids: set[int] = set()
        self.gil_workflows: set[str] = set()
        self.retiring: list[threading.Thread] = []

    # --- setting up -----------------------------------------------------------

    def start_servers(self) -> None:
        self.pg = Postgres(self.dir / "pg").start()
        self.database_url = self.pg.create_database("chaos")
        if self.args.broker == "rabbitmq":
            self.rabbitmq = RabbitMQ(self.dir / "rabbitmq").start()
        else:
            self.redis = Redis(self.dir / "redis").start(persist=True)
        self.engine = create_engine(self.database_url, pool_pre_ping=True, pool_size=2)
        from durable import DurableClient, Settings
        from durable.database import Database

        Database(self.database_url).migrate()
        from tests.chaos.workflows import metadata

        metadata.create_all(self.engine)
        self.install_claim_audit()
        self.client = DurableClient(settings=Settings(
            home=str(self.dir / "home"), database_url=self.database_url,
            broker_url=self.broker_url, redelivery_seconds=self.args.redelivery,
        ))
        from durable import Durable

        self.canvases = Durable(settings=Settings(  # dur.chain is the app's
            home=str(self.dir / "home"), database_url=self.database_url,
            broker_url=self.broker_url, redelivery_seconds=self.args.redelivery,
        ))

    def install_claim_audit(self) -> None:
        """Every claim (a new lease epoch) leaves a row in `chaos_claims`,
        written by a trigger in the claim's own transaction: who held the
        lease, until when, who took it and at what time on Postgres's clock,
        and whether it counted a recovery. The driver's own record, not
        durable's: invariant 8 compares it with the processes the faults
        killed, froze or left alone."""
        with self.engine.begin() as conn:
            conn.execute(text(
                "CREATE TABLE chaos_claims (id bigserial PRIMARY KEY, workflow_id text NOT NULL,"
                " at_ms double precision NOT NULL, old_owner text, old_expires_ms bigint, new_owner text,"
                " new_epoch int, old_recoveries int, new_recoveries int, old_status text, new_status text)"))
            conn.execute(text(
                "CREATE FUNCTION chaos_log_claim() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
                " INSERT INTO chaos_claims (workflow_id, at_ms, old_owner, old_expires_ms, new_owner,"
                " new_epoch, old_recoveries, new_recoveries, old_status, new_status) VALUES"
                " (NEW.workflow_id, extract(epoch FROM clock_timestamp()) * 1000, OLD.lease_owner,"
                " OLD.lease_expires_at_ms, NEW.lease_owner, NEW.lease_epoch, OLD.recovery_attempts,"
                " NEW.recovery_attempts, OLD.status, NEW.status); RETURN NULL; END $$"))
            conn.execute(text(
                "CREATE TRIGGER chaos_claims AFTER UPDATE ON durable_workflows FOR EACH ROW"
                " WHEN (NEW.lease_epoch IS DISTINCT FROM OLD.lease_epoch) EXECUTE FUNCTION chaos_log_claim()"))

    @property
    def broker_url(self) -> str:
        server = self.rabbitmq or self.redis
        assert server is not None
        return server.url

    def worker_env(self, **extra: str) -> dict[str, str]:
        backend = Backend("chaos", self.database_url, self.broker_url, self.dir / "home")
        return backend.env(
            self.dir / "effects",
            DURABLE_IMPORTS="tests.chaos.workflows",
            DURABLE_CHAOS_EFFECTS=str(self.effects),
            DURABLE_LEASE_SECONDS=str(self.args.lease),
            DURABLE_SWEEP_INTERVAL_SECONDS="0.5",
            DURABLE_REDELIVERY_SECONDS=str(self.args.redelivery),
            **extra,
        )

    def new_worker(self, wait: bool = False, skewed: bool = False) -> Worker:
        """A general worker; `skewed`: one whose processes' wall clock reads
        CLOCK_AHEAD_S ahead (libfaketime), which also consumes CLOCK_QUEUE."""
        n = len(self.all_workers)
        if skewed:
            from tests.chaos.skew import skewed_env

            worker = Worker(skewed_env(self.worker_env(), CLOCK_AHEAD_S), self.dir / f"worker{n}-clock.log",
                            concurrency=self.args.concurrency, queues=f"celery,{CLOCK_QUEUE}",
                            name=f"chaos{n}clock")
            self.skewed.add(worker)
        else:
            worker = Worker(self.worker_env(), self.dir / f"worker{n}.log",
                            concurrency=self.args.concurrency, name=f"chaos{n}")
        self.all_workers.append(worker)
        worker.start(wait_ready=wait)
        return worker

    def note_skewed_children(self) -> None:
        for worker in list(self.skewed):
            if worker.proc is not None:
                self.skewed_pids.update(worker.children())

    def replace_when_ready(self, newcomer: Worker, retiree: Worker) -> None:
        try:
            newcomer.wait_ready(120)
        except RuntimeError as exc:  # killed by another fault meanwhile, or slow: retire anyway
            log(f"{newcomer.name} not ready ({str(exc).splitlines()[0]}); retiring {retiree.name} anyway")
        with self.lock:
            if retiree not in self.workers or retiree.proc is None or retiree.proc.poll() is not None:
                return  # a fault killed it meanwhile (and replaced it)
            self.workers.remove(retiree)
            log(f"{newcomer.name} is ready: warm shutdown of {retiree.name}")
            self.retire(retiree)

    def retire(self, worker: Worker) -> None:
        """A warm shutdown (SIGTERM to the main process only: running steps
        finish, their leases still renewed), SIGKILL after 60 s; in a thread."""
        children = worker.children()
        proc = worker.proc
        assert proc is not None
        os.kill(proc.pid, signal.SIGTERM)

        def wait() -> None:
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                log(f"retired worker {worker.name} still running after 60 s: SIGKILL")
                self.disturbed_pids.update(children)
                self.ended(children)
                worker.kill_all()
                return
            # its children exited before it did (the pool waits for them)
            self.ended(children)

        waiter = threading.Thread(target=wait, daemon=True)
        waiter.start()
        self.retiring.append(waiter)

    def ended(self, pids: list[int]) -> None:
        """These processes are gone by now; one a fault killed earlier keeps
        the time it was killed (a retired worker's child may have been)."""
        now = time.time()
        for pid in pids:
            self.alive_until[pid] = min(self.alive_until.get(pid, now), now)

    def memory_env(self) -> dict[str, str]:
        group = Path("/sys/fs/cgroup/memory") / f"durable-chaos-{uuid.uuid4().hex[:8]}"
        try:
            group.mkdir()
            (group / "memory.limit_in_bytes").write_text(str(self.args.memory_limit_mb * 1024 * 1024))
            self.cgroup = group
            return {"DURABLE_CHAOS_MEMORY_CGROUP": str(group)}
        except OSError:
            return {"DURABLE_CHAOS_MEMORY_RLIMIT_MB": "1500"}

    def start_workers(self) -> None:
        for _ in range(self.args.workers):
            self.workers.append(self.new_worker())
        n = len(self.all_workers)
        self.memory_worker = Worker(self.worker_env(**self.memory_env()), self.dir / f"worker{n}-memory.log",
                                    concurrency=1, queues=MEMORY_QUEUE, name=f"chaos{n}mem")
        self.all_workers.append(self.memory_worker)
        self.memory_worker.start(wait_ready=False)
        for worker in self.workers + [self.memory_worker]:
            worker.wait_ready(120)

    # --- the load -------------------------------------------------------------

    def _retry(self, what: str, operation: Callable[[], Any], give_up_s: float = 120) -> Any:
        """The driver is a client too: it waits out a database that is down."""
        deadline = time.monotonic() + give_up_s
        while True:
            try:
                return operation()
            except Exception as exc:  # noqa: BLE001
                from durable.errors import DuplicateWorkflowError

                if isinstance(exc, DuplicateWorkflowError) or time.monotonic() > deadline:
                    raise
                time.sleep(0.3)

    def enqueue_one(self, i: int) -> None:
        rng = self.load_rng
        if rng.random() < CHAIN_SHARE:
            self.enqueue_chain(i, rng.randint(2, 5), round(rng.choice([0.0, 0.05, 0.2]), 2))
            return
        params = dict(
            plain_steps=rng.randint(1, 4), flaky_failures=rng.choice([0, 0, 1, 2]),
            with_child=rng.random() < 0.3, pause=round(rng.choice([0.0, 0.05, 0.2, 0.4]), 2),
        )
        dedup = f"order-{i}" if rng.random() < 0.15 else None
        workflow_id = f"c{self.seed}-{i}"
        handle = self._retry("enqueue", lambda: self.client.enqueue(
            "chaos_order", kwargs=params, workflow_id=workflow_id, dedup_key=dedup,
        ))
        with self.lock:
            self.enqueued.append((handle.workflow_id, "chaos_order", params))
        if dedup:
            self.dedup_keys.append(dedup)
            self.try_duplicate(dedup, workflow_id)

    def enqueue_chain(self, i: int, links: int, pause: float) -> None:
        """A `dur.chain` of `links` plain Celery tasks (`chaos.link`)."""
        from celery import signature

        workflow_id = f"c{self.seed}-{i}-chain"
        tasks = [signature("chaos.link", args=("start", pause))] + [
            signature("chaos.link", args=(pause,)) for _ in range(links - 1)
        ]
        self._retry("enqueue chain", lambda: self.canvases.chain(*tasks).start(workflow_id=workflow_id))
        with self.lock:
            self.enqueued.append((workflow_id, "durable.canvas", {"links": links}))

    def try_duplicate(self, dedup: str, holder: str) -> None:
        from durable.errors import DuplicateWorkflowError

        try:
            handle = self._retry("duplicate", lambda: self.client.enqueue(
                "chaos_noop", workflow_id=f"{holder}-dup", dedup_key=dedup,
            ))
        except DuplicateWorkflowError as exc:
            self.report.dedup_rejected += 1
            if exc.workflow_id != holder:
                self.report.violate(f"dedup {dedup}: rejected naming {exc.workflow_id}, holder is {holder}")
            return
        # accepted: only right if the holder had already ended
        status = self._retry("status", lambda: self.workflow_status(holder))
        with self.lock:
            self.enqueued.append((handle.workflow_id, "chaos_noop", {}))
        if status not in TERMINAL:
            self.report.violate(f"dedup {dedup}: a second workflow was admitted while {holder} was {status}")

    def workflow_status(self, workflow_id: str) -> str | None:
        with self.engine.connect() as conn:
            return conn.execute(text("SELECT status FROM durable_workflows WHERE workflow_id = :w"),
                                {"w": workflow_id}).scalar()

    def load_loop(self, load_seconds: float) -> None:
        try:
            start = time.monotonic()
            n = self.args.workflows
            for i in range(n):
                if self.stop_load.is_set():
                    break
                due = start + load_seconds * i / n
                time.sleep(max(0.0, due - time.monotonic()))
                try:
                    self.enqueue_one(i)
                except Exception as exc:  # noqa: BLE001
                    self.report.violate(f"could not enqueue workflow {i}: {exc!r}")
        finally:
            self.load_end = time.monotonic()
            self.enqueue_done.set()

    # --- faults -----------------------------------------------------------------

    def schedule(self) -> list[tuple[float, str]]:
        rng = self.fault_rng
        count = max(self.args.faults, len(self.weights))
        kinds = list(self.weights)
        population, weights = zip(*self.weights.items())
        kinds += rng.choices(population, weights, k=count - len(kinds))
        rng.shuffle(kinds)
        window = self.args.seconds - 2.0
        times = sorted(rng.uniform(2.0, window) for _ in kinds)
        return list(zip(times, kinds))

    def busy_pids(self) -> set[int]:
        """Processes holding a lease right now: the ones in the middle of a workflow."""
        try:
            with self.engine.connect() as conn:
                owners = conn.execute(text(
                    "SELECT lease_owner FROM durable_workflows WHERE status = 'PENDING'"
                    " AND lease_owner IS NOT NULL")).scalars().all()
        except Exception:  # noqa: BLE001 - e.g. Postgres is down: pick blindly
            return set()
        return {int(o.rsplit(":", 1)[1]) for o in owners if o.rsplit(":", 1)[-1].isdigit()}

    def pick_worker(self) -> Worker:
        busy = self.busy_pids()
        live = self.live_workers()
        running = [w for w in live if busy & set(w.children())]
        return self.fault_rng.choice(running or live)

    def supervise_loop(self) -> None:
        """Like a process supervisor (systemd, a container restart policy):
        a worker that exits by itself is replaced, and counted."""
        while not self.stop_supervisor.wait(1.0):
            with self.lock:
                for worker in list(self.workers) + [self.memory_worker]:
                    if worker is None or worker.proc is None or worker.proc.poll() is None:
                        continue
                    code = worker.proc.returncode
                    worker.proc = None
                    self.report.worker_exits += 1
                    log(f"worker {worker.name} exited by itself (code {code}); starting a replacement")
                    if worker is self.memory_worker:
                        replacement = Worker(worker.env, self.dir / f"worker{len(self.all_workers)}-memory.log",
                                             concurrency=1, queues=MEMORY_QUEUE,
                                             name=f"chaos{len(self.all_workers)}mem")
                        self.all_workers.append(replacement)
                        replacement.start(wait_ready=False)
                        self.memory_worker = replacement
                    else:
                        self.workers.remove(worker)
                        self.workers.append(self.new_worker(skewed=worker in self.skewed))
                self.note_skewed_children()

    def live_workers(self) -> list[Worker]:
        return [w for w in self.workers if w.proc is not None and w.proc.poll() is None]

    def inject(self, kind: str) -> str:
        rng = self.fault_rng
        if kind == "kill_child":
            busy = self.busy_pids()
            candidates = [(w, c) for w in self.live_workers() for c in w.children()]
            if not candidates:
                return "no child to kill"
            running = [(w, c) for w, c in candidates if c in busy]
            while running or candidates:
                worker, child = rng.choice(running or candidates)
                killed_at = time.time()
                try:
                    os.kill(child, signal.SIGKILL)
                except ProcessLookupError:  # exited since it was listed (a retiring worker's, a recycled one)
                    running = [wc for wc in running if wc[1] != child]
                    candidates = [wc for wc in candidates if wc[1] != child]
                    continue
                self.disturbed_pids.add(child)
                self.alive_until[child] = killed_at
                return f"SIGKILL child {child} of {worker.name}{' (running a workflow)' if running else ''}"
            return "no child to kill"
        if kind == "kill_worker":
            worker = self.pick_worker()
            self.note_skewed_children()
            self.disturbed_pids.update(worker.children())
            self.disturbed_pids.add(worker.pid)
            self.alive_until.update({pid: time.time() for pid in worker.children()})
            worker.kill_all()
            self.workers.remove(worker)
            replacement = self.new_worker(skewed=worker in self.skewed)  # the same host comes back
            self.workers.append(replacement)
            return f"SIGKILL worker {worker.name} (main and children); started {replacement.name}"
        if kind == "freeze_worker":
            worker = self.pick_worker()
            self.disturbed_pids.update(worker.children())
            self.disturbed_pids.add(worker.pid)
            self.frozen_pids.update(worker.children())
            frozen_s = self.args.lease * 2 + 2 + rng.random() * 2
            children = worker.children()
            stopped_at = time.time()
            os.killpg(worker.pid, signal.SIGSTOP)
            time.sleep(frozen_s)
            os.killpg(worker.pid, signal.SIGCONT)
            for pid in children:
                self.frozen_windows[pid].append((stopped_at, time.time()))
            return f"SIGSTOP {worker.name} for {frozen_s:.1f}s (lease {self.args.lease}s), then SIGCONT"
        if kind == "oom":
            workflow_id = f"c{self.seed}-hog-{self.report.faults['oom']}"
            self._retry("enqueue hog", lambda: self.client.enqueue(
                "chaos_hog", args=[self.args.memory_limit_mb * 2], workflow_id=workflow_id, queue=MEMORY_QUEUE,
            ))
            with self.lock:
                self.enqueued.append((workflow_id, "chaos_hog", {}))
            return f"{workflow_id} allocates {self.args.memory_limit_mb * 2} MB under a {self.args.memory_limit_mb} MB limit"
        if kind == "gil_hold":
            hold_s = round(self.args.lease * GIL_LEASES, 2)
            ids = []
            for j in range(GIL_WORKFLOWS):
                workflow_id = f"c{self.seed}-gil-{self.report.faults['gil_hold']}-{j}"
                self._retry("enqueue gil", lambda: self.client.enqueue(
                    "chaos_gil", args=[hold_s], workflow_id=workflow_id,
                ))
                with self.lock:
                    self.enqueued.append((workflow_id, "chaos_gil", {"seconds": hold_s}))
                    self.gil_workflows.add(workflow_id)
                ids.append(workflow_id)
            return f"{', '.join(ids)}: a step holding the GIL {hold_s}s (lease {self.args.lease}s)"
        if kind == "clock_ahead":
            # a worker whose clock is ahead joins the pool; once it is ready, one
            # other stops warmly (a non-skewed one while two or more are left)
            self.note_skewed_children()
            plain = [w for w in self.live_workers() if w not in self.skewed]
            retiree = rng.choice(plain if len(plain) > 1 else self.live_workers())
            newcomer = self.new_worker(skewed=True)
            self.workers.append(newcomer)
            waiter = threading.Thread(target=self.replace_when_ready, args=(newcomer, retiree), daemon=True)
            waiter.start()
            self.retiring.append(waiter)
            # some of the load goes to the skewed workers for sure
            ids = []
            for j in range(CLOCK_WORKFLOWS):
                params = dict(plain_steps=1 + j, flaky_failures=j % 3, with_child=j == 0, pause=0.05)
                workflow_id = f"c{self.seed}-clock-{self.report.faults['clock_ahead']}-{j}"
                self._retry("enqueue clock", lambda: self.client.enqueue(
                    "chaos_order", kwargs=params, workflow_id=workflow_id, queue=CLOCK_QUEUE,
                ))
                with self.lock:
                    self.enqueued.append((workflow_id, "chaos_order", params))
                ids.append(workflow_id)
            return (f"started {newcomer.name} (wall clock +{CLOCK_AHEAD_S}s), to replace "
                    f"{retiree.name} (warm shutdown) once ready; {len(ids)} workflows on {CLOCK_QUEUE}")
        if kind in ("redis_restart", "redis_lose_data"):
            lose = kind == "redis_lose_data"
            self.redis.stop(hard=True)
            if lose:
                for path in list(self.redis.directory.glob("appendonly*")) + list(self.redis.directory.glob("*.rdb")):
                    shutil.rmtree(path) if path.is_dir() else path.unlink()
            down_s = 0.5 + rng.random() * 2
            time.sleep(down_s)
            self.redis.start(persist=True)
            return f"redis SIGKILL, {'data wiped, ' if lose else 'AOF kept, '}down {down_s:.1f}s"
        if kind in ("rabbitmq_restart", "rabbitmq_lose_data"):
            lose = kind == "rabbitmq_lose_data"
            self.rabbitmq.stop(hard=True, keep_epmd=True)
            if lose:  # its queues and their messages
                shutil.rmtree(self.rabbitmq.directory / "mnesia", ignore_errors=True)
            down_s = 0.5 + rng.random() * 2
            time.sleep(down_s)
            self.rabbitmq.start()
            return f"rabbitmq SIGKILL, {'data wiped, ' if lose else 'durable queues kept, '}down {down_s:.1f}s + its start"
        if kind in ("pg_restart_fast", "pg_restart_immediate"):
            mode = "fast" if kind.endswith("fast") else "immediate"
            self.pg.stop(mode=mode)
            down_s = 0.5 + rng.random() * 3
            time.sleep(down_s)
            self.pg.start()
            return f"postgres stop -m {mode}, down {down_s:.1f}s"
        raise ValueError(kind)

    # --- draining and checking ----------------------------------------------------

    def active_count(self) -> int:
        with self.engine.connect() as conn:
            return conn.execute(text(
                "SELECT count(*) FROM durable_workflows WHERE status IN ('ENQUEUED', 'PENDING')"
            )).scalar()

    def drain(self, timeout_s: float, what: str = "workflows") -> bool:
        deadline = time.monotonic() + timeout_s
        last_log = 0.0
        while time.monotonic() < deadline:
            try:
                active = self.active_count()
            except Exception:  # noqa: BLE001
                active = -1
            if active == 0 and self.enqueue_done.is_set():
                return True
            if time.monotonic() - last_log > 10:
                log(f"draining {what}: {active} workflow(s) not terminal")
                last_log = time.monotonic()
            time.sleep(0.5)
        return False

    def check_dedup_released(self) -> None:
        """Every dedup key was held by a workflow that is now terminal: each must be free."""
        from durable.errors import DuplicateWorkflowError

        for key in self.dedup_keys:
            try:
                handle = self._retry("re-enqueue", lambda: self.client.enqueue(
                    "chaos_noop", workflow_id=f"release-{key}", dedup_key=key,
                ))
                with self.lock:
                    self.enqueued.append((handle.workflow_id, "chaos_noop", {}))
            except DuplicateWorkflowError as exc:
                self.report.violate(f"dedup key {key} still held by {exc.workflow_id} after the drain")

    def check(self) -> None:
        r = self.report
        with self.engine.connect() as conn:
            workflows = {row["workflow_id"]: dict(row) for row in conn.execute(text(
                "SELECT workflow_id, name, status, output, error, recovery_attempts, lease_epoch,"
                " parent_workflow_id, dedup_key FROM durable_workflows")).mappings()}
            steps: dict[tuple[str, int], dict] = {
                (row["workflow_id"], row["step_id"]): dict(row) for row in conn.execute(text(
                    "SELECT workflow_id, step_id, name, status, output, attempts, crashes FROM durable_steps"
                )).mappings()
            }
            tx_rows = [dict(row) for row in conn.execute(text(
                "SELECT workflow_id, step_id, input, nonce FROM chaos_tx")).mappings()]
            held = conn.execute(text(
                "SELECT count(*) FROM durable_workflows WHERE dedup_key IS NOT NULL"
                " AND status IN ('ENQUEUED', 'PENDING')")).scalar()
            claims = [dict(row) for row in conn.execute(text(
                "SELECT * FROM chaos_claims ORDER BY id")).mappings()]
        effects = [json.loads(line) for line in self.effects.read_text().splitlines() if line.strip()] \
            if self.effects.exists() else []

        r.workflows = len(workflows)
        r.steps = len(steps)
        r.recoveries = sum(w["recovery_attempts"] for w in workflows.values())
        r.steps_with_crashes = sum(1 for s in steps.values() if s["crashes"])
        if held:
            r.violate(f"{held} dedup key(s) held by non-terminal workflows after the drain")

        # 1. every workflow terminal, and the one status it should end in
        expected_ids = {wid for wid, _, _ in self.enqueued}
        for wid in expected_ids - workflows.keys():
            r.violate(f"{wid}: enqueued but has no row")
        for wid, w in workflows.items():
            if w["status"] not in TERMINAL:
                r.violate(f"{wid}: not terminal ({w['status']})")
            elif w["status"] != "SUCCESS":
                r.violate(f"{wid}: ended {w['status']}: {(w['error'] or '')[:300]}")

        def output(wid: str, step_id: int) -> Any:
            row = steps.get((wid, step_id))
            link = workflows.get(wid)
            if step_id == 0 and link is not None and link["name"] == LINK_WORKFLOW:
                # a chain link's result is its workflow's output: its step row,
                # if any, only counts its crashes and failed attempts
                return json.loads(link["output"]) if link["status"] == "SUCCESS" else None
            if row is None or row["status"] != "SUCCESS":
                return None
            return json.loads(row["output"])

        # 2. every SUCCESS result is the one its checkpoints make
        params = {wid: p for wid, _, p in self.enqueued}
        for wid, w in workflows.items():
            if w["status"] != "SUCCESS":
                continue
            result = json.loads(w["output"])
            if w["name"] == "chaos_order":
                p = params.get(wid)
                n = len(result["chain"])
                if p is not None and n != p["plain_steps"]:
                    r.violate(f"{wid}: chain of {n} steps, expected {p['plain_steps']}")
                expected = {
                    "chain": [output(wid, i) for i in range(n)],
                    "tx": output(wid, n),
                    "flaky": output(wid, n + 1),
                    "child": None,
                }
                if result["child"] is not None:
                    child_id = output(wid, n + 2)
                    child = workflows.get(child_id) if isinstance(child_id, str) else None
                    expected["child"] = json.loads(child["output"]) if child and child["output"] else "missing"
                    if output(wid, n + 3) != result["child"]:
                        r.violate(f"{wid}: awaited child result differs from its checkpoint")
                if result != expected:
                    r.violate(f"{wid}: result {result} differs from its checkpoints {expected}")
                if p is not None:
                    flaky = steps.get((wid, n + 1))
                    if flaky and flaky["attempts"] != p["flaky_failures"] + 1:
                        r.violate(f"{wid}: flaky step took {flaky['attempts']} attempts, "
                                  f"expected {p['flaky_failures'] + 1}")
            elif w["name"] == "chaos_child":
                if result != [output(wid, 0), output(wid, 1)]:
                    r.violate(f"{wid}: child result {result} differs from its checkpoints")
            elif w["name"] == "chaos_hog":
                if result != [output(wid, i) for i in range(3)]:
                    r.violate(f"{wid}: hog result {result} differs from its checkpoints")
                if w["recovery_attempts"] < 1:
                    r.violate(f"{wid}: the memory hog was never OOM-killed (recovery_attempts=0)")
            elif w["name"] == "chaos_gil":
                if result != [output(wid, i) for i in range(3)]:
                    r.violate(f"{wid}: gil result {result} differs from its checkpoints")
            elif w["name"] == "durable.canvas":
                n = params.get(wid, {}).get("links", 0)
                links = [f"{wid}-0"] + [f"{wid}-0-{k}" for k in range(1, n)]
                if result != output(links[-1], 0):
                    r.violate(f"{wid}: chain result {result!r} is not its last link's {output(links[-1], 0)!r}")
                for link in links:  # each fed its predecessor's recorded output: check 3
                    if output(link, 0) is None:
                        r.violate(f"{wid}: link {link} has no recorded result")
                r.chains += 1
            elif w["name"] == "chaos_noop" and result != "noop":
                r.violate(f"{wid}: noop returned {result!r}")

        # 3. side effects vs checkpoints
        produced: dict[tuple[str, int], set] = collections.defaultdict(set)
        for e in effects:
            if e["out"] is not None:
                produced[(e["wf"], e["step"])].add(e["out"])
        plain_kinds = {"chaos_plain", "chaos_flaky", "chaos_hungry", "chaos_gil_step"}
        for wid, w in workflows.items():
            if w["name"] == LINK_WORKFLOW and w["status"] == "SUCCESS":
                out = json.loads(w["output"])
                if out not in produced.get((wid, 0), set()):
                    r.violate(f"{wid} (chain link): result {out!r}, which no execution recorded producing")
        for (wid, step_id), s in steps.items():
            if s["status"] != "SUCCESS" or s["name"] not in plain_kinds | {"chaos_tx_write"}:
                continue
            out = json.loads(s["output"])
            if s["name"] == "chaos_hungry" and not str(out).startswith(f"{wid}/"):
                continue
            if out not in produced.get((wid, step_id), set()):
                r.violate(f"{wid} step {step_id} ({s['name']}): checkpointed {out!r}, "
                          f"which no execution recorded producing")
        # every run was fed the checkpointed outcome of the step before it
        for e in effects:
            source = e["in"]
            if not source or source == "start":
                continue
            src_wid, src_step, _ = source.rsplit("/", 2)
            recorded = output(src_wid, int(src_step))
            if recorded != source:
                r.violate(f"{e['wf']} step {e['step']} (pid {e['pid']}, epoch {e['epoch']}) ran on "
                          f"{source!r}, but step {src_step} of {src_wid} is checkpointed as {recorded!r}")

        # runs whose outcome did not become the step's: lost or fenced executions
        for e in effects:
            if e["out"] is not None and output(e["wf"], e["step"]) != e["out"]:
                r.discarded_runs += 1
                if e["pid"] in self.frozen_pids:
                    r.zombie_runs_fenced += 1

        # 4. @transaction writes: exactly once, and the one checkpointed
        tx_by_step: dict[tuple[str, int], list] = collections.defaultdict(list)
        for row in tx_rows:
            tx_by_step[(row["workflow_id"], row["step_id"])].append(row)
        for (wid, step_id), s in steps.items():
            if s["name"] != "chaos_tx_write" or s["status"] != "SUCCESS":
                continue
            rows = tx_by_step.pop((wid, step_id), [])
            if len(rows) != 1:
                r.violate(f"{wid} step {step_id}: @transaction wrote {len(rows)} rows, expected exactly 1")
            elif rows[0]["nonce"] != json.loads(s["output"]):
                r.violate(f"{wid} step {step_id}: @transaction row {rows[0]['nonce']!r} is not "
                          f"the checkpointed {s['output']!r}")
        for (wid, step_id), rows in tx_by_step.items():
            r.violate(f"{wid} step {step_id}: {len(rows)} @transaction row(s) without a checkpoint")

        # 5. recovery counters vs executions observed: a run of (step, attempt)
        # repeated by a later execution means the earlier execution was lost.
        runs: dict[tuple[str, int, int], set] = collections.defaultdict(set)
        effects_by_run: dict[tuple[str, int, int], list] = collections.defaultdict(list)
        for e in effects:
            runs[(e["wf"], e["step"], e["attempt"])].add(e["epoch"])
            effects_by_run[(e["wf"], e["step"], e["attempt"])].append(e)
        lost: dict[str, set] = collections.defaultdict(set)
        epochs_seen: dict[str, set] = collections.defaultdict(set)
        pids_of_epoch: dict[tuple[str, int], set] = collections.defaultdict(set)
        for e in effects:
            pids_of_epoch[(e["wf"], e["epoch"])].add(e["pid"])
        for (wid, _step, _attempt), epochs in runs.items():
            epochs_seen[wid] |= epochs
            if len(epochs) > 1:
                lost[wid] |= set(sorted(epochs)[:-1])
        # An execution taken over while its process was alive (frozen, or its
        # lease not renewed in time) counts no recovery (docs/guarantees.md):
        # the claim says so in the worker's log. Only the others must be counted.
        alive: dict[str, set] = collections.defaultdict(set)
        for worker_log in self.dir.glob("worker*.log"):
            for wid, pid in re.findall(
                r"workflow (\S+): taking over the expired lease of \S+?:(\d+), a process still alive",
                worker_log.read_text(errors="replace"),
            ):
                alive[wid].add(int(pid))
        lost_dead = {
            wid: {ep for ep in eps if not pids_of_epoch[(wid, ep)] <= self.frozen_pids | alive[wid]}
            for wid, eps in lost.items()
        }
        # A step repeated by a later execution is only allowed when the process
        # that ran it first was killed, frozen or OOM-killed: a Postgres or Redis
        # restart must not lose a finished step (its checkpoint waits for the
        # database, its message stays unacknowledged).
        for (wid, step, attempt), epochs in runs.items():
            if len(epochs) < 2 or workflows.get(wid, {}).get("name") == "chaos_hog":
                continue
            for e in effects_by_run[(wid, step, attempt)]:
                if e["epoch"] != max(epochs) and e["pid"] not in self.disturbed_pids:
                    r.unexplained_reruns += 1
                    r.violate(f"{wid} step {step} attempt {attempt}: run by pid {e['pid']} (epoch "
                              f"{e['epoch']}), which no fault touched, then run again by epoch {max(epochs)}")
        for wid, w in workflows.items():
            if w["recovery_attempts"] > max(w["lease_epoch"] - 1, 0):
                r.violate(f"{wid}: {w['recovery_attempts']} recoveries but only {w['lease_epoch']} claims")
            if max(epochs_seen.get(wid, {0}), default=0) > w["lease_epoch"]:
                r.violate(f"{wid}: an execution ran with an epoch above lease_epoch {w['lease_epoch']}")
            if len(lost_dead.get(wid, ())) > w["recovery_attempts"]:
                r.violate(f"{wid}: {len(lost_dead[wid])} executions observed lost by processes not alive "
                          f"(epochs {sorted(lost_dead[wid])}) but recovery_attempts={w['recovery_attempts']}")

        self.check_live_processes(claims, effects)

        # 6. what the workers' logs say: duplicate deliveries skipped, zombie writes fenced
        for worker_log in self.dir.glob("worker*.log"):
            content = worker_log.read_text(errors="replace")
            r.skipped_deliveries += len(re.findall(r"succeeded in [0-9.]+s: 'skipped'", content))
            r.fenced_writes += content.count("was checkpointed by another execution")

    def check_live_processes(self, claims: list[dict], effects: list[dict]) -> None:
        """Invariant 8: a live process keeps its executions. Every takeover
        (a claim of a lease another process held, from `chaos_claims`) is
        classed by what the holder was at that instant: dead (killed by a
        fault before it, OOM-killed, exited), frozen by a fault, or alive.
        A takeover from a live process counts no recovery; and none at all
        may hit a gil_hold workflow, or a clock-ahead worker's execution, or
        be made by one, unless a fault froze the holder. No lease is taken
        before it expires. The premises are checked too: gil_hold steps held
        the GIL >= 3 leases, clock-ahead processes ran steps and read a
        clock CLOCK_AHEAD_S ahead."""
        r = self.report
        lease_s = self.args.lease
        baseline = time.time() - time.monotonic()  # this host's wall minus monotonic clock
        skew_by_pid: dict[int, list[float]] = collections.defaultdict(list)
        for e in effects:
            if "wall_ms" in e:
                skew_by_pid[e["pid"]].append(e["wall_ms"] / 1000 - e["mono"] - baseline)
        skewed_pids = self.skewed_pids | {pid for pid, ks in skew_by_pid.items() if max(ks) > CLOCK_AHEAD_S / 2}
        clock_skews = [k for pid in skewed_pids for k in skew_by_pid.get(pid, [])]
        r.clock_steps = len(clock_skews)
        if clock_skews:
            r.clock_skew_s = (min(clock_skews), max(clock_skews))
        if r.faults["clock_ahead"] and not clock_skews:
            r.violate("clock_ahead: no step ran in a process whose clock reads ahead")
        for pid, ks in skew_by_pid.items():
            expected = CLOCK_AHEAD_S if pid in skewed_pids else 0
            if any(abs(k - expected) > 5 for k in ks):
                r.violate(f"pid {pid} read its wall clock {min(ks):+.1f}..{max(ks):+.1f}s off, expected {expected:+d}s")

        held = [e["held"] for e in effects if e.get("kind") == "gil"]
        r.gil_runs = len(held)
        r.gil_held_min = min(held) if held else None
        if r.faults["gil_hold"] and not held:
            r.violate("gil_hold: no step held the GIL to its end")
        for e in effects:
            if e.get("kind") == "gil" and e["held"] < 3 * lease_s:
                r.violate(f"{e['wf']}: the gil step held the GIL only {e['held']}s (pid {e['pid']}), "
                          f"less than 3 x the {lease_s}s lease")

        started = _process_start_times()

        def alive_at(pid: int, at_s: float) -> bool:
            if pid in self.alive_until:  # killed, or retired, at that time
                return at_s < self.alive_until[pid]
            # alive now, and since before then (not a reused pid): alive then;
            # otherwise gone for a reason no fault recorded (OOM, an exit)
            return started.get(pid, float("inf")) <= at_s

        for c in claims:
            old_pid = _pid_of(c["old_owner"])
            new_pid = _pid_of(c["new_owner"])
            if new_pid in skewed_pids:
                r.clock_claims += 1
            if old_pid is None or old_pid == new_pid:
                continue
            r.takeovers += 1
            wid, at_s = c["workflow_id"], c["at_ms"] / 1000
            if not alive_at(old_pid, at_s):
                r.takeovers_of_dead += 1
                continue
            what = (f"{wid}: epoch {c['new_epoch']} taken by pid {new_pid} from pid {old_pid}, alive, "
                    f"at {time.strftime('%H:%M:%S', time.localtime(at_s))}")
            if c["old_expires_ms"] is not None and c["old_expires_ms"] > c["at_ms"] + 500:
                r.violate(f"{what}: {c['old_expires_ms'] - c['at_ms']:.0f} ms before its lease expired")
            if c["new_recoveries"] > c["old_recoveries"]:
                r.recoveries_for_live += 1
                r.violate(f"{what}: counted as a recovery")
            if any(t0 <= at_s <= t1 + 2 * lease_s + 1 for t0, t1 in self.frozen_windows.get(old_pid, ())):
                r.takeovers_of_live["frozen by a fault"] += 1
            elif wid in self.gil_workflows:
                r.takeovers_of_live["gil_hold"] += 1
                r.violate(f"{what}: a gil_hold workflow taken over from its live process")
            elif old_pid in skewed_pids or new_pid in skewed_pids:
                r.takeovers_of_live["clock_ahead"] += 1
                side = "by a clock-ahead process" if new_pid in skewed_pids else "from a clock-ahead process"
                r.violate(f"{what}: taken over {side}")
            else:
                r.takeovers_of_live["lease not renewed in time"] += 1

    # --- the whole run ------------------------------------------------------------

    def run(self) -> Report:
        r = self.report
        log(f"seed {self.seed}; {self.args.seconds}s of faults, {self.args.workflows} workflows, "
            f"{self.args.workers} workers x {self.args.concurrency}; run dir {self.dir}")
        self.start_servers()
        self.start_workers()
        schedule = self.schedule()
        log("fault schedule: " + ", ".join(f"{t:.1f}s {k}" for t, k in schedule))
        loader = threading.Thread(target=self.load_loop, args=(self.args.seconds,), daemon=True)
        started = time.monotonic()
        loader.start()
        supervisor = threading.Thread(target=self.supervise_loop, daemon=True)
        supervisor.start()
        last_fault_end = started
        for at, kind in schedule:
            time.sleep(max(0.0, started + at - time.monotonic()))
            try:
                with self.lock:
                    what = self.inject(kind)
                r.faults[kind] += 1
            except Exception as exc:  # noqa: BLE001
                what = f"failed to inject: {exc!r}"
                r.violate(f"fault {kind} could not be injected: {exc!r}")
            last_fault_end = time.monotonic()
            log(f"fault {sum(r.faults.values())}: {kind}: {what}")
        loader.join()
        load_end = self.load_end or time.monotonic()
        try:
            r.active_at_last_fault = self.active_count()
        except Exception:  # noqa: BLE001
            pass
        log(f"load done ({len(self.enqueued)} enqueued); draining")
        drained = self.drain(self.args.drain_timeout)
        if drained:
            r.drain_seconds = time.monotonic() - last_fault_end
            r.drain_after_load_seconds = time.monotonic() - load_end
            self.check_dedup_released()
            if not self.drain(60, "dedup probes"):
                r.violate("dedup re-enqueue probes did not finish")
        else:
            r.violate(f"not drained {self.args.drain_timeout}s after the load")
        self.stop_supervisor.set()
        supervisor.join()
        i = 0
        while i < len(self.retiring):  # retire() adds its own waiter
            self.retiring[i].join(timeout=180)
            i += 1
        self.check()
        return r

    def cleanup(self) -> None:
        for worker in self.all_workers:
            if worker.proc is not None:
                try:
                    os.killpg(worker.proc.pid, signal.SIGCONT)
                except ProcessLookupError:
                    pass
            try:
                worker.kill_all()
            except Exception:  # noqa: BLE001
                pass
        if self.engine is not None:
            self.engine.dispose()
        if self.redis is not None:
            self.redis.stop()
        if self.rabbitmq is not None:
            self.rabbitmq.stop()
        if self.pg is not None:
            self.pg.stop()
        if self.cgroup is not None:
            for _ in range(50):
                try:
                    self.cgroup.rmdir()
                    break
                except OSError:
                    time.sleep(0.1)
        if self.report.violations and not self.args.dir:
            log(f"violations: run directory kept for inspection: {self.dir}")
        elif not self.args.keep and not self.args.dir:
            shutil.rmtree(self.dir, ignore_errors=True)


def _pid_of(owner: str | None) -> int | None:
    if not owner:
        return None
    pid = owner.rpartition(":")[2]
    return int(pid) if pid.isdigit() else None


def _process_start_times() -> dict[int, float]:
    """Wall time each live (not zombie) process on this host started at."""
    ticks_per_s = os.sysconf("SC_CLK_TCK")
    uptime_s = float(Path("/proc/uptime").read_text().split()[0])
    now = time.time()
    started = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if fields[0] in ("Z", "X"):
            continue
        started[int(entry.name)] = now - (uptime_s - int(fields[19]) / ticks_per_s)
    return started


def print_report(r: Report) -> None:
    print("\n=== chaos figures ===", flush=True)
    print(f"seed                      {r.seed}")
    print(f"workflows                 {r.workflows}")
    print(f"dur.chain workflows       {r.chains}")
    print(f"steps (checkpoint rows)   {r.steps}")
    print(f"faults injected           {sum(r.faults.values())}: "
          + ", ".join(f"{k}={v}" for k, v in sorted(r.faults.items())))
    print(f"recoveries                {r.recoveries} (steps with a recorded crash: {r.steps_with_crashes})")
    print(f"duplicates prevented      {r.dedup_rejected + r.skipped_deliveries + r.discarded_runs} "
          f"(dedup-key rejections {r.dedup_rejected}, duplicate deliveries skipped by the claim "
          f"{r.skipped_deliveries}, step runs whose outcome was discarded {r.discarded_runs}, of which "
          f"by frozen zombies {r.zombie_runs_fenced}; 'checkpointed by another execution' warnings "
          f"{r.fenced_writes})")
    print(f"workers that exited alone {r.worker_exits} (replaced by the driver's supervisor)")
    live = sum(r.takeovers_of_live.values())
    print(f"takeovers                 {r.takeovers} (of dead processes {r.takeovers_of_dead}; of live "
          f"processes {live}" + (": " + ", ".join(f"{k} {v}" for k, v in sorted(r.takeovers_of_live.items()))
                                 if live else "") + ")")
    print(f"recoveries for live procs {r.recoveries_for_live}")
    held = "n/a" if r.gil_held_min is None else f"{r.gil_held_min:.1f}s"
    print(f"gil_hold steps            {r.gil_runs} ran to their end (GIL held at least {held} each)")
    skew = "n/a" if r.clock_skew_s is None else f"{r.clock_skew_s[0]:+.1f}s..{r.clock_skew_s[1]:+.1f}s"
    print(f"clock-ahead step runs     {r.clock_steps} (their wall clock read {skew} ahead; "
          f"claims made by clock-ahead processes {r.clock_claims})")
    drain = "n/a" if r.drain_seconds is None else f"{r.drain_seconds:.1f}s"
    after_load = "n/a" if r.drain_after_load_seconds is None else f"{r.drain_after_load_seconds:.1f}s"
    print(f"drain after last fault    {drain} ({r.active_at_last_fault} workflows not terminal at the "
          f"last fault; all terminal {after_load} after the last enqueue)")
    print(f"invariant violations      {len(r.violations)}")
    for v in r.violations[:50]:
        print(f"  VIOLATION: {v}")
    if len(r.violations) > 50:
        print(f"  ... and {len(r.violations) - 50} more")
    sys.stdout.flush()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m tests.chaos.driver", description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=300, help="how long faults are injected")
    p.add_argument("--workflows", type=int, default=1000, help="chaos_order workflows to enqueue")
    p.add_argument("--faults", type=int, default=None, help="faults to inject (default: one per 5 s)")
    p.add_argument("--seed", type=int, default=None, help="reproduces fault times and kinds and the load")
    p.add_argument("--workers", type=int, default=3, help="general worker processes")
    p.add_argument("--concurrency", type=int, default=2, help="prefork children per worker")
    p.add_argument("--lease", type=float, default=2.0, help="DURABLE_LEASE_SECONDS for the workers")
    p.add_argument("--redelivery", type=float, default=3.0, help="DURABLE_REDELIVERY_SECONDS")
    p.add_argument("--memory-limit-mb", type=int, default=300, help="memory cgroup limit of the memory worker")
    p.add_argument("--drain-timeout", type=float, default=240)
    p.add_argument("--broker", choices=("redis", "rabbitmq"), default="redis")
    p.add_argument("--kinds", default=None, help="only these fault kinds (comma-separated); default: all")
    p.add_argument("--dir", default=None, help="run directory (kept); default: a temporary one, removed")
    p.add_argument("--keep", action="store_true", help="keep the temporary run directory")
    args = p.parse_args(argv)
    if args.seed is None:
        args.seed = random.SystemRandom().randrange(1, 10**6)
    if args.faults is None:
        args.faults = max(len(fault_weights(args.broker, args.kinds)), int(args.seconds / 5))
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    print(f"chaos seed: {args.seed}", flush=True)
    chaos = Chaos(args)

    def on_signal(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_signal)
    try:
        report = chaos.run()
    except BaseException as exc:  # noqa: BLE001
        chaos.stop_load.set()
        chaos.report.violate(f"driver failed: {exc!r}")
        report = chaos.report
        import traceback

        traceback.print_exc()
    finally:
        chaos.stop_load.set()
        if args.keep or args.dir:
            log(f"run directory kept: {chaos.dir}")
        chaos.cleanup()
    print_report(report)
    return 1 if report.violations else 0


if __name__ == "__main__":
    os.chdir(REPO)
    sys.exit(main())
