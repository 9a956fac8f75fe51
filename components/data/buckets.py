"""Aspect-ratio buckets: train on non-square images without squashing or cropping them to a square.

SDXL (Podell et al. 2023, sec. 2.3 "multi-aspect training") and NovelAI's bucketing: the image sides a model
trains on are a fixed set of (width, height) pairs of about the same area (at most `base` x `base`), each side a
multiple of `step` (the VAE's factor times the UNet's downsampling, so every latent grid divides evenly). Each
image goes to the bucket whose aspect ratio is closest to its own (in log ratio), is scaled to cover it and
centre-cropped (at most a sliver of the long side is lost), and every batch is drawn from one bucket, so a batch
stacks into one tensor. ParaDiffusion's images are not square (ParaImage; the official demo samples at
1024x640), which is why its `paper` profile turns this on.

    buckets = make_buckets(512, step=64)     # 384x640, 448x576, 512x512, 576x448, 640x384
    bucket = nearest_bucket(1024, 640, buckets)   # 640x384
    pixels = fit_to_bucket(image, bucket)    # (3, 384, 640) in [-1, 1]
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image


@dataclass(frozen=True, order=True)
class Bucket:
    width: int
    height: int

    @property
    def ratio(self) -> float:
        return self.width / self.height

    def __str__(self) -> str:
        return f"{self.width}x{self.height}"


def make_buckets(base: int, step: int = 64, max_ratio: float = 2.0) -> list[Bucket]:
    """Every width that is a multiple of `step`, with the largest height (a multiple of `step`) that keeps the area
    within base x base, whose aspect ratio lies within [1/max_ratio, max_ratio]; sorted by ratio (tall first)."""
    if base <= 0 or step <= 0 or base % step:
        raise ValueError(f"aspect buckets: base ({base}) must be a positive multiple of step ({step})")
    if max_ratio < 1.0:
        raise ValueError(f"aspect buckets: max_ratio must be >= 1, got {max_ratio}")
    buckets = set()
    for width in range(step, int(base * max_ratio) + 1, step):
        height = (base * base // width) // step * step
        if height >= step and 1.0 / max_ratio <= width / height <= max_ratio:
            buckets.add(Bucket(width, height))
    return sorted(buckets, key=lambda b: b.ratio)


def nearest_bucket(width: int, height: int, buckets: list[Bucket]) -> Bucket:
    """The bucket whose aspect ratio is closest to width/height (in log ratio: 2:1 and 1:2 are equally far from 1:1)."""
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    target = math.log(width / height)
    return min(buckets, key=lambda b: (abs(math.log(b.ratio) - target), -b.width * b.height))


def fit_to_bucket(image: Image.Image, bucket: Bucket) -> torch.Tensor:
    """Scale `image` (Lanczos) to cover the bucket, keeping its aspect ratio, and centre-crop: (3, H, W) in [-1, 1]."""
    image = image.convert("RGB")
    scale = max(bucket.width / image.width, bucket.height / image.height)
    size = (max(bucket.width, round(image.width * scale)), max(bucket.height, round(image.height * scale)))
    if size != image.size:
        image = image.resize(size, Image.Resampling.LANCZOS)
    left, top = (size[0] - bucket.width) // 2, (size[1] - bucket.height) // 2
    image = image.crop((left, top, left + bucket.width, top + bucket.height))
    array = np.asarray(image, dtype=np.float32)  # (H, W, 3) in [0, 255]
    return torch.from_numpy(array).permute(2, 0, 1).div(127.5).sub(1.0)
