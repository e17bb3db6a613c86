"""Reading the process table from /proc, for tests that kill a process and check what it leaves behind."""

from __future__ import annotations

import os
import time
from pathlib import Path

from sparsealign.lifetime import alive_of, descendants, pid_alive

__all__ = ["cmdline", "descendants", "survivors", "wait_until_gone", "with_environ"]


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def survivors(processes: dict[int, str]) -> dict[int, str]:
    """Those of `processes` (pid -> start time) still alive: pid -> command line."""
    return {pid: cmdline(pid) for pid in alive_of(processes)}


def wait_until_gone(processes: dict[int, str], within_s: float) -> dict[int, str]:
    """Poll until none of `processes` is alive or `within_s` passes; returns the survivors then."""
    deadline = time.monotonic() + within_s
    while (left := survivors(processes)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


def with_environ(marker: str) -> dict[int, str]:
    """Live processes whose environment holds `marker` (a `KEY=value` the test set for one run)."""
    needle = marker.encode() + b"\0"
    found = {}
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            environ = Path(f"/proc/{entry}/environ").read_bytes() + b"\0"
        except OSError:
            continue
        if needle in environ and pid_alive(int(entry)):
            found[int(entry)] = cmdline(int(entry))
    return found
