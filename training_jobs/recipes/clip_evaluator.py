"""Recipe: the evaluator CLIP (`clip_evaluator`), trained contrastively on a split no generator sees.

    genops train clip_evaluator --profile demo

Symmetric InfoNCE (Radford et al. 2021) on the `holdout` split of the prepared caption datasets,
so CLIP score, CLIP-I/T and CLIP-feature FID on the embedded default are not judged by a model that
shares training images with the generators; only metrics load it (a test enforces that). Real runs
point metrics at real CLIP weights instead (a local folder). The loop is `training_jobs/clip_training.py`,
shared with `clip_base`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from components.config import from_dict
from components.models.clip_evaluator import ClipEvaluator, ClipEvaluatorConfig
from training_jobs.clip_training import ClipDataSection, train_clip
from training_jobs.launcher import RunSection, ScalingSection
from training_jobs.loop import TrainConfig
from training_jobs.tracking import TrackingConfig

MODEL_CONFIG = "clip_evaluator"


@dataclass
class Config:
    model: ClipEvaluatorConfig = field(default_factory=ClipEvaluatorConfig)
    """Text and vision towers and the joint space."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Shared training-loop settings."""
    data: ClipDataSection = field(default_factory=lambda: ClipDataSection(train_split="holdout"))
    """Which prepared datasets and split feed the job (the holdout split: one no generator trains on)."""
    scaling: ScalingSection = field(default_factory=ScalingSection)
    """Ray Train workers and resources."""
    run: RunSection = field(default_factory=RunSection)
    """Run name (resume key) and storage."""
    tracking: TrackingConfig = field(
        default_factory=lambda: TrackingConfig(experiment="genops-base-models", registered_model="genops-clip-evaluator")
    )
    """MLflow experiment, registry name and lineage."""


def datasets(cfg: Config) -> list[str]:
    return list(cfg.data.datasets)


def pyfunc_model():
    from training_jobs.pyfunc_models import ClipEvaluatorModel

    return ClipEvaluatorModel()


def train(config: dict) -> None:
    train_clip(from_dict(Config, config), ClipEvaluator)
