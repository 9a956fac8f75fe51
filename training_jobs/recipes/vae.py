"""Recipe: the shared latent autoencoder (`vae`), a diffusers AutoencoderKL trained on every prepared image.

    genops train vae --profile demo [train.steps=600 ...]

Loss: per-pixel reconstruction (+ an optional Sobel edge term, our stand-in for LPIPS) + KL, and from
`model.discriminator_start` on a PatchGAN discriminator's hinge loss with taming-transformers'
adaptive weight (latent diffusion, Rombach et al. 2022, Sec. 3 and App. G). Each step first updates
the discriminator on the batch and its detached reconstructions (its own Adam optimizer, saved with
every checkpoint), then the autoencoder against the updated discriminator. After training, the latent
scaling factor is measured on training images (1 / std of the latents) and stored in the exported
config, so every diffusion model in the project sees unit-variance latents, and the round-trips of
fixed validation images are scored with the scene faithfulness detector (`eval/roundtrip_*`): the
ceiling of any model that draws through this autoencoder.
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
    adversarial_generator_loss,
    build_autoencoder,
    build_discriminator,
    compute_scaling_factor,
    decode_latents,
    decoder_last_layer,
    discriminator_loss,
    encode_latents,
    roundtrip_faithfulness,
    save_autoencoder,
    set_scaling_factor,
)
from training_jobs.data_loading import batch_stream, first_samples, shard_paths
from training_jobs.launcher import RunSection, ScalingSection
from training_jobs.loop import (
    ExponentialMovingAverage,
    TrainConfig,
    clip_gradients,
    evaluation_weights,
    export_state_dict,
    seed_everything,
    unwrap,
)
from training_jobs.tracking import TrackingConfig
from training_jobs.worker import prepare_model, report, run_steps, start_training, worker_context

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
    eval_datasets: list[str] = field(default_factory=lambda: ["laion_short"])
    """Prepared datasets whose first validation images (with scene ground truth) score the round-trips."""
    eval_images: int = 96
    """Validation images whose round-trips are scored with the faithfulness detector at the end (0: skip)."""


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
    autoencoder = AutoencoderWithLoss(build_autoencoder(cfg.model), cfg.model)
    extra = {}
    if cfg.model.uses_discriminator:
        discriminator = prepare_model(build_discriminator(cfg.model))
        discriminator_optimizer = torch.optim.Adam(discriminator.parameters(), lr=cfg.model.discriminator_lr,
                                                   betas=cfg.model.discriminator_betas)
        extra = {"discriminator": discriminator, "discriminator_optimizer": discriminator_optimizer}
    run = start_training(ctx, autoencoder, cfg.train, extra)
    model, ema = run.model, run.ema
    root = Path(cfg.data.prepared_root)
    decode = pair_decoder(cfg.model.sample_size)
    train_shards = shard_paths(root, cfg.data.datasets, "train")
    batches = batch_stream(train_shards, decode, collate_pairs, cfg.train.batch_size, seed=cfg.train.seed + run.start,
                           rank=ctx.rank, world_size=ctx.world_size, workers=cfg.train.dataloader_workers)
    val_pixels = collate_pairs(first_samples(shard_paths(root, cfg.data.datasets, "val"), decode,
                                             cfg.data.grid_images))["pixels"].to(ctx.device)

    def compute_losses(batch) -> dict[str, torch.Tensor]:
        pixels = batch["pixels"].to(ctx.device)
        losses = model(pixels)
        reconstructed = losses.pop("reconstructed")
        # the scheduler has stepped once per finished optimizer step (restored on resume): this step's index
        if cfg.model.discriminator_active(run.scheduler.last_epoch):
            # discriminator first, on this batch's detached reconstructions, then the generator against it
            # (with train.grad_accum_steps > 1 the discriminator steps once per micro-batch)
            discriminator, discriminator_optimizer = run.extra["discriminator"], run.extra["discriminator_optimizer"]
            terms = discriminator_loss(discriminator, pixels, reconstructed)
            discriminator_optimizer.zero_grad(set_to_none=True)
            terms["discriminator"].backward()
            clip_gradients(discriminator.parameters(), cfg.train)
            discriminator_optimizer.step()
            adversarial = adversarial_generator_loss(unwrap(discriminator), reconstructed, losses["reconstruction"],
                                                     decoder_last_layer(unwrap(model).vae),
                                                     cfg.model.discriminator_weight)
            losses["loss"] = losses["loss"] + adversarial.pop("loss")
            losses.update(terms)
            losses.update(adversarial)
        return losses

    def save_final(path: Path, scaling_factor: float) -> None:
        run.save(path, cfg.train.steps)
        final = build_autoencoder(cfg.model)
        final.load_state_dict(_weights(model, ema))
        set_scaling_factor(final, scaling_factor)
        save_autoencoder(final, path / "export")

    # train
    run_steps(ctx, run, batches, compute_losses, cfg.train,
              on_sample=lambda step: _log_reconstructions(model, ema, val_pixels, ctx, step))

    # save: measure the latent scaling factor, validation error and round-trip faithfulness with the
    # final (EMA) weights, export
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
            val_mse = float((val["reconstructed"].clamp(-1, 1) - val_pixels).pow(2).mean())
        final_metrics.update({"val/reconstruction": float(val["reconstruction"]), "val/mse": val_mse,
                              "scaling_factor": scaling_factor})
        if cfg.data.eval_images:
            final_metrics.update(_roundtrip_metrics(final, root, cfg.data, decode, ctx.device))
        ctx.log.metrics(final_metrics, cfg.train.steps)
        _log_reconstructions(model, ema, val_pixels, ctx, cfg.train.steps)
    report(ctx, final_metrics, lambda path: save_final(path, scaling_factor))


def _roundtrip_metrics(vae, root: Path, data: DataSection, decode, device: torch.device) -> dict[str, float]:
    """Faithfulness rows of the round-trips of the first `data.eval_images` validation images with a scene."""
    samples = [s for s in first_samples(shard_paths(root, data.eval_datasets, "val"), decode, 4 * data.eval_images)
               if s["groundtruth"] and "scene" in s["groundtruth"]][: data.eval_images]
    if not samples:
        raise ValueError(f"data.eval_images={data.eval_images} but the val splits of data.eval_datasets="
                         f"{data.eval_datasets} hold no image with scene ground truth; set data.eval_images=0 to skip")
    batch = collate_pairs(samples)
    pixels = batch["pixels"].to(device)
    through_vae, real = roundtrip_faithfulness(vae, pixels, batch["groundtruth"])
    with torch.no_grad():
        mse = float((decode_latents(vae, encode_latents(vae, pixels)) - pixels).pow(2).mean())
    return {
        "eval/roundtrip_mse": mse,
        "eval/roundtrip_object": through_vae.object_precision,
        "eval/roundtrip_attribute": through_vae.attribute_precision,
        "eval/roundtrip_location": through_vae.location_precision or 0.0,
        "eval/roundtrip_all_three": through_vae.all_precision,
        "eval/roundtrip_colour_placement": through_vae.colour_placement_precision,
        "eval/real_images_all_three": real.all_precision,
        "eval/real_images_colour_placement": real.colour_placement_precision,
        "eval/roundtrip_objects": float(through_vae.objects),
    }


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
