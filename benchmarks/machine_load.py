"""How busy the machine was while a benchmark ran, printed before its table.

A throughput figure from a shared machine measures the sharing as much as the code: the same
metrics benchmark gave 0.75 and 9 images/s on two days. Every benchmark wraps its measurements in
`start_watch()` and `report()`, which print

- at the start: CPUs (`os.cpu_count()`, and how many this process may use), torch's intra-op
  threads, and the load average, with a WARNING when the 1-minute load is above `IDLE_LOAD`;
- after the measurements, before the table (`report()`): the wall time, the CPU time this
  benchmark's own processes took, the CPU time every other process on the machine took (all busy
  CPU time in /proc/stat minus ours) in core-seconds, as average cores and as a fraction of the
  machine, the time the hypervisor stole, and a WARNING when the others took more than
  `IDLE_OTHER_CORES` of one core on average.

"Ours" is this process (its threads and every child it has waited for: `getrusage`) plus every
live descendant with the children it has waited for (`/proc/<pid>/stat`, fields utime, stime,
cutime, cstime): Ray's workers are children of the raylet this process started, never waited for
by us while the job runs. A descendant that was orphaned before `report()` counts as "other", which
errs towards the warning.

    machine = start_watch()
    rows = measure()
    machine.report()
    print_table(rows)
"""

from __future__ import annotations

import os
import resource
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

IDLE_LOAD = 0.5
"""1-minute load average above which the machine was not idle when the benchmark started."""
IDLE_OTHER_CORES = 0.1
"""Average cores other processes may take during the run (10% of one core) before it counts as busy."""

PROC = Path("/proc")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class CpuSample:
    """One instant: wall clock, the machine's CPU counters and our process tree's CPU time (seconds)."""

    wall: float
    busy: float
    """CPU time all processes took since boot: user + nice + system + irq + softirq (guest is inside user)."""
    steal: float
    """CPU time the hypervisor gave to other virtual machines."""
    ours: float
    """CPU time of this process and its descendants, live or waited for."""


@dataclass(frozen=True)
class LoadReport:
    wall_s: float
    ours_cpu_s: float
    other_cpu_s: float
    steal_s: float
    cpus: int
    load_start: float
    load_end: float

    @property
    def other_cores(self) -> float:
        """Cores other processes kept busy on average during the run."""
        return self.other_cpu_s / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def busy_at_start(self) -> bool:
        return self.load_start > IDLE_LOAD

    @property
    def busy_during_run(self) -> bool:
        return self.other_cores > IDLE_OTHER_CORES


def _machine_cpu_seconds() -> tuple[float, float]:
    """(busy, steal) CPU seconds of all CPUs since boot, from the first line of /proc/stat."""
    fields = (PROC / "stat").read_text().split("\n", 1)[0].split()
    if fields[0] != "cpu":
        raise RuntimeError(f"/proc/stat does not start with the aggregate cpu line: {fields[:3]}")
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[1:9])
    return (user + nice + system + irq + softirq) / CLOCK_TICKS, steal / CLOCK_TICKS


def _process_table() -> dict[int, tuple[int, float]]:
    """pid -> (parent pid, utime + stime + cutime + cstime in seconds) for every process still listed."""
    table = {}
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except (FileNotFoundError, ProcessLookupError):
            continue  # exited between the listing and the read
        # The command name sits in parentheses and may hold spaces or ')': split after the last ')'.
        fields = stat[stat.rindex(")") + 2:].split()
        # fields[0] is field 3 of proc(5): state; ppid is field 4, utime..cstime fields 14-17
        table[int(entry.name)] = (int(fields[1]), sum(int(v) for v in fields[11:15]) / CLOCK_TICKS)
    return table


def own_cpu_seconds() -> float:
    """CPU time of this process, the children it waited for, and every live descendant (with theirs)."""
    own = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        own += usage.ru_utime + usage.ru_stime
    table = _process_table()
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    stack = list(children.get(os.getpid(), []))
    while stack:
        pid = stack.pop()
        own += table[pid][1]
        stack.extend(children.get(pid, []))
    return own


def sample() -> CpuSample:
    busy, steal = _machine_cpu_seconds()
    return CpuSample(wall=time.monotonic(), busy=busy, steal=steal, ours=own_cpu_seconds())


def torch_threads() -> int:
    """torch's intra-op thread count (what a CPU benchmark's matrix work runs on)."""
    import torch

    return torch.get_num_threads()


class MachineWatch:
    """Samples the machine at the start and at `report()`; prints the header and the report."""

    def __init__(self, out: TextIO | None = None) -> None:
        self.out = out or sys.stdout
        self.cpus = os.cpu_count() or 1
        self.start: CpuSample | None = None
        self.load_start = 0.0
        self.threads_start = 0
        self.result: LoadReport | None = None

    def _print(self, line: str) -> None:
        print(line, file=self.out, flush=True)

    def begin(self) -> None:
        load1, load5, _ = os.getloadavg()
        self.load_start = load1
        self.threads_start = torch_threads()
        usable = len(os.sched_getaffinity(0))
        self._print(f"machine: {self.cpus} CPUs (os.cpu_count), {usable} usable by this process, "
                    f"torch threads {self.threads_start}, load average {load1:.2f} (1 min) {load5:.2f} (5 min) at start")
        if load1 > IDLE_LOAD:
            self._print(f"WARNING: the machine was not idle at the start: 1-minute load average {load1:.2f} > "
                        f"{IDLE_LOAD} (other work, or a run that just ended); the figures below may measure the "
                        f"sharing, not the code")
        self.start = sample()

    def report(self) -> LoadReport:
        """Print what the run cost us and others; call it after the measurements, before the table."""
        if self.start is None:
            raise RuntimeError("report() before begin(): start the watch with start_watch()")
        end = sample()
        wall = end.wall - self.start.wall
        ours = end.ours - self.start.ours
        # /proc/stat counts in clock ticks (10 ms): a quiet machine can come out a tick below zero.
        other = max(0.0, (end.busy - self.start.busy) - ours)
        self.result = LoadReport(wall_s=wall, ours_cpu_s=ours, other_cpu_s=other, steal_s=end.steal - self.start.steal,
                                 cpus=self.cpus, load_start=self.load_start, load_end=os.getloadavg()[0])
        r = self.result
        threads = torch_threads()
        changed = f" (torch threads now {threads})" if threads != self.threads_start else ""
        self._print(f"during the run ({wall:.1f} s wall): this benchmark's processes used {ours:.1f} CPU-s; "
                    f"other processes used {other:.1f} CPU-s = {r.other_cores:.2f} cores on average = "
                    f"{r.other_cores / self.cpus:.0%} of the {self.cpus}-CPU machine; hypervisor steal "
                    f"{r.steal_s:.1f} CPU-s; load average {r.load_end:.2f} (1 min) at the end{changed}")
        if r.busy_during_run:
            self._print(f"WARNING: the machine was busy during the run: other processes took {r.other_cores:.2f} "
                        f"cores on average (idle means under {IDLE_OTHER_CORES} of one core); compare ratios "
                        f"within this run, not absolute figures across runs")
        return r


def start_watch(out: TextIO | None = None) -> MachineWatch:
    """Print the machine header now and start counting; the benchmark calls `report()` before its table."""
    watch = MachineWatch(out)
    watch.begin()
    return watch
