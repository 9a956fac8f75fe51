"""The typed record shapes every reader yields, one per task family.

Readers of the public formats (`components/data/formats/`) turn files on disk into these records;
validation, preparation and the training datasets only ever see these shapes. A reader never
raises on a bad line or a missing file: it yields a `ReadFailure` naming where and why, and the
preparation step quarantines it.

Paths inside records are absolute. `groundtruth` carries the synthetic world's scene description
(see `components/data/scene.py`) when the corpus has one beside it, else None.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union


@dataclass(frozen=True)
class CaptionImagePair:
    """One image with one caption (CC3M, LAION, ParaImage short or paragraph captions)."""

    id: str
    image_path: Path
    caption: str
    source: str
    groundtruth: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    kind = "pair"


@dataclass(frozen=True)
class StoryStep:
    """One step of a story or one dialogue turn: text, and the image that goes with it (if any)."""

    text: str
    image_path: Path | None
    groundtruth: dict[str, Any] | None = None


@dataclass(frozen=True)
class Story:
    """An ordered sequence of text(+image) steps (VIST stories, MMDialog conversations)."""

    id: str
    steps: tuple[StoryStep, ...]
    source: str
    extra: dict[str, Any] = field(default_factory=dict)

    kind = "story"


@dataclass(frozen=True)
class WordBox:
    """A word rendered in an image and its quadrilateral, in the image's own pixel coordinates.

    `quad` is (x1, y1, x2, y2, x3, y3, x4, y4), clockwise from the top-left corner, as MARIO's
    ocr.txt lists them (there in 512-px coordinates; readers rescale to the image).
    """

    text: str
    quad: tuple[float, float, float, float, float, float, float, float]
    confidence: float = 1.0


@dataclass(frozen=True)
class TextRichImage:
    """An image with rendered text: caption (words to render in 'single quotes'), OCR boxes, charseg."""

    id: str
    image_path: Path
    caption: str
    words: tuple[WordBox, ...]
    source: str
    charseg_path: Path | None = None
    groundtruth: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    kind = "textrich"


@dataclass(frozen=True)
class PromptRecord:
    """A benchmark prompt with no image: ParaPrompts paragraphs, MARIO-Eval prompts."""

    id: str
    prompt: str
    source: str
    category: str | None = None
    quoted_words: tuple[str, ...] = ()
    groundtruth: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    kind = "prompt"


@dataclass(frozen=True)
class ReadFailure:
    """Something a reader could not turn into a record: `ref` says where (file, line), `reason` why."""

    ref: str
    reason: str
    raw: str | None = None

    kind = "failure"


Record = Union[CaptionImagePair, Story, TextRichImage, PromptRecord]


_TYPES = {cls.kind: cls for cls in (CaptionImagePair, Story, TextRichImage, PromptRecord, ReadFailure)}


def record_to_json(record: Record | ReadFailure, root: Path | None = None) -> dict[str, Any]:
    """JSON-safe dict of a record; with `root`, file paths are written relative to it (portable)."""

    def path(p: Path | None) -> str | None:
        if p is None:
            return None
        if root is not None:
            try:
                return Path(p).relative_to(root).as_posix()
            except ValueError:
                return str(p)
        return str(p)

    out: dict[str, Any] = {"kind": record.kind}
    for name in record.__dataclass_fields__:
        value = getattr(record, name)
        if name in ("image_path", "charseg_path"):
            value = path(value)
        elif name == "steps":
            value = [{"text": s.text, "image_path": path(s.image_path), "groundtruth": s.groundtruth} for s in value]
        elif name == "words":
            value = [{"text": w.text, "quad": list(w.quad), "confidence": w.confidence} for w in value]
        elif name == "quoted_words":
            value = list(value)
        out[name] = value
    return out


def record_from_json(data: dict[str, Any], root: Path | None = None) -> Record | ReadFailure:
    """Inverse of `record_to_json`; relative paths are resolved against `root`."""

    def path(p: str | None) -> Path | None:
        if p is None:
            return None
        return (root / p) if root is not None and not Path(p).is_absolute() else Path(p)

    fields = dict(data)
    kind = fields.pop("kind")
    if kind not in _TYPES:
        raise ValueError(f"unknown record kind {kind!r}; known kinds: {sorted(_TYPES)}")
    for name in ("image_path", "charseg_path"):
        if name in fields:
            fields[name] = path(fields[name])
    if "steps" in fields:
        fields["steps"] = tuple(
            StoryStep(text=s["text"], image_path=path(s["image_path"]), groundtruth=s.get("groundtruth"))
            for s in fields["steps"]
        )
    if "words" in fields:
        fields["words"] = tuple(WordBox(w["text"], tuple(w["quad"]), w.get("confidence", 1.0)) for w in fields["words"])
    if "quoted_words" in fields:
        fields["quoted_words"] = tuple(fields["quoted_words"])
    return _TYPES[kind](**fields)


def image_paths(record: Record) -> list[Path]:
    """Every image file a record refers to, in order."""
    if isinstance(record, (CaptionImagePair, TextRichImage)):
        return [record.image_path]
    if isinstance(record, Story):
        return [s.image_path for s in record.steps if s.image_path is not None]
    return []


def record_text(record: Record) -> str:
    """All the text of a record, as captions statistics and the tokenizer see it."""
    if isinstance(record, (CaptionImagePair, TextRichImage)):
        return record.caption
    if isinstance(record, Story):
        return " ".join(s.text for s in record.steps)
    if isinstance(record, PromptRecord):
        return record.prompt
    raise TypeError(f"not a record: {record!r}")
