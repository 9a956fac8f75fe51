"""MiniGPT-5's data and measurements shared by its two recipes, the ablation asset and the CLI.

- Story samples from the prepared VIST / MMDialog shards, and stage 2's three task types per story.
- Stage-1 image generation on held-out CC3M-format pairs (Table 5's metrics: CLIP-I, CLIP-T with the
  evaluator CLIP; the ground-truth ceiling and the zero-voken floor beside them).
- Stage-2 measurements on the last step of held-out stories: CLIP-I of MiniGPT-5's image (Table 1),
  the two-stage baseline (the LLM writes the step's text, `sd_base` draws it), `sd_base` drawing the
  ground-truth text, narration BLEU/ROUGE-L/METEOR/S-BERT and MM-Relevance (Tables 2 and 4), and
  Table 6's context study (no context / text / image / both).
Every arm samples the same prompts from the same seed.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import torch

from components.data.training_data import decode_image, pair_decoder
from components.metrics.clip_score import ClipEmbedder, clip_scores
from components.metrics.fid import ClipImageExtractor, compute_statistics, fid_from_statistics
from components.metrics.narration import SentenceBertScorer, Turn, narration_metrics
from components.models.autoencoder import encode_latents, pixels_to_images
from components.models.minigpt5 import IMAGE_SLOT, MiniGPT5, story_task
from training_jobs.data_loading import first_samples, shard_paths

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


def held_out_stories(prepared_root: Path, datasets: list[str], image_size: int, count: int, split: str = "test"
                     ) -> list[dict]:
    stories = first_samples(shard_paths(prepared_root, datasets, split), story_decoder(image_size), 10 * count)
    keep = [s for s in stories if len(s["steps"]) >= 2 and s["steps"][-1]["pixels"] is not None]
    return keep[:count]


@torch.no_grad()
def pair_image_metrics(model: MiniGPT5, pairs: list[dict], evaluator: ClipEmbedder, seed: int = 0,
                       batch_size: int = 16, fid_extractor: ClipImageExtractor | None = None) -> dict[str, float]:
    """Table 5's CLIP-I and CLIP-T of images drawn from the captions' vokens, the ceiling (the real images
    through the same metric) and the floor (images from the zero-voken conditioning alone)."""
    captions = [p["caption"] for p in pairs]
    drawn, floor = [], []
    for start in range(0, len(pairs), batch_size):
        part = captions[start : start + batch_size]
        h_hat = model.condition_for(part)
        g = torch.Generator(model.device).manual_seed(seed + start)
        drawn += pixels_to_images(model.draw(h_hat, g))
        g = torch.Generator(model.device).manual_seed(seed + start)
        floor += pixels_to_images(model.draw(model.negative_conditioning().expand_as(h_hat), g, guidance_scale=1.0))
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
    return metrics


def _last_step_prompt(story: dict, context: str, max_context: int, with_text: bool) -> tuple[str, list]:
    steps = [{"text": s["text"], "has_image": s["pixels"] is not None} for s in story["steps"]]
    last = len(steps) - 1
    prompt, _, slots, _ = story_task(steps, last, "image" if with_text else "both", 1, context=context,
                                     max_context=max_context)
    images = torch.stack([story["steps"][i]["pixels"] for i in slots]) if slots else None
    return prompt, images


@torch.no_grad()
def story_metrics(model: MiniGPT5, stories: list[dict], evaluator: ClipEmbedder, max_context: int, seed: int = 0,
                  sbert: bool = True, contexts: tuple[str, ...] = CONTEXTS) -> tuple[dict[str, float], list[dict]]:
    """The last step of each held-out story: narration metrics, MiniGPT-5's image vs the two-stage baseline
    vs sd_base on the ground-truth text (CLIP-I), and the Table 6 context study. Returns metrics and rows."""
    generator = model.generator
    real = pixels_to_images(torch.stack([s["steps"][-1]["pixels"] for s in stories]))
    truth = [s["steps"][-1]["text"] for s in stories]
    narrations, ours_both = [], []
    rows = []
    for i, story in enumerate(stories):
        prompt, images = _last_step_prompt(story, "both", max_context, with_text=False)
        text, image, chose = model.generate(prompt, images, seed=seed + i, force_image=True)
        narrations.append(text)
        ours_both.append(pixels_to_images(image)[0])
        rows.append({"story": story["id"], "prompt": prompt.replace(IMAGE_SLOT, "<img>"), "generated": text,
                     "truth": truth[i], "chose_voken": chose})
    metrics: dict[str, float] = {"eval/stories": len(stories),
                                 "eval/voken_chosen_rate": sum(r["chose_voken"] for r in rows) / len(rows)}

    def clip_i(images) -> float:
        return clip_scores(evaluator, images, truth, reference_images=real, prefix="").clip_i

    metrics["eval/minigpt5_clip_i"] = clip_i(ours_both)
    g = torch.Generator(model.device).manual_seed(seed)
    vae = model.vae
    baseline = pixels_to_images(generator.generate([n or "." for n in narrations], vae, generator=g))
    metrics["eval/two_stage_baseline_clip_i"] = clip_i(baseline)
    g = torch.Generator(model.device).manual_seed(seed)
    metrics["eval/sd_base_truth_text_clip_i"] = clip_i(pixels_to_images(generator.generate(truth, vae, generator=g)))
    for context in contexts:  # Table 6: the final-step image given the last step's text and this context
        drawn = []
        for i, story in enumerate(stories):
            prompt, images = _last_step_prompt(story, context, max_context, with_text=True)
            h_hat = model.condition_for([prompt], [images] if images is not None else None)
            drawn += pixels_to_images(model.draw(h_hat, torch.Generator(model.device).manual_seed(seed + i)))
        metrics[f"eval/context_{context}_clip_i"] = clip_i(drawn)
    turns = [Turn(prediction=n, reference=t, predicted_image=o, reference_image=r, dialogue=s["id"])
             for n, t, o, r, s in zip(narrations, truth, ours_both, real, stories)]
    narration = narration_metrics(turns, sbert=SentenceBertScorer() if sbert else None, clip=evaluator)
    metrics.update({f"eval/narration_{k}": v for k, v in narration.to_json().items()
                    if isinstance(v, (int, float)) and v is not None})
    return metrics, rows
