"""MARIO-Eval OCR metrics: the scoring rules on hand-made cases, and the real offline OCR engine
(RapidOCR, PP-OCRv4 ONNX) on rendered ground-truth text and on noise."""

from __future__ import annotations

import random

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

from components.data.scene import BACKGROUNDS, Scene, SceneObject, render_scene
from components.metrics.ocr import OcrEngine, mario_eval, ocr_metrics, quoted_words, score_words

# Readable English words of 3-8 letters.
WORDS = tuple(
    ["apple", "garden", "river", "stone", "yellow", "window", "market", "silver", "planet", "forest", "candle", "pocket", "bridge", "horse", "cloud", "music", "orange", "paper", "dream", "light", "mountain", "coffee", "winter", "summer", "castle", "dragon", "rocket", "tiger", "ocean", "basket", "pencil", "camera", "flower", "butter", "jacket", "ladder", "monkey", "needle", "rabbit", "violin", "wizard"]
)


def test_quoted_words_are_the_lower_cased_words_inside_single_quotes():
    assert quoted_words("A sign that reads 'Hello World' next to 'EXIT'") == ["hello", "world", "exit"]
    assert quoted_words("a poster with no quoted text") == []


def test_multiset_precision_recall_and_accuracy():
    s = score_words(["cat", "cat", "dog"], ["cat", "dog", "dog", "bird"])
    # Ratios of word counts in float64: one rounding (1e-16); approx's default rel 1e-6 only absorbs the
    # order of operations, while one word more or less moves these by >= 1/4.
    assert s.precision == pytest.approx(2 / 3)  # one 'cat' and one 'dog' match
    assert s.recall == pytest.approx(2 / 4)
    assert s.accuracy == 0.0
    same = score_words(["World", "hello"], ["hello", "world"])
    assert (same.precision, same.recall, same.accuracy) == (1.0, 1.0, 1.0)
    nothing_read = score_words([], ["hello"])
    assert (nothing_read.precision, nothing_read.recall, nothing_read.accuracy) == (0.0, 0.0, 0.0)


def test_f_measure_comes_from_mean_precision_and_mean_recall():
    # Image 1 reads everything it should plus 3 extra words; image 2 reads one word of four.
    image_1 = score_words(["open", "sale", "a", "b", "c"], ["open", "sale"])  # P 2/5, R 1
    image_2 = score_words(["exit"], ["exit", "hotel", "music", "river"])  # P 1, R 1/4
    metrics = mario_eval([image_1, image_2])
    p, r = (0.4 + 1.0) / 2, (1.0 + 0.25) / 2
    # float64 means and F of a few ratios: a few roundings (1e-16), far under approx's default rel 1e-6
    assert (metrics.precision, metrics.recall) == (pytest.approx(p), pytest.approx(r))
    assert metrics.f_measure == pytest.approx(2 * p * r / (p + r))  # 0.6588...
    mean_of_f = np.mean([2 * 0.4 * 1 / 1.4, 2 * 1 * 0.25 / 1.25])  # 0.4857...
    assert abs(metrics.f_measure - mean_of_f) > 0.15
    assert metrics.accuracy == 0.0 and metrics.count == 2


def render_words(words: list[str], size: int, rng: random.Random) -> Image.Image:
    """Words drawn with Pillow's built-in font on a plain or a shape scene, one word per line."""
    background = rng.choice(sorted(BACKGROUNDS))
    objects = ()
    if rng.random() < 0.5:
        objects = (SceneObject("circle", "yellow", "small", "bottom right", 5 / 6, 5 / 6, 0.08),)
    image = render_scene(Scene(background, objects), size)
    draw = ImageDraw.Draw(image)
    ink = (20, 20, 20) if sum(BACKGROUNDS[background]) > 300 else (245, 245, 245)
    font = ImageFont.load_default(size=size // 8)
    pitch = size // len(words) if words else size
    for i, word in enumerate(words):
        draw.text(
            (rng.randint(size // 20, size // 4), i * pitch + rng.randint(4, max(5, pitch - size // 8 - 8))),
            word,
            fill=ink,
            font=font,
        )
    return image


@pytest.fixture(scope="module")
def engine() -> OcrEngine:
    return OcrEngine()


def test_engine_runs_offline_on_onnxruntime(engine):
    import onnxruntime

    assert "CPUExecutionProvider" in engine.providers
    assert set(engine.providers) <= set(onnxruntime.get_available_providers())
    with pytest.raises(ValueError, match="det_limit_type"):
        OcrEngine(det_limit_type="smallest")


def test_ocr_reads_rendered_ground_truth_text(engine):
    rng = random.Random(0)
    prompts, images = [], []
    for _ in range(10):
        words = [
            rng.choice([str.lower, str.title, str.upper])(w) for w in rng.sample(WORDS, rng.randint(1, 3))
        ]
        prompts.append("a sign that reads " + " and ".join(f"'{w}'" for w in words))
        images.append(render_words(words, 256, rng))
    seen = []
    metrics = ocr_metrics(engine, images, prompts, progress=seen.append)
    assert len(seen) == 10
    assert metrics.f_measure >= 0.9
    assert metrics.accuracy >= 0.7


def test_ocr_reads_the_synthetic_worlds_text_rich_images(engine):
    from components.data.synthetic.textrich import render_textrich, sample_layout, textrich_caption

    rng = random.Random(1)
    layouts = [sample_layout(rng, 256) for _ in range(8)]
    images = [render_textrich(layout).image for layout in layouts]
    prompts = [textrich_caption(layout, rng) for layout in layouts]
    metrics = ocr_metrics(engine, images, prompts)
    assert metrics.f_measure >= 0.9


def test_ocr_reads_nothing_in_noise(engine):
    rng = np.random.default_rng(0)
    noise = [Image.fromarray(rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)) for _ in range(3)]
    metrics = ocr_metrics(engine, noise, ["a sign that reads 'river'"] * 3)
    assert metrics.f_measure < 0.05 and metrics.accuracy == 0.0
