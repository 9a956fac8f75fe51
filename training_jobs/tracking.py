"""MLflow tracking for training jobs: the driver owns the run's life, rank 0 logs into it.

The launcher (driver) opens the run before any worker starts and closes it whatever happens, so
a crashed job ends FAILED with its error attached, never stuck in RUNNING. Inside the job only
rank 0 logs (each worker process sets the tracking URI itself; SQLite sees one writer). Runs are
grouped in one experiment per model family; a sweep's runs are nested under a parent run.
"""

from __future__ import annotations

import collections
import json
import logging
import subprocess
import tempfile
import threading
import time
import traceback
import urllib.error
import urllib.request
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
    outage_timeout_s: float = 900.0
    """How long rank 0 waits at a checkpoint for an unreachable tracking server before failing the job
    (what was not sent is then kept in a JSONL file the error names)."""


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


class TrackingUnavailable(RuntimeError):
    """The tracking server stayed unreachable longer than `tracking.outage_timeout_s`."""


class RunLogger:
    """Per-worker logging into the job's run: rank 0 logs, other ranks do nothing.

    Rank 0 never waits on MLflow while it trains: each call queues a record, and a background thread
    sends the records in order, retrying while the tracking server is unreachable (a restarted
    `mlflow server`, a network blip). `flush()` waits until MLflow holds everything queued; the worker
    calls it before reporting each checkpoint, so a checkpoint never covers steps MLflow lacks. If the
    server stays unreachable for `outage_timeout_s`, flush writes what was not sent to
    `<spool_dir>/unsent_tracking.jsonl` (images beside it) and raises naming that file.

    `resumed(step)`: this attempt restarted from the checkpoint of `step` (a killed worker, a relaunch).
    The run records it (metric `restarts`, `resumed_from_step`), and steps a previous attempt already
    logged are not logged again, so every metric holds each step once.
    """

    def __init__(self, cfg: TrackingConfig, rank: int, spool_dir: Path | None = None, retry_interval: float = 1.0):
        self.enabled = rank == 0 and cfg.run_id is not None
        self.run_id = cfg.run_id
        self.tracking_uri = cfg.tracking_uri
        self.outage_timeout_s = cfg.outage_timeout_s
        self.retry_interval = retry_interval
        self.spool_dir = Path(spool_dir) if spool_dir is not None else None
        self.client = _client(cfg.tracking_uri) if self.enabled else None
        self._pending: collections.deque[tuple] = collections.deque()
        self._lock = threading.Condition()
        self._logged: dict[str, set[int]] = {}  # steps earlier attempts logged, by metric (after a resume)
        self._sending_since: float | None = None  # when the oldest unsent record was first tried
        self._outage = False
        self._last_error: BaseException | None = None
        self._fatal: BaseException | None = None
        self._thread: threading.Thread | None = None

    def metrics(self, values: dict[str, float], step: int) -> None:
        self._queue(("metrics", {k: float(v) for k, v in values.items()}, step, int(time.time() * 1000)))

    def image(self, image, artifact_file: str) -> None:
        """Log a PIL image (e.g. a sample grid) as a PNG artifact."""
        self._queue(("image", image.copy(), artifact_file))

    def text(self, text: str, artifact_file: str) -> None:
        self._queue(("text", text, artifact_file))

    def artifacts(self, local_dir: Path, artifact_path: str) -> None:
        """Upload a folder now (after everything queued before it): the caller may delete it afterwards."""
        if self.enabled:
            self.flush()
            self.client.log_artifacts(self.run_id, str(local_dir), artifact_path)

    def resumed(self, step: int) -> None:
        self._queue(("resumed", step))

    def flush(self) -> None:
        """Wait until MLflow holds every queued record; see the class docstring for an outage."""
        if not self.enabled:
            return
        with self._lock:
            while self._pending and self._fatal is None:
                since = self._sending_since
                if since is not None and time.monotonic() - since > self.outage_timeout_s:
                    self._fatal = TrackingUnavailable(
                        f"MLflow at {self.tracking_uri} unreachable for over {self.outage_timeout_s:g}s "
                        f"(tracking.outage_timeout_s; last error: {self._last_error}); {len(self._pending)} "
                        f"records of run {self.run_id} not confirmed sent are kept in {self._spool(list(self._pending))}"
                    )
                    self._pending.clear()
                    break
                self._lock.wait(timeout=1.0)
            if self._fatal is not None:
                raise self._fatal

    def _queue(self, record: tuple) -> None:
        if not self.enabled:
            return
        with self._lock:
            if self._fatal is not None:
                raise self._fatal
            self._pending.append(record)
            if self._thread is None:
                self._thread = threading.Thread(target=self._send_forever, name="genops-mlflow-sender", daemon=True)
                self._thread.start()
            self._lock.notify_all()

    def _send_forever(self) -> None:
        while True:
            with self._lock:
                while not self._pending:
                    self._lock.wait()
                record = self._pending[0]
                if self._sending_since is None:
                    self._sending_since = time.monotonic()
            try:
                self._check_reachable()
                self._send(record)
            except Exception as exc:  # noqa: BLE001 - kept and retried; flush() gives up after the timeout
                with self._lock:
                    self._last_error = exc
                    if not _retryable(exc):
                        self._fatal = RuntimeError(f"MLflow at {self.tracking_uri} refused a record of run {self.run_id}: {exc}")
                        self._fatal.__cause__ = exc
                        self._pending.clear()
                        self._lock.notify_all()
                        continue
                    if not self._outage:
                        self._outage = True
                        log.warning("MLflow at %s unreachable (%s): training goes on, its records are kept and resent",
                                    self.tracking_uri, exc)
                time.sleep(self.retry_interval)
                continue
            with self._lock:
                if self._outage:
                    log.warning("MLflow at %s reachable again after %.0fs: sent what was kept",
                                self.tracking_uri, time.monotonic() - self._sending_since)
                if self._pending and self._pending[0] is record:
                    self._pending.popleft()
                self._sending_since, self._outage = None, False
                self._lock.notify_all()

    def _check_reachable(self) -> None:
        """Ask a tracking server's /health first: MLflow's client would otherwise retry a refused
        connection itself for minutes (exponential back-off) before raising, hiding the outage."""
        if not self.tracking_uri.startswith(("http://", "https://")):
            return
        try:
            urllib.request.urlopen(f"{self.tracking_uri.rstrip('/')}/health", timeout=10).close()
        except urllib.error.HTTPError:
            return  # it answered
        except OSError as exc:
            raise ConnectionError(f"no answer from {self.tracking_uri}/health ({exc})") from exc

    def _send(self, record: tuple) -> None:
        import mlflow

        kind = record[0]
        if kind == "metrics":
            _, values, step, timestamp = record
            fresh = {k: v for k, v in values.items() if step not in self._logged.get(k, ())}
            if fresh:
                self.client.log_batch(
                    self.run_id, metrics=[mlflow.entities.Metric(k, v, timestamp, step) for k, v in fresh.items()]
                )
        elif kind == "image":
            self.client.log_image(self.run_id, record[1], record[2])
        elif kind == "text":
            self.client.log_text(self.run_id, record[1], record[2])
        elif kind == "resumed":
            self._resume(record[1])

    def _resume(self, step: int) -> None:
        """Note the restart in the run and remember the steps an earlier attempt already logged."""
        import mlflow

        logged = {
            key: {m.step for m in self.client.get_metric_history(self.run_id, key)}
            for key in self.client.get_run(self.run_id).data.metrics
        }
        restarts = max((m.value for m in self.client.get_metric_history(self.run_id, "restarts")), default=0) + 1
        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[
            mlflow.entities.Metric("restarts", restarts, now, step),
            mlflow.entities.Metric("resumed_from_step", step, now, step),
        ])
        self._logged = {k: v for k, v in logged.items() if k not in ("restarts", "resumed_from_step")}
        log.warning("restart %d of run %s from step %d; %d metrics already hold later steps", int(restarts),
                    self.run_id, step, sum(1 for steps in self._logged.values() if any(s > step for s in steps)))

    def _spool(self, records: list[tuple]) -> Path:
        """Write unsent records to `<spool_dir>/unsent_tracking.jsonl` (images as PNGs beside it)."""
        folder = self.spool_dir or Path(tempfile.mkdtemp(prefix="genops-unsent-"))
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / "unsent_tracking.jsonl"
        with path.open("a") as out:
            for record in records:
                kind = record[0]
                row: dict[str, Any] = {"run_id": self.run_id, "kind": kind}
                if kind == "metrics":
                    row.update(metrics=record[1], step=record[2], timestamp=record[3])
                elif kind == "image":
                    image_path = folder / record[2].replace("/", "__")
                    record[1].save(image_path)
                    row.update(artifact_file=record[2], local_file=str(image_path))
                elif kind == "text":
                    row.update(artifact_file=record[2], text=record[1])
                else:
                    row.update(step=record[1])
                out.write(json.dumps(row) + "\n")
        return path


def _retryable(exc: BaseException) -> bool:
    """Whether a failed MLflow call may succeed later: the server unreachable or failing (5xx, 429, a
    locked SQLite file), not a request MLflow rejected (4xx: a bad value, an unknown run)."""
    from mlflow.exceptions import MlflowException

    if isinstance(exc, MlflowException):
        status = exc.get_http_status_code()
        return status >= 500 or status == 429
    return True


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
