"""Recipe: the SD-style base model (`sd_base`), CLIP text encoder + UNet trained on short captions.

    genops train sd_base --profile demo data.vae=<vae model folder or models:/genops-vae@champion>
    genops train sd_base --profile demo data.init=models:/genops-sd-base@champion   # continue from its weights

Latent diffusion (Rombach et al. 2022): images go through the frozen shared VAE (a posterior sample,
scaled by its measured factor), the UNet learns the noise-prediction loss (min-SNR-weighted if the
model config says so), and 10% of captions drop to the empty prompt for classifier-free guidance.
Sample grids use fixed validation prompts and a fixed seed with the EMA weights.

`data.init` starts from a registered sd_base's weights instead of random ones (fine-tuning: the
`sd_base_finetune` recipe, VLAD Table I's "Fine-tuned SD"); the run is tagged genops.init_model_* with
the version and run it came from.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import AutoTokenizer

from components.config import from_dict
from components.data.scene import Scene
from components.data.training_data import collate_pairs, image_grid, pair_decoder
from components.diffusion import drop_captions
from components.metrics.faithfulness import NamedObject, text_faithfulness
from components.models.autoencoder import (
    decode_latents,
    encode_latents,
    latent_shape,
    load_autoencoder,
    pixels_to_images,
)
from components.models.sd_base import SDBase, SDBaseConfig, architecture_differences
from training_jobs.data_loading import batch_stream, encoded_batch_stream, first_samples, shard_paths
from training_jobs.launcher import RunSection, ScalingSection
from training_jobs.loop import TrainConfig, evaluation_weights, export_state_dict, seed_everything, unwrap
from training_jobs.model_inputs import model_lineage_tags, resolve_model_path
from training_jobs.tracking import TrackingConfig
from training_jobs.worker import report, run_steps, start_training, worker_context

log = logging.getLogger(__name__)

MODEL_CONFIG = "sd_base"


@dataclass
class DataSection:
    prepared_root: str = "data/prepared"
    """Root of the prepared datasets (DVC outputs)."""
    datasets: list[str] = field(default_factory=lambda: ["laion_short"])
    """Prepared short-caption datasets to train on."""
    tokenizer: str = "data/tokenizer"
    """Tokenizer folder (Hugging Face format): the project's BPE or a pretrained one."""
    vae: str = "models:/genops-vae@champion"
    """The frozen autoencoder: a save_pretrained folder, or a registry URI models:/<name>/<version|latest>;
    empty: the vae/ saved in data.init's export (with data.init, the VAE must be that one)."""
    cache_latents: bool = True
    """Encode the train split with the frozen VAE once and train from memory (demo); off for corpora
    too large to hold (paper), where each batch is streamed from shards and encoded on the fly."""
    grid_prompts: int = 8
    """Validation prompts in the fixed-seed sample grid."""
    eval_prompts: int = 32
    """Validation prompts whose samples are checked against the scene ground truth at the end (0: skip)."""
    one_object_steps: int = 0
    """Curriculum: the first this many steps train on one-object scenes only (then every scene)."""
    init: str | None = None
    """Start from these sd_base weights (an export folder, models:/<name>/<version|latest> or models:/<name>@<alias>)
    instead of random ones; its text encoder, UNet and noise schedule must be model.* and its tokenizer data.tokenizer.
    Null: random init."""


@dataclass
class Config:
    model: SDBaseConfig = field(default_factory=SDBaseConfig)
    """Text encoder, UNet and diffusion settings."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Shared training-loop settings."""
    data: DataSection = field(default_factory=DataSection)
    """Which prepared datasets, tokenizer and VAE the job uses."""
    scaling: ScalingSection = field(default_factory=ScalingSection)
    """Ray Train workers and resources."""
    run: RunSection = field(default_factory=RunSection)
    """Run name (resume key) and storage."""
    tracking: TrackingConfig = field(
        default_factory=lambda: TrackingConfig(experiment="genops-base-models", registered_model="genops-sd-base")
    )
    """MLflow experiment, registry name and lineage."""


def datasets(cfg: Config) -> list[str]:
    return list(cfg.data.datasets)


def pyfunc_model():
    from training_jobs.pyfunc_models import TextToImageModel

    return TextToImageModel()


def train(config: dict) -> None:
    cfg = from_dict(Config, config)
    ctx = worker_context(cfg.tracking, cfg.run.storage_path, cfg.run.name)

    # setup
    tokenizer = AutoTokenizer.from_pretrained(cfg.data.tokenizer)
    init, init_path = load_init(cfg, tokenizer) if cfg.data.init is not None else (None, None)
    vae = load_vae(cfg, init_path).to(ctx.device).eval()
    vae.requires_grad_(False)
    model_cfg = cfg.model
    seed_everything(cfg.train.seed)
    sd = init if init is not None else SDBase.from_config(model_cfg, tokenizer)
    if sd.latent_shape != latent_shape(vae):
        raise ValueError(
            f"model.unet (latent {sd.latent_shape}) does not fit the VAE at {cfg.data.vae or init_path} (latent {latent_shape(vae)}): set "
            "model.unet.sample_size and model.unet.latent_channels from the VAE's config"
        )
    run = start_training(ctx, sd, cfg.train)
    model, ema = run.model, run.ema
    if cfg.data.init is not None and ctx.log.enabled:
        for key, value in model_lineage_tags(cfg.data.init, cfg.tracking.tracking_uri, "genops.init_model").items():
            ctx.log.client.set_tag(ctx.log.run_id, key, value)
    noise = torch.Generator(ctx.device).manual_seed(cfg.train.seed + 1000 * ctx.rank + run.start)
    dropout = torch.Generator().manual_seed(cfg.train.seed + 7 + 1000 * ctx.rank + run.start)
    root = Path(cfg.data.prepared_root)
    decode = pair_decoder(vae.config.sample_size)
    train_shards = shard_paths(root, cfg.data.datasets, "train")
    if cfg.data.cache_latents:
        batches = encoded_batch_stream(
            train_shards, decode, collate_pairs, lambda b: {"latents": encode_latents(vae, b["pixels"].to(ctx.device))},
            cfg.train.batch_size, seed=cfg.train.seed + run.start, rank=ctx.rank, world_size=ctx.world_size,
        )
    else:
        batches = batch_stream(train_shards, decode, collate_pairs, cfg.train.batch_size, seed=cfg.train.seed + run.start,
                               rank=ctx.rank, world_size=ctx.world_size, workers=cfg.train.dataloader_workers)
    if cfg.data.one_object_steps > run.start:
        batches = one_object_first(batches, cfg.data.one_object_steps - run.start, cfg.train.batch_size)
    val_count = max(cfg.data.grid_prompts, cfg.data.eval_prompts, 2)
    val = collate_pairs(first_samples(shard_paths(root, cfg.data.datasets, "val"), decode, val_count))

    def compute_losses(batch) -> dict[str, torch.Tensor]:
        if "latents" in batch:
            latents = batch["latents"]  # (B, C, h, w), encoded once
        else:
            with torch.no_grad():
                # posterior means: deterministic, and free of the variance of latent elements the decoder ignores
                latents = encode_latents(vae, batch["pixels"].to(ctx.device))  # (B, C, h, w)
        captions = drop_captions(batch["caption"], model_cfg.diffusion.condition_dropout, generator=dropout)
        input_ids, attention_mask = unwrap(model).tokenize(captions)
        return model(latents, input_ids, attention_mask, generator=noise)

    def save_final(path: Path) -> None:
        run.save(path, cfg.train.steps)
        final = SDBase.from_config(model_cfg, tokenizer)
        final.load_state_dict(export_state_dict(model, ema))
        final.save_pretrained(path / "export", vae=vae)

    # train
    grid_prompts = val["caption"][: cfg.data.grid_prompts]
    run_steps(ctx, run, batches, compute_losses, cfg.train,
              on_sample=lambda step: _log_samples(model, ema, vae, grid_prompts, ctx, step))

    # save: validation loss at fixed noise with the EMA weights, a final sample grid, the export
    final_metrics: dict[str, float] = {"step": cfg.train.steps}
    if ctx.is_main:
        with torch.no_grad(), evaluation_weights(model, ema) as module:
            module.eval()
            fixed = torch.Generator(ctx.device).manual_seed(0)
            latents = encode_latents(vae, val["pixels"].to(ctx.device))
            losses = module(latents, *module.tokenize(val["caption"]), generator=fixed)
            final_metrics.update({"val/loss": float(losses["loss"]), "val/mse": float(losses["mse"])})
            final_metrics.update(_prompt_following(module, vae, val, cfg.data.eval_prompts, ctx.device))
        ctx.log.metrics(final_metrics, cfg.train.steps)
        _log_samples(model, ema, vae, val["caption"][: cfg.data.grid_prompts], ctx, cfg.train.steps)
        ctx.log.text("\n".join(val["caption"][: cfg.data.grid_prompts]), "samples/prompts.txt")
    report(ctx, final_metrics, save_final)


def load_init(cfg: Config, tokenizer) -> tuple[SDBase, Path]:
    """The sd_base export `data.init` names, as the model this run trains (and its folder): its weights,
    this config's `model` (which must describe the same architecture and noise schedule) and
    `data.tokenizer` (which must be the tokenizer it was trained with). Anything else is refused naming data.init."""
    from mlflow.exceptions import MlflowException

    try:
        path = resolve_model_path(cfg.data.init, cfg.tracking.tracking_uri)
        saved = SDBase.from_pretrained(path)
    except (OSError, ValueError, MlflowException) as exc:
        raise ValueError(f"data.init={cfg.data.init} could not be loaded as an sd_base export: {exc}") from exc
    differences = architecture_differences(cfg.model, saved.cfg)
    if differences:
        raise ValueError(
            f"data.init={cfg.data.init} is another sd_base architecture than model.* ({'; '.join(differences)}; "
            "config vs data.init): set model.* to the init model's values (its genops_sd_base.json)"
        )
    if saved.tokenizer is None:
        raise ValueError(f"data.init={cfg.data.init} has no tokenizer/ folder: it cannot be checked against data.tokenizer")
    if saved.tokenizer.get_vocab() != tokenizer.get_vocab() or saved.tokenizer.all_special_tokens != tokenizer.all_special_tokens:
        raise ValueError(
            f"data.init={cfg.data.init} was trained with another tokenizer than data.tokenizer={cfg.data.tokenizer} "
            f"({len(saved.tokenizer)} vs {len(tokenizer)} tokens): its token embeddings would mean other words; "
            "set data.tokenizer to the init model's tokenizer/ folder"
        )
    saved.text_encoder.requires_grad_(not cfg.model.freeze_text_encoder)
    log.info("data.init: starting from the weights of %s (%s)", cfg.data.init, path)
    return SDBase(cfg.model, saved.text_encoder, saved.unet, tokenizer), path


def load_vae(cfg: Config, init_path: Path | None):
    """The frozen VAE: data.vae, or (empty) the vae/ saved in data.init's export. A model fine-tuned from
    data.init must stay in the latent space it learnt: a data.vae other than the init's own is refused."""
    saved = init_path / "vae" if init_path is not None and (init_path / "vae").is_dir() else None
    if not cfg.data.vae:
        if saved is None:
            raise ValueError(f"data.vae is empty and data.init={cfg.data.init} has no vae/ folder: set data.vae")
        return load_autoencoder(saved)
    vae = load_autoencoder(resolve_model_path(cfg.data.vae, cfg.tracking.tracking_uri))
    if saved is not None:
        theirs = load_autoencoder(saved)
        ours_state, theirs_state = vae.state_dict(), theirs.state_dict()
        same = (vae.config.scaling_factor == theirs.config.scaling_factor and ours_state.keys() == theirs_state.keys()
                and all(torch.equal(ours_state[k], theirs_state[k]) for k in ours_state))
        if not same:
            raise ValueError(
                f"data.vae={cfg.data.vae} is not the VAE data.init={cfg.data.init} was trained with (weights or scaling "
                "factor differ), so its latents are another space: leave data.vae empty to use data.init's vae/"
            )
    return vae


def one_object_first(batches: Iterator[dict], steps: int, batch_size: int) -> Iterator[dict]:
    """The first `steps` batches from the one-object scenes of `batches` only (their rows regrouped into
    full batches), then `batches` as they come: a curriculum from single objects to scenes."""
    pending: list[dict] = []
    made = 0
    for batch in batches:
        if made >= steps:
            yield batch
            continue
        for i, gt in enumerate(batch["groundtruth"]):
            if gt and "scene" in gt and len(gt["scene"]["objects"]) == 1:
                pending.append({key: value[i] for key, value in batch.items()})
        while len(pending) >= batch_size and made < steps:
            rows, pending = pending[:batch_size], pending[batch_size:]
            yield {key: torch.stack([r[key] for r in rows]) if isinstance(rows[0][key], torch.Tensor)
                   else [r[key] for r in rows] for key in rows[0]}
            made += 1


@torch.no_grad()
def _prompt_following(module: SDBase, vae, val: dict, count: int, device: torch.device) -> dict[str, float]:
    """Do samples follow their prompts? Text faithfulness of generated images against the validation
    captions' scene ground truth (object / attribute / location / colour-placement precision), beside
    the same metric on the real validation images (the detector's ceiling) and on their VAE
    round-trips (the ceiling of any model that draws through this VAE)."""
    named = [[NamedObject.from_scene_object(o) for o in Scene.from_json(gt["scene"]).objects]
             if gt and "scene" in gt else [] for gt in val["groundtruth"][:count]]
    keep = [i for i, objects in enumerate(named) if objects]
    if not keep:
        return {}
    prompts = [val["caption"][i] for i in keep]
    generated = pixels_to_images(module.generate(prompts, vae, generator=torch.Generator(device).manual_seed(1)))
    real_pixels = val["pixels"][keep]
    roundtrip = pixels_to_images(decode_latents(vae, encode_latents(vae, real_pixels.to(device))))
    objects = [named[i] for i in keep]
    ours = text_faithfulness(generated, objects)
    ceiling = text_faithfulness(pixels_to_images(real_pixels), objects)
    through_vae = text_faithfulness(roundtrip, objects)
    return {
        "eval/object_precision": ours.object_precision,
        "eval/attribute_precision": ours.attribute_precision,
        "eval/location_precision": ours.location_precision or 0.0,
        "eval/all_precision": ours.all_precision,
        "eval/colour_placement_precision": ours.colour_placement_precision,
        "eval/real_images_all_precision": ceiling.all_precision,
        "eval/vae_roundtrip_all_precision": through_vae.all_precision,
        "eval/vae_roundtrip_colour_placement_precision": through_vae.colour_placement_precision,
    }


@torch.no_grad()
def _log_samples(model, ema, vae, prompts: list[str], ctx, step: int) -> None:
    """A fixed-seed grid of the validation prompts (same noise every time, so grids compare across steps)."""
    with evaluation_weights(model, ema) as module:
        module.eval()
        pixels = module.generate(prompts, vae, generator=torch.Generator(ctx.device).manual_seed(0))
        module.train()
    ctx.log.image(image_grid(pixels, columns=min(4, len(prompts))), f"samples/grid_step{step:06d}.png")
