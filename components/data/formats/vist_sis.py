"""Raw VIST Story-in-Sequence (SIS) annotations, as released by the VIST authors.

Layout::

    train.story-in-sequence.json    {"annotations": [[{"story_id", "text", "photo_flickr_id",
                                      "worker_arranged_photo_order", ...}], ...], "images": [...], ...}
    images/train/<photo_flickr_id>.jpg   (or images/<photo_flickr_id>.jpg)

Each annotation is a one-element list holding one sentence of one story; sentences are grouped
by story_id and ordered by worker_arranged_photo_order. `src` is the folder (every
`*story-in-sequence*.json` in it is read) or one such .json file. A photo is looked for in
`images/<split>/` and then `images/` (split = the file name up to the first dot), with suffix
.jpg, .png, .jpeg or .gif (VIST ships a few non-JPEG photos); when none exists the record still
names `<id>.jpg` there and validation reports the missing file. An annotation without a
story_id is a `ReadFailure` of its own; any other malformed sentence fails its whole story.
Sentences are tidied (`files.tidy_text`), noted in extra["normalised"].
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from components.data.formats.files import (
    absolute,
    decode_text,
    normalised_extra,
    printable,
    tidy_text,
    utf8_problem,
)
from components.data.formats.groundtruth import GroundTruth, load_groundtruth
from components.data.records import ReadFailure, Story, StoryStep

SOURCE = "vist-sis"
PHOTO_SUFFIXES = (".jpg", ".png", ".jpeg", ".gif")
REQUIRED = ("story_id", "text", "photo_flickr_id", "worker_arranged_photo_order")


def read(src: Path) -> Iterator[Story | ReadFailure]:
    """Stories of the raw VIST SIS json file(s) at `src` (a folder or one .json file)."""
    src = Path(src)
    expected = "raw VIST SIS annotations (*story-in-sequence*.json) with photos under images/"
    if src.is_file():
        return _read(src.parent, [src])
    if not src.is_dir():
        raise FileNotFoundError(f"{src} does not exist; expected {expected}")
    files = sorted(src.glob("*story-in-sequence*.json"))
    if not files:
        raise FileNotFoundError(f"{src} holds no *story-in-sequence*.json file; expected {expected}")
    return _read(src, files)


def photo_path(folder: Path, split: str, photo_id: str) -> Path:
    """Where photo `photo_id` of `split` lives: the first existing candidate, else `<id>.jpg` in the split folder."""
    image_dirs = [folder / "images" / split, folder / "images"]
    for image_dir in image_dirs:
        for suffix in PHOTO_SUFFIXES:
            candidate = image_dir / f"{photo_id}{suffix}"
            if candidate.is_file():
                return absolute(candidate)
    home = image_dirs[0] if image_dirs[0].is_dir() else image_dirs[1]
    return absolute(home / f"{photo_id}.jpg")


def _read(folder: Path, files: list[Path]) -> Iterator[Story | ReadFailure]:
    groundtruth = load_groundtruth(folder)
    for path in files:
        split = path.name.split(".")[0]
        text = decode_text(path.read_bytes())
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            yield ReadFailure(ref=f"{path}:{exc.lineno}", reason=f"not valid JSON: {exc.msg}")
            continue
        if not isinstance(data, dict) or not isinstance(data.get("annotations"), list):
            yield ReadFailure(ref=str(path), reason="expected an object with an 'annotations' list")
            continue
        stories: dict[str, list[tuple[int, Any]]] = {}
        for index, annotation in enumerate(data["annotations"]):
            sentence = annotation[0] if isinstance(annotation, list) and len(annotation) == 1 else annotation
            if not isinstance(sentence, dict) or "story_id" not in sentence:
                yield ReadFailure(
                    ref=f"{path}:annotations[{index}]",
                    reason="annotation must be a one-element list holding an object with a story_id",
                    raw=printable(json.dumps(annotation)),
                )
                continue
            stories.setdefault(str(sentence["story_id"]), []).append((index, sentence))
        for story_id, sentences in stories.items():
            yield _story(folder, split, story_id, sentences, groundtruth, f"{path}:{story_id}")


def _story(
    folder: Path,
    split: str,
    story_id: str,
    sentences: list[tuple[int, Any]],
    groundtruth: GroundTruth,
    ref: str,
) -> Story | ReadFailure:
    for index, sentence in sentences:
        missing = [key for key in REQUIRED if key not in sentence]
        if missing:
            return ReadFailure(ref=ref, reason=f"annotations[{index}] is missing required field(s) {missing}")
        if not isinstance(sentence["text"], str) or not isinstance(
            sentence["worker_arranged_photo_order"], int
        ):
            return ReadFailure(
                ref=ref,
                reason=f"annotations[{index}]: text must be a string, worker_arranged_photo_order an integer",
            )
    orders = [s["worker_arranged_photo_order"] for _, s in sentences]
    if len(set(orders)) != len(orders):
        return ReadFailure(ref=ref, reason=f"duplicate worker_arranged_photo_order values {sorted(orders)}")
    ordered = sorted((s for _, s in sentences), key=lambda s: s["worker_arranged_photo_order"])
    steps, changes = [], set()
    for position, sentence in enumerate(ordered):
        problem = utf8_problem(sentence["text"], f"text of sentence {position}")
        if problem:
            return ReadFailure(ref=ref, reason=problem)
        image = photo_path(folder, split, str(sentence["photo_flickr_id"]))
        text, sentence_changes = tidy_text(sentence["text"])
        changes.update(sentence_changes)
        steps.append(
            StoryStep(
                text=text,
                image_path=image,
                groundtruth=groundtruth.for_step(story_id, position),
            )
        )
    return Story(
        id=story_id,
        steps=tuple(steps),
        source=SOURCE,
        extra=normalised_extra(
            {"split": split, "photo_flickr_ids": [str(s["photo_flickr_id"]) for s in ordered]}, changes
        ),
    )
