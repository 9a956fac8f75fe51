"""Recipe: the base CLIP (`clip_base`), the vision-language backbone the families adapt.

    genops train clip_base --profile demo

The evaluator's architecture and loop (`training_jobs/clip_training.py`: symmetric InfoNCE, then
top-1 retrieval on validation pairs) on the `train` split of the prepared caption datasets, saved
and registered as its own model: VLAD's LVLM and MiniGPT-5's visual encoder load
`models:/genops-clip-base/...`, never the evaluator.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from components.config import from_dict
from components.models.clip_base import ClipBase, ClipBaseConfig
from training_jobs.clip_training import ClipDataSection, train_clip
from training_jobs.launcher import RunSection, ScalingSection
from training_jobs.loop import TrainConfig
from training_jobs.tracking import TrackingConfig

MODEL_CONFIG = "clip_base"


@dataclass
class Config:
    model: ClipBaseConfig = field(default_factory=ClipBaseConfig)
    """Text and vision towers and the joint space."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Shared training-loop settings."""
    data: ClipDataSection = field(default_factory=lambda: ClipDataSection(train_split="train"))
    """Which prepared datasets and split feed the job."""
    scaling: ScalingSection = field(default_factory=ScalingSection)
    """Ray Train workers and resources."""
    run: RunSection = field(default_factory=RunSection)
    """Run name (resume key) and storage."""
    tracking: TrackingConfig = field(
        default_factory=lambda: TrackingConfig(experiment="genops-base-models", registered_model="genops-clip-base")
    )
    """MLflow experiment, registry name and lineage."""


def datasets(cfg: Config) -> list[str]:
    return list(cfg.data.datasets)


def pyfunc_model():
    from training_jobs.pyfunc_models import ClipBaseModel

    return ClipBaseModel()


def train(config: dict) -> None:
    train_clip(from_dict(Config, config), ClipBase)
