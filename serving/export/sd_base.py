"""sd_base's sampling-time graphs: the CLIP text encoder, the UNet and the VAE decoder.

Inputs and outputs (names are what `serving.sampler.OnnxBackend` binds):
    text_encoder   input_ids (B, L) int64, attention_mask (B, L) int64 -> last_hidden_state (B, L, D)
    unet           sample (B, C, h, w) f32, timestep (B,) int64, encoder_hidden_states (B, L, D) -> prediction (B, C, h, w)
    vae_decoder    latents (B, C, h, w) f32, scaled as the UNet sees them -> images (B, 3, H, W) in [-1, 1]
sd_base has no LoRA adapters, so there is nothing to merge before export (a family fine-tuned with PEFT
merges first, see `merge_lora`).
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL
from torch import nn

from components.models.autoencoder import decode_latents
from components.models.sd_base import SDBase
from serving.export.onnx_graphs import GraphSpec


class TextEncoderGraph(nn.Module):
    def __init__(self, sd: SDBase):
        super().__init__()
        self.text_encoder = sd.text_encoder

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.text_encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


class UNetGraph(nn.Module):
    def __init__(self, sd: SDBase):
        super().__init__()
        self.unet = sd.unet

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor) -> torch.Tensor:
        return self.unet(sample, timestep, encoder_hidden_states=encoder_hidden_states, return_dict=False)[0]


class VaeDecoderGraph(nn.Module):
    """Scaled latents -> clamped images: `components.models.autoencoder.decode_latents` as one graph."""

    def __init__(self, vae: AutoencoderKL):
        super().__init__()
        self.vae = vae

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        return decode_latents(self.vae, latents)


def vae_factor(vae: AutoencoderKL) -> int:
    return 2 ** (len(vae.config.block_out_channels) - 1)


def allowed_sides(sd: SDBase, vae: AutoencoderKL) -> list[int]:
    """Image sides the service offers: the trained side, and twice it unless the UNet has position
    embeddings fixed to its grid (PositionedProjection)."""
    side = sd.unet.config.sample_size * vae_factor(vae)
    return [side] if sd.cfg.unet.position_embedding else [side, 2 * side]


def graph_specs(sd: SDBase, vae: AutoencoderKL) -> list[GraphSpec]:
    """The three graphs with two parity shapes each (batch, sequence and spatial sizes all differ)."""
    text = sd.text_encoder.config
    length = text.max_position_embeddings
    width = text.hidden_size
    channels, side, _ = sd.latent_shape
    down = 2 ** (len(sd.unet.config.block_out_channels) - 1)
    other_side = side if sd.cfg.unet.position_embedding else side + down  # a second spatial size the UNet accepts
    vocab = text.vocab_size

    def text_inputs(s):
        g = torch.Generator().manual_seed(s["batch"] * 100 + s["length"])
        ids = torch.randint(0, vocab, (s["batch"], s["length"]), generator=g)
        mask = torch.ones_like(ids)
        mask[:, s["length"] - 2:] = 0  # trailing padding, as tokenize_captions leaves it
        return ids, mask

    def unet_inputs(s):
        g = torch.Generator().manual_seed(s["batch"] * 100 + s["side"])
        return (torch.randn(s["batch"], channels, s["side"], s["side"], generator=g),
                torch.randint(0, sd.noise_scheduler.config.num_train_timesteps, (s["batch"],), generator=g),
                torch.randn(s["batch"], s["length"], width, generator=g))

    def vae_inputs(s):
        g = torch.Generator().manual_seed(s["batch"] * 100 + s["side"])
        return (torch.randn(s["batch"], channels, s["side"], s["side"], generator=g),)

    return [
        GraphSpec("text_encoder", TextEncoderGraph(sd).eval(), ["input_ids", "attention_mask"], ["last_hidden_state"],
                  {"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "sequence"},
                   "last_hidden_state": {0: "batch", 1: "sequence"}},
                  text_inputs, [{"batch": 2, "length": length}, {"batch": 3, "length": max(3, length // 2)}]),
        GraphSpec("unet", UNetGraph(sd).eval(), ["sample", "timestep", "encoder_hidden_states"], ["prediction"],
                  {"sample": {0: "batch", 2: "height", 3: "width"}, "timestep": {0: "batch"},
                   "encoder_hidden_states": {0: "batch", 1: "sequence"},
                   "prediction": {0: "batch", 2: "height", 3: "width"}},
                  unet_inputs, [{"batch": 2, "side": side, "length": length},
                                {"batch": 3, "side": other_side, "length": max(3, length // 2)}]),
        GraphSpec("vae_decoder", VaeDecoderGraph(vae).eval(), ["latents"], ["images"],
                  {"latents": {0: "batch", 2: "height", 3: "width"}, "images": {0: "batch", 2: "height", 3: "width"}},
                  vae_inputs, [{"batch": 1, "side": side}, {"batch": 2, "side": other_side}]),
    ]
