"""Every benchmark says how busy the machine was, before its table.

The machine these tests run on is shared, so no test asserts that it was idle: with a busy loop
beside a benchmark the warning must appear; without one, only the fields are checked.
"""

import io
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from benchmarks.machine_load import IDLE_OTHER_CORES, start_watch

ROOT = Path(__file__).resolve().parents[2]
BENCHMARKS = ROOT / "benchmarks"
HEADER = re.compile(r"^machine: (\d+) CPUs \(os\.cpu_count\), \d+ usable by this process, torch threads (\d+), "
                    r"load average ([\d.]+) \(1 min\)", re.MULTILINE)
REPORT = re.compile(r"^during the run \(([\d.]+) s wall\): this benchmark's processes used ([\d.]+) CPU-s; "
                    r"other processes used ([\d.]+) CPU-s = ([\d.]+) cores on average", re.MULTILINE)
BUSY_WARNING = "WARNING: the machine was busy during the run"

# Bounded: stops by itself after 120 s even if the test dies before killing it.
BUSY_LOOP = "import time\nend = time.monotonic() + 120\nprint('spinning', flush=True)\nwhile time.monotonic() < end: pass\n"
# Burns a fixed amount of its own CPU time, says so, then waits to be stopped (or 60 s).
BURN_THEN_WAIT = ("import time\nwhile time.process_time() < {seconds}: pass\nprint('burnt', flush=True)\n"
                  "time.sleep({wait})\n")


def busy_loop() -> subprocess.Popen:
    process = subprocess.Popen([sys.executable, "-c", BUSY_LOOP], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "spinning"
    return process


def stop(process: subprocess.Popen) -> None:
    process.kill()
    process.wait()


def test_every_benchmark_prints_the_machine_header_and_report():
    scripts = sorted(p for p in BENCHMARKS.glob("*.py") if p.name != "machine_load.py")
    assert scripts, "no benchmark scripts found"
    for script in scripts:
        source = script.read_text()
        assert "start_watch()" in source and "machine.report()" in source, (
            f"{script.name} must call machine_load.start_watch() before measuring and machine.report() "
            f"before its table")


def test_header_and_report_fields():
    out = io.StringIO()
    machine = start_watch(out)
    header = out.getvalue()
    cpus, threads, load = HEADER.search(header).groups()
    assert int(cpus) >= 1 and int(threads) >= 1 and float(load) >= 0
    time.sleep(0.2)
    report = machine.report()
    wall, ours, other, cores = (float(v) for v in REPORT.search(out.getvalue()).groups())
    # the report prints wall with 1 decimal (rounding <= 0.05) and cores with 2 (<= 0.005)
    assert wall >= 0.2 and report.wall_s == pytest.approx(wall, abs=0.05)
    assert ours >= 0 and other >= 0 and cores == pytest.approx(report.other_cores, abs=0.01)
    assert "hypervisor steal" in out.getvalue()


@pytest.mark.parametrize("reaped", [True, False], ids=["child-waited-for", "child-still-running"])
def test_our_own_children_are_not_counted_as_other_processes(reaped):
    """A child's CPU time is the benchmark's own: counted whether it exited or is still running."""
    out = io.StringIO()
    machine = start_watch(out)
    child = subprocess.Popen([sys.executable, "-c", BURN_THEN_WAIT.format(seconds=1.0, wait=0 if reaped else 60)],
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "burnt"
        if reaped:
            child.wait()
        report = machine.report()
    finally:
        stop(child)
    # /proc counts whole 10 ms ticks: a child that burnt 1.0 s can read 0.99 s
    assert report.ours_cpu_s >= 0.9


@pytest.mark.slow  # ~12 s idle; importing torch and friends beside the busy loop on a shared machine takes longer
def test_benchmark_warns_when_another_process_keeps_a_core_busy():
    spinner = busy_loop()
    try:
        result = subprocess.run(
            [sys.executable, str(BENCHMARKS / "model_steps.py"), "--profile", "tiny", "--only", "vae",
             "--steps", "1", "--warmup", "0", "--threads", "1"],
            cwd=ROOT, capture_output=True, text=True, timeout=600, check=False,
        )
    finally:
        stop(spinner)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    table = next(i for i, line in enumerate(lines) if line.startswith("model "))
    header = next(i for i, line in enumerate(lines) if HEADER.match(line))
    report = next(i for i, line in enumerate(lines) if REPORT.match(line))
    warning = next(i for i, line in enumerate(lines) if line.startswith(BUSY_WARNING))
    assert header < report < warning < table
    other_cores = float(REPORT.match(lines[report]).group(4))
    assert other_cores > IDLE_OTHER_CORES


@pytest.mark.skipif(torch.cuda.is_available(), reason="with CUDA the attention benchmark runs in full")
def test_benchmark_without_cuda_still_prints_the_header():
    result = subprocess.run([sys.executable, str(BENCHMARKS / "attention.py")], cwd=ROOT, capture_output=True,
                            text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    assert HEADER.search(result.stdout), result.stdout
