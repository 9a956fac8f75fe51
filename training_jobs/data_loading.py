"""Training data for a worker: this rank's share of the prepared shards, as an endless batch stream."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
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
        _encode_into(kept, batch, encode)
    if not kept:
        raise RuntimeError(f"no training samples for rank {rank} in {len(shards)} shard(s)")
    tensors, lists, count = _gathered(kept)
    generator = torch.Generator().manual_seed(seed)
    while True:
        order = torch.randperm(count, generator=generator)
        for start in range(0, count - batch_size + 1, batch_size):
            yield _picked(tensors, lists, order[start : start + batch_size])


def _encode_into(
    store: dict[str, list], batch: dict[str, Any], encode: Callable[[dict[str, Any]], dict[str, torch.Tensor]]
) -> None:
    """Encode a collated batch and append its tensors, and its list fields (captions, ids), to `store`."""
    with torch.no_grad():
        encoded = encode(batch)
    for key, value in {**{k: v for k, v in batch.items() if isinstance(v, list)}, **encoded}.items():
        store.setdefault(key, []).append(value)


def _gathered(store: dict[str, list]) -> tuple[dict[str, torch.Tensor], dict[str, list], int]:
    """The stored parts joined: (tensors, lists, sample count)."""
    tensors = {k: torch.cat(v) for k, v in store.items() if isinstance(v[0], torch.Tensor)}
    lists = {k: [x for part in v for x in part] for k, v in store.items() if isinstance(v[0], list)}
    return tensors, lists, len(next(iter(lists.values())) if lists else next(iter(tensors.values())))


def _picked(tensors: dict[str, torch.Tensor], lists: dict[str, list], index: torch.Tensor) -> dict[str, Any]:
    """One batch: the samples at `index` of every tensor and list field."""
    positions = index.tolist()
    return {**{k: v[index] for k, v in tensors.items()}, **{k: [v[i] for i in positions] for k, v in lists.items()}}


def bucketed_batch_stream(
    samples: Iterable[dict[str, Any]],
    collate: Callable[[list[Any]], dict[str, Any]],
    encode: Callable[[dict[str, Any]], dict[str, torch.Tensor]],
    batch_size: int,
    seed: int,
    encode_batch: int = 64,
) -> Iterator[dict[str, Any]]:
    """`encoded_batch_stream` for aspect-ratio buckets: samples carry "bucket" and bucket-sized "pixels" (a
    `pair_bucket_decoder`); they are encoded once, a bucket at a time, and every batch comes from one bucket
    (so it stacks), the buckets' batches shuffled together each epoch. A bucket's last partial batch of an epoch
    is left for the next (its samples are reshuffled), so every batch has `batch_size` samples."""
    pending: dict[Any, list] = {}
    kept: dict[Any, dict[str, list]] = {}

    def flush(bucket) -> None:
        _encode_into(kept.setdefault(bucket, {}), collate(pending.pop(bucket)), encode)

    for sample in samples:
        pending.setdefault(sample["bucket"], []).append({k: v for k, v in sample.items() if k != "bucket"})
        if len(pending[sample["bucket"]]) == encode_batch:
            flush(sample["bucket"])
    for bucket in list(pending):
        flush(bucket)
    if not kept:
        raise RuntimeError("no training samples: the bucketed stream got none")
    data = {bucket: _gathered(store) for bucket, store in kept.items()}
    usable = {b: d for b, d in data.items() if d[2] >= batch_size}
    if len(usable) < len(data):
        print(f"[buckets] left out (fewer samples than one batch of {batch_size}): "
              + ", ".join(f"{b} ({d[2]})" for b, d in data.items() if b not in usable))
    print("[buckets] training on " + ", ".join(f"{b} ({d[2]})" for b, d in sorted(usable.items())))
    if not usable:
        counts = {str(b): d[2] for b, d in data.items()}
        raise RuntimeError(f"no aspect bucket holds a full batch of {batch_size} samples ({counts}): lower "
                           "train.batch_size or data.bucket_max_ratio, or turn data.aspect_buckets off")
    generator = torch.Generator().manual_seed(seed)
    while True:
        batches = []
        for bucket in sorted(usable):
            tensors, lists, count = usable[bucket]
            order = torch.randperm(count, generator=generator)
            batches.extend((bucket, order[i : i + batch_size]) for i in range(0, count - batch_size + 1, batch_size))
        for pick in torch.randperm(len(batches), generator=generator).tolist():
            bucket, index = batches[pick]
            tensors, lists, _ = usable[bucket]
            yield _picked(tensors, lists, index)
