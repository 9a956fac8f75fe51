"""Recipe: the shared latent autoencoder (`vae`), a diffusers AutoencoderKL trained on every prepared image.

    genops train vae --profile demo [train.steps=600 ...]

Loss: per-pixel reconstruction + KL (latent diffusion, Rombach et al. 2022, Sec. 3). After training,
the latent scaling factor is measured on training images (1 / std of the latents) and stored in the
exported config, so every diffusion model in the project sees unit-variance latents.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path

import torch

from components.config import from_dict
from components.data.training_data import collate_pairs, image_grid, pair_decoder
from components.models.autoencoder import (
    AutoencoderConfig,
    AutoencoderWithLoss,
    build_autoencoder,
    compute_scaling_factor,
    save_autoencoder,
    set_scaling_factor,
)
from training_jobs.data_loading import batch_stream, first_samples, shard_paths
from training_jobs.launcher import RunSection, ScalingSection
from training_jobs.loop import (
    ExponentialMovingAverage,
    TrainConfig,
    evaluation_weights,
    export_state_dict,
    seed_everything,
)
from training_jobs.tracking import TrackingConfig
from training_jobs.worker import report, run_steps, start_training, worker_context

MODEL_CONFIG = "vae"


@dataclass
class DataSection:
    prepared_root: str = "data/prepared"
    """Root of the prepared datasets (DVC outputs)."""
    datasets: list[str] = field(default_factory=lambda: ["laion_short", "paraimage_big", "cc3m"])
    """Prepared caption-image datasets whose images the autoencoder trains on."""
    scaling_images: int = 256
    """Training images used to measure the latent scaling factor."""
    grid_images: int = 8
    """Validation images shown (original over reconstruction) in the sample grid."""


@dataclass
class Config:
    model: AutoencoderConfig = field(default_factory=AutoencoderConfig)
    """Autoencoder architecture and loss weights."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Shared training-loop settings."""
    data: DataSection = field(default_factory=DataSection)
    """Which prepared datasets feed the job."""
    scaling: ScalingSection = field(default_factory=ScalingSection)
    """Ray Train workers and resources."""
    run: RunSection = field(default_factory=RunSection)
    """Run name (resume key) and storage."""
    tracking: TrackingConfig = field(default_factory=lambda: TrackingConfig(experiment="genops-base-models", registered_model="genops-vae"))
    """MLflow experiment, registry name and lineage."""


def datasets(cfg: Config) -> list[str]:
    return list(cfg.data.datasets)


def pyfunc_model():
    from training_jobs.pyfunc_models import AutoencoderModel

    return AutoencoderModel()


def train(config: dict) -> None:
    cfg = from_dict(Config, config)
    ctx = worker_context(cfg.tracking, cfg.run.storage_path, cfg.run.name)

    # setup: identical initial weights on every rank, then rank-specific data order and noise
    seed_everything(cfg.train.seed)
    run = start_training(ctx, AutoencoderWithLoss(build_autoencoder(cfg.model), cfg.model), cfg.train)
    model, ema = run.model, run.ema
    root = Path(cfg.data.prepared_root)
    decode = pair_decoder(cfg.model.sample_size)
    train_shards = shard_paths(root, cfg.data.datasets, "train")
    batches = batch_stream(train_shards, decode, collate_pairs, cfg.train.batch_size, seed=cfg.train.seed + run.start,
                           rank=ctx.rank, world_size=ctx.world_size, workers=cfg.train.dataloader_workers)
    val_pixels = collate_pairs(first_samples(shard_paths(root, cfg.data.datasets, "val"), decode,
                                             cfg.data.grid_images))["pixels"].to(ctx.device)

    def save_final(path: Path, scaling_factor: float) -> None:
        run.save(path, cfg.train.steps)
        final = build_autoencoder(cfg.model)
        final.load_state_dict(_weights(model, ema))
        set_scaling_factor(final, scaling_factor)
        save_autoencoder(final, path / "export")

    # train
    run_steps(ctx, run, batches, lambda batch: model(batch["pixels"].to(ctx.device)), cfg.train,
              on_sample=lambda step: _log_reconstructions(model, ema, val_pixels, ctx, step))

    # save: measure the latent scaling factor and validation error with the final (EMA) weights, export
    final_metrics: dict[str, float] = {"step": cfg.train.steps}
    scaling_factor = None
    if ctx.is_main:
        final = build_autoencoder(cfg.model).to(ctx.device).eval()
        final.load_state_dict(_weights(model, ema))
        scaling_batches = batch_stream(train_shards, decode, collate_pairs, cfg.train.batch_size, seed=cfg.train.seed)
        with torch.no_grad():
            scaling_factor = compute_scaling_factor(
                final, (next(scaling_batches)["pixels"].to(ctx.device) for _ in itertools.count()),
                max_images=cfg.data.scaling_images,
            )
            val = AutoencoderWithLoss(final, cfg.model)(val_pixels, generator=torch.Generator(ctx.device).manual_seed(0))
        final_metrics.update({"val/reconstruction": float(val["reconstruction"]), "scaling_factor": scaling_factor})
        ctx.log.metrics(final_metrics, cfg.train.steps)
        _log_reconstructions(model, ema, val_pixels, ctx, cfg.train.steps)
    report(ctx, final_metrics, lambda path: save_final(path, scaling_factor))


def _weights(model, ema: ExponentialMovingAverage | None) -> dict[str, torch.Tensor]:
    """The autoencoder's weights to export (EMA ones when there is an EMA), without the loss wrapper's prefix."""
    return {k.removeprefix("vae."): v for k, v in export_state_dict(model, ema).items()}


@torch.no_grad()
def _log_reconstructions(model, ema, pixels: torch.Tensor, ctx, step: int) -> None:
    """Originals (top row) over reconstructions (bottom row), with the EMA weights."""
    with evaluation_weights(model, ema) as module:
        module.eval()
        reconstructed = module.vae.decode(module.vae.encode(pixels).latent_dist.mode()).sample
        module.train()
    grid = image_grid(torch.cat([pixels, reconstructed.clamp(-1, 1)]), columns=pixels.shape[0])
    ctx.log.image(grid, f"samples/reconstructions_step{step:06d}.png")
