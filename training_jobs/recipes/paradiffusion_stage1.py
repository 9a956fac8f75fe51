"""Recipe: ParaDiffusion stage 1, short-text alignment (Sec. 3.2 "Stage 1"): the UNet on short captions.

    genops train paradiffusion_stage1 --profile demo
    genops train paradiffusion_stage1 --profile paper data.llm=/models/Llama-2-7b-hf

The LLM (llm_base, or Llama-2-7B by local path) is frozen and has no adapter; only the UNet learns the
noise-prediction loss on `laion_short`, at progressively increasing resolution (low, then the VAE's
full size, as SDXL and the paper's 256 -> 512) under a single-cycle cosine learning rate.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from components.config import from_dict
from components.models.paradiffusion import ParaDiffusion, ParaDiffusionConfig, load_llm
from training_jobs.launcher import RunSection, ScalingSection
from training_jobs.loop import TrainConfig, seed_everything
from training_jobs.model_inputs import model_lineage_tags, resolve_model_path
from training_jobs.paradiffusion_training import StageData, stage_datasets, stage_vae, train_stage
from training_jobs.tracking import TrackingConfig
from training_jobs.worker import worker_context

MODEL_CONFIG = "paradiffusion"


@dataclass
class Config:
    model: ParaDiffusionConfig = field(default_factory=ParaDiffusionConfig)
    """Paragraph encoder settings, UNet and diffusion (lora.rank must be 0: stage 1 trains no adapter)."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Shared training-loop settings (stage 1: single-cycle cosine)."""
    data: StageData = field(default_factory=lambda: StageData(datasets=["laion_short"]))
    """Short captions, VAE, LLM, progressive resolution and the held-out paragraphs."""
    scaling: ScalingSection = field(default_factory=ScalingSection)
    """Ray Train workers and resources."""
    run: RunSection = field(default_factory=RunSection)
    """Run name (resume key) and storage."""
    tracking: TrackingConfig = field(default_factory=lambda: TrackingConfig(
        experiment="genops-paradiffusion", registered_model="genops-paradiffusion-stage1"))
    """MLflow experiment, registry name and lineage."""


def datasets(cfg: Config) -> list[str]:
    return stage_datasets(cfg.data)


def pyfunc_model():
    from training_jobs.paradiffusion_training import ParaDiffusionModel

    return ParaDiffusionModel()


def train(config: dict) -> None:
    cfg = from_dict(Config, config)
    ctx = worker_context(cfg.tracking, cfg.run.storage_path, cfg.run.name)
    if cfg.model.lora.rank:
        raise ValueError(f"stage 1 trains the UNet only (LLM frozen, no LoRA): set model.lora.rank=0, got {cfg.model.lora.rank}")
    vae = stage_vae(cfg, None, ctx)
    llm, tokenizer = load_llm(resolve_model_path(cfg.data.llm, cfg.tracking.tracking_uri))
    seed_everything(cfg.train.seed)
    paradiffusion = ParaDiffusion.from_llm(cfg.model, llm, tokenizer)
    tags = {**model_lineage_tags(cfg.data.llm, cfg.tracking.tracking_uri, "genops.llm"),
            **model_lineage_tags(cfg.data.vae, cfg.tracking.tracking_uri, "genops.vae")}
    train_stage(ctx, cfg, paradiffusion, vae, tags)
