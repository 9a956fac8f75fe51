"""Ground truth written beside a synthetic dataset, and how readers find it.

A dataset folder made by the synthetic world holds `groundtruth.jsonl`, one JSON object per
sample (per step for stories):

    {"id": ..., "image": "<path relative to the dataset folder>" | null, "scene": Scene.to_json(), ...}

Story steps also carry "story_id" and "step" (0-based position in the ordered story). Readers look
for the file in the dataset folder (the reader's `src`, or the folder of `src` when it is a file)
and attach the matching object to `record.groundtruth` (pairs, text-rich images: by image path;
prompts: by id; story steps: by story id and step). Real corpora have no such file, so their
records carry None. A malformed ground-truth file is a broken synthetic world, not bad corpus
data, so it raises (ValueError, or TypeError for a line that is not an object) naming the line.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from components.data.formats.files import absolute, under
from components.fileio import atomic_write_jsonl

GROUNDTRUTH_FILE = "groundtruth.jsonl"


class GroundTruth:
    """Lookup of one dataset folder's ground-truth rows by image path, id, or (story id, step)."""

    def __init__(self, folder: Path, rows: Iterable[dict[str, Any]] = ()):
        self.folder = Path(folder)
        self.by_image: dict[Path, dict[str, Any]] = {}
        self.by_id: dict[str, dict[str, Any]] = {}
        self.by_step: dict[tuple[str, int], dict[str, Any]] = {}
        for row in rows:
            if row.get("image"):
                self.by_image[under(self.folder, row["image"])] = row
            if "story_id" in row and "step" in row:
                self.by_step[(str(row["story_id"]), int(row["step"]))] = row
            elif "id" in row:
                self.by_id[str(row["id"])] = row

    def __len__(self) -> int:
        return len(self.by_image) + len(self.by_id) + len(self.by_step)

    def for_image(self, path: Path | None) -> dict[str, Any] | None:
        return None if path is None else self.by_image.get(absolute(path))

    def for_id(self, record_id: str) -> dict[str, Any] | None:
        return self.by_id.get(record_id)

    def for_step(self, story_id: str, step: int) -> dict[str, Any] | None:
        return self.by_step.get((story_id, step))


def load_groundtruth(folder: Path) -> GroundTruth:
    """The ground truth of the dataset in `folder` (empty when it has no groundtruth.jsonl)."""
    path = Path(folder) / GROUNDTRUTH_FILE
    if not path.is_file():
        return GroundTruth(folder)
    rows = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{lineno}: ground-truth line is not valid JSON ({exc})") from exc
        if not isinstance(row, dict):
            raise TypeError(f"{path}:{lineno}: ground-truth line must be a JSON object")
        rows.append(row)
    return GroundTruth(folder, rows)


def write_groundtruth(folder: Path, rows: list[dict[str, Any]]) -> Path:
    """Write `rows` as the folder's groundtruth.jsonl (sorted keys, one row per line) atomically."""
    path = Path(folder) / GROUNDTRUTH_FILE
    atomic_write_jsonl(path, rows)
    return path
