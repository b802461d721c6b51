"""Shared benchmark helpers: wall time and peak resident memory of a phase."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psutil


@dataclass
class Measured:
    name: str
    seconds: float
    peak_rss_mib: float
    start_rss_mib: float
    result: Any = None


def measure(name: str, fn: Callable[[], Any], interval_s: float = 0.05) -> Measured:
    """Run `fn`, sampling this process's RSS every `interval_s` for the peak."""
    proc = psutil.Process()
    start = peak = proc.memory_info().rss
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, proc.memory_info().rss)
            done.wait(interval_s)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    t0 = time.perf_counter()
    try:
        result = fn()
    finally:
        seconds = time.perf_counter() - t0
        done.set()
        thread.join()
    return Measured(name, seconds, peak / 2**20, start / 2**20, result)
