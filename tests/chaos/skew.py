"""A worker process whose wall clock is ahead (the chaos `clock_ahead`
fault): libfaketime from Debian (scripts/bootstrap.sh installs it)."""

from __future__ import annotations

import glob
import os
from pathlib import Path

SITE = Path(__file__).resolve().parent / "faketime_site"


def libfaketime() -> str:
    found = sorted(glob.glob("/usr/lib/*/faketime/libfaketime.so.1"))
    if not found:
        raise RuntimeError("libfaketime is not installed (scripts/bootstrap.sh installs it)")
    return found[0]


def skewed_env(env: dict[str, str], seconds: int) -> dict[str, str]:
    """The environment of a process whose wall clock (`time.time()`,
    `CLOCK_REALTIME`) reads `seconds` ahead; its monotonic clock is left
    alone (faking it hangs threading waits), and `time.sleep` gets the
    workaround in faketime_site/sitecustomize.py."""
    skewed = dict(env)
    skewed.update(
        LD_PRELOAD=libfaketime(), FAKETIME=f"+{seconds}", FAKETIME_DONT_FAKE_MONOTONIC="1",
        FAKETIME_DONT_RESET="1",
        PYTHONPATH=os.pathsep.join([str(SITE)] + [p for p in [env.get("PYTHONPATH", "")] if p]),
    )
    return skewed
