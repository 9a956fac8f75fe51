"""Real image files for data tests: good JPEGs and a truncated one."""

import io
import random
from pathlib import Path

from PIL import Image


def write_jpeg(path: Path, size: int = 32, seed: int = 0) -> Path:
    rng = random.Random(seed)
    image = Image.new("RGB", (size, size), tuple(rng.randrange(256) for _ in range(3)))
    image.putpixel((0, 0), (seed % 256, (seed * 7) % 256, (seed * 13) % 256))
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="JPEG", quality=90)
    return path


def truncated_jpeg(path: Path, seed: int = 0) -> Path:
    buffer = io.BytesIO()
    Image.effect_noise((64, 64), 80).convert("RGB").save(buffer, format="JPEG")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    return path
