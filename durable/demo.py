"""`durable demo`: a worker is SIGKILLed in the middle of a workflow, a new
worker finishes it, and the steps that were checkpointed are not run again.

Runs on the embedded default (SQLite file + filesystem broker) in a fresh
folder, so it needs no server. This module is also the demo worker's Celery
app: `celery -A durable.demo worker`.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import durable
from durable import Durable

dur = Durable()
app = dur.celery

STEP_SECONDS = 1.0


def _effects_path() -> Path:
    return dur.settings.home_path / "demo-effects.log"


@dur.step()
def demo_step(number: int) -> dict[str, int]:
    """Pretend work: a second of it. Appends who ran it, outside the checkpoints."""
    with open(_effects_path(), "a") as f:
        f.write(f"{number} {os.getpid()}\n")
    time.sleep(STEP_SECONDS)
    return {"step": number, "pid": os.getpid()}


@dur.workflow()
def demo_pipeline(steps: int) -> list[dict[str, int]]:
    return [demo_step(i) for i in range(1, steps + 1)]


def _start_worker(home: Path, log: Path) -> subprocess.Popen[bytes]:
    env = dict(os.environ, DURABLE_HOME=str(home))
    env.pop("DURABLE_DATABASE_URL", None)
    env.pop("DURABLE_BROKER_URL", None)
    worker = subprocess.Popen(
        [sys.executable, "-m", "durable", "worker", "-A", "durable.demo", "-P", "prefork", "-c", "1",
         "--loglevel=INFO", "--without-gossip", "--without-mingle", "--without-heartbeat"],
        env=env, stdout=open(log, "ab"), stderr=subprocess.STDOUT, start_new_session=True,
    )
    deadline = time.monotonic() + 60
    while b" ready." not in log.read_bytes():
        if worker.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"the demo worker did not start; see {log}")
        time.sleep(0.1)
    return worker


def _kill_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass
    proc.wait(timeout=30)


def run(steps: int = 6, kill_after_step: int = 3) -> int:
    home = Path(".durable") / f"demo-{int(time.time())}"
    home.mkdir(parents=True)
    os.environ["DURABLE_HOME"] = str(home)
    client = durable.DurableClient(settings=durable.Settings(home=str(home)))
    print(f"durable demo: embedded default, SQLite + filesystem broker under {home}/")

    first_log = home / "worker1.log"
    first = _start_worker(home, first_log)
    print(f"worker 1 started (main pid {first.pid})")
    handle = client.enqueue("demo_pipeline", args=[steps], workflow_id="demo-order-1")
    print(f"started workflow {handle.workflow_id}: {steps} steps of {STEP_SECONDS:g}s each")

    while len([s for s in client.list_steps(handle.workflow_id) if s.status == "SUCCESS"]) < kill_after_step:
        time.sleep(0.05)
    time.sleep(STEP_SECONDS / 2)  # step kill_after_step+1 is now half done
    print(f"steps 1-{kill_after_step} checkpointed; step {kill_after_step + 1} running -> SIGKILL worker 1 (main and child)")
    _kill_group(first, signal.SIGKILL)
    killed_at = time.monotonic()

    second = _start_worker(home, home / "worker2.log")
    print(f"worker 2 started (main pid {second.pid}); its recovery sweeper finds the expired lease")
    try:
        result = handle.result(timeout=120)
        finished_after = time.monotonic() - killed_at  # not counting worker 2's shutdown below
    finally:
        _kill_group(second, signal.SIGTERM)
    print(f"workflow finished {finished_after:.1f}s after the kill "
          f"({steps - kill_after_step} steps of {STEP_SECONDS:g}s still to run then)\n")

    runs: dict[int, list[int]] = {}
    for line in (home / "demo-effects.log").read_text().split("\n"):
        if line:
            number, pid = map(int, line.split())
            runs.setdefault(number, []).append(pid)
    status = handle.status()
    print(f"{'step':>4}  {'ran in pids':<20} {'checkpoint from pid':<20} note")
    for item in result:
        number, pid = item["step"], item["pid"]
        pids = runs.get(number, [])
        if len(pids) == 1 and number <= kill_after_step:
            note = "ran once; replayed from its checkpoint after the kill"
        elif len(pids) > 1:
            note = "killed mid-step (no checkpoint), run again by the new worker"
        else:
            note = "ran once, in the new worker"
        print(f"{number:>4}  {', '.join(map(str, pids)):<20} {pid:<20} {note}")
    print(f"\nstatus {status.status}, recovery_attempts {status.recovery_attempts}")
    ok = status.status == "SUCCESS" and all(len(runs[n]) == 1 for n in range(1, kill_after_step + 1))
    print("completed steps were skipped on replay: " + ("yes" if ok else "NO"))
    if ok:
        shutil.rmtree(home / "broker", ignore_errors=True)
    return 0 if ok else 1
