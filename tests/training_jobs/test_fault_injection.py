"""Fault injection with the real services: a Ray Train worker killed with SIGKILL mid-training (a local
Ray), and the MLflow tracking server (a real `mlflow server` on loopback) stopped and restarted while a
job logs into it."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest
from mlflow import MlflowClient

from training_jobs.launcher import launch

STEPS = 24
OUTAGE_STEPS = 240


@pytest.fixture
def tracking(tmp_path):
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def vae_overrides(tiny_data, tmp_path, *extra: str) -> list[str]:
    return [f"data.prepared_root={tiny_data / 'data' / 'prepared'}", f"run.storage_path={tmp_path / 'ray'}",
            f"train.steps={STEPS}", "train.log_every=1", "data.eval_images=0", *extra]


def assert_each_step_once(client: MlflowClient, run_id: str, keys=("train/loss", "train/lr"), total: int = STEPS) -> None:
    for key in keys:
        steps = [m.step for m in client.get_metric_history(run_id, key)]
        assert sorted(steps) == list(range(1, total + 1)), f"{key}: steps {sorted(steps)}"


class Injector(threading.Thread):
    """Runs `fault` beside the job (launch() blocks the test's thread); keeps its error for the test."""

    def __init__(self, fault: Callable[[], None]):
        super().__init__(daemon=True)
        self.fault, self.error = fault, None

    def run(self) -> None:
        try:
            self.fault()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test's thread
            self.error = exc


def wait_for(condition: Callable[[], object], timeout: float, what: str) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise TimeoutError(f"gave up waiting for {what} after {timeout:.0f}s")


def train_worker_pids() -> list[int]:
    """Ray Train workers of this session's own Ray: descendants of this process (another Ray on the
    machine is never touched)."""
    pids = []
    for proc in psutil.Process().children(recursive=True):
        try:
            if "RayTrainWorker" in " ".join(proc.cmdline()) and proc.status() != psutil.STATUS_ZOMBIE:
                pids.append(proc.pid)
        except psutil.Error:
            continue
    return pids


def registered_checkpoint(run_dir: Path) -> str | None:
    """The latest checkpoint Ray Train's controller has registered (and would restart from), if any."""
    try:
        snapshot = json.loads((run_dir / "checkpoint_manager_snapshot.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    latest = snapshot.get("latest_checkpoint_result")
    return latest and latest["checkpoint_dir_name"]


@pytest.mark.integration
@pytest.mark.slow
def test_a_killed_worker_restarts_from_its_checkpoint_and_logs_each_step_once(tiny_data, tmp_path, tracking, ray_session):
    run_dir = tmp_path / "ray" / "vae-killed"
    killed: list[int] = []

    def kill_the_worker() -> None:
        wait_for(lambda: registered_checkpoint(run_dir), 180, "a registered checkpoint")
        (pid,) = train_worker_pids()
        os.kill(pid, signal.SIGKILL)
        killed.append(pid)

    injector = Injector(kill_the_worker)
    injector.start()
    result = launch("vae", "tiny", vae_overrides(tiny_data, tmp_path, "scaling.num_workers=1", "run.max_failures=1",
                                                 "train.checkpoint_every=2"),
                    run_name="vae-killed", tracking_uri=tracking, versions={}, progress=lambda _: None)
    injector.join(timeout=10)
    assert injector.error is None, injector.error
    assert killed, "no Ray Train worker was killed"
    assert killed[0] not in train_worker_pids(), "the killed worker is still there"

    client = MlflowClient(tracking)
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert result.metrics["step"] == STEPS
    assert [m.value for m in client.get_metric_history(result.run_id, "restarts")] == [1.0]
    (resumed,) = [m.value for m in client.get_metric_history(result.run_id, "resumed_from_step")]
    assert 2 <= resumed < STEPS and resumed % 2 == 0, "the restart did not continue from a mid-run checkpoint"
    assert_each_step_once(client, result.run_id)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class MlflowServer:
    """A real `mlflow server` on loopback over a SQLite store, that a test can stop and start again."""

    def __init__(self, folder: Path):
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.command = [str(Path(sys.executable).parent / "mlflow"), "server",
                        "--backend-store-uri", f"sqlite:///{folder / 'server.db'}",
                        "--artifacts-destination", str(folder / "artifacts"),
                        "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"]
        self.log = folder / "server.log"
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 240) -> None:
        with self.log.open("a") as out:
            self.process = subprocess.Popen(self.command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"mlflow server exited with {self.process.returncode}: {self.log.read_text()[-2000:]}")
            try:
                urllib.request.urlopen(f"{self.uri}/health", timeout=2).close()
                return
            except OSError:
                time.sleep(0.3)
        raise TimeoutError(f"mlflow server on {self.uri} did not answer within {timeout:.0f}s")

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=15)


@pytest.fixture
def mlflow_server(tmp_path):
    server = MlflowServer(tmp_path)
    server.start()
    yield server
    server.stop()


@pytest.mark.integration
@pytest.mark.slow
def test_metrics_logged_while_the_tracking_server_is_down_reach_it_when_it_is_back(tiny_data, tmp_path, mlflow_server, caplog):
    client = MlflowClient(mlflow_server.uri)
    seen_before: list[int] = []
    outage_ms: list[int] = []

    def outage() -> None:
        runs = wait_for(lambda: client.search_runs(
            [e.experiment_id for e in client.search_experiments()], "tags.`genops.run_name` = 'vae-outage'"), 120, "the run")
        history = wait_for(lambda: client.get_metric_history(runs[0].info.run_id, "train/loss"), 120, "a first step")
        seen_before.append(max(m.step for m in history))
        mlflow_server.stop()
        outage_ms.append(int(time.time() * 1000))
        time.sleep(8)  # training goes on, logging into the void
        outage_ms.append(int(time.time() * 1000))
        mlflow_server.start()

    injector = Injector(outage)
    injector.start()
    with caplog.at_level(logging.WARNING, logger="training_jobs.tracking"):
        # OUTAGE_STEPS: enough steps that training is still running once the server is down. Stopping the server
        # takes seconds (SIGTERM, its workers exit), and on an idle machine 24 tiny steps were done by then.
        result = launch("vae", "tiny", vae_overrides(tiny_data, tmp_path, "train.checkpoint_every=1000",
                                                     f"train.steps={OUTAGE_STEPS}"),
                        run_name="vae-outage", tracking_uri=mlflow_server.uri, versions={}, progress=lambda _: None)
    injector.join(timeout=120)
    assert injector.error is None, injector.error

    assert seen_before and seen_before[0] < OUTAGE_STEPS, "the outage began after training had ended"
    assert any("unreachable" in r.getMessage() for r in caplog.records), "the job never saw the server down"
    assert any("reachable again" in r.getMessage() for r in caplog.records)
    assert client.get_run(result.run_id).info.status == "FINISHED"
    assert_each_step_once(client, result.run_id, total=OUTAGE_STEPS)
    during = [m.step for m in client.get_metric_history(result.run_id, "train/loss") if outage_ms[0] < m.timestamp < outage_ms[1]]
    assert during, "training stood still while the server was down"


@pytest.mark.integration
def test_a_server_down_past_the_timeout_fails_naming_the_file_that_kept_the_metrics(tmp_path, mlflow_server):
    from training_jobs.tracking import RunLogger, TrackingConfig, TrackingUnavailable, open_run

    cfg = TrackingConfig(tracking_uri=mlflow_server.uri, experiment="outage", outage_timeout_s=2.0)
    cfg.run_id = open_run(cfg, "never-back", {}, "vae")
    logger = RunLogger(cfg, rank=0, spool_dir=tmp_path / "spool")
    mlflow_server.stop()
    logger.metrics({"train/loss": 0.5}, 1)
    logger.metrics({"train/loss": 0.25}, 2)
    started = time.monotonic()
    with pytest.raises(TrackingUnavailable, match=rf"{mlflow_server.uri} unreachable .*tracking\.outage_timeout_s.*kept in "
                                                  rf"{tmp_path / 'spool' / 'unsent_tracking.jsonl'}"):
        logger.flush()
    assert time.monotonic() - started < 30
    rows = [json.loads(line) for line in (tmp_path / "spool" / "unsent_tracking.jsonl").read_text().splitlines()]
    assert [(r["run_id"], r["step"], r["metrics"]) for r in rows] == [
        (cfg.run_id, 1, {"train/loss": 0.5}), (cfg.run_id, 2, {"train/loss": 0.25})]
    with pytest.raises(TrackingUnavailable):
        logger.metrics({"train/loss": 0.1}, 3)  # the job stops logging into the void: it fails
