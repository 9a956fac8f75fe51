"""ParaImage (ParaDiffusion's paragraph-image pairs) as a JSON list.

The paper releases ParaImage-Big/-Small as image-paragraph pairs; genops stores them as one JSON
file holding a list of objects::

    [{"image": "images/000000.jpg", "caption": "<paragraph of 50-300 words>"}, ...]

with image paths relative to the JSON file's folder. Other keys of an entry are kept in
`record.extra`. `src` is the .json file or a folder holding exactly one .json. The record id is
the image path without its suffix. A file that is not valid JSON, or not a list, is one
`ReadFailure`; an entry that is not an object, lacks "image" or "caption", holds non-string
values or bytes that are not UTF-8 is a `ReadFailure` ("file[index]"). An empty caption is kept
(validation decides); captions are tidied (`files.tidy_text`), noted in extra["normalised"].
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path, PurePosixPath

from components.data.formats.files import (
    decode_text,
    normalised_extra,
    printable,
    relative_posix,
    single_file,
    tidy_text,
    under,
    utf8_problem,
)
from components.data.formats.groundtruth import load_groundtruth
from components.data.records import CaptionImagePair, ReadFailure
from components.fileio import atomic_write_json

SOURCE = "paraimage"


def read(src: Path) -> Iterator[CaptionImagePair | ReadFailure]:
    """Pairs of the ParaImage JSON at `src` (the .json, or a folder with exactly one)."""
    path = single_file(src, ".json", 'a ParaImage JSON list of {"image", "caption"} objects')
    return _read(path)


def _read(path: Path) -> Iterator[CaptionImagePair | ReadFailure]:
    folder = path.parent
    text = decode_text(path.read_bytes())
    try:
        entries = json.loads(text)
    except json.JSONDecodeError as exc:
        yield ReadFailure(
            ref=f"{path}:{exc.lineno}", reason=f"not valid JSON: {exc.msg}", raw=printable(text)
        )
        return
    if not isinstance(entries, list):
        yield ReadFailure(
            ref=str(path), reason=f"top level must be a JSON list, got {type(entries).__name__}"
        )
        return
    groundtruth = load_groundtruth(folder)
    for index, entry in enumerate(entries):
        ref = f"{path}[{index}]"
        if not isinstance(entry, dict):
            yield ReadFailure(ref=ref, reason=f"entry must be an object, got {type(entry).__name__}")
            continue
        missing = [key for key in ("image", "caption") if key not in entry]
        if missing:
            yield ReadFailure(
                ref=ref, reason=f"missing required field(s) {missing}", raw=printable(json.dumps(entry))
            )
            continue
        image, caption = entry["image"], entry["caption"]
        if not isinstance(image, str) or not image.strip() or not isinstance(caption, str):
            yield ReadFailure(
                ref=ref,
                reason="'image' must be a non-empty string and 'caption' a string",
                raw=printable(json.dumps(entry)),
            )
            continue
        problem = utf8_problem(caption, "caption") or utf8_problem(image, "image path")
        if problem:
            yield ReadFailure(ref=ref, reason=problem, raw=printable(caption))
            continue
        image_path = under(folder, image.strip())
        caption, changes = tidy_text(caption)
        yield CaptionImagePair(
            id=str(PurePosixPath(image.strip()).with_suffix("")),
            image_path=image_path,
            caption=caption,
            source=SOURCE,
            groundtruth=groundtruth.for_image(image_path),
            extra=normalised_extra(
                {k: v for k, v in entry.items() if k not in ("image", "caption")}, changes
            ),
        )


def write_paraimage(path: Path, pairs: Iterable[CaptionImagePair]) -> Path:
    """Write `pairs` as a ParaImage JSON list at `path`; images must lie inside its folder."""
    path = Path(path)
    entries = [
        {
            "image": relative_posix(p.image_path, path.parent, f"image of {p.id!r}"),
            "caption": p.caption,
            **p.extra,
        }
        for p in pairs
    ]
    atomic_write_json(path, entries)
    return path
