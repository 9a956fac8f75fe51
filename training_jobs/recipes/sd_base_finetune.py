"""Recipe: sd_base fine-tuned on text-rich images (`mario_laion`), VLAD Table I's "Fine-tuned SD" baseline.

    genops train sd_base_finetune --profile demo
    (data.init defaults to the evaluated base model, models:/genops-sd-base@champion; data.vae to its vae/)

VLAD (Table I) compares against Stable Diffusion fine-tuned on MARIO-10M: here the registered sd_base
continues training on `mario_laion` at a lower learning rate. The training is the sd_base recipe's own
(`training_jobs.recipes.sd_base.train`, with `data.init` set); what this recipe adds is its defaults and
its registry name, `genops-sd-base-mario`, so that the fine-tuned model never becomes a version of
`genops-sd-base`, which MiniGPT-5, the evaluation and the "SD" row read as the base model. The run is
tagged genops.init_model_* with the base version and run it started from.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from components.models.sd_base import SDBaseConfig
from training_jobs.launcher import RunSection, ScalingSection
from training_jobs.loop import TrainConfig
from training_jobs.recipes import sd_base
from training_jobs.tracking import TrackingConfig

MODEL_CONFIG = "sd_base"


@dataclass
class Config:
    model: SDBaseConfig = field(default_factory=SDBaseConfig)
    """Text encoder, UNet and diffusion settings: those of the data.init model."""
    train: TrainConfig = field(default_factory=lambda: TrainConfig(lr=1e-4))
    """Shared training-loop settings (fine-tuning: a tenth of sd_base's learning rate)."""
    data: sd_base.DataSection = field(default_factory=lambda: sd_base.DataSection(
        datasets=["mario_laion"], init="models:/genops-sd-base@champion", vae=""))
    """Text-rich datasets, the base model the run starts from (data.init) and its tokenizer; data.vae empty: the init's vae/."""
    scaling: ScalingSection = field(default_factory=ScalingSection)
    """Ray Train workers and resources."""
    run: RunSection = field(default_factory=RunSection)
    """Run name (resume key) and storage."""
    tracking: TrackingConfig = field(
        default_factory=lambda: TrackingConfig(experiment="genops-base-models", registered_model="genops-sd-base-mario")
    )
    """MLflow experiment, registry name and lineage."""

    def __post_init__(self) -> None:
        if not self.data.init:
            raise ValueError("sd_base_finetune needs data.init: the sd_base export to fine-tune "
                             "(models:/genops-sd-base@champion, another version, or a folder)")


def datasets(cfg: Config) -> list[str]:
    return list(cfg.data.datasets)


def pyfunc_model():
    return sd_base.pyfunc_model()


def train(config: dict) -> None:
    """sd_base's training from data.init (this Config and sd_base's have the same fields)."""
    sd_base.train(config)
