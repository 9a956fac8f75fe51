"""Readers on the committed fixtures (tests/fixtures/formats, described in its README.md).

Each fixture mixes good records with bad input (corrupt JPEG, truncated JSON line, missing image
file, empty caption, wrong encoding, duplicate image, malformed fields); a reader must yield a
record where validation should decide and a ReadFailure naming the place and the problem where
the content cannot be read, and never raise.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from components.data.formats import FORMATS, read_corpus
from components.data.formats.mario import ALPHABET, char_class, clockwise_from_top_left
from components.data.formats.mario_eval import quoted_words
from components.data.records import CaptionImagePair, PromptRecord, ReadFailure, Story, TextRichImage

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "formats"


def split(fmt: str) -> tuple[dict[str, object], dict[str, str]]:
    """Records by id and failures (ref relative to the fixture folder -> reason)."""
    records, failures = {}, {}
    for item in read_corpus(fmt, FIXTURES / fmt):
        if isinstance(item, ReadFailure):
            failures[item.ref.split(f"formats/{fmt}/", 1)[1]] = item.reason
        else:
            assert item.id not in records, f"duplicate id {item.id}"
            records[item.id] = item
    return records, failures


def test_every_format_has_a_fixture_and_no_record_has_groundtruth():
    # real/ holds excerpts of the official repositories' sample files (test_real_excerpts.py).
    assert sorted(p.name for p in FIXTURES.iterdir() if p.is_dir() and p.name != "real") == sorted(FORMATS)
    for fmt in FORMATS:
        records, failures = split(fmt)
        assert records and failures, fmt
        for record in records.values():
            steps = record.steps if isinstance(record, Story) else [record]
            assert all(s.groundtruth is None for s in steps), fmt


def test_cc3m():
    records, failures = split("cc3m")
    assert list(records) == [f"val/00000000{i}" for i in range(1, 8)]
    first = records["val/000000001"]
    assert isinstance(first, CaptionImagePair)
    assert first.caption == "a red circle on a white background ."
    assert first.image_path == FIXTURES / "cc3m/val/000000001.jpg" and first.image_path.is_absolute()
    assert records["val/000000003"].caption == ""
    assert not records["val/000000005"].image_path.exists()
    assert records["val/000000006"].image_path.read_bytes() == first.image_path.read_bytes()
    assert set(failures) == {"cc3m_fixture.tsv:9", "cc3m_fixture.tsv:10", "cc3m_fixture.tsv:11"}
    assert "not valid UTF-8" in failures["cc3m_fixture.tsv:9"] and "0xe9" in failures["cc3m_fixture.tsv:9"]
    assert "got 3" in failures["cc3m_fixture.tsv:10"]
    assert "image_path" in failures["cc3m_fixture.tsv:11"]


def test_vist_orders_steps_and_resolves_the_mapping():
    records, failures = split("vist")
    assert list(records) == ["s1", "s2", "s3"]
    s1 = records["s1"]
    assert [s.text for s in s1.steps] == [
        "we started with a red circle .",
        "a square appeared .",
        "the circle moved .",
        "the square turned blue .",
        "the end .",
    ]
    assert [s.image_path.name for s in s1.steps] == [f"10{i}.jpg" for i in range(5)]
    assert s1.extra == {"split": "train", "image_ids": ["100", "101", "102", "103", "104"]}
    assert not records["s2"].steps[1].image_path.exists()
    assert "not in the image mapping" in failures["train_cleaned.json:s4"]
    assert "caption" in failures["train_cleaned.json:s5"]
    assert "duplicate sequence_index" in failures["train_cleaned.json:s6"]
    assert "val_image_mapping.json" in failures["val_cleaned.json"]


def test_vist_sis_groups_sentences_by_story():
    records, failures = split("vist-sis")
    assert list(records) == ["70", "71"]
    assert [s.text for s in records["70"].steps] == [
        "it started with a red circle .",
        "then a green square appeared .",
        "finally everything turned blue .",
    ]
    assert [s.image_path.name for s in records["70"].steps] == ["501.jpg", "502.png", "503.jpg"]
    assert all(s.image_path.exists() for s in records["70"].steps)
    assert records["71"].steps[1].image_path == FIXTURES / "vist-sis/images/train/602.jpg"
    assert "text" in failures["train.story-in-sequence.json:72"]
    assert "story_id" in failures["train.story-in-sequence.json:annotations[5]"]


def test_mmdialog():
    records, failures = split("mmdialog")
    assert list(records) == ["0", "1"]
    steps = records["0"].steps
    assert [s.text for s in steps] == [
        "show me a red circle please",
        "here is a green square",
        "thanks, lovely!",
    ]
    assert [s.image_path and s.image_path.name for s in steps] == ["-1001.jpg", "1002.jpg", None]
    assert not records["1"].steps[1].image_path.exists()
    prefix = "test/test_conversations.txt"
    assert set(failures) == {f"{prefix}:3", f"{prefix}:5", f"{prefix}:6", f"{prefix}:7"}
    assert "truncated" in failures[f"{prefix}:3"]
    assert "UTF-8" in failures[f"{prefix}:5"]
    assert "2 images" in failures[f"{prefix}:7"]


def test_paraprompts_keeps_categories_and_chinese():
    records, failures = split("paraprompts")
    assert list(records) == ["a1.JPEG", "a2.JPEG", "a3.JPEG"]
    a1 = records["a1.JPEG"]
    assert isinstance(a1, PromptRecord) and a1.category == "Colour Binding" and a1.quoted_words == ()
    assert a1.extra == {"image": "a1.JPEG", "prompt_chinese": "一个红色的圆"}
    # The quoted prompt spans two lines in the file; the line break is tidied to a space and noted.
    assert records["a2.JPEG"].prompt == "A paragraph that spans two lines, with a comma inside the quotes."
    assert records["a2.JPEG"].extra["normalised"] == ["whitespace"]
    assert records["a3.JPEG"].prompt == ""
    assert "got 5" in failures["ParaPrompts_fixture.csv:6"]
    assert "Image" in failures["ParaPrompts_fixture.csv:7"]
    assert "UTF-8" in failures["ParaPrompts_fixture.csv:8"]


def test_paraimage():
    records, failures = split("paraimage")
    assert list(records) == [f"images/p{i}" for i in range(1, 7)]
    assert records["images/p1"].extra == {"aesthetic": 6.5}
    assert len(records["images/p1"].caption.split()) == 4 * 17
    assert records["images/p3"].caption == ""
    assert "caption" in failures["paraimage.json[6]"]
    assert "object" in failures["paraimage.json[7]"]
    assert "string" in failures["paraimage.json[8]"]


def test_mario_rescales_and_orders_quads():
    records, failures = split("mario")
    assert list(records) == [f"00001_0000100{n:02d}" for n in (0, 2, 3, 6, 7, 10)]
    good = records["00001_000010000"]
    assert isinstance(good, TextRichImage)
    assert good.caption == "a shop sign that reads 'OPEN' and 'Daily'"
    assert good.image_path == FIXTURES / "mario/00001/000010000/image.jpg"
    assert good.charseg_path is None
    # 512-px frame over a 64x48 image: x * 64/512, y * 48/512; bottom-left start rotated to top-left.
    assert [w.text for w in good.words] == ["OPEN", "Daily"]
    assert good.words[0].quad == (8.0, 12.0, 32.0, 12.0, 32.0, 24.0, 8.0, 24.0)
    assert good.words[1].quad == (36.0, 36.0, 60.0, 36.0, 60.0, 42.0, 36.0, 42.0)
    assert good.words[0].confidence == pytest.approx(0.99)  # parsed from '0.99': a float32 trip at most (6e-8)
    assert good.extra["info"]["key"] == "000010000"
    # Missing and corrupt images: the size comes from info.json (40x40 and 32x32).
    assert records["00001_000010002"].words[0].quad == (0.0, 0.0, 20.0, 0.0, 20.0, 20.0, 0.0, 20.0)
    assert records["00001_000010003"].words[0].quad[2] == 16.0
    assert records["00001_000010006"].caption == ""
    assert np.load(records["00001_000010010"].charseg_path).shape == (16, 16)
    assert "UTF-8" in failures["00001/000010001/caption.txt"]
    assert "WORD x1" in failures["00001/000010004/ocr.txt:1"]
    assert "ocr.txt" in failures["00001/000010005"]
    assert "integer" in failures["00001/000010008/charseg.npy"]
    assert "info.json" in failures["00001/000010009"]


def test_mario_eval_extracts_quoted_words_as_written():
    records, failures = split("mario-eval")
    assert list(records) == [
        "DrawBenchText/0",
        "DrawBenchText/1",
        "DrawBenchText/2",
        "DrawBenchText/3",
        "LAIONEval4000/0",
        "LAIONEval4000/1",
    ]
    assert records["DrawBenchText/0"].quoted_words == ("Hello", "World")
    assert records["DrawBenchText/1"].quoted_words == ("OPEN", "late")
    assert records["DrawBenchText/2"].prompt == ""
    assert records["DrawBenchText/3"].quoted_words == ()
    assert records["DrawBenchText/0"].category == "DrawBenchText" and records["DrawBenchText/0"].extra == {}
    assert records["LAIONEval4000/0"].extra["image"] == str(
        FIXTURES / "mario-eval/LAIONEval4000/images/0.jpg"
    )
    assert not Path(records["LAIONEval4000/1"].extra["image"]).exists()
    assert "UTF-8" in failures["DrawBenchText/DrawBenchText.txt:5"]
    # One subset folder is a valid src on its own.
    subset = [r.id for r in read_corpus("mario-eval", FIXTURES / "mario-eval/LAIONEval4000")]
    assert subset == ["LAIONEval4000/0", "LAIONEval4000/1"]


def test_laion_parquet():
    records, failures = split("laion-parquet")
    assert list(records) == ["000000000", "000000001", "000000003", "000000004", "000000005", "000000006"]
    first = records["000000000"]
    assert first.caption == "a red circle"
    assert first.image_path == FIXTURES / "laion-parquet/00000/000000000.jpg"
    assert first.extra == {
        "url": "https://example.invalid/000000000.jpg",
        "width": 32,
        "height": 32,
        "similarity": 0.3,
    }
    assert records["000000005"].caption == ""
    assert (
        "failed_to_download" in failures["00000.parquet:000000002"]
        and "404" in failures["00000.parquet:000000002"]
    )
    assert "cannot be read" in failures["00001.parquet"]
    assert "caption" in failures["00002.parquet"]


def test_bad_src_raises_file_not_found_naming_what_belongs_there(tmp_path):
    for fmt in FORMATS:
        with pytest.raises(FileNotFoundError, match=str(tmp_path / "absent")):
            read_corpus(fmt, tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    for fmt in FORMATS:
        with pytest.raises(FileNotFoundError, match="expected"):
            read_corpus(fmt, tmp_path / "empty")
    (tmp_path / "two").mkdir()
    (tmp_path / "two/a.tsv").write_text("caption\timage_path\n")
    (tmp_path / "two/b.tsv").write_text("caption\timage_path\n")
    with pytest.raises(FileNotFoundError, match=r"exactly one \*\.tsv.*a\.tsv, b\.tsv"):
        read_corpus("cc3m", tmp_path / "two")


def test_unknown_format_lists_the_valid_ones():
    with pytest.raises(ValueError, match="unknown data format 'coco'.*cc3m, vist, vist-sis, mmdialog"):
        read_corpus("coco", FIXTURES)


def test_quad_normalisation_and_charseg_alphabet():
    # Anticlockwise from the bottom right becomes clockwise from the top left.
    assert clockwise_from_top_left([(10, 5), (10, 0), (0, 0), (0, 5)]) == (0, 0, 10, 0, 10, 5, 0, 5)
    assert len(ALPHABET) == 95 and char_class("0") == 1 and char_class("a") == 11 and char_class("A") == 37
    assert char_class(" ") == 95 and char_class("é") == 0
    assert quoted_words("a sign that reads 'Hello World' and 'OK'") == ("Hello", "World", "OK")
