"""Inside a Ray Train worker: who am I, where do I run, how do I resume and report.

Thin wrappers over `ray.train` so recipes read as setup / train / save / cleanup. Every rank
calls `report` at the same steps (Ray Train makes it a barrier); only rank 0 writes checkpoint files.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from training_jobs.loop import (
    ExponentialMovingAverage,
    MetricWindow,
    TrainConfig,
    TrainState,
    build_lr_scheduler,
    build_optimizer,
    due,
    seed_everything,
    train_step,
)
from training_jobs.tracking import RunLogger, TrackingConfig

SCRATCH_DIR = ".scratch"


@dataclass
class WorkerContext:
    rank: int
    world_size: int
    device: torch.device
    log: RunLogger
    scratch: Path | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def worker_context(tracking: TrackingConfig, storage_path: str | None = None, run_name: str | None = None) -> WorkerContext:
    """This worker's rank, device and logger; checkpoints are staged under the run's folder when it is local."""
    import ray.train
    import ray.train.torch

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device() if torch.cuda.is_available() else torch.device("cpu")
    scratch = None
    if storage_path and run_name and "://" not in storage_path:
        scratch = Path(storage_path) / run_name / SCRATCH_DIR
        scratch.mkdir(parents=True, exist_ok=True)
    spool = Path(storage_path) / run_name if scratch is not None else None
    return WorkerContext(rank=rank, world_size=world, device=device, log=RunLogger(tracking, rank, spool), scratch=scratch)


def prepare_model(model: nn.Module) -> nn.Module:
    """Move to this worker's device and wrap in DDP when there is more than one worker (gloo on CPU)."""
    import ray.train.torch

    return ray.train.torch.prepare_model(model)


@contextlib.contextmanager
def resume_checkpoint() -> Iterator[Path | None]:
    """The latest checkpoint of a job relaunched under the same name, as a local folder (or None)."""
    import ray.train

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        yield None
        return
    with checkpoint.as_directory() as path:
        yield Path(path)


def report(ctx: WorkerContext, metrics: dict[str, float], write_checkpoint: Callable[[Path], None] | None = None) -> None:
    """Report metrics (and, if given, a checkpoint written by rank 0) to Ray Train from every rank.

    Ray Train copies the folder into the run's storage and then deletes the staged copy; in local
    mode (num_workers=0) nothing is copied and the staged folder is what the result points at (the
    launcher removes the staging folder when the job ends). Rank 0 first waits until MLflow holds
    everything it logged (`RunLogger.flush`), so a checkpoint never covers steps the run lacks.
    """
    import ray.train

    ctx.log.flush()
    checkpoint = None
    if write_checkpoint is not None and ctx.is_main:
        path = Path(tempfile.mkdtemp(prefix="checkpoint-", dir=ctx.scratch))
        write_checkpoint(path)
        checkpoint = ray.train.Checkpoint.from_directory(str(path))
    ray.train.report(metrics, checkpoint=checkpoint, delete_local_checkpoint_after_upload=True)


def resume_step(ctx: WorkerContext, model: nn.Module, optimizer, scheduler, ema, extra=None) -> int:
    """Restore the latest checkpoint of a relaunched job into these objects; the step to start from (0 if new).

    A resumed job (relaunched, or restarted by Ray Train after a worker died) says so in its run:
    metrics `resumed_from_step` and `restarts`; see `RunLogger.resumed`.
    """
    with resume_checkpoint() as checkpoint:
        if checkpoint is None:
            return 0
        step = TrainState.load(checkpoint, model, optimizer, scheduler, ema, extra)
    ctx.log.resumed(step)
    return step


@dataclass
class TrainingRun:
    """A recipe's model wrapped for this worker, with its optimizer, schedule, EMA and start step."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    ema: ExponentialMovingAverage | None
    start: int
    extra: dict[str, nn.Module | torch.optim.Optimizer] = field(default_factory=dict)

    def save(self, path: Path, step: int) -> None:
        """Write the resumable state (weights, EMA, optimizer, schedule, RNG, step, extras) to a checkpoint folder."""
        TrainState.save(path, step, self.model, self.optimizer, self.scheduler, self.ema, self.extra)


def start_training(
    ctx: WorkerContext,
    module: nn.Module,
    cfg: TrainConfig,
    extra: Mapping[str, nn.Module | torch.optim.Optimizer] | None = None,
) -> TrainingRun:
    """Wrap `module` for DDP, build optimizer/schedule/EMA, resume a relaunched job, and seed this rank.

    Build `module` after `seed_everything(cfg.seed)` so every rank starts from the same weights; data
    order and noise are then seeded per rank (and per resume point, so a resumed run does not replay).
    `extra` names further modules and optimizers the recipe trains and steps itself beside `module`
    (a GAN's discriminator, already `prepare_model`-ed, and its optimizer): they are saved with every
    checkpoint and restored on resume.
    """
    if cfg.gradient_checkpointing:
        enable = getattr(module, "enable_gradient_checkpointing", None)
        if enable is None:
            raise ValueError(f"train.gradient_checkpointing=true but {type(module).__name__} does not support it")
        enable()
    model = prepare_model(module)
    optimizer = build_optimizer(model.parameters(), cfg)
    scheduler = build_lr_scheduler(optimizer, cfg)
    ema = ExponentialMovingAverage(model, cfg.ema_decay) if cfg.ema_decay else None
    start = resume_step(ctx, model, optimizer, scheduler, ema, extra)
    seed_everything(cfg.seed + 1000 * ctx.rank + start)
    return TrainingRun(model, optimizer, scheduler, ema, start, dict(extra or {}))


def run_steps(
    ctx: WorkerContext,
    run: TrainingRun,
    batches: Iterator,
    compute_losses: Callable[[object], dict[str, torch.Tensor]],
    cfg: TrainConfig,
    on_sample: Callable[[int], None] | None = None,
) -> None:
    """Train from `run.start` to `cfg.steps`: log every `log_every`, call `on_sample` (rank 0) every
    `sample_every`, and report a resumable checkpoint every `checkpoint_every` steps (the final
    checkpoint, with the export, is the recipe's to report)."""
    window = MetricWindow(cfg.batch_size * cfg.grad_accum_steps * ctx.world_size)
    for step in range(run.start, cfg.steps):
        grad_norm = train_step(run.model, batches, compute_losses, run.optimizer, run.scheduler, run.ema, cfg,
                               ctx.device, window)
        done = step + 1
        if due(done, cfg.log_every, cfg.steps):
            ctx.log.metrics({**window.flush(), "train/lr": run.scheduler.get_last_lr()[0], "train/grad_norm": grad_norm}, done)
        if on_sample is not None and cfg.sample_every and done % cfg.sample_every == 0 and done < cfg.steps and ctx.is_main:
            on_sample(done)
        if done % cfg.checkpoint_every == 0 and done < cfg.steps:
            report(ctx, {"step": done}, lambda path, done=done: run.save(path, done))
