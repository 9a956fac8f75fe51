"""MiniGPT-5's data and measurements shared by its two recipes (data only: the recipes train, they do not
score), its evaluation assets, the ablation and the CLI.

- Story samples from the prepared VIST / MMDialog shards, and stage 2's three task types per story.
- Stage-1 image generation on held-out CC3M-format pairs (Table 5's metrics: CLIP-I, CLIP-T with the
  evaluator CLIP; the ground-truth ceiling and the zero-voken floor beside them); `score_pairs` scores a
  trained model folder this way (the Table 5 ablation's arms).
- Stage-2 measurements on the last step of held-out stories: CLIP-I of MiniGPT-5's image (Table 1),
  the two-stage baseline (the LLM writes the step's text, `sd_base` draws it), `sd_base` drawing the
  ground-truth text, narration BLEU/ROUGE-L/METEOR/S-BERT and MM-Relevance (Tables 2 and 4), and
  Table 6's context study (no context / text / image / both).
Every arm samples the same prompts from the same seed.

`STAGE1` and `STAGE2` are the registered models' evaluation assets (training_jobs/evaluation.py): the
same measurements on DVC-versioned benchmarks (CC3M-format test pairs; the last step of VIST test
stories), logged to the version's own run.
"""

from __future__ import annotations

import base64
import io
import json
import random
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from components.data.shards import list_shards
from components.data.training_data import ShardDataset, decode_image, image_grid, pair_decoder
from components.metrics.clip_score import ClipEmbedder, clip_scores
from components.metrics.comparison import Column, Row
from components.metrics.fid import ClipImageExtractor, compute_statistics, fid_from_statistics
from components.metrics.narration import SentenceBertScorer, Turn, narration_metrics
from components.models.autoencoder import encode_latents, images_to_pixels, pixels_to_images
from components.models.minigpt5 import IMAGE_SLOT, MiniGPT5, story_task
from training_jobs.data_loading import first_samples, shard_paths
from training_jobs.evaluation import (
    BenchmarkRow,
    EvaluationOutcome,
    EvaluationSpec,
    png_b64,
    register_evaluation,
)

TASKS = ("text", "image", "both")
CONTEXTS = ("none", "text", "image", "both")


def story_decoder(image_size: int):
    """Decoder of story samples: {"id", "source", "steps": [{"text", "pixels" (3, S, S) or None}]}."""

    def decode(sample: dict[str, bytes]) -> dict[str, Any]:
        meta = json.loads(sample["json"])
        key = sample["__key__"]
        steps = []
        for step in meta["steps"]:
            name = step.get("image_path")
            pixels = decode_image(sample[name.removeprefix(f"{key}.")], image_size) if name else None
            steps.append({"text": step["text"] or "", "pixels": pixels})
        return {"id": meta["id"], "source": meta.get("source", ""), "steps": steps}

    return decode


def collate_stories(batch: list[dict]) -> list[dict]:
    return batch


def stage2_batch(model: MiniGPT5, vae, stories: list[dict], rng: random.Random, max_context: int,
                 device: torch.device) -> dict:
    """One stage-2 batch: per story a target step with an image (the latest such step, or a random later one)
    and one of the three task types (text from the image, image from the text, both from the context)."""
    prompts, answers, images, targets = [], [], [], []
    for story in stories:
        steps = [{"text": s["text"], "has_image": s["pixels"] is not None} for s in story["steps"]]
        candidates = [i for i, s in enumerate(steps) if s["has_image"] and i > 0] or [
            i for i, s in enumerate(steps) if s["has_image"]]
        if not candidates:
            raise ValueError(f"story {story['id']} has no image step: stage 2 trains on stories with images")
        target = rng.choice(candidates)
        prompt, answer, slots, voken_target = story_task(steps, target, rng.choice(TASKS), model.cfg.num_vokens,
                                                         max_context=max_context)
        prompts.append(prompt)
        answers.append(answer)
        images += [story["steps"][i]["pixels"] for i in slots]
        if voken_target is not None:
            targets.append(story["steps"][voken_target]["pixels"])
    batch = {"prompts": prompts, "answers": answers,
             "images": torch.stack(images).to(device) if images else None}
    if targets:
        with torch.no_grad():
            batch["latents"] = encode_latents(vae, torch.stack(targets).to(device))
    return batch


def held_out_pairs(prepared_root: Path, image_size: int, count: int, split: str = "test") -> list[dict]:
    return first_samples(shard_paths(prepared_root, ["cc3m"], split), pair_decoder(image_size), count)


@torch.no_grad()
def pair_image_metrics(model: MiniGPT5, pairs: list[dict], evaluator: ClipEmbedder, seed: int = 0,
                       batch_size: int = 16, fid_extractor: ClipImageExtractor | None = None) -> dict[str, float]:
    """Table 5's CLIP-I and CLIP-T of images drawn from the captions' vokens, the ceiling (the real images
    through the same metric) and the floor (images from the zero-voken conditioning alone)."""
    return pair_image_metrics_and_images(model, pairs, evaluator, seed, batch_size, fid_extractor)[0]


@torch.no_grad()
def score_pairs(model_dir: Path, evaluator: Path, prepared_root: Path, count: int, split: str = "test",
                seed: int = 0) -> dict[str, float]:
    """Table 5's columns for one trained stage-1 model folder: `pair_image_metrics` (with FID in the
    evaluator's space) on the first `count` held-out CC3M-format pairs, the same pairs and noise for every
    model scored. What the Table 5 ablation reports for each arm."""
    model = MiniGPT5.from_pretrained(model_dir).eval()
    pairs = held_out_pairs(prepared_root, model.vae.config.sample_size, count, split)
    return pair_image_metrics(model, pairs, ClipEmbedder(evaluator), seed=seed,
                              fid_extractor=ClipImageExtractor(evaluator))


def pair_image_metrics_and_images(model: MiniGPT5, pairs: list[dict], evaluator: ClipEmbedder, seed: int = 0,
                                  batch_size: int = 16, fid_extractor: ClipImageExtractor | None = None,
                                  steps: int | None = None) -> tuple[dict[str, float], list]:
    """`pair_image_metrics` with `steps` sampler steps (None: the model's), and the drawn images."""
    captions = [p["caption"] for p in pairs]
    drawn, floor = [], []
    for start in range(0, len(pairs), batch_size):
        part = captions[start : start + batch_size]
        h_hat = model.condition_for(part)
        g = torch.Generator(model.device).manual_seed(seed + start)
        drawn += pixels_to_images(model.draw(h_hat, g, num_inference_steps=steps))
        g = torch.Generator(model.device).manual_seed(seed + start)
        floor += pixels_to_images(model.draw(model.negative_conditioning().expand_as(h_hat), g, steps,
                                             guidance_scale=1.0))
    real = pixels_to_images(torch.stack([p["pixels"] for p in pairs]))
    ours = clip_scores(evaluator, drawn, captions, reference_images=real, prefix="")
    low = clip_scores(evaluator, floor, captions, reference_images=real, prefix="")
    ceiling = clip_scores(evaluator, real, captions, prefix="")
    metrics = {"eval/clip_i": ours.clip_i, "eval/clip_t": ours.clip_t, "eval/floor_clip_i": low.clip_i,
               "eval/floor_clip_t": low.clip_t, "eval/ceiling_clip_t": ceiling.clip_t, "eval/pairs": len(pairs)}
    if fid_extractor is not None:  # FID in the evaluator CLIP's image space (few images: a biased, noisy estimate)
        reference = compute_statistics(real, fid_extractor)
        metrics["eval/fid_clip"] = fid_from_statistics(compute_statistics(drawn, fid_extractor), reference).value
        metrics["eval/floor_fid_clip"] = fid_from_statistics(compute_statistics(floor, fid_extractor), reference).value
    return metrics, drawn


def _last_step_prompt(story: dict, context: str, max_context: int, with_text: bool) -> tuple[str, list]:
    steps = [{"text": s["text"], "has_image": s["pixels"] is not None} for s in story["steps"]]
    last = len(steps) - 1
    prompt, _, slots, _ = story_task(steps, last, "image" if with_text else "both", 1, context=context,
                                     max_context=max_context)
    images = torch.stack([story["steps"][i]["pixels"] for i in slots]) if slots else None
    return prompt, images


@torch.no_grad()
def story_metrics(model: MiniGPT5, stories: list[dict], evaluator: ClipEmbedder, max_context: int, seed: int = 0,
                  sbert: bool = True, contexts: tuple[str, ...] = CONTEXTS, steps: int | None = None,
                  keep_images: bool = False) -> tuple[dict[str, float], list[dict]]:
    """The last step of each held-out story: narration metrics, MiniGPT-5's image vs the two-stage baseline
    vs sd_base on the ground-truth text (CLIP-I), and the Table 6 context study. Returns metrics and rows
    (with MiniGPT-5's image under "image" if `keep_images`). `steps`: sampler steps (None: the models')."""
    generator = model.generator
    real = pixels_to_images(torch.stack([s["steps"][-1]["pixels"] for s in stories]))
    truth = [s["steps"][-1]["text"] for s in stories]
    narrations, ours_both = [], []
    rows = []
    for i, story in enumerate(stories):
        prompt, images = _last_step_prompt(story, "both", max_context, with_text=False)
        text, image, chose = model.generate(prompt, images, seed=seed + i, force_image=True, num_inference_steps=steps)
        narrations.append(text)
        ours_both.append(pixels_to_images(image)[0])
        rows.append({"story": story["id"], "prompt": prompt.replace(IMAGE_SLOT, "<img>"), "generated": text,
                     "truth": truth[i], "chose_voken": chose, **({"image": ours_both[-1]} if keep_images else {})})
    metrics: dict[str, float] = {"eval/stories": len(stories),
                                 "eval/voken_chosen_rate": sum(r["chose_voken"] for r in rows) / len(rows)}

    def clip_i(images) -> float:
        return clip_scores(evaluator, images, truth, reference_images=real, prefix="").clip_i

    metrics["eval/minigpt5_clip_i"] = clip_i(ours_both)
    g = torch.Generator(model.device).manual_seed(seed)
    vae = model.vae
    baseline = pixels_to_images(generator.generate([n or "." for n in narrations], vae, generator=g,
                                                   num_inference_steps=steps))
    metrics["eval/two_stage_baseline_clip_i"] = clip_i(baseline)
    g = torch.Generator(model.device).manual_seed(seed)
    metrics["eval/sd_base_truth_text_clip_i"] = clip_i(pixels_to_images(generator.generate(truth, vae, generator=g,
                                                                                          num_inference_steps=steps)))
    for context in contexts:  # Table 6: the final-step image given the last step's text and this context
        drawn = []
        for i, story in enumerate(stories):
            prompt, images = _last_step_prompt(story, context, max_context, with_text=True)
            h_hat = model.condition_for([prompt], [images] if images is not None else None)
            drawn += pixels_to_images(model.draw(h_hat, torch.Generator(model.device).manual_seed(seed + i), steps))
        metrics[f"eval/context_{context}_clip_i"] = clip_i(drawn)
    turns = [Turn(prediction=n, reference=t, predicted_image=o, reference_image=r, dialogue=s["id"])
             for n, t, o, r, s in zip(narrations, truth, ours_both, real, stories)]
    narration = narration_metrics(turns, sbert=SentenceBertScorer() if sbert else None, clip=evaluator)
    metrics.update({f"eval/narration_{k}": v for k, v in narration.to_json().items()
                    if isinstance(v, (int, float)) and v is not None})
    return metrics, rows


# ----- the registered models' evaluation assets ---------------------------------------------------------


def story_rows(prepared_root: Path, dataset: str, split: str, count: int) -> list[BenchmarkRow]:
    """The first `count` stories of a prepared split with at least two steps and an image at the last:
    prompt and image are the last step's, `groundtruth["steps"]` every step (text, image as base64 PNG)."""
    shards = list_shards(Path(prepared_root) / dataset, split)
    if not shards:
        raise FileNotFoundError(f"{prepared_root}/{dataset} has no {split!r} shards: prepare the dataset first")

    def decode(sample: dict[str, bytes]) -> dict:
        meta, key = json.loads(sample["json"]), sample["__key__"]
        steps = []
        for step in meta["steps"]:
            name = step.get("image_path")
            image = Image.open(io.BytesIO(sample[name.removeprefix(f"{key}.")])).convert("RGB") if name else None
            steps.append({"text": step["text"] or "", "image": image})
        return {"id": str(meta["id"]), "source": meta.get("source", ""), "steps": steps}

    rows = []
    for story in ShardDataset(shards, decode):
        last = story["steps"][-1]
        if len(story["steps"]) >= 2 and last["image"] is not None:
            rows.append(BenchmarkRow(story["id"], last["text"], last["image"], {
                "source": story["source"],
                "steps": [{"text": s["text"], "image_png": png_b64(s["image"]) if s["image"] is not None else None}
                          for s in story["steps"]]}))
        if len(rows) == count:
            break
    return rows


def _stories(rows: list[BenchmarkRow], image_size: int) -> list[dict]:
    """Benchmark rows -> `story_decoder`'s stories (pixels at the model's image size)."""
    return [{"id": r.id, "source": r.groundtruth.get("source", ""),
             "steps": [{"text": s["text"], "pixels": decode_image(base64.b64decode(s["image_png"]), image_size)
                        if s["image_png"] else None} for s in r.groundtruth["steps"]]} for r in rows]


def score_stage1(model_dir: Path, rows: list[BenchmarkRow], inputs: dict[str, Any]) -> EvaluationOutcome:
    """Table 5's CLIP-I / CLIP-T (and FID in the evaluator's space) on CC3M-format test pairs."""
    model = MiniGPT5.from_pretrained(model_dir).eval()
    size = model.vae.config.sample_size
    pairs = [{"caption": r.prompt, "pixels": images_to_pixels([r.image], size)[0]} for r in rows]
    evaluator = ClipEmbedder(inputs["clip_evaluator"])
    seed = int(inputs.get("seed", 0))
    found, drawn = pair_image_metrics_and_images(model, pairs, evaluator, seed, int(inputs.get("batch_size", 16)),
                                                 ClipImageExtractor(inputs["clip_evaluator"]), inputs.get("steps"))
    found = {k.removeprefix("eval/"): float(v) for k, v in found.items()}
    metrics = {k: found[k] for k in ("clip_i", "clip_t", "fid_clip")}
    # What the caption's vokens buy over the zero-voken conditioning with the same noise (a policy gate).
    metrics["clip_t_over_floor"] = found["clip_t"] - found["floor_clip_t"]
    per_image = clip_scores(evaluator, drawn, [p["caption"] for p in pairs], prefix="")
    samples = [{"id": r.id, "prompt": r.prompt, "image": image, "clip_t": per_image.per_image_clip_t[i]}
               for i, (r, image) in enumerate(zip(rows, drawn))]
    return EvaluationOutcome(
        metrics=metrics, samples=samples,
        grid=image_grid(images_to_pixels(drawn[:16]), columns=min(8, len(drawn))),
        baselines=[Row("Zero vokens (floor)", "floor", {"clip_i": found["floor_clip_i"], "clip_t": found["floor_clip_t"],
                                                        **({"fid_clip": found["floor_fid_clip"]}
                                                           if "floor_fid_clip" in found else {})}),
                   Row("Ground-truth images (ceiling)", "ceiling", {"clip_t": found["ceiling_clip_t"]})],
        facts={"clip_model": evaluator.name, "seed": str(seed), "pairs": str(len(pairs)),
               "steps": str(inputs.get("steps") or "model default")},
    )


@torch.no_grad()
def score_stage2(model_dir: Path, rows: list[BenchmarkRow], inputs: dict[str, Any]) -> EvaluationOutcome:
    """Tables 1/2/6 on the last step of held-out stories: CLIP-I of MiniGPT-5's image, the two-stage baseline,
    the context study (no context / text / image / both), narration metrics (S-BERT from the offline
    all-MiniLM-L6-v2 package; inputs["sbert"]=False leaves it out)."""
    model = MiniGPT5.from_pretrained(model_dir).eval()
    stories = _stories(rows, model.vae.config.sample_size)
    evaluator = ClipEmbedder(inputs["clip_evaluator"])
    seed, steps = int(inputs.get("seed", 0)), inputs.get("steps")
    sbert = bool(inputs.get("sbert", True))
    found, story_table = story_metrics(model, stories, evaluator, int(inputs.get("max_context", 4)), seed=seed,
                                       sbert=sbert, contexts=CONTEXTS, steps=steps, keep_images=True)
    metrics = {k.removeprefix("eval/"): float(v) for k, v in found.items() if k != "eval/stories"}
    # The floor: each story's image drawn from the zero-voken conditioning with the same noise.
    real = pixels_to_images(torch.stack([s["steps"][-1]["pixels"] for s in stories]))
    truth = [s["steps"][-1]["text"] for s in stories]
    negative = model.negative_conditioning()
    floor = [pixels_to_images(model.draw(negative, torch.Generator(model.device).manual_seed(seed + i), steps,
                                         guidance_scale=1.0))[0] for i in range(len(stories))]
    floor_clip_i = clip_scores(evaluator, floor, truth, reference_images=real, prefix="").clip_i
    metrics["clip_i_over_floor"] = metrics["minigpt5_clip_i"] - floor_clip_i
    drawn = [r.pop("image") for r in story_table]
    samples = [{**r, "image": image} for r, image in zip(story_table, drawn)]
    return EvaluationOutcome(
        metrics=metrics, samples=samples,
        grid=image_grid(images_to_pixels(drawn[:16]), columns=min(8, len(drawn))),
        baselines=[Row("Two-stage baseline (LLM text -> sd_base)", "baseline",
                       {"minigpt5_clip_i": metrics["two_stage_baseline_clip_i"]}),
                   Row("sd_base on the ground-truth text", "baseline",
                       {"minigpt5_clip_i": metrics["sd_base_truth_text_clip_i"]}),
                   Row("Zero vokens (floor)", "floor", {"minigpt5_clip_i": floor_clip_i})],
        facts={"clip_model": evaluator.name, "seed": str(seed), "stories": str(len(stories)),
               "steps": str(steps or "model default"), "narration_sbert": "on" if sbert else "off"},
    )


STAGE1 = register_evaluation(EvaluationSpec(
    family="minigpt5_stage1",
    registered_model="genops-minigpt5-stage1",
    training_asset="minigpt5_stage1",
    benchmark_dataset="cc3m",
    benchmark_split="test",
    benchmark_size={"tiny": 4, "demo": 24, "paper": 5000},
    score=score_stage1,
    columns=(Column("clip_i", "CLIP-I", True), Column("clip_t", "CLIP-T", True), Column("fid_clip", "FID (CLIP)", False)),
    table_title="MiniGPT-5 stage 1 on CC3M-format test pairs (columns of Table 5)",
    model_row_name="MiniGPT-5 stage 1",
    reference_split=None,
    sampler_steps={"tiny": 2, "demo": 10},
))

STAGE2 = register_evaluation(EvaluationSpec(
    family="minigpt5_stage2",
    registered_model="genops-minigpt5-stage2",
    training_asset="minigpt5_stage2",
    benchmark_dataset="vist",
    benchmark_split="test",
    benchmark_size={"tiny": 2, "demo": 12, "paper": 1000},
    score=score_stage2,
    columns=(Column("minigpt5_clip_i", "CLIP-I (last step)", True),
             Column("context_none_clip_i", "CLIP-I, no context", True),
             Column("context_both_clip_i", "CLIP-I, text + image context", True),
             Column("narration_bleu", "BLEU", True)),
    table_title="MiniGPT-5 stage 2 on the last step of VIST-format test stories (columns of Tables 1 and 6)",
    model_row_name="MiniGPT-5 stage 2",
    reference_split=None,
    benchmark_rows=story_rows,
    sampler_steps={"tiny": 2, "demo": 10},
))
