import numpy as np
import pytest
from data_files import truncated_jpeg, write_jpeg

from components.data.records import CaptionImagePair, ReadFailure, Story, StoryStep, TextRichImage, WordBox
from components.data.validation import (
    DataQualityError,
    ValidationConfig,
    check_bad_fraction,
    validate_record,
    validate_records,
)

CFG = ValidationConfig(min_short_edge=16, max_caption_words=40)


def pair(tmp_path, name, caption="a red circle at the top", **kw):
    path = kw.pop("path", None) or write_jpeg(tmp_path / f"{name}.jpg", seed=hash(name) % 1000)
    return CaptionImagePair(id=name, image_path=path, caption=caption, source="test", **kw)


def test_good_record_is_kept_with_its_measurements(tmp_path):
    verdict = validate_record(pair(tmp_path, "good"), CFG)
    assert verdict.ok, verdict.reason
    assert verdict.short_side == 32
    assert verdict.words == 6 and verdict.nouns >= 1
    assert len(verdict.image_sha256) == 1 and len(verdict.image_sha256[0]) == 64


@pytest.mark.parametrize(
    "make, code",
    [
        (lambda t: pair(t, "corrupt", path=_write(t / "c.jpg", b"\xff\xd8\xff\xe0 not a jpeg")), "corrupt_image"),
        (lambda t: pair(t, "truncated", path=truncated_jpeg(t / "t.jpg")), "corrupt_image"),
        (lambda t: pair(t, "missing", path=t / "nope.jpg"), "missing_image"),
        (lambda t: pair(t, "empty", caption="   "), "empty_caption"),
        (lambda t: pair(t, "mojibake", caption="caf\ufffd au lait"), "bad_encoding"),
        (lambda t: pair(t, "long", caption="word " * 41), "caption_too_long"),
        (lambda t: pair(t, "small", path=write_jpeg(t / "s.jpg", size=8)), "small_image"),
        (lambda t: ReadFailure(ref="x.jsonl:3", reason="truncated JSON line"), "unreadable"),
    ],
)
def test_bad_records_get_a_reason(tmp_path, make, code):
    verdict = validate_record(make(tmp_path), CFG)
    assert not verdict.ok
    assert verdict.reason_code == code, verdict.reason


def _write(path, data):
    path.write_bytes(data)
    return path


def test_small_image_reason_names_the_setting(tmp_path):
    verdict = validate_record(pair(tmp_path, "small", path=write_jpeg(tmp_path / "s.jpg", size=8)), CFG)
    assert "validation.min_short_edge=16" in verdict.reason


def test_story_checks_every_step(tmp_path):
    good = write_jpeg(tmp_path / "a.jpg", seed=1)
    story = Story("s1", (StoryStep("one", good), StoryStep("two", tmp_path / "gone.jpg")), source="test")
    verdict = validate_record(story, CFG)
    assert verdict.reason_code == "missing_image" and "step 1 of 2: " in verdict.reason
    short = Story("s2", (StoryStep("one", good),), source="test")
    assert validate_record(short, CFG).reason_code == "too_few_steps"
    textless = Story("s3", (StoryStep("", good), StoryStep(" ", good)), source="test")
    assert validate_record(textless, CFG).reason_code == "empty_caption"
    ok = Story("s4", (StoryStep("a red circle", good), StoryStep("", None)), source="test")
    assert validate_record(ok, CFG).ok


def _rich(tmp_path, words, seg=None):
    image = write_jpeg(tmp_path / "t.jpg", size=64)
    return TextRichImage("t", image, "a sign that reads 'river'", tuple(words), "test", charseg_path=seg,
                         extra={"info": {"key": "t"}})


def test_textrich_boxes_and_charseg(tmp_path):
    charseg = tmp_path / "charseg.npy"
    np.save(charseg, np.zeros((256, 256), dtype=np.int64))
    inside = WordBox("river", (4, 4, 30, 4, 30, 14, 4, 14))
    verdict = validate_record(_rich(tmp_path, [inside], charseg), CFG)
    assert verdict.ok and verdict.normalised == () and verdict.record.words == (inside,)
    assert validate_record(_rich(tmp_path, []), CFG).reason_code == "no_words"
    np.save(tmp_path / "bad.npy", np.zeros((10, 10), dtype=np.float32))
    assert validate_record(_rich(tmp_path, [inside], tmp_path / "bad.npy"), CFG).reason_code == "bad_charseg"


def test_a_box_running_past_the_edge_is_clipped_flagged_and_kept(tmp_path):
    inside = WordBox("sign", (4, 4, 30, 4, 30, 14, 4, 14))
    # Rotated text near the right border: two corners past x = 64, one above y = 0.
    past = WordBox("river", (40, 2, 70, -3, 72, 12, 42, 17), confidence=0.5)
    verdict = validate_record(_rich(tmp_path, [inside, past]), CFG)
    assert verdict.ok, verdict.reason
    record = verdict.record
    assert record.words[0] == inside
    assert record.words[1].quad == (40, 2, 64, 0, 64, 12, 42, 17) and record.words[1].confidence == 0.5
    assert all(0 <= v <= 64 for v in record.words[1].quad)
    assert record.extra["clipped"] is True
    assert record.extra["clipped_words"] == [{"index": 1, "text": "river", "quad": [40, 2, 70, -3, 72, 12, 42, 17]}]
    assert record.extra["info"] == {"key": "t"}
    assert verdict.normalised == ("clipped_ocr_box",) and verdict.clipped_boxes == 1
    result = validate_records([_rich(tmp_path, [inside, past])], CFG)
    assert (len(result.kept), result.normalised, result.clipped_boxes) == (1, 1, 1)
    assert result.normalisations() == {"clipped_ocr_box": 1}


@pytest.mark.parametrize(
    "quad, says",
    [
        ((70, 4, 90, 4, 90, 14, 70, 14), "lies outside the 64x64 image"),  # right of the image
        ((-20, -9, -2, -9, -2, -1, -20, -1), "lies outside the 64x64 image"),  # above and left
        ((60, 4, 80, 4, 80, 14, 60, 14), None),  # 4 px of it inside: clipped, kept
        ((64, 4, 80, 4, 80, 14, 64, 14), "lies outside the 64x64 image"),  # touches the edge only
        ((4, 4, 30, 4, 30, 4, 4, 4), "degenerate"),  # a line
        ((4, 4, 4, 4, 4, 4, 4, 4), "degenerate"),  # a point
        ((4, 4, float("nan"), 4, 30, 14, 4, 14), "non-finite"),
        ((4, 4, float("inf"), 4, 30, 14, 4, 14), "non-finite"),
    ],
)
def test_unusable_boxes_are_quarantined(tmp_path, quad, says):
    verdict = validate_record(_rich(tmp_path, [WordBox("sign", (4, 4, 30, 4, 30, 14, 4, 14)), WordBox("x", quad)]), CFG)
    if says is None:
        assert verdict.ok and verdict.record.extra["clipped"], verdict.reason
    else:
        assert verdict.reason_code == "bad_ocr_box" and says in verdict.reason and "'x'" in verdict.reason


def test_normalised_records_are_counted_beside_the_quarantined(tmp_path, pairs):
    tidied = CaptionImagePair("pair-900", pairs[0].image_path.with_name("900.jpg"), "a b", "test",
                              extra={"normalised": ["html_entities", "whitespace"]})
    write_jpeg(tidied.image_path, seed=900)
    result = validate_records([*pairs[:3], tidied, ReadFailure("f:1", "x")], CFG)
    assert (len(result.kept), len(result.quarantined), result.normalised) == (4, 1, 1)
    assert result.normalisations() == {"html_entities": 1, "whitespace": 1}


def test_duplicates_keep_the_first_and_nothing_valid_is_lost(tmp_path, pairs):
    dup = CaptionImagePair("pair-999", pairs[3].image_path, "same picture, other name", "test")
    bad = pair(tmp_path, "zz-empty", caption="")
    result = validate_records([*pairs, dup, bad, ReadFailure("f:1", "bad line")], CFG)
    assert result.total == len(pairs) + 3
    assert {v.record_id for v in result.kept} == {p.id for p in pairs}
    reasons = {v.record_id: v.reason_code for v in result.quarantined}
    assert reasons == {"pair-999": "duplicate_image", "zz-empty": "empty_caption", "f:1": "unreadable"}
    assert "pair-003" in next(v.reason for v in result.quarantined if v.record_id == "pair-999")


def test_bad_fraction_over_threshold_fails_clearly(tmp_path, pairs):
    result = validate_records([*pairs[:5], ReadFailure("f:1", "x"), ReadFailure("f:2", "y")], CFG)
    with pytest.raises(DataQualityError, match=r"2 of 7 records quarantined .*validation.max_bad_fraction=5.0%"):
        check_bad_fraction(result, CFG, "dataset t")
    check_bad_fraction(result, ValidationConfig(max_bad_fraction=0.5), "dataset t")


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="validation.max_bad_fraction"):
        ValidationConfig(max_bad_fraction=2)
