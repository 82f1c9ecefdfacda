"""What the bench measures beside the load generators' own figures: memory and CPU of processes.

    with RssSampler(pid) as rss, CpuMeter({"serve": pid, "valkey": vpid}) as cpu:
        ...                      # a measurement
    rss.peak                     # MiB, the highest RSS seen (sampled every 0.25 s)
    cpu.result                   # {"serve": 97.0, "valkey": 31.5, "machine": 188.0}: % of one core;
                                 # "machine" is all cores together (200 = both cores busy)

The machine figure includes the load generator and whatever else runs on the machine (other
test suites): when it is near 100 % per core, the run was CPU-bound and its figures are lower
than on a quiet machine.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import Any

import psutil

MIB = 1024 * 1024


def rss_mib(pid: int) -> float | None:
    try:
        return float(psutil.Process(pid).memory_info().rss) / MIB
    except psutil.Error:
        return None


def command_line(pid: int) -> list[str]:
    """What the process runs now: `leadbridge worker` has replaced itself with `python -OO`
    where it could (bridge/launch.py)."""
    try:
        return list(psutil.Process(pid).cmdline())
    except psutil.Error:
        return []


def uss_mib(pid: int) -> float | None:
    """Memory only this process holds (no shared library pages): lower than RSS."""
    try:
        return float(psutil.Process(pid).memory_full_info().uss) / MIB
    except psutil.Error:
        return None


class RssSampler:
    """The peak RSS (and USS) of one process while a measurement runs (needs a running loop)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.samples: list[float] = []
        self.uss_samples: list[float] = []
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            value = rss_mib(self.pid)
            if value is not None:
                self.samples.append(value)
            if len(self.samples) % 4 == 1:
                uss = uss_mib(self.pid)
                if uss is not None:
                    self.uss_samples.append(uss)
            await asyncio.sleep(0.25)

    def __enter__(self) -> RssSampler:
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    def __exit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()

    @property
    def peak(self) -> float | None:
        return round(max(self.samples), 1) if self.samples else None

    @property
    def peak_uss(self) -> float | None:
        return round(max(self.uss_samples), 1) if self.uss_samples else None


def _cpu_s(pid: int) -> float | None:
    try:
        times = psutil.Process(pid).cpu_times()
    except psutil.Error:
        return None
    return float(times.user + times.system)


def _machine_busy_s() -> float:
    times = psutil.cpu_times()
    return float(sum(times) - times.idle - getattr(times, "iowait", 0.0))


class CpuMeter:
    """CPU used by named processes (and the whole machine) between enter and exit."""

    def __init__(self, pids: Mapping[str, int | None]) -> None:
        self.pids = {name: pid for name, pid in pids.items() if pid is not None}
        self.result: dict[str, float] = {}
        self._start: dict[str, float | None] = {}
        self._machine = 0.0
        self._wall = 0.0

    def __enter__(self) -> CpuMeter:
        self._start = {name: _cpu_s(pid) for name, pid in self.pids.items()}
        self._machine = _machine_busy_s()
        self._wall = time.monotonic()
        return self

    def __exit__(self, *exc: object) -> None:
        wall = max(1e-6, time.monotonic() - self._wall)
        result: dict[str, float] = {}
        for name, pid in self.pids.items():
            before, after = self._start.get(name), _cpu_s(pid)
            if before is not None and after is not None:
                result[name] = round(100 * (after - before) / wall, 1)
        result["machine"] = round(100 * (_machine_busy_s() - self._machine) / wall, 1)
        self.result = result


def percentile(values: list[float], p: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def rounded(value: Any, digits: int = 2) -> Any:
    return None if value is None else round(value, digits)
