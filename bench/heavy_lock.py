"""Coordinate memory-heavy benchmarks on a shared machine.

While ``/tmp/rsfm-heavy.lock`` exists, other jobs on the machine hold back from starting big runs.
:func:`heavy_run` waits for another holder's lock to go, takes the lock, waits until enough memory
is available (``MemAvailable`` in ``/proc/meminfo``, what ``free`` shows as available), and always
removes the lock afterwards, also on Ctrl-C or SIGTERM.
"""
from __future__ import annotations

import os
import re
import signal
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

LOCK = Path("/tmp/rsfm-heavy.lock")


def available_gb() -> float:
    """``MemAvailable`` in GiB (``free -g``'s "available" column)."""
    text = Path("/proc/meminfo").read_text()
    return int(re.search(r"^MemAvailable:\s+(\d+) kB", text, re.MULTILINE).group(1)) / 2 ** 20


@contextmanager
def heavy_run(need_gb: float, poll_s: float = 30.0, max_wait_s: float = 600.0,
              lock: Path = LOCK) -> Iterator[None]:
    """Hold the heavy-run lock with at least ``need_gb`` GiB available, or raise ``TimeoutError``.

    Polls every ``poll_s`` seconds, at most ``max_wait_s`` in all.
    """
    deadline = time.monotonic() + max_wait_s
    while lock.exists() and lock.read_text().strip() != str(os.getpid()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{lock} is held by another run ({lock.read_text().strip()!r})")
        print(f"waiting for {lock} to be released", flush=True)
        time.sleep(poll_s)
    lock.write_text(str(os.getpid()))
    previous = signal.getsignal(signal.SIGTERM)

    def on_term(signum, frame):  # turn SIGTERM into an exception so the lock is removed
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_term)
    try:
        while available_gb() < need_gb:
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {available_gb():.1f} GiB available after "
                                   f"{max_wait_s:.0f} s, {need_gb} GiB needed")
            print(f"{available_gb():.1f} GiB available, waiting for {need_gb} GiB", flush=True)
            time.sleep(poll_s)
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
        try:
            if lock.read_text().strip() == str(os.getpid()):
                lock.unlink()
        except FileNotFoundError:
            pass
