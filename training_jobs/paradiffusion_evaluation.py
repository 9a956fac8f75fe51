"""The evaluations of ParaDiffusion's three registered stages (Table 10's rows, one spec per stage).

Every stage is scored on the same benchmark: held-out paraimage_big paragraphs (the `test` split; the
stages train on `train` of paraimage_big / paraimage_small) with their ground-truth scenes. Each
paragraph is sampled with fixed seeds (the same initial noise for every version and stage, so they
compare pairwise), then scored as `paradiffusion_comparison` scores its arms: the text faithfulness
of each image against its paragraph's scene (`per_prompt_scores`), plus CLIP score / CLIP-T /
CLIP-I with the evaluator CLIP. Beside the model: the floor (the same stage sampled from the empty
prompt with the same noise) and the ceiling (the ground-truth images through the same metrics).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from components.data.training_data import image_grid
from components.metrics.clip_score import ClipEmbedder, clip_scores
from components.metrics.comparison import Column, Row
from components.models.autoencoder import (
    images_to_pixels,
    load_autoencoder,
    pixels_to_images,
    scene_named_objects,
)
from components.models.paradiffusion import ParaDiffusion
from training_jobs.evaluation import BenchmarkRow, EvaluationOutcome, EvaluationSpec, register_evaluation
from training_jobs.paradiffusion_comparison import METRICS, per_prompt_scores

# per_prompt_scores' keys -> the headline metric names (those of sd_base's evaluation)
FAITHFULNESS = {"object_precision": "faithfulness_object", "attribute_precision": "faithfulness_attribute",
                "all_precision": "faithfulness_all", "colour_placement_precision": "faithfulness_colour_placement"}


@torch.no_grad()
def _sample(model: ParaDiffusion, vae, texts: list[str], seed: int, batch_size: int, steps: int | None,
            guidance: float | None) -> list[Image.Image]:
    """Batch b always starts from the noise of seed + b: fixed across versions, stages and the floor."""
    images = []
    for start in range(0, len(texts), batch_size):
        generator = torch.Generator().manual_seed(seed + start // batch_size)
        images += pixels_to_images(model.generate(texts[start : start + batch_size], vae, generator=generator,
                                                  num_inference_steps=steps, guidance_scale=guidance))
    return images


def _measure(images: list[Image.Image], rows: list[BenchmarkRow], objects, embedder: ClipEmbedder,
             truth: list[Image.Image] | None) -> tuple[dict[str, float], dict[str, list[float]], Any]:
    """Headline metrics, per-prompt faithfulness and per-image CLIP scores of one row of the table."""
    per_prompt = per_prompt_scores(images, objects)
    clip = clip_scores(embedder, images, [r.prompt for r in rows], reference_images=truth)
    metrics = {FAITHFULNESS[m]: float(np.mean(per_prompt[m])) for m in METRICS}
    metrics.update({"clip_score": clip.clip_score, "clip_t": clip.clip_t})
    if clip.clip_i is not None:
        metrics["clip_i"] = clip.clip_i
    return metrics, per_prompt, clip


def score_paradiffusion(model_dir: Path, rows: list[BenchmarkRow], inputs: dict[str, Any]) -> EvaluationOutcome:
    """inputs: clip_evaluator (folder), seed, steps, guidance_scale, batch_size."""
    rows = [r for r, objs in zip(rows, scene_named_objects([r.groundtruth for r in rows])) if objs]
    if not rows:
        raise ValueError("no benchmark paragraph has a ground-truth scene to judge faithfulness against")
    objects = scene_named_objects([r.groundtruth for r in rows])
    model = ParaDiffusion.from_pretrained(model_dir).eval()
    vae = load_autoencoder(Path(model_dir) / "vae").eval()
    seed, batch = int(inputs.get("seed", 0)), int(inputs.get("batch_size", 16))
    steps, guidance = inputs.get("steps"), inputs.get("guidance_scale")
    embedder = ClipEmbedder(inputs["clip_evaluator"])
    size = vae.config.sample_size
    truth = [r.image.resize((size, size), Image.BICUBIC) for r in rows]

    generated = _sample(model, vae, [r.prompt for r in rows], seed, batch, steps, guidance)
    metrics, per_prompt, clip = _measure(generated, rows, objects, embedder, truth)
    floor_images = _sample(model, vae, [""] * len(rows), seed, batch, steps, guidance)
    floor, _, _ = _measure(floor_images, rows, objects, embedder, truth)
    ceiling, _, _ = _measure(truth, rows, objects, embedder, None)
    # What the paragraph itself buys over the same noise sampled unconditionally (the policy's gates read these).
    metrics["clip_score_over_floor"] = metrics["clip_score"] - floor["clip_score"]
    metrics["faithfulness_object_over_floor"] = metrics["faithfulness_object"] - floor["faithfulness_object"]
    samples = [{"id": r.id, "prompt": r.prompt, "image": image, "clip_score": clip.per_image_clip_score[i],
                "clip_t": clip.per_image_clip_t[i], **{FAITHFULNESS[m]: per_prompt[m][i] for m in METRICS}}
               for i, (r, image) in enumerate(zip(rows, generated))]
    return EvaluationOutcome(
        metrics=metrics,
        samples=samples,
        grid=image_grid(images_to_pixels(generated[:16]), columns=min(8, len(generated))),
        baselines=[Row("Same stage, empty prompt (floor)", "floor", floor),
                   Row("Ground-truth images (ceiling)", "ceiling", ceiling)],
        facts={"clip_model": embedder.name, "seed": str(seed), "paragraphs": str(len(rows)),
               "steps": str(steps or "model default"), "guidance_scale": str(guidance or "model default")},
    )


COLUMNS = (
    Column("faithfulness_object", "Object", True),
    Column("faithfulness_attribute", "Attribute", True),
    Column("faithfulness_all", "All three", True),
    Column("faithfulness_colour_placement", "Colour placement", True),
    Column("clip_score", "CLIP Score", True),
    Column("clip_t", "CLIP-T", True),
    Column("clip_i", "CLIP-I", True),
)

STAGES = {stage: register_evaluation(EvaluationSpec(
    family=f"paradiffusion_stage{stage}",
    registered_model=f"genops-paradiffusion-stage{stage}",
    training_asset=f"paradiffusion_stage{stage}",
    benchmark_dataset="paraimage_big",
    benchmark_split="test",
    benchmark_size={"tiny": 4, "demo": 24, "paper": 400},
    score=score_paradiffusion,
    columns=COLUMNS,
    table_title=f"ParaDiffusion stage {stage} on held-out paragraphs (columns of Table 10, CLIP score)",
    model_row_name=f"ParaDiffusion stage {stage}",
    reference_split=None,
    sampler_steps={"tiny": 2, "demo": 10},
)) for stage in (1, 2, 3)}
