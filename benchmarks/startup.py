"""A durable worker's start-up, command against command:

    .venv/bin/python -m benchmarks.startup [--pairs 6] [--commands durable,celery] [--against DIR]

Starts its own Postgres and Redis (tests/servers.py), then starts and stops
a worker the way benchmarks.run does (prefork -c 2, the benchmark's
workflows, --without-gossip/mingle/heartbeat), the commands in alternation
(A B, B A, ...), the repository's modules byte-compiled first. `--against DIR`
adds `durable worker` run on another checkout's code (DIR: a worktree, or
`git archive` of a commit), to alternate the code before a change with it. For each start: seconds from spawn to Celery's `ready.`
line, and the CPU the worker's processes had used by then. Prints medians.
Every process it starts is stopped by its PID.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.run import compile_bytecode  # noqa: E402
from tests.harness import child_pids  # noqa: E402
from tests.servers import Postgres, Redis  # noqa: E402

WORKER_OPTIONS = ["-P", "prefork", "-c", "2", "-Q", "celery", "--loglevel=INFO",
                  "--without-gossip", "--without-mingle", "--without-heartbeat"]
COMMANDS = {
    # what a user types, with the benchmark's options
    "durable": [str(Path(sys.executable).parent / "durable"), "worker", "-A", "workers.app"],
    "celery": [sys.executable, "-m", "celery", "-A", "workers.app", "worker"],
}
COMMANDS["against"] = COMMANDS["durable"]


def cpu_seconds(pids: list[int]) -> float:
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / ticks


def one_start(command: str, env: dict[str, str], log_path: Path, name: str,
              checkout: Path = REPO) -> tuple[float, float]:
    """(seconds to `ready.`, CPU seconds of the worker's processes then),
    the worker running `checkout`'s code."""
    env = {**env, "PYTHONPATH": str(checkout)}
    with open(log_path, "wb") as log:
        t0 = time.monotonic()
        proc = subprocess.Popen([*COMMANDS[command], *WORKER_OPTIONS, "-n", f"{name}@%h"], env=env,
                                cwd=str(checkout), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        while b" ready." not in log_path.read_bytes():
            if proc.poll() is not None:
                raise RuntimeError(f"{command} worker exited {proc.returncode}:\n{log_path.read_text()[-3000:]}")
            if time.monotonic() - t0 > 120:
                raise RuntimeError(f"{command} worker not ready in 120 s")
            time.sleep(0.005)
        seconds = time.monotonic() - t0
        return seconds, cpu_seconds([proc.pid, *child_pids(proc.pid)])
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=20)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=6, help="rounds, each starting every command once")
    parser.add_argument("--commands", default="durable,celery", help="comma list of: " + ",".join(COMMANDS))
    parser.add_argument("--against", type=Path, help="another checkout: adds `against`, durable worker on its code")
    args = parser.parse_args()
    commands = args.commands.split(",")
    checkouts = {command: REPO for command in commands}
    if args.against is not None:
        commands.append("against")
        checkouts["against"] = args.against.resolve()
        subprocess.run([sys.executable, "-m", "compileall", "-q", *(str(checkouts["against"] / d) for d in (
            "durable", "workers", "config", "benchmarks"))], check=True, stdout=subprocess.DEVNULL)
    compile_bytecode()
    tmp = Path(tempfile.mkdtemp(prefix="durable-startup-"))
    os.chmod(tmp, 0o755)  # initdb runs as another user
    pg = redis = None
    try:
        pg = Postgres(tmp / "pg").start()
        redis = Redis(tmp / "redis").start()
        env = {k: v for k, v in os.environ.items() if not k.startswith("DURABLE_")}
        env.update(PYTHONPATH=str(REPO), BENCH_DIR=str(tmp), DURABLE_HOME=str(tmp / "home"),
                   DURABLE_DATABASE_URL=pg.create_database("startup"), DURABLE_BROKER_URL=redis.url,
                   DURABLE_IMPORTS="benchmarks.workloads")
        results: dict[str, list[tuple[float, float]]] = {c: [] for c in commands}
        subprocess.run([COMMANDS["durable"][0], "migrate"], env=env, cwd=str(REPO), check=True,
                       stdout=subprocess.DEVNULL)
        one_start(commands[0], env, tmp / "warm.log", "warm")  # warms the page cache
        for round_ in range(args.pairs):
            for command in commands if round_ % 2 == 0 else reversed(commands):
                seconds, cpu = one_start(command, env, tmp / f"{command}-{round_}.log", f"{command}{round_}",
                                         checkouts[command])
                results[command].append((seconds, cpu))
                print(f"[{time.strftime('%H:%M:%S')}] {command}: ready in {seconds:.2f} s, {cpu:.2f} s CPU "
                      f"(load {os.getloadavg()[0]:.1f})", flush=True)
        for command, runs in results.items():
            print(f"{command:8s} median {statistics.median(s for s, _ in runs):.2f} s to ready, "
                  f"{statistics.median(c for _, c in runs):.2f} s CPU ({len(runs)} starts)")
    finally:
        for server in (redis, pg):
            if server is not None:
                server.stop_quietly()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
