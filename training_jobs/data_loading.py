"""Training data for a worker: this rank's share of the prepared shards, as an endless batch stream."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterator

from torch.utils.data import DataLoader

from components.data.shards import list_shards
from components.data.training_data import ShardDataset, seed_worker
from training_jobs.loop import infinite



def first_samples(shards: list[Path], decode: Callable[[dict[str, bytes]], Any], count: int) -> list[Any]:
    """The first `count` samples in shard order (a fixed validation batch, the same on every run)."""
    out = []
    for sample in ShardDataset(shards, decode):
        out.append(sample)
        if len(out) == count:
            break
    return out


def shard_paths(prepared_root: Path, datasets: list[str], split: str) -> list[Path]:
    """All shards of one split across several prepared datasets (e.g. every image corpus for the VAE)."""
    shards = []
    for name in datasets:
        shards.extend(list_shards(Path(prepared_root) / name, split))
    return shards


def batch_stream(
    shards: list[Path],
    decode: Callable[[dict[str, bytes]], Any],
    collate: Callable[[list[Any]], Any],
    batch_size: int,
    seed: int,
    rank: int = 0,
    world_size: int = 1,
    workers: int = 0,
) -> Iterator[Any]:
    """Shuffled, endlessly repeating batches of this rank's share of the samples."""
    dataset = ShardDataset(shards, decode, rank=rank, world_size=world_size, repeat=True, shuffle=True, seed=seed)
    loader = DataLoader(dataset, batch_size=batch_size, collate_fn=collate, num_workers=workers,
                        worker_init_fn=seed_worker if workers else None, persistent_workers=workers > 0)
    return infinite(loader)
