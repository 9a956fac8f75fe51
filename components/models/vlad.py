"""VLAD (Vision-Language Aligned Diffusion): an LVLM aligned contrastively with images, a Contextual
Composition Module over the prompt's global and local units, and a two-level diffusion (layout, then
visual features) in the shared VAE's latent space.

The paper (`shared/papers/vlad.txt`, Sec. III) gives equations, not code; where it is vague this file
takes what the equations imply, and every choice is a config field:

- LVLM (Sec. III-B, eq. 10): the `clip_base` dual encoder (a transformers `CLIPModel`, never the
  evaluator) with PEFT LoRA injected into its attention projections (`lora.target_modules`, rank
  `lora.rank`); the base weights are frozen, only the low-rank A, B train (eq. 10: dW = A B^T).
- Prompt decomposition (`decompose_prompt`): the global unit is the whole prompt; local units are one
  per quoted word to render (the MARIO-Eval rule: words inside 'single quotes', split on whitespace;
  double and curly quotes too) and one per object phrase. Object phrases of the synthetic world's
  closed vocabulary ("a small red circle", repeated mentions merged by colour and shape) are found
  exactly; for other prompts (MARIO-Eval / ParaPrompts style) determiner-led noun phrases ending at a
  verb, preposition or punctuation ("a storefront sign that says ..." -> "a storefront sign").
  Units are ordered as they appear and capped at `max_local_units` (M), with a warning.
- Embeddings: t_g and each t_i are the LVLM's pooled (end-of-text) text embeddings in the joint
  space (P wide); the global prompt's token states, through the same text projection, are kept
  for the VFE (the paper's eq. 7 conditions on t only; a pooled vector alone cannot say what the
  background is *and* where five letters go, and SD-style cross-attention needs a sequence).
- CCM f_CCM (eq. 2, `ContextualComposition`): the local tokens first exchange context (one masked
  self-attention layer over [t_g; t_1..t_M]); then the global token attends over [t_g; t_1..t_M]
  (t_g is always a key, so a prompt with M = 0 local units gives a well-defined softmax, never NaN)
  and is updated with a gated residual, t = t_g + sigmoid(W_g [t_g; c]) * W_o c (the gate lets
  the model keep t_g where local units add nothing). Its token sequence for the VFE is
  [t; t'_1..t'_M; global token states], padding masked. "No CCM" (`ccm.enabled=false`, Table II)
  is t = t_g and the sequence [t_g; global token states]: no local units are embedded and the
  module does not exist.
- L_align (eq. 3): the paper's one-directional InfoNCE, text t_i against the batch's images v_j,
  cosine similarity over temperature tau; tau learnable (log 1/tau, initialised at 1/0.07 as CLIP)
  or fixed by `align.temperature`. v is the LVLM vision tower's projected embedding.
- TLG g_TLG (eq. 6, `TextLayoutGenerator`): a grid of learned, position-embedded queries at the latent
  resolution cross-attends over the CCM token sequence (so each cell can look up the word or object
  that belongs there), then a 3x3 conv head. The layout latent z has three channels at latent
  resolution: word regions (OCR boxes), object regions (scene discs), and the character map (the
  fraction of each latent cell that is glyph ink in MARIO's 256x256 `charseg.npy`). Trained with
  MSE by default: eq. 6 is a fixed-variance Gaussian, whose negative log-likelihood is MSE up to a
  constant, and the targets are area fractions in [0, 1] (a latent cell is 1/16 of a word), not hard
  classes; `layout.loss=bce` is per-pixel Bernoulli classification of the same soft targets.
  Character *identities* are not in z: at the demo's 16x16 latent a glyph is about one cell wide,
  and the VFE reads which letters to draw from the word units through cross-attention.
- VFE (eq. 7): a diffusers `UNet2DConditionModel` whose input is Concat(x_t, z) along channels and
  whose cross-attention context is the CCM token sequence; L_diff is eq. 9 (noise or v prediction,
  optional min-SNR weights, `components.diffusion.denoising_loss`). In training z is the ground-truth
  layout, replaced per example by the TLG's (detached) prediction with probability
  `layout.predicted_layout_prob`; at sampling it is the TLG's prediction. "No hierarchical guidance"
  (`layout.enabled=false`) drops the TLG and z: the UNet takes x_t alone.
- Objective (eq. 8): L = L_align + lambda * L_diff + layout.weight * L_layout, each returned (and
  logged) separately.
- Classifier-free guidance: prompts drop to "" with `diffusion.condition_dropout` (no local units
  then); at sampling both branches see the TLG's layout of the conditional prompt.

Folder layout of `save_pretrained`: `genops_vlad.json` (the VLADConfig), `vlad.safetensors` (every
weight: LVLM with its LoRA factors, CCM, TLG, UNet; a switched-off module has no keys), `tokenizer/`,
`scheduler/`, and `vae/` when given.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, UNet2DConditionModel
from peft import LoraConfig, inject_adapter_in_model
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoTokenizer, CLIPModel, PreTrainedTokenizerBase

from components.config import from_dict, to_dict
from components.data.scene import COLOURS, SHAPES, SIZES
from components.diffusion import (
    DiffusionConfig,
    denoising_loss,
    make_noise_scheduler,
    make_sampling_scheduler,
    sample,
)
from components.fileio import atomic_directory
from components.models.autoencoder import decode_latents, latent_shape
from components.models.clip_base import ClipBase, ClipBaseConfig
from components.models.clip_evaluator import build_clip_model, tokenize_captions
from components.models.sd_base import SDUNetConfig, add_position_embeddings, sincos_position_embedding

logger = logging.getLogger(__name__)

GENOPS_CONFIG_FILE = "genops_vlad.json"
WEIGHTS_FILE = "vlad.safetensors"
# channels of the layout latent z: word regions, object regions, character-ink map
LAYOUT_CHANNELS = ("word", "object", "char")


# ---------------------------------------------------------------------------------------------- config


@dataclass
class LoRASection:
    """LoRA on the LVLM (eq. 10)."""

    # rank k of dW = A B^T
    rank: int = 4
    # LoRA's alpha; the update is scaled by alpha / rank
    alpha: float = 8.0
    # dropout on the LoRA branch input
    dropout: float = 0.0
    # module names (in both CLIP towers) that get a LoRA branch
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise ValueError(f"lvlm_lora.rank must be >= 1, got {self.rank}")
        if not self.target_modules:
            raise ValueError("lvlm_lora.target_modules must name at least one module (e.g. q_proj)")


@dataclass
class CCMSection:
    """Contextual Composition Module (eq. 2)."""

    # false: the "w/o CCM" ablation, t = t_g, no local units (the module is not built)
    enabled: bool = True
    # attention heads; must divide the LVLM's projection_dim
    heads: int = 4


@dataclass
class LayoutSection:
    """Hierarchical guidance: the Text Layout Generator (eq. 6) and z in the VFE's input (eq. 7)."""

    # false: the "w/o hierarchical guidance" ablation, no TLG and no z (the UNet takes x_t alone)
    enabled: bool = True
    # cross-attention layers of the TLG's query grid over the CCM token sequence
    layers: int = 2
    # attention heads; must divide the LVLM's projection_dim
    heads: int = 4
    # "mse": eq. 6's Gaussian NLL; "bce": per-pixel Bernoulli classification of the same soft targets
    loss: Literal["mse", "bce"] = "mse"
    # weight of the layout term in the total loss
    weight: float = 1.0
    # probability that an example's VFE input is the TLG's detached prediction instead of the ground truth
    predicted_layout_prob: float = 0.0

    def __post_init__(self) -> None:
        if self.layers < 1:
            raise ValueError(f"model.layout.layers must be >= 1, got {self.layers}")
        if not 0.0 <= self.predicted_layout_prob <= 1.0:
            raise ValueError(f"model.layout.predicted_layout_prob must be in [0, 1], got {self.predicted_layout_prob}")
        if self.loss not in ("mse", "bce"):
            raise ValueError(f"model.layout.loss must be 'mse' or 'bce', got {self.loss!r}")


@dataclass
class AlignSection:
    """L_align (eq. 3)."""

    # fixed temperature tau; null learns log(1/tau) from CLIP's 1/0.07
    temperature: float | None = None

    def __post_init__(self) -> None:
        if self.temperature is not None and self.temperature <= 0:
            raise ValueError(f"model.align.temperature must be > 0 or null (learnable), got {self.temperature}")


@dataclass
class VLADConfig:
    """VLAD: LVLM (+LoRA), CCM, TLG, VFE and the diffusion process."""

    # the LVLM's towers; the recipe replaces it with the loaded clip_base's own config
    lvlm: ClipBaseConfig = field(default_factory=ClipBaseConfig)
    # LoRA on the LVLM (eq. 10)
    lvlm_lora: LoRASection = field(default_factory=LoRASection)
    # most local units per prompt (M); more are dropped with a warning
    max_local_units: int = 8
    # Contextual Composition Module (eq. 2)
    ccm: CCMSection = field(default_factory=CCMSection)
    # TLG and hierarchical guidance (eqs. 6-7)
    layout: LayoutSection = field(default_factory=LayoutSection)
    # contrastive alignment (eq. 3)
    align: AlignSection = field(default_factory=AlignSection)
    # the VFE's UNet (latent_channels = the VAE's; the layout channels are added to its input)
    unet: SDUNetConfig = field(default_factory=SDUNetConfig)
    # noise schedule, prediction type, min-SNR, caption dropout and sampler defaults
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    # lambda of eq. 8
    diffusion_weight: float = 1.0

    def __post_init__(self) -> None:
        if self.max_local_units < 1:
            raise ValueError(f"model.max_local_units must be >= 1, got {self.max_local_units}")
        width = self.lvlm.projection_dim
        for name, heads in (("ccm.heads", self.ccm.heads), ("layout.heads", self.layout.heads)):
            if heads < 1 or width % heads:
                raise ValueError(f"model.{name}={heads} must divide model.lvlm.projection_dim={width}")


# --------------------------------------------------------------------------------- prompt decomposition


@dataclass(frozen=True)
class LocalUnit:
    """One local unit of a prompt: a word to render ('word') or an object phrase ('object')."""

    kind: Literal["word", "object"]
    text: str
    start: int  # character offset in the prompt, for ordering


@dataclass(frozen=True)
class PromptUnits:
    """The global unit (the whole prompt) and its local units, in prompt order."""

    prompt: str
    local: tuple[LocalUnit, ...]

    @property
    def words(self) -> list[str]:
        return [u.text for u in self.local if u.kind == "word"]

    @property
    def objects(self) -> list[str]:
        return [u.text for u in self.local if u.kind == "object"]


# a quoted span: 'x', "x", or curly quotes; a single quote must not sit inside a word (it's, don't)
_QUOTED = re.compile(r"(?<![\w])'([^']+?)'(?![\w])|\"([^\"]+?)\"|\u2018([^\u2019]+?)\u2019|\u201c([^\u201d]+?)\u201d")
_NUMBERS = {"two": 2, "three": 3, "four": 4, "five": 5, "six": 6}
_VOCAB_OBJECT = re.compile(
    r"\b(?:(?P<det>a|an|the|" + "|".join(_NUMBERS) + r")\s+)?"
    r"(?:(?P<size>" + "|".join(SIZES) + r")[\s-]+)?(?:[a-z-]+[\s-]+)?"
    r"(?P<colour>" + "|".join(COLOURS) + r")\s+(?P<shape>" + "|".join(SHAPES) + r")s?\b"
)
_STOP = (
    r"that|which|who|with|and|or|on|in|at|of|for|from|by|holding|saying|says|say|reads|reading|read|written|"
    r"writes|showing|shows|above|below|under|over|near|next|beside|behind|to|is|are|was|has|have|against|into"
)
_GENERIC_OBJECT = re.compile(
    r"\b(?:a|an|the|some|one|two|three|four|five)\s+((?:(?!(?:" + _STOP + r")\b)[a-z][a-z-]*\s+){0,3}?"
    r"(?!(?:" + _STOP + r")\b)[a-z][a-z-]*)(?=\s+(?:" + _STOP + r")\b|\s*[,.;:!?]|\s*$)",
    re.IGNORECASE,
)
# heads of determiner phrases that are not objects: the canvas, the text itself, or the surface that only carries
# it (its words are units already, and a sign's region is its words' region)
_NOT_OBJECTS = {"background", "image", "frame", "picture", "photo", "mood", "scene", "total", "outline",
                "word", "words", "text", "letters", "phrase", "caption", "sign", "poster", "banner", "label",
                "board", "signboard"}


def decompose_prompt(prompt: str, max_local_units: int | None = None) -> PromptUnits:
    """The global unit and the local units of `prompt` (see the module docstring for the rules)."""
    units: list[LocalUnit] = []
    masked = list(prompt)
    for match in _QUOTED.finditer(prompt):
        group = next(i for i in range(1, 5) if match.group(i) is not None)
        offset = match.start(group)
        for word in re.finditer(r"\S+", match.group(group)):
            units.append(LocalUnit("word", word.group(), offset + word.start()))
        masked[match.start() : match.end()] = " " * (match.end() - match.start())
    rest = "".join(masked)  # the prompt with quoted spans blanked, offsets kept
    lowered = rest.lower()
    # an indefinite or counted mention introduces objects; a definite one ("the white circle") refers back
    seen: set[tuple[str, str]] = set()
    for match in _VOCAB_OBJECT.finditer(lowered):
        key = (match["colour"], match["shape"])
        if key in seen and match["det"] not in ("a", "an", *_NUMBERS):
            continue
        seen.add(key)
        phrase = f"{match['size']} {match['colour']}" if match["size"] else match["colour"]
        article = "an" if phrase[0] in "aeiou" else "a"
        for _ in range(_NUMBERS.get(match["det"] or "", 1)):
            units.append(LocalUnit("object", f"{article} {phrase} {match['shape']}", match.start()))
    if not seen:
        for match in _GENERIC_OBJECT.finditer(rest):
            phrase = match.group(0).strip()
            head = phrase.split()[-1].lower()
            if head in _NOT_OBJECTS:
                continue
            units.append(LocalUnit("object", phrase, match.start()))
    units.sort(key=lambda u: u.start)
    if max_local_units is not None and len(units) > max_local_units:
        logger.warning("prompt has %d local units; keeping the first %d (model.max_local_units): %r",
                       len(units), max_local_units, prompt[:120])
        units = units[:max_local_units]
    return PromptUnits(prompt, tuple(units))


# ------------------------------------------------------------------------------------------- layouts


def layout_target(
    side: int,
    image_size: tuple[int, int],
    word_boxes: Sequence[Sequence[float]] = (),
    objects: Sequence[dict] = (),
    charseg: np.ndarray | None = None,
    supersample: int = 4,
) -> torch.Tensor:
    """The ground-truth layout latent z, (3, side, side) in [0, 1]: word / object / character-ink coverage.

    `word_boxes`: (x0, y0, x1, y1) in the image's pixel frame (`image_size` = (width, height));
    `objects`: scene objects with x, y, radius as fractions of the side; `charseg`: TextDiffuser's
    character classes (0 = none) over the whole image. Each channel is the fraction of each latent cell
    covered (regions drawn at `supersample` x the latent side, then area-averaged).
    """
    fine = side * supersample
    width, height = image_size
    grid = (torch.arange(fine, dtype=torch.float32) + 0.5) / fine  # (fine,) cell centres in [0, 1]
    ys, xs = torch.meshgrid(grid, grid, indexing="ij")  # (fine, fine)
    words = torch.zeros(fine, fine)
    for x0, y0, x1, y1 in word_boxes:
        inside = (xs >= x0 / width) & (xs <= x1 / width) & (ys >= y0 / height) & (ys <= y1 / height)
        words[inside] = 1.0
    shapes = torch.zeros(fine, fine)
    for obj in objects:
        inside = (xs - obj["x"]) ** 2 + (ys - obj["y"]) ** 2 <= obj["radius"] ** 2
        shapes[inside] = 1.0
    fine_maps = torch.stack([words, shapes])  # (2, fine, fine)
    coarse = F.avg_pool2d(fine_maps[None], supersample)[0]  # (2, side, side)
    if charseg is not None:
        ink = torch.from_numpy((np.asarray(charseg) > 0).astype(np.float32))[None, None]  # (1, 1, H, W)
        chars = F.adaptive_avg_pool2d(ink, side)[0]  # (1, side, side)
    else:
        chars = torch.zeros(1, side, side)
    return torch.cat([coarse, chars]).clamp(0.0, 1.0)  # (3, side, side)


def layout_image(z: torch.Tensor, scale: int = 8) -> np.ndarray:
    """A layout latent (3, h, w) in [0, 1] as an RGB uint8 array: words red, objects green, ink white."""
    z = z.detach().float().clamp(0, 1).cpu()
    rgb = torch.stack([z[0] * 0.8 + z[2] * 0.2, z[1] * 0.8 + z[2] * 0.2, z[2]])  # (3, h, w)
    rgb = F.interpolate(rgb[None], scale_factor=scale, mode="nearest")[0]
    return (rgb.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


# ------------------------------------------------------------------------------------------- modules


def align_loss(t: torch.Tensor, v: torch.Tensor, log_inv_temperature: torch.Tensor) -> torch.Tensor:
    """Eq. 3: -1/N sum_i log exp(cos(t_i, v_i)/tau) / sum_j exp(cos(t_i, v_j)/tau); t, v: (N, P)."""
    if t.shape != v.shape:
        raise ValueError(f"text embeddings {tuple(t.shape)} and image embeddings {tuple(v.shape)} differ")
    cosine = F.normalize(t, dim=-1) @ F.normalize(v, dim=-1).t()  # (N, N)
    logits = cosine * log_inv_temperature.exp()  # (N, N) cos / tau
    labels = torch.arange(t.shape[0], device=t.device)
    return F.cross_entropy(logits.float(), labels)


class ContextualComposition(nn.Module):
    """f_CCM (eq. 2): local units exchange context, then the global token composes them (gated residual)."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.local_norm = nn.LayerNorm(width)
        self.local_attention = nn.MultiheadAttention(width, heads, batch_first=True)
        self.global_norm = nn.LayerNorm(width)
        self.global_attention = nn.MultiheadAttention(width, heads, batch_first=True)
        self.out = nn.Linear(width, width)
        self.gate = nn.Linear(2 * width, width)

    def forward(self, t_g: torch.Tensor, t_local: torch.Tensor, local_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """t_g (B, P), t_local (B, M, P), local_mask (B, M) True where a unit exists -> t (B, P), locals (B, M, P)."""
        keys = torch.cat([t_g[:, None], t_local], dim=1)  # (B, 1+M, P)
        # t_g is always a valid key: a prompt with no local units still has a well-defined softmax
        padding = torch.cat([torch.zeros_like(local_mask[:, :1]), ~local_mask], dim=1)  # (B, 1+M) True = ignore
        normed = self.local_norm(keys)
        context, _ = self.local_attention(normed, normed, normed, key_padding_mask=padding, need_weights=False)
        composed_local = (t_local + context[:, 1:]) * local_mask[..., None]  # (B, M, P), padding zeroed
        keys = torch.cat([t_g[:, None], composed_local], dim=1)  # (B, 1+M, P)
        query = self.global_norm(t_g)[:, None]  # (B, 1, P)
        c, _ = self.global_attention(query, self.global_norm(keys), self.global_norm(keys), key_padding_mask=padding,
                                     need_weights=False)
        c = c[:, 0]  # (B, P)
        gate = torch.sigmoid(self.gate(torch.cat([t_g, c], dim=-1)))  # (B, P)
        return t_g + gate * self.out(c), composed_local


class TextLayoutGenerator(nn.Module):
    """g_TLG (eq. 6): a latent-resolution grid of queries cross-attends over the CCM tokens -> z (3, h, w)."""

    def __init__(self, width: int, side: int, layers: int, heads: int, channels: int = len(LAYOUT_CHANNELS)):
        super().__init__()
        self.side = side
        self.queries = nn.Parameter(sincos_position_embedding(side, width - width % 4) if width % 4 == 0
                                    else torch.randn(side * side, width) * 0.02)  # (h*w, P)
        self.norms = nn.ModuleList([nn.LayerNorm(width) for _ in range(layers)])
        self.attentions = nn.ModuleList([nn.MultiheadAttention(width, heads, batch_first=True) for _ in range(layers)])
        self.mlps = nn.ModuleList([nn.Sequential(nn.LayerNorm(width), nn.Linear(width, 2 * width), nn.GELU(),
                                                 nn.Linear(2 * width, width)) for _ in range(layers)])
        self.head = nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.GELU(), nn.Conv2d(width, channels, 3, padding=1))

    def forward(self, tokens: torch.Tensor, token_mask: torch.Tensor) -> torch.Tensor:
        """tokens (B, L, P), token_mask (B, L) True where valid -> layout logits (B, C, h, w)."""
        batch = tokens.shape[0]
        x = self.queries[None].expand(batch, -1, -1)  # (B, h*w, P)
        for norm, attention, mlp in zip(self.norms, self.attentions, self.mlps):
            attended, _ = attention(norm(x), tokens, tokens, key_padding_mask=~token_mask, need_weights=False)
            x = x + attended
            x = x + mlp(x)
        grid = x.transpose(1, 2).reshape(batch, -1, self.side, self.side)  # (B, P, h, w)
        return self.head(grid)  # (B, C, h, w)


def build_vfe_unet(cfg: SDUNetConfig, cross_attention_dim: int, layout_channels: int) -> UNet2DConditionModel:
    """The VFE (eq. 7): an SD-style UNet2DConditionModel over Concat(x_t, z), predicting the latents' noise."""
    down_block_types = tuple("CrossAttnDownBlock2D" if x else "DownBlock2D" for x in cfg.cross_attention)
    up_block_types = tuple("CrossAttnUpBlock2D" if x else "UpBlock2D" for x in reversed(cfg.cross_attention))
    unet = UNet2DConditionModel(
        sample_size=cfg.sample_size,
        in_channels=cfg.latent_channels + layout_channels,
        out_channels=cfg.latent_channels,
        down_block_types=down_block_types,
        up_block_types=up_block_types,
        mid_block_type="UNetMidBlock2DCrossAttn",
        block_out_channels=tuple(cfg.block_out_channels),
        layers_per_block=cfg.layers_per_block,
        attention_head_dim=tuple(cfg.attention_head_dim),
        transformer_layers_per_block=cfg.transformer_layers_per_block,
        cross_attention_dim=cross_attention_dim,
        norm_num_groups=cfg.norm_num_groups,
        use_linear_projection=cfg.use_linear_projection,
    )
    return add_position_embeddings(unet) if cfg.position_embedding else unet


def add_lora(clip: CLIPModel, cfg: LoRASection) -> CLIPModel:
    """Freeze the CLIP weights and inject trainable LoRA factors (eq. 10) into `cfg.target_modules`, in place."""
    clip.requires_grad_(False)
    lora = LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=list(cfg.target_modules))
    inject_adapter_in_model(lora, clip)
    trainable = [n for n, p in clip.named_parameters() if "lora_" in n]
    if not trainable:
        raise ValueError(f"model.lvlm_lora.target_modules={cfg.target_modules} matched no module of the CLIP towers")
    for name, parameter in clip.named_parameters():
        parameter.requires_grad_("lora_" in name)
    return clip


@dataclass
class Conditioning:
    """What the LVLM + CCM give the TLG, the VFE and L_align for a batch of prompts."""

    t: torch.Tensor  # (B, P) the composed embedding (t_g without CCM)
    tokens: torch.Tensor  # (B, L, P) the VFE's cross-attention sequence
    token_mask: torch.Tensor  # (B, L) True where a token is valid
    units: list[PromptUnits]


class VLAD(nn.Module):
    """LVLM (CLIP + LoRA), CCM, TLG, VFE; `forward` is the training loss, `generate` samples images and layouts."""

    def __init__(self, cfg: VLADConfig, clip: CLIPModel, tokenizer: PreTrainedTokenizerBase):
        super().__init__()
        self.cfg = cfg
        self.lvlm = ClipBase(add_lora(clip, cfg.lvlm_lora), tokenizer, cfg.lvlm)
        width = clip.config.projection_dim
        if width != cfg.lvlm.projection_dim:
            raise ValueError(f"model.lvlm.projection_dim={cfg.lvlm.projection_dim} but the CLIP has {width}")
        self.ccm = ContextualComposition(width, cfg.ccm.heads) if cfg.ccm.enabled else None
        layout_channels = len(LAYOUT_CHANNELS) if cfg.layout.enabled else 0
        self.tlg = (TextLayoutGenerator(width, cfg.unet.sample_size, cfg.layout.layers, cfg.layout.heads)
                    if cfg.layout.enabled else None)
        self.unet = build_vfe_unet(cfg.unet, width, layout_channels)
        if cfg.align.temperature is None:
            self.log_inv_temperature = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        else:
            self.register_buffer("log_inv_temperature", torch.tensor(math.log(1 / cfg.align.temperature)), persistent=False)
        self.noise_scheduler = make_noise_scheduler(cfg.diffusion)

    @classmethod
    def from_config(cls, cfg: VLADConfig, tokenizer: PreTrainedTokenizerBase, clip: CLIPModel | None = None) -> VLAD:
        """A VLAD around `clip` (the trained clip_base's CLIPModel), or a randomly initialised one from cfg.lvlm."""
        return cls(cfg, clip if clip is not None else build_clip_model(cfg.lvlm, tokenizer), tokenizer)

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        return self.lvlm.tokenizer

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        side = self.unet.config.sample_size
        return self.cfg.unet.latent_channels, side, side

    @property
    def device(self) -> torch.device:
        return self.unet.device

    # ---- LVLM + CCM (eqs. 2, 10)

    def _text_tokens(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Pooled embeddings (N, P), projected token states (N, L, P) and attention mask (N, L) of texts."""
        clip = self.lvlm.model
        input_ids, attention_mask = tokenize_captions(self.tokenizer, texts, self.lvlm.max_length)
        # CLIP's text tower is causal: positions after the longest text's <eos> change nothing before it, so
        # they are cut (local units are a few tokens; padding them to the full context cost 4x the compute)
        keep = int(attention_mask.sum(dim=1).max()) if len(texts) else 1
        input_ids, attention_mask = input_ids[:, :keep].to(self.device), attention_mask[:, :keep].to(self.device)
        hidden = clip.text_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # (N, L, H)
        eos = (input_ids == self.tokenizer.eos_token_id).int().argmax(dim=-1)  # (N,)
        pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), eos]  # (N, H)
        return clip.text_projection(pooled), clip.text_projection(hidden), attention_mask.bool()

    def condition(self, prompts: Sequence[str]) -> Conditioning:
        """t, the VFE's token sequence and its mask for `prompts` (decomposed into global + local units)."""
        units = [decompose_prompt(p, self.cfg.max_local_units) for p in prompts]
        batch = len(prompts)
        if self.ccm is None:
            t_g, states, mask = self._text_tokens(list(prompts))
            tokens = torch.cat([t_g[:, None], states], dim=1)  # (B, 1+L, P)
            token_mask = torch.cat([torch.ones_like(mask[:, :1]), mask], dim=1)
            return Conditioning(t_g, tokens, token_mask, units)
        local_texts = [u.text for unit in units for u in unit.local]
        t_g, states, mask = self._text_tokens(list(prompts))  # (B, P), (B, L, P), (B, L)
        pooled = self._text_tokens(local_texts)[0] if local_texts else t_g.new_zeros(0, t_g.shape[-1])  # (sum M_i, P)
        m = self.cfg.max_local_units
        t_local = t_g.new_zeros(batch, m, t_g.shape[-1])  # (B, M, P)
        local_mask = torch.zeros(batch, m, dtype=torch.bool, device=t_g.device)  # (B, M)
        cursor = 0
        for row, unit in enumerate(units):
            count = len(unit.local)
            t_local[row, :count] = pooled[cursor : cursor + count]
            local_mask[row, :count] = True
            cursor += count
        t, composed_local = self.ccm(t_g, t_local, local_mask)
        tokens = torch.cat([t[:, None], composed_local, states], dim=1)  # (B, 1+M+L, P)
        token_mask = torch.cat([torch.ones_like(mask[:, :1]), local_mask, mask], dim=1)  # (B, 1+M+L)
        return Conditioning(t, tokens, token_mask, units)

    # ---- TLG (eq. 6)

    def layout_from_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """The TLG's output as a layout latent in [0, 1]."""
        return torch.sigmoid(logits) if self.cfg.layout.loss == "bce" else logits.clamp(0.0, 1.0)

    def layout_loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.cfg.layout.loss == "bce":
            return F.binary_cross_entropy_with_logits(logits.float(), target.float())
        return F.mse_loss(logits.float(), target.float())

    def predict_layout(self, cond: Conditioning) -> torch.Tensor:
        """z = g_TLG(t), (B, 3, h, w) in [0, 1]."""
        if self.tlg is None:
            raise ValueError("this VLAD has no TLG (model.layout.enabled=false)")
        return self.layout_from_logits(self.tlg(cond.tokens, cond.token_mask))

    # ---- VFE (eq. 7)

    def _denoiser(self, layout: torch.Tensor | None, token_mask: torch.Tensor, uncond_mask: torch.Tensor | None = None
                  ) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
        """eps_theta(x_t, t, tokens) with z concatenated to x_t and padded tokens masked (doubling for CFG)."""
        batch = token_mask.shape[0]

        def denoise(x: torch.Tensor, timesteps: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
            mask, z = token_mask, layout
            if x.shape[0] == 2 * batch:  # classifier-free guidance: [uncond; cond]
                mask = torch.cat([uncond_mask.expand(batch, -1), token_mask])
                z = torch.cat([layout, layout]) if layout is not None else None
            inputs = torch.cat([x, z.to(x.dtype)], dim=1) if z is not None else x  # (B, C+3, h, w)
            # diffusers turns the (B, L) keep-mask (1 keep, 0 discard) into an additive attention bias
            return self.unet(inputs, timesteps, encoder_hidden_states=tokens, encoder_attention_mask=mask.to(x.dtype),
                             return_dict=False)[0]

        return denoise

    # ---- training objective (eq. 8)

    def forward(
        self,
        latents: torch.Tensor,
        pixels: torch.Tensor,
        prompts: Sequence[str],
        layout: torch.Tensor | None = None,
        condition_dropout: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> dict[str, torch.Tensor]:
        """Losses on scaled VAE latents (B, C, h, w), images in [-1, 1] (B, 3, H, W) and prompts.

        `layout`: ground-truth z (B, 3, h, w), needed with hierarchical guidance. `condition_dropout`:
        (B,) bool, True where the VFE's prompt is dropped to "" (classifier-free guidance training;
        L_align and the TLG always see the real prompt). Returns 'loss' (eq. 8 plus the layout term),
        'align', 'diffusion', 'diffusion_mse', 'layout' (0 without the TLG) and 'inv_temperature'.
        """
        if latents.shape[1:] != self.latent_shape:
            raise ValueError(f"latents must be (B, *{self.latent_shape}), got {tuple(latents.shape)}")
        if self.tlg is not None and layout is None:
            raise ValueError("hierarchical guidance is on (model.layout.enabled): pass the ground-truth layout")
        cond = self.condition(prompts)
        v = self.lvlm.image_features(pixels)  # (B, P)
        l_align = align_loss(cond.t, v, self.log_inv_temperature)  # eq. 3
        l_layout = latents.new_zeros(())
        z = None
        if self.tlg is not None:
            logits = self.tlg(cond.tokens, cond.token_mask)  # (B, 3, h, w)
            l_layout = self.layout_loss(logits, layout)  # eq. 6
            z = layout
            if self.cfg.layout.predicted_layout_prob > 0:
                use_predicted = torch.rand(latents.shape[0], generator=generator, device=latents.device) \
                    < self.cfg.layout.predicted_layout_prob
                z = torch.where(use_predicted[:, None, None, None], self.layout_from_logits(logits.detach()), layout)
        tokens, token_mask = cond.tokens, cond.token_mask
        if condition_dropout is not None and bool(condition_dropout.any()):
            empty = self.condition([""])
            tokens = torch.where(condition_dropout[:, None, None], self._pad(empty.tokens, tokens.shape[1]), tokens)
            token_mask = torch.where(condition_dropout[:, None], self._pad(empty.token_mask, tokens.shape[1]), token_mask)
        diffusion = denoising_loss(self._denoiser(z, token_mask), self.noise_scheduler, latents, tokens,
                                   snr_gamma=self.cfg.diffusion.snr_gamma, generator=generator)  # eq. 9
        loss = l_align + self.cfg.diffusion_weight * diffusion["loss"] + self.cfg.layout.weight * l_layout
        return {"loss": loss, "align": l_align.detach(), "diffusion": diffusion["loss"].detach(),
                "diffusion_mse": diffusion["mse"].detach(), "layout": l_layout.detach(),
                "inv_temperature": self.log_inv_temperature.detach().exp()}

    @staticmethod
    def _pad(x: torch.Tensor, length: int) -> torch.Tensor:
        """Pad (or cut) the token axis (dim 1) of a (1, L, ...) tensor to `length` with zeros / False."""
        if x.shape[1] >= length:
            return x[:, :length]
        pad = x.new_zeros((x.shape[0], length - x.shape[1], *x.shape[2:]))
        return torch.cat([x, pad], dim=1)

    # ---- sampling

    @torch.no_grad()
    def sample_latents(
        self,
        prompts: Sequence[str],
        *,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        generator: torch.Generator | None = None,
        progress: Callable[[Iterable], Iterable] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(scaled latents (B, C, h, w), predicted layout (B, 3, h, w) or None without hierarchical guidance)."""
        diffusion = self.cfg.diffusion
        guidance_scale = diffusion.guidance_scale if guidance_scale is None else guidance_scale
        cond = self.condition(prompts)
        layout = self.predict_layout(cond) if self.tlg is not None else None
        uncond, uncond_mask = None, None
        if guidance_scale > 1.0:
            empty = self.condition([""])
            uncond = self._pad(empty.tokens, cond.tokens.shape[1])
            uncond_mask = self._pad(empty.token_mask, cond.tokens.shape[1])
        latents = sample(
            self._denoiser(layout, cond.token_mask, uncond_mask),
            make_sampling_scheduler(self.noise_scheduler, diffusion.sampler),
            cond.tokens, uncond,
            latent_shape=self.latent_shape,
            num_inference_steps=diffusion.num_inference_steps if num_inference_steps is None else num_inference_steps,
            guidance_scale=guidance_scale, generator=generator, progress=progress,
        )
        return latents, layout

    @torch.no_grad()
    def generate(self, prompts: Sequence[str], vae: AutoencoderKL, **sampling) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(images (B, 3, H, W) in [-1, 1], predicted layouts or None); `sampling` as in `sample_latents`."""
        if latent_shape(vae) != self.latent_shape:
            raise ValueError(f"the VAE's latent shape {latent_shape(vae)} differs from the VFE's {self.latent_shape}; "
                             "set model.unet.sample_size and model.unet.latent_channels from the VAE's config")
        latents, layout = self.sample_latents(prompts, **sampling)
        return decode_latents(vae, latents), layout

    # ---- persistence

    def save_pretrained(self, path: str | Path, vae: AutoencoderKL | None = None) -> Path:
        """Write the config, every weight, the tokenizer, the scheduler and the VAE (if given), atomically."""
        path = Path(path)
        with atomic_directory(path) as tmp:
            state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
            save_file(state, tmp / WEIGHTS_FILE)
            self.tokenizer.save_pretrained(tmp / "tokenizer")
            self.noise_scheduler.save_pretrained(tmp / "scheduler")
            if vae is not None:
                vae.save_pretrained(tmp / "vae", safe_serialization=True)
            (tmp / GENOPS_CONFIG_FILE).write_text(json.dumps(to_dict(self.cfg), indent=2) + "\n")
        return path

    @classmethod
    def from_pretrained(cls, path: str | Path) -> VLAD:
        """Load a folder written by `save_pretrained` (its VAE, if saved, with `load_autoencoder(path / 'vae')`)."""
        path = Path(path)
        cfg_file = path / GENOPS_CONFIG_FILE
        if not cfg_file.is_file():
            raise FileNotFoundError(f"{path} is not a vlad folder: {cfg_file} is missing")
        cfg = from_dict(VLADConfig, json.loads(cfg_file.read_text()), str(cfg_file))
        tokenizer = AutoTokenizer.from_pretrained(path / "tokenizer")
        model = cls.from_config(cfg, tokenizer)
        model.load_state_dict(load_file(path / WEIGHTS_FILE), strict=True)
        return model
