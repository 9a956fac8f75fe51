"""The shared latent autoencoder (`vae`): a diffusers `AutoencoderKL`, its training loss, and its latent scale.

Every diffusion model in genops works in this autoencoder's latent space, as latent diffusion does
(Rombach et al. 2022, Sec. 3): images in [-1, 1] are encoded to a KL-regularised latent, and the
latent is multiplied by a scaling factor computed from data so that it has unit variance (LDM App.
D.1 / Sec. 4.3.2: "we rescale the latent ... by the component-wise standard deviation"; SD's 0.18215).
The factor lives in the AutoencoderKL's own config (`scaling_factor`), so `save_pretrained` keeps it.

Pixel tensors are (B, C, H, W) float in [-1, 1]; latents returned by `encode_latents` are scaled.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from diffusers import AutoencoderKL
from PIL import Image
from torch import nn

from components.fileio import atomic_directory

logger = logging.getLogger(__name__)


@dataclass
class AutoencoderConfig:
    """Architecture and loss of the latent autoencoder."""

    # image channels in and out (3 for RGB)
    channels: int = 3
    # image side in pixels the autoencoder is trained at (square images)
    sample_size: int = 64
    # output channels of each encoder level; every level after the first halves the side
    block_out_channels: tuple[int, ...] = (16, 32, 64)
    # ResNet blocks per encoder level (the decoder uses one more, as in diffusers)
    layers_per_block: int = 1
    # channels of the latent
    latent_channels: int = 4
    # GroupNorm groups; must divide every block_out_channels entry (one channel per group would erase colour)
    norm_num_groups: int = 4
    # self-attention in the encoder and decoder mid blocks
    mid_block_add_attention: bool = True
    # per-pixel reconstruction loss: 'l1' (LDM's choice) or 'l2'
    reconstruction_loss: Literal["l1", "l2"] = "l1"
    # weight of the KL term against the reconstruction term, both summed over an image (LDM kl-f8: 1e-6)
    kl_weight: float = 1e-6

    def __post_init__(self) -> None:
        if self.channels < 1:
            raise ValueError(f"channels must be >= 1, got {self.channels}")
        if not self.block_out_channels:
            raise ValueError("block_out_channels must list at least one level")
        if self.norm_num_groups < 1:
            raise ValueError(f"norm_num_groups must be >= 1, got {self.norm_num_groups}")
        for width in self.block_out_channels:
            if width < 1 or width % self.norm_num_groups:
                raise ValueError(
                    f"every block_out_channels entry must be a positive multiple of "
                    f"norm_num_groups={self.norm_num_groups}; got {list(self.block_out_channels)}"
                )
        downsample = 2 ** (len(self.block_out_channels) - 1)
        if self.sample_size < 1 or self.sample_size % downsample:
            raise ValueError(
                f"sample_size={self.sample_size} must be a positive multiple of the downsampling factor "
                f"{downsample} (2 ** (len(block_out_channels) - 1))"
            )
        if self.layers_per_block < 1:
            raise ValueError(f"layers_per_block must be >= 1, got {self.layers_per_block}")
        if self.latent_channels < 1:
            raise ValueError(f"latent_channels must be >= 1, got {self.latent_channels}")
        if self.kl_weight < 0:
            raise ValueError(f"kl_weight must be >= 0, got {self.kl_weight}")

    @property
    def latent_size(self) -> int:
        """Side of the latent in cells."""
        return self.sample_size // 2 ** (len(self.block_out_channels) - 1)


def build_autoencoder(cfg: AutoencoderConfig) -> AutoencoderKL:
    """A randomly initialised AutoencoderKL; its scaling factor is 1.0 until `set_scaling_factor`."""
    levels = len(cfg.block_out_channels)
    return AutoencoderKL(
        in_channels=cfg.channels,
        out_channels=cfg.channels,
        down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels,
        block_out_channels=tuple(cfg.block_out_channels),
        layers_per_block=cfg.layers_per_block,
        latent_channels=cfg.latent_channels,
        norm_num_groups=cfg.norm_num_groups,
        sample_size=cfg.sample_size,
        scaling_factor=1.0,
        mid_block_add_attention=cfg.mid_block_add_attention,
    )


def autoencoder_loss(
    vae: AutoencoderKL,
    pixels: torch.Tensor,
    *,
    kl_weight: float,
    reconstruction: Literal["l1", "l2"] = "l1",
    generator: torch.Generator | None = None,
) -> dict[str, torch.Tensor]:
    """Reconstruction + KL loss of a KL-regularised autoencoder (LDM, Sec. 3 and App. G).

    LDM sums both terms over an image: sum|x - D(z)| + w * KL(q(z|x) || N(0, I)). We divide both by
    the number of pixel values, so 'reconstruction' is a per-pixel mean and `kl_weight` keeps LDM's
    meaning. Returns 'loss' (to backpropagate), 'reconstruction' (per-pixel) and 'kl' (per image).
    """
    posterior = vae.encode(pixels).latent_dist
    z = posterior.sample(generator)  # (B, c, h, w)
    reconstructed = vae.decode(z).sample  # (B, C, H, W)
    if reconstruction == "l1":
        reconstruction_loss = (reconstructed.float() - pixels.float()).abs().mean()
    elif reconstruction == "l2":
        reconstruction_loss = (reconstructed.float() - pixels.float()).pow(2).mean()
    else:
        raise ValueError(f"unknown reconstruction loss {reconstruction!r}; use 'l1' or 'l2'")
    kl = posterior.kl().mean()  # KL summed over latent elements, averaged over the batch
    loss = reconstruction_loss + kl_weight * kl / pixels[0].numel()
    return {"loss": loss, "reconstruction": reconstruction_loss, "kl": kl}


class AutoencoderWithLoss(nn.Module):
    """The autoencoder with its training loss as `forward`, so DDP (which hooks `forward`) can wrap it."""

    def __init__(self, vae: AutoencoderKL, cfg: AutoencoderConfig):
        super().__init__()
        self.vae = vae
        self.cfg = cfg

    def forward(self, pixels: torch.Tensor, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        return autoencoder_loss(
            self.vae,
            pixels,
            kl_weight=self.cfg.kl_weight,
            reconstruction=self.cfg.reconstruction_loss,
            generator=generator,
        )


def encode_latents(
    vae: AutoencoderKL, pixels: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Scaled latents of images in [-1, 1]: (z - shift) * scaling_factor, (B, c, h, w).

    With a `generator` z is a posterior sample (what LDM trains the diffusion model on); without
    one it is the posterior mean, deterministic and so fit for precomputing latents once.
    """
    posterior = vae.encode(pixels).latent_dist
    z = posterior.sample(generator) if generator is not None else posterior.mode()  # (B, c, h, w)
    shift = vae.config.shift_factor or 0.0
    return (z - shift) * vae.config.scaling_factor


def decode_latents(vae: AutoencoderKL, latents: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] (clamped) from scaled latents, (B, C, H, W)."""
    shift = vae.config.shift_factor or 0.0
    z = latents / vae.config.scaling_factor + shift  # (B, c, h, w)
    return vae.decode(z).sample.clamp(-1.0, 1.0)


def latent_shape(vae: AutoencoderKL) -> tuple[int, int, int]:
    """(channels, height, width) of the latent of one image at the autoencoder's sample_size."""
    side = vae.config.sample_size // 2 ** (len(vae.config.block_out_channels) - 1)
    return vae.config.latent_channels, side, side


@torch.no_grad()
def compute_scaling_factor(
    vae: AutoencoderKL,
    pixel_batches: Iterable[torch.Tensor],
    *,
    max_images: int = 512,
    generator: torch.Generator | None = None,
) -> float:
    """1 / std of the unscaled latents over up to `max_images` images (LDM's `scale_by_std`).

    The latents are the ones the diffusion model will see: posterior means without a `generator`
    (what `encode_latents` gives without one, and what genops' diffusion recipes train on),
    posterior samples with one (LDM's choice). Measure with the same convention the diffusion
    training uses: a briefly trained small autoencoder can leave latent elements its decoder
    ignores with a huge posterior variance (log-variance up to 17 was seen on the demo profile), and
    samples of those are pure noise with a std of ~50 that would swamp the factor.
    """
    if max_images < 1:
        raise ValueError(f"max_images must be >= 1, got {max_images}")
    samples = []
    seen = 0
    for pixels in pixel_batches:
        pixels = pixels[: max_images - seen]
        posterior = vae.encode(pixels).latent_dist
        latents = posterior.sample(generator) if generator is not None else posterior.mode()  # (B, c, h, w)
        samples.append(latents.flatten().double())
        seen += pixels.shape[0]
        if seen >= max_images:
            break
    if seen < 2:
        raise ValueError(f"need at least 2 images to estimate the latent std, got {seen}")
    std = torch.cat(samples).std().item()
    if not np.isfinite(std) or std <= 0:
        raise ValueError(f"latent std over {seen} images is {std}; the autoencoder's latents are degenerate")
    logger.info("latent std over %d images: %.5f -> scaling factor %.5f", seen, std, 1.0 / std)
    return 1.0 / std


def set_scaling_factor(vae: AutoencoderKL, scaling_factor: float) -> None:
    """Store the latent scaling factor in the AutoencoderKL config (saved by `save_pretrained`)."""
    if not np.isfinite(scaling_factor) or scaling_factor <= 0:
        raise ValueError(f"scaling_factor must be a positive finite number, got {scaling_factor}")
    vae.register_to_config(scaling_factor=float(scaling_factor))


def save_autoencoder(vae: AutoencoderKL, path: str | Path) -> Path:
    """Write the autoencoder in diffusers `save_pretrained` form (config.json + safetensors), atomically."""
    path = Path(path)
    with atomic_directory(path) as tmp:
        vae.save_pretrained(tmp, safe_serialization=True)
    return path


def load_autoencoder(path: str | Path) -> AutoencoderKL:
    """Load an autoencoder folder written by `save_autoencoder` (or any diffusers AutoencoderKL folder)."""
    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path} is not an AutoencoderKL folder: {path / 'config.json'} is missing")
    return AutoencoderKL.from_pretrained(path)


def images_to_pixels(images: Sequence[Image.Image], size: int | None = None) -> torch.Tensor:
    """PIL images -> (B, 3, H, W) float in [-1, 1]; `size` resizes (bicubic) to size x size first."""
    arrays = []
    for image in images:
        image = image.convert("RGB")
        if size is not None and image.size != (size, size):
            image = image.resize((size, size), Image.Resampling.BICUBIC)
        arrays.append(np.asarray(image, dtype=np.float32))
    if len({a.shape for a in arrays}) > 1:
        raise ValueError(f"images have different sizes {sorted({a.shape for a in arrays})}; pass `size`")
    batch = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)  # (B, 3, H, W) in [0, 255]
    return batch / 127.5 - 1.0


def pixels_to_images(pixels: torch.Tensor) -> list[Image.Image]:
    """(B, 3, H, W) in [-1, 1] -> PIL RGB images."""
    array = ((pixels.detach().float().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)  # (B, 3, H, W)
    return [Image.fromarray(a.permute(1, 2, 0).cpu().numpy()) for a in array]
