"""Inside a Ray Train worker: who am I, where do I run, how do I resume and report.

Thin wrappers over `ray.train` so recipes read as setup / train / save / cleanup. Every rank
calls `report` at the same steps (Ray Train makes it a barrier); only rank 0 writes checkpoint files.
"""

from __future__ import annotations

import contextlib
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch
from torch import nn

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
    return WorkerContext(rank=rank, world_size=world, device=device, log=RunLogger(tracking, rank), scratch=scratch)


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
    launcher removes the staging folder when the job ends).
    """
    import ray.train

    checkpoint = None
    if write_checkpoint is not None and ctx.is_main:
        path = Path(tempfile.mkdtemp(prefix="checkpoint-", dir=ctx.scratch))
        write_checkpoint(path)
        checkpoint = ray.train.Checkpoint.from_directory(str(path))
    ray.train.report(metrics, checkpoint=checkpoint, delete_local_checkpoint_after_upload=True)


def resume_step(ctx: WorkerContext, model: nn.Module, optimizer, scheduler, ema) -> int:
    """Restore the latest checkpoint of a relaunched job into these objects; the step to start from (0 if new).

    A resumed job says so in its run: metric `resumed_from_step`.
    """
    from training_jobs.loop import TrainState

    with resume_checkpoint() as checkpoint:
        if checkpoint is None:
            return 0
        step = TrainState.load(checkpoint, model, optimizer, scheduler, ema)
    ctx.log.metrics({"resumed_from_step": step}, step)
    return step
