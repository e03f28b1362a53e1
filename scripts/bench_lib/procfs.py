"""CPU time and memory of another process, read from /proc (Linux only, no psutil)."""

from __future__ import annotations

import os

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_times(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of every thread of ``pid`` so far (resolution 1/CLK_TCK s)."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        stat = f.read()
    fields = stat[stat.rindex(")") + 2 :].split()  # the command name may contain spaces
    return int(fields[11]) / CLOCK_TICKS, int(fields[12]) / CLOCK_TICKS


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of every thread of ``pid`` so far."""
    return sum(cpu_times(pid))


def rss_kib(pid: int) -> int:
    """Resident set size (VmRSS) in KiB."""
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise LookupError(f"no VmRSS for pid {pid}")


def pss_kib(pid: int) -> int | None:
    """Proportional set size from /proc/PID/smaps_rollup in KiB, or None when it is not readable."""
    try:
        with open(f"/proc/{pid}/smaps_rollup", encoding="ascii") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def memory(pids: list[int]) -> dict[str, float | None]:
    """Summed RSS and PSS (MiB) of ``pids``; ``pss_mib`` is None if any smaps_rollup was unreadable."""
    rss = [rss_kib(pid) for pid in pids]
    pss = [pss_kib(pid) for pid in pids]
    return {
        "processes": len(pids),
        "rss_mib": sum(rss) / 1024,
        "pss_mib": None if any(p is None for p in pss) else sum(p for p in pss if p is not None) / 1024,
    }


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine spent busy (all cores, /proc/stat), for noise accounting."""
    with open("/proc/stat", encoding="ascii") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / CLOCK_TICKS


def loadavg() -> float:
    with open("/proc/loadavg", encoding="ascii") as f:
        return float(f.read().split()[0])
