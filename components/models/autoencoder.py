"""The shared latent autoencoder (`vae`): a diffusers `AutoencoderKL`, its training loss, and its latent scale.

Every diffusion model in genops works in this autoencoder's latent space, as latent diffusion does
(Rombach et al. 2022, Sec. 3): images in [-1, 1] are encoded to a KL-regularised latent, and the
latent is multiplied by a scaling factor computed from data so that it has unit variance (LDM App.
D.1 / Sec. 4.3.2: "we rescale the latent ... by the component-wise standard deviation"; SD's 0.18215).
The factor lives in the AutoencoderKL's own config (`scaling_factor`), so `save_pretrained` keeps it.

Training loss (LDM App. G, taming-transformers' `LPIPSWithDiscriminator`): per-pixel reconstruction
+ KL + an adversarial term from a PatchGAN discriminator (hinge loss) switched on after a warm-up,
weighted adaptively by the ratio of gradient norms at the decoder's last layer. LPIPS, the perceptual
term of LDM's reconstruction loss, needs pretrained VGG weights that cannot be fetched here; in its
place an optional edge term (L1 between Sobel gradients of image and reconstruction) penalises what
a pixel loss averages away on flat-colour scenes: blurred edges and rounded corners, i.e. the shape.

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
import torch.nn.functional as F
from diffusers import AutoencoderKL
from PIL import Image
from torch import nn

from components.data.scene import Scene
from components.fileio import atomic_directory
from components.metrics.faithfulness import FaithfulnessMetrics, NamedObject, text_faithfulness

logger = logging.getLogger(__name__)


@dataclass
class AutoencoderConfig:
    """Architecture and loss of the latent autoencoder."""

    channels: int = 3
    """Image channels in and out (3 for RGB)."""
    sample_size: int = 64
    """Image side in pixels the autoencoder is trained at (square images)."""
    block_out_channels: tuple[int, ...] = (16, 32, 64)
    """Output channels of each encoder level; every level after the first halves the side."""
    layers_per_block: int = 1
    """ResNet blocks per encoder level (the decoder uses one more, as in diffusers)."""
    latent_channels: int = 4
    """Channels of the latent."""
    norm_num_groups: int = 4
    """GroupNorm groups; must divide every block_out_channels entry (one channel per group would erase colour)."""
    mid_block_add_attention: bool = True
    """Self-attention in the encoder and decoder mid blocks."""
    reconstruction_loss: Literal["l1", "l2"] = "l1"
    """Per-pixel reconstruction loss: 'l1' (LDM's choice) or 'l2'."""
    kl_weight: float = 1e-6
    """Weight of the KL term against the reconstruction term, both summed over an image (LDM kl-f8: 1e-6)."""
    edge_weight: float = 0.0
    """Weight of the edge term (L1 between Sobel gradients, per pixel) added to the reconstruction loss
    in place of LDM's LPIPS term (no pretrained VGG here); 0: off."""
    discriminator_weight: float = 0.0
    """Scale of the adaptive adversarial weight (taming's `disc_weight`, LDM kl-f8: 0.5); 0: no discriminator."""
    discriminator_start: int = 0
    """Optimizer step from which the discriminator trains and the generator gets its adversarial term
    (taming's `disc_start`): the autoencoder first learns to reconstruct, then to look real."""
    discriminator_layers: int = 3
    """Strided conv layers of the PatchGAN discriminator (pix2pix / taming: 3, a 70-px receptive field;
    2 gives 34 px, 1 gives 16 px)."""
    discriminator_channels: int = 64
    """Channels of the discriminator's first layer (doubled per layer, at most 8x)."""
    discriminator_lr: float = 1e-4
    """Adam learning rate of the discriminator (constant; taming uses the generator's)."""
    discriminator_betas: tuple[float, float] = (0.5, 0.9)
    """Adam betas of the discriminator (taming-transformers: 0.5, 0.9)."""

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
        for name in ("kl_weight", "edge_weight", "discriminator_weight", "discriminator_start"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.discriminator_layers < 1 or self.discriminator_channels < 1:
            raise ValueError(
                f"discriminator_layers and discriminator_channels must be >= 1, got "
                f"{self.discriminator_layers} and {self.discriminator_channels}"
            )
        if self.discriminator_lr <= 0:
            raise ValueError(f"discriminator_lr must be > 0, got {self.discriminator_lr}")

    @property
    def latent_size(self) -> int:
        """Side of the latent in cells."""
        return self.sample_size // 2 ** (len(self.block_out_channels) - 1)

    @property
    def uses_discriminator(self) -> bool:
        """Whether training has a discriminator at all (`discriminator_weight` > 0)."""
        return self.discriminator_weight > 0

    def discriminator_active(self, step: int) -> bool:
        """Whether the discriminator trains (and the adversarial term counts) at optimizer step `step`
        (0-based); before `discriminator_start` the loss is reconstruction + KL only."""
        return self.uses_discriminator and step >= self.discriminator_start


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


def sobel_gradients(pixels: torch.Tensor) -> torch.Tensor:
    """Horizontal and vertical Sobel responses per channel, (B, 2C, H, W) (replicate padding)."""
    kx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], device=pixels.device) / 8
    kernels = torch.stack([kx, kx.T]).unsqueeze(1).repeat(pixels.shape[1], 1, 1, 1)  # (2C, 1, 3, 3)
    padded = F.pad(pixels.float(), (1, 1, 1, 1), mode="replicate")
    return F.conv2d(padded, kernels, groups=pixels.shape[1])  # (B, 2C, H, W)


def autoencoder_loss(
    vae: AutoencoderKL,
    pixels: torch.Tensor,
    *,
    kl_weight: float,
    reconstruction: Literal["l1", "l2"] = "l1",
    edge_weight: float = 0.0,
    generator: torch.Generator | None = None,
) -> dict[str, torch.Tensor]:
    """Reconstruction + KL loss of a KL-regularised autoencoder (LDM, Sec. 3 and App. G).

    LDM sums both terms over an image: sum|x - D(z)| + w * KL(q(z|x) || N(0, I)). We divide both by
    the number of pixel values, so 'reconstruction' is a per-pixel mean and `kl_weight` keeps LDM's
    meaning. With `edge_weight` the reconstruction term also holds the mean L1 between Sobel
    gradients of image and reconstruction (our stand-in for LDM's LPIPS term).
    Returns 'loss' (to backpropagate), 'reconstruction' (per-pixel, edge term included), 'kl'
    (per image), 'edge' (when weighted) and 'reconstructed' (the decoder output, (B, C, H, W), for
    an adversarial term: pop it before logging).
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
    terms = {}
    if edge_weight:
        terms["edge"] = (sobel_gradients(reconstructed) - sobel_gradients(pixels)).abs().mean()
        reconstruction_loss = reconstruction_loss + edge_weight * terms["edge"]
    kl = posterior.kl().mean()  # KL summed over latent elements, averaged over the batch
    loss = reconstruction_loss + kl_weight * kl / pixels[0].numel()
    return {"loss": loss, "reconstruction": reconstruction_loss, "kl": kl, **terms, "reconstructed": reconstructed}


class AutoencoderWithLoss(nn.Module):
    """The autoencoder with its training loss as `forward`, so DDP (which hooks `forward`) can wrap it.

    The adversarial term is not here: the discriminator has its own optimizer and DDP wrapper, and
    the recipe adds `adversarial_generator_loss` to this loss once the discriminator is on.
    """

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
            edge_weight=self.cfg.edge_weight,
            generator=generator,
        )


class PatchDiscriminator(nn.Module):
    """PatchGAN discriminator (pix2pix; taming-transformers' `NLayerDiscriminator`): one real/fake logit
    per overlapping patch. (B, C, H, W) -> (B, 1, h, w)."""

    def __init__(self, channels: int = 3, width: int = 64, layers: int = 3):
        super().__init__()
        blocks: list[nn.Module] = [nn.Conv2d(channels, width, 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
        mult = 1
        for n in range(1, layers + 1):
            previous, mult = mult, min(2**n, 8)
            stride = 2 if n < layers else 1  # the last feature layer keeps the side (taming)
            blocks += [nn.Conv2d(width * previous, width * mult, 4, stride=stride, padding=1, bias=False),
                       nn.BatchNorm2d(width * mult), nn.LeakyReLU(0.2)]
        blocks.append(nn.Conv2d(width * mult, 1, 4, stride=1, padding=1))
        self.main = nn.Sequential(*blocks)
        for module in self.modules():  # taming's weights_init: N(0, 0.02) convs, N(1, 0.02) norms
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, 0.0, 0.02)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.normal_(module.weight, 1.0, 0.02)
                nn.init.zeros_(module.bias)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.main(pixels)


def build_discriminator(cfg: AutoencoderConfig) -> PatchDiscriminator:
    """The PatchGAN discriminator `cfg` describes (randomly initialised)."""
    if not cfg.uses_discriminator:
        raise ValueError("model.discriminator_weight is 0: this autoencoder config trains no discriminator")
    return PatchDiscriminator(cfg.channels, cfg.discriminator_channels, cfg.discriminator_layers)


def hinge_discriminator_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """Hinge loss of the discriminator: (mean relu(1 - D(x)) + mean relu(1 + D(G(x)))) / 2 (taming)."""
    return 0.5 * (F.relu(1.0 - logits_real.float()).mean() + F.relu(1.0 + logits_fake.float()).mean())


def adaptive_adversarial_weight(
    reconstruction_loss: torch.Tensor, generator_loss: torch.Tensor, last_layer: torch.Tensor, scale: float
) -> torch.Tensor:
    """taming's `calculate_adaptive_weight`: |grad rec| / (|grad adv| + 1e-4) at the decoder's last
    layer, clamped to [0, 1e4], detached, times `scale` (VQGAN eq. 7): the adversarial term then
    pulls on the decoder `scale` times as hard as the reconstruction term, whatever their units."""
    rec_grad = torch.autograd.grad(reconstruction_loss, last_layer, retain_graph=True)[0]
    adv_grad = torch.autograd.grad(generator_loss, last_layer, retain_graph=True)[0]
    return (rec_grad.norm() / (adv_grad.norm() + 1e-4)).clamp(0.0, 1e4).detach() * scale


def decoder_last_layer(vae: AutoencoderKL) -> torch.Tensor:
    """The weight the adaptive adversarial weight compares gradients at (the decoder's output conv)."""
    return vae.decoder.conv_out.weight


def adversarial_generator_loss(
    discriminator: nn.Module,
    reconstructed: torch.Tensor,
    reconstruction_loss: torch.Tensor,
    last_layer: torch.Tensor,
    scale: float,
) -> dict[str, torch.Tensor]:
    """The generator's adversarial term -mean D(G(x)), with its adaptive weight.

    The discriminator's parameters are frozen while the graph is built, so backpropagating the
    generator's loss leaves them without gradients (the discriminator has its own loss and step).
    Returns 'loss' (weight x term, to add to the autoencoder loss), 'generator_adversarial' (the
    term) and 'adversarial_weight'.
    """
    discriminator.requires_grad_(False)
    try:
        generator_loss = -discriminator(reconstructed).float().mean()
    finally:
        discriminator.requires_grad_(True)
    weight = adaptive_adversarial_weight(reconstruction_loss, generator_loss, last_layer, scale)
    return {"loss": weight * generator_loss, "generator_adversarial": generator_loss, "adversarial_weight": weight}


def discriminator_loss(discriminator: nn.Module, real: torch.Tensor, fake: torch.Tensor) -> dict[str, torch.Tensor]:
    """Hinge loss of `discriminator` on real images and (detached) reconstructions; 'discriminator',
    'logits_real', 'logits_fake' (means). Two forwards, as taming: batch-norm statistics per batch,
    the fake batch's the same as in the generator's term."""
    logits_real = discriminator(real.detach())  # (B, 1, h, w)
    logits_fake = discriminator(fake.detach())  # (B, 1, h, w)
    return {"discriminator": hinge_discriminator_loss(logits_real, logits_fake),
            "logits_real": logits_real.detach().mean(), "logits_fake": logits_fake.detach().mean()}


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


def roundtrip_images(vae: AutoencoderKL, pixels: torch.Tensor) -> list[Image.Image]:
    """Images (B, 3, H, W) in [-1, 1] through the autoencoder and back (posterior mean, clamped), as PIL
    images: what any latent model drawing through this autoencoder can at best give back."""
    return pixels_to_images(decode_latents(vae, encode_latents(vae, pixels)))


def scene_named_objects(groundtruth: Sequence[dict | None]) -> list[list[NamedObject]]:
    """Per sample, the objects of its ground-truth scene as a caption names them ([] without a scene)."""
    return [[NamedObject.from_scene_object(o) for o in Scene.from_json(gt["scene"]).objects]
            if gt and "scene" in gt else [] for gt in groundtruth]


@torch.no_grad()
def roundtrip_faithfulness(
    vae: AutoencoderKL, pixels: torch.Tensor, groundtruth: Sequence[dict | None]
) -> tuple[FaithfulnessMetrics, FaithfulnessMetrics]:
    """Text faithfulness (components/metrics/faithfulness.py) of the ground-truth scenes read from the
    round-trips of `pixels` (B, 3, H, W), and from the images themselves (the detector's ceiling).
    Samples without a scene are skipped; raises if none has one."""
    named = scene_named_objects(groundtruth)
    keep = [i for i, objects in enumerate(named) if objects]
    if not keep:
        raise ValueError("no sample has a ground-truth scene with objects to judge round-trips against")
    objects = [named[i] for i in keep]
    through_vae = text_faithfulness(roundtrip_images(vae, pixels[keep]), objects)
    real = text_faithfulness(pixels_to_images(pixels[keep]), objects)
    return through_vae, real


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
