"""A workaround for libfaketime, for the chaos driver's `clock_ahead` workers
only (this directory is put on PYTHONPATH of those processes alone).

The fault is the wall clock: those processes run under libfaketime
(`FAKETIME=+120`) with their monotonic clock left alone
(`FAKETIME_DONT_FAKE_MONOTONIC=1`; faking it too hangs every threading wait).
libfaketime 0.9.10 then mangles the deadline of
`clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, ...)` (strace shows a
negative tv_sec, so EINVAL), which is exactly how Python 3.11's `time.sleep`
waits: every `time.sleep` would raise `OSError(22)`. Here `time.sleep`
waits with a relative timeout instead (select, which libfaketime passes
through, and which Python retries with the time left after a signal). The
wall clock, `time.time()`, stays 120 s ahead.
"""

from __future__ import annotations

import os
import select
import time

if "faketime" in os.environ.get("LD_PRELOAD", "") and os.environ.get("FAKETIME_DONT_FAKE_MONOTONIC") == "1":

    def _sleep(seconds: float) -> None:
        seconds = float(seconds)
        if seconds < 0:
            raise ValueError("sleep length must be non-negative")
        select.select([], [], [], seconds)

    _sleep.__doc__ = time.sleep.__doc__
    time.sleep = _sleep
