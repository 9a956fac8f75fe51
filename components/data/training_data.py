"""Training data: streaming shards into workers, and turning samples into tensors.

`ShardDataset` streams WebDataset shards (see `components/data/shards.py`) split across ranks and
DataLoader workers. Decoders take a WebDataset sample dict (see `components/data/shards.py`) and return plain Python
and tensor values; collate functions stack them. Images become float tensors in [-1, 1], the range
the VAE and the diffusion models work in.
"""

from __future__ import annotations

import io
import json
import random
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import IterableDataset, get_worker_info

from components.data.shards import iter_shard

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")


class ShardDataset(IterableDataset):
    """Stream samples from tar shards, split across distributed ranks and DataLoader workers.

    With at least as many shards as readers (ranks x workers) each reader takes whole shards;
    otherwise every reader scans all shards and keeps every n-th sample, so small datasets still
    give every rank data. `repeat=True` cycles forever (training loops count steps, not epochs),
    reshuffling shard order each pass with `seed + pass` so ranks stay deterministic.
    """

    def __init__(
        self,
        shards: list[Path],
        decode: Callable[[dict[str, bytes]], Any],
        rank: int = 0,
        world_size: int = 1,
        repeat: bool = False,
        shuffle: bool = False,
        seed: int = 0,
        shuffle_buffer: int = 256,
    ):
        if not shards:
            raise ValueError("ShardDataset needs at least one shard")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world_size {world_size}")
        self.shards = [Path(s) for s in shards]
        self.decode = decode
        self.rank, self.world_size = rank, world_size
        self.repeat, self.shuffle, self.seed = repeat, shuffle, seed
        self.shuffle_buffer = shuffle_buffer

    def _reader(self) -> tuple[int, int]:
        info = get_worker_info()
        workers, worker = (info.num_workers, info.id) if info else (1, 0)
        return self.rank * workers + worker, self.world_size * workers

    def _samples(self, epoch: int) -> Iterator[dict[str, bytes]]:
        reader, readers = self._reader()
        order = list(self.shards)
        if self.shuffle:
            random.Random(self.seed + epoch).shuffle(order)
        if len(order) >= readers:
            for shard in order[reader::readers]:
                yield from iter_shard(shard)
        else:
            index = 0
            for shard in order:
                for sample in iter_shard(shard):
                    if index % readers == reader:
                        yield sample
                    index += 1

    def __iter__(self) -> Iterator[Any]:
        epoch = 0
        rng = random.Random(self.seed * 7919 + self._reader()[0])
        while True:
            buffer: list[dict[str, bytes]] = []
            for sample in self._samples(epoch):
                if not self.shuffle:
                    yield self.decode(sample)
                    continue
                buffer.append(sample)
                if len(buffer) >= self.shuffle_buffer:
                    yield self.decode(buffer.pop(rng.randrange(len(buffer))))
            rng.shuffle(buffer)
            for sample in buffer:
                yield self.decode(sample)
            epoch += 1
            if not self.repeat:
                return


def seed_worker(worker_id: int) -> None:
    """DataLoader `worker_init_fn` that makes each worker's torch RNG depend only on the base seed."""
    torch.manual_seed(torch.initial_seed() % 2**31 + worker_id)


def decode_image(data: bytes, size: int) -> torch.Tensor:
    """JPEG/PNG bytes -> (3, size, size) float tensor in [-1, 1] (RGB, resized with Lanczos if needed)."""
    with Image.open(io.BytesIO(data)) as image:
        image = image.convert("RGB")
        if image.size != (size, size):
            image = image.resize((size, size), Image.Resampling.LANCZOS)
        array = np.asarray(image, dtype=np.float32)  # (H, W, 3) in [0, 255]
    return torch.from_numpy(array).permute(2, 0, 1).div(127.5).sub(1.0)  # (3, H, W) in [-1, 1]


def sample_image_bytes(sample: dict[str, bytes]) -> bytes:
    """The main image of a pair or text-rich sample."""
    for ext in IMAGE_EXTENSIONS:
        if ext in sample:
            return sample[ext]
    raise KeyError(f"sample {sample.get('__key__')} has no image member (looked for {IMAGE_EXTENSIONS})")


def pair_decoder(image_size: int) -> Callable[[dict[str, bytes]], dict[str, Any]]:
    """Decoder of caption-image samples: {"id", "pixels", "caption", "groundtruth"}."""

    def decode(sample: dict[str, bytes]) -> dict[str, Any]:
        meta = json.loads(sample["json"])
        return {
            "id": meta["id"],
            "pixels": decode_image(sample_image_bytes(sample), image_size),
            "caption": meta["caption"],
            "groundtruth": meta.get("groundtruth"),
        }

    return decode


def pair_bucket_decoder(buckets) -> Callable[[dict[str, bytes]], dict[str, Any]]:
    """`pair_decoder` for aspect-ratio bucketing (`components.data.buckets`): the image scaled to cover its
    nearest bucket and centre-cropped, not squashed to a square; "bucket" names which one."""
    from components.data.buckets import fit_to_bucket, nearest_bucket

    def decode(sample: dict[str, bytes]) -> dict[str, Any]:
        meta = json.loads(sample["json"])
        with Image.open(io.BytesIO(sample_image_bytes(sample))) as image:
            bucket = nearest_bucket(image.width, image.height, buckets)
            pixels = fit_to_bucket(image, bucket)
        return {"id": meta["id"], "pixels": pixels, "caption": meta["caption"],
                "groundtruth": meta.get("groundtruth"), "bucket": bucket}

    return decode


def collate_pairs(batch: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "id": [b["id"] for b in batch],
        "pixels": torch.stack([b["pixels"] for b in batch]),  # (B, 3, H, W)
        "caption": [b["caption"] for b in batch],
        "groundtruth": [b["groundtruth"] for b in batch],
    }


def image_grid(pixels: torch.Tensor, columns: int | None = None) -> Image.Image:
    """(N, 3, H, W) tensor in [-1, 1] -> one PIL grid image (for sample grids in MLflow)."""
    n, _, h, w = pixels.shape
    columns = columns or int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / columns))
    array = ((pixels.detach().float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()
    grid = np.zeros((rows * h, columns * w, 3), dtype=np.uint8)
    for i in range(n):
        r, c = divmod(i, columns)
        grid[r * h : (r + 1) * h, c * w : (c + 1) * w] = array[i]
    return Image.fromarray(grid)
