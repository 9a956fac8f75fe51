"""Writers and readers round-trip: what a `write_*` function writes, its reader reads back unchanged.

Also: ground truth beside a dataset is attached to the right records, writers refuse what their
format cannot store, and writes leave no temporary files behind.
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from components.data.formats import (
    cc3m,
    laion_parquet,
    mario,
    mario_eval,
    mmdialog,
    paraimage,
    paraprompts,
    vist,
)
from components.data.formats.groundtruth import load_groundtruth, write_groundtruth
from components.data.formats.laion_parquet import Img2DatasetRow
from components.data.records import CaptionImagePair, PromptRecord, ReadFailure, Story, StoryStep, WordBox


def jpeg(colour: tuple[int, int, int], size: tuple[int, int] = (24, 24)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="JPEG")
    return buffer.getvalue()


def image_at(path: Path, colour: tuple[int, int, int]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(jpeg(colour))
    return path.absolute()


def no_temp_files(folder: Path) -> bool:
    return not [p for p in folder.rglob("*") if p.name.endswith(".tmp")]


def test_cc3m_round_trip_with_groundtruth(tmp_path):
    pairs = [
        CaptionImagePair(
            f"train/{i}", image_at(tmp_path / f"train/{i}.jpg", (10 * i, 0, 0)), f"caption {i} .", "cc3m"
        )
        for i in range(3)
    ]
    write_groundtruth(
        tmp_path, [{"id": "train/1", "image": "train/1.jpg", "scene": {"background": "gray", "objects": []}}]
    )
    cc3m.write_cc3m(tmp_path / "pairs.tsv", pairs)
    back = list(cc3m.read(tmp_path))
    assert [(p.id, p.caption, p.image_path) for p in back] == [(p.id, p.caption, p.image_path) for p in pairs]
    assert [p.groundtruth is not None for p in back] == [False, True, False]
    assert back[1].groundtruth["scene"]["background"] == "gray"
    # A src spelled with '..' gives the same normalised paths, so ground truth still attaches.
    again = list(cc3m.read(tmp_path / "train" / ".." / "pairs.tsv"))
    assert [p.image_path for p in again] == [p.image_path for p in pairs] and again[1].groundtruth is not None
    assert no_temp_files(tmp_path)


def test_writers_refuse_what_the_format_cannot_store(tmp_path):
    inside = image_at(tmp_path / "data/a.jpg", (1, 2, 3))
    outside = image_at(tmp_path / "elsewhere/b.jpg", (3, 2, 1))
    with pytest.raises(ValueError, match="tab or newline"):
        cc3m.write_cc3m(tmp_path / "data/x.tsv", [CaptionImagePair("a", inside, "a\tb", "cc3m")])
    with pytest.raises(ValueError, match="not inside"):
        cc3m.write_cc3m(tmp_path / "data/x.tsv", [CaptionImagePair("b", outside, "fine", "cc3m")])
    with pytest.raises(ValueError, match="beside"):
        mmdialog.write_mmdialog(
            tmp_path / "data/c.jsonl", [Story("1", (StoryStep("hi", outside),), "mmdialog")]
        )
    with pytest.raises(ValueError, match="one prompt per line"):
        mario_eval.write_mario_eval(tmp_path, "Set", ["two\nlines"])
    with pytest.raises(ValueError, match="9 digits"):
        mario.write_mario_sample(tmp_path, "123", jpeg((0, 0, 0)), "c", [], None, {})
    with pytest.raises(ValueError, match="needs image bytes"):
        laion_parquet.write_laion_shard(tmp_path, 0, [Img2DatasetRow("000000000", "c", "u", None)])
    with pytest.raises(ValueError, match="every VIST step has one"):
        vist.write_vist(tmp_path / "data", "train", [Story("s", (StoryStep("no image", None),), "vist")])


def test_paraimage_round_trip_keeps_extra_keys(tmp_path):
    pairs = [
        CaptionImagePair(
            "images/a", image_at(tmp_path / "images/a.jpg", (200, 0, 0)), "A long paragraph.", "paraimage"
        ),
        CaptionImagePair(
            "images/b", image_at(tmp_path / "images/b.jpg", (0, 200, 0)), "", "paraimage", extra={"score": 7}
        ),
    ]
    paraimage.write_paraimage(tmp_path / "paraimage.json", pairs)
    back = list(paraimage.read(tmp_path / "paraimage.json"))
    assert [(p.id, p.image_path, p.caption, p.extra) for p in back] == [
        (p.id, p.image_path, p.caption, p.extra) for p in pairs
    ]


def test_vist_round_trip_with_step_groundtruth(tmp_path):
    stories = []
    for s in ("00002", "00010"):
        steps = tuple(
            StoryStep(
                f"story {s} step {k} .", image_at(tmp_path / f"train_images/{s}{k}.jpg", (k * 40, 0, 0))
            )
            for k in range(5)
        )
        stories.append(Story(s, steps, "vist"))
    vist.write_vist(tmp_path, "train", stories)
    write_groundtruth(
        tmp_path, [{"id": "00010/3", "story_id": "00010", "step": 3, "image": "train_images/000103.jpg"}]
    )
    back = list(vist.read(tmp_path))
    assert [b.id for b in back] == ["00002", "00010"]  # file order kept, not sorted as numbers or strings
    for original, read in zip(stories, back, strict=True):
        assert [(s.text, s.image_path) for s in read.steps] == [
            (s.text, s.image_path) for s in original.steps
        ]
    assert [s.groundtruth is not None for s in back[1].steps] == [False, False, False, True, False]


def test_mmdialog_round_trip_with_text_only_turns(tmp_path):
    folder = tmp_path / "train"
    story = Story(
        "7",
        (
            StoryStep("can you draw a red circle?", None),
            StoryStep("sure, here it is.", image_at(folder / "0000701.jpg", (255, 0, 0))),
            StoryStep("thanks!", None),
        ),
        "mmdialog",
    )
    other = Story("x-1", (StoryStep("a string id", None), StoryStep("ok", None)), "mmdialog")
    path = mmdialog.write_mmdialog(folder / "train_conversations.txt", [story, other])
    assert json.loads(path.read_text().splitlines()[0])["conversation_id"] == 7
    write_groundtruth(
        tmp_path, [{"id": "7/1", "story_id": "7", "step": 1, "image": "train/0000701.jpg", "scene": {}}]
    )
    back = list(mmdialog.read(tmp_path))
    assert [b.id for b in back] == ["7", "x-1"]
    assert [(s.text, s.image_path) for s in back[0].steps] == [(s.text, s.image_path) for s in story.steps]
    assert [s.groundtruth is not None for s in back[0].steps] == [False, True, False]


def test_paraprompts_round_trip(tmp_path):
    prompts = [
        PromptRecord(
            "p1.jpg", 'A paragraph, with commas, "quotes"\nand a newline.', "paraprompts", category="Counting"
        ),
        PromptRecord(
            "p2.jpg",
            "Another one.",
            "paraprompts",
            category="Dense Scenes",
            extra={"prompt_chinese": "另一个"},
        ),
    ]
    paraprompts.write_paraprompts(tmp_path / "ParaPrompts.csv", prompts)
    write_groundtruth(
        tmp_path, [{"id": "p2.jpg", "image": "images/p2.jpg", "scene": {}, "category": "Dense Scenes"}]
    )
    back = list(paraprompts.read(tmp_path))
    # Commas and quotes come back exactly; the quoted line break survives the CSV and is then tidied
    # to a space by the reader, which notes it.
    assert [(p.id, p.prompt, p.category) for p in back] == [
        ("p1.jpg", 'A paragraph, with commas, "quotes" and a newline.', "Counting"),
        ("p2.jpg", "Another one.", "Dense Scenes"),
    ]
    assert back[0].extra["normalised"] == ["whitespace"] and "normalised" not in back[1].extra
    assert back[1].extra["prompt_chinese"] == "另一个"
    assert back[0].groundtruth is None and back[1].groundtruth["category"] == "Dense Scenes"


def test_mario_eval_round_trip(tmp_path):
    prompts = ["a sign that reads 'river'", "a poster with the words 'Stone' and 'TIGER'"]
    mario_eval.write_mario_eval(tmp_path, "WorldEval", prompts)
    write_groundtruth(tmp_path, [{"id": "WorldEval/1", "image": "WorldEval/images/1.jpg", "scene": {}}])
    back = list(mario_eval.read(tmp_path))
    assert [(p.id, p.prompt, p.quoted_words) for p in back] == [
        ("WorldEval/0", prompts[0], ("river",)),
        ("WorldEval/1", prompts[1], ("Stone", "TIGER")),
    ]
    assert back[0].groundtruth is None and back[1].groundtruth["id"] == "WorldEval/1"


def test_mario_round_trip_rescales_to_the_image_and_keeps_charseg(tmp_path):
    image = jpeg((230, 220, 200), size=(96, 64))
    words = [
        WordBox("river", (10.0, 8.0, 50.0, 8.0, 50.0, 20.0, 10.0, 20.0)),
        WordBox("Stone", (30.5, 40.25, 90.0, 40.25, 90.0, 60.0, 30.5, 60.0)),
    ]
    charseg = np.zeros((256, 256), dtype=np.int64)
    charseg[30:60, 20:120] = mario.char_class("r")
    info = {"key": "000000042", "status": "success", "width": 96, "height": 64}
    sample = mario.write_mario_sample(
        tmp_path, "000000042", image, "a sign that reads 'river' and 'Stone'", words, charseg, info
    )
    assert sample == tmp_path / "00000" / "000000042"
    first_line = (sample / "ocr.txt").read_text().splitlines()[0]
    assert first_line == "river 53,64,267,64,267,160,53,160 1.0"  # 512-px frame, integers, as released
    write_groundtruth(
        tmp_path, [{"id": "00000_000000042", "image": "00000/000000042/image.jpg", "scene": {}}]
    )
    (back,) = list(mario.read(tmp_path))
    assert back.id == "00000_000000042" and back.caption == "a sign that reads 'river' and 'Stone'"
    for written, read in zip(words, back.words, strict=True):
        assert read.text == written.text
        # Integer 512-px coordinates: at most half a frame pixel of error, 0.09 image pixels here.
        assert np.allclose(read.quad, written.quad, rtol=0, atol=0.5 * 96 / 512)
    assert np.array_equal(np.load(back.charseg_path), charseg)
    assert back.extra["info"] == info
    assert back.groundtruth is not None


def test_laion_shard_round_trip(tmp_path):
    good = jpeg((0, 0, 250))
    rows = [
        Img2DatasetRow("000000000", "a blue square", "https://example.invalid/0.jpg", good),
        Img2DatasetRow(
            "000000001", "gone", "https://example.invalid/1.jpg", None, "failed_to_download", "timeout"
        ),
    ]
    path = laion_parquet.write_laion_shard(tmp_path, 0, rows)
    table = pq.read_table(path).to_pylist()
    assert table[0]["sha256"] == hashlib.sha256(good).hexdigest() and table[0]["width"] == 24
    assert table[1]["width"] is None and not (tmp_path / "00000/000000001.jpg").exists()
    assert (tmp_path / "00000/000000000.txt").read_text() == "a blue square"
    assert json.loads((tmp_path / "00000_stats.json").read_text())["successes"] == 1
    record, failure = list(laion_parquet.read(tmp_path))
    assert record.id == "000000000" and record.caption == "a blue square"
    assert record.image_path.read_bytes() == good
    assert isinstance(failure, ReadFailure) and failure.ref.endswith("00000.parquet:000000001")
    assert "timeout" in failure.reason
    assert no_temp_files(tmp_path)


def test_malformed_groundtruth_fails_loudly(tmp_path):
    (tmp_path / "groundtruth.jsonl").write_text('{"id": "a"}\n{"id": \n')
    with pytest.raises(ValueError, match="groundtruth.jsonl:2"):
        load_groundtruth(tmp_path)
    assert len(load_groundtruth(tmp_path / "nowhere")) == 0
