"""The data pipeline's config: what `params.yaml` holds for the DVC stages and the data assets."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from components.config import from_dict, to_dict
from components.data.prepare import ShardConfig, SplitConfig
from components.data.synthetic import WorldConfig
from components.data.tokenizer import TokenizerConfig
from components.data.validation import ValidationConfig


@dataclass
class DatasetSpec:
    format: str
    """Reader of the corpus (a key of components.data.formats.FORMATS)."""
    src: str
    """Where the corpus lies: `data/raw/<name>` for the synthetic world, or a real corpus on disk."""
    validation: dict[str, Any] = field(default_factory=dict)
    """Overrides of the top-level `validation` section for this dataset."""
    split: dict[str, Any] = field(default_factory=dict)
    """Overrides of the top-level `split` section for this dataset."""
    tokenizer_corpus: bool = True
    """Whether this dataset's train split feeds the tokenizer."""


@dataclass
class DataConfig:
    world: WorldConfig = field(default_factory=WorldConfig)
    """The synthetic world to generate (the embedded default corpus)."""
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    """Validation rules shared by every dataset (per-dataset overrides in `datasets`)."""
    split: SplitConfig = field(default_factory=SplitConfig)
    """Split fractions shared by every dataset (per-dataset overrides in `datasets`)."""
    shards: ShardConfig = field(default_factory=ShardConfig)
    """Tar shard sizes."""
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    """The BPE tokenizer trained on the prepared corpus."""
    datasets: dict[str, DatasetSpec] = field(default_factory=dict)
    """Every dataset the pipeline validates and prepares, by folder name under the raw root."""

    def spec(self, dataset: str) -> DatasetSpec:
        if dataset not in self.datasets:
            raise KeyError(f"unknown dataset {dataset!r}; params.yaml `datasets` lists {sorted(self.datasets)}")
        return self.datasets[dataset]

    def validation_for(self, dataset: str) -> ValidationConfig:
        return from_dict(ValidationConfig, {**to_dict(self.validation), **self.spec(dataset).validation},
                         where=f"datasets.{dataset}.validation")

    def split_for(self, dataset: str) -> SplitConfig:
        return from_dict(SplitConfig, {**to_dict(self.split), **self.spec(dataset).split},
                         where=f"datasets.{dataset}.split")
