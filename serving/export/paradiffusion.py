"""ParaDiffusion's sampling-time graphs: the LLM paragraph encoder (LoRA merged), the UNet, the VAE decoder.

Inputs and outputs:
    text_encoder   input_ids (B, L) int64, attention_mask (B, L) int64 -> last_hidden_state (B, L, D)
                   the LlamaModel with the stage-2/3 adapter folded in (W + alpha/r B A)
    unet           sample (B, C, h, w) f32, timestep (B,) int64, encoder_hidden_states (B, L, D),
                   encoder_attention_mask (B, L) f32 (1 keep, 0 padding) -> prediction (B, C, h, w)
    vae_decoder    latents (B, C, h, w), scaled -> images (B, 3, H, W) in [-1, 1] (sd_base's graph)
Tokenization (<s> + text, right-padded, `ParaDiffusion.tokenize`) and the packing of the mask beside the
states (`ParaDiffusion.encode_text`) stay on the host: the UNet graph takes the mask as its own input.

The bundle's `pytorch/` is the registered folder as trained: base LLM weights and the adapter apart
(`text_encoder_lora/`), merged when loaded; the ONNX text encoder is the merged one, checked weight by
weight against the base (`serving.export.lora.merge_check`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from serving.export.onnx_graphs import ATOL, RTOL, GraphSpec

logger = logging.getLogger(__name__)

E2E_PROMPTS = ["There is a red circle at the top left. There is a blue square at the bottom right.",
               "There is a small green triangle in the middle."]


class TextEncoderGraph(nn.Module):
    def __init__(self, llm: nn.Module):
        super().__init__()
        self.llm = llm

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.llm(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # (B, L, D)


class UNetGraph(nn.Module):
    """eps_theta(z_t, t, f(y)) with the padding mask as an input (`ParaDiffusion.denoise`, unpacked)."""

    def __init__(self, unet: nn.Module):
        super().__init__()
        self.unet = unet

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor,
                encoder_attention_mask: torch.Tensor) -> torch.Tensor:
        return self.unet(sample, timestep, encoder_hidden_states=encoder_hidden_states,
                         encoder_attention_mask=encoder_attention_mask, return_dict=False)[0]


def graph_specs(model, vae) -> list[GraphSpec]:
    """The three graphs with two parity shapes each; `model` must have its LoRA merged already."""
    from serving.export.sd_base import VaeDecoderGraph

    if model.has_lora:
        raise ValueError("merge the LoRA adapter first (ParaDiffusion.merge_lora): ONNX graphs carry plain weights")
    llm = model.text_encoder.config
    width, vocab = llm.hidden_size, llm.vocab_size
    channels, side, _ = model.latent_shape
    down = 2 ** (len(model.unet.config.block_out_channels) - 1)
    other_side = side if model.cfg.unet.position_embedding else side + down
    length = min(model.cfg.max_tokens, 12)

    def text_inputs(s):
        g = torch.Generator().manual_seed(s["batch"] * 100 + s["length"])
        ids = torch.randint(0, vocab, (s["batch"], s["length"]), generator=g)
        mask = torch.ones_like(ids)
        mask[1:, s["length"] - 3:] = 0  # right padding on all rows but the first, as `tokenize` leaves it
        return ids, mask

    def unet_inputs(s):
        g = torch.Generator().manual_seed(s["batch"] * 100 + s["side"])
        mask = torch.ones(s["batch"], s["length"])
        mask[1:, s["length"] - 3:] = 0.0
        return (torch.randn(s["batch"], channels, s["side"], s["side"], generator=g),
                torch.randint(0, model.noise_scheduler.config.num_train_timesteps, (s["batch"],), generator=g),
                torch.randn(s["batch"], s["length"], width, generator=g), mask)

    def vae_inputs(s):
        g = torch.Generator().manual_seed(s["batch"] * 100 + s["side"])
        return (torch.randn(s["batch"], channels, s["side"], s["side"], generator=g),)

    return [
        GraphSpec("text_encoder", TextEncoderGraph(model.text_encoder).eval(), ["input_ids", "attention_mask"],
                  ["last_hidden_state"],
                  {"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "sequence"},
                   "last_hidden_state": {0: "batch", 1: "sequence"}},
                  text_inputs, [{"batch": 2, "length": length}, {"batch": 3, "length": max(4, length // 2 + 1)}]),
        GraphSpec("unet", UNetGraph(model.unet).eval(),
                  ["sample", "timestep", "encoder_hidden_states", "encoder_attention_mask"], ["prediction"],
                  {"sample": {0: "batch", 2: "height", 3: "width"}, "timestep": {0: "batch"},
                   "encoder_hidden_states": {0: "batch", 1: "sequence"},
                   "encoder_attention_mask": {0: "batch", 1: "sequence"},
                   "prediction": {0: "batch", 2: "height", 3: "width"}},
                  unet_inputs, [{"batch": 2, "side": side, "length": length},
                                {"batch": 3, "side": other_side, "length": max(4, length // 2 + 1)}]),
        GraphSpec("vae_decoder", VaeDecoderGraph(vae).eval(), ["latents"], ["images"],
                  {"latents": {0: "batch", 2: "height", 3: "width"}, "images": {0: "batch", 2: "height", 3: "width"}},
                  vae_inputs, [{"batch": 1, "side": side}, {"batch": 2, "side": other_side}]),
    ]


@torch.no_grad()
def merge_text_encoder(adapted, merged) -> dict[str, Any] | str:
    """Merge `merged`'s adapter in place and check it against `adapted` (the same folder, left unmerged)."""
    from serving.export.lora import merge_check, plain_state

    if not adapted.has_lora:
        return f"none: no adapter (lora.rank={adapted.cfg.lora.rank}, the LLM is frozen as pretrained)"
    base = plain_state(adapted.text_encoder.get_base_model().state_dict())
    merged.merge_lora()
    ids, mask = adapted.tokenize(E2E_PROMPTS)
    return merge_check(base, merged.text_encoder.state_dict(), adapted.cfg.lora.target_modules,
                       adapted.text_encoder(input_ids=ids, attention_mask=mask).last_hidden_state,
                       merged.text_encoder(input_ids=ids, attention_mask=mask).last_hidden_state)


@torch.no_grad()
def onnx_images(graphs, model, prompts: list[str], noise: torch.Tensor, steps: int) -> torch.Tensor:
    """`ParaDiffusion.generate` with the three ONNX graphs in place of the modules, from the given noise."""
    from components.diffusion import make_sampling_scheduler, sample

    diffusion = model.cfg.diffusion
    ids, mask = model.tokenize(["", *prompts])  # one tokenization: both contexts have the same length
    states = graphs.run("text_encoder", input_ids=ids, attention_mask=mask)  # (1 + B, L, D)
    context = torch.cat([states, mask.unsqueeze(-1).float()], dim=-1)  # (1 + B, L, D + 1), as encode_text packs

    def denoise(latents, t, ctx):
        return graphs.run("unet", sample=latents, timestep=t, encoder_hidden_states=ctx[..., :-1],
                          encoder_attention_mask=ctx[..., -1])

    latents = sample(denoise, make_sampling_scheduler(model.noise_scheduler, diffusion.sampler), context[1:],
                     context[:1] if diffusion.guidance_scale > 1.0 else None, latent_shape=tuple(noise.shape[1:]),
                     num_inference_steps=steps, guidance_scale=diffusion.guidance_scale, latents=noise)
    return graphs.run("vae_decoder", latents=latents)


def export(model_dir: Path, out: Path, e2e_steps: int = 4) -> dict[str, Any]:
    """Write `pytorch/` and `onnx/` of a registered ParaDiffusion folder into `out`; the manifest's sections."""
    from components.models.autoencoder import latent_shape, load_autoencoder
    from components.models.paradiffusion import ParaDiffusion
    from serving.bundle import copy_tree
    from serving.export.family_parity import OnnxGraphs, end_to_end_record, export_and_check, onnx_section
    from serving.export.sd_base import vae_factor

    if not (model_dir / "vae" / "config.json").is_file():
        raise FileNotFoundError(f"{model_dir} has no vae/: a paradiffusion bundle needs the VAE it was trained with")
    if not (model_dir / "tokenizer" / "tokenizer.json").is_file():
        raise FileNotFoundError(f"{model_dir}/tokenizer/tokenizer.json is missing: bundles carry a fast tokenizer only")
    copy_tree(model_dir, out / "pytorch")
    adapted = ParaDiffusion.from_pretrained(out / "pytorch").eval()  # as trained: the reference for every check
    merged = ParaDiffusion.from_pretrained(out / "pytorch").eval()
    vae = load_autoencoder(out / "pytorch" / "vae").eval()
    lora = merge_text_encoder(adapted, merged)

    specs = graph_specs(merged, vae)
    paths, rows = export_and_check(specs, out / "onnx")

    diffusion = adapted.cfg.diffusion
    channels, side, _ = latent_shape(vae)
    noise = torch.randn((len(E2E_PROMPTS), channels, side, side), generator=torch.Generator().manual_seed(0))
    graphs = OnnxGraphs(out / "onnx", [s.name for s in specs])
    got = onnx_images(graphs, adapted, E2E_PROMPTS, noise, e2e_steps)
    # the same noise: `sample` draws torch.randn((B, C, h, w)) from this generator first
    want = adapted.generate(E2E_PROMPTS, vae, num_inference_steps=e2e_steps, generator=torch.Generator().manual_seed(0))
    end_to_end = end_to_end_record(got, want, prompts=E2E_PROMPTS, seed=0, steps=e2e_steps,
                                   guidance_scale=diffusion.guidance_scale, sampler=diffusion.sampler,
                                   reference="ParaDiffusion.generate with the adapter unmerged (as trained)")
    lora_passed = lora["passed"] if isinstance(lora, dict) else True
    return {
        "layout": {"onnx": "onnx", "pytorch": "pytorch", "tokenizer": "pytorch/tokenizer",
                   "scheduler": "pytorch/scheduler"},
        "onnx": onnx_section(paths, specs, lora),
        "pytorch": {"weights": "safetensors", "lora": "base LLM in text_encoder/, adapter in text_encoder_lora/ "
                    "(ParaDiffusion.from_pretrained loads it, merge_lora folds it in)",
                    "attention_processor": "diffusers' default (PyTorch SDPA); the Triton processor is wired into "
                    "sd_base's production sampler only"},
        "parity": {"atol": ATOL, "rtol": RTOL, "device": "cpu", "graphs": rows, "end_to_end": end_to_end,
                   "lora_merge": lora, "passed": all(r["passed"] for r in rows) and end_to_end["passed"] and lora_passed},
        "serving": {"allowed_sides": [side * vae_factor(vae)], "max_prompt_tokens": adapted.cfg.max_tokens,
                    "host_side": "tokenization (<s> + text, right padding) and classifier-free guidance's "
                                 "sampling loop (components.diffusion.sample)"},
    }
