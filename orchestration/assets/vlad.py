"""VLAD assets: the model (group "vlad") and its Table II ablation (group "ablations", not part of the demo).

`vlad` runs the recipe on the registered VAE and clip_base (the LVLM) over the prepared MARIO-format and
ParaImage-format data. `vlad_ablation` trains the full model and both ablations with the same budget as
nested MLflow runs under one parent, evaluates each on the same MARIO-Eval-format prompts
(`training_jobs/vlad_evaluation.py`) and logs the comparison table to the parent run.
"""

from pathlib import Path

import dagster as dg

from orchestration.assets.base_models import RecipeRunConfig, _launch, _result, _upstream_model
from orchestration.assets.evaluation import evaluator_model
from orchestration.resources import DvcResource, MlflowResource, RayResource, TrainingResource
from training_jobs.launcher import launch, recipe_module, resolve_config
from training_jobs.lineage import dataset_versions

GROUP = "vlad"
DATA_DEPS = ["prepared_mario_laion", "prepared_paraimage_small"]
# Table II's rows: the switches that remove exactly one path each
ABLATIONS = {
    "VLAD (full)": [],
    "VLAD w/o CCM": ["model.ccm.enabled=false"],
    "VLAD w/o hierarchical guidance": ["model.layout.enabled=false"],
}


def _inputs(context: dg.AssetExecutionContext) -> list[str]:
    return [f"data.lvlm={_upstream_model(context, 'clip_base')}", f"data.vae={_upstream_model(context, 'vae')}"]


@dg.asset(group_name=GROUP, kinds={"ray", "mlflow"}, deps=["vae", "clip_base", *DATA_DEPS],
          description="VLAD: clip_base + LoRA aligned contrastively, CCM, layout generator and layout-guided VFE.")
def vlad(context: dg.AssetExecutionContext, config: RecipeRunConfig, dvc: DvcResource, mlflow: MlflowResource,
         ray: RayResource, training: TrainingResource) -> dg.MaterializeResult:
    return _result(_launch(context, "vlad", _inputs(context), config, dvc, mlflow, ray, training))


class AblationConfig(dg.Config):
    """Launchpad options of the ablation."""

    overrides: list[str] = []  # noqa: RUF012 (dagster Config fields are pydantic fields)
    """key=value overrides applied to every variant (the same budget for all)."""
    eval_prompts: int = 32
    """MARIO-Eval-format prompts each variant is scored on."""
    eval_steps: int = 25
    """Sampling steps per image."""


@dg.asset(group_name="ablations", kinds={"ray", "mlflow"}, deps=["vae", "clip_base", "clip_evaluator", *DATA_DEPS,
                                                                 "prepared_mario_eval"],
          description="VLAD Table II: full vs w/o CCM vs w/o hierarchical guidance, nested MLflow runs, comparison table.")
def vlad_ablation(context: dg.AssetExecutionContext, config: AblationConfig, dvc: DvcResource, mlflow: MlflowResource,
                  ray: RayResource, training: TrainingResource) -> dg.MaterializeResult:
    import mlflow as mlflow_lib

    from training_jobs.vlad_evaluation import evaluate_rows, log_table

    root = Path(dvc.repo_root)
    prepared = root / "data" / "prepared"
    common = [f"data.prepared_root={prepared}", *_inputs(context), *training.overrides_for("vlad"), *config.overrides]
    if training.storage_path:
        common.append(f"run.storage_path={training.storage_path}")
    cfg = resolve_config("vlad", training.profile, common)
    versions = dataset_versions(root, recipe_module("vlad").datasets(cfg))
    client = mlflow_lib.MlflowClient(mlflow.tracking_uri)
    experiment = client.get_experiment_by_name(cfg.tracking.experiment)
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(cfg.tracking.experiment)
    parent = client.create_run(experiment_id, run_name=f"vlad-ablation-{context.run.run_id[:8]}",
                               tags={"genops.kind": "ablation", "genops.profile": training.profile})
    parent_id = parent.info.run_id
    try:
        rows, children = {}, {}
        for label, switch in ABLATIONS.items():
            slug = label.split("(")[0].strip().replace(" ", "-").replace("/", "").lower()
            result = launch("vlad", training.profile, [*common, *switch, "tracking.registered_model=null"],
                            run_name=f"{slug}-{context.run.run_id[:8]}", tracking_uri=mlflow.tracking_uri,
                            versions=versions, parent_run_id=parent_id, progress=context.log.info)
            rows[label] = ("vlad", str(result.model_dir))
            children[label] = result.run_id
        metrics = evaluate_rows(rows, prepared, evaluator_model(context), mlflow.tracking_uri,
                                config.eval_prompts, config.eval_steps, cfg.model.diffusion.guidance_scale,
                                progress=context.log.info)
        for label, run_id in children.items():
            client.log_batch(run_id, metrics=[mlflow_lib.entities.Metric(f"eval/{k}", v, 0, 0)
                                              for k, v in metrics[label].items()])
        table = log_table(client, parent_id, metrics, "VLAD Table II (same budget per variant)", "vlad_table2")
        client.set_terminated(parent_id, "FINISHED")
    except BaseException:
        client.set_terminated(parent_id, "FAILED")
        raise
    return dg.MaterializeResult(metadata={"mlflow_parent_run_id": parent_id, "table": dg.MetadataValue.md(table),
                                          "metrics": dg.MetadataValue.json(metrics)})


vlad_assets = [vlad]
vlad_ablation_assets = [vlad_ablation]
