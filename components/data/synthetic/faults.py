"""Deliberately bad records, so the quarantine path runs end to end on the embedded default data.

With `WorldConfig.fault_fraction` > 0 every dataset that trains a model gets some bad records;
each is listed in `world_manifest.json` under `injected_faults`. The kinds:

- corrupt_jpeg: the image file holds a JPEG marker followed by garbage; it does not decode.
- empty_caption: the record's caption (or caption.txt) is empty.
- duplicate_image: the image file is a byte copy of an earlier record's image, under its own name.
- missing_image: the metadata names an image file that is not on disk.
- small_image: the image is `SMALL_IMAGE_SIDE` pixels square (below any sane minimum short edge).
- truncated_jsonl: a JSON Lines record is cut off half way (MMDialog).
- non_utf8_caption: a MARIO caption.txt is written in latin-1 with a non-ASCII character.
- failed_download: an img2dataset row with status "failed_to_download" and no files (LAION).

A dataset with `n` records gets `max(len(home), round(fault_fraction * n))` faults (never more
than n - 1: record 0 stays clean as the source of duplicates), on randomly chosen records; kinds
are taken in order from the dataset's list, whose first `home` kinds are spread over the
datasets so that a world with faults shows every kind at least once. Per dataset, the bad
fraction is therefore about max(fault_fraction, home / n): keep tiny datasets large enough for the
validation threshold.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from components.fileio import atomic_write_bytes

FAULT_KINDS = (
    "corrupt_jpeg",
    "empty_caption",
    "duplicate_image",
    "missing_image",
    "small_image",
    "truncated_jsonl",
    "non_utf8_caption",
    "failed_download",
)
SMALL_IMAGE_SIDE = 8
# A latin-1 encoded "é": valid latin-1, never valid UTF-8 on its own.
NON_UTF8_SUFFIX = " outside the café"


@dataclass(frozen=True)
class InjectedFault:
    """One deliberately bad record.

    `ref` is the file that carries the fault, relative to the dataset folder, with ":line",
    ":key" or "[index]" where the fault is one line, row or entry of a metadata file (the same
    forms readers use in `ReadFailure.ref`, there with absolute paths). `record_id` is the id the
    reader gives the affected record, or None when the reader yields a `ReadFailure` instead.
    """

    dataset: str
    kind: str
    ref: str
    record_id: str | None
    detail: str

    def to_json(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "kind": self.kind,
            "ref": self.ref,
            "record_id": self.record_id,
            "detail": self.detail,
        }


def plan_faults(
    rng: random.Random, count: int, kinds: Sequence[str], home: int, fraction: float
) -> dict[int, str]:
    """Which records (by index) get which fault kind; empty when `fraction` is 0."""
    unknown = [k for k in kinds if k not in FAULT_KINDS]
    if unknown:
        raise ValueError(f"unknown fault kind(s) {unknown}; known kinds: {FAULT_KINDS}")
    if fraction <= 0 or count < 2:
        return {}
    n = min(count - 1, max(home, round(fraction * count)))
    chosen = sorted(rng.sample(range(1, count), n))
    return {index: kinds[k % len(kinds)] for k, index in enumerate(chosen)}


def corrupt_jpeg_bytes(jpeg: bytes) -> bytes:
    """A JPEG start-of-image marker followed by deterministic garbage of the original length."""
    return b"\xff\xd8\xff\xe0" + bytes((i * 37 + 11) % 256 for i in range(max(0, len(jpeg) - 4)))


def damage_image(path: Path, kind: str, duplicate_of: Path | None, small_jpeg: bytes) -> str:
    """Apply an image-file fault to `path` (already written); returns the manifest detail.

    `duplicate_of` is the earlier image a duplicate copies; `small_jpeg` what a small image becomes.
    """
    if kind == "corrupt_jpeg":
        atomic_write_bytes(path, corrupt_jpeg_bytes(path.read_bytes()))
        return "image bytes replaced by a JPEG marker and garbage"
    if kind == "missing_image":
        path.unlink()
        return "image file deleted"
    if kind == "small_image":
        atomic_write_bytes(path, small_jpeg)
        return f"image replaced by a {SMALL_IMAGE_SIDE}x{SMALL_IMAGE_SIDE} px JPEG"
    if kind == "duplicate_image":
        if duplicate_of is None:
            raise ValueError("duplicate_image needs the earlier image to copy")
        atomic_write_bytes(path, duplicate_of.read_bytes())
        return f"byte copy of {duplicate_of.parent.name}/{duplicate_of.name}"
    raise ValueError(f"{kind!r} is not an image-file fault")
