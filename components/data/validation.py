"""Record validation: one pure function per record, so it runs in-process or as a Ray Data map.

`validate_record` checks what a training run would otherwise trip over: the image decodes fully,
its short edge is large enough, the caption is present and within length, referenced files exist,
OCR boxes and character maps are sane. It never raises on bad data; it returns a `Verdict` whose
`reason` names what is wrong. Duplicate images need a view across records, so `deduplicate` runs
after the per-record pass (content sha256; the first record in id order keeps the image).

Unusable records are quarantined; records that are only untidy are normalised and kept, and the
record says what was done in `extra["normalised"]` (codes counted in the validation report).
Readers tidy text (`formats.files.tidy_text`: HTML character references, runs of whitespace);
validation clips OCR boxes that run past the image edge (`CLIPPED_OCR_BOX`: the record keeps the
original quads in `extra["clipped_words"]` and `extra["clipped"] = True`), as real detector output
does near the border. A box entirely outside the image, with less than a pixel of area, or with
non-finite coordinates is `bad_ocr_box`. What real public data holds and is not an error: LAION
metadata whose width/height differ from original_width/original_height (img2dataset resized the
download), dialogue turns without an image, stories whose steps reuse a photo.
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from PIL import Image

from components.data.formats.mario import clockwise_from_top_left
from components.data.records import (
    PromptRecord,
    ReadFailure,
    Record,
    Story,
    TextRichImage,
    image_paths,
    record_text,
)
from components.data.text_stats import count_nouns, count_words

CLIPPED_OCR_BOX = "clipped_ocr_box"
MIN_BOX_AREA = 1.0
"""Square pixels a word box needs inside the image; less is a line or a point (nothing to draw)."""


@dataclass
class ValidationConfig:
    min_short_edge: int = 16
    """Images whose shorter side is below this many pixels are quarantined."""
    min_caption_words: int = 1
    """Captions (or story steps, prompts) with fewer words are quarantined."""
    max_caption_words: int = 400
    """Captions with more words are quarantined (ParaDiffusion encodes at most 512 tokens)."""
    max_bad_fraction: float = 0.05
    """A run whose quarantined fraction exceeds this fails with DataQualityError."""
    require_quoted_words: bool = False
    """Prompt sets whose prompts must name words to render in 'single quotes' (MARIO-Eval)."""
    charseg_shape: tuple[int, int] = (256, 256)
    """Expected shape of MARIO charseg.npy maps."""

    def __post_init__(self) -> None:
        if self.min_short_edge < 1:
            raise ValueError(f"validation.min_short_edge must be >= 1, got {self.min_short_edge}")
        if not 0 <= self.min_caption_words <= self.max_caption_words:
            raise ValueError(
                "need 0 <= validation.min_caption_words <= validation.max_caption_words, "
                f"got {self.min_caption_words}, {self.max_caption_words}"
            )
        if not 0.0 <= self.max_bad_fraction <= 1.0:
            raise ValueError(f"validation.max_bad_fraction must be in [0, 1], got {self.max_bad_fraction}")


class DataQualityError(RuntimeError):
    """Too much of a dataset was quarantined: the run stops instead of training on what is left."""


@dataclass
class Verdict:
    """The outcome of validating one record. `reason` is None when the record is kept."""

    record: Record | ReadFailure
    reason: str | None = None
    image_sha256: tuple[str, ...] = ()
    short_side: int | None = None
    words: int = 0
    nouns: int = 0

    @property
    def ok(self) -> bool:
        return self.reason is None

    @property
    def reason_code(self) -> str | None:
        """The reason's category (text before the first ':'), used to group quarantine counts."""
        return None if self.reason is None else self.reason.split(":", 1)[0]

    @property
    def record_id(self) -> str:
        return self.record.ref if isinstance(self.record, ReadFailure) else self.record.id

    @property
    def normalised(self) -> tuple[str, ...]:
        """Codes of what the reader and validation tidied in this record (empty when nothing)."""
        return () if isinstance(self.record, ReadFailure) else tuple(self.record.extra.get("normalised", ()))

    @property
    def clipped_boxes(self) -> int:
        """How many of the record's OCR boxes validation clipped to the image."""
        return 0 if isinstance(self.record, ReadFailure) else len(self.record.extra.get("clipped_words", ()))


def validate_record(record: Record | ReadFailure, cfg: ValidationConfig) -> Verdict:
    """Check one record. Pure: reads the files it refers to, writes nothing, never raises on bad data."""
    if isinstance(record, ReadFailure):
        return Verdict(record, reason=f"unreadable: {record.reason}")
    try:
        return _validate(record, cfg)
    except Exception as exc:  # a check itself failing is a finding about the record, not a crash
        return Verdict(record, reason=f"validation_error: {type(exc).__name__}: {exc}")


def _validate(record: Record, cfg: ValidationConfig) -> Verdict:
    text_problem = _check_text(record, cfg)
    text = record_text(record)
    verdict = Verdict(record, words=count_words(text), nouns=count_nouns(text))
    if text_problem:
        verdict.reason = text_problem
        return verdict

    hashes, sides = [], []
    for where, path in _image_places(record):
        problem, digest, short_side = _check_image(path, cfg)
        if problem:
            code, detail = problem.split(": ", 1)
            verdict.reason = f"{code}: {where}{detail}"
            return verdict
        hashes.append(digest)
        sides.append(short_side)
    verdict.image_sha256 = tuple(hashes)
    verdict.short_side = min(sides) if sides else None

    if isinstance(record, Story) and not hashes:
        verdict.reason = "no_image: the story has no step with an image"
    elif isinstance(record, TextRichImage):
        verdict.reason, verdict.record = _check_textrich(record, cfg)
    return verdict


def _image_places(record: Record) -> list[tuple[str, Path]]:
    """Each image of a record with where it sits ("step 2 of 5: " in a story), for reasons."""
    if isinstance(record, Story):
        n = len(record.steps)
        steps = enumerate(record.steps)
        return [(f"step {i} of {n}: ", s.image_path) for i, s in steps if s.image_path is not None]
    return [("", path) for path in image_paths(record)]


def _check_text(record: Record, cfg: ValidationConfig) -> str | None:
    if isinstance(record, Story):
        if len(record.steps) < 2:
            return f"too_few_steps: {len(record.steps)} step(s), a story needs at least 2"
        texts = [s.text for s in record.steps if s.text.strip()]
        if not texts:
            return "empty_caption: no step has text"
    else:
        texts = [record_text(record)]
    for text in texts:
        if "\ufffd" in text:
            return "bad_encoding: text holds U+FFFD replacement characters (decoded with the wrong codec)"
        n = count_words(text)
        if n == 0:
            return "empty_caption: caption is empty"
        if n < cfg.min_caption_words:
            return f"caption_too_short: {n} words < validation.min_caption_words={cfg.min_caption_words}"
        if n > cfg.max_caption_words:
            return f"caption_too_long: {n} words > validation.max_caption_words={cfg.max_caption_words}"
    if isinstance(record, PromptRecord) and cfg.require_quoted_words and not record.quoted_words:
        return "no_quoted_words: the prompt names no word to render in 'single quotes'"
    return None


def _check_image(path: Path, cfg: ValidationConfig) -> tuple[str | None, str, int]:
    if not path.is_file():
        return f"missing_image: {path} does not exist", "", 0
    data = path.read_bytes()
    try:
        with Image.open(path) as image:
            image.load()  # full decode: a truncated or corrupt JPEG fails here, not in a training step
            width, height = image.size
    except Exception as exc:
        return f"corrupt_image: {path.name} does not decode ({type(exc).__name__}: {exc})", "", 0
    short_side = min(width, height)
    if short_side < cfg.min_short_edge:
        return (
            f"small_image: {path.name} short edge {short_side}px < validation.min_short_edge={cfg.min_short_edge}",
            "",
            short_side,
        )
    return None, hashlib.sha256(data).hexdigest(), short_side


def _check_textrich(record: TextRichImage, cfg: ValidationConfig) -> tuple[str | None, TextRichImage]:
    """The reason a text-rich record is unusable (or None), and the record with its boxes clipped."""
    if not record.words:
        return "no_words: a text-rich image needs at least one OCR word box", record
    with Image.open(record.image_path) as image:
        width, height = image.size
    words, clipped = [], []
    for index, word in enumerate(record.words):
        if not word.text.strip():
            return "bad_ocr_box: an OCR line has an empty word", record
        quad = word.quad
        if not all(math.isfinite(v) for v in quad):
            return f"bad_ocr_box: box of {word.text!r} has non-finite coordinates {list(quad)}", record
        area = quad_area(quad)
        if area < MIN_BOX_AREA:
            return (
                f"bad_ocr_box: box of {word.text!r} is degenerate "
                f"({area:.3g} px2 < {MIN_BOX_AREA:g}): {list(quad)}",
                record,
            )
        inside = clip_quad(quad, width, height)
        if quad_area(inside) < MIN_BOX_AREA:
            where = f"lies outside the {width}x{height} image"
            return f"bad_ocr_box: box of {word.text!r} {where}: {list(quad)}", record
        if inside != quad:
            clipped.append({"index": index, "text": word.text, "quad": list(quad)})
            word = replace(word, quad=inside)
        words.append(word)
    if record.charseg_path is not None:
        if not record.charseg_path.is_file():
            return f"missing_charseg: {record.charseg_path} does not exist", record
        try:
            charseg = np.load(record.charseg_path, allow_pickle=False)
        except Exception as exc:
            problem = f"bad_charseg: {record.charseg_path.name} does not load ({type(exc).__name__}: {exc})"
            return problem, record
        if charseg.shape != tuple(cfg.charseg_shape) or not np.issubdtype(charseg.dtype, np.integer):
            return (
                f"bad_charseg: {record.charseg_path.name} is {charseg.dtype} {charseg.shape}, "
                f"expected an integer map of shape {tuple(cfg.charseg_shape)}"
            ), record
    if not clipped:
        return None, record
    normalised = sorted({*record.extra.get("normalised", ()), CLIPPED_OCR_BOX})
    extra = {**record.extra, "normalised": normalised, "clipped": True, "clipped_words": clipped}
    return None, replace(record, words=tuple(words), extra=extra)


def quad_area(quad: tuple[float, ...]) -> float:
    """Area of a quadrilateral (x1, y1, ..., x4, y4) by the shoelace formula, in square pixels."""
    xs, ys = quad[0::2], quad[1::2]
    return abs(sum(xs[i] * ys[(i + 1) % 4] - xs[(i + 1) % 4] * ys[i] for i in range(4))) / 2


def clip_quad(quad: tuple[float, ...], width: int, height: int) -> tuple[float, ...]:
    """`quad` with each corner moved into the image [0, width] x [0, height].

    Exact for the axis-aligned boxes most OCR lines are; a rotated quad crossing the edge keeps four
    corners (a `WordBox` has four) that cover the visible part approximately. The corners are put back
    clockwise from the top left, since clamping can change which corner that is.
    """
    if all(0 <= quad[i] <= (width if i % 2 == 0 else height) for i in range(8)):
        return quad
    points = [(min(max(quad[i], 0.0), width), min(max(quad[i + 1], 0.0), height)) for i in range(0, 8, 2)]
    return clockwise_from_top_left(points)


def deduplicate(verdicts: list[Verdict]) -> list[Verdict]:
    """Quarantine records whose image bytes equal an earlier record's (earlier = smaller id)."""
    owner: dict[str, str] = {}
    for verdict in sorted(verdicts, key=lambda v: v.record_id):
        if not verdict.ok or isinstance(verdict.record, Story):
            continue  # stories may legitimately reuse a photo across steps and stories
        for digest in verdict.image_sha256:
            if digest in owner:
                verdict.reason = f"duplicate_image: same image bytes as record {owner[digest]}"
                break
        else:
            for digest in verdict.image_sha256:
                owner[digest] = verdict.record_id
    return verdicts


def validate_locally(records: Iterable[Record | ReadFailure], cfg: ValidationConfig) -> Iterator[Verdict]:
    """The in-process engine: validate records one by one in this process."""
    for record in records:
        yield validate_record(record, cfg)


ValidationEngine = Callable[[Iterable[Record | ReadFailure], ValidationConfig], Iterable[Verdict]]


@dataclass
class ValidationResult:
    """Records kept and quarantined by one validation run."""

    kept: list[Verdict] = field(default_factory=list)
    quarantined: list[Verdict] = field(default_factory=list)

    @property
    def total(self) -> int:
        return len(self.kept) + len(self.quarantined)

    @property
    def bad_fraction(self) -> float:
        return len(self.quarantined) / self.total if self.total else 0.0

    def reasons(self) -> dict[str, int]:
        return dict(sorted(Counter(v.reason_code for v in self.quarantined).items()))

    @property
    def normalised(self) -> int:
        """Kept records that were tidied (text, OCR boxes) rather than quarantined."""
        return sum(1 for v in self.kept if v.normalised)

    def normalisations(self) -> dict[str, int]:
        """Kept records per normalisation code (a record tidied two ways counts under both)."""
        return dict(sorted(Counter(code for v in self.kept for code in v.normalised).items()))

    @property
    def clipped_boxes(self) -> int:
        """OCR boxes clipped to their image, over all kept records."""
        return sum(v.clipped_boxes for v in self.kept)


def validate_records(
    records: Iterable[Record | ReadFailure],
    cfg: ValidationConfig,
    engine: ValidationEngine = validate_locally,
    progress: Callable[[int], None] | None = None,
) -> ValidationResult:
    """Validate every record with `engine`, then deduplicate; kept records are sorted by id."""
    verdicts = []
    for verdict in engine(records, cfg):
        verdicts.append(verdict)
        if progress is not None:
            progress(len(verdicts))
    deduplicate(verdicts)
    result = ValidationResult()
    for verdict in sorted(verdicts, key=lambda v: v.record_id):
        (result.kept if verdict.ok else result.quarantined).append(verdict)
    return result


def check_bad_fraction(result: ValidationResult, cfg: ValidationConfig, where: str) -> None:
    """Raise DataQualityError when too much was quarantined; the quarantine file is written first."""
    if result.total == 0:
        raise DataQualityError(f"{where}: no records were read; check --src and --format")
    if result.bad_fraction > cfg.max_bad_fraction:
        raise DataQualityError(
            f"{where}: {len(result.quarantined)} of {result.total} records quarantined "
            f"({result.bad_fraction:.1%} > validation.max_bad_fraction={cfg.max_bad_fraction:.1%}); "
            f"reasons: {result.reasons()}. Inspect the quarantine file, fix the source, "
            "or raise validation.max_bad_fraction."
        )
