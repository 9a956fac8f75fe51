"""`genops kernels selftest` run as a fresh process, the way an ops engineer runs it on a CPU-only node:
it must switch on the Triton interpreter itself, before triton is imported."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from orchestration.cli.kernels import app

REPO_ROOT = Path(__file__).resolve().parents[3]
RUN_CLI = "from orchestration.cli.kernels import app; app(prog_name='genops kernels')"


@pytest.mark.slow
def test_selftest_on_cpu_turns_on_the_interpreter_and_reports_json():
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "CUDA_VISIBLE_DEVICES")}
    env["CUDA_VISIBLE_DEVICES"] = ""  # a CPU-only node, even where the tests run beside a GPU
    completed = subprocess.run(
        [sys.executable, "-c", RUN_CLI, "selftest", "--json"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "setting TRITON_INTERPRET=1" in completed.stderr
    report = json.loads(completed.stdout)
    assert report["mode"] == "CPU, Triton interpreter" and report["passed"] is True
    cases = report["cases"]
    assert {c["head_dim"] for c in cases} == {40, 64, 80, 128, 160}
    assert {c["dtype"] for c in cases} == {"float32", "float16"}
    for c in cases:
        assert c["passed"] and c["all_written"] and c["error_to_bound"] <= 1, c
    assert f"{len(cases)}/{len(cases)} cases passed" in completed.stderr


def test_selftest_help_names_the_output():
    result = CliRunner().invoke(app, ["selftest", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    assert "max error" in result.output and "error/bound" in result.output and "--json" in result.output
