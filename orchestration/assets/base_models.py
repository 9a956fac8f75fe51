"""Base-model assets: the shared VAE, the evaluator CLIP, the SD-style base model, and the language and
vision-language backbones the families adapt (`llm_base`, `clip_base`).

Each asset runs its recipe through the launcher (a Ray Train job tracked in MLflow), passing the
dataset versions of its upstream data assets for lineage, and records the run, the registered
version and the final metrics. A failed job fails the asset with the job's error (its MLflow run is
already marked FAILED by the launcher).
"""

import os
from pathlib import Path

import dagster as dg

from orchestration.freshness import recipe_code_version
from orchestration.resources import DvcResource, MlflowResource, RayResource, TrainingResource
from training_jobs.launcher import LaunchResult, launch, recipe_module, resolve_config
from training_jobs.lineage import dataset_versions
from training_jobs.run_identity import training_run_name

GROUP = "base_models"
# The text corpora llm_base reads (its recipe's default data.datasets; a test keeps the two equal).
LLM_CORPORA = ("laion_short", "cc3m", "paraimage_big", "paraimage_small", "vist", "mmdialog")
# A crashed worker, a busy store: retry the step; the job resumes from its last checkpoint (same run name).
TRAINING_RETRY = dg.RetryPolicy(max_retries=1, delay=5)
# The profile the code versions are computed for: the one local_resources() trains with.
PROFILE = os.environ.get("GENOPS_PROFILE", "demo")


class RecipeRunConfig(dg.Config):
    """Launchpad options of a training asset."""

    overrides: list[str] = []
    """key=value overrides of the recipe config (e.g. train.steps=100)."""


def _launch(
    context: dg.AssetExecutionContext,
    recipe: str,
    extra: list[str],
    config: RecipeRunConfig,
    dvc: DvcResource,
    mlflow: MlflowResource,
    ray: RayResource,
    training: TrainingResource,
) -> LaunchResult:
    root = Path(dvc.repo_root)
    if ray.address:
        os.environ["RAY_ADDRESS"] = ray.address
    overrides = [
        f"data.prepared_root={root / 'data' / 'prepared'}",
        *extra,
        *training.overrides_for(recipe),
        *config.overrides,
    ]
    if training.storage_path:
        overrides.append(f"run.storage_path={training.storage_path}")
    cfg = resolve_config(recipe, training.profile, overrides)
    versions = dataset_versions(root, recipe_module(recipe).datasets(cfg))
    # Keyed on what the training is (config + data versions): a retried Dagster run resumes the Ray job.
    run_name = training_run_name(recipe, training.profile, cfg, versions, mlflow.tracking_uri)
    return launch(recipe, training.profile, overrides, run_name=run_name, tracking_uri=mlflow.tracking_uri,
                  versions=versions, progress=context.log.info)


def _result(result: LaunchResult) -> dg.MaterializeResult:
    uri = f"models:/{result.registered_model}/{result.registered_version}" if result.registered_version else None
    return dg.MaterializeResult(
        metadata={
            "mlflow_run_id": result.run_id,
            "registered_model_uri": uri or "",
            "model_dir": str(result.model_dir),
            "ray_run_name": result.run_name,
            "dataset_versions": dg.MetadataValue.json(result.dataset_versions),
            "final_metrics": dg.MetadataValue.json(result.metrics),
            "train_seconds": round(result.seconds, 1),
        },
        data_version=dg.DataVersion(result.run_id),
    )


def _upstream_model(context: dg.AssetExecutionContext, key: str) -> str:
    """The registry URI (or folder) the latest materialization of an upstream model asset recorded."""
    event = context.instance.get_latest_materialization_event(dg.AssetKey(key))
    if event is None:
        raise dg.Failure(f"asset {key} has never been materialized: materialize it first")
    meta = event.asset_materialization.metadata
    uri = meta["registered_model_uri"].value
    return uri or meta["model_dir"].value


@dg.asset(group_name=GROUP, code_version=recipe_code_version("vae", PROFILE), retry_policy=TRAINING_RETRY,
          kinds={"ray", "mlflow"}, deps=["prepared_laion_short", "prepared_paraimage_big",
                                                           "prepared_paraimage_small", "prepared_cc3m"],
          description="Shared latent autoencoder (AutoencoderKL): reconstruction + KL, scaling factor from data.")
def vae(context: dg.AssetExecutionContext, config: RecipeRunConfig, dvc: DvcResource, mlflow: MlflowResource,
        ray: RayResource, training: TrainingResource) -> dg.MaterializeResult:
    result = _launch(context, "vae", [], config, dvc, mlflow, ray, training)
    return _result(result)


@dg.asset(group_name=GROUP, code_version=recipe_code_version("clip_evaluator", PROFILE), retry_policy=TRAINING_RETRY,
          kinds={"ray", "mlflow"}, deps=["prepared_laion_short", "prepared_cc3m", "tokenizer"],
          description="Evaluator CLIP trained contrastively on the held-out split (metrics only).")
def clip_evaluator(context: dg.AssetExecutionContext, config: RecipeRunConfig, dvc: DvcResource,
                   mlflow: MlflowResource, ray: RayResource, training: TrainingResource) -> dg.MaterializeResult:
    tokenizer = Path(dvc.repo_root) / "data" / "tokenizer"
    result = _launch(context, "clip_evaluator", [f"data.tokenizer={tokenizer}"], config, dvc, mlflow, ray, training)
    return _result(result)


@dg.asset(group_name=GROUP, code_version=recipe_code_version("sd_base", PROFILE), retry_policy=TRAINING_RETRY,
          kinds={"ray", "mlflow"}, deps=[vae, "prepared_laion_short", "tokenizer"],
          description="SD-style text-to-image base (CLIP text encoder + UNet) in the VAE's latent space.")
def sd_base(context: dg.AssetExecutionContext, config: RecipeRunConfig, dvc: DvcResource, mlflow: MlflowResource,
            ray: RayResource, training: TrainingResource) -> dg.MaterializeResult:
    extra = [f"data.tokenizer={Path(dvc.repo_root) / 'data' / 'tokenizer'}", f"data.vae={_upstream_model(context, 'vae')}"]
    result = _launch(context, "sd_base", extra, config, dvc, mlflow, ray, training)
    return _result(result)


@dg.asset(group_name=GROUP, code_version=recipe_code_version("llm_base", PROFILE), retry_policy=TRAINING_RETRY,
          kinds={"ray", "mlflow"},
          deps=[*(f"prepared_{name}" for name in LLM_CORPORA), "tokenizer"],
          description="Llama-architecture causal LM on all of the world's text (ParaDiffusion's encoder, MiniGPT-5's LLM).")
def llm_base(context: dg.AssetExecutionContext, config: RecipeRunConfig, dvc: DvcResource, mlflow: MlflowResource,
             ray: RayResource, training: TrainingResource) -> dg.MaterializeResult:
    tokenizer = Path(dvc.repo_root) / "data" / "tokenizer"
    result = _launch(context, "llm_base", [f"data.tokenizer={tokenizer}"], config, dvc, mlflow, ray, training)
    return _result(result)


@dg.asset(group_name=GROUP, code_version=recipe_code_version("clip_base", PROFILE), retry_policy=TRAINING_RETRY,
          kinds={"ray", "mlflow"}, deps=["prepared_laion_short", "prepared_cc3m", "tokenizer"],
          description="Base CLIP dual encoder on the train split (VLAD's LVLM, MiniGPT-5's visual encoder); not the evaluator.")
def clip_base(context: dg.AssetExecutionContext, config: RecipeRunConfig, dvc: DvcResource, mlflow: MlflowResource,
              ray: RayResource, training: TrainingResource) -> dg.MaterializeResult:
    tokenizer = Path(dvc.repo_root) / "data" / "tokenizer"
    result = _launch(context, "clip_base", [f"data.tokenizer={tokenizer}"], config, dvc, mlflow, ray, training)
    return _result(result)


base_model_assets = [vae, clip_evaluator, sd_base, llm_base, clip_base]
