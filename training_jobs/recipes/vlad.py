"""Recipe: VLAD (`vlad`), contrastive alignment + CCM + layout-then-visual diffusion on text-rich data.

    genops train vlad --profile demo data.lvlm=models:/genops-clip-base@champion data.vae=models:/genops-vae@champion

The LVLM is the registered `clip_base` with LoRA (`components/models/vlad.py`); images go through the
frozen shared VAE once (cache_latents). The training set is the MARIO-format text-rich images
(word boxes, charseg.npy) plus the ParaImage-format multi-object scenes; every sample carries its
ground-truth layout latent (word regions, object regions, character ink) at the latent resolution.
One stage: the VFE trains on ground-truth layouts (with `model.layout.predicted_layout_prob` of the
TLG's own), so it needs no TLG warm-up; the TLG trains beside it on eq. 6. The Table II ablations
are `model.ccm.enabled=false` and `model.layout.enabled=false` with everything else equal.
"""

from __future__ import annotations

import io
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import torch
from PIL import Image

from components.config import from_dict
from components.data.training_data import decode_image, image_grid, sample_image_bytes
from components.diffusion import condition_dropout_mask
from components.models.autoencoder import encode_latents, latent_shape, load_autoencoder
from components.models.clip_base import ClipBase
from components.models.vlad import VLAD, VLADConfig, layout_image, layout_target
from training_jobs.data_loading import encoded_batch_stream, first_samples, shard_paths
from training_jobs.launcher import RunSection, ScalingSection
from training_jobs.loop import TrainConfig, evaluation_weights, export_state_dict, seed_everything
from training_jobs.model_inputs import resolve_model_path
from training_jobs.tracking import TrackingConfig
from training_jobs.worker import report, run_steps, start_training, worker_context

MODEL_CONFIG = "vlad"


@dataclass
class DataSection:
    prepared_root: str = "data/prepared"
    """Root of the prepared datasets (DVC outputs)."""
    datasets: list[str] = field(default_factory=lambda: ["mario_laion", "paraimage_small"])
    """Prepared text-rich (MARIO format) and multi-object scene (ParaImage format) datasets to train on."""
    lvlm: str = "models:/genops-clip-base@champion"
    """The LVLM: a clip_base folder or registry URI (its tokenizer is the model's); never the evaluator."""
    vae: str = "models:/genops-vae@champion"
    """The frozen autoencoder: a save_pretrained folder, or a registry URI models:/<name>/<version|latest>."""
    grid_prompts: int = 8
    """Validation prompts in the fixed-seed sample grid (and its layout grid)."""
    val_samples: int = 32
    """Validation samples for the final losses at fixed noise."""


@dataclass
class Config:
    model: VLADConfig = field(default_factory=VLADConfig)
    """LVLM LoRA, CCM, TLG, VFE and diffusion settings (model.lvlm is taken from the loaded clip_base)."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Shared training-loop settings."""
    data: DataSection = field(default_factory=DataSection)
    """Which prepared datasets, LVLM and VAE the job uses."""
    scaling: ScalingSection = field(default_factory=ScalingSection)
    """Ray Train workers and resources."""
    run: RunSection = field(default_factory=RunSection)
    """Run name (resume key) and storage."""
    tracking: TrackingConfig = field(
        default_factory=lambda: TrackingConfig(experiment="genops-vlad", registered_model="genops-vlad")
    )
    """MLflow experiment, registry name and lineage."""


def datasets(cfg: Config) -> list[str]:
    return list(cfg.data.datasets)


class VladModel(mlflow.pyfunc.PythonModel):
    """Input column `prompt` -> columns `image` and `layout` (base64 PNGs); params: steps, guidance_scale, seed."""

    def load_context(self, context) -> None:
        weights = Path(context.artifacts["weights"])
        self.model = VLAD.from_pretrained(weights).eval()
        self.vae = load_autoencoder(weights / "vae").eval()

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        import base64

        from components.models.autoencoder import pixels_to_images

        params = params or {}
        pixels, layouts = self.model.generate(
            list(model_input["prompt"]), self.vae, num_inference_steps=int(params.get("steps", 25)),
            guidance_scale=float(params.get("guidance_scale", 3.0)),
            generator=torch.Generator().manual_seed(int(params.get("seed", 0))),
        )

        def png(image: Image.Image) -> str:
            buffer = io.BytesIO()
            image.save(buffer, format="PNG")
            return base64.b64encode(buffer.getvalue()).decode()

        images = [png(i) for i in pixels_to_images(pixels)]
        layout_pngs = [png(Image.fromarray(layout_image(z))) for z in layouts] if layouts is not None else [""] * len(images)
        return pd.DataFrame({"image": images, "layout": layout_pngs})


def pyfunc_model():
    return VladModel()


def sample_layout(meta: dict[str, Any], image_size: tuple[int, int], charseg: np.ndarray | None, side: int) -> torch.Tensor:
    """The ground-truth layout latent of one prepared sample: OCR word boxes, scene objects, charseg ink."""
    boxes = []
    for word in meta.get("words") or []:
        quad = word["quad"]
        xs, ys = quad[0::2], quad[1::2]
        boxes.append((min(xs), min(ys), max(xs), max(ys)))
    groundtruth = meta.get("groundtruth") or {}
    scene = groundtruth.get("scene") or {}
    return layout_target(side, image_size, boxes, scene.get("objects") or [], charseg)


def layout_decoder(image_size: int, latent_side: int):
    """Decoder of text-rich / scene samples: {"id", "pixels", "caption", "layout", "groundtruth"}."""

    def decode(sample: dict[str, bytes]) -> dict[str, Any]:
        meta = json.loads(sample["json"])
        data = sample_image_bytes(sample)
        with Image.open(io.BytesIO(data)) as image:
            size = image.size
        charseg = np.load(io.BytesIO(sample["charseg.npy"])) if "charseg.npy" in sample else None
        return {
            "id": meta["id"],
            "pixels": decode_image(data, image_size),
            "caption": meta["caption"],
            "layout": sample_layout(meta, size, charseg, latent_side),
            "groundtruth": meta.get("groundtruth"),
        }

    return decode


def collate_layouts(batch: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "id": [b["id"] for b in batch],
        "pixels": torch.stack([b["pixels"] for b in batch]),  # (B, 3, H, W)
        "caption": [b["caption"] for b in batch],
        "layout": torch.stack([b["layout"] for b in batch]),  # (B, 3, h, w)
        "groundtruth": [b["groundtruth"] for b in batch],
    }


def train(config: dict) -> None:
    cfg = from_dict(Config, config)
    ctx = worker_context(cfg.tracking, cfg.run.storage_path, cfg.run.name)

    # setup
    vae = load_autoencoder(resolve_model_path(cfg.data.vae, cfg.tracking.tracking_uri)).to(ctx.device).eval()
    vae.requires_grad_(False)
    lvlm = ClipBase.from_pretrained(resolve_model_path(cfg.data.lvlm, cfg.tracking.tracking_uri))
    if lvlm.cfg is None:
        raise ValueError(f"data.lvlm={cfg.data.lvlm} has no genops_clip_base.json: point it at a clip_base model")
    model_cfg = cfg.model
    model_cfg.lvlm = lvlm.cfg
    # ParaImage paragraphs run past the text tower's positions on every batch: said once, then quiet
    logging.getLogger("components.models.clip_evaluator").setLevel(logging.ERROR)
    print(f"[vlad] prompts longer than {lvlm.max_length} tokens are truncated to the text tower's context")
    seed_everything(cfg.train.seed)
    vlad = VLAD.from_config(model_cfg, lvlm.tokenizer, clip=lvlm.model)
    if vlad.latent_shape != latent_shape(vae):
        raise ValueError(
            f"model.unet (latent {vlad.latent_shape}) does not fit the VAE at {cfg.data.vae} (latent {latent_shape(vae)}): "
            "set model.unet.sample_size and model.unet.latent_channels from the VAE's config"
        )
    run = start_training(ctx, vlad, cfg.train)
    model, ema = run.model, run.ema
    noise = torch.Generator(ctx.device).manual_seed(cfg.train.seed + 1000 * ctx.rank + run.start)
    dropout = torch.Generator().manual_seed(cfg.train.seed + 7 + 1000 * ctx.rank + run.start)
    root = Path(cfg.data.prepared_root)
    decode = layout_decoder(vae.config.sample_size, model_cfg.unet.sample_size)
    batches = encoded_batch_stream(
        shard_paths(root, cfg.data.datasets, "train"), decode, collate_layouts,
        lambda b: {"latents": encode_latents(vae, b["pixels"].to(ctx.device)), "pixels": b["pixels"], "layout": b["layout"]},
        cfg.train.batch_size, seed=cfg.train.seed + run.start, rank=ctx.rank, world_size=ctx.world_size,
    )
    val = collate_layouts(first_samples(shard_paths(root, cfg.data.datasets, "val"),
                                         decode, max(cfg.data.val_samples, cfg.data.grid_prompts, 2)))

    def compute_losses(batch) -> dict[str, torch.Tensor]:
        drop = condition_dropout_mask(len(batch["caption"]), model_cfg.diffusion.condition_dropout, dropout).to(ctx.device)
        return model(batch["latents"].to(ctx.device), batch["pixels"].to(ctx.device), batch["caption"],
                     batch["layout"].to(ctx.device), condition_dropout=drop, generator=noise)

    def save_final(path: Path) -> None:
        run.save(path, cfg.train.steps)
        final = VLAD.from_config(model_cfg, lvlm.tokenizer)
        final.load_state_dict(export_state_dict(model, ema))
        final.save_pretrained(path / "export", vae=vae)

    # train
    grid_prompts = val["caption"][: cfg.data.grid_prompts]
    run_steps(ctx, run, batches, compute_losses, cfg.train,
              on_sample=lambda step: _log_samples(model, ema, vae, grid_prompts, ctx, step))

    # save: validation losses at fixed noise with the EMA weights, the TLG's layout error, a final grid, the export
    final_metrics: dict[str, float] = {"step": cfg.train.steps}
    if ctx.is_main:
        with torch.no_grad(), evaluation_weights(model, ema) as module:
            module.eval()
            fixed = torch.Generator(ctx.device).manual_seed(0)
            latents = encode_latents(vae, val["pixels"].to(ctx.device))
            losses = module(latents, val["pixels"].to(ctx.device), val["caption"], val["layout"].to(ctx.device),
                            generator=fixed)
            final_metrics.update({f"val/{k}": float(v) for k, v in losses.items()})
        ctx.log.metrics(final_metrics, cfg.train.steps)
        _log_samples(model, ema, vae, grid_prompts, ctx, cfg.train.steps)
        ctx.log.text("\n".join(grid_prompts), "samples/prompts.txt")
    report(ctx, final_metrics, save_final)


@torch.no_grad()
def _log_samples(model, ema, vae, prompts: list[str], ctx, step: int) -> None:
    """Fixed-seed grids of the validation prompts' images and of the TLG's predicted layouts."""
    with evaluation_weights(model, ema) as module:
        module.eval()
        pixels, layouts = module.generate(prompts, vae, generator=torch.Generator(ctx.device).manual_seed(0))
        module.train()
    columns = min(4, len(prompts))
    ctx.log.image(image_grid(pixels, columns=columns), f"samples/grid_step{step:06d}.png")
    if layouts is not None:
        as_pixels = torch.stack([torch.from_numpy(layout_image(z, scale=1)).permute(2, 0, 1) for z in layouts])
        ctx.log.image(image_grid(as_pixels.float() / 127.5 - 1.0, columns=columns), f"samples/layout_step{step:06d}.png")
