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
    assert validate_record(story, CFG).reason_code == "missing_image"
    short = Story("s2", (StoryStep("one", good),), source="test")
    assert validate_record(short, CFG).reason_code == "too_few_steps"
    textless = Story("s3", (StoryStep("", good), StoryStep(" ", good)), source="test")
    assert validate_record(textless, CFG).reason_code == "empty_caption"
    ok = Story("s4", (StoryStep("a red circle", good), StoryStep("", None)), source="test")
    assert validate_record(ok, CFG).ok


def test_textrich_boxes_and_charseg(tmp_path):
    image = write_jpeg(tmp_path / "t.jpg", size=64)
    charseg = tmp_path / "charseg.npy"
    np.save(charseg, np.zeros((256, 256), dtype=np.int64))
    inside = WordBox("river", (4, 4, 30, 4, 30, 14, 4, 14))
    outside = WordBox("river", (4, 4, 300, 4, 300, 14, 4, 14))

    def rich(words, seg=charseg):
        return TextRichImage("t", image, "a sign that reads 'river'", words, "test", charseg_path=seg)

    assert validate_record(rich((inside,)), CFG).ok
    assert validate_record(rich((outside,)), CFG).reason_code == "bad_ocr_box"
    assert validate_record(rich(()), CFG).reason_code == "no_words"
    np.save(tmp_path / "bad.npy", np.zeros((10, 10), dtype=np.float32))
    assert validate_record(rich((inside,), tmp_path / "bad.npy"), CFG).reason_code == "bad_charseg"


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
