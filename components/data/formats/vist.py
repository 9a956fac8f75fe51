"""VIST stories as MiniGPT-5 cleans them: story JSON plus an image-id mapping.

Layout (MiniGPT-5's `datasets/VIST`; its loader finds the mapping by replacing "cleaned" with
"image_mapping" in the story file's name)::

    <split>_cleaned.json          {story_id: [{"caption", "image_id", "sequence_index"}, ...]}
    <split>_image_mapping.json    {image_id: "<split>_images/000000005.jpg"}
    <split>_images/...            images, mapping paths relative to this folder

`src` is the folder; every `*_cleaned.json` in it is read (sorted by name), e.g. train, val and
test. Each story becomes a `Story` (id = story_id, steps ordered by sequence_index, extra: split
and the image ids). A story file without its mapping, or that is not valid JSON, is one
`ReadFailure`; a story with a malformed step, a duplicate sequence_index, an image id missing
from the mapping or a caption that is not UTF-8 is a `ReadFailure` ("file:story_id"). Empty
captions are kept; captions are tidied (`files.tidy_text`), noted in extra["normalised"]. A mapped
image that is not on disk is validation's concern: it quarantines the story as `missing_image`,
naming the step (a story is one record: its steps build on each other).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from components.data.formats.files import (
    decode_text,
    normalised_extra,
    printable,
    relative_posix,
    require_dir,
    tidy_text,
    under,
    utf8_problem,
)
from components.data.formats.groundtruth import GroundTruth, load_groundtruth
from components.data.records import ReadFailure, Story, StoryStep
from components.fileio import atomic_write_json

SOURCE = "vist"
STORY_SUFFIX = "_cleaned.json"
MAPPING_SUFFIX = "_image_mapping.json"


def read(src: Path) -> Iterator[Story | ReadFailure]:
    """Stories of every `<split>_cleaned.json` (+ `<split>_image_mapping.json`) in folder `src`."""
    expected = f"MiniGPT-5 VIST files <split>{STORY_SUFFIX} and <split>{MAPPING_SUFFIX}"
    folder = require_dir(src, expected)
    story_files = sorted(folder.glob(f"*{STORY_SUFFIX}"))
    if not story_files:
        raise FileNotFoundError(f"{folder} holds no *{STORY_SUFFIX} file; expected {expected}")
    return _read(folder, story_files)


def _load_json(path: Path) -> tuple[Any, ReadFailure | None]:
    text = decode_text(path.read_bytes())
    try:
        return json.loads(text), None
    except json.JSONDecodeError as exc:
        return None, ReadFailure(ref=f"{path}:{exc.lineno}", reason=f"not valid JSON: {exc.msg}")


def _read(folder: Path, story_files: list[Path]) -> Iterator[Story | ReadFailure]:
    groundtruth = load_groundtruth(folder)
    for story_file in story_files:
        split = story_file.name[: -len(STORY_SUFFIX)]
        mapping_file = folder / f"{split}{MAPPING_SUFFIX}"
        if not mapping_file.is_file():
            yield ReadFailure(ref=str(story_file), reason=f"no image mapping {mapping_file.name} beside it")
            continue
        stories, failure = _load_json(story_file)
        if failure is None:
            mapping, failure = _load_json(mapping_file)
        if failure is not None:
            yield failure
            continue
        if not isinstance(stories, dict) or not isinstance(mapping, dict):
            yield ReadFailure(
                ref=str(story_file),
                reason="story file and mapping must both hold a JSON object at the top level",
            )
            continue
        for story_id, steps in stories.items():
            yield _story(
                folder, split, str(story_id), steps, mapping, groundtruth, f"{story_file}:{story_id}"
            )


def _story(
    folder: Path, split: str, story_id: str, steps: Any, mapping: dict, groundtruth: GroundTruth, ref: str
) -> Story | ReadFailure:
    if not isinstance(steps, list) or not steps:
        return ReadFailure(ref=ref, reason="a story must be a non-empty list of steps")
    for i, step in enumerate(steps):
        if not isinstance(step, dict):
            return ReadFailure(ref=ref, reason=f"step {i} must be an object")
        missing = [k for k in ("caption", "image_id", "sequence_index") if k not in step]
        if missing:
            return ReadFailure(
                ref=ref,
                reason=f"step {i} is missing required field(s) {missing}",
                raw=printable(json.dumps(step)),
            )
        if not isinstance(step["caption"], str) or not isinstance(step["sequence_index"], int):
            return ReadFailure(
                ref=ref, reason=f"step {i}: caption must be a string and sequence_index an integer"
            )
        if str(step["image_id"]) not in mapping:
            return ReadFailure(
                ref=ref, reason=f"step {i}: image_id {step['image_id']!r} is not in the image mapping"
            )
    indices = [step["sequence_index"] for step in steps]
    if len(set(indices)) != len(indices):
        return ReadFailure(ref=ref, reason=f"duplicate sequence_index values {sorted(indices)}")
    ordered = sorted(steps, key=lambda s: s["sequence_index"])
    out, changes = [], set()
    for position, step in enumerate(ordered):
        relative = str(mapping[str(step["image_id"])])
        problem = utf8_problem(step["caption"], f"caption of step {position}") or utf8_problem(
            relative, "image path"
        )
        if problem:
            return ReadFailure(ref=ref, reason=problem)
        image_path = under(folder, relative)
        text, step_changes = tidy_text(step["caption"])
        changes.update(step_changes)
        out.append(
            StoryStep(
                text=text,
                image_path=image_path,
                groundtruth=groundtruth.for_step(story_id, position),
            )
        )
    return Story(
        id=story_id,
        steps=tuple(out),
        source=SOURCE,
        extra=normalised_extra({"split": split, "image_ids": [str(s["image_id"]) for s in ordered]}, changes),
    )


def write_vist(folder: Path, split: str, stories: Iterable[Story]) -> tuple[Path, Path]:
    """Write `<split>_cleaned.json` and `<split>_image_mapping.json` in `folder`.

    A step's image id is its image file's stem, so image file names must be unique within the
    split; images must lie inside `folder`. Every step needs an image (VIST has one per step).
    """
    folder = Path(folder)
    cleaned: dict[str, list[dict[str, Any]]] = {}
    mapping: dict[str, str] = {}
    for story in stories:
        entries = []
        for index, step in enumerate(story.steps):
            if step.image_path is None:
                raise ValueError(f"story {story.id!r} step {index} has no image; every VIST step has one")
            image_id = Path(step.image_path).stem
            relative = relative_posix(step.image_path, folder, f"image of story {story.id!r} step {index}")
            if mapping.get(image_id, relative) != relative:
                raise ValueError(f"image id {image_id!r} names two files: {mapping[image_id]} and {relative}")
            mapping[image_id] = relative
            entries.append({"caption": step.text, "image_id": image_id, "sequence_index": index})
        cleaned[story.id] = entries
    story_file, mapping_file = folder / f"{split}{STORY_SUFFIX}", folder / f"{split}{MAPPING_SUFFIX}"
    atomic_write_json(story_file, cleaned, sort_keys=False)
    atomic_write_json(mapping_file, mapping, sort_keys=False)
    return story_file, mapping_file
