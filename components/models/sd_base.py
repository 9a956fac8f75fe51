"""The SD-style base text-to-image model (`sd_base`): a CLIP text encoder and a cross-attention UNet in
the shared VAE's latent space.

This is Stable Diffusion's design (Rombach et al. 2022, Sec. 3.3: a UNet eps_theta(z_t, t, tau(y))
attends to the text encoder's token states through cross-attention; SD 2.1 uses an OpenCLIP-H text
tower). genops trains both parts from scratch on short captions with the noise-prediction loss
(`components.diffusion.denoising_loss`), dropping 10% of captions to the empty prompt so one network
serves classifier-free guidance. It is the "SD" baseline row in comparisons and the frozen generator
MiniGPT-5 maps its vokens into (through `SDBase.denoise` and `SDBase.noise_scheduler`).

Folder layout of `save_pretrained`, like a diffusers pipeline folder:
    model_index.json            which component lives in which subfolder, and their classes
    genops_sd_base.json         the SDBaseConfig
    text_encoder/  unet/  scheduler/  [tokenizer/]  [vae/]
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from safetensors.torch import load_file
from torch import nn
from transformers import AutoTokenizer, CLIPTextModel, PreTrainedTokenizerBase

from components.config import from_dict, to_dict
from components.diffusion import (
    DiffusionConfig,
    denoising_loss,
    make_noise_scheduler,
    make_sampling_scheduler,
    sample,
)
from components.fileio import atomic_directory
from components.models.autoencoder import decode_latents, latent_shape
from components.models.clip_evaluator import CLIPTextTowerConfig, clip_text_config, tokenize_captions

logger = logging.getLogger(__name__)

GENOPS_CONFIG_FILE = "genops_sd_base.json"
# Scheduler keys that define the noise schedule; a saved scheduler must agree with the saved config on them.
SCHEDULE_KEYS = ("num_train_timesteps", "beta_schedule", "beta_start", "beta_end", "prediction_type")


@dataclass
class SDUNetConfig:
    """The denoising UNet (diffusers UNet2DConditionModel) over VAE latents."""

    # side of the latent the UNet denoises; equals the VAE's latent side (image side / VAE downsampling)
    sample_size: int = 8
    # latent channels in and out; equals the VAE's latent_channels
    latent_channels: int = 4
    # output channels of each UNet level; every level after the first halves the side
    block_out_channels: tuple[int, ...] = (32, 64)
    # per level: True gives the level's blocks cross-attention to the text (SD: true, true, true, false)
    cross_attention: tuple[bool, ...] = (True, True)
    # ResNet (+ transformer) blocks per level
    layers_per_block: int = 1
    # attention heads per level; diffusers calls this `attention_head_dim` for historical reasons (SD 2.1: 5, 10, 20, 20)
    attention_head_dim: tuple[int, ...] = (2, 4)
    # transformer blocks inside each cross-attention block
    transformer_layers_per_block: int = 1
    # GroupNorm groups; must divide every entry of block_out_channels
    norm_num_groups: int = 8
    # linear (instead of 1x1 conv) projections in and out of the transformer blocks, as SD 2.x
    use_linear_projection: bool = True
    # a learned 2D position embedding (sin-cos initialised) added to the tokens entering every transformer
    # block, so that cross-attention queries know where they are (`PositionedProjection`)
    position_embedding: bool = False
    # a global text vector added to the timestep embedding of every ResNet block: attention pooling over the
    # conditioning tokens (diffusers' `addition_embed_type="text"`, DeepFloyd IF's design), so the
    # convolutions, which do know where they are, see what the prompt asks for at every level
    text_time_embedding: bool = False
    # heads of that attention pooling; must divide the text encoder's hidden size
    text_time_heads: int = 4

    def __post_init__(self) -> None:
        levels = len(self.block_out_channels)
        if levels < 1:
            raise ValueError("unet.block_out_channels must list at least one level")
        if len(self.cross_attention) != levels:
            raise ValueError(
                f"unet.cross_attention has {len(self.cross_attention)} entries but unet.block_out_channels has {levels}"
            )
        if len(self.attention_head_dim) != levels:
            raise ValueError(
                f"unet.attention_head_dim has {len(self.attention_head_dim)} entries but "
                f"unet.block_out_channels has {levels}"
            )
        for width, heads in zip(self.block_out_channels, self.attention_head_dim):
            if width < 1 or width % self.norm_num_groups:
                raise ValueError(
                    f"every unet.block_out_channels entry must be a positive multiple of "
                    f"unet.norm_num_groups={self.norm_num_groups}; got {list(self.block_out_channels)}"
                )
            if heads < 1 or width % heads:
                raise ValueError(
                    f"unet.attention_head_dim (heads per level) {list(self.attention_head_dim)} must divide "
                    f"unet.block_out_channels {list(self.block_out_channels)} level by level"
                )
        downsample = 2 ** (levels - 1)
        if self.sample_size < 1 or self.sample_size % downsample:
            raise ValueError(
                f"unet.sample_size={self.sample_size} must be a positive multiple of the UNet's downsampling "
                f"factor {downsample} (2 ** (len(unet.block_out_channels) - 1))"
            )
        if self.text_time_heads < 1:
            raise ValueError(f"unet.text_time_heads must be >= 1, got {self.text_time_heads}")
        if self.latent_channels < 1:
            raise ValueError(f"unet.latent_channels must be >= 1, got {self.latent_channels}")
        if self.layers_per_block < 1:
            raise ValueError(f"unet.layers_per_block must be >= 1, got {self.layers_per_block}")
        if self.transformer_layers_per_block < 1:
            raise ValueError(f"unet.transformer_layers_per_block must be >= 1, got {self.transformer_layers_per_block}")
        if self.position_embedding and not self.use_linear_projection:
            raise ValueError("unet.position_embedding adds to the tokens of a linear proj_in: set unet.use_linear_projection=true")
        if self.position_embedding and any(w % 4 for w in self.block_out_channels):
            raise ValueError(
                f"unet.position_embedding needs every unet.block_out_channels entry divisible by 4 (2D sin-cos "
                f"init), got {list(self.block_out_channels)}"
            )


@dataclass
class SDBaseConfig:
    """The SD-style base model: text encoder, UNet, and diffusion process."""

    # CLIP text encoder; its hidden_size is the UNet's cross-attention width
    text: CLIPTextTowerConfig = field(default_factory=CLIPTextTowerConfig)
    # denoising UNet
    unet: SDUNetConfig = field(default_factory=SDUNetConfig)
    # noise schedule, prediction type, min-SNR, caption dropout and sampler defaults
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    # train only the UNet: the text encoder keeps its initial (or pretrained) weights, as SD freezes its CLIP text tower
    freeze_text_encoder: bool = False


def architecture_differences(wanted: SDBaseConfig, saved: SDBaseConfig) -> list[str]:
    """Where two configs disagree on what a saved model's weights mean: every `text.*` and `unet.*` field
    (the shapes and layout of the weights) and the noise schedule the UNet learnt (`SCHEDULE_KEYS`), as
    'unet.sample_size: 8 vs 16' (wanted vs saved). Sampler defaults, min-SNR, caption dropout and
    freeze_text_encoder are how a model is trained or sampled, not what its weights are: not compared."""
    ours = {f"{part}.{k}": v for part in ("text", "unet") for k, v in to_dict(getattr(wanted, part)).items()}
    theirs = {f"{part}.{k}": v for part in ("text", "unet") for k, v in to_dict(getattr(saved, part)).items()}
    for key in SCHEDULE_KEYS:
        ours[f"diffusion.{key}"], theirs[f"diffusion.{key}"] = getattr(wanted.diffusion, key), getattr(saved.diffusion, key)
    return [f"{name}: {value!r} vs {theirs[name]!r}" for name, value in ours.items() if value != theirs[name]]


def build_unet(cfg: SDUNetConfig, cross_attention_dim: int) -> UNet2DConditionModel:
    """A randomly initialised UNet2DConditionModel, SD-style (cross-attention levels first, mid block cross-attn)."""
    down_block_types = tuple("CrossAttnDownBlock2D" if x else "DownBlock2D" for x in cfg.cross_attention)
    up_block_types = tuple("CrossAttnUpBlock2D" if x else "UpBlock2D" for x in reversed(cfg.cross_attention))
    unet = UNet2DConditionModel(
        sample_size=cfg.sample_size,
        in_channels=cfg.latent_channels,
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
        addition_embed_type="text" if cfg.text_time_embedding else None,
        addition_embed_type_num_heads=cfg.text_time_heads,
    )
    return add_position_embeddings(unet) if cfg.position_embedding else unet


def sincos_position_embedding(side: int, width: int) -> torch.Tensor:
    """2D sin-cos position embedding of a side x side grid, (side * side, width), row-major like the tokens.

    Half the channels encode the row, half the column, each as sin/cos at geometric frequencies
    (MAE's 2D form of the Transformer's 1D embedding, He et al. 2022).
    """
    if width % 4:
        raise ValueError(f"the 2D sin-cos embedding needs a width divisible by 4, got {width}")
    quarter = width // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)  # (D/4,)
    coords = torch.arange(side, dtype=torch.float64)
    rows, cols = torch.meshgrid(coords, coords, indexing="ij")  # (side, side) each

    def encode(pos: torch.Tensor) -> torch.Tensor:
        angles = pos.reshape(-1, 1) * omega  # (side*side, D/4)
        return torch.cat([angles.sin(), angles.cos()], dim=1)  # (side*side, D/2)

    return torch.cat([encode(rows), encode(cols)], dim=1).float()  # (side*side, D)


class PositionedProjection(nn.Linear):
    """A transformer block's linear `proj_in` whose output tokens get a learned 2D position embedding.

    UNet2DConditionModel's attention has no positional information: a query is a function of the
    features at its location only, and at high noise those are alike everywhere, so "at the top left"
    cannot pick out the top left. Adding a position embedding to the tokens entering the transformer
    blocks (as ViT does; the residual stream around the block stays as diffusers computes it) lets a
    query depend on where it is. Subclassing nn.Linear keeps the projection's state-dict keys
    (`proj_in.weight`, `proj_in.bias`) and adds `proj_in.position`.
    """

    def __init__(self, in_features: int, out_features: int, side: int, bias: bool = True, device=None, dtype=None):
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self.side = side
        self.position = nn.Parameter(
            sincos_position_embedding(side, out_features).to(device=device, dtype=dtype)
        )  # (side * side, out_features)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if tokens.shape[-2] != self.side * self.side:
            raise ValueError(
                f"this projection's position embedding is for a {self.side}x{self.side} grid "
                f"({self.side * self.side} tokens), got {tokens.shape[-2]} tokens: sample at unet.sample_size"
            )
        return super().forward(tokens) + self.position  # (B, side*side, D)


def transformer_sides(unet: UNet2DConditionModel) -> list[tuple[str, nn.Module, int]]:
    """(name, Transformer2DModel, grid side) of every transformer block in the UNet, down, mid, up.

    Down level i works at sample_size / 2**i; the mid block and up_blocks[0] at the deepest level.
    """
    side = unet.config.sample_size
    levels = len(unet.down_blocks)
    found = []
    for i, block in enumerate(unet.down_blocks):
        for j, attention in enumerate(getattr(block, "attentions", None) or []):
            found.append((f"down_blocks.{i}.attentions.{j}", attention, side // 2**i))
    for j, attention in enumerate(getattr(unet.mid_block, "attentions", None) or []):
        found.append((f"mid_block.attentions.{j}", attention, side // 2 ** (levels - 1)))
    for i, block in enumerate(unet.up_blocks):
        for j, attention in enumerate(getattr(block, "attentions", None) or []):
            found.append((f"up_blocks.{i}.attentions.{j}", attention, side // 2 ** (levels - 1 - i)))
    return found


def add_position_embeddings(unet: UNet2DConditionModel) -> UNet2DConditionModel:
    """Swap every transformer block's linear proj_in for a `PositionedProjection` (weights kept), in place."""
    for name, transformer, side in transformer_sides(unet):
        proj = transformer.proj_in
        if isinstance(proj, PositionedProjection):
            continue
        if not isinstance(proj, nn.Linear):
            raise TypeError(f"{name}.proj_in is {type(proj).__name__}; position embeddings need use_linear_projection")
        positioned = PositionedProjection(
            proj.in_features, proj.out_features, side, bias=proj.bias is not None,
            device=proj.weight.device, dtype=proj.weight.dtype,
        )
        if not proj.weight.is_meta:
            with torch.no_grad():
                positioned.weight.copy_(proj.weight)
                if proj.bias is not None:
                    positioned.bias.copy_(proj.bias)
        transformer.proj_in = positioned
    return unet


class SDBase(nn.Module):
    """Text encoder + UNet (+ tokenizer); `forward` is the training loss, `sample_latents`/`generate` sample."""

    def __init__(
        self,
        cfg: SDBaseConfig,
        text_encoder: CLIPTextModel,
        unet: UNet2DConditionModel,
        tokenizer: PreTrainedTokenizerBase | None = None,
    ):
        super().__init__()
        if unet.config.cross_attention_dim != text_encoder.config.hidden_size:
            raise ValueError(
                f"unet cross_attention_dim={unet.config.cross_attention_dim} differs from the text encoder's "
                f"hidden_size={text_encoder.config.hidden_size}"
            )
        if tokenizer is not None and text_encoder.config.vocab_size < len(tokenizer):
            raise ValueError(
                f"the text encoder has {text_encoder.config.vocab_size} token embeddings but the tokenizer has "
                f"{len(tokenizer)} tokens; build the model with this tokenizer"
            )
        self.cfg = cfg
        self.text_encoder = text_encoder
        self.unet = unet
        self.tokenizer = tokenizer
        self.noise_scheduler = make_noise_scheduler(cfg.diffusion)

    @classmethod
    def from_config(cls, cfg: SDBaseConfig, tokenizer: PreTrainedTokenizerBase | None = None) -> SDBase:
        """Randomly initialised text encoder and UNet; the vocabulary and special ids come from `tokenizer`."""
        if cfg.unet.text_time_embedding and cfg.text.hidden_size % cfg.unet.text_time_heads:
            raise ValueError(
                f"unet.text_time_heads={cfg.unet.text_time_heads} must divide text.hidden_size={cfg.text.hidden_size}"
            )
        text_encoder = CLIPTextModel(clip_text_config(cfg.text, tokenizer))
        text_encoder.requires_grad_(not cfg.freeze_text_encoder)
        unet = build_unet(cfg.unet, cross_attention_dim=cfg.text.hidden_size)
        return cls(cfg, text_encoder, unet, tokenizer)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """(channels, height, width) of the latents the UNet denoises."""
        side = self.unet.config.sample_size
        return self.unet.config.in_channels, side, side

    def enable_gradient_checkpointing(self) -> None:
        """Recompute activations in backward for both parts (memory for compute)."""
        self.unet.enable_gradient_checkpointing()
        self.text_encoder.gradient_checkpointing_enable()

    def tokenize(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """CLIP-style (input_ids, attention_mask), each (B, L), on the model's device."""
        if self.tokenizer is None:
            raise ValueError("this SDBase has no tokenizer; build or load it with one, or pass token ids")
        input_ids, attention_mask = tokenize_captions(
            self.tokenizer, prompts, self.text_encoder.config.max_position_embeddings
        )
        device = self.unet.device
        return input_ids.to(device), attention_mask.to(device)

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """The UNet's conditioning: the text encoder's final token states, (B, L, D).

        A frozen text encoder (no parameter requiring grad, as SD trains it) runs without autograd.
        """
        trainable = any(p.requires_grad for p in self.text_encoder.parameters())
        with torch.set_grad_enabled(torch.is_grad_enabled() and trainable):
            return self.text_encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    def encode_prompts(self, prompts: Sequence[str]) -> torch.Tensor:
        """Conditioning (B, L, D) of prompts, tokenized with the model's tokenizer."""
        return self.encode_text(*self.tokenize(prompts))

    def denoise(self, latents: torch.Tensor, t: torch.Tensor, encoder_hidden_states: torch.Tensor) -> torch.Tensor:
        """The UNet's prediction (eps or v, per the scheduler's prediction_type), (B, C, h, w)."""
        return self.unet(latents, t, encoder_hidden_states=encoder_hidden_states, return_dict=False)[0]

    def forward(
        self,
        latents: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> dict[str, torch.Tensor]:
        """Training loss on scaled VAE latents (B, C, h, w) and their captions' token ids (B, L).

        Caption dropout for classifier-free guidance is the caller's, before tokenizing:
        `components.diffusion.drop_captions(captions, cfg.diffusion.condition_dropout, generator)`.
        Returns 'loss' (min-SNR-weighted if configured) and 'mse'.
        """
        if latents.shape[1:] != self.latent_shape:
            raise ValueError(f"latents must be (B, *{self.latent_shape}), got {tuple(latents.shape)}")
        encoder_hidden_states = self.encode_text(input_ids, attention_mask)  # (B, L, D)
        return denoising_loss(
            self.denoise,
            self.noise_scheduler,
            latents,
            encoder_hidden_states,
            snr_gamma=self.cfg.diffusion.snr_gamma,
            generator=generator,
        )

    @torch.no_grad()
    def sample_latents(
        self,
        prompts: Sequence[str],
        *,
        negative_prompt: str = "",
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        sampler: Literal["dpmsolver++", "ddim"] | None = None,
        generator: torch.Generator | None = None,
        progress: Callable[[Iterable], Iterable] | None = None,
    ) -> torch.Tensor:
        """Scaled latents (B, C, h, w) for `prompts`, with classifier-free guidance against `negative_prompt`.

        Unset arguments take the config's defaults (`diffusion.num_inference_steps`, ...).
        """
        diffusion = self.cfg.diffusion
        guidance_scale = diffusion.guidance_scale if guidance_scale is None else guidance_scale
        cond = self.encode_prompts(prompts)  # (B, L, D)
        uncond = self.encode_prompts([negative_prompt]) if guidance_scale > 1.0 else None  # (1, L, D)
        return sample(
            self.denoise,
            make_sampling_scheduler(self.noise_scheduler, sampler or diffusion.sampler),
            cond,
            uncond,
            latent_shape=self.latent_shape,
            num_inference_steps=diffusion.num_inference_steps if num_inference_steps is None else num_inference_steps,
            guidance_scale=guidance_scale,
            generator=generator,
            progress=progress,
        )

    @torch.no_grad()
    def generate(self, prompts: Sequence[str], vae: AutoencoderKL, **sampling) -> torch.Tensor:
        """Images (B, 3, H, W) in [-1, 1] for `prompts`; `sampling` as in `sample_latents`."""
        if latent_shape(vae) != self.latent_shape:
            raise ValueError(
                f"the VAE's latent shape {latent_shape(vae)} differs from the UNet's {self.latent_shape}; "
                f"set unet.sample_size and unet.latent_channels from the VAE's config"
            )
        return decode_latents(vae, self.sample_latents(prompts, **sampling))

    def save_pretrained(self, path: str | Path, vae: AutoencoderKL | None = None) -> Path:
        """Write text_encoder/, unet/, scheduler/, tokenizer/ (if any) and vae/ (if given), atomically."""
        path = Path(path)
        components: dict[str, list[str]] = {
            "text_encoder": ["transformers", type(self.text_encoder).__name__],
            "unet": ["diffusers", type(self.unet).__name__],
            "scheduler": ["diffusers", type(self.noise_scheduler).__name__],
        }
        with atomic_directory(path) as tmp:
            self.text_encoder.save_pretrained(tmp / "text_encoder", safe_serialization=True)
            self.unet.save_pretrained(tmp / "unet", safe_serialization=True)
            self.noise_scheduler.save_pretrained(tmp / "scheduler")
            if self.tokenizer is not None:
                self.tokenizer.save_pretrained(tmp / "tokenizer")
                components["tokenizer"] = ["transformers", type(self.tokenizer).__name__]
            if vae is not None:
                vae.save_pretrained(tmp / "vae", safe_serialization=True)
                components["vae"] = ["diffusers", type(vae).__name__]
            (tmp / GENOPS_CONFIG_FILE).write_text(json.dumps(to_dict(self.cfg), indent=2) + "\n")
            index = {"_class_name": "genops.components.models.sd_base.SDBase", **components}
            (tmp / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
        return path

    @classmethod
    def from_pretrained(cls, path: str | Path) -> SDBase:
        """Load a folder written by `save_pretrained` (its VAE, if saved, loads with `load_autoencoder(path / 'vae')`)."""
        path = Path(path)
        cfg_file = path / GENOPS_CONFIG_FILE
        if not cfg_file.is_file():
            raise FileNotFoundError(f"{path} is not an sd_base folder: {cfg_file} is missing")
        cfg = from_dict(SDBaseConfig, json.loads(cfg_file.read_text()), str(cfg_file))
        saved_scheduler = DDPMScheduler.from_pretrained(path / "scheduler")
        expected = make_noise_scheduler(cfg.diffusion)
        for key in SCHEDULE_KEYS:
            if saved_scheduler.config[key] != expected.config[key]:
                raise ValueError(
                    f"{path / 'scheduler'} has {key}={saved_scheduler.config[key]!r} but {cfg_file} says "
                    f"{expected.config[key]!r}; the folder was edited inconsistently"
                )
        text_encoder = CLIPTextModel.from_pretrained(path / "text_encoder")
        if cfg.unet.position_embedding:
            # diffusers' loader builds a plain UNet and would drop the `proj_in.position` weights: build it
            # from its config, add the embeddings, then load every weight strictly
            unet = add_position_embeddings(UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(path / "unet")))
            unet.load_state_dict(load_file(path / "unet" / "diffusion_pytorch_model.safetensors"), strict=True)
        else:
            unet = UNet2DConditionModel.from_pretrained(path / "unet")
        tokenizer = AutoTokenizer.from_pretrained(path / "tokenizer") if (path / "tokenizer").is_dir() else None
        return cls(cfg, text_encoder, unet, tokenizer)
