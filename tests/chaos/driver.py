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
        self.client = DurableClient(settings=Settings(
            home=str(self.dir / "home"), database_url=self.database_url,
            broker_url=self.broker_url, redelivery_seconds=self.args.redelivery,
        ))

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

    def new_worker(self, wait: bool = False) -> Worker:
        n = len(self.all_workers)
        worker = Worker(self.worker_env(), self.dir / f"worker{n}.log",
                        concurrency=self.args.concurrency, name=f"chaos{n}")
        self.all_workers.append(worker)
        worker.start(wait_ready=wait)
        return worker

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
                        self.workers.append(self.new_worker())

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
            worker, child = rng.choice(running or candidates)
            self.disturbed_pids.add(child)
            os.kill(child, signal.SIGKILL)
            return f"SIGKILL child {child} of {worker.name}{' (running a workflow)' if running else ''}"
        if kind == "kill_worker":
            worker = self.pick_worker()
            self.disturbed_pids.update(worker.children())
            self.disturbed_pids.add(worker.pid)
            worker.kill_all()
            self.workers.remove(worker)
            replacement = self.new_worker()
            self.workers.append(replacement)
            return f"SIGKILL worker {worker.name} (main and children); started {replacement.name}"
        if kind == "freeze_worker":
            worker = self.pick_worker()
            self.disturbed_pids.update(worker.children())
            self.disturbed_pids.add(worker.pid)
            self.frozen_pids.update(worker.children())
            frozen_s = self.args.lease * 2 + 2 + rng.random() * 2
            os.killpg(worker.pid, signal.SIGSTOP)
            time.sleep(frozen_s)
            os.killpg(worker.pid, signal.SIGCONT)
            return f"SIGSTOP {worker.name} for {frozen_s:.1f}s (lease {self.args.lease}s), then SIGCONT"
        if kind == "oom":
            workflow_id = f"c{self.seed}-hog-{self.report.faults['oom']}"
            self._retry("enqueue hog", lambda: self.client.enqueue(
                "chaos_hog", args=[self.args.memory_limit_mb * 2], workflow_id=workflow_id, queue=MEMORY_QUEUE,
            ))
            with self.lock:
                self.enqueued.append((workflow_id, "chaos_hog", {}))
            return f"{workflow_id} allocates {self.args.memory_limit_mb * 2} MB under a {self.args.memory_limit_mb} MB limit"
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
            elif w["name"] == "chaos_noop" and result != "noop":
                r.violate(f"{wid}: noop returned {result!r}")

        # 3. side effects vs checkpoints
        produced: dict[tuple[str, int], set] = collections.defaultdict(set)
        for e in effects:
            if e["out"] is not None:
                produced[(e["wf"], e["step"])].add(e["out"])
        plain_kinds = {"chaos_plain", "chaos_flaky", "chaos_hungry"}
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

        # 6. what the workers' logs say: duplicate deliveries skipped, zombie writes fenced
        for worker_log in self.dir.glob("worker*.log"):
            content = worker_log.read_text(errors="replace")
            r.skipped_deliveries += len(re.findall(r"succeeded in [0-9.]+s: 'skipped'", content))
            r.fenced_writes += content.count("was checkpointed by another execution")

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


def print_report(r: Report) -> None:
    print("\n=== chaos figures ===", flush=True)
    print(f"seed                      {r.seed}")
    print(f"workflows                 {r.workflows}")
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
