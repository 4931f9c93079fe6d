"""Measurement helpers: CPU seconds of process trees, peak-RSS sampling, medians.

Every figure records, next to its wall time, the CPU seconds the server's process tree and
the client spent; CPU / wall near 1.0 for a one-process Python server (or near the core
count for a threaded one) says that side is what limits the figure.
"""

from __future__ import annotations

import os
import resource
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from bench.servers import process_tree, rss_bytes

_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pids: list[int]) -> float:
    """utime + stime of ``pids`` (seconds), from /proc/PID/stat."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except (OSError, IndexError, ValueError):
            continue
    return total / _TICK


def machine_busy_seconds() -> float:
    """CPU seconds all cores spent busy since boot (first line of /proc/stat, minus idle)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / _TICK


def client_cpu_seconds() -> float:
    """CPU seconds of this process and its waited-for children (DCMTK tools)."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


@dataclass
class Usage:
    """CPU use during one measured interval."""

    wall: float = 0.0
    server_cpu: float = 0.0
    client_cpu: float = 0.0
    machine_cpu: float = 0.0
    """Busy CPU seconds of the whole machine: what neither side used is other work's."""

    @property
    def server_load(self) -> float:
        """Server CPU seconds per wall second (1.0 = one core busy all the time)."""
        return self.server_cpu / self.wall if self.wall else 0.0

    @property
    def client_load(self) -> float:
        return self.client_cpu / self.wall if self.wall else 0.0

    @property
    def other_load(self) -> float:
        """Cores busy with work of neither side (other processes on this shared machine)."""
        if not self.wall:
            return 0.0
        return max(0.0, self.machine_cpu - self.server_cpu - self.client_cpu) / self.wall


@contextmanager
def usage(
    server_pid: Callable[[], int | None], extra_pids: Callable[[], list[int]] | None = None
) -> Iterator[Usage]:
    """Measure wall time and server/client CPU across the ``with`` block."""
    u = Usage()

    def server_cpu() -> float:
        pid = server_pid()
        pids = process_tree(pid) if pid else []
        return cpu_seconds(pids)

    def extra_cpu() -> float:
        return cpu_seconds(extra_pids()) if extra_pids else 0.0

    s0, c0, e0 = server_cpu(), client_cpu_seconds(), extra_cpu()
    m0, t0 = machine_busy_seconds(), time.perf_counter()
    yield u
    u.wall = time.perf_counter() - t0
    u.machine_cpu = machine_busy_seconds() - m0
    u.server_cpu = max(0.0, server_cpu() - s0)
    u.client_cpu = client_cpu_seconds() - c0 + max(0.0, extra_cpu() - e0)


@dataclass
class RssSampler:
    """Samples the RSS of a process tree every ``interval`` seconds in a thread."""

    pids: Callable[[], list[int]]
    interval: float = 0.05
    samples: list[int] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> RssSampler:
        self.samples.append(rss_bytes(self.pids()))
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.samples.append(rss_bytes(self.pids()))

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.samples.append(rss_bytes(self.pids()))

    @property
    def baseline(self) -> int:
        return self.samples[0] if self.samples else 0

    @property
    def peak(self) -> int:
        return max(self.samples) if self.samples else 0


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None
