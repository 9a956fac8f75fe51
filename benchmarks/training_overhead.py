"""What the launcher costs: steps/s of the same model and batch, bare PyTorch loop vs Ray Train + MLflow + data.

    .venv/bin/python benchmarks/training_overhead.py [--steps 120] [--profile demo]

Both sides train the `sd_base` model of the chosen profile on the same batch size for the same
number of steps. The bare loop feeds one pre-decoded batch from memory (no I/O, no Ray, no
tracking); the launcher runs the real recipe as a 1-worker Ray Train job that streams shards,
decodes JPEGs, encodes latents with the VAE, logs to MLflow and checkpoints. Where the profile
caches latents (`data.cache_latents`: the recipe encodes the train split once, before step 1),
the bare loop encodes its batch once too, so both sides do the same work per step. Steady-state rate is
taken after the first logging window. Goal: the launcher within 5% of the bare loop.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch
from machine_load import start_watch
from mlflow import MlflowClient

from components.config import load_config
from components.data.formats import read_corpus
from components.data.pipeline_config import DataConfig
from components.data.prepare import prepare_dataset, validate_corpus
from components.data.shards import split_texts
from components.data.synthetic import generate_world
from components.data.tokenizer import train_bpe_tokenizer
from components.diffusion import drop_captions
from components.models.autoencoder import (
    build_autoencoder,
    encode_latents,
    save_autoencoder,
    set_scaling_factor,
)
from components.models.sd_base import SDBase
from training_jobs.launcher import launch, resolve_config
from training_jobs.loop import (
    ExponentialMovingAverage,
    MetricWindow,
    build_lr_scheduler,
    build_optimizer,
    seed_everything,
    train_step,
)


def prepare_inputs(work: Path, profile: str, records: int) -> tuple[Path, Path, Path]:
    """laion_short prepared shards, a tokenizer, and a (random-init) VAE of the profile's shape."""
    params = load_config(DataConfig, ROOT / "params.yaml")
    zero = {n: 0 for n in ("paraimage_big", "paraimage_small", "cc3m", "vist", "mmdialog", "mario_laion",
                           "paraprompts", "mario_eval")}
    generate_world(dataclasses.replace(params.world, **zero, laion_short=records, fault_fraction=0.0), work / "raw")
    src = work / "raw" / "laion_short"
    validate_corpus(read_corpus("laion-parquet", src), work / "validated", dataset="laion_short", fmt="laion-parquet",
                    source=src, cfg=params.validation_for("laion_short"))
    prepare_dataset(work / "validated", work / "prepared" / "laion_short", dataset="laion_short",
                    split_cfg=params.split_for("laion_short"), shard_cfg=params.shards)
    train_bpe_tokenizer(list(split_texts(work / "prepared" / "laion_short", "train")), params.tokenizer, work / "tokenizer")
    vae_cfg = resolve_config("vae", profile).model
    vae = build_autoencoder(vae_cfg)
    set_scaling_factor(vae, 1.0)
    save_autoencoder(vae, work / "vae")
    return work / "prepared", work / "tokenizer", work / "vae"


def bare_loop(profile: str, steps: int, tokenizer_path: Path, vae_path: Path, warmup: int) -> float:
    """Steps/s of the same model, batch and step function with one in-memory batch, no Ray, no MLflow."""
    from transformers import AutoTokenizer

    from components.models.autoencoder import load_autoencoder

    cfg = resolve_config("sd_base", profile)
    torch.set_num_threads(int(cfg.scaling.cpus_per_worker))
    seed_everything(0)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
    vae = load_autoencoder(vae_path).eval().requires_grad_(False)
    model = SDBase.from_config(cfg.model, tokenizer)
    optimizer = build_optimizer(model.parameters(), cfg.train)
    scheduler = build_lr_scheduler(optimizer, cfg.train)
    ema = ExponentialMovingAverage(model, cfg.train.ema_decay) if cfg.train.ema_decay else None
    size = vae.config.sample_size
    batch = {"pixels": torch.rand(cfg.train.batch_size, 3, size, size) * 2 - 1,
             "caption": ["a small red circle at the top left on a gray background"] * cfg.train.batch_size}
    noise, dropout = torch.Generator().manual_seed(0), torch.Generator().manual_seed(1)

    def batches():
        while True:
            yield batch

    cached = None
    if cfg.data.cache_latents:  # the recipe encodes the train split once: so does the bare loop
        with torch.no_grad():
            cached = encode_latents(vae, batch["pixels"])

    def compute_losses(b):
        if cached is not None:
            latents = cached
        else:
            with torch.no_grad():
                latents = encode_latents(vae, b["pixels"])
        captions = drop_captions(b["caption"], cfg.model.diffusion.condition_dropout, generator=dropout)
        return model(latents, *model.tokenize(captions), generator=noise)

    stream, window = batches(), MetricWindow(cfg.train.batch_size)
    for step in range(steps):
        if step == warmup:
            started = time.perf_counter()
        train_step(model, stream, compute_losses, optimizer, scheduler, ema, cfg.train, torch.device("cpu"), window)
    return (steps - warmup) / (time.perf_counter() - started)


def launcher_rate(profile: str, steps: int, prepared: Path, tokenizer: Path, vae: Path, work: Path, log_every: int) -> float:
    """Steps/s inside a 1-worker Ray Train job, read from the run's samples/s after the first window."""
    tracking = f"sqlite:///{work / 'mlflow.db'}"
    cfg = resolve_config("sd_base", profile)
    result = launch(
        "sd_base", profile,
        [f"data.prepared_root={prepared}", f"data.tokenizer={tokenizer}", f"data.vae={vae}", f"train.steps={steps}",
         f"train.log_every={log_every}", f"train.checkpoint_every={max(log_every, steps // 2)}", "train.sample_every=0",
         "scaling.num_workers=1", f"run.storage_path={work / 'ray'}"],
        tracking_uri=tracking, versions={}, progress=lambda line: print(line, flush=True),
    )
    history = MlflowClient(tracking).get_metric_history(result.run_id, "train/samples_per_s")
    steady = [m.value for m in sorted(history, key=lambda m: m.step)[1:-1]] or [history[-1].value]
    return sum(steady) / len(steady) / cfg.train.batch_size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="demo", choices=["tiny", "demo"])
    parser.add_argument("--steps", type=int, default=120, help="training steps on each side")
    parser.add_argument("--records", type=int, default=512, help="laion_short records to generate for the launcher")
    args = parser.parse_args()
    log_every = max(10, args.steps // 6)
    machine = start_watch()
    work = Path(tempfile.mkdtemp(prefix="genops-bench-train-"))
    try:
        prepared, tokenizer, vae = prepare_inputs(work, args.profile, args.records)
        print("bare PyTorch loop ...", flush=True)
        bare = bare_loop(args.profile, args.steps, tokenizer, vae, warmup=log_every)
        print("launcher (Ray Train + MLflow + shard streaming) ...", flush=True)
        ray_rate = launcher_rate(args.profile, args.steps, prepared, tokenizer, vae, work, log_every)
        cfg = resolve_config("sd_base", args.profile)
        from transformers import AutoTokenizer

        model = SDBase.from_config(cfg.model, AutoTokenizer.from_pretrained(tokenizer))
        params = sum(p.numel() for p in model.parameters()) / 1e6
        machine.report()
        print(f"\nsd_base ({args.profile}: {params:.1f}M parameters, batch {cfg.train.batch_size}, {args.steps} steps)")
        print(f"{'path':44} {'steps/s':>8} {'ratio':>7}")
        print(f"{'bare PyTorch loop (in-memory batch)':44} {bare:8.3f} {1.0:7.3f}")
        print(f"{'launcher: Ray Train worker + MLflow + shards':44} {ray_rate:8.3f} {ray_rate / bare:7.3f}")
        print(f"launcher overhead: {100 * (1 - ray_rate / bare):.1f}% (goal: under 5%)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
