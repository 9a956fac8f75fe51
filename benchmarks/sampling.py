"""Seconds per image of the genops samplers against diffusers' own StableDiffusionPipeline, one run, same
prompts, seeds, steps, guidance and weights:

- genops ONNX Runtime backend (serving.sampler.OnnxBackend: sessions created once, IO binding)
- genops PyTorch backend (serving.sampler.TorchBackend: SDPA on CPU, the Triton kernel on CUDA)
- diffusers.StableDiffusionPipeline built from the same sd_base components (text encoder, UNet, VAE,
  tokenizer, the same DPM-Solver++ scheduler): what a user would pick instead. (optimum's ORT pipeline is
  not in the lock: see serving/export/onnx_graphs.py.)

    flock /tmp/genops-cpu.lock .venv/bin/python benchmarks/sampling.py [--model models:/genops-sd-base/latest]
    .venv/bin/python benchmarks/sampling.py --random-init demo     # demo architecture, random weights

Also printed: the model FLOPs per image (torch.utils.flop_counter over one PyTorch generation: text
encoder, steps x UNet at batch 2 for guidance, VAE decoder), the machine's measured fp32 matmul peak
(torch.mm 1024^3 on the same threads), and each backend's achieved fraction of it. Goal: ONNX Runtime
>= 1.6x faster than the diffusers pipeline end to end on CPU.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from machine_load import start_watch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PROMPTS = ["a red circle at the top left", "a blue square at the bottom right", "a green triangle in the centre",
           "a yellow circle and a red square"]


def random_init_model(profile: str, out: Path) -> Path:
    """sd_base + VAE of a config profile with random weights (speed does not depend on the weights)."""
    sys.path.insert(0, str(ROOT / "tests" / "serving"))
    from tiny_sd import tiny_tokenizer

    from components.config import load_config
    from components.models.autoencoder import AutoencoderConfig, build_autoencoder
    from components.models.sd_base import SDBase, SDBaseConfig

    configs = ROOT / "training_jobs" / "configs" / "models"
    torch.manual_seed(0)
    sd = SDBase.from_config(load_config(SDBaseConfig, configs / "sd_base" / f"{profile}.yaml"), tiny_tokenizer()).eval()
    vae = build_autoencoder(load_config(AutoencoderConfig, configs / "vae" / f"{profile}.yaml")).eval()
    return sd.save_pretrained(out, vae=vae)


def matmul_peak_gflops(seconds: float = 2.0, n: int = 1024) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        a @ b
    best = 0.0
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        start = time.perf_counter()
        a @ b
        best = max(best, 2 * n**3 / (time.perf_counter() - start) / 1e9)
    return best


def flops_per_image(sampler, steps: int, guidance: float) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    noise = sampler.initial_noise(1, 0)
    with FlopCounterMode(display=False) as counter:
        sampler.pixels(PROMPTS[:1], noise=noise, steps=steps, guidance_scale=guidance)
    return float(counter.get_total_flops())


def time_images(draw, repeats: int) -> list[float]:
    """Seconds per image over `repeats` rounds of len(PROMPTS) single-image generations, after one warm-up."""
    draw(PROMPTS[0], 0)
    rounds = []
    for _ in range(repeats):
        start = time.perf_counter()
        for seed, prompt in enumerate(PROMPTS):
            draw(prompt, seed)
        rounds.append((time.perf_counter() - start) / len(PROMPTS))
    return rounds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="models:/genops-sd-base/latest", help="registry URI or model folder")
    parser.add_argument("--random-init", metavar="PROFILE", help="instead of --model: random weights of a config profile")
    parser.add_argument("--bundle", type=Path, help="an existing export bundle (skips the export)")
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--guidance", type=float, default=3.0)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    from diffusers import StableDiffusionPipeline

    from components.diffusion import make_sampling_scheduler
    from serving.bundle import build_bundle
    from serving.sampler import load_sampler
    from training_jobs.launcher import default_tracking_uri, project_root
    from training_jobs.model_inputs import resolve_model_path

    work = Path(tempfile.mkdtemp(prefix="genops-bench-sampling-"))
    if args.bundle:
        bundle, source = args.bundle, str(args.bundle)
    else:
        if args.random_init:
            model_dir, source = random_init_model(args.random_init, work / "model"), f"random-init {args.random_init}"
        else:
            model_dir, source = resolve_model_path(args.model, default_tracking_uri(project_root())), args.model
        bundle = work / "bundle"
        build_bundle(bundle, "sd_base", model_dir, {"model": source, "version": 0, "alias": None}, {}, e2e_steps=2)
    threads = torch.get_num_threads()

    machine = start_watch()
    onnx = load_sampler(bundle, "onnx", "cpu", threads=threads)
    eager = load_sampler(bundle, "torch", "cpu")
    backend = eager.backend
    pipe = StableDiffusionPipeline(
        vae=backend.vae, text_encoder=backend.text_encoder, tokenizer=eager.tokenizer, unet=backend.unet,
        scheduler=make_sampling_scheduler(eager.noise_scheduler, eager.spec.sampler), safety_checker=None,
        feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    pipe.tokenizer.model_max_length = eager.spec.max_length
    side = eager.spec.latent_side * eager.spec.vae_factor

    def genops(sampler):
        return lambda prompt, seed: sampler.generate([prompt], seed=seed, steps=args.steps,
                                                     guidance_scale=args.guidance)

    def diffusers_draw(prompt, seed):
        pipe(prompt, height=side, width=side, num_inference_steps=args.steps, guidance_scale=args.guidance,
             generator=torch.Generator().manual_seed(seed), output_type="np")

    rows = {}
    with torch.no_grad():
        rows["genops ONNX Runtime"] = time_images(genops(onnx), args.repeats)
        rows["genops PyTorch"] = time_images(genops(eager), args.repeats)
        rows["diffusers StableDiffusionPipeline"] = time_images(diffusers_draw, args.repeats)
        flops = flops_per_image(eager, args.steps, args.guidance)
    peak = matmul_peak_gflops()
    machine.report()

    print(f"\nmodel: {source}; {side}x{side} px images, {args.steps} DPM-Solver++ steps, guidance {args.guidance} "
          f"(UNet batch 2), {len(PROMPTS)} prompts x {args.repeats} rounds, batch 1; torch/ORT threads {threads}")
    print(f"model FLOPs per image: {flops / 1e9:.3f} GFLOP (torch.utils.flop_counter); "
          f"measured fp32 matmul peak: {peak:.1f} GFLOP/s (torch.mm 1024^3)")
    base = statistics.median(rows["diffusers StableDiffusionPipeline"])
    print(f"{'backend':<36}{'s/image (median)':>18}{'min':>9}{'max':>9}{'speed-up vs diffusers':>24}{'% of peak':>11}")
    for name, values in rows.items():
        median = statistics.median(values)
        print(f"{name:<36}{median:>18.4f}{min(values):>9.4f}{max(values):>9.4f}{base / median:>23.2f}x"
              f"{100 * flops / median / 1e9 / peak:>10.1f}%")
    ratio = base / statistics.median(rows["genops ONNX Runtime"])
    print(f"goal ONNX Runtime >= 1.6x diffusers: {ratio:.2f}x -> {'met' if ratio >= 1.6 else 'NOT met'}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
