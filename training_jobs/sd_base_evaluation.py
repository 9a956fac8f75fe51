"""The `sd_base` evaluation (the "SD" row): short captions of laion_short's test split.

Samples every benchmark prompt with fixed seeds (the same initial noise for every model version, so
versions compare pairwise), then scores them as the papers score SD: FID with the evaluator CLIP's
image tower (no Inception weights can be downloaded here) against the val split's images, CLIP
score / CLIP-T / CLIP-I with the evaluator CLIP, and text faithfulness against the scene ground
truth. Beside the model: the ceiling (the benchmark's own ground-truth images through the same
metrics) and the floor (the same model with empty prompts: it ignores the condition).

The split is `test`: neither the generators (train) nor the evaluator CLIP (holdout) ever trained on it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from PIL import Image

from components.data.scene import Scene
from components.data.training_data import image_grid
from components.metrics.clip_score import ClipEmbedder, clip_scores
from components.metrics.comparison import Column, Row
from components.metrics.faithfulness import NamedObject, aggregate, detect_scene, judge
from components.metrics.fid import ClipImageExtractor, compute_statistics, fid_from_statistics
from components.models.autoencoder import images_to_pixels, load_autoencoder, pixels_to_images
from components.models.sd_base import SDBase
from training_jobs.evaluation import BenchmarkRow, EvaluationOutcome, EvaluationSpec, register_evaluation


def _named(row: BenchmarkRow) -> list[NamedObject]:
    gt = row.groundtruth or {}
    if "scene" not in gt:
        return []
    return [NamedObject.from_scene_object(o) for o in Scene.from_json(gt["scene"]).objects]


@torch.no_grad()
def _generate(model: SDBase, vae, prompts: list[str], seed: int, batch_size: int, steps: int | None,
              guidance: float | None) -> list[Image.Image]:
    """Prompt i always starts from the noise of seed + i // batch_size: fixed across model versions."""
    images = []
    for start in range(0, len(prompts), batch_size):
        generator = torch.Generator().manual_seed(seed + start // batch_size)
        pixels = model.generate(prompts[start : start + batch_size], vae, generator=generator,
                                num_inference_steps=steps, guidance_scale=guidance)
        images.extend(pixels_to_images(pixels))
    return images


def _score_images(images: list[Image.Image], rows: list[BenchmarkRow], embedder: ClipEmbedder,
                  extractor: ClipImageExtractor, reference_stats, with_clip_i: bool) -> tuple[dict[str, float], list[dict]]:
    prompts = [r.prompt for r in rows]
    truth = [r.image.resize(images[0].size, Image.BICUBIC) for r in rows]
    clip = clip_scores(embedder, images, prompts, reference_images=truth if with_clip_i else None)
    judgements = [judge(_named(r), detect_scene(im)) for r, im in zip(rows, images)]
    scored = [j for j in judgements if j]
    faith = aggregate(scored) if scored else None
    fid = fid_from_statistics(compute_statistics(images, extractor, batch_size=32), reference_stats)
    metrics = {"clip_score": clip.clip_score, "clip_t": clip.clip_t, "fid_clip": fid.value}
    if clip.clip_i is not None:
        metrics["clip_i"] = clip.clip_i
    if faith is not None:
        metrics.update({"faithfulness_object": faith.object_precision,
                        "faithfulness_attribute": faith.attribute_precision,
                        "faithfulness_location": faith.location_precision if faith.location_precision is not None else float("nan"),
                        "faithfulness_all": faith.all_precision,
                        "faithfulness_colour_placement": faith.colour_placement_precision})
    per_sample = []
    for i, (row, image, judged) in enumerate(zip(rows, images, judgements)):
        sample = {"id": row.id, "prompt": row.prompt, "image": image, "clip_score": clip.per_image_clip_score[i],
                  "clip_t": clip.per_image_clip_t[i]}
        if clip.per_image_clip_i is not None:
            sample["clip_i"] = clip.per_image_clip_i[i]
        if judged:
            one = aggregate([judged])
            sample.update({"faithfulness_object": one.object_precision, "faithfulness_attribute": one.attribute_precision,
                           "faithfulness_all": one.all_precision})
        per_sample.append(sample)
    return metrics, per_sample


def score_sd_base(model_dir: Path, rows: list[BenchmarkRow], inputs: dict[str, Any]) -> EvaluationOutcome:
    """inputs: clip_evaluator (folder), reference_images (PIL list), seed, steps, guidance_scale, batch_size."""
    model = SDBase.from_pretrained(model_dir).eval()
    vae = load_autoencoder(Path(model_dir) / "vae").eval()
    seed, batch = int(inputs.get("seed", 0)), int(inputs.get("batch_size", 16))
    steps, guidance = inputs.get("steps"), inputs.get("guidance_scale")
    embedder = ClipEmbedder(inputs["clip_evaluator"])
    extractor = ClipImageExtractor(inputs["clip_evaluator"])
    size = vae.config.sample_size
    reference = [im.resize((size, size), Image.BICUBIC) for im in inputs["reference_images"]]
    reference_stats = compute_statistics(reference, extractor, batch_size=32)

    prompts = [r.prompt for r in rows]
    generated = _generate(model, vae, prompts, seed, batch, steps, guidance)
    metrics, samples = _score_images(generated, rows, embedder, extractor, reference_stats, with_clip_i=True)
    floor_images = _generate(model, vae, [""] * len(rows), seed, batch, steps, guidance)
    floor, _ = _score_images(floor_images, rows, embedder, extractor, reference_stats, with_clip_i=True)
    truth = [r.image.resize((size, size), Image.BICUBIC) for r in rows]
    ceiling, _ = _score_images(truth, rows, embedder, extractor, reference_stats, with_clip_i=False)
    grid = image_grid(images_to_pixels(generated[:16]), columns=min(8, len(generated)))
    return EvaluationOutcome(
        metrics=metrics,
        samples=samples,
        grid=grid,
        baselines=[Row("SD, empty prompt (floor)", "floor", floor), Row("Ground-truth images (ceiling)", "ceiling", ceiling)],
        facts={"fid_extractor": extractor.name, "clip_model": embedder.name, "seed": str(seed),
               "reference_images": str(len(reference)), "steps": str(steps or "model default"),
               "guidance_scale": str(guidance or "model default")},
    )


SD_BASE = register_evaluation(EvaluationSpec(
    family="sd_base",
    registered_model="genops-sd-base",
    training_asset="sd_base",
    benchmark_dataset="laion_short",
    benchmark_split="test",
    benchmark_size={"tiny": 4, "demo": 64, "paper": 5000},
    score=score_sd_base,
    columns=(
        Column("fid_clip", "FID (CLIP)", False),
        Column("clip_score", "CLIP Score", True),
        Column("clip_t", "CLIP-T", True),
        Column("clip_i", "CLIP-I", True),
        Column("faithfulness_object", "Object", True),
        Column("faithfulness_attribute", "Attribute", True),
        Column("faithfulness_location", "Location", True),
        Column("faithfulness_all", "All three", True),
    ),
    table_title="SD base on short captions (columns of VLAD Table I and ParaDiffusion Table 3)",
    model_row_name="SD",
))
