"""Aspect-ratio buckets (components/data/buckets.py) and the bucketed batch stream the ParaDiffusion stages train on."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from components.data.buckets import Bucket, fit_to_bucket, make_buckets, nearest_bucket
from components.data.training_data import collate_pairs, pair_bucket_decoder
from training_jobs.data_loading import bucketed_batch_stream


def test_buckets_at_512_are_sdxls_shapes_within_the_area():
    buckets = make_buckets(512, step=64)
    assert [str(b) for b in buckets] == ["384x640", "448x576", "512x512", "576x448", "640x384"]
    for b in buckets:
        assert b.width % 64 == 0 and b.height % 64 == 0 and b.width * b.height <= 512 * 512
    assert len(make_buckets(512, 64, max_ratio=1.0)) == 1
    with pytest.raises(ValueError, match="multiple of step"):
        make_buckets(500, 64)


def test_each_image_goes_to_the_bucket_nearest_its_aspect_ratio():
    buckets = make_buckets(512, step=64)
    assert nearest_bucket(1024, 640, buckets) == Bucket(640, 384)  # the official demo's 1024x640
    assert nearest_bucket(640, 1024, buckets) == Bucket(384, 640)
    assert nearest_bucket(300, 300, buckets) == Bucket(512, 512)
    assert nearest_bucket(4000, 100, buckets) == Bucket(640, 384)  # beyond the widest: the widest


def test_an_image_keeps_its_aspect_ratio_in_its_bucket():
    """A square stays a square: the image is scaled to cover the bucket and centre-cropped, not squashed."""
    image = Image.new("RGB", (400, 200), "white")
    ImageDraw.Draw(image).rectangle((150, 50, 249, 149), fill="black")  # 100x100 in the centre
    pixels = fit_to_bucket(image, Bucket(160, 96))  # scale 0.48 -> 192x96, 16 px cropped from each side
    assert pixels.shape == (3, 96, 160) and pixels.min() >= -1 and pixels.max() <= 1
    dark = (pixels.mean(dim=0) < 0).numpy()
    rows, cols = np.nonzero(dark.any(axis=1))[0], np.nonzero(dark.any(axis=0))[0]
    height, width = rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1
    assert abs(height - 48) <= 1 and abs(width - 48) <= 1  # squashed to 160x96 it would be 40 wide


def _sample(index: int, size: tuple[int, int]) -> dict[str, bytes]:
    buffer = io.BytesIO()
    Image.new("RGB", size, (index * 7 % 255, 0, 0)).save(buffer, format="PNG")
    meta = {"id": f"s{index}", "caption": f"caption {index}"}
    return {"__key__": f"s{index}", "json": json.dumps(meta).encode(), "png": buffer.getvalue()}


def test_every_batch_comes_from_one_bucket_and_every_full_bucket_is_served():
    buckets = make_buckets(32, step=8)  # 24x40, 32x32, 40x24
    decode = pair_bucket_decoder(buckets)
    sizes = [(64, 32)] * 5 + [(32, 64)] * 4 + [(30, 30)] * 2 + [(33, 31)] + [(200, 100)]  # wide 6, tall 4, square 3
    samples = [decode(_sample(i, size)) for i, size in enumerate(sizes)]
    encoded_shapes = []

    def encode(batch):
        encoded_shapes.append(tuple(batch["pixels"].shape))
        return {"latents": batch["pixels"][:, :, ::4, ::4]}

    stream = bucketed_batch_stream(samples, collate_pairs, encode, batch_size=2, seed=0, encode_batch=4)
    epoch = [next(stream) for _ in range(3 + 2 + 1)]  # 6 wide -> 3 batches, 4 tall -> 2, 3 square -> 1
    # encoded once, a bucket at a time (up to encode_batch samples), at the bucket's size
    assert sorted(encoded_shapes) == sorted([(4, 3, 24, 40), (2, 3, 24, 40), (4, 3, 40, 24), (3, 3, 32, 32)])
    shapes = [tuple(b["latents"].shape) for b in epoch]
    assert sorted(shapes) == sorted([(2, 3, 6, 10)] * 3 + [(2, 3, 10, 6)] * 2 + [(2, 3, 8, 8)])
    wide = [i for b in epoch if b["latents"].shape[-1] == 10 for i in b["id"]]
    assert sorted(wide) == sorted(f"s{i}" for i in (0, 1, 2, 3, 4, 12))  # each wide sample once per epoch
    for batch in epoch:
        assert len(batch["caption"]) == 2 and batch["caption"][0].startswith("caption")
    again = bucketed_batch_stream(samples, collate_pairs, encode, batch_size=2, seed=0, encode_batch=4)
    assert [b["id"] for b in epoch] == [next(again)["id"] for _ in range(6)]  # the seed fixes the order


def test_a_batch_no_bucket_can_fill_is_refused_naming_the_settings():
    decode = pair_bucket_decoder(make_buckets(32, step=8))
    samples = [decode(_sample(i, (64, 32))) for i in range(3)]
    with pytest.raises(RuntimeError, match="train.batch_size or data.bucket_max_ratio"):
        next(bucketed_batch_stream(samples, collate_pairs, lambda b: {"latents": b["pixels"]}, batch_size=4, seed=0))
    assert torch.is_tensor(samples[0]["pixels"])
