"""OCR metrics as MARIO-Eval computes them (TextDiffuser; VLAD Table I), with a real offline OCR engine.

The rules, from TextDiffuser's evaluation script:
- ground truth: the words inside 'single quotes' of the prompt, lower-cased, split on whitespace;
- per image: precision = matched / #predicted, recall = matched / #ground-truth, where matching is
  multiset matching (each predicted word consumes one equal ground-truth word); an empty side gives 0;
- accuracy = 1 when the sorted word lists are equal;
- over a set: mean P, mean R, mean accuracy, and F-measure = 2 P R / (P + R) from the *means*
  (not the mean of per-image F).

The engine is RapidOCR (PP-OCRv4 detection + recognition ONNX models shipped inside the
`rapidocr-onnxruntime` wheel) running on the `onnxruntime` module that `onnxruntime-gpu` provides;
on a machine without CUDA it runs on CPUExecutionProvider, and `OcrEngine.providers` says which.
MARIO-Eval's MaskTextSpotterV3 returns one word per detection; PP-OCR may return a line of words in
one box, so recognised strings are split on whitespace before matching.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from components.metrics.loading import ImageLike, load_rgb

logger = logging.getLogger(__name__)

_QUOTED = re.compile(r"'(.*?)'")


def quoted_words(prompt: str) -> list[str]:
    """The words a MARIO-Eval prompt asks to render: inside 'single quotes', lower-cased."""
    words: list[str] = []
    for match in _QUOTED.findall(prompt.strip().lower()):
        words.extend(match.split())
    return words


@dataclass(frozen=True)
class OcrImageScore:
    """MARIO-Eval's per-image numbers."""

    precision: float
    recall: float
    accuracy: float
    predicted: tuple[str, ...]
    target: tuple[str, ...]


def score_words(predicted: Sequence[str], target: Sequence[str]) -> OcrImageScore:
    """Multiset precision / recall and exact-set accuracy of one image's recognised words."""
    pred = [p.strip().lower() for p in predicted]
    gt = [g.strip().lower() for g in target]
    matched = sum((Counter(pred) & Counter(gt)).values())
    precision = matched / len(pred) if pred else 0.0
    recall = matched / len(gt) if gt else 0.0
    # MARIO-Eval compares the concatenated sorted lists; equal lists is the same test for words
    # without spaces, which splitting guarantees.
    accuracy = 1.0 if sorted(pred) == sorted(gt) else 0.0
    return OcrImageScore(precision, recall, accuracy, tuple(pred), tuple(gt))


@dataclass(frozen=True)
class OcrMetrics:
    """MARIO-Eval over a set: accuracy, precision, recall, F-measure from mean P and mean R."""

    accuracy: float
    precision: float
    recall: float
    f_measure: float
    count: int
    per_image: list[OcrImageScore]

    def to_json(self) -> dict:
        return {
            "accuracy": self.accuracy,
            "precision": self.precision,
            "recall": self.recall,
            "f_measure": self.f_measure,
            "count": self.count,
        }


def mario_eval(scores: Sequence[OcrImageScore]) -> OcrMetrics:
    """Aggregate per-image scores the MARIO-Eval way."""
    if not scores:
        raise ValueError("no per-image OCR scores to aggregate")
    p = float(np.mean([s.precision for s in scores]))
    r = float(np.mean([s.recall for s in scores]))
    acc = float(np.mean([s.accuracy for s in scores]))
    f = 2 * p * r / (p + r) if p + r > 0 else 0.0
    return OcrMetrics(acc, p, r, f, len(scores), list(scores))


class OcrEngine:
    """RapidOCR's PP-OCRv4 pipeline (detect, classify orientation, recognise), offline.

    `min_confidence` drops recognised strings below that score (RapidOCR's own `text_score`
    threshold of 0.5 applies first). `det_limit_side_len` / `det_limit_type` override how the
    detector resizes its input; None keeps RapidOCR's defaults (736, "min": the shortest side is
    scaled up to 736 px). With "max", images up to 960 px keep their size: about twice as fast on
    256 px images, at the risk of missing very small text.
    """

    def __init__(
        self,
        min_confidence: float = 0.5,
        det_limit_side_len: int | None = None,
        det_limit_type: str | None = None,
    ) -> None:
        from rapidocr_onnxruntime import RapidOCR

        overrides: dict = {}
        if det_limit_side_len is not None:
            overrides["det_limit_side_len"] = det_limit_side_len
        if det_limit_type is not None:
            if det_limit_type not in ("min", "max"):
                raise ValueError(f"det_limit_type must be 'min' or 'max', got {det_limit_type!r}")
            overrides["det_limit_type"] = det_limit_type
        self.engine = RapidOCR(**overrides)
        self.min_confidence = min_confidence
        self.providers = self.engine.text_det.infer.session.get_providers()
        logger.info("OCR engine RapidOCR (PP-OCRv4) running on %s", self.providers)

    def read(self, image: ImageLike) -> list[tuple[str, float]]:
        """Recognised (string, confidence) pairs in reading order; [] when no text is found."""
        rgb = np.asarray(load_rgb(image))
        result, _ = self.engine(np.ascontiguousarray(rgb[:, :, ::-1]))  # RapidOCR takes BGR like cv2
        if not result:
            return []
        return [(text, float(conf)) for _box, text, conf in result if float(conf) >= self.min_confidence]

    def words(self, image: ImageLike) -> list[str]:
        """Recognised words, lower-cased and split on whitespace."""
        return [w.lower() for text, _ in self.read(image) for w in text.split()]


def ocr_metrics(
    engine: OcrEngine,
    images: Sequence[ImageLike],
    prompts: Sequence[str],
    progress: Callable[[int], None] | None = None,
) -> OcrMetrics:
    """Read every image with `engine` and score it against its prompt's quoted words."""
    if len(images) != len(prompts):
        raise ValueError(f"{len(images)} images but {len(prompts)} prompts")
    scores = []
    for image, prompt in zip(images, prompts):
        target = quoted_words(prompt)
        if not target:
            where = str(image) if isinstance(image, (str, Path)) else "an image"
            logger.warning(
                "prompt for %s quotes no words; its recall is 0 by MARIO-Eval's rule: %r", where, prompt
            )
        scores.append(score_words(engine.words(image), target))
        if progress is not None:
            progress(1)
    return mario_eval(scores)
