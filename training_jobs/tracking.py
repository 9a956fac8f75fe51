"""MLflow tracking for training jobs: the driver owns the run's life, rank 0 logs into it.

The launcher (driver) opens the run before any worker starts and closes it whatever happens, so
a crashed job ends FAILED with its error attached, never stuck in RUNNING. Inside the job only
rank 0 logs (each worker process sets the tracking URI itself; SQLite sees one writer). Runs are
grouped in one experiment per model family; a sweep's runs are nested under a parent run.
"""

from __future__ import annotations

import json
import logging
import subprocess
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

log = logging.getLogger(__name__)

MAX_PARAM_LENGTH = 6000


@dataclass
class TrackingConfig:
    tracking_uri: str | None = None
    """MLflow tracking URI (the launcher fills in the embedded SQLite store when unset)."""
    experiment: str = "genops"
    """Experiment the run goes into (one per model family)."""
    registered_model: str | None = None
    """Registry name; each successful run registers a new version of it (None: do not register)."""
    run_id: str | None = None
    """The MLflow run the launcher opened for this job (set by the launcher)."""
    parent_run_id: str | None = None
    """Parent run of a sweep (the launcher nests this job's run under it)."""
    dataset_versions: dict[str, str] = field(default_factory=dict)
    """DVC md5 of every dataset the job reads, by dataset name (lineage)."""
    git_commit: str | None = None
    """Commit of the code that ran (the launcher fills it in)."""
    profile: str | None = None
    """Config profile (tiny, demo, paper)."""


def git_commit(root: Path) -> str:
    """HEAD of the checkout, with `-dirty` when tracked files have uncommitted changes."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (subprocess.CalledProcessError, FileNotFoundError) as exc:
        log.warning("no git commit for %s (%s): lineage will say 'unknown'", root, exc)
        return "unknown"
    return head + ("-dirty" if dirty else "")


def _client(tracking_uri: str):
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    return mlflow.MlflowClient(tracking_uri=tracking_uri)


def lineage_tags(cfg: TrackingConfig) -> dict[str, str]:
    tags = {f"dataset_version.{name}": md5 for name, md5 in sorted(cfg.dataset_versions.items())}
    tags["git_commit"] = cfg.git_commit or "unknown"
    tags["profile"] = cfg.profile or "unknown"
    return tags


def artifact_location(tracking_uri: str) -> str | None:
    """Artifacts of an embedded SQLite store live beside it (`<store>/artifacts`), not in ./mlruns of
    whatever the working directory is; a tracking server decides for itself (None)."""
    if not tracking_uri.startswith("sqlite:///"):
        return None
    return (Path(tracking_uri.removeprefix("sqlite:///")).parent / "artifacts").as_uri()


def open_run(cfg: TrackingConfig, run_name: str, params: dict[str, Any], recipe: str) -> str:
    """Create the job's run (or reopen the unfinished run of the same name, for a resumed job)."""
    import mlflow

    client = _client(cfg.tracking_uri)
    experiment = client.get_experiment_by_name(cfg.experiment)
    if experiment is not None:
        experiment_id = experiment.experiment_id
    else:
        experiment_id = client.create_experiment(cfg.experiment, artifact_location=artifact_location(cfg.tracking_uri))
    existing = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`genops.run_name` = '{run_name}' and attributes.status != 'FINISHED'",
        max_results=1,
    )
    if existing:
        run_id = existing[0].info.run_id
        client.update_run(run_id, status="RUNNING")
        client.set_tag(run_id, "genops.resumed", "true")
        log.info("resuming MLflow run %s (%s)", run_id, run_name)
        return run_id
    tags = {"genops.run_name": run_name, "genops.recipe": recipe, **lineage_tags(cfg)}
    if cfg.parent_run_id:
        tags["mlflow.parentRunId"] = cfg.parent_run_id
    run = client.create_run(experiment_id, run_name=run_name, tags=tags)
    run_id = run.info.run_id
    items = [(k, str(v)[:MAX_PARAM_LENGTH]) for k, v in sorted(params.items())]
    for start in range(0, len(items), 100):
        client.log_batch(run_id, params=[mlflow.entities.Param(k, v) for k, v in items[start : start + 100]])
    client.log_text(run_id, json.dumps(params, indent=2, sort_keys=True, default=str), "config/resolved_config.json")
    return run_id


def finish_run(cfg: TrackingConfig, run_id: str, error: BaseException | None = None) -> None:
    """Close the run FINISHED, or FAILED with the error as a tag and a traceback artifact."""
    client = _client(cfg.tracking_uri)
    if error is None:
        client.set_terminated(run_id, status="FINISHED")
        return
    text = "".join(traceback.format_exception(error))
    client.set_tag(run_id, "error", f"{type(error).__name__}: {error}"[:4500])
    client.log_text(run_id, text, "error/traceback.txt")
    client.set_terminated(run_id, status="FAILED")


class ProgressWatcher:
    """While a job runs, say every `interval` seconds how far its run has got, read from what rank 0
    logged to MLflow: step of total, loss, samples/s and an ETA. Works the same for a local job and
    one on a remote cluster (it only reads the tracking store), and never fails the job.

        with ProgressWatcher(uri, run_id, total_steps=2500, say=print, label="[sd_base]"):
            trainer.fit()
    """

    def __init__(self, tracking_uri: str, run_id: str, total_steps: int, say: Callable[[str], None],
                 interval: float = 30.0, label: str = "", step_metric: str = "train/lr"):
        self.tracking_uri, self.run_id, self.total = tracking_uri, run_id, total_steps
        self.say, self.interval, self.label, self.step_metric = say, interval, label, step_metric
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._first: tuple[float, int] | None = None  # (time, step) of the first step seen
        self._last_step = -1

    def line(self) -> str | None:
        """The progress line for the run's latest logged step; None if nothing new was logged."""
        client = _client(self.tracking_uri)
        history = client.get_metric_history(self.run_id, self.step_metric)
        if not history:
            return None
        step = max(m.step for m in history)
        if step <= self._last_step:
            return None
        self._last_step = step
        now = time.monotonic()
        if self._first is None:
            self._first = (now, step)
        latest = client.get_run(self.run_id).data.metrics
        parts = [f"step {step}/{self.total} ({100 * step / max(1, self.total):.0f}%)"]
        for key, fmt in (("train/loss", "loss {:.4f}"), ("train/samples_per_s", "{:.1f} samples/s")):
            if key in latest:
                parts.append(fmt.format(latest[key]))
        started, first_step = self._first
        if step > first_step and now > started:
            eta = (self.total - step) * (now - started) / (step - first_step)
            parts.append(f"ETA {eta / 60:.1f} min")
        return " ".join(filter(None, [self.label, ", ".join(parts)]))

    def _watch(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                text = self.line()
            except Exception as exc:  # noqa: BLE001 - a busy or unreachable store must not fail the job
                log.debug("progress read failed: %s", exc)
                continue
            if text:
                self.say(text)

    def __enter__(self) -> Self:
        self._thread = threading.Thread(target=self._watch, name="genops-progress", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)


class RunLogger:
    """Per-worker logging into the job's run: a real client on rank 0, nothing on other ranks."""

    def __init__(self, cfg: TrackingConfig, rank: int):
        self.enabled = rank == 0 and cfg.run_id is not None
        self.run_id = cfg.run_id
        self.client = _client(cfg.tracking_uri) if self.enabled else None

    def metrics(self, values: dict[str, float], step: int) -> None:
        if not self.enabled:
            return
        import mlflow

        now = int(time.time() * 1000)
        self.client.log_batch(
            self.run_id, metrics=[mlflow.entities.Metric(k, float(v), now, step) for k, v in values.items()]
        )

    def image(self, image, artifact_file: str) -> None:
        """Log a PIL image (e.g. a sample grid) as a PNG artifact."""
        if self.enabled:
            self.client.log_image(self.run_id, image, artifact_file)

    def text(self, text: str, artifact_file: str) -> None:
        if self.enabled:
            self.client.log_text(self.run_id, text, artifact_file)

    def artifacts(self, local_dir: Path, artifact_path: str) -> None:
        if self.enabled:
            self.client.log_artifacts(self.run_id, str(local_dir), artifact_path)


def model_code_file(pyfunc_model: Any, directory: Path) -> Path:
    """MLflow models-from-code: a .py file that builds the pyfunc wrapper, so loading a registered
    version imports the wrapper from the installed genops code and unpickles nothing.

    `pyfunc_model` is a path to such a file, or a wrapper instance whose class takes no arguments
    (its module and class name go into the generated file).
    """
    if isinstance(pyfunc_model, (str, Path)):
        path = Path(pyfunc_model)
        if path.suffix != ".py" or not path.is_file():
            raise FileNotFoundError(f"pyfunc model code {path} is not a .py file (models-from-code)")
        return path
    cls = type(pyfunc_model)
    if "<locals>" in cls.__qualname__ or cls.__module__ == "__main__":
        raise ValueError(f"pyfunc wrapper {cls.__qualname__} must be a module-level class of an importable module")
    path = directory / f"{cls.__name__.lower()}_model.py"
    path.write_text(
        f'"""Models-from-code entry of {cls.__qualname__}: loading runs this file, nothing is unpickled."""\n'
        "from mlflow.models import set_model\n\n"
        f"from {cls.__module__} import {cls.__qualname__}\n\n"
        f"set_model({cls.__qualname__}())\n"
    )
    return path


def register_model(
    cfg: TrackingConfig,
    run_id: str,
    model_dir: Path,
    pyfunc_model: Any,
    metrics: dict[str, float],
) -> str | None:
    """Log `model_dir` (a save_pretrained folder) as an MLflow pyfunc model and register a version.

    The weights stay in Hugging Face form inside the model's artifacts (loadable with
    `from_pretrained`, no pickle of the module, no batch size fixed by an input example); the
    pyfunc wrapper is logged as code (`model_code_file`), so loading a version unpickles nothing. Returns the new version, or None when
    `cfg.registered_model` is unset.
    """
    import tempfile

    import mlflow

    _client(cfg.tracking_uri)
    with tempfile.TemporaryDirectory() as code_dir, mlflow.start_run(run_id=run_id):
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=str(model_code_file(pyfunc_model, Path(code_dir))),
            artifacts={"weights": str(model_dir)},
            pip_requirements=["genops"],
        )
    client = _client(cfg.tracking_uri)
    client.log_artifacts(run_id, str(model_dir), "weights")
    if not cfg.registered_model:
        return None
    tags = {"source_run_id": run_id, **lineage_tags(cfg)}
    tags.update({f"metric.{k}": f"{v:.6g}" for k, v in metrics.items()})
    version = mlflow.register_model(info.model_uri, cfg.registered_model, tags=tags)
    client.update_model_version(
        cfg.registered_model, version.version,
        description=f"run {run_id}; datasets " + ", ".join(f"{k}@{v[:10]}" for k, v in sorted(cfg.dataset_versions.items())),
    )
    return str(version.version)
