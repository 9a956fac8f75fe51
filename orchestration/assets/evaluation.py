"""The `evaluation` group: per registered model a benchmark set, an evaluation, its gates and a promotion.

Built from the evaluation specs of `training_jobs.evaluation` (one per model family), for family F:

    F_benchmark   the benchmark set: the first N items of the family's held-out split, one JSONL file
                  whose md5 (what `dvc add` records) is the asset's data version
    F_evaluation  downstream of F's training asset: fixed-seed samples scored with the family's
                  metrics, logged to the model version's MLflow run; headline numbers as metadata
    gate checks   one blocking asset check per hard gate of mlflow/policies/<model>.yaml; a failing
                  gate records the rejection (version tags, history) and stops the promotion
    F_promotion   applies the policy: champion, or rejected with the reason

Families join by registering an `EvaluationSpec` in a module imported below; every model the main
graph registers has one (tests/orchestration/test_evaluation_graph.py keeps it so).
"""

from pathlib import Path

import dagster as dg

from orchestration.resources import DvcResource, MlflowResource, TrainingResource
from training_jobs import (  # noqa: F401  (each module registers its families' evaluation specs)
    base_model_evaluation,
    minigpt5_evaluation,
    paradiffusion_evaluation,
    sd_base_evaluation,
    vlad_evaluation,
)
from training_jobs.evaluation import (
    EVALUATIONS,
    EvaluationSpec,
    benchmark_facts,
    build_benchmark,
    run_evaluation,
    scorer_inputs,
)
from training_jobs.lineage import dataset_versions
from training_jobs.registry import load_policy, policy_path, promote

GROUP = "evaluation"


class EvaluationRunConfig(dg.Config):
    """Launchpad options of an evaluation asset."""

    seed: int = 0
    """Sampling seed of the benchmark's samples (the same for every version, so versions compare pairwise)."""
    steps: int | None = None
    """Sampler steps (None: the spec's steps for the profile, else the model's own default)."""
    guidance_scale: float | None = None
    """Classifier-free guidance (None: the model's own default)."""
    reference_images: int = 100
    """Ground-truth images of the reference split in the FID reference set."""


def _latest_metadata(context, key: str) -> dict:
    event = context.instance.get_latest_materialization_event(dg.AssetKey(key))
    if event is None:
        raise dg.Failure(f"asset {key} has never been materialized: materialize it first")
    return {k: v.value for k, v in event.asset_materialization.metadata.items()}


def _model_uri(context, asset: str, folder_ok: bool = False) -> str:
    """The registry URI the latest materialization of `asset` recorded (or, if `folder_ok`, its model folder)."""
    meta = _latest_metadata(context, asset)
    uri = meta.get("registered_model_uri")
    if uri:
        return uri
    if folder_ok and meta.get("model_dir"):
        return meta["model_dir"]
    raise dg.Failure(f"asset {asset} registered no model version (its run set no registered_model)")


def evaluator_model(context) -> str:
    """The evaluator CLIP for this group's evaluations and for the comparison assets outside it (the
    ablations' tables, which train their arms without it and then score them): the registry URI, or
    folder, of clip_evaluator's latest materialization. It goes to the scorers only, never into a recipe's config (tests/training_jobs/
    test_evaluator_isolation.py)."""
    return _model_uri(context, "clip_evaluator", folder_ok=True)


def evaluation_assets(spec: EvaluationSpec, policy_dir: Path | None = None) -> list:
    """The benchmark, evaluation, gate checks and promotion of one family (policy from `policy_dir`,
    default mlflow/policies/)."""
    family = spec.family
    benchmark_key, evaluation_key = f"{family}_benchmark", f"{family}_evaluation"
    policy_file = policy_path(spec.registered_model, policy_dir)
    policy = load_policy(policy_file)

    @dg.asset(name=benchmark_key, group_name=GROUP, kinds={"dvc"}, deps=[f"prepared_{spec.benchmark_dataset}"],
              description=f"Benchmark set of {family}: {spec.benchmark_dataset} {spec.benchmark_split} split, "
                          "one JSONL file versioned by its md5.")
    def benchmark(context: dg.AssetExecutionContext, dvc: DvcResource, training: TrainingResource) -> dg.MaterializeResult:
        root = Path(dvc.repo_root)
        path, md5, count = build_benchmark(spec, root / "data" / "prepared", root / "data" / "benchmarks" / f"{family}.jsonl",
                                           training.profile)
        source = dataset_versions(root, [spec.benchmark_dataset])[spec.benchmark_dataset]
        context.log.info(f"{family} benchmark: {count} items of {spec.benchmark_dataset}/{spec.benchmark_split}, md5 {md5}")
        return dg.MaterializeResult(
            metadata={"path": str(path), "md5": md5, "items": count, "source_dataset": spec.benchmark_dataset,
                      "source_split": spec.benchmark_split, "source_dataset_version": source},
            data_version=dg.DataVersion(md5),
        )

    deps = list(dict.fromkeys([spec.training_asset, benchmark_key, *(["clip_evaluator"] if spec.uses_clip_evaluator else [])]))

    @dg.asset(name=evaluation_key, group_name=GROUP, kinds={"mlflow"}, deps=deps,
              description=f"Scores the latest {spec.registered_model} version on the {family} benchmark "
                          "(fixed seeds) and logs samples, tables and metrics to its MLflow run.")
    def evaluation(context: dg.AssetExecutionContext, config: EvaluationRunConfig, dvc: DvcResource,
                   mlflow: MlflowResource, training: TrainingResource) -> dg.MaterializeResult:
        from training_jobs.model_inputs import resolve_model_path

        root = Path(dvc.repo_root)
        bench = _latest_metadata(context, benchmark_key)
        clip_dir = resolve_model_path(evaluator_model(context), mlflow.tracking_uri) if spec.uses_clip_evaluator else None
        record = run_evaluation(
            spec, _model_uri(context, spec.training_asset), mlflow.tracking_uri, Path(bench["path"]),
            benchmark_facts(spec, bench["source_dataset_version"]),
            scorer_inputs(spec, root / "data" / "prepared", training.profile, clip_dir, config.seed, config.steps,
                          config.guidance_scale, config.reference_images),
            say=context.log.info,
        )
        return dg.MaterializeResult(
            metadata={
                "registered_model": record.model,
                "version": record.version,
                "mlflow_run_id": record.run_id,
                "benchmark_md5": record.benchmark_md5,
                **{k: dg.MetadataValue.float(float(v)) for k, v in record.metrics.items()},
                "comparison": dg.MetadataValue.md(record.table_markdown),
                "eval_seconds": round(record.seconds, 1),
            },
            data_version=dg.DataVersion(f"{record.model}-v{record.version}-{record.benchmark_md5[:12]}"),
        )

    checks = [_gate_check(spec, evaluation_key, gate, policy_file) for gate in policy.gates]

    @dg.asset(name=f"{family}_promotion", group_name=GROUP, kinds={"mlflow"}, deps=[evaluation_key],
              description=f"Applies {policy_file.name}: the evaluated version becomes @champion or is tagged with why not.")
    def promotion(context: dg.AssetExecutionContext, mlflow: MlflowResource) -> dg.MaterializeResult:
        evaluated = _latest_metadata(context, evaluation_key)
        decision = promote(mlflow.tracking_uri, load_policy(policy_file), str(evaluated["version"]))
        context.log.info(f"{decision.model} v{decision.version} {decision.action}: {decision.reason}")
        return dg.MaterializeResult(metadata={
            "decision": decision.action, "reason": decision.reason, "version": decision.version,
            "champion": decision.champion_after or "", "champion_before": decision.champion_before or "",
            "champion_uri": f"models:/{decision.model}@champion" if decision.champion_after else "",
        })

    return [benchmark, evaluation, promotion, *checks]


def _gate_check(spec: EvaluationSpec, evaluation_key: str, gate, policy_file: Path):
    @dg.asset_check(asset=evaluation_key, name=f"gate_{gate.metric}", blocking=True,
                    description=f"Hard gate of {policy_file.name}: {gate.metric}"
                                + (f" >= {gate.min}" if gate.min is not None else "")
                                + (f" <= {gate.max}" if gate.max is not None else "")
                                + (" (when present)" if gate.when_present else ""))
    def check(context: dg.AssetCheckExecutionContext, mlflow: MlflowResource) -> dg.AssetCheckResult:
        evaluated = _latest_metadata(context, evaluation_key)
        metrics = {k: float(v) for k, v in evaluated.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        reason = gate.check(metrics)
        if reason is not None:
            # Record the rejection on the version (tags + history) before the promotion is blocked.
            promote(mlflow.tracking_uri, load_policy(policy_file), str(evaluated["version"]), metrics)
        return dg.AssetCheckResult(
            passed=reason is None,
            severity=dg.AssetCheckSeverity.ERROR,
            description=reason or "passes",
            metadata={"value": metrics.get(gate.metric, float("nan")), "version": str(evaluated["version"])},
        )

    return check


evaluation_group_assets = [item for spec in EVALUATIONS.values() for item in evaluation_assets(spec)]
