"""Table 5 at demo scale: MiniGPT-5 stage 1 with the full loss, without CFG, without L_CAP and without
L_LDM, each a nested MLflow run of the same budget under one parent that holds the comparison table.

'w/o CFG' trains without the zero-feature dropout and samples, as the paper says, with the generator's
empty-caption features as the negative (guidance stays on). The arms train without any evaluator (the
stage-1 recipe only trains); each trained arm is then scored here on the same held-out pairs with the
same sampling seeds (`minigpt5_evaluation.score_pairs`: CLIP-I, CLIP-T and FID in the evaluator CLIP's
space, the ceiling and the zero-voken floor), and the scores are logged to the arm's own run.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from training_jobs.launcher import launch

ARMS: dict[str, list[str]] = {
    "full": [],
    "no_cfg": ["model.cfg_dropout=0.0", "model.sampling.negative=empty_caption"],
    "no_l_cap": ["loss.cap=0.0"],
    "no_l_ldm": ["loss.ldm=0.0"],
}
COLUMNS = ("eval/clip_i", "eval/clip_t", "eval/floor_clip_i", "eval/floor_clip_t", "eval/ceiling_clip_t")


@dataclass
class AblationSummary:
    parent_run_id: str
    rows: list[dict] = field(default_factory=list)
    table_markdown: str = ""


def comparison_table(rows: list[dict]) -> str:
    head = "| arm | seed | " + " | ".join(c.removeprefix("eval/") for c in COLUMNS) + " |"
    lines = [head, "|" + "---|" * (len(COLUMNS) + 2)]
    for r in rows:
        lines.append(f"| {r['arm']} | {r['seed']} | " + " | ".join(
            f"{r[c]:.4f}" if isinstance(r.get(c), float) else "-" for c in COLUMNS) + " |")
    return "\n".join(lines)


def run_table5_ablation(profile: str, overrides: list[str], tracking_uri: str, evaluator: str,
                        prepared_root: Path, arms: list[str] | None = None, seeds: tuple[int, ...] = (0,),
                        eval_pairs: int = 32, say: Callable[[str], None] = print) -> AblationSummary:
    """Launch every arm x seed of stage 1 nested under one parent run, score each trained arm on the first
    `eval_pairs` held-out pairs of `prepared_root`'s cc3m test split with `evaluator` (a folder or registry
    URI of the evaluator CLIP), and log the table to the parent."""
    import mlflow

    from training_jobs.minigpt5_evaluation import score_pairs
    from training_jobs.model_inputs import resolve_model_path

    unknown = [a for a in arms or [] if a not in ARMS]
    if unknown:
        raise ValueError(f"unknown ablation arm(s) {unknown}; arms: {', '.join(ARMS)}")
    client = mlflow.MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name("genops-minigpt5") or client.get_experiment(
        client.create_experiment("genops-minigpt5"))
    parent = client.create_run(experiment.experiment_id, run_name=f"minigpt5-table5-{profile}-{time.strftime('%Y%m%d-%H%M%S')}",
                               tags={"ablation": "table5", "profile": profile})
    summary = AblationSummary(parent.info.run_id)
    client.log_param(parent.info.run_id, "overrides", json.dumps(overrides))
    client.log_param(parent.info.run_id, "evaluator", evaluator)
    try:
        evaluator_dir = resolve_model_path(evaluator, tracking_uri)
        for arm in arms or list(ARMS):
            for seed in seeds:
                result = launch("minigpt5_stage1", profile,
                                [*overrides, *ARMS[arm], f"train.seed={seed}", "tracking.registered_model=null"],
                                run_name=f"minigpt5-table5-{arm}-s{seed}-{parent.info.run_id[:6]}",
                                tracking_uri=tracking_uri, parent_run_id=parent.info.run_id, progress=say)
                scores = score_pairs(result.model_dir, evaluator_dir, Path(prepared_root), eval_pairs)
                client.log_batch(result.run_id, metrics=[mlflow.entities.Metric(k, float(v), 0, 0)
                                                         for k, v in scores.items()])
                row = {"arm": arm, "seed": seed, "run_id": result.run_id,
                       **{c: float(scores[c]) for c in COLUMNS if c in scores}}
                summary.rows.append(row)
                say(f"[table5] {arm} seed {seed}: " + ", ".join(f"{c}={row.get(c, float('nan')):.4f}" for c in COLUMNS[:2]))
        summary.table_markdown = comparison_table(summary.rows)
        client.log_text(parent.info.run_id, summary.table_markdown + "\n", "table5.md")
        client.log_text(parent.info.run_id, json.dumps(summary.rows, indent=2) + "\n", "table5.json")
        for row in summary.rows:
            for c in COLUMNS[:2]:
                if c in row:
                    client.log_metric(parent.info.run_id, f"{row['arm']}/s{row['seed']}/{c.removeprefix('eval/')}", row[c])
        client.set_terminated(parent.info.run_id, "FINISHED")
    except BaseException:
        client.set_terminated(parent.info.run_id, "FAILED")
        raise
    return summary
