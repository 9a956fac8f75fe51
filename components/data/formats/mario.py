"""MARIO-LAION (TextDiffuser's MARIO-10M, LAION part): one folder per text-rich image.

Layout (TextDiffuser's `data/mario-laion-example`)::

    06269/062692530/caption.txt    the LAION caption (UTF-8, one line)
    06269/062692530/ocr.txt        one word per line: `WORD x1,y1,x2,y2,x3,y3,x4,y4 conf`, 512x512 frame
    06269/062692530/charseg.npy    256x256 int64 character classes, 0 = background (optional)
    06269/062692530/info.json      img2dataset metadata (url, key, status, width, height, ...)
    06269/062692530/image.jpg

`src` is the folder holding the `<5 digits>/<9 digits>/` sample folders (the 5 digits are the
first 5 of the 9-digit key). Each sample becomes a `TextRichImage` with id "<5 digits>_<9 digits>"
(the form of TextDiffuser's index files) and extra {"info": info.json}.

OCR boxes are given in a 512x512 frame: TextDiffuser's README has users resize every downloaded
image to 512x512 (aspect ratio not kept), and info.json keeps img2dataset's width/height and
original_width/original_height, which differ freely. The reader rescales each axis to the image's
own size (x * width / 512, y * height / 512), read from the image header (no pixel decoding), or
from info.json width/height when the image cannot be opened (missing or corrupt files are
validation's concern). Boxes are kept as the detector wrote them, including those that run past
the image edge (TextDiffuser's own example 27197/271975131 has x = 532): validation clips those and
quarantines boxes with no usable part inside. The real files list a word's four
corners clockwise but from varying corners (the LAION example starts at the bottom left); the
reader rotates each quad to start at the corner nearest the image's top left (smallest x + y),
reversing it first if it runs anticlockwise, so `WordBox.quad` always runs clockwise from the top
left. A sample whose caption.txt or ocr.txt is missing, whose caption is not UTF-8, whose ocr.txt
or info.json is malformed, whose charseg.npy is not a 2-D integer array, or whose size cannot be
found is a `ReadFailure`. An empty caption is kept (validation decides); captions are tidied
(`files.tidy_text`), noted in extra["normalised"].

charseg classes follow TextDiffuser (`util.py`): class = 1 + index in
`digits + ascii_lowercase + ascii_uppercase + punctuation + " "` (95 characters), 0 = no character.
"""

from __future__ import annotations

import io
import json
import re
import string
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from components.data.formats.files import (
    absolute,
    decode_text,
    normalised_extra,
    printable,
    require_dir,
    tidy_text,
    utf8_problem,
)
from components.data.formats.groundtruth import GroundTruth, load_groundtruth
from components.data.records import ReadFailure, TextRichImage, WordBox
from components.fileio import atomic_write_bytes, atomic_write_text

SOURCE = "mario"
OCR_FRAME = 512
CHARSEG_SIDE = 256
ALPHABET = string.digits + string.ascii_lowercase + string.ascii_uppercase + string.punctuation + " "
_SAMPLE_DIR = re.compile(r"\d{5}/\d{9}")


def char_class(char: str) -> int:
    """charseg class of one character (1..95), 0 for a character outside TextDiffuser's alphabet."""
    index = ALPHABET.find(char)
    return index + 1 if index >= 0 else 0


def read(src: Path) -> Iterator[TextRichImage | ReadFailure]:
    """Text-rich images of the MARIO-LAION sample folders under `src`."""
    expected = "MARIO-LAION sample folders <5 digits>/<9 digits>/ with caption.txt, ocr.txt, image.jpg"
    root = require_dir(src, expected)
    samples = sorted(
        d for d in root.glob("*/*") if d.is_dir() and _SAMPLE_DIR.fullmatch(f"{d.parent.name}/{d.name}")
    )
    if not samples:
        raise FileNotFoundError(f"{root} holds no <5 digits>/<9 digits>/ sample folder; expected {expected}")
    return _read(root, samples)


def _read(root: Path, samples: list[Path]) -> Iterator[TextRichImage | ReadFailure]:
    groundtruth = load_groundtruth(root)
    for sample in samples:
        yield _sample(absolute(sample), groundtruth)


def _sample(sample: Path, groundtruth: GroundTruth) -> TextRichImage | ReadFailure:
    for name in ("caption.txt", "ocr.txt"):
        if not (sample / name).is_file():
            return ReadFailure(ref=str(sample), reason=f"missing required file {name}")
    caption = decode_text((sample / "caption.txt").read_bytes())
    problem = utf8_problem(caption, "caption.txt")
    if problem:
        return ReadFailure(ref=str(sample / "caption.txt"), reason=problem, raw=printable(caption.strip()))
    caption, changes = tidy_text(caption)

    info: dict[str, Any] = {}
    if (sample / "info.json").is_file():
        try:
            info = json.loads(decode_text((sample / "info.json").read_bytes()))
        except json.JSONDecodeError as exc:
            return ReadFailure(ref=str(sample / "info.json"), reason=f"not valid JSON: {exc.msg}")
        if not isinstance(info, dict):
            return ReadFailure(ref=str(sample / "info.json"), reason="info.json must hold a JSON object")

    image_path = sample / "image.jpg"
    size = _image_size(image_path, info)
    if size is None:
        return ReadFailure(
            ref=str(sample),
            reason="cannot place the 512-px OCR boxes: image.jpg is missing or unreadable and info.json has no width/height",
        )

    words = []
    ocr_path = sample / "ocr.txt"
    for lineno, line in enumerate(decode_text(ocr_path.read_bytes()).split("\n"), start=1):
        if not line.strip():
            continue
        word = _ocr_word(line.strip(), size)
        if isinstance(word, str):
            return ReadFailure(ref=f"{ocr_path}:{lineno}", reason=word, raw=printable(line))
        words.append(word)

    charseg_path: Path | None = sample / "charseg.npy"
    if charseg_path.is_file():
        try:
            charseg = np.load(charseg_path, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            return ReadFailure(ref=str(charseg_path), reason=f"charseg.npy cannot be loaded: {exc}")
        if charseg.ndim != 2 or not np.issubdtype(charseg.dtype, np.integer):
            return ReadFailure(
                ref=str(charseg_path),
                reason=f"charseg must be a 2-D integer array, got {charseg.dtype} {charseg.shape}",
            )
    else:
        charseg_path = None

    return TextRichImage(
        id=f"{sample.parent.name}_{sample.name}",
        image_path=image_path,
        caption=caption,
        words=tuple(words),
        source=SOURCE,
        charseg_path=charseg_path,
        groundtruth=groundtruth.for_image(image_path),
        extra=normalised_extra({"info": info}, changes),
    )


def _image_size(path: Path, info: dict[str, Any]) -> tuple[int, int] | None:
    try:
        with Image.open(path) as image:
            return image.size
    except (OSError, ValueError, Image.DecompressionBombError):
        width, height = info.get("width"), info.get("height")
        if isinstance(width, int) and isinstance(height, int) and width > 0 and height > 0:
            return width, height
        return None


def _ocr_word(line: str, size: tuple[int, int]) -> WordBox | str:
    """One ocr.txt line as a WordBox in image pixels, or the reason it cannot be parsed."""
    parts = line.rsplit(maxsplit=2)
    if len(parts) != 3:
        return "expected `WORD x1,y1,x2,y2,x3,y3,x4,y4 conf`"
    text, box, conf = parts
    problem = utf8_problem(text, "the word")
    if problem:
        return problem
    try:
        coords = [float(v) for v in box.split(",")]
        confidence = float(conf)
    except ValueError:
        return f"coordinates {box!r} and confidence {conf!r} must be numbers"
    if len(coords) != 8:
        return f"expected 8 comma-separated coordinates, got {len(coords)}"
    sx, sy = size[0] / OCR_FRAME, size[1] / OCR_FRAME
    points = [(coords[i] * sx, coords[i + 1] * sy) for i in range(0, 8, 2)]
    return WordBox(text=text, quad=clockwise_from_top_left(points), confidence=confidence)


def clockwise_from_top_left(
    points: Sequence[tuple[float, float]],
) -> tuple[float, float, float, float, float, float, float, float]:
    """The 4 corners as a flat quad running clockwise (y down) from the corner with the smallest x + y."""
    pts = list(points)
    # Shoelace sum: positive for a clockwise walk when y points down.
    area = sum(pts[i][0] * pts[(i + 1) % 4][1] - pts[(i + 1) % 4][0] * pts[i][1] for i in range(4))
    if area < 0:
        pts.reverse()
    start = min(range(4), key=lambda i: (pts[i][0] + pts[i][1], pts[i][1]))
    pts = pts[start:] + pts[:start]
    return tuple(round(v, 3) for p in pts for v in p)  # type: ignore[return-value]


def write_mario_sample(
    root: Path,
    key: str,
    image_jpeg: bytes,
    caption: str,
    words: Sequence[WordBox],
    charseg: np.ndarray | None,
    info: dict[str, Any],
) -> Path:
    """Write one sample folder `root/<key[:5]>/<key>/` and return it.

    `words` are in the image's pixels (read from the JPEG header) and are written in the 512-px
    frame, rounded to integers as in the released files; `charseg` must be a 2-D integer array.
    """
    if not re.fullmatch(r"\d{9}", key):
        raise ValueError(f"MARIO key must be 9 digits, got {key!r}")
    if "\n" in caption:
        raise ValueError(f"caption of sample {key} holds a newline; caption.txt holds one line")
    width, height = Image.open(io.BytesIO(image_jpeg)).size
    sample = Path(root) / key[:5] / key
    lines = []
    for word in words:
        if not word.text or any(c.isspace() for c in word.text):
            raise ValueError(f"sample {key}: OCR word {word.text!r} must be non-empty and hold no whitespace")
        frame = [round(v * OCR_FRAME / (width if i % 2 == 0 else height)) for i, v in enumerate(word.quad)]
        lines.append(f"{word.text} {','.join(str(v) for v in frame)} {word.confidence!r}\n")
    atomic_write_bytes(sample / "image.jpg", image_jpeg)
    atomic_write_text(sample / "caption.txt", caption)
    atomic_write_text(sample / "ocr.txt", "".join(lines))
    atomic_write_text(sample / "info.json", json.dumps(info, ensure_ascii=False))
    if charseg is not None:
        if charseg.ndim != 2 or not np.issubdtype(charseg.dtype, np.integer):
            raise ValueError(
                f"sample {key}: charseg must be a 2-D integer array, got {charseg.dtype} {charseg.shape}"
            )
        buffer = io.BytesIO()
        np.save(buffer, np.ascontiguousarray(charseg, dtype=np.int64), allow_pickle=False)
        atomic_write_bytes(sample / "charseg.npy", buffer.getvalue())
    return sample
