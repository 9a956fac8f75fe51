"""Recipe: the evaluator CLIP (`clip_evaluator`), trained contrastively on a split no generator sees.

    genops train clip_evaluator --profile demo

Symmetric InfoNCE over each batch's image-text similarities (Radford et al. 2021) on the `holdout`
split of the prepared caption datasets, so CLIP score, CLIP-I/T and CLIP-feature FID on the
embedded default are not judged by a model that shares training images with the generators.
Real runs point metrics at real CLIP weights instead (a local folder).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import AutoTokenizer

from components.config import from_dict
from components.data.training_data import collate_pairs, pair_decoder
from components.models.clip_evaluator import ClipEvaluator, ClipEvaluatorConfig
from training_jobs.data_loading import batch_stream, first_samples, shard_paths
from training_jobs.launcher import RunSection, ScalingSection
from training_jobs.loop import TrainConfig, evaluation_weights, export_state_dict, seed_everything, unwrap
from training_jobs.tracking import TrackingConfig
from training_jobs.worker import report, run_steps, start_training, worker_context

MODEL_CONFIG = "clip_evaluator"


@dataclass
class DataSection:
    prepared_root: str = "data/prepared"
    """Root of the prepared datasets (DVC outputs)."""
    datasets: list[str] = field(default_factory=lambda: ["laion_short", "cc3m"])
    """Prepared caption datasets whose held-out split trains the evaluator."""
    train_split: str = "holdout"
    """The split to train on: one no generator trains on."""
    tokenizer: str = "data/tokenizer"
    """Tokenizer folder (Hugging Face format)."""
    val_pairs: int = 64
    """Validation pairs for the final retrieval accuracy."""


@dataclass
class Config:
    model: ClipEvaluatorConfig = field(default_factory=ClipEvaluatorConfig)
    """Text and vision towers and the joint space."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Shared training-loop settings."""
    data: DataSection = field(default_factory=DataSection)
    """Which prepared datasets and split feed the job."""
    scaling: ScalingSection = field(default_factory=ScalingSection)
    """Ray Train workers and resources."""
    run: RunSection = field(default_factory=RunSection)
    """Run name (resume key) and storage."""
    tracking: TrackingConfig = field(
        default_factory=lambda: TrackingConfig(experiment="genops-base-models", registered_model="genops-clip-evaluator")
    )
    """MLflow experiment, registry name and lineage."""


def datasets(cfg: Config) -> list[str]:
    return list(cfg.data.datasets)


def pyfunc_model():
    from training_jobs.pyfunc_models import ClipEvaluatorModel

    return ClipEvaluatorModel()


@torch.no_grad()
def retrieval_accuracy(clip: ClipEvaluator, pixels: torch.Tensor, captions: list[str]) -> float:
    """Top-1 image->text and text->image retrieval accuracy over a batch, averaged."""
    image = clip.embed_images(pixels)  # (N, P)
    text = clip.embed_texts(captions)  # (N, P)
    similarity = image @ text.t()  # (N, N)
    labels = torch.arange(len(captions), device=similarity.device)
    return float(((similarity.argmax(1) == labels).float().mean() + (similarity.argmax(0) == labels).float().mean()) / 2)


def train(config: dict) -> None:
    cfg = from_dict(Config, config)
    ctx = worker_context(cfg.tracking, cfg.run.storage_path, cfg.run.name)

    # setup
    tokenizer = AutoTokenizer.from_pretrained(cfg.data.tokenizer)
    seed_everything(cfg.train.seed)
    run = start_training(ctx, ClipEvaluator.from_config(cfg.model, tokenizer), cfg.train)
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
        final = ClipEvaluator.from_config(cfg.model, tokenizer)
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
