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
