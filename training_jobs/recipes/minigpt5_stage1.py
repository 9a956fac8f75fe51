"""Recipe: MiniGPT-5 stage 1, pre-training on CC3M-format caption-image pairs (paper Sec. 3.3, 4.1).

    genops train minigpt5_stage1 --profile demo
    (data.llm / data.visual_encoder / data.generator default to the registered llm_base, clip_base, sd_base)

The caption is the LLM's input and the eight vokens its answer; trained: the voken rows of the input
and output embeddings, the feature mapper (MLP, enc-dec, q) and, because no MiniGPT-4 checkpoint
exists here, the visual pooler and projection (an image -> caption term with the LLM frozen).
Loss: 0.01 L_text + 1 L_LDM + 0.1 L_CAP (the paper's lambdas) + imgcap x the captioning term. The
frozen image tower's states, the VAE latents and the generator's caption features are computed once
(every encoder here is frozen). The recipe only trains and registers: CLIP-I / CLIP-T of images drawn for
held-out pairs with the evaluator CLIP (Table 5's columns, beside the ground-truth ceiling and the
zero-voken floor) are the registered version's evaluation (`training_jobs.minigpt5_evaluation.STAGE1`,
the `minigpt5_stage1_evaluation` asset), and the Table 5 ablation scores its arms the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from components.config import from_dict
from components.data.training_data import collate_pairs, pair_decoder
from components.models.autoencoder import encode_latents
from components.models.minigpt5 import IMAGE_SLOT, MiniGPT5, MiniGPT5Config, voken_string
from training_jobs.data_loading import encoded_batch_stream, shard_paths
from training_jobs.launcher import RunSection, ScalingSection
from training_jobs.loop import TrainConfig, seed_everything, unwrap
from training_jobs.model_inputs import resolve_model_path
from training_jobs.tracking import TrackingConfig
from training_jobs.worker import report, run_steps, start_training, worker_context

MODEL_CONFIG = "minigpt5"


@dataclass
class DataSection:
    prepared_root: str = "data/prepared"
    """Root of the prepared datasets (DVC outputs)."""
    datasets: list[str] = field(default_factory=lambda: ["cc3m"])
    """Caption-image pair datasets of the pre-training stage."""
    llm: str = "models:/genops-llm-base@champion"
    """The LLM (Vicuna's role): an llm_base folder or registry URI."""
    visual_encoder: str = "models:/genops-clip-base@champion"
    """The frozen visual encoder: a clip_base folder or registry URI."""
    generator: str = "models:/genops-sd-base@champion"
    """The frozen text-to-image model (with its vae/): an sd_base folder or registry URI."""
    caption_instruction: str = "describe this image."
    """Instruction after the image in the captioning term that trains the visual pooler."""


@dataclass
class LossSection:
    text: float = 0.01
    """lambda_1 of L_text (paper: 0.01)."""
    ldm: float = 1.0
    """lambda_2 of L_LDM (paper: 1)."""
    cap: float = 0.1
    """lambda_3 of L_CAP (paper: 0.1)."""
    imgcap: float = 1.0
    """Weight of the image -> caption term that trains the visual pooler (genops; MiniGPT-4's stage 1)."""


@dataclass
class Config:
    model: MiniGPT5Config = field(default_factory=MiniGPT5Config)
    """Vokens, pooler, mapper, CFG and sampling."""
    train: TrainConfig = field(default_factory=lambda: TrainConfig(ema_decay=None))
    """Shared training-loop settings (no weight decay: the voken rows are trained through a gradient mask)."""
    data: DataSection = field(default_factory=DataSection)
    loss: LossSection = field(default_factory=LossSection)
    scaling: ScalingSection = field(default_factory=ScalingSection)
    run: RunSection = field(default_factory=RunSection)
    tracking: TrackingConfig = field(
        default_factory=lambda: TrackingConfig(experiment="genops-minigpt5", registered_model="genops-minigpt5-stage1")
    )


def datasets(cfg: Config) -> list[str]:
    return list(cfg.data.datasets)


def pyfunc_model():
    from training_jobs.minigpt5_pyfunc import MiniGPT5Model

    return MiniGPT5Model()


def check_train_config(train: TrainConfig) -> None:
    if train.weight_decay:
        raise ValueError(f"train.weight_decay={train.weight_decay}: MiniGPT-5 trains only the voken rows of the "
                         "embedding matrices through a gradient mask, and decoupled weight decay would still shrink "
                         "every other row; set train.weight_decay=0")
    if train.ema_decay is not None:
        raise ValueError("train.ema_decay must be null for MiniGPT-5 (the EMA would copy the frozen LLM and UNet)")


def log_parameter_groups(ctx, groups: dict[str, int]) -> None:
    ctx.log.metrics({f"params/{name.split(' ')[0]}": count for name, count in groups.items()}
                    | {"params/trainable_total": sum(groups.values())}, 0)


def train(config: dict) -> None:
    cfg = from_dict(Config, config)
    check_train_config(cfg.train)
    ctx = worker_context(cfg.tracking, cfg.run.storage_path, cfg.run.name)
    uri = cfg.tracking.tracking_uri

    # setup
    seed_everything(cfg.train.seed)
    model = MiniGPT5.from_parts(cfg.model, resolve_model_path(cfg.data.llm, uri),
                                resolve_model_path(cfg.data.visual_encoder, uri),
                                resolve_model_path(cfg.data.generator, uri)).to(ctx.device)
    groups = model.set_stage(1)
    run = start_training(ctx, model, cfg.train)
    net = run.model
    log_parameter_groups(ctx, groups)
    noise = torch.Generator(ctx.device).manual_seed(cfg.train.seed + 1000 * ctx.rank + run.start)
    dropout = torch.Generator().manual_seed(cfg.train.seed + 7 + 1000 * ctx.rank + run.start)
    root = Path(cfg.data.prepared_root)

    def encode(b: dict) -> dict[str, torch.Tensor]:
        pixels = b["pixels"].to(ctx.device)
        return {"latents": encode_latents(model.vae, pixels), "image_states": model.image_patch_states(pixels),
                "caption_features": model.generator.encode_prompts(b["caption"])}

    batches = encoded_batch_stream(shard_paths(root, cfg.data.datasets, "train"), pair_decoder(model.vae.config.sample_size),
                                   collate_pairs, encode, cfg.train.batch_size, seed=cfg.train.seed + run.start,
                                   rank=ctx.rank, world_size=ctx.world_size)
    vokens = voken_string(cfg.model.num_vokens)
    weights = {"text": cfg.loss.text, "ldm": cfg.loss.ldm, "cap": cfg.loss.cap, "imgcap": cfg.loss.imgcap}
    instruction = f"{IMAGE_SLOT} {cfg.data.caption_instruction}"

    def compute_losses(b) -> dict[str, torch.Tensor]:
        captions = b["caption"]
        return net({"prompts": captions, "answers": [vokens] * len(captions), "image_states": b["image_states"],
                    "latents": b["latents"], "caption_features": b["caption_features"],
                    "caption_prompts": [instruction] * len(captions), "captions": captions},
                   weights, noise=noise, dropout=dropout)

    def save_final(path: Path) -> None:
        run.save(path, cfg.train.steps)
        unwrap(net).save_pretrained(path / "export")

    # train
    run_steps(ctx, run, batches, compute_losses, cfg.train)

    # save: the export (its evaluation is the registered version's evaluation asset)
    final_metrics: dict[str, float] = {"step": cfg.train.steps}
    report(ctx, final_metrics, save_final)
