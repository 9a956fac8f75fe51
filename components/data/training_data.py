"""Turning shard samples into training tensors: image decoding and batching for caption-image pairs.

Decoders take a WebDataset sample dict (see `components/data/shards.py`) and return plain Python
and tensor values; collate functions stack them. Images become float tensors in [-1, 1], the range
the VAE and the diffusion models work in.
"""

from __future__ import annotations

import io
import json
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")


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
