"""What the synthetic world says and draws, checked over many random scenes against their ground truth."""

from __future__ import annotations

import random

import numpy as np
import pytest

from components.data.formats.mario import char_class
from components.data.formats.mario_eval import quoted_words
from components.data.scene import POSITIONS, SIZES, render_scene, sample_scene
from components.data.synthetic.language import WHERE, noun_phrase, paragraph, short_caption, word_count
from components.data.synthetic.scenes import PROMPT_CATEGORIES, category_scene, clean_scene, visible_colours
from components.data.synthetic.stories import (
    MAX_TURN_WORDS,
    apply_edit,
    sample_dialogue,
    sample_story,
    start_scene,
)
from components.data.synthetic.textrich import render_textrich, sample_layout, textrich_caption


def test_paragraphs_stay_within_50_to_300_words_and_name_every_object():
    rng = random.Random(0)
    scenes = [(sample_scene(rng, 1, 6), False) for _ in range(300)]
    scenes += [(clean_scene(rng), True) for _ in range(100)]
    scenes += [(category_scene(rng, c), True) for c in PROMPT_CATEGORIES for _ in range(25)]
    for scene, precise in scenes:
        text = paragraph(scene, rng, precise=precise)
        assert 50 <= word_count(text) <= 300, text
        for obj in scene.objects:
            assert noun_phrase(obj) in text.lower(), (obj, text)
            if precise:
                assert obj.size in text and obj.colour in text


def test_paragraph_relations_are_true_of_the_scene():
    rng = random.Random(1)
    for _ in range(200):
        scene = sample_scene(rng, 2, 2)
        a, b = scene.objects
        text = paragraph(scene, rng, precise=True)
        ref_a, ref_b = f"the {a.colour} {a.shape}", f"the {b.colour} {b.shape}"
        if (a.colour, a.shape) == (b.colour, b.shape):
            continue
        (col_a, row_a), (col_b, row_b) = POSITIONS[a.position], POSITIONS[b.position]
        lower = text.lower()
        if col_a < col_b:
            assert (
                f"{ref_a} is to the left of {ref_b}" in lower
                or f"{ref_b} is to the right of {ref_a}" in lower
                or f"{ref_a} sits further left" in lower
            )
        if col_a == col_b:
            for ref in (ref_a, ref_b):
                assert f"to the left of {ref}" not in lower and f"to the right of {ref}" not in lower
            assert "sits further" not in lower
        if row_a > row_b:
            assert (
                f"{ref_a} is below {ref_b}" in lower
                or f"{ref_b} is above {ref_a}" in lower
                or f"{ref_a} sits lower" in lower
            )


def test_short_captions_name_colour_shape_and_place():
    rng = random.Random(2)
    for _ in range(300):
        scene = sample_scene(rng, 1, 2)
        caption = short_caption(scene, rng)
        assert 8 <= word_count(caption) <= 15, caption
        for obj in scene.objects:
            assert f"{obj.colour} {obj.shape} {WHERE[obj.position]}" in caption


def test_story_edits_change_exactly_what_the_narration_says():
    rng = random.Random(3)
    for _ in range(100):
        scene = start_scene(rng)
        for edit in ("appear", "move", "recolour", "resize", "disappear"):
            if edit == "disappear" and len(scene.objects) < 2:
                continue
            after, event, clause = apply_edit(rng, scene, edit)
            if edit == "appear":
                assert (
                    len(after.objects) == len(scene.objects) + 1
                    and WHERE[after.objects[-1].position] in clause
                )
            elif edit == "disappear":
                assert len(after.objects) == len(scene.objects) - 1 and event["was"] in clause
            else:
                before_obj, after_obj = scene.objects[event["object"]], after.objects[event["object"]]
                field = {"move": "position", "recolour": "colour", "resize": "size"}[edit]
                assert getattr(before_obj, field) == event["from"] != event["to"] == getattr(after_obj, field)
                assert f"{event['from']} to" in clause and event["to"] in clause
                if edit == "resize":
                    assert after_obj.radius == SIZES[event["to"]]
                if edit == "recolour":
                    assert event["to"] in visible_colours(scene.background)
            assert len({o.position for o in after.objects}) == len(after.objects)  # cells stay distinct
            scene = after


def test_story_narrations_describe_the_current_scene():
    rng = random.Random(4)
    for _ in range(50):
        frames = sample_story(rng, 5)
        assert len(frames) == 5 and frames[0].event == {"type": "start"}
        for frame in frames:
            assert frame.narration == frame.narration.lower() and frame.narration.endswith(" .")
            for obj in frame.scene.objects:
                assert f"{noun_phrase(obj)} {WHERE[obj.position]}" in frame.narration


def test_dialogue_turns_fit_minigpt5_and_images_show_the_scene():
    rng = random.Random(5)
    for _ in range(200):
        turns = sample_dialogue(rng)
        assert [t.speaker for t in turns] == ["user", "assistant"] * (len(turns) // 2)
        assert all(word_count(t.text) <= MAX_TURN_WORDS for t in turns)
        assert any(t.has_image for t in turns)
        first = turns[0].scene.objects[0]
        assert f"{first.colour} {first.shape}" in (turns[0].text + turns[1].text)


def test_textrich_boxes_hold_all_ink_and_charseg_marks_the_characters():
    rng = random.Random(6)
    for size in (128, 256, 384):
        for _ in range(6):
            layout = sample_layout(rng, size)
            rendered = render_textrich(layout)
            caption = textrich_caption(layout, rng)
            assert list(quoted_words(caption)) == [w.text for w in layout.words]
            assert [w.text for w in rendered.words] == [w.text for w in layout.words]
            background = render_scene(layout.scene, size, supersample=2 if layout.scene.objects else 1)
            ink = (
                np.abs(np.asarray(rendered.image, dtype=int) - np.asarray(background, dtype=int)).max(axis=2)
                > 0
            )
            inside = np.zeros_like(ink)
            for word in rendered.words:
                x0, y0, x1, y1 = (int(v) for v in (word.quad[0], word.quad[1], word.quad[4], word.quad[5]))
                inside[y0:y1, x0:x1] = True
            assert ink.any() and not (ink & ~inside).any()
            classes = set(np.unique(rendered.charseg)) - {0}
            assert classes == {char_class(c) for w in layout.words for c in w.text}
            assert rendered.charseg.shape == (256, 256) and rendered.charseg.dtype == np.int64


def test_ocr_reads_the_rendered_words():
    """The words must be readable: rapidocr (real PP-OCRv4 weights from its wheel) reads them back."""
    rapidocr = pytest.importorskip("rapidocr_onnxruntime")
    engine = rapidocr.RapidOCR()
    rng = random.Random(7)
    expected, found = 0, 0
    for _ in range(3):
        layout = sample_layout(rng, 256)
        result, _ = engine(np.asarray(render_textrich(layout).image))
        read = [text.lower() for _, text, _ in (result or [])]
        for word in layout.words:
            expected += 1
            found += word.text.lower() in read
    assert found >= 0.75 * expected, (found, expected)
