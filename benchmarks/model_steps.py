"""Training steps per second of the shared base models on this machine's CPU.

One step = forward + backward + AdamW step on a random batch of the profile's image size (for
sd_base: precomputed latents + tokenized captions), as the training recipes run it. The target is
the demo profile's budget: sd_base should reach 1000+ steps in about 5 minutes (3.33 steps/s).

    .venv/bin/python benchmarks/model_steps.py --profile demo
    .venv/bin/python benchmarks/model_steps.py --profile demo --batch sd_base=64 --override sd_base:unet.layers_per_block=2
"""

from __future__ import annotations

import argparse
import os
import random
import time
from collections.abc import Callable
from pathlib import Path

import torch
from machine_load import start_watch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from torch.utils.flop_counter import FlopCounterMode
from transformers import PreTrainedTokenizerFast

from components.config import load_config
from components.data.scene import sample_scene
from components.data.synthetic.language import short_caption
from components.models.autoencoder import (
    AutoencoderConfig,
    AutoencoderWithLoss,
    build_autoencoder,
    encode_latents,
    latent_shape,
)
from components.models.clip_evaluator import ClipEvaluator, ClipEvaluatorConfig
from components.models.sd_base import SDBase, SDBaseConfig

CONFIGS = Path(__file__).resolve().parents[1] / "training_jobs" / "configs" / "models"
DEMO_BATCH = {"vae": 16, "clip_evaluator": 64, "sd_base": 24}
TARGET_STEPS_PER_S = 1000 / 300


def scene_captions(n: int, seed: int = 0) -> list[str]:
    """Captions like the synthetic world's laion_short (what sd_base trains on): 70% one object, 30% two."""
    rng = random.Random(seed)
    captions = []
    for _ in range(n):
        objects = 1 if rng.random() < 0.7 else 2
        captions.append(short_caption(sample_scene(rng, objects, objects), rng))
    return captions


def scene_tokenizer(vocab_size: int = 512) -> PreTrainedTokenizerFast:
    """A BPE tokenizer over scene captions, like the project's corpus tokenizer."""
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<pad>", "<bos>", "<eos>", "<unk>"], show_progress=False
    )
    tokenizer.train_from_iterator(scene_captions(2000), trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>", unk_token="<unk>"
    )


def step_flops(model: torch.nn.Module, step_loss: Callable[[], torch.Tensor]) -> float:
    """FLOPs of one forward + backward (counted, so independent of how busy the CPU is)."""
    model.train()
    with FlopCounterMode(display=False) as counter:
        step_loss().backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def time_steps(
    model: torch.nn.Module, step_loss: Callable[[], torch.Tensor], steps: int, warmup: int, fused: bool
) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) per optimizer step: medians of `steps` steps after `warmup`.

    On a CPU shared with other processes wall time measures the sharing, not the model; the CPU
    time this process used (all its threads) does not, as long as idle OpenMP threads sleep
    instead of spinning (OMP_WAIT_POLICY=PASSIVE).
    """
    # fused: on CPU the default per-parameter AdamW loop costs ~80 ms a step at these sizes (~15% of sd_base's step)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, fused=fused)
    model.train()
    wall, cpu = [], []
    for i in range(warmup + steps):
        start, start_cpu = time.perf_counter(), time.process_time()
        loss = step_loss()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if i >= warmup:
            wall.append(time.perf_counter() - start)
            cpu.append(time.process_time() - start_cpu)
    return sorted(wall)[len(wall) // 2], sorted(cpu)[len(cpu) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="demo", choices=["tiny", "demo", "paper"])
    parser.add_argument("--steps", type=int, default=15, help="timed steps per model")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps before timing")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--batch", action="append", default=[], help="MODEL=N batch size (default: demo batches)")
    parser.add_argument("--override", action="append", default=[], help="MODEL:key=value config override")
    parser.add_argument("--only", action="append", default=[], help="benchmark only these models")
    parser.add_argument("--unfused-adamw", action="store_true", help="use AdamW's default per-parameter loop")
    args = parser.parse_args()
    if args.profile == "paper":
        parser.error("--profile paper: paper-size models need a GPU; this benchmark measures CPU steps")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    machine = start_watch()

    batch = dict(DEMO_BATCH)
    for item in args.batch:
        name, _, value = item.partition("=")
        if name not in batch:
            parser.error(f"--batch {item}: unknown model {name!r}; models: {sorted(batch)}")
        batch[name] = int(value)
    overrides: dict[str, list[str]] = {name: [] for name in batch}
    for item in args.override:
        name, _, override = item.partition(":")
        if name not in overrides:
            parser.error(f"--override {item}: unknown model {name!r}; models: {sorted(overrides)}")
        overrides[name].append(override)
    only = set(args.only) or set(batch)

    tokenizer = scene_tokenizer()
    vae_cfg = load_config(AutoencoderConfig, CONFIGS / "vae" / f"{args.profile}.yaml", overrides["vae"])
    vae = build_autoencoder(vae_cfg)
    side = vae_cfg.sample_size
    rows = []

    def measure(name: str, model: torch.nn.Module, size: int, step_loss: Callable[[], torch.Tensor], note: str) -> None:
        params = sum(p.numel() for p in model.parameters() if p.requires_grad)
        flops = step_flops(model, step_loss)
        wall, cpu = time_steps(model, step_loss, args.steps, args.warmup, fused=not args.unfused_adamw)
        rows.append((name, params, size, flops, 1.0 / wall, cpu, note))
        print(f"  measured {name}: {1.0 / wall:.2f} steps/s wall, {cpu:.2f} CPU-s/step, {flops / 1e9:.1f} GFLOP/step",
              flush=True)

    if "vae" in only:
        trainer = AutoencoderWithLoss(vae, vae_cfg)
        pixels = torch.rand(batch["vae"], 3, side, side) * 2 - 1
        measure("vae", trainer, batch["vae"], lambda: trainer(pixels)["loss"], f"{side}px -> {latent_shape(vae)}")

    if "clip_evaluator" in only:
        clip_cfg = load_config(ClipEvaluatorConfig, CONFIGS / "clip_evaluator" / f"{args.profile}.yaml",
                               overrides["clip_evaluator"])
        clip = ClipEvaluator.from_config(clip_cfg, tokenizer)
        n = batch["clip_evaluator"]
        pixels = torch.rand(n, 3, side, side) * 2 - 1
        input_ids, attention_mask = clip.tokenize(scene_captions(n))
        measure("clip_evaluator", clip, n, lambda: clip(pixels, input_ids, attention_mask)["loss"],
                f"{side}px -> {clip_cfg.vision.image_size}px")

    if "sd_base" in only:
        sd_cfg = load_config(SDBaseConfig, CONFIGS / "sd_base" / f"{args.profile}.yaml", overrides["sd_base"])
        sd = SDBase.from_config(sd_cfg, tokenizer)
        n = batch["sd_base"]
        latents = torch.randn(n, *sd.latent_shape)
        input_ids, attention_mask = sd.tokenize(scene_captions(n))
        measure("sd_base", sd, n, lambda: sd(latents, input_ids, attention_mask)["loss"], "precomputed latents")
        pixels = torch.rand(n, 3, side, side) * 2 - 1
        vae.requires_grad_(False)

        def with_encode() -> torch.Tensor:
            with torch.no_grad():
                fresh = encode_latents(vae, pixels, generator=torch.Generator().manual_seed(0))
            return sd(fresh, input_ids, attention_mask)["loss"]

        measure("sd_base + VAE encode", sd, n, with_encode, "latents encoded every step")

    machine.report()
    print()
    print(f"profile {args.profile}, {torch.get_num_threads()} threads, OMP_WAIT_POLICY="
          f"{os.environ.get('OMP_WAIT_POLICY', 'unset')}; one step = forward + backward + {'AdamW' if args.unfused_adamw else 'AdamW(fused=True)'}")
    threads = torch.get_num_threads()
    header = (f"{'model':<22}{'params':>9}{'batch':>7}{'GFLOP/step':>12}{'wall steps/s':>14}{'CPU-s/step':>12}"
              f"{'free steps/s':>14}{'steps/5min':>12}{'vs target':>11}  note")
    print(header)
    print("-" * len(header))
    for name, params, size, flops, rate, cpu, note in rows:
        free = threads / cpu
        print(f"{name:<22}{params / 1e6:>8.2f}M{size:>7}{flops / 1e9:>12.1f}{rate:>14.2f}{cpu:>12.3f}"
              f"{free:>14.2f}{free * 300:>12.0f}{free / TARGET_STEPS_PER_S:>10.2f}x  {note}")
    print(f"free steps/s = threads / CPU-s per step: the rate on {threads} otherwise idle cores (an upper bound: "
          f"perfect thread scaling); steps/5min and 'vs target' use it. Target {TARGET_STEPS_PER_S:.2f} steps/s "
          f"(1000 steps in 5 minutes).")
    if os.environ.get("OMP_WAIT_POLICY", "").upper() != "PASSIVE":
        print("warning: OMP_WAIT_POLICY is not PASSIVE, so spinning OpenMP threads inflate CPU-s/step; rerun with "
              "OMP_WAIT_POLICY=PASSIVE")


if __name__ == "__main__":
    main()
