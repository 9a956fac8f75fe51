"""Temporary stores for the browser tests: a tiny DVC checkout (what the data assets run on) and an
MLflow SQLite store with one run (metrics + a sample-grid PNG) and a registered version @champion."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[2]
MODEL = "genops-sd-base"
METRICS = {"train/loss": [0.91, 0.62, 0.47], "eval/clip_score": [0.21, 0.24, 0.27]}


def make_checkout(root: Path) -> Path:
    """A git + DVC checkout with the project's dvc.yaml, the tiny data profile as params.yaml and the
    code the stages depend on, with a local DVC remote (the same layout tests/orchestration uses)."""
    root.mkdir(parents=True, exist_ok=True)
    shutil.copy(PROJECT / "dvc.yaml", root / "dvc.yaml")
    shutil.copy(PROJECT / "training_jobs" / "configs" / "data" / "tiny.yaml", root / "params.yaml")
    shutil.copytree(PROJECT / "components", root / "components", ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    dvc = str(Path(shutil.which("dvc") or PROJECT / ".venv" / "bin" / "dvc"))
    subprocess.run([dvc, "init", "-q"], cwd=root, check=True)
    subprocess.run([dvc, "remote", "add", "-q", "-d", "local", str(root.parent / f"{root.name}-remote")],
                   cwd=root, check=True)
    return root


def sample_grid():
    """A 2x2 grid of flat-coloured 32 px tiles: what a training run logs as its sample grid."""
    from PIL import Image

    grid = Image.new("RGB", (64, 64))
    for i, colour in enumerate([(220, 40, 40), (40, 180, 60), (40, 80, 220), (230, 200, 40)]):
        grid.paste(Image.new("RGB", (32, 32), colour), ((i % 2) * 32, (i // 2) * 32))
    return grid


def make_mlflow_store(tracking_uri: str, artifact_root: Path) -> dict[str, str]:
    """One experiment with one finished run (metrics over 3 steps, samples/sample_grid.png) and a
    registered version of MODEL from that run with alias `champion`."""
    import mlflow
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    experiment_id = client.create_experiment("sd_base", artifact_location=(artifact_root / "sd_base").as_uri())
    run = client.create_run(experiment_id, run_name="sd_base-tiny", tags={"genops.recipe": "sd_base"})
    run_id = run.info.run_id
    client.log_batch(run_id, metrics=[mlflow.entities.Metric(key, value, 0, step)
                                      for key, values in METRICS.items() for step, value in enumerate(values)],
                     params=[mlflow.entities.Param("profile", "tiny")])
    client.log_image(run_id, sample_grid(), "samples/sample_grid.png")
    client.set_terminated(run_id)
    client.create_registered_model(MODEL)
    version = client.create_model_version(MODEL, f"{run.info.artifact_uri}/samples", run_id=run_id)
    client.set_registered_model_alias(MODEL, "champion", version.version)
    return {"experiment_id": experiment_id, "run_id": run_id, "version": str(version.version)}
