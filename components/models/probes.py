"""Diagnosis tools for a text-to-image model that draws the right colours in the wrong places.

Each answers one question about where placement is lost between the caption and the pixels:

- `text_probe`: does the text encoder's output carry the stated position and colour? A logistic
  regression from its token states (all of them, or mean-pooled) to the label, scored on held-out
  captions. If the probe reads the position, the signal is lost after the text encoder.
- `SceneLabelEncoder`: the UNet's conditioning replaced by learned embeddings of (colour, position),
  two tokens the cross-attention can attend to. If a UNet conditioned this way places objects, the
  UNet can place; if it cannot, the loss is in the UNet or its training, not in the language.
- `attention_layout`: where the UNet's attention sits and how many tokens of each level fall in one
  cell of the 3x3 grid the captions name.

`components.diffusion.noise_level_profile` is the fourth: how much of the loss weight and of the
sampler's steps fall where layout is decided.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from diffusers import UNet2DConditionModel
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
from torch import nn

from components.data.scene import COLOURS, POSITIONS, sample_scene
from components.data.synthetic.language import short_caption
from components.models.sd_base import SDBase, transformer_sides


@dataclass(frozen=True)
class LabelledCaptions:
    """Captions of one-object scenes, with the colour and position each states."""

    captions: list[str]
    colours: list[str]
    positions: list[str]


def one_object_captions(count: int, seed: int = 0) -> LabelledCaptions:
    """`count` captions of random one-object scenes in the synthetic world's short-caption style."""
    rng = random.Random(seed)
    captions, colours, positions = [], [], []
    for _ in range(count):
        scene = sample_scene(rng, min_objects=1, max_objects=1)
        captions.append(short_caption(scene, rng))
        colours.append(scene.objects[0].colour)
        positions.append(scene.objects[0].position)
    return LabelledCaptions(captions, colours, positions)


@torch.no_grad()
def token_state_features(
    sd: SDBase, captions: Sequence[str], pooling: Literal["all", "mean"], batch_size: int = 256
) -> np.ndarray:
    """The text encoder's final token states as probe features: (N, L * D) for 'all' (every position,
    padding included, in order), (N, D) for 'mean' (mean over the caption's attended tokens)."""
    if pooling not in ("all", "mean"):
        raise ValueError(f"pooling must be 'all' or 'mean', got {pooling!r}")
    rows = []
    for start in range(0, len(captions), batch_size):
        input_ids, attention_mask = sd.tokenize(captions[start : start + batch_size])
        states = sd.encode_text(input_ids, attention_mask).float()  # (B, L, D)
        if pooling == "all":
            rows.append(states.flatten(1))  # (B, L * D)
        else:
            mask = attention_mask.unsqueeze(-1).to(states.dtype)  # (B, L, 1)
            rows.append((states * mask).sum(1) / mask.sum(1).clamp(min=1))  # (B, D)
    return torch.cat(rows).cpu().numpy()


def linear_probe_accuracy(features: np.ndarray, labels: Sequence[str], test_fraction: float = 0.25,
                          seed: int = 0) -> float:
    """Held-out accuracy of a multinomial logistic regression from `features` (N, F) to `labels`."""
    if len(features) != len(labels):
        raise ValueError(f"{len(features)} feature rows but {len(labels)} labels")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    order = np.random.default_rng(seed).permutation(len(labels))
    cut = round(len(labels) * (1.0 - test_fraction))
    train, test = order[:cut], order[cut:]
    y = np.asarray(labels)
    scaler = StandardScaler().fit(features[train])
    probe = LogisticRegression(max_iter=2000, C=1.0).fit(scaler.transform(features[train]), y[train])
    return float((probe.predict(scaler.transform(features[test])) == y[test]).mean())


def text_probe(sd: SDBase, data: LabelledCaptions, seed: int = 0) -> dict[str, float]:
    """Probe accuracies {'<pooling>/<label>': accuracy} for pooling in (all, mean), label in (position, colour)."""
    out = {}
    for pooling in ("all", "mean"):
        features = token_state_features(sd, data.captions, pooling)
        out[f"{pooling}/position"] = linear_probe_accuracy(features, data.positions, seed=seed)
        out[f"{pooling}/colour"] = linear_probe_accuracy(features, data.colours, seed=seed)
    return out


class SceneLabelEncoder(nn.Module):
    """Conditioning from labels instead of text: (colour, position) -> two learned tokens (B, 2, D).

    Index len(vocabulary) of each table is the null label, the unconditional input for classifier-free
    guidance (as the empty prompt is for text).
    """

    def __init__(self, width: int, colours: Sequence[str] = tuple(COLOURS), positions: Sequence[str] = tuple(POSITIONS)):
        super().__init__()
        self.colours = list(colours)
        self.positions = list(positions)
        self.colour = nn.Embedding(len(self.colours) + 1, width)
        self.position = nn.Embedding(len(self.positions) + 1, width)

    def ids(self, colours: Sequence[str | None], positions: Sequence[str | None]) -> tuple[torch.Tensor, torch.Tensor]:
        """Label ids (B,) each; None is the null label."""
        device = self.colour.weight.device
        colour_ids = [len(self.colours) if c is None else self.colours.index(c) for c in colours]
        position_ids = [len(self.positions) if p is None else self.positions.index(p) for p in positions]
        return torch.tensor(colour_ids, device=device), torch.tensor(position_ids, device=device)

    def forward(self, colour_ids: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        return torch.stack([self.colour(colour_ids), self.position(position_ids)], dim=1)  # (B, 2, D)


@dataclass(frozen=True)
class AttentionLevel:
    """One transformer block of a UNet: where it sits and what resolution its attention has."""

    block: str
    side: int
    cross_attention: bool
    tokens_per_cell: float  # attention tokens inside one cell of the caption's grid


def attention_layout(unet: UNet2DConditionModel, grid: int = 3) -> list[AttentionLevel]:
    """Every transformer block of the UNet with its side and tokens per cell of a grid x grid layout,
    plus the levels without attention (side only, cross_attention False, block '<level> (no attention)')."""
    levels = []
    with_attention = {name.split(".attentions")[0] for name, _, _ in transformer_sides(unet)}
    side = unet.config.sample_size
    for i, _ in enumerate(unet.down_blocks):
        if f"down_blocks.{i}" not in with_attention:
            s = side // 2**i
            levels.append(AttentionLevel(f"down_blocks.{i} (no attention)", s, False, (s / grid) ** 2))
    for name, transformer, s in transformer_sides(unet):
        cross = any(getattr(b, "attn2", None) is not None for b in transformer.transformer_blocks)
        levels.append(AttentionLevel(name, s, cross, (s / grid) ** 2))
    return levels
