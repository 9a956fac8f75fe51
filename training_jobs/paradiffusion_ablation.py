"""The LoRA rank/alpha ablation of ParaDiffusion stage 2 (Table 6): one nested MLflow run per grid point.

    genops paradiffusion ablate-lora --profile demo

"Base" (stage 2 without LoRA: the LLM stays frozen, only the UNet trains) plus r in {8, 16, 32, 64,
128} at alpha 32 and alpha in {16, 32, 64} at r 64. Every point is its own stage-2 Ray job from the
same stage-1 model with the same data, steps, seeds and evaluation paragraphs; only the adapter
differs. Points run concurrently (`concurrency` jobs at a time) when the cluster has room. Each child
run logs its trainable parameters (count and % of the text encoder, PEFT's count), its evaluation
metrics and its sample grid; the parent logs the comparison table (markdown + CSV), a plot of the
metric against rank, and the best configuration.
"""

from __future__ import annotations

import csv
import io
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from training_jobs.launcher import LaunchResult, default_tracking_uri, launch, project_root
from training_jobs.tracking import artifact_location

EXPERIMENT = "genops-paradiffusion"
METRIC = "eval/all_precision"
COLUMNS = ("eval/all_precision", "eval/object_precision", "eval/attribute_precision", "eval/location_precision",
           "eval/colour_placement_precision", "val/mse")


@dataclass(frozen=True)
class GridPoint:
    rank: int
    """LoRA rank (0 = Table 6's "Base": no adapter)."""
    alpha: int
    """LoRA alpha."""

    @property
    def name(self) -> str:
        return "base" if self.rank == 0 else f"r{self.rank}_a{self.alpha}"


def table6_grid() -> list[GridPoint]:
    """Base, r in {8..128} at alpha 32, alpha in {16, 64} at r 64 (r 64 / alpha 32 is already in the rank sweep)."""
    points = [GridPoint(0, 32), *(GridPoint(r, 32) for r in (8, 16, 32, 64, 128)), *(GridPoint(64, a) for a in (16, 32, 64))]
    return list(dict.fromkeys(points))


@dataclass
class AblationSummary:
    parent_run_id: str
    rows: list[dict] = field(default_factory=list)
    best: str = ""
    table_markdown: str = ""


def _markdown(rows: list[dict]) -> str:
    head = ["config", "rank", "alpha", "trainable", "% of text encoder", *COLUMNS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        values = [row["config"], str(row["rank"]), str(row["alpha"]), f"{int(row['trainable']):,}", f"{row['percent']:.2f}%"]
        values += [f"{row[c]:.3f}" if isinstance(row.get(c), float) else "-" for c in COLUMNS]
        lines.append("| " + " | ".join(values) + " |")
    return "\n".join(lines) + "\n"


def _plot(rows: list[dict], metric: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(5, 3.2))
    ranked = sorted((r for r in rows if r["rank"] and r["alpha"] == 32 and metric in r), key=lambda r: r["rank"])
    axis.plot([r["rank"] for r in ranked], [r[metric] for r in ranked], marker="o", label="LoRA, alpha 32")
    for r in rows:
        if r["rank"] and r["alpha"] != 32 and metric in r:
            axis.scatter([r["rank"]], [r[metric]], marker="s", label=f"r {r['rank']}, alpha {r['alpha']}")
    base = [r for r in rows if r["rank"] == 0 and metric in r]
    if base:
        axis.axhline(base[0][metric], color="grey", linestyle="--", label="Base (no LoRA)")
    axis.set_xscale("log", base=2)
    axis.set_xlabel("LoRA rank r")
    axis.set_ylabel(metric)
    axis.legend(fontsize=7)
    figure.tight_layout()
    return figure


def run_lora_ablation(
    profile: str,
    grid: Sequence[GridPoint],
    overrides: Sequence[str] = (),
    *,
    tracking_uri: str | None = None,
    output_dir: Path | None = None,
    concurrency: int = 1,
    metric: str = METRIC,
    say: Callable[[str], None] = print,
    launcher: Callable[..., LaunchResult] = launch,
) -> AblationSummary:
    """Run every grid point as a stage-2 job nested under one parent run; log and return the comparison."""
    import mlflow

    if not grid:
        raise ValueError("the ablation grid is empty")
    if concurrency < 1:
        raise ValueError(f"--concurrency must be >= 1, got {concurrency}")
    uri = tracking_uri or default_tracking_uri(project_root())
    client = mlflow.MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(
        EXPERIMENT, artifact_location=artifact_location(uri))
    stamp = time.strftime("%Y%m%d-%H%M%S")
    parent = client.create_run(experiment_id, run_name=f"paradiffusion-lora-ablation-{profile}-{stamp}",
                               tags={"genops.recipe": "paradiffusion_lora_ablation", "profile": profile})
    parent_id = parent.info.run_id
    client.log_param(parent_id, "grid", ",".join(p.name for p in grid))
    client.log_param(parent_id, "overrides", " ".join(overrides)[:6000])
    client.log_param(parent_id, "metric", metric)

    def one(point: GridPoint) -> dict:
        say(f"[ablate-lora] {point.name}: stage 2 with rank {point.rank}, alpha {point.alpha}")
        result = launcher("paradiffusion_stage2", profile,
                          [*overrides, f"model.rank={point.rank}", f"model.alpha={point.alpha}", "tracking.registered_model="],
                          run_name=f"paradiffusion_stage2-ablation-{point.name}-{stamp}", tracking_uri=uri,
                          parent_run_id=parent_id, progress=say)
        client.set_tag(result.run_id, "genops.grid_point", point.name)
        row = {"config": point.name, "rank": point.rank, "alpha": point.alpha, "run_id": result.run_id,
               "trainable": result.metrics.get("lora/trainable_parameters", 0.0),
               "percent": result.metrics.get("lora/trainable_percent", 0.0)}
        row.update({c: float(result.metrics[c]) for c in COLUMNS if c in result.metrics})
        return row

    try:
        with ThreadPoolExecutor(max_workers=concurrency) as pool:
            rows = list(pool.map(one, grid))
        table = _markdown(rows)
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=["config", "rank", "alpha", "trainable", "percent", *COLUMNS, "run_id"])
        writer.writeheader()
        writer.writerows(rows)
        client.log_text(parent_id, table, "ablation/lora_table.md")
        client.log_text(parent_id, buffer.getvalue(), "ablation/lora_table.csv")
        client.log_figure(parent_id, _plot(rows, metric), "ablation/metric_vs_rank.png")
        scored = [r for r in rows if metric in r]
        best = max(scored, key=lambda r: r[metric])["config"] if scored else ""
        client.set_tag(parent_id, "genops.best_config", best)
        for row in scored:
            client.log_metric(parent_id, f"{metric}/{row['config']}", row[metric])
        if output_dir is not None:
            output_dir.mkdir(parents=True, exist_ok=True)
            from components.fileio import atomic_write_text

            atomic_write_text(output_dir / "lora_table.md", table)
            atomic_write_text(output_dir / "lora_table.csv", buffer.getvalue())
        client.set_terminated(parent_id, "FINISHED")
    except BaseException as exc:
        client.set_tag(parent_id, "error", f"{type(exc).__name__}: {exc}"[:4500])
        client.set_terminated(parent_id, "FAILED")
        raise
    return AblationSummary(parent_run_id=parent_id, rows=rows, best=best, table_markdown=table)
