"""LAION-style image-text pairs as img2dataset writes them (output_format "files").

Layout (img2dataset, one shard per parquet)::

    00000.parquet          one row per input sample: url, caption, key, status, error_message,
                           width, height, original_width, original_height, exif, sha256, ...
    00000_stats.json       shard statistics
    00000/000000012.jpg    the downloaded image (key = 5-digit shard + 4-digit index)
    00000/000000012.txt    its caption
    00000/000000012.json   its metadata

`src` is the output folder; every `*.parquet` in it is read (sorted), and a row's image is
`<parquet stem>/<key>.jpg` (or .png/.webp/.jpeg when that is what exists). A row whose status is
not "success" (failed_to_download, failed_to_resize, ...) becomes a `ReadFailure` carrying
img2dataset's error_message; a success row becomes a `CaptionImagePair` with id = key and the
other columns (url, width, height, sha256, ...) in `extra`. A parquet that cannot be read or
lacks the key, status or caption column is one `ReadFailure`; a null caption is kept as an empty
caption (validation decides). Captions are tidied (`files.tidy_text`: LAION alt-text is full of
"&amp;" and doubled spaces), noted in extra["normalised"]. `width`/`height` differing from
`original_width`/`original_height` is normal (img2dataset resized the download) and kept as is.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from components.data.formats.files import absolute, normalised_extra, require_dir, tidy_text, utf8_problem
from components.data.formats.groundtruth import load_groundtruth
from components.data.records import CaptionImagePair, ReadFailure
from components.fileio import atomic_write_bytes, atomic_write_json, atomic_write_text

SOURCE = "laion-parquet"
REQUIRED = ("key", "status", "caption")
IMAGE_SUFFIXES = (".jpg", ".png", ".webp", ".jpeg")


def read(src: Path) -> Iterator[CaptionImagePair | ReadFailure]:
    """Pairs of the img2dataset output folder `src` (its `*.parquet` shards and `<shard>/` folders)."""
    expected = "img2dataset output: <shard>.parquet metadata with <shard>/<key>.jpg files"
    folder = require_dir(src, expected)
    shards = sorted(folder.glob("*.parquet"))
    if not shards:
        raise FileNotFoundError(f"{folder} holds no *.parquet shard; expected {expected}")
    return _read(folder, shards)


def image_file(shard_dir: Path, key: str) -> Path:
    """The image of `key` in `shard_dir`: the first existing suffix, else `<key>.jpg`."""
    for suffix in IMAGE_SUFFIXES:
        candidate = shard_dir / f"{key}{suffix}"
        if candidate.is_file():
            return absolute(candidate)
    return absolute(shard_dir / f"{key}.jpg")


def _read(folder: Path, shards: list[Path]) -> Iterator[CaptionImagePair | ReadFailure]:
    groundtruth = load_groundtruth(folder)
    for shard in shards:
        try:
            table = pq.read_table(shard)
        except (pa.ArrowException, OSError) as exc:
            yield ReadFailure(ref=str(shard), reason=f"parquet cannot be read: {exc}")
            continue
        missing = [c for c in REQUIRED if c not in table.column_names]
        if missing:
            yield ReadFailure(
                ref=str(shard), reason=f"missing required column(s) {missing}; has {table.column_names}"
            )
            continue
        shard_dir = folder / shard.stem
        for index, row in enumerate(table.to_pylist()):
            key = row["key"]
            ref = f"{shard}:{key if key is not None else f'row {index}'}"
            if key is None or str(key).strip() == "":
                yield ReadFailure(ref=ref, reason="missing required field key")
                continue
            key = str(key)
            if row["status"] != "success":
                yield ReadFailure(
                    ref=ref,
                    reason=f"img2dataset status {row['status']!r}: {row.get('error_message') or 'no error message'}",
                )
                continue
            caption = row["caption"] or ""
            problem = utf8_problem(caption, "caption")
            if problem:
                yield ReadFailure(ref=ref, reason=problem)
                continue
            image_path = image_file(shard_dir, key)
            caption, changes = tidy_text(caption)
            left_out = ("key", "caption", "status", "error_message")
            columns = {k: v for k, v in row.items() if k not in left_out and v is not None}
            yield CaptionImagePair(
                id=key,
                image_path=image_path,
                caption=caption,
                source=SOURCE,
                groundtruth=groundtruth.for_image(image_path),
                extra=normalised_extra(columns, changes),
            )


@dataclass(frozen=True)
class Img2DatasetRow:
    """One input sample of a shard: its image bytes when downloaded, else the failure img2dataset saw."""

    key: str
    caption: str
    url: str
    image_jpeg: bytes | None
    status: str = "success"
    error_message: str | None = None


SCHEMA = pa.schema(
    [
        ("url", pa.string()),
        ("caption", pa.string()),
        ("key", pa.string()),
        ("status", pa.string()),
        ("error_message", pa.string()),
        ("width", pa.int64()),
        ("height", pa.int64()),
        ("original_width", pa.int64()),
        ("original_height", pa.int64()),
        ("exif", pa.string()),
        ("sha256", pa.string()),
    ]
)


def write_laion_shard(root: Path, shard: int, rows: Sequence[Img2DatasetRow]) -> Path:
    """Write shard `shard` of an img2dataset output folder: parquet, stats and `<shard>/<key>.*` files.

    A "success" row needs JPEG bytes (width, height and sha256 come from them); any other status
    must come without bytes and writes no files, as img2dataset does for a failed download.
    """
    root = Path(root)
    name = f"{shard:05d}"
    columns: dict[str, list] = {field.name: [] for field in SCHEMA}
    status_counts: dict[str, int] = {}
    for row in rows:
        if (row.status == "success") != (row.image_jpeg is not None):
            raise ValueError(
                f"row {row.key}: a 'success' row needs image bytes and any other status must have none"
            )
        width = height = sha256 = None
        if row.image_jpeg is not None:
            width, height = Image.open(io.BytesIO(row.image_jpeg)).size
            sha256 = hashlib.sha256(row.image_jpeg).hexdigest()
            meta = {
                "url": row.url,
                "caption": row.caption,
                "key": row.key,
                "status": row.status,
                "error_message": None,
                "width": width,
                "height": height,
                "original_width": width,
                "original_height": height,
                "exif": "{}",
                "sha256": sha256,
            }
            atomic_write_bytes(root / name / f"{row.key}.jpg", row.image_jpeg)
            atomic_write_text(root / name / f"{row.key}.txt", row.caption)
            atomic_write_json(root / name / f"{row.key}.json", meta)
        for column, value in (
            ("url", row.url),
            ("caption", row.caption),
            ("key", row.key),
            ("status", row.status),
            ("error_message", row.error_message),
            ("width", width),
            ("height", height),
            ("original_width", width),
            ("original_height", height),
            ("exif", "{}" if width else None),
            ("sha256", sha256),
        ):
            columns[column].append(value)
        status_counts[row.status] = status_counts.get(row.status, 0) + 1
    buffer = io.BytesIO()
    pq.write_table(pa.table(columns, schema=SCHEMA), buffer)
    path = root / f"{name}.parquet"
    atomic_write_bytes(path, buffer.getvalue())
    stats = {
        "count": len(rows),
        "successes": status_counts.get("success", 0),
        "failed_to_download": status_counts.get("failed_to_download", 0),
        "failed_to_resize": status_counts.get("failed_to_resize", 0),
        "status_dict": status_counts,
    }
    atomic_write_text(root / f"{name}_stats.json", json.dumps(stats, indent=4, sort_keys=True) + "\n")
    return path
