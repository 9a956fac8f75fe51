"""The paper's claims at demo scale, measured on one set of held-out paragraphs with paired samples.

    genops paradiffusion compare --profile demo

- Table 10: stage 2 above stage 1 on paragraph faithfulness (stage 3 beside them).
- Table 6: stage 2 with LoRA above "Base" (stage 2 without LoRA: same init, data, steps and seeds;
  trained here as one more stage-2 job with model.rank=0, unless `base_model` names one).
- Figure 21: on paragraphs longer than the sd_base text encoder's context, ParaDiffusion (the final
  stage) above sd_base, whose CLIP text encoder truncates them.

Every arm samples the same paragraphs from the same initial noise (one seeded generator per batch of
the same shape) with its own default sampler settings; the metric is the text faithfulness
(components/metrics/faithfulness.py) of each image against its paragraph's ground-truth scene, per
prompt, so arms are compared by the mean per-prompt difference with a bootstrap 95% interval over
prompts. Beside the arms: the ceiling (real images, and their VAE round-trips) and the floor (the
final model sampled from the empty prompt with the same noise). Logged to MLflow as tables.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from components.data.training_data import collate_pairs, pair_decoder
from components.metrics.faithfulness import text_faithfulness
from components.models.autoencoder import (
    load_autoencoder,
    pixels_to_images,
    roundtrip_images,
    scene_named_objects,
)
from components.models.paradiffusion import ParaDiffusion
from components.models.sd_base import SDBase
from training_jobs.data_loading import first_samples, shard_paths
from training_jobs.model_inputs import resolve_model_path

SEED = 1
METRICS = ("all_precision", "object_precision", "attribute_precision", "colour_placement_precision")


@dataclass
class Arm:
    name: str
    images: list
    per_prompt: dict[str, list[float]]


def per_prompt_scores(images, objects) -> dict[str, list[float]]:
    scores = {m: [] for m in METRICS}
    for image, named in zip(images, objects):
        result = text_faithfulness([image], [named])
        for m in METRICS:
            scores[m].append(float(getattr(result, m)))
    return scores


def paired_difference(a: list[float], b: list[float], resamples: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """Mean of a - b over prompts, with a bootstrap 95% interval (prompts resampled with replacement)."""
    diff = np.asarray(a) - np.asarray(b)
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, len(diff), size=(resamples, len(diff)))].mean(axis=1)
    return float(diff.mean()), float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def held_out(prepared_root: Path, dataset: str, count: int, image_size: int) -> dict:
    samples = first_samples(shard_paths(prepared_root, [dataset], "val"), pair_decoder(image_size), count)
    batch = collate_pairs(samples)
    named = scene_named_objects(batch["groundtruth"])
    keep = [i for i, objs in enumerate(named) if objs]
    return {"texts": [batch["caption"][i] for i in keep], "objects": [named[i] for i in keep],
            "pixels": batch["pixels"][keep]}


@torch.no_grad()
def paradiffusion_images(path: Path, texts: list[str], vae, batch: int = 16, empty: bool = False) -> list:
    model = ParaDiffusion.from_pretrained(path).eval()
    images = []
    for start in range(0, len(texts), batch):
        chunk = texts[start:start + batch]
        prompts = [""] * len(chunk) if empty else chunk
        images += pixels_to_images(model.generate(prompts, vae, generator=torch.Generator().manual_seed(SEED + start)))
    return images


@torch.no_grad()
def sd_base_images(path: Path, texts: list[str], vae, batch: int = 16) -> list:
    model = SDBase.from_pretrained(path).eval()
    images = []
    for start in range(0, len(texts), batch):
        images += pixels_to_images(model.generate(texts[start:start + batch], vae,
                                                  generator=torch.Generator().manual_seed(SEED + start)))
    return images


def table(title: str, arms: list[Arm], pairs: list[tuple[str, str]]) -> tuple[str, list[dict]]:
    rows = []
    lines = [f"### {title}", "", "| arm | " + " | ".join(METRICS) + " |", "|---|" + "---|" * len(METRICS)]
    for arm in arms:
        means = {m: float(np.mean(arm.per_prompt[m])) for m in METRICS}
        rows.append({"table": title, "arm": arm.name, "prompts": len(arm.per_prompt[METRICS[0]]), **means})
        lines.append(f"| {arm.name} | " + " | ".join(f"{means[m]:.3f}" for m in METRICS) + " |")
    by_name = {a.name: a for a in arms}
    lines += ["", "| paired difference (all_precision) | mean | 95% CI |", "|---|---|---|"]
    for a, b in pairs:
        mean, low, high = paired_difference(by_name[a].per_prompt["all_precision"], by_name[b].per_prompt["all_precision"])
        rows.append({"table": title, "arm": f"{a} - {b}", "prompts": len(by_name[a].per_prompt["all_precision"]),
                     "all_precision": mean, "ci_low": low, "ci_high": high})
        lines.append(f"| {a} - {b} | {mean:+.3f} | [{low:+.3f}, {high:+.3f}] |")
    return "\n".join(lines) + "\n", rows


def run_comparisons(
    stage_models: dict[str, str], sd_base_model: str, base_model: str, tracking_uri: str, prepared_root: Path,
    prompts: int = 48, say: Callable[[str], None] = print,
) -> tuple[str, list[dict], str]:
    """Evaluate every arm, log the tables to a new MLflow run; returns (markdown, rows, run id)."""
    import mlflow

    paths = {name: resolve_model_path(ref, tracking_uri) for name, ref in stage_models.items()}
    vae = load_autoencoder(paths["stage 3"] / "vae").eval()
    data = held_out(prepared_root, "paraimage_big", prompts, vae.config.sample_size)
    texts, objects = data["texts"], data["objects"]
    say(f"{len(texts)} held-out paraimage_big paragraphs with ground-truth scenes")
    arms: dict[str, Arm] = {}

    def add(name: str, images: list) -> None:
        arms[name] = Arm(name, images, per_prompt_scores(images, objects))
        say(f"  {name}: all_precision {np.mean(arms[name].per_prompt['all_precision']):.3f}")

    for name, path in paths.items():
        add(name, paradiffusion_images(path, texts, vae))
    add("stage 2 Base (no LoRA)", paradiffusion_images(resolve_model_path(base_model, tracking_uri), texts, vae))
    add("floor: stage 3, empty prompt", paradiffusion_images(paths["stage 3"], texts, vae, empty=True))
    add("ceiling: real images", pixels_to_images(data["pixels"]))
    add("ceiling: VAE round-trip", roundtrip_images(vae, data["pixels"]))
    sd_path = resolve_model_path(sd_base_model, tracking_uri)
    sd = SDBase.from_pretrained(sd_path)
    context = sd.text_encoder.config.max_position_embeddings
    long_ids = [i for i, t in enumerate(texts) if len(sd.tokenizer(t, add_special_tokens=False)["input_ids"]) + 2 > context]
    say(f"{len(long_ids)} of {len(texts)} paragraphs exceed sd_base's {context}-token context")
    sd_images = sd_base_images(sd_path, [texts[i] for i in long_ids], load_autoencoder(sd_path / "vae").eval())
    long_objects = [objects[i] for i in long_ids]
    sd_arm = Arm("sd_base (CLIP text encoder, truncates)", sd_images, per_prompt_scores(sd_images, long_objects))
    para_long = Arm("ParaDiffusion stage 3", [arms["stage 3"].images[i] for i in long_ids],
                    {m: [arms["stage 3"].per_prompt[m][i] for i in long_ids] for m in METRICS})

    ceiling = [arms["ceiling: real images"], arms["ceiling: VAE round-trip"], arms["floor: stage 3, empty prompt"]]
    t10, r10 = table("Table 10 direction: stages on held-out paragraphs",
                     [arms["stage 1"], arms["stage 2"], arms["stage 3"], *ceiling],
                     [("stage 2", "stage 1"), ("stage 3", "stage 2")])
    t6, r6 = table("Table 6 direction: LoRA vs Base in stage 2", [arms["stage 2"], arms["stage 2 Base (no LoRA)"]],
                   [("stage 2", "stage 2 Base (no LoRA)")])
    f21, r21 = table(f"Figure 21 direction: paragraphs longer than sd_base's {context}-token context",
                     [para_long, sd_arm], [("ParaDiffusion stage 3", "sd_base (CLIP text encoder, truncates)")])
    markdown = "\n".join([t10, t6, f21])
    rows = r10 + r6 + r21
    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    experiment = client.get_experiment_by_name("genops-paradiffusion")
    run = client.create_run(experiment.experiment_id, run_name="paradiffusion-comparisons",
                            tags={"genops.recipe": "paradiffusion_comparisons",
                                  **{f"genops.model.{k}": v for k, v in {**stage_models, "sd_base": sd_base_model,
                                                                         "stage2_base": base_model}.items()}})
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=["table", "arm", "prompts", *METRICS, "ci_low", "ci_high"])
    writer.writeheader()
    writer.writerows(rows)
    client.log_text(run.info.run_id, markdown, "comparisons/tables.md")
    client.log_text(run.info.run_id, buffer.getvalue(), "comparisons/tables.csv")
    client.log_table(run.info.run_id, {k: [r.get(k) for r in rows] for k in ["table", "arm", "prompts", *METRICS, "ci_low", "ci_high"]},
                     "comparisons/tables.json")
    client.log_text(run.info.run_id, json.dumps({a.name: a.per_prompt for a in arms.values()}), "comparisons/per_prompt.json")
    client.set_terminated(run.info.run_id, "FINISHED")
    return markdown, rows, run.info.run_id
