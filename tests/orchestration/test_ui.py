"""`genops ui`: both servers come up on the embedded stores, print their URLs, and stop on Ctrl-C."""

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil
import pytest
import yaml

from orchestration.local_ui import ensure_dagster_yaml

PROJECT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_embedded_dagster_yaml_turns_telemetry_off_and_keeps_an_existing_file(tmp_path):
    path = ensure_dagster_yaml(tmp_path)
    assert yaml.safe_load(path.read_text()) == {"telemetry": {"enabled": False}}
    path.write_text("telemetry:\n  enabled: true\n")
    ensure_dagster_yaml(tmp_path)
    assert "enabled: true" in path.read_text()


@pytest.mark.slow
def test_genops_ui_serves_both_uis_and_stops_them_on_ctrl_c(tmp_path):
    root = tmp_path / "checkout"
    root.mkdir()
    shutil.copy(PROJECT / "params.yaml", root / "params.yaml")
    dagster_port, mlflow_port = free_port(), free_port()
    env = {**os.environ, "GENOPS_ROOT": str(root), "DAGSTER_HOME": str(root / ".dagster_home"),
           "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    genops = Path(sys.executable).parent / "genops"
    # Its output goes to a file, as a terminal would take it: a pipe this test must keep draining can fill
    # (the servers inherit it) and block every writer, genops ui's own "stopping" line included.
    log = tmp_path / "genops-ui.log"
    with log.open("w") as out:
        process = subprocess.Popen([str(genops), "ui", "--port", str(dagster_port), "--mlflow-port", str(mlflow_port)],
                                   cwd=PROJECT, env=env, stdout=out, stderr=subprocess.STDOUT, text=True,
                                   start_new_session=True)
    children = []
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and process.poll() is None and "MLflow UI:" not in log.read_text():
            time.sleep(0.5)
        lines = [line.strip() for line in log.read_text().splitlines()]
        assert f"Dagster UI: http://127.0.0.1:{dagster_port}" in lines, lines
        assert f"MLflow UI:  http://127.0.0.1:{mlflow_port}" in lines, lines
        assert urllib.request.urlopen(f"http://127.0.0.1:{dagster_port}/server_info", timeout=10).status == 200
        assert urllib.request.urlopen(f"http://127.0.0.1:{mlflow_port}/health", timeout=10).status == 200
        assert (root / ".dagster_home" / "dagster.yaml").is_file()
        children = psutil.Process(process.pid).children(recursive=True)
        assert len(children) >= 2
        process.send_signal(signal.SIGINT)  # Ctrl-C reaches genops ui only: the servers have their own groups
        try:  # genops ui's stop ladder is SIGINT, 20 s, SIGTERM, 5 s, SIGKILL, 5 s: 30 s, on a loaded box more
            code = process.wait(timeout=120)
        except subprocess.TimeoutExpired:
            tree = [(c.pid, c.status(), " ".join(c.cmdline()[:3])) for c in children if c.is_running()]
            raise AssertionError(f"genops ui still running 120 s after Ctrl-C; servers {tree}; its output ends "
                                 f"{log.read_text()[-3000:]}") from None
        assert code == 0, log.read_text()[-3000:]
        time.sleep(1)
        alive = [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
        assert alive == [], [c.cmdline() for c in alive]
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        for child in children:  # only the servers this test started, if Ctrl-C left any
            if child.is_running():
                child.kill()
