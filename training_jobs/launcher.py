"""One way to run any recipe: a Ray Train `TorchTrainer` job, tracked in MLflow, registered on success.

    genops train <recipe> --profile {tiny,demo,paper} [key=value ...]

The config of a job is `configs/models/<model>/<profile>.yaml` (the `model` section; a named
variant of the profile's model, e.g. `paper-vicuna-7b.yaml`, with `model_variant`) merged with
`configs/<recipe>/<profile>.yaml`, then the command line's overrides. The launcher fills in the
lineage (dataset versions from dvc.lock, git commit, profile), opens the MLflow run, runs the
job (a local Ray on this machine's CPUs, or the cluster at RAY_ADDRESS), and then registers the
exported model and closes the run: FINISHED, or FAILED with the error. A job launched again under
the same `run.name` resumes from its latest checkpoint (Ray Train V2 has no `Trainer.restore`).
"""

from __future__ import annotations

import importlib
import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from components.config import apply_overrides, flatten, from_dict, load_values, merge_values, to_dict
from training_jobs.cluster import connect_ray
from training_jobs.lineage import dataset_versions
from training_jobs.tracking import ProgressWatcher, finish_run, git_commit, open_run, register_model
from training_jobs.worker import SCRATCH_DIR

log = logging.getLogger(__name__)

CONFIG_ROOT = Path(__file__).parent / "configs"
PROFILES = ("tiny", "demo", "paper")

RECIPES: dict[str, str] = {
    "vae": "training_jobs.recipes.vae",
    "clip_evaluator": "training_jobs.recipes.clip_evaluator",
    "sd_base": "training_jobs.recipes.sd_base",
    "sd_base_finetune": "training_jobs.recipes.sd_base_finetune",
    "llm_base": "training_jobs.recipes.llm_base",
    "clip_base": "training_jobs.recipes.clip_base",
    "minigpt5_stage1": "training_jobs.recipes.minigpt5_stage1",
    "minigpt5_stage2": "training_jobs.recipes.minigpt5_stage2",
    "vlad": "training_jobs.recipes.vlad",
    "paradiffusion_stage1": "training_jobs.recipes.paradiffusion_stage1",
    "paradiffusion_stage2": "training_jobs.recipes.paradiffusion_stage2",
    "paradiffusion_stage3": "training_jobs.recipes.paradiffusion_stage3",
}


@dataclass
class ScalingSection:
    num_workers: int = 1
    """Ray Train workers (0 = Ray Train's in-process local mode, for fast tests; no persistent checkpoints)."""
    use_gpu: bool = False
    """One GPU per worker. The launcher refuses (instead of hanging) when the cluster has too few GPUs."""
    cpus_per_worker: float = 1.0
    """CPUs reserved per worker."""

    def __post_init__(self) -> None:
        if self.num_workers < 0:
            raise ValueError(f"scaling.num_workers must be >= 0, got {self.num_workers}")


@dataclass
class RunSection:
    name: str | None = None
    """Ray Train run name; launching again with the same name resumes from the latest checkpoint."""
    storage_path: str | None = None
    """Where checkpoints and the exported model go (default: <project>/ray_results)."""
    max_failures: int = 0
    """Worker-group restarts Ray Train attempts (from the latest checkpoint) before failing the job."""

    def __post_init__(self) -> None:
        # The launcher resolves storage_path as a local Path: "s3://bucket/ray" would silently become a
        # folder named "s3:". Shared filesystems (NFS, a mounted bucket) work; object-store URIs do not yet.
        if self.storage_path and "://" in self.storage_path:
            raise ValueError(
                f"run.storage_path={self.storage_path!r} (or GENOPS_RAY_STORAGE) is a URI; give a folder on a "
                "filesystem every Ray node mounts (object-store checkpoint storage is not supported yet)"
            )


class GPUUnavailableError(RuntimeError):
    """The config asks for GPUs the Ray cluster does not have."""


class TrainingFailed(RuntimeError):
    """A training job failed; its MLflow run is marked FAILED with the error."""


@dataclass
class LaunchResult:
    recipe: str
    run_name: str
    run_id: str
    metrics: dict[str, Any]
    checkpoint_path: str | None
    model_dir: Path
    registered_model: str | None
    registered_version: str | None
    dataset_versions: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0


def project_root() -> Path:
    return Path(os.environ.get("GENOPS_ROOT") or Path(__file__).resolve().parents[1]).resolve()


def default_tracking_uri(root: Path) -> str:
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    store = root / "mlflow" / "store"
    store.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{store / 'mlflow.db'}"


def recipe_module(recipe: str) -> ModuleType:
    if recipe not in RECIPES:
        raise ValueError(f"unknown recipe {recipe!r}; recipes: {', '.join(RECIPES)}")
    return importlib.import_module(RECIPES[recipe])


def model_config_file(recipe: str, profile: str, model_variant: str | None = None) -> Path:
    """`configs/models/<model>/<profile>.yaml`, or `<profile>-<variant>.yaml` for a named model variant."""
    folder = CONFIG_ROOT / "models" / recipe_module(recipe).MODEL_CONFIG
    if model_variant is None:
        return folder / f"{profile}.yaml"
    path = folder / f"{profile}-{model_variant}.yaml"
    if not path.is_file():
        variants = sorted(p.stem.removeprefix(f"{profile}-") for p in folder.glob(f"{profile}-*.yaml"))
        raise ValueError(
            f"--model-variant {model_variant!r}: no {path.relative_to(CONFIG_ROOT.parent)}; variants of "
            f"{recipe} at --profile {profile}: {', '.join(variants) or 'none'}"
        )
    return path


def resolve_config(
    recipe: str, profile: str, overrides: list[str] | tuple[str, ...] = (), model_variant: str | None = None
) -> Any:
    """The typed config of a (recipe, profile[, model variant]) with overrides applied."""
    if profile not in PROFILES:
        raise ValueError(f"--profile {profile!r} is not one of {PROFILES}")
    module = recipe_module(recipe)
    recipe_yaml = CONFIG_ROOT / recipe / f"{profile}.yaml"
    values: dict[str, Any] = {}
    model_yaml = model_config_file(recipe, profile, model_variant)
    if model_yaml.is_file():
        values["model"] = load_values(model_yaml)
    merge_values(values, load_values(recipe_yaml))
    apply_overrides(values, list(overrides))
    return from_dict(module.Config, values, where=f"{recipe_yaml.relative_to(CONFIG_ROOT.parent)} + overrides")


def _anchor_data_paths(cfg: Any, root: Path) -> None:
    """Make the relative paths of the `data` section absolute against the project root.

    Ray Train workers run in their own working directory, so `data/tokenizer` would not resolve there
    (and transformers would then take it for a hub id). Only values naming something that exists
    under the root are touched: registry URIs, hub ids and absolute paths stay as they are.
    """
    for name, value in vars(cfg.data).items():
        if isinstance(value, str) and value and "://" not in value and not value.startswith("models:/"):
            candidate = root / value
            if not Path(value).is_absolute() and candidate.exists():
                setattr(cfg.data, name, str(candidate))


def _check_gpus(scaling: ScalingSection, resources: dict[str, float]) -> None:
    if not scaling.use_gpu:
        return
    have = resources.get("GPU", 0.0)
    if have < scaling.num_workers:
        raise GPUUnavailableError(
            f"the config asks for {scaling.num_workers} GPU worker(s) (scaling.use_gpu=true) but the Ray cluster "
            f"has {have:g} GPU(s); Ray would wait for them forever. Set scaling.use_gpu=false, lower "
            "scaling.num_workers, or point RAY_ADDRESS at a cluster with GPUs."
        )


def launch(
    recipe: str,
    profile: str = "tiny",
    overrides: list[str] | tuple[str, ...] = (),
    *,
    run_name: str | None = None,
    tracking_uri: str | None = None,
    versions: dict[str, str] | None = None,
    parent_run_id: str | None = None,
    progress: Callable[[str], None] = print,
    progress_every: float = 30.0,
    model_variant: str | None = None,
) -> LaunchResult:
    """Run `recipe` as a Ray Train job; see the module docstring for what happens around it."""
    started = time.monotonic()
    root = project_root()
    module = recipe_module(recipe)
    cfg = resolve_config(recipe, profile, overrides, model_variant)
    run_name = run_name or cfg.run.name or f"{recipe}-{profile}-{time.strftime('%Y%m%d-%H%M%S')}"
    _anchor_data_paths(cfg, root)
    storage = Path(cfg.run.storage_path or root / "ray_results").resolve()
    cfg.run.name, cfg.run.storage_path = run_name, str(storage)
    cfg.tracking.tracking_uri = tracking_uri or cfg.tracking.tracking_uri or default_tracking_uri(root)
    cfg.tracking.git_commit = git_commit(root)
    cfg.tracking.profile = profile
    cfg.tracking.parent_run_id = parent_run_id or cfg.tracking.parent_run_id
    cfg.tracking.dataset_versions = versions if versions is not None else dataset_versions(root, module.datasets(cfg))

    run_id = open_run(cfg.tracking, run_name, flatten(cfg), recipe)
    cfg.tracking.run_id = run_id
    progress(f"[{recipe}] MLflow run {run_id} in experiment {cfg.tracking.experiment!r}; Ray run {run_name!r} in {storage}")
    try:
        from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
        from ray.train.torch import TorchTrainer

        if cfg.scaling.num_workers > 0:
            resources = connect_ray()
            _check_gpus(cfg.scaling, resources)
        trainer = TorchTrainer(
            module.train,
            train_loop_config=to_dict(cfg),
            scaling_config=ScalingConfig(
                num_workers=cfg.scaling.num_workers,
                use_gpu=cfg.scaling.use_gpu,
                resources_per_worker={"CPU": cfg.scaling.cpus_per_worker} if cfg.scaling.num_workers else None,
            ),
            run_config=RunConfig(
                name=run_name,
                storage_path=str(storage),
                checkpoint_config=CheckpointConfig(num_to_keep=cfg.train.num_to_keep),
                failure_config=FailureConfig(max_failures=cfg.run.max_failures),
            ),
        )
        with ProgressWatcher(cfg.tracking.tracking_uri, run_id, cfg.train.steps, progress,
                             interval=progress_every, label=f"[{recipe}]"):
            result = trainer.fit()
        if result.checkpoint is None:
            raise TrainingFailed(f"job {run_name} reported no checkpoint: the recipe must report one at its end")
        model_dir = storage / run_name / "model"
        with result.checkpoint.as_directory() as checkpoint_dir:
            export = Path(checkpoint_dir) / "export"
            if not export.is_dir():
                raise TrainingFailed(f"the final checkpoint of {run_name} has no export/ folder (recipe {recipe})")
            tmp = model_dir.with_name("model.tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(export, tmp)
            shutil.rmtree(model_dir, ignore_errors=True)
            tmp.rename(model_dir)
        shutil.rmtree(storage / run_name / SCRATCH_DIR, ignore_errors=True)
        metrics = {k: v for k, v in (result.metrics or {}).items() if isinstance(v, (int, float))}
        version = register_model(cfg.tracking, run_id, model_dir, module.pyfunc_model(), metrics)
        finish_run(cfg.tracking, run_id)
    except BaseException as exc:
        try:
            finish_run(cfg.tracking, run_id, exc)
        except Exception as close_error:  # noqa: BLE001 - an unreachable tracking server must not hide why the job failed
            log.error("could not mark MLflow run %s FAILED (%s): it stays RUNNING until a relaunch", run_id, close_error)
        if isinstance(exc, (KeyboardInterrupt, GPUUnavailableError, TrainingFailed)):
            raise
        raise TrainingFailed(f"training job {run_name!r} (recipe {recipe}) failed; MLflow run {run_id} marked FAILED: {exc}") from exc
    seconds = time.monotonic() - started
    progress(
        f"[{recipe}] done in {seconds:.0f}s: model {model_dir}, registered "
        f"{cfg.tracking.registered_model or '-'} v{version or '-'}, MLflow run {run_id}"
    )
    return LaunchResult(
        recipe=recipe, run_name=run_name, run_id=run_id, metrics=metrics,
        checkpoint_path=str(result.checkpoint.path) if cfg.scaling.num_workers else None, model_dir=model_dir,
        registered_model=cfg.tracking.registered_model, registered_version=version,
        dataset_versions=dict(cfg.tracking.dataset_versions), seconds=seconds,
    )
