"""ParaDiffusion assets: the three training stages (group "paradiffusion") and the Table 6 LoRA
ablation (group "ablations", its own job; not part of `genops demo`).

Each stage runs its recipe through the launcher, starting from the model the upstream asset's latest
materialization registered (stage 1 from the vae and llm_base assets, stage N from stage N-1), and
records the run, the registered version and the final metrics.
"""

from pathlib import Path

import dagster as dg

from orchestration.assets.base_models import RecipeRunConfig, _launch, _result, _upstream_model
from orchestration.resources import DvcResource, MlflowResource, RayResource, TrainingResource

GROUP = "paradiffusion"


@dg.asset(group_name=GROUP, kinds={"ray", "mlflow"}, deps=["vae", "llm_base", "prepared_laion_short", "prepared_paraimage_big"],
          description="ParaDiffusion stage 1: the UNet on short captions, frozen LLM encoder, progressive resolution.")
def paradiffusion_stage1(context: dg.AssetExecutionContext, config: RecipeRunConfig, dvc: DvcResource,
                         mlflow: MlflowResource, ray: RayResource, training: TrainingResource) -> dg.MaterializeResult:
    extra = [f"data.vae={_upstream_model(context, 'vae')}", f"data.llm={_upstream_model(context, 'llm_base')}"]
    return _result(_launch(context, "paradiffusion_stage1", extra, config, dvc, mlflow, ray, training))


@dg.asset(group_name=GROUP, kinds={"ray", "mlflow"}, deps=[paradiffusion_stage1, "prepared_paraimage_big"],
          description="ParaDiffusion stage 2: LoRA on the LLM + UNet on ParaImage-Big paragraphs.")
def paradiffusion_stage2(context: dg.AssetExecutionContext, config: RecipeRunConfig, dvc: DvcResource,
                         mlflow: MlflowResource, ray: RayResource, training: TrainingResource) -> dg.MaterializeResult:
    extra = [f"data.init={_upstream_model(context, 'paradiffusion_stage1')}"]
    return _result(_launch(context, "paradiffusion_stage2", extra, config, dvc, mlflow, ray, training))


@dg.asset(group_name=GROUP, kinds={"ray", "mlflow"}, deps=[paradiffusion_stage2, "prepared_paraimage_small"],
          description="ParaDiffusion stage 3: quality tuning on ParaImage-Small at a smaller learning rate.")
def paradiffusion_stage3(context: dg.AssetExecutionContext, config: RecipeRunConfig, dvc: DvcResource,
                         mlflow: MlflowResource, ray: RayResource, training: TrainingResource) -> dg.MaterializeResult:
    extra = [f"data.init={_upstream_model(context, 'paradiffusion_stage2')}"]
    return _result(_launch(context, "paradiffusion_stage3", extra, config, dvc, mlflow, ray, training))


class LoraAblationConfig(dg.Config):
    """Launchpad options of the LoRA ablation."""

    ranks: list[int] = [8, 16, 32, 64, 128]
    """Ranks swept at alpha 32."""
    alphas: list[int] = [16, 32, 64]
    """Alphas swept at rank 64."""
    base: bool = True
    """Include Table 6's 'Base' (stage 2 without LoRA)."""
    concurrency: int = 1
    """Grid points run at once (independent Ray jobs)."""
    overrides: list[str] = []
    """key=value overrides of every stage-2 job."""


@dg.asset(group_name="ablations", kinds={"ray", "mlflow"}, deps=[paradiffusion_stage1, "prepared_paraimage_big"],
          description="Table 6: stage 2 with each LoRA rank/alpha and without LoRA, nested MLflow runs under one parent.")
def paradiffusion_lora_ablation(context: dg.AssetExecutionContext, config: LoraAblationConfig, dvc: DvcResource,
                                mlflow: MlflowResource, training: TrainingResource) -> dg.MaterializeResult:
    from training_jobs.paradiffusion_ablation import GridPoint, run_lora_ablation

    grid = ([GridPoint(0, 32)] if config.base else []) + [GridPoint(r, 32) for r in config.ranks]
    grid = list(dict.fromkeys(grid + [GridPoint(64, a) for a in config.alphas]))
    root = Path(dvc.repo_root)
    overrides = [f"data.prepared_root={root / 'data' / 'prepared'}",
                 f"data.init={_upstream_model(context, 'paradiffusion_stage1')}",
                 *training.overrides_for("paradiffusion_stage2"), *config.overrides]
    if training.storage_path:
        overrides.append(f"run.storage_path={training.storage_path}")
    summary = run_lora_ablation(training.profile, grid, overrides, tracking_uri=mlflow.tracking_uri,
                                concurrency=config.concurrency, say=context.log.info)
    return dg.MaterializeResult(metadata={
        "mlflow_parent_run_id": summary.parent_run_id,
        "best_config": summary.best,
        "table": dg.MetadataValue.md(summary.table_markdown),
        "grid_points": len(summary.rows),
    })


paradiffusion_assets = [paradiffusion_stage1, paradiffusion_stage2, paradiffusion_stage3]
paradiffusion_ablation_assets = [paradiffusion_lora_ablation]
