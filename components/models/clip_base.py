"""The vision-language backbone (`clip_base`): a CLIP dual encoder the model families adapt.

VLAD initialises its LVLM as a CLIP-style dual encoder and adapts it with LoRA; MiniGPT-5 keeps a
frozen visual encoder. Both need a trained image-text model that is *not* the evaluator: metrics
judge with `clip_evaluator` (trained on the `holdout` split), and a model that were built on those
weights would be graded by itself. `clip_base` is the same architecture family (a transformers
`CLIPModel` with the project tokenizer, the symmetric InfoNCE loss; see
`components/models/clip_evaluator.py`, which holds the towers, the tokenization and the loss) with
its own weights, trained on the `train` split. Its folders carry `genops_clip_base.json`, so a
folder says which of the two it holds.
"""

from __future__ import annotations

from dataclasses import dataclass

from components.models.clip_evaluator import ClipEvaluator, ClipEvaluatorConfig

GENOPS_CONFIG_FILE = "genops_clip_base.json"


@dataclass
class ClipBaseConfig(ClipEvaluatorConfig):
    """The base CLIP: the evaluator's fields (text tower, vision tower, joint space), its own values per profile."""


class ClipBase(ClipEvaluator):
    """A CLIPModel with its tokenizer: image and text embeddings for the families, the contrastive loss as `forward`."""

    config_file = GENOPS_CONFIG_FILE
    config_class = ClipBaseConfig
