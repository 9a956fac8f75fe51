"""Recipe: ParaDiffusion stage 2, paragraph-image alignment (Sec. 3.1.2, 3.2 "Stage 2"): LoRA on the
frozen LLM trained jointly with the UNet on `paraimage_big` (eq. 2).

    genops train paradiffusion_stage2 --profile demo data.init=models:/genops-paradiffusion-stage1@champion

Starts from the previous stage's registered model (`data.init`; its run and version are tagged on this
run as genops.init_model_*). `model` holds the LoRA settings: an init model without an adapter gets
a new one (rank 0 = Table 6's "Base": the LLM stays frozen and only the UNet trains); an init model
with one keeps training it and must match them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from components.config import from_dict
from components.models.paradiffusion import LoraSettings
from training_jobs.launcher import RunSection, ScalingSection
from training_jobs.loop import TrainConfig
from training_jobs.paradiffusion_training import StageData, continued_model, stage_datasets, train_stage
from training_jobs.tracking import TrackingConfig
from training_jobs.worker import worker_context

MODEL_CONFIG = "paradiffusion_lora"


@dataclass
class Config:
    model: LoraSettings = field(default_factory=lambda: LoraSettings(rank=16, alpha=32))
    """The LLM adapter trained in this stage (rank 0: none)."""
    condition_dropout: float = 0.1
    """Texts dropped to the empty prompt for classifier-free guidance."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Shared training-loop settings."""
    data: StageData = field(default_factory=lambda: StageData(
        datasets=["paraimage_big"], vae="", llm="", init="models:/genops-paradiffusion-stage1@champion"))
    """Paragraph datasets, the previous stage's model and the held-out paragraphs."""
    scaling: ScalingSection = field(default_factory=ScalingSection)
    """Ray Train workers and resources."""
    run: RunSection = field(default_factory=RunSection)
    """Run name (resume key) and storage."""
    tracking: TrackingConfig = field(default_factory=lambda: TrackingConfig(
        experiment="genops-paradiffusion", registered_model="genops-paradiffusion-stage2"))
    """MLflow experiment, registry name and lineage."""


def datasets(cfg: Config) -> list[str]:
    return stage_datasets(cfg.data)


def pyfunc_model():
    from training_jobs.paradiffusion_training import ParaDiffusionModel

    return ParaDiffusionModel()


def train(config: dict) -> None:
    cfg = from_dict(Config, config)
    ctx = worker_context(cfg.tracking, cfg.run.storage_path, cfg.run.name)
    paradiffusion, vae, tags = continued_model(cfg, ctx)
    train_stage(ctx, cfg, paradiffusion, vae, tags)
