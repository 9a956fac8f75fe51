"""Training data for a worker: this rank's share of the prepared shards, as an endless batch stream."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
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


def encoded_batch_stream(
    shards: list[Path],
    decode: Callable[[dict[str, bytes]], Any],
    collate: Callable[[list[Any]], dict[str, Any]],
    encode: Callable[[dict[str, Any]], dict[str, torch.Tensor]],
    batch_size: int,
    seed: int,
    rank: int = 0,
    world_size: int = 1,
) -> Iterator[dict[str, Any]]:
    """Encode this rank's share of the samples once (images -> VAE latents), then serve shuffled
    batches from memory forever: a frozen encoder's output does not change between epochs.

    `encode` maps a collated batch to the tensors to keep; every list field of the batch (captions,
    ids, ground truth) is kept beside them.
    """
    kept: dict[str, list] = {}
    for batch in DataLoader(ShardDataset(shards, decode, rank=rank, world_size=world_size), batch_size=64,
                            collate_fn=collate):
        with torch.no_grad():
            encoded = encode(batch)
        for key, value in {**{k: v for k, v in batch.items() if isinstance(v, list)}, **encoded}.items():
            kept.setdefault(key, []).append(value)
    if not kept:
        raise RuntimeError(f"no training samples for rank {rank} in {len(shards)} shard(s)")
    tensors = {k: torch.cat(v) for k, v in kept.items() if isinstance(v[0], torch.Tensor)}
    lists = {k: [x for part in v for x in part] for k, v in kept.items() if isinstance(v[0], list)}
    count = len(next(iter(lists.values())) if lists else next(iter(tensors.values())))
    generator = torch.Generator().manual_seed(seed)
    while True:
        order = torch.randperm(count, generator=generator)
        for start in range(0, count - batch_size + 1, batch_size):
            index = order[start : start + batch_size]
            yield {**{k: v[index] for k, v in tensors.items()}, **{k: [v[i] for i in index.tolist()] for k, v in lists.items()}}
