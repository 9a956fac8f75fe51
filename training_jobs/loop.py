"""What every training recipe gets from one place: the knobs users of diffusers' and torchtune's
training scripts expect, as small functions a recipe composes (no trainer framework).

- `TrainConfig`: steps, batch, optimizer, warm-up + schedule, accumulation, clipping, precision,
  gradient checkpointing, EMA, seeding, logging/checkpoint/sample intervals, retention.
  (Min-SNR weighting and v-prediction belong to the model's diffusion config, see components/diffusion.py.)
- `train_step`: one optimizer step over `grad_accum_steps` micro-batches.
- `seed_everything`, `autocast`, `build_optimizer`, `build_lr_scheduler`, `clip_gradients`.
- `TrainState`: model/EMA/optimizer/scheduler/RNG/step saved to a checkpoint folder (weights as
  safetensors, the rest loaded back with `weights_only=True`: nothing is unpickled from a file),
  plus any further modules and optimizers a recipe trains beside the model (a GAN's discriminator).
"""

from __future__ import annotations

import contextlib
import math
import pickle
import random
import shutil
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn


@dataclass
class TrainConfig:
    steps: int = 20
    """Optimizer steps to train for (the run ends there; a resumed run continues to it)."""
    batch_size: int = 8
    """Samples per worker per micro-batch (global batch = batch_size x workers x grad_accum_steps)."""
    lr: float = 1e-3
    """Peak learning rate."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW betas."""
    warmup_steps: int = 0
    """Linear learning-rate warm-up from 0 over this many steps."""
    lr_schedule: Literal["constant", "cosine", "linear"] = "cosine"
    """Decay after warm-up: constant, cosine to `min_lr_ratio`, or linear to it."""
    min_lr_ratio: float = 0.1
    """Final learning rate as a fraction of `lr` (cosine/linear schedules)."""
    grad_accum_steps: int = 1
    """Micro-batches accumulated per optimizer step."""
    grad_clip: float | None = 1.0
    """Clip the global gradient norm to this (None: no clipping)."""
    mixed_precision: Literal["auto", "no", "bf16"] = "auto"
    """auto = bf16 autocast on GPU, fp32 on CPU; no = always fp32; bf16 = bf16 autocast wherever it runs."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass (models that support it) to save memory."""
    ema_decay: float | None = 0.995
    """Decay of the EMA of the trained weights used for sampling and export (None: no EMA)."""
    seed: int = 0
    """Seed of weights init, data order and noise; each rank offsets it by its rank."""
    log_every: int = 10
    """Log metrics (loss terms, learning rate, samples/s) every N steps."""
    checkpoint_every: int = 100
    """Report a Ray Train checkpoint every N steps (and at the end)."""
    sample_every: int = 0
    """Log a fixed-seed sample grid every N steps (0: only at the end)."""
    num_to_keep: int = 2
    """Checkpoints kept by Ray Train (older ones are deleted)."""
    dataloader_workers: int = 0
    """DataLoader worker processes per training worker."""

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "grad_accum_steps", "log_every", "checkpoint_every", "num_to_keep"):
            if getattr(self, name) < 1:
                raise ValueError(f"train.{name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ValueError(f"train.lr must be > 0, got {self.lr}")
        if self.ema_decay is not None and not 0 < self.ema_decay < 1:
            raise ValueError(f"train.ema_decay must be in (0, 1) or null, got {self.ema_decay}")
        if self.warmup_steps < 0 or self.sample_every < 0:
            raise ValueError("train.warmup_steps and train.sample_every must be >= 0")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def autocast(cfg: TrainConfig, device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on GPU (or when asked for), plain fp32 otherwise."""
    use_bf16 = cfg.mixed_precision == "bf16" or (cfg.mixed_precision == "auto" and device.type == "cuda")
    if not use_bf16:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def build_optimizer(params: Iterable[nn.Parameter], cfg: TrainConfig) -> torch.optim.Optimizer:
    # fused: one kernel for all parameters instead of a Python loop over them (~15% of a demo step on CPU)
    return torch.optim.AdamW(
        [p for p in params if p.requires_grad], lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay, fused=True
    )


def lr_multiplier(step: int, cfg: TrainConfig) -> float:
    """Learning-rate factor at `step`: linear warm-up, then the configured decay."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.lr_schedule == "constant":
        return 1.0
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps))
    if cfg.lr_schedule == "linear":
        return 1.0 - (1.0 - cfg.min_lr_ratio) * progress
    return cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_lr_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_multiplier(step, cfg))


def clip_gradients(params: Iterable[nn.Parameter], cfg: TrainConfig) -> float:
    """Clip the global gradient norm (if configured) and return the norm before clipping."""
    params = [p for p in params if p.grad is not None]
    if cfg.grad_clip is None:
        return float(torch.linalg.vector_norm(torch.stack([p.grad.detach().norm() for p in params])))
    return float(torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip))


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel wrapper (or the module itself)."""
    return model.module if hasattr(model, "module") and isinstance(model, nn.parallel.DistributedDataParallel) else model


def infinite(loader: Iterable) -> Iterator:
    """Cycle a loader forever: recipes count optimizer steps, not epochs."""
    while True:
        empty = True
        for batch in loader:
            empty = False
            yield batch
        if empty:
            raise RuntimeError("the training data loader yielded no batch: is the train split empty?")


class ExponentialMovingAverage:
    """EMA of a module's floating-point parameters (the weights used for sampling and export)."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.shadow = {k: v.detach().clone().float() for k, v in unwrap(model).state_dict().items() if v.is_floating_point()}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for k, v in unwrap(model).state_dict().items():
            if k in self.shadow:
                self.shadow[k].lerp_(v.detach().float(), 1.0 - self.decay)

    @contextlib.contextmanager
    def applied(self, model: nn.Module) -> Iterator[nn.Module]:
        """Temporarily load the EMA weights into `model` (e.g. to sample), restoring them afterwards."""
        module = unwrap(model)
        backup = {k: v.detach().clone() for k, v in module.state_dict().items() if k in self.shadow}
        module.load_state_dict({k: v.to(backup[k].dtype) for k, v in self.shadow.items()}, strict=False)
        try:
            yield module
        finally:
            module.load_state_dict(backup, strict=False)

    def copy_to(self, model: nn.Module) -> None:
        module = unwrap(model)
        current = module.state_dict()
        module.load_state_dict({k: v.to(current[k].dtype) for k, v in self.shadow.items()}, strict=False)


@dataclass
class TrainState:
    """Everything a resumed run needs, saved to / loaded from a checkpoint folder."""

    step: int = 0

    @staticmethod
    def save(
        path: Path,
        step: int,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        ema: ExponentialMovingAverage | None,
        extra: Mapping[str, nn.Module | torch.optim.Optimizer] | None = None,
    ) -> None:
        """`extra`: further modules (saved as `<name>.safetensors`) and optimizers (in state.pt) by name.

        A write that fails (a full disk, a file-size limit) removes the folder and raises naming it, so no
        half-written checkpoint is ever left for a resume to load."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        try:
            TrainState._write(path, step, model, optimizer, scheduler, ema, extra)
        except (OSError, SafetensorError) as exc:  # safetensors reports I/O errors as SafetensorError
            shutil.rmtree(path, ignore_errors=True)
            raise OSError(getattr(exc, "errno", None), f"writing checkpoint {path} failed ({exc}); the partial checkpoint was removed. "
                                     "Free space on that disk or point run.storage_path elsewhere") from exc

    @staticmethod
    def _write(path, step, model, optimizer, scheduler, ema, extra) -> None:
        save_file({k: v.detach().contiguous().cpu() for k, v in unwrap(model).state_dict().items()},
                  path / "model.safetensors")
        if ema is not None:
            save_file({k: v.contiguous().cpu() for k, v in ema.shadow.items()}, path / "ema.safetensors")
        extra = dict(extra or {})
        for name, module in extra.items():
            if isinstance(module, nn.Module):
                save_file({k: v.detach().contiguous().cpu() for k, v in unwrap(module).state_dict().items()},
                          path / f"{name}.safetensors")
        torch.save(
            {
                "step": step,
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "extra_optimizers": {n: o.state_dict() for n, o in extra.items() if not isinstance(o, nn.Module)},
                "rng": {
                    "torch": torch.get_rng_state(),
                    "numpy": _numpy_rng_state(),
                    "python": _python_rng_state(),
                },
            },
            path / "state.pt",
        )

    @staticmethod
    def load(
        path: Path,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        ema: ExponentialMovingAverage | None,
        extra: Mapping[str, nn.Module | torch.optim.Optimizer] | None = None,
    ) -> int:
        """Restore a checkpoint into the given objects (and the `extra` ones saved by name) and return
        the step to continue from. A corrupted or truncated file raises naming it."""
        path = Path(path)
        try:
            return TrainState._read(path, model, optimizer, scheduler, ema, extra)
        except (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError, SafetensorError) as exc:
            if isinstance(exc, (FileNotFoundError, KeyError)) and "checkpoint" in str(exc):
                raise
            raise RuntimeError(f"checkpoint {path} is corrupted or incomplete ({type(exc).__name__}: {exc}); "
                               "delete that folder to resume from the checkpoint before it") from exc

    @staticmethod
    def _read(path, model, optimizer, scheduler, ema, extra) -> int:
        module = unwrap(model)
        device = next(module.parameters()).device
        module.load_state_dict(load_file(path / "model.safetensors", device=str(device)))
        if ema is not None and (path / "ema.safetensors").is_file():
            ema.shadow = {k: v.float() for k, v in load_file(path / "ema.safetensors", device=str(device)).items()}
        state = torch.load(path / "state.pt", map_location="cpu", weights_only=True)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        saved_optimizers = state.get("extra_optimizers", {})
        for name, obj in (extra or {}).items():
            if isinstance(obj, nn.Module):
                if not (path / f"{name}.safetensors").is_file():
                    raise FileNotFoundError(f"checkpoint {path} has no {name}.safetensors: it was written by a run without a {name}")
                inner = unwrap(obj)
                inner.load_state_dict(load_file(path / f"{name}.safetensors", device=str(next(inner.parameters()).device)))
            elif name in saved_optimizers:
                obj.load_state_dict(saved_optimizers[name])
            else:
                raise KeyError(f"checkpoint {path} has no state of optimizer {name!r}: it was written by a run without it")
        torch.set_rng_state(state["rng"]["torch"])
        keys, pos, has_gauss, cached = state["rng"]["numpy"]
        np.random.set_state(("MT19937", np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
        version, internal, gauss = state["rng"]["python"]
        random.setstate((version, tuple(internal), gauss))
        return int(state["step"])


def _numpy_rng_state() -> list:
    # plain lists and numbers only, so the state loads back with torch.load(weights_only=True)
    _, keys, pos, has_gauss, cached = np.random.get_state()
    return [keys.tolist(), int(pos), int(has_gauss), float(cached)]


def _python_rng_state() -> list:
    version, internal, gauss = random.getstate()
    return [version, list(internal), gauss]


def train_step(
    model: nn.Module,
    batches: Iterator,
    compute_losses: Callable[[object], dict[str, torch.Tensor]],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    ema: ExponentialMovingAverage | None,
    cfg: TrainConfig,
    device: torch.device,
    window: MetricWindow,
) -> float:
    """One optimizer step: `grad_accum_steps` micro-batches of forward (under autocast) and backward,
    DDP gradient sync only on the last one, then clip/step/schedule/EMA. Returns the gradient norm."""
    model.train()
    for micro in range(cfg.grad_accum_steps):
        batch = next(batches)
        with micro_batch_sync(model, micro == cfg.grad_accum_steps - 1):
            with autocast(cfg, device):
                losses = compute_losses(batch)
            (losses["loss"] / cfg.grad_accum_steps).backward()
        window.add(losses, 1 / cfg.grad_accum_steps)
    window.end_step()
    return optimizer_step(model, optimizer, scheduler, ema, cfg)


def due(step: int, every: int, last: int) -> bool:
    """Whether something done every `every` steps (0: never) is due after `step` (always at the last)."""
    return step == last or (every > 0 and step % every == 0)


def micro_batch_sync(model: nn.Module, last: bool) -> contextlib.AbstractContextManager:
    """Skip DDP's gradient all-reduce on all but the last micro-batch of an accumulation window."""
    if not last and isinstance(model, nn.parallel.DistributedDataParallel):
        return model.no_sync()
    return contextlib.nullcontext()


def optimizer_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    ema: ExponentialMovingAverage | None,
    cfg: TrainConfig,
) -> float:
    """Clip, step, advance the schedule, reset gradients, update the EMA; returns the gradient norm."""
    grad_norm = clip_gradients(model.parameters(), cfg)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    if ema is not None:
        ema.update(model)
    return grad_norm


class MetricWindow:
    """Averages loss terms over the steps since the last log line, and measures samples/s."""

    def __init__(self, samples_per_step: int):
        self.samples_per_step = samples_per_step
        self.sums: dict[str, float] = {}
        self.steps = 0
        self.started = time.perf_counter()

    def add(self, losses: dict[str, torch.Tensor | float], weight: float = 1.0) -> None:
        """Add one micro-batch's loss terms (weighted by 1 / grad_accum_steps)."""
        for key, value in losses.items():
            value = value.detach() if isinstance(value, torch.Tensor) else value
            self.sums[key] = self.sums.get(key, 0.0) + float(value) * weight

    def end_step(self) -> None:
        self.steps += 1

    def flush(self, prefix: str = "train/") -> dict[str, float]:
        """Averages and throughput since the last flush; resets the window."""
        elapsed = time.perf_counter() - self.started
        out = {f"{prefix}{k}": v / max(1, self.steps) for k, v in self.sums.items()}
        out[f"{prefix}samples_per_s"] = self.steps * self.samples_per_step / max(elapsed, 1e-9)
        self.sums, self.steps, self.started = {}, 0, time.perf_counter()
        return out


def evaluation_weights(model: nn.Module, ema: ExponentialMovingAverage | None) -> contextlib.AbstractContextManager:
    """Context giving the unwrapped module with the weights to evaluate and sample with (EMA if any)."""
    return ema.applied(model) if ema is not None else contextlib.nullcontext(unwrap(model))


def export_state_dict(model: nn.Module, ema: ExponentialMovingAverage | None) -> dict[str, torch.Tensor]:
    """The unwrapped module's state dict with the EMA weights in place of the trained ones (if any)."""
    weights = dict(unwrap(model).state_dict())
    if ema is not None:
        weights.update({k: v.to(weights[k].dtype) for k, v in ema.shadow.items()})
    return weights
