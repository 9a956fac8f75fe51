"""Evaluations of the base models the families build on: `vae`, `clip_base`, `clip_evaluator`, `llm_base`.

- `vae`: round-trips of the held-out laion_short test images (encode to the posterior mean, decode):
  PSNR / MSE of the reconstruction, and the text faithfulness of the scenes read back from the
  round-trips (what any latent generator drawing through this VAE can at best give back); the
  ceiling row is the same detector on the original images.
- `clip_base` and `clip_evaluator`: top-1 retrieval (image -> text and text -> image, averaged) over
  the laion_short test pairs, a split neither trains on (clip_base trains on `train`, the evaluator
  on `holdout`); the floor row is chance (1 / pairs). Each CLIP is scored with its own embeddings:
  the evaluator here is the model under test, not a judge of another model.
- `llm_base`: perplexity and next-token accuracy on held-out paraimage_big paragraphs (the test
  split; llm_base trains on `train`), with the recipe's own aggregation (`held_out_metrics`); the
  floor row is a unigram model of the same tokens (the best any model that ignores context can do).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from components.data.shards import list_shards
from components.data.text_corpus import decode_document, packed_blocks
from components.data.training_data import ShardDataset, image_grid
from components.metrics.clip_score import ClipEmbedder
from components.metrics.comparison import Column, Row
from components.models.autoencoder import (
    decode_latents,
    encode_latents,
    images_to_pixels,
    load_autoencoder,
    pixels_to_images,
    roundtrip_faithfulness,
)
from components.models.llm_base import LlmBase
from training_jobs.evaluation import BenchmarkRow, EvaluationOutcome, EvaluationSpec, register_evaluation

FAITHFULNESS = ("object", "attribute", "all", "colour_placement")


@torch.no_grad()
def score_vae(model_dir: Path, rows: list[BenchmarkRow], inputs: dict[str, Any]) -> EvaluationOutcome:
    """Round-trip reconstruction and round-trip faithfulness of the benchmark images."""
    vae = load_autoencoder(model_dir).eval()
    pixels = images_to_pixels([r.image for r in rows], size=vae.config.sample_size)  # (N, 3, S, S)
    restored = decode_latents(vae, encode_latents(vae, pixels))  # posterior mean: deterministic, (N, 3, S, S)
    mse = (restored - pixels).pow(2).flatten(1).mean(1)  # (N,)
    # PSNR of images in [-1, 1]: the peak-to-peak range is 2, so MAX^2 = 4.
    psnr = 10 * torch.log10(4.0 / mse.clamp_min(1e-10))
    through_vae, real = roundtrip_faithfulness(vae, pixels, [r.groundtruth for r in rows])
    metrics = {"roundtrip_psnr": float(psnr.mean()), "roundtrip_mse": float(mse.mean())}
    metrics.update({f"roundtrip_faithfulness_{m}": float(getattr(through_vae, f"{m}_precision")) for m in FAITHFULNESS})
    ceiling = {f"roundtrip_faithfulness_{m}": float(getattr(real, f"{m}_precision")) for m in FAITHFULNESS}
    images = pixels_to_images(restored)
    samples = [{"id": r.id, "prompt": r.prompt, "image": image, "roundtrip_psnr": float(p), "roundtrip_mse": float(e)}
               for r, image, p, e in zip(rows, images, psnr, mse)]
    shown = min(8, len(rows))  # originals above their round-trips
    grid = image_grid(torch.cat([pixels[:shown], restored[:shown]]), columns=shown)
    return EvaluationOutcome(
        metrics=metrics, samples=samples, grid=grid,
        baselines=[Row("Original images (detector ceiling)", "ceiling", ceiling)],
        facts={"named_objects": str(through_vae.objects), "image_size": str(vae.config.sample_size)},
    )


@torch.no_grad()
def score_clip(model_dir: Path, rows: list[BenchmarkRow], inputs: dict[str, Any]) -> EvaluationOutcome:
    """Top-1 retrieval of the benchmark's pairs with the model's own embeddings."""
    if len(rows) < 2:
        raise ValueError(f"retrieval needs at least 2 benchmark pairs, got {len(rows)}: raise the benchmark size")
    embedder = ClipEmbedder(model_dir)
    captions = [r.prompt for r in rows]
    similarity = embedder.embed_images([r.image for r in rows]) @ embedder.embed_texts(captions).t()  # (N, N)
    labels = torch.arange(len(rows))
    image_to_text = (similarity.argmax(1) == labels).float()  # (N,)
    text_to_image = (similarity.argmax(0) == labels).float()  # (N,)
    chance = 1.0 / len(rows)
    top1 = float((image_to_text.mean() + text_to_image.mean()) / 2)
    metrics = {"retrieval_top1": top1, "retrieval_image_to_text": float(image_to_text.mean()),
               "retrieval_text_to_image": float(text_to_image.mean()), "retrieval_top1_x_chance": top1 / chance}
    # rank 1 = the caption is the image's nearest text
    ranks = (similarity > similarity.diagonal()[:, None]).sum(1) + 1  # (N,)
    samples = [{"id": r.id, "prompt": r.prompt, "image": r.image, "caption_rank": int(k),
                "image_to_text_top1": float(a), "text_to_image_top1": float(b)}
               for r, k, a, b in zip(rows, ranks, image_to_text, text_to_image)]
    return EvaluationOutcome(
        metrics=metrics, samples=samples, grid=None,
        baselines=[Row("Chance (1 / pairs)", "floor", {"retrieval_top1": chance, "retrieval_image_to_text": chance,
                                                        "retrieval_text_to_image": chance,
                                                        "retrieval_top1_x_chance": 1.0})],
        facts={"pairs": str(len(rows)), "clip_model": embedder.name},
    )


def text_rows(prepared_root: Path, dataset: str, split: str, count: int) -> list[BenchmarkRow]:
    """The first `count` documents of a prepared split as text-only benchmark rows, in shard order."""
    shards = list_shards(Path(prepared_root) / dataset, split)
    if not shards:
        raise FileNotFoundError(f"{prepared_root}/{dataset} has no {split!r} shards: prepare the dataset first")
    rows = []
    for i, text in enumerate(ShardDataset(shards, decode_document)):
        if text:
            rows.append(BenchmarkRow(f"{dataset}-{split}-{i:05d}", text, None, None))
        if len(rows) == count:
            break
    return rows


@torch.no_grad()
def score_llm(model_dir: Path, rows: list[BenchmarkRow], inputs: dict[str, Any]) -> EvaluationOutcome:
    """Held-out perplexity and next-token accuracy of the benchmark documents, packed as in training."""
    from training_jobs.recipes.llm_base import held_out_metrics

    model = LlmBase.from_pretrained(model_dir).eval()
    block_size = min(int(inputs.get("block_size", 64)), model.model.config.max_position_embeddings)
    texts = [r.prompt for r in rows]
    found = held_out_metrics(model, {"benchmark": packed_blocks(model.tokenizer, texts, block_size)},
                             int(inputs.get("batch_size", 32)), model.device)
    metrics = {"perplexity": found["val/perplexity"], "next_token_accuracy": found["val/next_token_accuracy"],
               "perplexity_over_unigram": found["val/perplexity"] / found["val/unigram_perplexity"],
               "tokens": found["val/tokens"]}
    samples = []
    for row in rows:
        blocks = packed_blocks(model.tokenizer, [row.prompt], block_size)
        out = model(blocks["input_ids"], blocks["attention_mask"], blocks["labels"])
        samples.append({"id": row.id, "prompt": row.prompt, "perplexity": math.exp(float(out["nll_sum"]) / float(out["tokens"])),
                        "next_token_accuracy": float(out["correct"]) / float(out["tokens"])})
    return EvaluationOutcome(
        metrics=metrics, samples=samples, grid=None,
        baselines=[Row("Unigram model of the same tokens (floor)", "floor",
                       {"perplexity": found["val/unigram_perplexity"], "perplexity_over_unigram": 1.0})],
        facts={"block_size": str(block_size), "documents": str(len(rows))},
    )


CLIP_COLUMNS = (
    Column("retrieval_top1", "Top-1 (mean)", True),
    Column("retrieval_image_to_text", "Image->text", True),
    Column("retrieval_text_to_image", "Text->image", True),
    Column("retrieval_top1_x_chance", "x chance", True),
)

VAE = register_evaluation(EvaluationSpec(
    family="vae",
    registered_model="genops-vae",
    training_asset="vae",
    benchmark_dataset="laion_short",
    benchmark_split="test",
    benchmark_size={"tiny": 4, "demo": 48, "paper": 2000},
    score=score_vae,
    columns=(
        Column("roundtrip_psnr", "PSNR (dB)", True),
        Column("roundtrip_mse", "MSE", False),
        *(Column(f"roundtrip_faithfulness_{m}", f"Round-trip {m.replace('_', ' ')}", True) for m in FAITHFULNESS),
    ),
    table_title="VAE round-trips of held-out images (reconstruction and the faithfulness left to generators)",
    model_row_name="VAE round-trip",
    reference_split=None,
    uses_clip_evaluator=False,
))

CLIP_BASE = register_evaluation(EvaluationSpec(
    family="clip_base",
    registered_model="genops-clip-base",
    training_asset="clip_base",
    benchmark_dataset="laion_short",
    benchmark_split="test",
    benchmark_size={"tiny": 4, "demo": 64, "paper": 1000},
    score=score_clip,
    columns=CLIP_COLUMNS,
    table_title="clip_base: top-1 retrieval on held-out pairs",
    model_row_name="clip_base",
    reference_split=None,
    uses_clip_evaluator=False,
))

CLIP_EVALUATOR = register_evaluation(EvaluationSpec(
    family="clip_evaluator",
    registered_model="genops-clip-evaluator",
    training_asset="clip_evaluator",
    benchmark_dataset="laion_short",
    benchmark_split="test",
    benchmark_size={"tiny": 4, "demo": 64, "paper": 1000},
    score=score_clip,
    columns=CLIP_COLUMNS,
    table_title="clip_evaluator: top-1 retrieval on held-out pairs (the judge of every CLIP metric)",
    model_row_name="clip_evaluator",
    reference_split=None,
    uses_clip_evaluator=False,  # it is the model under test here, scored by its own embeddings
))

LLM_BASE = register_evaluation(EvaluationSpec(
    family="llm_base",
    registered_model="genops-llm-base",
    training_asset="llm_base",
    benchmark_dataset="paraimage_big",
    benchmark_split="test",
    benchmark_size={"tiny": 4, "demo": 48, "paper": 2000},
    score=score_llm,
    columns=(
        Column("perplexity", "Perplexity", False),
        Column("next_token_accuracy", "Next-token acc.", True),
        Column("perplexity_over_unigram", "PPL / unigram PPL", False),
    ),
    table_title="llm_base on held-out paragraphs (perplexity, next-token accuracy)",
    model_row_name="llm_base",
    reference_split=None,
    uses_clip_evaluator=False,
    benchmark_rows=text_rows,
))
