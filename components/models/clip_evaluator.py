"""The evaluator CLIP (`clip_evaluator`): a transformers `CLIPModel` trained contrastively, used only by metrics.

CLIP (Radford et al. 2021) embeds images and texts into one space and is trained with the symmetric
InfoNCE loss over a batch's image-text similarity matrix (the paper's Figure 3 pseudocode), with a
learnable temperature. genops trains a small one from scratch on a split no generator trains on, and
computes CLIP score / CLIP-I / CLIP-T with it; real runs point `ClipEvaluator.from_pretrained` at a
folder of real CLIP weights (e.g. a local copy of openai/clip-vit-base-patch16) instead.

The text tower config and `tokenize_captions` are shared with `sd_base`, whose text encoder is a CLIP
text tower too. Texts are tokenized as CLIP does: <bos> tokens <eos>, padded to a fixed length.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import (
    AutoTokenizer,
    CLIPConfig,
    CLIPModel,
    CLIPTextConfig,
    CLIPVisionConfig,
    PreTrainedTokenizerBase,
)

from components.config import from_dict, to_dict
from components.fileio import atomic_directory

logger = logging.getLogger(__name__)

# CLIP's pixel normalisation (OpenAI CLIP, `clip/clip.py` `_transform`); kept for real CLIP weights.
CLIP_PIXEL_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_PIXEL_STD = (0.26862954, 0.26130258, 0.27577711)
# CLIP clips the learned logit scale at 100 "to prevent scaling the logits by more than 100" (Sec. 2.5).
MAX_LOGIT_SCALE = 100.0
GENOPS_CONFIG_FILE = "genops_clip_evaluator.json"


@dataclass
class CLIPTextTowerConfig:
    """A CLIP text transformer (causal, pooled at the end-of-text token)."""

    # vocabulary size; null takes it from the tokenizer the model is built with
    vocab_size: int | None = None
    # width of the transformer
    hidden_size: int = 64
    # width of the MLP inside each block
    intermediate_size: int = 256
    # number of transformer blocks
    num_hidden_layers: int = 2
    # attention heads per block; must divide hidden_size
    num_attention_heads: int = 4
    # tokens per text, <bos> and <eos> included (CLIP: 77)
    max_position_embeddings: int = 32
    # MLP activation: 'quick_gelu' (OpenAI CLIP) or 'gelu' (OpenCLIP)
    hidden_act: str = "quick_gelu"

    def __post_init__(self) -> None:
        if self.vocab_size is not None and self.vocab_size < 4:
            raise ValueError(f"vocab_size must be >= 4 or null (from the tokenizer), got {self.vocab_size}")
        if self.hidden_size < 1 or self.num_attention_heads < 1 or self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size={self.hidden_size} must be a positive multiple of "
                f"num_attention_heads={self.num_attention_heads}"
            )
        if self.intermediate_size < 1:
            raise ValueError(f"intermediate_size must be >= 1, got {self.intermediate_size}")
        if self.num_hidden_layers < 1:
            raise ValueError(f"num_hidden_layers must be >= 1, got {self.num_hidden_layers}")
        if self.max_position_embeddings < 3:
            raise ValueError(
                f"max_position_embeddings must be >= 3 (<bos>, a token, <eos>), got {self.max_position_embeddings}"
            )
        if self.hidden_act not in ("quick_gelu", "gelu"):
            raise ValueError(f"hidden_act must be 'quick_gelu' or 'gelu', got {self.hidden_act!r}")


@dataclass
class CLIPVisionTowerConfig:
    """A CLIP vision transformer (ViT) over square images."""

    # image side in pixels the ViT sees; other sizes are resized to it
    image_size: int = 32
    # patch side in pixels; must divide image_size
    patch_size: int = 8
    # width of the transformer
    hidden_size: int = 64
    # width of the MLP inside each block
    intermediate_size: int = 256
    # number of transformer blocks
    num_hidden_layers: int = 2
    # attention heads per block; must divide hidden_size
    num_attention_heads: int = 4
    # MLP activation: 'quick_gelu' (OpenAI CLIP) or 'gelu' (OpenCLIP)
    hidden_act: str = "quick_gelu"

    def __post_init__(self) -> None:
        if self.patch_size < 1 or self.image_size < self.patch_size or self.image_size % self.patch_size:
            raise ValueError(
                f"image_size={self.image_size} must be a positive multiple of patch_size={self.patch_size}"
            )
        if self.hidden_size < 1 or self.num_attention_heads < 1 or self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size={self.hidden_size} must be a positive multiple of "
                f"num_attention_heads={self.num_attention_heads}"
            )
        if self.intermediate_size < 1:
            raise ValueError(f"intermediate_size must be >= 1, got {self.intermediate_size}")
        if self.num_hidden_layers < 1:
            raise ValueError(f"num_hidden_layers must be >= 1, got {self.num_hidden_layers}")
        if self.hidden_act not in ("quick_gelu", "gelu"):
            raise ValueError(f"hidden_act must be 'quick_gelu' or 'gelu', got {self.hidden_act!r}")


@dataclass
class ClipEvaluatorConfig:
    """The evaluator CLIP: a text tower, a vision tower, and the shared embedding space."""

    # text transformer
    text: CLIPTextTowerConfig = field(default_factory=CLIPTextTowerConfig)
    # vision transformer
    vision: CLIPVisionTowerConfig = field(default_factory=CLIPVisionTowerConfig)
    # dimension of the joint embedding space
    projection_dim: int = 64
    # initial log of the logit scale (CLIP: log(1 / 0.07) = 2.6592)
    logit_scale_init: float = 2.6592

    def __post_init__(self) -> None:
        if self.projection_dim < 1:
            raise ValueError(f"projection_dim must be >= 1, got {self.projection_dim}")
        if not 0.0 <= self.logit_scale_init <= math.log(MAX_LOGIT_SCALE):
            raise ValueError(
                f"logit_scale_init must be in [0, log(100) = 4.605], got {self.logit_scale_init}"
            )


def special_token_ids(tokenizer: PreTrainedTokenizerBase) -> tuple[int | None, int, int]:
    """(bos, eos, pad) ids of a tokenizer, failing clearly when CLIP-style tokenization is impossible."""
    if tokenizer.eos_token_id is None:
        raise ValueError(
            "the tokenizer has no eos_token: a CLIP text tower pools at the end-of-text token; "
            "train the tokenizer with an <eos> special token and set tokenizer.eos_token"
        )
    if tokenizer.pad_token_id is None:
        raise ValueError("the tokenizer has no pad_token: set tokenizer.pad_token (CLIP pads every text)")
    return tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id


def clip_text_config(cfg: CLIPTextTowerConfig, tokenizer: PreTrainedTokenizerBase | None) -> CLIPTextConfig:
    """The transformers CLIPTextConfig for `cfg`, with vocabulary and special ids from `tokenizer`."""
    vocab_size = cfg.vocab_size
    special: dict[str, int | None] = {}
    if tokenizer is not None:
        bos, eos, pad = special_token_ids(tokenizer)
        special = {"bos_token_id": bos, "eos_token_id": eos, "pad_token_id": pad}
        if vocab_size is None:
            vocab_size = len(tokenizer)
        elif vocab_size < len(tokenizer):
            raise ValueError(
                f"text.vocab_size={vocab_size} is smaller than the tokenizer's {len(tokenizer)} tokens; "
                f"set text.vocab_size to null to take the tokenizer's size"
            )
    if vocab_size is None:
        raise ValueError("text.vocab_size is null and no tokenizer was given: pass the tokenizer or set text.vocab_size")
    return CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_hidden_layers,
        num_attention_heads=cfg.num_attention_heads,
        max_position_embeddings=cfg.max_position_embeddings,
        hidden_act=cfg.hidden_act,
        # without a tokenizer, transformers' defaults are OpenAI CLIP's BPE ids (the paper profile's vocabulary)
        **special,
    )


def tokenize_captions(
    tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], max_length: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """CLIP-style token ids and attention mask, each (B, max_length) int64.

    Each text becomes <bos> tokens <eos> <pad>... (no <bos> if the tokenizer has none), whatever
    post-processor the tokenizer carries, so the end-of-text position is always present. Texts
    longer than the model's context are truncated (as CLIP does), with a warning.
    """
    bos, eos, pad = special_token_ids(tokenizer)
    prefix = [bos] if bos is not None else []
    room = max_length - len(prefix) - 1
    encoded = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    truncated = sum(len(ids) > room for ids in encoded)
    if truncated:
        logger.warning("truncated %d of %d texts to %d tokens (max_length=%d)", truncated, len(texts), room, max_length)
    input_ids = torch.full((len(texts), max_length), pad, dtype=torch.long)
    attention_mask = torch.zeros((len(texts), max_length), dtype=torch.long)
    for row, ids in enumerate(encoded):
        sequence = prefix + list(ids[:room]) + [eos]
        input_ids[row, : len(sequence)] = torch.tensor(sequence)
        attention_mask[row, : len(sequence)] = 1
    return input_ids, attention_mask


def build_clip_model(cfg: ClipEvaluatorConfig, tokenizer: PreTrainedTokenizerBase | None = None) -> CLIPModel:
    """A randomly initialised transformers CLIPModel for `cfg` (vocabulary from `tokenizer`)."""
    vision = cfg.vision
    config = CLIPConfig(
        text_config=clip_text_config(cfg.text, tokenizer).to_dict(),
        vision_config=CLIPVisionConfig(
            image_size=vision.image_size,
            patch_size=vision.patch_size,
            hidden_size=vision.hidden_size,
            intermediate_size=vision.intermediate_size,
            num_hidden_layers=vision.num_hidden_layers,
            num_attention_heads=vision.num_attention_heads,
            hidden_act=vision.hidden_act,
        ).to_dict(),
        projection_dim=cfg.projection_dim,
        logit_scale_init_value=cfg.logit_scale_init,
    )
    return CLIPModel(config)


def clip_contrastive_loss(
    image_embeds: torch.Tensor, text_embeds: torch.Tensor, logit_scale: torch.Tensor
) -> torch.Tensor:
    """Symmetric InfoNCE over a batch of matching pairs (CLIP, Figure 3).

    `image_embeds`, `text_embeds`: (B, P), L2-normalised; row i of each is a pair. `logit_scale` is
    the learnable log temperature; its exponential is clipped at 100 (CLIP Sec. 2.5).
    """
    if image_embeds.shape != text_embeds.shape:
        raise ValueError(f"image embeds {tuple(image_embeds.shape)} and text embeds {tuple(text_embeds.shape)} differ")
    scale = logit_scale.exp().clamp(max=MAX_LOGIT_SCALE)
    logits_per_image = scale * image_embeds @ text_embeds.t()  # (B, B)
    labels = torch.arange(image_embeds.shape[0], device=image_embeds.device)  # (B,)
    loss_image = F.cross_entropy(logits_per_image, labels)
    loss_text = F.cross_entropy(logits_per_image.t(), labels)
    return (loss_image + loss_text) / 2


class ClipEvaluator(nn.Module):
    """A CLIPModel with its tokenizer: normalised embeddings for metrics, and the contrastive loss as `forward`."""

    # the genops config written beside the weights; it also says which model a folder holds
    config_file = GENOPS_CONFIG_FILE
    config_class = ClipEvaluatorConfig

    def __init__(self, model: CLIPModel, tokenizer: PreTrainedTokenizerBase, cfg: ClipEvaluatorConfig | None = None):
        super().__init__()
        special_token_ids(tokenizer)
        if model.config.text_config.vocab_size < len(tokenizer):
            raise ValueError(
                f"the CLIP text tower has {model.config.text_config.vocab_size} token embeddings but the "
                f"tokenizer has {len(tokenizer)} tokens; build the model with this tokenizer"
            )
        self.model = model
        self.tokenizer = tokenizer
        self.cfg = cfg

    @classmethod
    def from_config(cls, cfg: ClipEvaluatorConfig, tokenizer: PreTrainedTokenizerBase) -> ClipEvaluator:
        """A randomly initialised evaluator whose vocabulary and special ids come from `tokenizer`."""
        return cls(build_clip_model(cfg, tokenizer), tokenizer, cfg)

    @property
    def max_length(self) -> int:
        return self.model.config.text_config.max_position_embeddings

    @property
    def image_size(self) -> int:
        return self.model.config.vision_config.image_size

    def tokenize(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(input_ids, attention_mask), each (B, max_length), on the model's device."""
        input_ids, attention_mask = tokenize_captions(self.tokenizer, texts, self.max_length)
        device = self.model.logit_scale.device
        return input_ids.to(device), attention_mask.to(device)

    def preprocess(self, pixels: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] of any square size -> CLIP's input: image_size, CLIP mean/std normalised."""
        if pixels.ndim != 4 or pixels.shape[1] != 3:
            raise ValueError(f"pixels must be (B, 3, H, W) in [-1, 1], got shape {tuple(pixels.shape)}")
        if pixels.shape[-2:] != (self.image_size, self.image_size):
            pixels = F.interpolate(
                pixels, size=(self.image_size, self.image_size), mode="bicubic", antialias=True, align_corners=False
            )
        mean = torch.tensor(CLIP_PIXEL_MEAN, device=pixels.device, dtype=pixels.dtype).view(1, 3, 1, 1)
        std = torch.tensor(CLIP_PIXEL_STD, device=pixels.device, dtype=pixels.dtype).view(1, 3, 1, 1)
        return ((pixels + 1.0) / 2.0 - mean) / std  # (B, 3, S, S)

    def image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """Unnormalised image embeddings (B, P) of images in [-1, 1]."""
        vision = self.model.vision_model(pixel_values=self.preprocess(pixels))
        return self.model.visual_projection(vision.pooler_output)  # (B, P)

    def text_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Unnormalised text embeddings (B, P), pooled at the first <eos> of each row.

        We pool here rather than use CLIPTextModel's pooler_output: transformers treats
        eos_token_id == 2 as a legacy config and pools at the highest token id instead, and a
        tokenizer trained with `tokenizers` often puts <eos> at id 2.
        """
        is_eos = input_ids == self.tokenizer.eos_token_id  # (B, L)
        if not is_eos.any(dim=-1).all():
            raise ValueError("every row of input_ids must contain <eos>; tokenize with `tokenize_captions`")
        hidden = self.model.text_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        eos_position = is_eos.int().argmax(dim=-1)  # (B,)
        pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), eos_position]  # (B, H)
        return self.model.text_projection(pooled)  # (B, P)

    def embed_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """L2-normalised image embeddings (B, P) of images in [-1, 1]."""
        return F.normalize(self.image_features(pixels), dim=-1)

    def embed_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """L2-normalised text embeddings (B, P)."""
        return F.normalize(self.text_features(*self.tokenize(texts)), dim=-1)

    def forward(
        self, pixels: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """Contrastive loss of a batch of matching (image, text) pairs.

        Returns 'loss', 'logit_scale' (the current exp(scale), for logging) and 'accuracy' (fraction
        of images whose best-matching text in the batch is their own, and vice versa, averaged).
        """
        image_embeds = F.normalize(self.image_features(pixels), dim=-1)  # (B, P)
        text_embeds = F.normalize(self.text_features(input_ids, attention_mask), dim=-1)  # (B, P)
        loss = clip_contrastive_loss(image_embeds, text_embeds, self.model.logit_scale)
        with torch.no_grad():
            similarity = image_embeds @ text_embeds.t()  # (B, B)
            labels = torch.arange(similarity.shape[0], device=similarity.device)
            accuracy = ((similarity.argmax(1) == labels).float().mean() + (similarity.argmax(0) == labels).float().mean()) / 2
            scale = self.model.logit_scale.exp().clamp(max=MAX_LOGIT_SCALE)
        return {"loss": loss, "logit_scale": scale.detach(), "accuracy": accuracy}

    def save_pretrained(self, path: str | Path) -> Path:
        """Write model + tokenizer in the Hugging Face hub layout (one folder), atomically."""
        path = Path(path)
        with atomic_directory(path) as tmp:
            self.model.save_pretrained(tmp, safe_serialization=True)
            self.tokenizer.save_pretrained(tmp)
            if self.cfg is not None:
                (tmp / self.config_file).write_text(json.dumps(to_dict(self.cfg), indent=2) + "\n")
        return path

    @classmethod
    def from_pretrained(cls, path: str | Path) -> ClipEvaluator:
        """Load a folder written by `save_pretrained`, or a local copy of real CLIP weights + tokenizer."""
        path = Path(path)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{path} is not a CLIP model folder: {path / 'config.json'} is missing")
        model = CLIPModel.from_pretrained(path)
        tokenizer = AutoTokenizer.from_pretrained(path)
        cfg_file = path / cls.config_file
        cfg = from_dict(cls.config_class, json.loads(cfg_file.read_text()), str(cfg_file)) if cfg_file.is_file() else None
        return cls(model, tokenizer, cfg)
