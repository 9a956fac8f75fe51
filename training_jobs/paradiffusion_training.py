"""What the three ParaDiffusion stage recipes share: their data section, the stage loop, the held-out
paragraph evaluation, the lineage tags and the registered pyfunc wrapper (composition, no base recipe).

Every stage trains `components.models.paradiffusion.ParaDiffusion` with the noise-prediction loss on
VAE latents encoded once (the VAE is frozen), drops 10% of texts for classifier-free guidance, and at
its end evaluates and logs, with the EMA weights and fixed seeds, the same held-out paragraphs
(`data.eval_dataset`'s val split): a sample grid, the text faithfulness of the samples against the
scenes' ground truth, beside the ceiling (real images; their VAE round-trips) and the floor (the
same noise sampled from the empty prompt).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import mlflow.pyfunc
import pandas as pd
import torch

from components.data.buckets import make_buckets
from components.data.training_data import ShardDataset, collate_pairs, image_grid, pair_bucket_decoder, pair_decoder
from components.diffusion import drop_captions
from components.metrics.faithfulness import text_faithfulness
from components.models.autoencoder import (
    encode_latents,
    latent_shape,
    load_autoencoder,
    pixels_to_images,
    roundtrip_images,
    scene_named_objects,
)
from components.models.paradiffusion import ParaDiffusion
from training_jobs.data_loading import bucketed_batch_stream, encoded_batch_stream, first_samples, shard_paths
from training_jobs.loop import evaluation_weights, seed_everything, unwrap
from training_jobs.model_inputs import model_lineage_tags, resolve_model_path
from training_jobs.worker import WorkerContext, report, run_steps, start_training

EVAL_SEED = 1
GRID_SEED = 0


@dataclass
class StageData:
    prepared_root: str = "data/prepared"
    """Root of the prepared datasets (DVC outputs)."""
    datasets: list[str] = field(default_factory=lambda: ["laion_short"])
    """Prepared caption/paragraph datasets this stage trains on."""
    vae: str = "models:/genops-vae@champion"
    """The frozen autoencoder (folder or registry URI); empty = the vae/ saved in data.init's folder."""
    llm: str = "models:/genops-llm-base@champion"
    """Stage 1: the LLM text encoder and its tokenizer (llm_base export, or a local Llama-2-7B folder)."""
    init: str = ""
    """Stages 2-3: the previous stage's model (registry URI models:/genops-paradiffusion-stage<N>/latest or a folder)."""
    low_res_size: int = 0
    """Progressive resolution (SDXL-style, Sec. 4.1): image side of the first `low_res_steps` steps (0: off)."""
    low_res_steps: int = 0
    """Steps trained at `low_res_size` before switching to the VAE's full size."""
    aspect_buckets: bool = False
    """Aspect-ratio bucketing (SDXL-style multi-aspect training, `components.data.buckets`): images keep their
    aspect ratio in buckets of about the training side's area; off: every image resized to a square."""
    bucket_step: int = 64
    """Bucket sides are multiples of this (a multiple of the VAE factor times the UNet's downsampling)."""
    bucket_max_ratio: float = 2.0
    """The widest (and tallest) bucket's aspect ratio."""
    eval_dataset: str = "paraimage_big"
    """Held-out paragraphs (its val split) every stage is evaluated and sampled on (the same for all stages)."""
    grid_prompts: int = 8
    """Held-out paragraphs in the fixed-seed sample grid logged at the end."""
    eval_prompts: int = 32
    """Held-out paragraphs whose samples are judged against the scene ground truth at the end (0: skip)."""

    def __post_init__(self) -> None:
        if (self.low_res_size > 0) != (self.low_res_steps > 0):
            raise ValueError("data.low_res_size and data.low_res_steps go together: set both (or both 0)")


def stage_datasets(data: StageData) -> list[str]:
    return list(dict.fromkeys([*data.datasets, data.eval_dataset]))


def latent_batches(cfg, vae, size: int, ctx: WorkerContext, seed: int, unet_factor: int = 1) -> Iterator[dict]:
    """Shuffled batches of the train split's latents at image side `size` (encoded once), with captions; with
    data.aspect_buckets, at the buckets of about size x size area, one bucket per batch."""
    shards = shard_paths(Path(cfg.data.prepared_root), cfg.data.datasets, "train")
    if cfg.data.aspect_buckets:
        multiple = 2 ** (len(vae.config.block_out_channels) - 1) * unet_factor
        step = cfg.data.bucket_step
        if step % multiple or size % step:
            raise ValueError(f"data.bucket_step={step} must be a multiple of {multiple} (the VAE's factor times the "
                             f"UNet's downsampling) and divide the image side {size}")
        buckets = make_buckets(size, step, cfg.data.bucket_max_ratio)
        samples = ShardDataset(shards, pair_bucket_decoder(buckets), rank=ctx.rank, world_size=ctx.world_size)
        return bucketed_batch_stream(
            samples, collate_pairs, lambda batch: {"latents": encode_latents(vae, batch["pixels"].to(ctx.device))},
            cfg.train.batch_size, seed=seed)
    return encoded_batch_stream(
        shards, pair_decoder(size), collate_pairs,
        lambda batch: {"latents": encode_latents(vae, batch["pixels"].to(ctx.device))},
        cfg.train.batch_size, seed=seed, rank=ctx.rank, world_size=ctx.world_size,
    )


def progressive_batches(cfg, vae, ctx: WorkerContext, start: int, unet_factor: int = 1) -> Iterator[dict]:
    """`low_res_steps` batches at `low_res_size` (from step `start`), then full-size batches forever."""
    full = vae.config.sample_size
    seed = cfg.train.seed + start
    low_left = max(0, cfg.data.low_res_steps - start)
    if low_left:
        yield from itertools.islice(latent_batches(cfg, vae, cfg.data.low_res_size, ctx, seed, unet_factor), low_left)
    yield from latent_batches(cfg, vae, full, ctx, seed, unet_factor)


def train_stage(ctx: WorkerContext, cfg, paradiffusion: ParaDiffusion, vae, tags: dict[str, str]) -> None:
    """Train `paradiffusion` for cfg.train.steps, evaluate on the held-out paragraphs, report the export."""
    if paradiffusion.latent_shape != latent_shape(vae):
        raise ValueError(
            f"model.unet (latent {paradiffusion.latent_shape}) does not fit the VAE (latent {latent_shape(vae)}): set "
            "model.unet.sample_size and model.unet.latent_channels from the VAE's config"
        )
    factor = 2 ** (len(vae.config.block_out_channels) - 1) * 2 ** (len(paradiffusion.unet.config.block_out_channels) - 1)
    if cfg.data.low_res_size % factor:
        raise ValueError(f"data.low_res_size={cfg.data.low_res_size} must be a multiple of {factor} (VAE x UNet downsampling)")
    trainable, total = paradiffusion.text_encoder_parameters()
    run = start_training(ctx, paradiffusion, cfg.train)
    model, ema = run.model, run.ema
    if ctx.log.enabled:
        for key, value in tags.items():
            ctx.log.client.set_tag(ctx.log.run_id, key, value)
    ctx.log.metrics({"lora/trainable_parameters": trainable, "lora/text_encoder_parameters": total,
                     "lora/trainable_percent": 100.0 * trainable / total,
                     "unet/parameters": sum(p.numel() for p in paradiffusion.unet.parameters())}, run.start)
    noise = torch.Generator(ctx.device).manual_seed(cfg.train.seed + 1000 * ctx.rank + run.start)
    dropout = torch.Generator().manual_seed(cfg.train.seed + 2000 + 1000 * ctx.rank + run.start)
    batches = progressive_batches(cfg, vae, ctx, run.start, 2 ** (len(paradiffusion.unet.config.block_out_channels) - 1))
    condition_dropout = paradiffusion.cfg.diffusion.condition_dropout
    eval_root = Path(cfg.data.prepared_root)
    count = max(cfg.data.grid_prompts, cfg.data.eval_prompts, 1)
    held_out = collate_pairs(first_samples(shard_paths(eval_root, [cfg.data.eval_dataset], "val"),
                                           pair_decoder(vae.config.sample_size), count))

    def compute_losses(batch) -> dict[str, torch.Tensor]:
        texts = drop_captions(batch["caption"], condition_dropout, generator=dropout)
        input_ids, attention_mask = unwrap(model).tokenize(texts)
        return model(batch["latents"], input_ids, attention_mask, generator=noise)

    def save_final(path: Path) -> None:
        run.save(path, cfg.train.steps)
        with evaluation_weights(model, ema) as module:
            module.save_pretrained(path / "export", vae=vae)

    grid = held_out["caption"][: cfg.data.grid_prompts]
    run_steps(ctx, run, batches, compute_losses, cfg.train,
              on_sample=lambda step: log_grid(model, ema, vae, grid, ctx, step))

    final_metrics: dict[str, float] = {"step": cfg.train.steps, "lora/trainable_parameters": trainable,
                                       "lora/text_encoder_parameters": total,
                                       "lora/trainable_percent": 100.0 * trainable / total}
    if ctx.is_main:
        with torch.no_grad(), evaluation_weights(model, ema) as module:
            module.eval()
            latents = encode_latents(vae, held_out["pixels"].to(ctx.device))
            losses = module(latents, *module.tokenize(held_out["caption"]), generator=torch.Generator(ctx.device).manual_seed(0))
            final_metrics.update({"val/loss": float(losses["loss"]), "val/mse": float(losses["mse"])})
            if cfg.data.eval_prompts:
                final_metrics.update(paragraph_faithfulness(module, vae, held_out, cfg.data.eval_prompts, ctx.device))
        ctx.log.metrics(final_metrics, cfg.train.steps)
        log_grid(model, ema, vae, grid, ctx, cfg.train.steps)
        ctx.log.text("\n\n".join(grid) + "\n", "samples/prompts.txt")
    report(ctx, final_metrics, save_final)


@torch.no_grad()
def paragraph_faithfulness(module: ParaDiffusion, vae, held_out: dict, count: int, device, prefix: str = "eval/"
                           ) -> dict[str, float]:
    """Text faithfulness (object / attribute / location / all, colour placement) of samples of held-out
    paragraphs against their scenes, beside the real images and VAE round-trips (ceilings) and the same
    noise sampled from the empty prompt (floor)."""
    named = scene_named_objects(held_out["groundtruth"][:count])
    keep = [i for i, objects in enumerate(named) if objects]
    if not keep:
        return {}
    texts = [held_out["caption"][i] for i in keep]
    objects = [named[i] for i in keep]
    generated = module.generate(texts, vae, generator=torch.Generator(device).manual_seed(EVAL_SEED))
    floor = module.generate([""] * len(texts), vae, generator=torch.Generator(device).manual_seed(EVAL_SEED))
    real = held_out["pixels"][keep].to(device)
    out = {}
    for name, images in (("", pixels_to_images(generated)), ("empty_prompt_", pixels_to_images(floor)),
                         ("real_images_", pixels_to_images(real)), ("vae_roundtrip_", roundtrip_images(vae, real))):
        metrics = text_faithfulness(images, objects)
        out[f"{prefix}{name}object_precision"] = metrics.object_precision
        out[f"{prefix}{name}attribute_precision"] = metrics.attribute_precision
        out[f"{prefix}{name}location_precision"] = metrics.location_precision or 0.0
        out[f"{prefix}{name}all_precision"] = metrics.all_precision
        out[f"{prefix}{name}colour_placement_precision"] = metrics.colour_placement_precision
    out[f"{prefix}prompts"] = float(len(keep))
    out[f"{prefix}mean_prompt_tokens"] = float(module.tokenize(texts)[1].sum(dim=1).float().mean())
    return out


@torch.no_grad()
def log_grid(model, ema, vae, texts: list[str], ctx: WorkerContext, step: int) -> None:
    """A fixed-seed sample grid of held-out paragraphs (same noise every time: grids compare across steps and stages)."""
    with evaluation_weights(model, ema) as module:
        module.eval()
        pixels = module.generate(texts, vae, generator=torch.Generator(ctx.device).manual_seed(GRID_SEED))
        module.train()
    ctx.log.image(image_grid(pixels, columns=min(4, len(texts))), f"samples/grid_step{step:06d}.png")


def stage_vae(cfg, init_path: Path | None, ctx: WorkerContext):
    """The frozen VAE: data.vae, or the one saved beside data.init's model."""
    if cfg.data.vae:
        path = resolve_model_path(cfg.data.vae, cfg.tracking.tracking_uri)
    elif init_path is not None and (init_path / "vae").is_dir():
        path = init_path / "vae"
    else:
        raise FileNotFoundError("data.vae is empty and data.init's folder has no vae/: set data.vae")
    vae = load_autoencoder(path).to(ctx.device).eval()
    vae.requires_grad_(False)
    return vae


def continued_model(cfg, ctx: WorkerContext) -> tuple[ParaDiffusion, object, dict[str, str]]:
    """Stages 2-3: the previous stage's model from data.init, adapted with cfg.model (LoRA settings)."""
    if not cfg.data.init:
        raise ValueError("data.init is empty: give the previous stage's model (models:/genops-paradiffusion-stage<N>/latest or a folder)")
    init_path = resolve_model_path(cfg.data.init, cfg.tracking.tracking_uri)
    vae = stage_vae(cfg, init_path, ctx)
    seed_everything(cfg.train.seed)
    paradiffusion = ParaDiffusion.from_pretrained(init_path, trainable_lora=True)
    paradiffusion.unet.requires_grad_(True)
    if paradiffusion.has_lora:
        saved = paradiffusion.cfg.lora
        if cfg.model.rank != saved.rank or cfg.model.alpha != saved.alpha or list(cfg.model.target_modules) != list(saved.target_modules):
            raise ValueError(
                f"data.init's adapter is rank {saved.rank}, alpha {saved.alpha}, {saved.target_modules} but model says rank "
                f"{cfg.model.rank}, alpha {cfg.model.alpha}, {cfg.model.target_modules}: match model.* to the init model"
            )
    elif cfg.model.rank:
        paradiffusion.add_lora(cfg.model)
    paradiffusion.cfg.diffusion.condition_dropout = cfg.condition_dropout
    tags = model_lineage_tags(cfg.data.init, cfg.tracking.tracking_uri, "genops.init_model")
    return paradiffusion, vae, tags


class ParaDiffusionModel(mlflow.pyfunc.PythonModel):
    """Input column `prompt` (a paragraph) -> column `image` (base64 PNG); params: steps, guidance_scale, seed."""

    def load_context(self, context) -> None:
        self.model = ParaDiffusion.from_pretrained(Path(context.artifacts["weights"])).eval()
        self.vae = load_autoencoder(Path(context.artifacts["weights"]) / "vae").eval()

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        from training_jobs.pyfunc_models import _column, _encode_png

        params = params or {}
        with torch.no_grad():
            pixels = self.model.generate(
                _column(model_input, "prompt"), self.vae, num_inference_steps=int(params.get("steps", 25)),
                guidance_scale=float(params.get("guidance_scale", self.model.cfg.diffusion.guidance_scale)),
                generator=torch.Generator().manual_seed(int(params.get("seed", 0))),
            )
        return pd.DataFrame({"image": [_encode_png(i) for i in pixels_to_images(pixels)]})
