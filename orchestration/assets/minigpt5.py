"""MiniGPT-5 assets: the two training stages (group "minigpt5") and the Table 5 ablation (group
"ablations", its own job; not part of `genops demo`).

Stage 1 starts from the base models the upstream assets registered (llm_base as the LLM, clip_base's
image tower, sd_base with its vae/ as the frozen generator); stage 2 from stage 1's registered weights.
The stages only train: their measurements are the evaluation group's `minigpt5_stage1_evaluation` and
`minigpt5_stage2_evaluation`. The Table 5 ablation is a comparison: it trains its arms the same way and
scores them with the evaluator CLIP (`evaluator_model`, the evaluation wiring's hand-out).
"""

from pathlib import Path

import dagster as dg

from orchestration.assets.base_models import RecipeRunConfig, _launch, _result, _upstream_model
from orchestration.assets.evaluation import evaluator_model
from orchestration.resources import DvcResource, MlflowResource, RayResource, TrainingResource

GROUP = "minigpt5"
BASES = ["sd_base", "llm_base", "clip_base", "vae"]


def _base_overrides(context: dg.AssetExecutionContext) -> list[str]:
    return [f"data.llm={_upstream_model(context, 'llm_base')}",
            f"data.visual_encoder={_upstream_model(context, 'clip_base')}",
            f"data.generator={_upstream_model(context, 'sd_base')}"]


@dg.asset(group_name=GROUP, kinds={"ray", "mlflow"}, deps=[*BASES, "prepared_cc3m"],
          description="MiniGPT-5 stage 1: vokens, feature mapper and visual pooler on CC3M-format pairs (frozen LLM and UNet).")
def minigpt5_stage1(context: dg.AssetExecutionContext, config: RecipeRunConfig, dvc: DvcResource,
                    mlflow: MlflowResource, ray: RayResource, training: TrainingResource) -> dg.MaterializeResult:
    return _result(_launch(context, "minigpt5_stage1", _base_overrides(context), config, dvc, mlflow, ray, training))


@dg.asset(group_name=GROUP, kinds={"ray", "mlflow"}, deps=[minigpt5_stage1, "prepared_vist", "prepared_mmdialog"],
          description="MiniGPT-5 stage 2: LoRA + voken rows + enc-dec on VIST/MMDialog stories, from stage 1's weights.")
def minigpt5_stage2(context: dg.AssetExecutionContext, config: RecipeRunConfig, dvc: DvcResource,
                    mlflow: MlflowResource, ray: RayResource, training: TrainingResource) -> dg.MaterializeResult:
    extra = [f"data.init={_upstream_model(context, 'minigpt5_stage1')}"]
    return _result(_launch(context, "minigpt5_stage2", extra, config, dvc, mlflow, ray, training))


class Table5Config(dg.Config):
    """Launchpad options of the Table 5 ablation."""

    arms: list[str] = ["full", "no_cfg", "no_l_cap", "no_l_ldm"]
    """Arms: full loss, without CFG dropout, without L_CAP, without L_LDM."""
    seeds: list[int] = [0]
    """Training seeds per arm (two where the budget allows: a direction that flips is not reproduced)."""
    overrides: list[str] = []
    """key=value overrides of every arm (the same budget for all, e.g. train.steps=200)."""
    eval_pairs: int = 32
    """Held-out CC3M-format test pairs every arm is scored on."""


@dg.asset(group_name="ablations", kinds={"ray", "mlflow"}, deps=[*BASES, "clip_evaluator", "prepared_cc3m"],
          description="Table 5: MiniGPT-5 stage 1 full / w/o CFG / w/o L_CAP / w/o L_LDM, nested MLflow runs + table.")
def minigpt5_table5_ablation(context: dg.AssetExecutionContext, config: Table5Config, dvc: DvcResource,
                             mlflow: MlflowResource, training: TrainingResource) -> dg.MaterializeResult:
    from training_jobs.minigpt5_ablation import run_table5_ablation

    root = Path(dvc.repo_root)
    overrides = [f"data.prepared_root={root / 'data' / 'prepared'}", *_base_overrides(context),
                 *training.overrides_for("minigpt5_stage1"), *config.overrides]
    if training.storage_path:
        overrides.append(f"run.storage_path={training.storage_path}")
    summary = run_table5_ablation(training.profile, overrides, mlflow.tracking_uri, evaluator_model(context),
                                  root / "data" / "prepared", arms=list(config.arms), seeds=tuple(config.seeds),
                                  eval_pairs=config.eval_pairs, say=context.log.info)
    return dg.MaterializeResult(metadata={"mlflow_parent_run_id": summary.parent_run_id,
                                          "table": dg.MetadataValue.md(summary.table_markdown),
                                          "arms": len(summary.rows)})


minigpt5_assets = [minigpt5_stage1, minigpt5_stage2]
minigpt5_ablation_assets = [minigpt5_table5_ablation]
