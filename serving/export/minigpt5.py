"""MiniGPT-5's sampling-time graphs: the feature mapper, and the frozen sd_base generator's UNet and VAE decoder.

Inputs and outputs:
    feature_mapper  voken_states (B, n, d_llm) f32: the LLM's last-layer states that predict [IMG1]..[IMGn]
                    (`MiniGPT5.voken_states`) -> h_hat (B, L, d_cond) (eq. 2: enc-dec(MLP(h), q)); zeros in give
                    the negative conditioning of eq. 5
    unet, vae_decoder, [text_encoder]   the generator's, exactly as an sd_base bundle has them
                    (`serving.export.sd_base`); the text encoder only when the negative is the empty caption
Not exported: the LLM's narration (LlamaForCausalLM with the voken rows, stage 2's LoRA already merged into
`llm/` by `MiniGPT5.save_pretrained`) and the visual pooler over clip_base's image tower. Narration is an
autoregressive loop with repetition penalty, nucleus sampling and forced vokens (`MiniGPT5.generate`); an
ONNX decoder with a KV cache is a separate graph family of its own and stays in PyTorch here, as the
manifest says (`onnx.not_exported`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from serving.export.onnx_graphs import ATOL, RTOL, GraphSpec

logger = logging.getLogger(__name__)


class MapperGraph(nn.Module):
    def __init__(self, mapper: nn.Module):
        super().__init__()
        self.mapper = mapper

    def forward(self, voken_states: torch.Tensor) -> torch.Tensor:
        return self.mapper(voken_states)  # (B, L, d_cond)


def graph_specs(model) -> list[GraphSpec]:
    """The mapper with two parity shapes (batch 1 and 3), then the generator's graphs."""
    from serving.export import sd_base

    n, d_llm = len(model.voken_ids), model.causal_lm.config.hidden_size

    def mapper_inputs(s):
        g = torch.Generator().manual_seed(s["batch"])
        return (torch.randn(s["batch"], n, d_llm, generator=g),)

    mapper = GraphSpec("feature_mapper", MapperGraph(model.mapper).eval(), ["voken_states"], ["h_hat"],
                       {"voken_states": {0: "batch"}, "h_hat": {0: "batch"}}, mapper_inputs,
                       [{"batch": 1}, {"batch": 3}])
    needed = {"unet", "vae_decoder"} | ({"text_encoder"} if model.cfg.sampling.negative == "empty_caption" else set())
    return [mapper] + [s for s in sd_base.graph_specs(model.generator, model.vae) if s.name in needed]


@torch.no_grad()
def onnx_images(graphs, model, voken_states: torch.Tensor, noise: torch.Tensor, steps: int) -> torch.Tensor:
    """`MiniGPT5.draw(mapper(voken_states))` with the ONNX graphs in place of the modules, from the given noise."""
    from components.diffusion import make_sampling_scheduler, sample
    from components.models.clip_evaluator import tokenize_captions

    scale = model.cfg.sampling.guidance_scale
    h_hat = graphs.run("feature_mapper", voken_states=voken_states)  # (B, L, d_cond)
    negative = None
    if scale > 1.0 and model.cfg.sampling.negative == "empty_caption":
        ids, mask = tokenize_captions(model.generator.tokenizer, [""], model.generator.text_encoder.config.max_position_embeddings)
        negative = graphs.run("text_encoder", input_ids=ids, attention_mask=mask)
    elif scale > 1.0:
        negative = graphs.run("feature_mapper", voken_states=torch.zeros_like(voken_states[:1]))  # eq. 5's h_hat_0

    def denoise(latents, t, context):
        return graphs.run("unet", sample=latents, timestep=t, encoder_hidden_states=context)

    diffusion = model.generator.cfg.diffusion
    latents = sample(denoise, make_sampling_scheduler(model.generator.noise_scheduler, diffusion.sampler), h_hat,
                     negative, latent_shape=tuple(noise.shape[1:]), num_inference_steps=steps, guidance_scale=scale,
                     latents=noise)
    return graphs.run("vae_decoder", latents=latents)


def export(model_dir: Path, out: Path, e2e_steps: int = 4) -> dict[str, Any]:
    """Write `pytorch/` and `onnx/` of a registered MiniGPT-5 folder into `out`; the manifest's sections.

    End to end starts from voken states (the LLM's part stays in PyTorch): random states of the LLM's width,
    the same for both pipelines, through mapper -> guided sampling -> decoder."""
    from components.models.minigpt5 import MiniGPT5
    from serving.bundle import copy_tree
    from serving.export.family_parity import OnnxGraphs, end_to_end_record, export_and_check, onnx_section
    from serving.export.sd_base import vae_factor

    if not (model_dir / "generator" / "vae" / "config.json").is_file():
        raise FileNotFoundError(f"{model_dir} has no generator/vae/: MiniGPT-5 draws through sd_base's VAE")
    copy_tree(model_dir, out / "pytorch")
    model = MiniGPT5.from_pretrained(out / "pytorch").eval()

    specs = graph_specs(model)
    paths, rows = export_and_check(specs, out / "onnx")

    n, d_llm = len(model.voken_ids), model.causal_lm.config.hidden_size
    voken_states = torch.randn(2, n, d_llm, generator=torch.Generator().manual_seed(1))
    channels, side, _ = model.generator.latent_shape
    noise = torch.randn((2, channels, side, side), generator=torch.Generator().manual_seed(0))
    graphs = OnnxGraphs(out / "onnx", [s.name for s in specs])
    got = onnx_images(graphs, model, voken_states, noise, e2e_steps)
    with torch.no_grad():  # the same noise: `sample` draws torch.randn((B, C, h, w)) from this generator first
        want = model.draw(model.mapper(voken_states), torch.Generator().manual_seed(0), e2e_steps)
    sampling = model.cfg.sampling
    end_to_end = end_to_end_record(got, want, voken_states="2 random (n, d_llm) sequences, seed 1", seed=0,
                                   steps=e2e_steps, guidance_scale=sampling.guidance_scale,
                                   sampler=model.generator.cfg.diffusion.sampler, negative=sampling.negative,
                                   reference="MiniGPT5.draw(MiniGPT5.mapper(voken_states))")
    onnx = onnx_section(paths, specs, "none in the graphs: stage 2's LLM LoRA is merged into llm/ at save "
                                      "(MiniGPT5.save_pretrained), and the LLM is not exported")
    onnx["not_exported"] = {
        "llm": "stays in PyTorch (pytorch/llm/, safetensors): narration is an autoregressive loop with repetition "
               "penalty, nucleus sampling and forced vokens (MiniGPT5.generate); its last-layer states at the "
               "voken positions (MiniGPT5.voken_states) are the feature_mapper graph's input",
        "visual_pooler": "stays in PyTorch with the LLM (pytorch/heads.safetensors, pooler.*): it only feeds "
                         "image inputs to the LLM",
    }
    return {
        "layout": {"onnx": "onnx", "pytorch": "pytorch", "tokenizer": "pytorch/llm",
                   "scheduler": "pytorch/generator/scheduler"},
        "onnx": onnx,
        "pytorch": {"weights": "safetensors", "llm": "pytorch/llm (LoRA merged, vokens in the tokenizer)",
                    "attention_processor": "diffusers' default (PyTorch SDPA) in the generator; the Triton "
                    "processor is wired into sd_base's production sampler only"},
        "parity": {"atol": ATOL, "rtol": RTOL, "device": "cpu", "graphs": rows, "end_to_end": end_to_end,
                   "passed": all(r["passed"] for r in rows) and end_to_end["passed"]},
        "serving": {"allowed_sides": [side * vae_factor(model.vae)], "num_vokens": n,
                    "host_side": "LLM narration and voken states (PyTorch), classifier-free guidance's sampling "
                                 "loop (components.diffusion.sample)"},
    }
