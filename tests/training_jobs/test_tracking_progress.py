"""The launcher's progress lines come from what rank 0 logged to MLflow (a real SQLite store)."""

from __future__ import annotations

import time

from training_jobs.tracking import ProgressWatcher, RunLogger, TrackingConfig, open_run


def _run(tmp_path):
    cfg = TrackingConfig(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", experiment="progress-test")
    cfg.run_id = open_run(cfg, "progress-run", {"train.steps": 100}, "vae")
    return cfg, RunLogger(cfg, rank=0)


def test_progress_line_reports_latest_step_loss_throughput_and_eta(tmp_path):
    cfg, logger = _run(tmp_path)
    watcher = ProgressWatcher(cfg.tracking_uri, cfg.run_id, total_steps=100, say=print, label="[vae]")
    assert watcher.line() is None  # nothing logged yet

    logger.metrics({"train/loss": 0.5, "train/samples_per_s": 12.0, "train/lr": 1e-3}, 25)
    logger.flush()
    first = watcher.line()
    assert first.startswith("[vae] step 25/100 (25%)")
    assert "loss 0.5000" in first and "12.0 samples/s" in first
    assert "ETA" not in first  # one point gives no rate yet
    assert watcher.line() is None  # no new step: no repeated line

    time.sleep(0.05)
    logger.metrics({"train/loss": 0.25, "train/samples_per_s": 14.0, "train/lr": 9e-4}, 50)
    logger.flush()
    second = watcher.line()
    assert "step 50/100 (50%)" in second and "loss 0.2500" in second and "ETA" in second


def test_watcher_thread_says_lines_while_the_job_runs(tmp_path):
    cfg, logger = _run(tmp_path)
    said: list[str] = []
    with ProgressWatcher(cfg.tracking_uri, cfg.run_id, total_steps=10, say=said.append, interval=0.05):
        logger.metrics({"train/loss": 1.0, "train/lr": 1e-3}, 5)
        deadline = time.monotonic() + 10
        while not said and time.monotonic() < deadline:
            time.sleep(0.05)
    assert said and said[0].startswith("step 5/10")
