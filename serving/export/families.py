"""Which submodels each model family exports, and how: one entry per family in `FAMILIES`.

A family joins by adding a `FamilyExporter` whose `export(model_dir, out, e2e_steps)` writes its files
into the bundle folder `out` and returns the manifest sections it owns (layout, parity, pytorch,
serving); `serving.bundle.build_bundle` adds lineage, checksums and the model card around it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from serving.export.onnx_graphs import ATOL, OPSET, RTOL, export_graph, graph_parity

logger = logging.getLogger(__name__)

# One uint8 level of an image in [-1, 1]: pixels_to_images rounds (x + 1) * 127.5.
PIXEL_LEVEL = 2.0 / 255.0
E2E_TOLERANCE_REASON = (
    "one uint8 level (2/255). Each graph agrees with PyTorch to ~1e-6 absolute in fp32 (reassociated sums). A "
    "DPM-Solver++ step forms x0 from the guided model output and passes an x0 error on with a coefficient <= 1; "
    "an output error reaches x0 times sigma_t (<= 1) for v-prediction, but times sigma_t/alpha_t for "
    "eps-prediction, which is large at the first steps of a schedule with near-zero terminal SNR, and guidance "
    "multiplies it by at most 2s-1. So S steps bound the latent error by S*(2s-1)*1e-6 for v-prediction "
    "(4e-4 at 25 steps, s=3), while for eps-prediction the bound is loose and the measured max_abs_pixel_diff "
    "beside it is what the check rests on")


@dataclass(frozen=True)
class FamilyExporter:
    registered_model: str
    description: str
    export: Callable[..., dict[str, Any]]


def export_sd_base(model_dir: Path, out: Path, e2e_steps: int = 4) -> dict[str, Any]:
    from components.models.autoencoder import load_autoencoder
    from components.models.sd_base import SDBase
    from serving.bundle import copy_tree
    from serving.export.sd_base import allowed_sides, graph_specs, vae_factor
    from serving.sampler import CaptionConditioning, OnnxBackend, Sampler, SamplingSpec, TorchBackend

    if not (model_dir / "vae" / "config.json").is_file():
        raise FileNotFoundError(f"{model_dir} has no vae/: an sd_base bundle needs the VAE it was trained with")
    if not (model_dir / "tokenizer" / "tokenizer.json").is_file():
        raise FileNotFoundError(f"{model_dir}/tokenizer/tokenizer.json is missing: bundles carry a fast tokenizer only")
    copy_tree(model_dir, out / "pytorch")
    sd = SDBase.from_pretrained(out / "pytorch").eval()
    vae = load_autoencoder(out / "pytorch" / "vae").eval()

    graphs = []
    for spec in graph_specs(sd, vae):
        path = export_graph(spec, out / "onnx")[0]
        graphs.extend(graph_parity(spec, path))
        logger.info("exported %s; parity %s", path.name, [r["max_abs_err"] for r in graphs if r["graph"] == spec.name])

    channels, latent_side, _ = sd.latent_shape
    diffusion = sd.cfg.diffusion
    spec = SamplingSpec(latent_channels=channels, latent_side=latent_side, vae_factor=vae_factor(vae),
                        max_length=sd.text_encoder.config.max_position_embeddings, sampler=diffusion.sampler,
                        num_inference_steps=diffusion.num_inference_steps, guidance_scale=diffusion.guidance_scale,
                        allowed_sides=allowed_sides(sd, vae))
    (out / "sampler.json").write_text(json.dumps(spec.__dict__, indent=2) + "\n")

    # end to end: both backends from the same initial noise
    tokenizer = sd.tokenizer
    samplers = [Sampler(backend, CaptionConditioning(tokenizer, spec.max_length, backend.encode_text),
                        sd.noise_scheduler, spec)
                for backend in (OnnxBackend(out / "onnx", device="cpu"), TorchBackend(out / "pytorch", device="cpu"))]
    prompts = ["a red circle at the top left", "a blue square at the bottom right"]
    noise = samplers[0].initial_noise(len(prompts), seed=0)
    images = [s.pixels(prompts, noise=noise, steps=e2e_steps).numpy() for s in samplers]
    diff = float(np.abs(images[0].astype(np.float64) - images[1]).max())
    end_to_end = {"prompts": prompts, "seed": 0, "steps": e2e_steps, "guidance_scale": diffusion.guidance_scale,
                  "sampler": diffusion.sampler, "max_abs_pixel_diff": diff, "tolerance": PIXEL_LEVEL,
                  "tolerance_reason": E2E_TOLERANCE_REASON, "passed": diff <= PIXEL_LEVEL}
    passed = all(r["passed"] for r in graphs) and end_to_end["passed"]
    return {
        "layout": {"onnx": "onnx", "pytorch": "pytorch", "tokenizer": "pytorch/tokenizer",
                   "scheduler": "pytorch/scheduler", "sampler": "sampler.json"},
        "onnx": {"opset": OPSET, "exporter": "torch.onnx.export(dynamo=False)", "torch": torch.__version__,
                 "graphs": {"text_encoder": "onnx/text_encoder.onnx", "unet": "onnx/unet.onnx",
                            "vae_decoder": "onnx/vae_decoder.onnx"},
                 "lora_merged": "none: sd_base has no LoRA adapters"},
        "pytorch": {"weights": "safetensors", "attention_processor": "TritonAttnProcessor on CUDA, "
                    "AttnProcessor2_0 (PyTorch SDPA) elsewhere"},
        "parity": {"atol": ATOL, "rtol": RTOL, "device": "cpu", "graphs": graphs, "end_to_end": end_to_end,
                   "passed": passed},
        "serving": {"allowed_sides": spec.allowed_sides, "max_prompt_tokens": spec.max_length},
    }


def export_paradiffusion(model_dir: Path, out: Path, e2e_steps: int = 4) -> dict[str, Any]:
    from serving.export.paradiffusion import export

    return export(model_dir, out, e2e_steps=e2e_steps)


def export_vlad(model_dir: Path, out: Path, e2e_steps: int = 4) -> dict[str, Any]:
    from serving.export.vlad import export

    return export(model_dir, out, e2e_steps=e2e_steps)


def export_minigpt5(model_dir: Path, out: Path, e2e_steps: int = 4) -> dict[str, Any]:
    from serving.export.minigpt5 import export

    return export(model_dir, out, e2e_steps=e2e_steps)


PARADIFFUSION = ("ParaDiffusion (Wu et al. 2023), paragraph-to-image: a Llama paragraph encoder ({}) whose "
                 "last hidden states, with their padding mask, condition a cross-attention UNet over the shared "
                 "VAE's latents; DPM-Solver++ with classifier-free guidance.")
MINIGPT5 = ("MiniGPT-5 (Zheng et al.), interleaved text and images: an LLM with generative vokens narrates (PyTorch) "
            "and its voken states go through the feature mapper (eq. 2) into the frozen sd_base generator{}.")

FAMILIES: dict[str, FamilyExporter] = {
    "sd_base": FamilyExporter(
        registered_model="genops-sd-base",
        description="SD-style text-to-image base model: a CLIP text encoder and a cross-attention UNet over the "
                    "shared VAE's latents (Rombach et al. 2022), sampled with DPM-Solver++ and classifier-free "
                    "guidance.",
        export=export_sd_base,
    ),
    "paradiffusion_stage1": FamilyExporter(
        "genops-paradiffusion-stage1", PARADIFFUSION.format("frozen, no adapter; stage 1"), export_paradiffusion),
    "paradiffusion_stage2": FamilyExporter(
        "genops-paradiffusion-stage2", PARADIFFUSION.format("LoRA on q_proj/v_proj, merged in the ONNX graph; stage 2"),
        export_paradiffusion),
    "paradiffusion_stage3": FamilyExporter(
        "genops-paradiffusion-stage3", PARADIFFUSION.format("LoRA on q_proj/v_proj, merged in the ONNX graph; "
                                                            "stage 3, fine-tuned on the small aesthetic set"),
        export_paradiffusion),
    "vlad": FamilyExporter(
        registered_model="genops-vlad",
        description="VLAD, text-rich image generation: a CLIP-style LVLM with LoRA (merged in the ONNX graph) and "
                    "the Contextual Composition Module condition a Text Layout Generator and a visual-feature "
                    "UNet over Concat(x_t, layout) in the shared VAE's latents.",
        export=export_vlad,
    ),
    "minigpt5_stage1": FamilyExporter("genops-minigpt5-stage1", MINIGPT5.format(" (stage 1: unimodal alignment)"),
                                      export_minigpt5),
    "minigpt5_stage2": FamilyExporter("genops-minigpt5-stage2",
                                      MINIGPT5.format(" (stage 2: multimodal learning, LLM LoRA merged at save)"),
                                      export_minigpt5),
}
