"""Recipe: MiniGPT-5 stage 2, fine-tuning on VIST-format stories and MMDialog-format dialogues (Sec. 3.3, 4.1).

    genops train minigpt5_stage2 --profile demo
    (data.init defaults to stage 1's registered weights, models:/genops-minigpt5-stage1@champion)

Starts from stage 1's export; LoRA on the LLM (r, alpha, dropout, targets from model.lora; the
official r 8, alpha 16, dropout 0.05 on q_proj/v_proj), the voken rows and the mapper's enc-dec are
trained, the MLP, q and the visual pooler stay frozen. Each story gives one example per step drawn at
random among the paper's three task types: text from the next image, image from the next text, or
both from the context. Loss: text x L_text + ldm x L_LDM (no captions: description-free). The recipe only
trains and registers: the measurements on the last step of held-out stories (narration metrics, CLIP-I of
MiniGPT-5's image against the two-stage baseline, the LLM writing the text and sd_base drawing it, and the
Table 6 context study) are the registered version's evaluation (`training_jobs.minigpt5_evaluation.STAGE2`,
the `minigpt5_stage2_evaluation` asset).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path

import torch

from components.config import from_dict
from components.models.minigpt5 import MiniGPT5, MiniGPT5Config
from training_jobs.data_loading import batch_stream, shard_paths
from training_jobs.launcher import RunSection, ScalingSection
from training_jobs.loop import TrainConfig, seed_everything, unwrap
from training_jobs.minigpt5_evaluation import collate_stories, stage2_batch, story_decoder
from training_jobs.model_inputs import resolve_model_path
from training_jobs.recipes.minigpt5_stage1 import check_train_config, log_parameter_groups
from training_jobs.tracking import TrackingConfig
from training_jobs.worker import report, run_steps, start_training, worker_context

MODEL_CONFIG = "minigpt5"


@dataclass
class DataSection:
    prepared_root: str = "data/prepared"
    """Root of the prepared datasets (DVC outputs)."""
    datasets: list[str] = field(default_factory=lambda: ["vist", "mmdialog"])
    """Interleaved story / dialogue datasets of the fine-tuning stage."""
    init: str = "models:/genops-minigpt5-stage1@champion"
    """Stage 1's export (folder or registry URI) this stage starts from."""
    max_context: int = 4
    """Earlier steps shown before the target step."""


@dataclass
class LossSection:
    text: float = 1.0
    """lambda_1 of L_text."""
    ldm: float = 1.0
    """lambda_2 of L_LDM."""


@dataclass
class Config:
    model: MiniGPT5Config = field(default_factory=MiniGPT5Config)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(ema_decay=None))
    data: DataSection = field(default_factory=DataSection)
    loss: LossSection = field(default_factory=LossSection)
    scaling: ScalingSection = field(default_factory=ScalingSection)
    run: RunSection = field(default_factory=RunSection)
    tracking: TrackingConfig = field(
        default_factory=lambda: TrackingConfig(experiment="genops-minigpt5", registered_model="genops-minigpt5-stage2")
    )


def datasets(cfg: Config) -> list[str]:
    return list(cfg.data.datasets)


def pyfunc_model():
    from training_jobs.minigpt5_pyfunc import MiniGPT5Model

    return MiniGPT5Model()


def train(config: dict) -> None:
    cfg = from_dict(Config, config)
    check_train_config(cfg.train)
    ctx = worker_context(cfg.tracking, cfg.run.storage_path, cfg.run.name)
    uri = cfg.tracking.tracking_uri

    # setup: stage 1's weights, then LoRA and the stage-2 trainable set
    seed_everything(cfg.train.seed)
    init = resolve_model_path(cfg.data.init, uri)
    model = MiniGPT5.from_pretrained(init, cfg=cfg.model).to(ctx.device)
    if model.stage != 1:
        raise ValueError(f"data.init={cfg.data.init} is not a stage-1 MiniGPT-5 export (its stage is {model.stage})")
    groups = model.set_stage(2)
    run = start_training(ctx, model, cfg.train)
    net = run.model
    log_parameter_groups(ctx, groups)
    ctx.log.text(json.dumps({"init": cfg.data.init, "folder": str(init)}) + "\n", "init.json")
    noise = torch.Generator(ctx.device).manual_seed(cfg.train.seed + 1000 * ctx.rank + run.start)
    dropout = torch.Generator().manual_seed(cfg.train.seed + 7 + 1000 * ctx.rank + run.start)
    tasks = random.Random(cfg.train.seed + 11 + 1000 * ctx.rank + run.start)
    root = Path(cfg.data.prepared_root)
    size = model.vae.config.sample_size
    batches = batch_stream(shard_paths(root, cfg.data.datasets, "train"), story_decoder(size), collate_stories,
                           cfg.train.batch_size, seed=cfg.train.seed + run.start, rank=ctx.rank,
                           world_size=ctx.world_size, workers=cfg.train.dataloader_workers)
    weights = {"text": cfg.loss.text, "ldm": cfg.loss.ldm, "cap": 0.0}

    def compute_losses(stories) -> dict[str, torch.Tensor]:
        batch = stage2_batch(unwrap(net), model.vae, stories, tasks, cfg.data.max_context, ctx.device)
        return net(batch, weights, noise=noise, dropout=dropout)

    def save_final(path: Path) -> None:
        run.save(path, cfg.train.steps)
        unwrap(net).save_pretrained(path / "export")

    # train
    run_steps(ctx, run, batches, compute_losses, cfg.train)

    # save: the export (its evaluation is the registered version's evaluation asset)
    final_metrics: dict[str, float] = {"step": cfg.train.steps}
    report(ctx, final_metrics, save_final)
