"""VLAD's evaluation (Tables I-II): generate for MARIO-Eval-format prompts, score OCR / CLIP / FID, tabulate.

    python -m training_jobs.vlad_evaluation --row VLAD=vlad:models:/genops-vlad@champion \
        --row SD=sd:models:/genops-sd-base@champion --prompts 48

The table goes to an MLflow run (experiment `genops-vlad`, run `vlad-table1-<time>`, tag
`genops.kind=comparison`): `vlad_table1.md` / `vlad_table1.json`, each cell as metric `<row>/<column>`,
each row's model reference with the registry version and training run it resolved to (tags
`genops.row.<row>*`), and mario_eval's DVC md5 (tag `genops.dataset.mario_eval`).

Every row's images come from the same held-out prompts (`data/prepared/mario_eval/prompts.jsonl`), the
same seed and sampler settings. Metrics: MARIO-Eval OCR accuracy / precision / recall / F-measure (F from
mean P and mean R, `components.metrics.ocr`), CLIP score with the evaluator CLIP (never VLAD's own LVLM),
and FID in the evaluator's image-embedding space against the prompts' ground-truth images. The ceiling
row is the ground-truth images themselves through the same OCR (at their native size, and resized to the
generators' resolution, which is what a perfect generator at that size could reach).

`VLAD_EVALUATION` is the registered model's evaluation asset (training_jobs/evaluation.py): the same
metrics on a DVC-versioned benchmark of the first MARIO-Eval-format prompts, with the floor (VLAD
sampled from the empty prompt with the same noise) and the ceiling beside it.
"""

from __future__ import annotations

import argparse
import json
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from components.data.training_data import image_grid
from components.metrics.clip_score import ClipEmbedder, clip_scores
from components.metrics.comparison import Column, Row
from components.metrics.fid import ClipImageExtractor, compute_statistics, fid_from_statistics
from components.metrics.ocr import OcrEngine, ocr_metrics
from components.models.autoencoder import images_to_pixels, load_autoencoder, pixels_to_images
from training_jobs.evaluation import BenchmarkRow, EvaluationOutcome, EvaluationSpec, register_evaluation
from training_jobs.model_inputs import resolve_model_path

COLUMNS = ("fid", "clip_score", "ocr_accuracy", "ocr_precision", "ocr_recall", "ocr_f_measure")


@dataclass
class EvalPrompt:
    prompt: str
    image: Path  # the ground-truth image


def load_eval_prompts(prepared_root: str | Path, count: int) -> list[EvalPrompt]:
    """The first `count` MARIO-Eval-format prompts that quote words and have a ground-truth image."""
    path = Path(prepared_root) / "mario_eval" / "prompts.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: prepare the mario_eval dataset (genops data prepare)")
    out = []
    for line in path.read_text().splitlines():
        record = json.loads(line)
        image = Path((record.get("extra") or {}).get("image", ""))
        if record.get("quoted_words") and image.is_file():
            out.append(EvalPrompt(record["prompt"], image))
        if len(out) == count:
            break
    if not out:
        raise ValueError(f"{path} has no prompt with quoted words and a ground-truth image")
    return out


@torch.no_grad()
def generate(kind: str, model_dir: Path, prompts: Sequence[str], steps: int, guidance_scale: float, seed: int,
             batch_size: int = 16) -> tuple[list[Image.Image], list]:
    """Images (and VLAD's layouts) for `prompts` from a vlad or sd_base folder, in batches, one seed."""
    if kind == "vlad":
        from components.models.vlad import VLAD

        model = VLAD.from_pretrained(model_dir).eval()
    elif kind == "sd":
        from components.models.sd_base import SDBase

        model = SDBase.from_pretrained(model_dir).eval()
    else:
        raise ValueError(f"model kind must be 'vlad' or 'sd', got {kind!r}")
    vae = load_autoencoder(model_dir / "vae").eval()
    images, layouts = [], []
    for start in range(0, len(prompts), batch_size):
        chunk = list(prompts[start : start + batch_size])
        generator = torch.Generator().manual_seed(seed + start)
        out = model.generate(chunk, vae, num_inference_steps=steps, guidance_scale=guidance_scale, generator=generator)
        pixels, layout = out if kind == "vlad" else (out, None)
        images.extend(pixels_to_images(pixels))
        layouts.extend(list(layout) if layout is not None else [None] * len(chunk))
    return images, layouts


def score(images: Sequence, prompts: Sequence[str], references: Sequence, embedder: ClipEmbedder,
          extractor: ClipImageExtractor, ocr: OcrEngine) -> dict[str, float]:
    """OCR (MARIO-Eval rules), CLIP score and FID against `references` for one row."""
    return score_in_detail(images, prompts, references, embedder, extractor, ocr)[0]


def score_in_detail(images: Sequence, prompts: Sequence[str], references: Sequence, embedder: ClipEmbedder,
                    extractor: ClipImageExtractor, ocr: OcrEngine) -> tuple[dict[str, float], Any, Any]:
    """`score`'s metrics, and the per-image OCR reading and CLIP scores behind them."""
    reading = ocr_metrics(ocr, images, prompts)
    clip = clip_scores(embedder, images, prompts)
    fid = fid_from_statistics(compute_statistics(images, extractor), compute_statistics(references, extractor))
    return ({"fid": fid.value, "clip_score": clip.clip_score, "ocr_accuracy": reading.accuracy,
             "ocr_precision": reading.precision, "ocr_recall": reading.recall, "ocr_f_measure": reading.f_measure},
            reading, clip)


def markdown_table(rows: dict[str, dict[str, float]], title: str) -> str:
    lines = [f"### {title}", "", "| row | " + " | ".join(COLUMNS) + " |", "|---|" + "---|" * len(COLUMNS)]
    for name, metrics in rows.items():
        lines.append(f"| {name} | " + " | ".join(f"{metrics[c]:.4f}" if c in metrics else "-" for c in COLUMNS) + " |")
    return "\n".join(lines) + "\n"


def slug(name: str) -> str:
    """A row name as an MLflow metric/tag key part: 'ground truth (ceiling)' -> 'ground_truth_ceiling'."""
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_") or "row"


def log_table(client, run_id: str, results: dict[str, dict[str, float]], title: str, stem: str) -> str:
    """Log a comparison table to an MLflow run: `<stem>.md`, `<stem>.json` and every cell as `<row>/<column>`."""
    from mlflow.entities import Metric

    table = markdown_table(results, title)
    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(f"{slug(row)}/{key}", float(value), now, 0)
                                      for row, metrics in results.items() for key, value in metrics.items()])
    client.log_text(run_id, table, f"{stem}.md")
    client.log_text(run_id, json.dumps(results, indent=2) + "\n", f"{stem}.json")
    return table


def evaluate_rows(rows: dict[str, tuple[str, str]], prepared_root: str | Path, evaluator: str, tracking_uri: str | None,
                  count: int, steps: int, guidance_scale: float, seed: int = 0, ceiling: bool = True,
                  progress=print) -> dict[str, dict[str, float]]:
    """Metrics of every row {name: (kind, model reference)} on the same prompts, plus the ground-truth ceiling rows."""
    prompts = load_eval_prompts(prepared_root, count)
    texts = [p.prompt for p in prompts]
    references = [Image.open(p.image).convert("RGB") for p in prompts]
    evaluator_dir = resolve_model_path(evaluator, tracking_uri)
    embedder, extractor = ClipEmbedder(evaluator_dir), ClipImageExtractor(evaluator_dir)
    ocr = OcrEngine()
    results: dict[str, dict[str, float]] = {}
    size = None
    for name, (kind, reference) in rows.items():
        progress(f"[vlad eval] {name}: generating {len(texts)} images")
        images, _ = generate(kind, resolve_model_path(reference, tracking_uri), texts, steps, guidance_scale, seed)
        size = images[0].size
        results[name] = score(images, texts, references, embedder, extractor, ocr)
        progress(f"[vlad eval] {name}: {json.dumps({k: round(v, 4) for k, v in results[name].items()})}")
    if ceiling:
        results["ground truth (ceiling)"] = score(references, texts, references, embedder, extractor, ocr)
        if size is not None:
            small = [r.resize(size, Image.Resampling.LANCZOS) for r in references]
            results[f"ground truth at {size[0]} px"] = score(small, texts, references, embedder, extractor, ocr)
    return results


def mario_eval_rows(prepared_root: Path, dataset: str, split: str, count: int) -> list[BenchmarkRow]:
    """The benchmark rows of `load_eval_prompts` (`dataset` is mario_eval; its prompts file has no splits)."""
    if dataset != "mario_eval":
        raise ValueError(f"VLAD's benchmark is drawn from mario_eval's prompts, not {dataset!r}")
    return [BenchmarkRow(f"mario_eval-{i:05d}", p.prompt, Image.open(p.image).convert("RGB"), None)
            for i, p in enumerate(load_eval_prompts(prepared_root, count))]


def score_vlad(model_dir: Path, rows: list[BenchmarkRow], inputs: dict[str, Any]) -> EvaluationOutcome:
    """inputs: clip_evaluator (folder), seed, steps, guidance_scale, batch_size."""
    texts, references = [r.prompt for r in rows], [r.image for r in rows]
    seed, batch = int(inputs.get("seed", 0)), int(inputs.get("batch_size", 16))
    steps, guidance = inputs.get("steps"), inputs.get("guidance_scale")
    embedder, extractor = ClipEmbedder(inputs["clip_evaluator"]), ClipImageExtractor(inputs["clip_evaluator"])
    ocr = OcrEngine()
    images, _ = generate("vlad", Path(model_dir), texts, steps, guidance, seed, batch)
    metrics, reading, clip = score_in_detail(images, texts, references, embedder, extractor, ocr)
    floor_images, _ = generate("vlad", Path(model_dir), [""] * len(texts), steps, guidance, seed, batch)
    floor = score(floor_images, texts, references, embedder, extractor, ocr)
    # What the prompt itself buys over the same noise sampled unconditionally (the policy's gate reads it).
    metrics["clip_score_over_floor"] = metrics["clip_score"] - floor["clip_score"]
    size = images[0].size
    at_size = score([r.resize(size, Image.Resampling.LANCZOS) for r in references], texts, references, embedder,
                    extractor, ocr)
    samples = [{"id": r.id, "prompt": r.prompt, "image": image, "clip_score": clip.per_image_clip_score[i],
                "ocr_precision": reading.per_image[i].precision, "ocr_recall": reading.per_image[i].recall,
                "ocr_accuracy": reading.per_image[i].accuracy, "ocr_read": " ".join(reading.per_image[i].predicted),
                "ocr_target": " ".join(reading.per_image[i].target)}
               for i, (r, image) in enumerate(zip(rows, images))]
    return EvaluationOutcome(
        metrics=metrics, samples=samples,
        grid=image_grid(images_to_pixels(images[:16]), columns=min(8, len(images))),
        baselines=[Row("VLAD, empty prompt (floor)", "floor", floor),
                   Row(f"Ground-truth images at {size[0]} px (ceiling)", "ceiling", at_size)],
        facts={"fid_extractor": extractor.name, "clip_model": embedder.name, "ocr": "rapidocr PP-OCRv4",
               "seed": str(seed), "steps": str(steps or "model default"),
               "guidance_scale": str(guidance or "model default")},
    )


VLAD_EVALUATION = register_evaluation(EvaluationSpec(
    family="vlad",
    registered_model="genops-vlad",
    training_asset="vlad",
    benchmark_dataset="mario_eval",
    benchmark_split="prompts",
    benchmark_size={"tiny": 4, "demo": 24, "paper": 5000},
    benchmark_rows=mario_eval_rows,  # mario_eval is a prompts.jsonl file, not split shards
    score=score_vlad,
    columns=tuple(Column(key, header, key != "fid") for key, header in (
        ("fid", "FID (CLIP)"), ("clip_score", "CLIP Score"), ("ocr_accuracy", "OCR Acc."),
        ("ocr_precision", "OCR P"), ("ocr_recall", "OCR R"), ("ocr_f_measure", "OCR F"))),
    table_title="VLAD on MARIO-Eval-format prompts (columns of VLAD Table I)",
    model_row_name="VLAD",
    reference_split=None,
    sampler_steps={"tiny": 2, "demo": 10},
))


def main(argv: Sequence[str] | None = None) -> None:
    from training_jobs.launcher import default_tracking_uri, project_root
    from training_jobs.lineage import dataset_versions
    from training_jobs.model_inputs import model_lineage_tags

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--row", action="append", required=True, help="NAME=KIND:MODEL (KIND vlad or sd)")
    parser.add_argument("--prompts", type=int, default=48)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--guidance-scale", type=float, default=3.0)
    parser.add_argument("--evaluator", default="models:/genops-clip-evaluator@champion")
    parser.add_argument("--title", default="VLAD Table I (demo scale)")
    parser.add_argument("--out", type=Path, default=Path("outputs/vlad/table.md"))
    parser.add_argument("--prepared-root", type=Path, default=None, help="default: <project>/data/prepared")
    parser.add_argument("--tracking-uri", default=None, help="default: the project's embedded MLflow store")
    parser.add_argument("--experiment", default="genops-vlad", help="MLflow experiment of the comparison run")
    args = parser.parse_args(argv)
    rows = {}
    for spec in args.row:
        name, _, rest = spec.partition("=")
        kind, _, reference = rest.partition(":")
        if not name or kind not in ("vlad", "sd") or not reference:
            raise SystemExit(f"--row {spec!r}: expected NAME=vlad:MODEL or NAME=sd:MODEL")
        rows[name] = (kind, reference)
    root = project_root()
    prepared = args.prepared_root or root / "data" / "prepared"
    tracking_uri = args.tracking_uri or default_tracking_uri(root)
    results = evaluate_rows(rows, prepared, args.evaluator, tracking_uri, args.prompts, args.steps, args.guidance_scale)

    import mlflow

    client = mlflow.MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name(args.experiment)
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(args.experiment)
    version = dataset_versions(Path(prepared).parents[1], ["mario_eval"])["mario_eval"]
    tags = {"genops.kind": "comparison", "genops.dataset.mario_eval": version}
    for name, (kind, reference) in rows.items():
        tags.update(model_lineage_tags(reference, tracking_uri, f"genops.row.{slug(name)}"))
        tags[f"genops.row.{slug(name)}_kind"] = kind
    tags.update(model_lineage_tags(args.evaluator, tracking_uri, "genops.evaluator"))
    run = client.create_run(experiment_id, run_name=f"vlad-table1-{time.strftime('%Y%m%d-%H%M%S')}", tags=tags)
    try:
        for key, value in {"prompts": args.prompts, "steps": args.steps, "guidance_scale": args.guidance_scale,
                           "seed": 0, "rows": ", ".join(rows)}.items():
            client.log_param(run.info.run_id, key, value)
        table = log_table(client, run.info.run_id, results, args.title, "vlad_table1")
        client.set_terminated(run.info.run_id, "FINISHED")
    except BaseException:
        client.set_terminated(run.info.run_id, "FAILED")
        raise
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(args.out.name + ".tmp")
    tmp.write_text(table)
    tmp.replace(args.out)
    print(table)
    print(f"wrote {args.out} and MLflow run {run.info.run_id} (experiment {args.experiment}, {tracking_uri})")


if __name__ == "__main__":
    main()
