"""Contrastive CLIP training, shared by the two CLIP recipes: `clip_evaluator` and `clip_base`.

Symmetric InfoNCE over each batch's image-text similarities (Radford et al. 2021, Figure 3) on one
split of the prepared caption datasets, then top-1 retrieval on fixed validation pairs and the
export. The recipes differ only in what they train (the split, the registry name, the model class
whose folder says which model it is); the loop is written once, here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import AutoTokenizer

from components.data.training_data import collate_pairs, pair_decoder
from components.models.clip_evaluator import ClipEvaluator
from training_jobs.data_loading import batch_stream, first_samples, shard_paths
from training_jobs.loop import evaluation_weights, export_state_dict, seed_everything, unwrap
from training_jobs.worker import report, run_steps, start_training, worker_context


@dataclass
class ClipDataSection:
    prepared_root: str = "data/prepared"
    """Root of the prepared datasets (DVC outputs)."""
    datasets: list[str] = field(default_factory=lambda: ["laion_short", "cc3m"])
    """Prepared caption datasets whose `train_split` trains the model."""
    train_split: str = "train"
    """The split to train on."""
    tokenizer: str = "data/tokenizer"
    """Tokenizer folder (Hugging Face format)."""
    val_pairs: int = 64
    """Validation pairs for the final retrieval accuracy (chance is 1 / val_pairs)."""


@torch.no_grad()
def retrieval_accuracy(clip: ClipEvaluator, pixels: torch.Tensor, captions: list[str]) -> float:
    """Top-1 image->text and text->image retrieval accuracy over a batch, averaged."""
    image = clip.embed_images(pixels)  # (N, P)
    text = clip.embed_texts(captions)  # (N, P)
    similarity = image @ text.t()  # (N, N)
    labels = torch.arange(len(captions), device=similarity.device)
    return float(((similarity.argmax(1) == labels).float().mean() + (similarity.argmax(0) == labels).float().mean()) / 2)


def train_clip(cfg: Any, model_class: type[ClipEvaluator]) -> None:
    """The Ray Train loop of a CLIP recipe: `cfg` is the recipe's typed Config (model, train, data:
    ClipDataSection, run, tracking); `model_class` builds, trains and exports the model."""
    ctx = worker_context(cfg.tracking, cfg.run.storage_path, cfg.run.name)

    # setup
    tokenizer = AutoTokenizer.from_pretrained(cfg.data.tokenizer)
    seed_everything(cfg.train.seed)
    run = start_training(ctx, model_class.from_config(cfg.model, tokenizer), cfg.train)
    model, ema = run.model, run.ema
    root = Path(cfg.data.prepared_root)
    decode = pair_decoder(cfg.model.vision.image_size)
    batches = batch_stream(shard_paths(root, cfg.data.datasets, cfg.data.train_split), decode, collate_pairs,
                           cfg.train.batch_size, seed=cfg.train.seed + run.start, rank=ctx.rank,
                           world_size=ctx.world_size, workers=cfg.train.dataloader_workers)
    val = collate_pairs(first_samples(shard_paths(root, cfg.data.datasets, "val"), decode, cfg.data.val_pairs))

    def compute_losses(batch) -> dict[str, torch.Tensor]:
        input_ids, attention_mask = unwrap(model).tokenize(batch["caption"])
        return model(batch["pixels"].to(ctx.device), input_ids, attention_mask)

    def save_final(path: Path) -> None:
        run.save(path, cfg.train.steps)
        final = model_class.from_config(cfg.model, tokenizer)
        final.load_state_dict(export_state_dict(model, ema))
        final.save_pretrained(path / "export")

    # train
    run_steps(ctx, run, batches, compute_losses, cfg.train)

    # save: retrieval accuracy on validation pairs (chance is 1/N), then the export
    final_metrics: dict[str, float] = {"step": cfg.train.steps}
    if ctx.is_main:
        with evaluation_weights(model, ema) as module:
            module.eval()
            final_metrics["val/retrieval_top1"] = retrieval_accuracy(module, val["pixels"].to(ctx.device), val["caption"])
        final_metrics["val/chance"] = 1.0 / len(val["caption"])
        ctx.log.metrics(final_metrics, cfg.train.steps)
    report(ctx, final_metrics, save_final)
