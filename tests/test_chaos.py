"""The chaos suite in its bounded form (about two minutes): its own Postgres,
Redis and workers, ~150 workflows, faults of every kind for 60 s (at least one
Postgres and one Redis restart, a step holding the GIL for 3 leases, a worker
whose clock is 2 minutes ahead), then every invariant. The full form is
`python -m tests.chaos.driver --seconds 300 --workflows 1000` (tests/chaos/README.md)."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.harness import REPO

SEED = int(os.environ.get("DURABLE_CHAOS_SEED", "20261121"))


def test_chaos_bounded():
    command = [
        sys.executable, "-m", "tests.chaos.driver", "--seconds", "60", "--workflows", "150",
        "--faults", "12", "--workers", "2", "--seed", str(SEED), "--drain-timeout", "120",
    ]
    done = subprocess.run(command, cwd=str(REPO), capture_output=True, text=True, timeout=240)
    output = done.stdout + done.stderr
    print(output[-20000:])
    figures = done.stdout[done.stdout.find("=== chaos figures ==="):]
    assert "invariant violations      0" in figures, figures or output[-5000:]
    assert done.returncode == 0, output[-5000:]
    faults = next(line for line in figures.splitlines() if line.startswith("faults injected"))
    assert int(faults.split()[2].rstrip(":")) >= 10, faults
    for kind in ("pg_restart_fast", "pg_restart_immediate", "redis_restart", "redis_lose_data",
                 "kill_child", "kill_worker", "freeze_worker", "oom", "gil_hold", "clock_ahead"):
        assert f"{kind}=" in faults, faults
    assert "recoveries for live procs 0" in figures, figures
