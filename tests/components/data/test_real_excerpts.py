"""Readers and validation on excerpts of the sample files the official repositories ship.

tests/fixtures/formats/real/ holds them (sources in tests/fixtures/formats/README.md): MiniGPT-5's
CC3M TSV, VIST JSON and MMDialog conversations, ParaDiffusion's ParaPrompts CSV and TextDiffuser's
MARIO-LAION sample folders, text as published, images re-made. What real data holds that is only
untidy (a box past the image edge, doubled spaces, HTML entities, CRLF) must be kept and counted;
what is unusable (a story photo that is gone) quarantined with a reason.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from components.data.formats import read_corpus
from components.data.records import CaptionImagePair, PromptRecord, ReadFailure, Story, TextRichImage
from components.data.validation import ValidationConfig, validate_records

REAL = Path(__file__).resolve().parents[2] / "fixtures" / "formats" / "real"
CFG = ValidationConfig()


def read(fmt: str, src: Path | None = None) -> dict[str, object]:
    items = list(read_corpus(fmt, src or REAL / fmt))
    assert not [i for i in items if isinstance(i, ReadFailure)], items
    return {item.id: item for item in items}


def test_cc3m_minigpt5_val_tsv():
    records = read("cc3m")
    assert list(records) == ["val/000007775", "val/000009256"]
    first = records["val/000007775"]
    assert isinstance(first, CaptionImagePair)
    assert first.caption == "burning candle on the background of the aquarium with small fish ."
    assert first.image_path == REAL / "cc3m/val/000007775.jpg" and first.extra == {}
    result = validate_records(records.values(), CFG)
    assert (len(result.kept), len(result.quarantined), result.normalised) == (2, 0, 0)


def test_vist_minigpt5_val_story():
    story = read("vist")["40470"]
    assert isinstance(story, Story) and len(story.steps) == 5
    assert story.steps[0].text == "my sister arrived early to help me with the family bar bq ."
    assert story.steps[4].text == "we ended the day shooting off some fireworks ."
    assert [s.image_path.name for s in story.steps] == [f"00000000{i}.jpg" for i in (5, 7, 3, 4, 0)]
    assert story.extra == {"split": "val", "image_ids": ["693397887", "695160730", "694227508", "693397865", "694227468"]}
    assert validate_records([story], CFG).kept[0].record_id == "40470"


def test_vist_story_whose_photo_is_gone_is_quarantined_naming_the_step(tmp_path):
    # Flickr photos behind VIST disappear; the mapping still names them. A story is one record whose
    # steps build on each other, so it is quarantined whole, with the step that lost its photo.
    src = shutil.copytree(REAL / "vist", tmp_path / "vist")
    (src / "val_images/000000003.jpg").unlink()  # image_id 694227508, sequence_index 2
    result = validate_records(read_corpus("vist", src), CFG)
    assert not result.kept
    [verdict] = result.quarantined
    assert verdict.reason_code == "missing_image"
    assert "step 2 of 5: " in verdict.reason and "000000003.jpg" in verdict.reason


def test_mmdialog_minigpt5_conversation_with_text_only_turns():
    conversation = read("mmdialog")["0"]
    assert len(conversation.steps) == 9
    # Four photos, then five replies without media: normal in a dialogue, kept as text-only steps.
    assert [s.image_path is not None for s in conversation.steps] == [True] * 4 + [False] * 5
    assert conversation.steps[1].image_path == REAL / "mmdialog/test/-5632896413199993329.jpg"
    assert conversation.steps[4].text == "Absolutely stunning!! :growing_heart:"
    assert conversation.extra == {"file": "test_conversations.txt"}
    result = validate_records([conversation], CFG)
    assert (len(result.kept), result.normalised) == (1, 0)
    assert result.kept[0].short_side == 48


def test_mmdialog_html_entities_are_unescaped_and_counted(tmp_path):
    # The same file's negative_candidate_texts hold tweets like this one, with "&amp;" as Twitter
    # served it; put one into a turn of the real conversation.
    src = shutil.copytree(REAL / "mmdialog", tmp_path / "mmdialog")
    path = src / "test/test_conversations.txt"
    conversation = json.loads(path.read_text())
    tweet = "I ordered the A5 posters &amp; yellow ribbons, hole punch them so they are attached to give to people"
    conversation["conversation"][4]["turn"][0]["__TEXT__"] = tweet
    path.write_text(json.dumps(conversation) + "\n")
    story = read("mmdialog", src)["0"]
    assert story.steps[4].text.startswith("I ordered the A5 posters & yellow ribbons")
    assert story.extra["normalised"] == ["html_entities"]
    result = validate_records([story], CFG)
    assert result.normalisations() == {"html_entities": 1} and not result.quarantined


def test_paraprompts_csv_with_commas_and_quoted_chinese():
    records = read("paraprompts")
    assert list(records) == [
        "0f04e2fe766b54523b7fe89174c7b2eb.JPEG",
        "84039df99bb4745e7e27c3c714776cd5.JPEG",
        "8df5ebc3614e8dede17430e3c8310ae6.JPEG",
    ]
    first = records["0f04e2fe766b54523b7fe89174c7b2eb.JPEG"]
    assert isinstance(first, PromptRecord) and first.category == "Human"
    assert first.prompt.startswith("A large pot was placed on top of a burning stove. The flames spread")
    assert first.prompt.endswith("the light in the room is soft and dim.")
    assert len(first.prompt.split()) == 204  # ParaPrompts paragraphs run 50-300 words
    # The last row's Prompt_Chinese is quoted because it holds an ASCII comma.
    chinese = records["8df5ebc3614e8dede17430e3c8310ae6.JPEG"].extra["prompt_chinese"]
    assert "广场上有一群人,是上方" in chinese and chinese.endswith("广场上有一群人")
    assert {r.category for r in records.values()} == {"Human", "Others"}
    result = validate_records(records.values(), CFG)
    assert (len(result.kept), result.normalised) == (3, 0)


def test_paraprompts_crlf_and_doubled_quotes_parse_the_same(tmp_path):
    lf = (REAL / "paraprompts/ParaPrompts_400_excerpt.csv").read_bytes()
    extra_rows = b'ab12.JPEG,"A sign reads ""OPEN"", twice,\r\nthen a dog.",Others,\r\nx.JPEG,five,fields,a,b\r\n'
    (tmp_path / "ParaPrompts_crlf.csv").write_bytes(lf.replace(b"\n", b"\r\n") + extra_rows)
    items = list(read_corpus("paraprompts", tmp_path))
    [failure] = [i for i in items if isinstance(i, ReadFailure)]
    assert failure.ref.endswith("ParaPrompts_crlf.csv:7") and "got 5" in failure.reason  # CRLF is one line end
    crlf = {i.id: i for i in items if not isinstance(i, ReadFailure)}
    real = read("paraprompts")
    assert [(r.id, r.prompt, r.category, r.extra) for r in list(crlf.values())[:3]] == [
        (r.id, r.prompt, r.category, r.extra) for r in real.values()
    ]
    quoted = crlf["ab12.JPEG"]
    assert quoted.prompt == 'A sign reads "OPEN", twice, then a dog.'
    assert quoted.extra == {"image": "ab12.JPEG", "prompt_chinese": "", "normalised": ["whitespace"]}


MARIO_IDS = [
    "06269_062690093",
    "06269_062692210",
    "06269_062692530",
    "27197_271975131",
    "27197_271975251",
    "27197_271978467",
]


def test_mario_laion_textdiffuser_examples_are_read_as_published():
    records = read("mario")
    assert list(records) == MARIO_IDS
    tail = records["27197_271975131"]
    assert isinstance(tail, TextRichImage) and tail.caption == "VH-EZT at Busselton Airport Tail shot"
    # The detector's box runs past the 512 frame (x = 532); the reader keeps it as written.
    [word] = tail.words
    assert word.text == "VH-EZT" and max(word.quad[0::2]) == 532.0
    # img2dataset metadata: the download was resized, so width != original_width. Normal, kept.
    assert (tail.extra["info"]["width"], tail.extra["info"]["original_width"]) == (512, 150)
    assert records["06269_062692530"].caption == '"Little Joe - ""A La Guerra Me Llevan"""'
    assert [w.text for w in records["06269_062692210"].words] == ["an", "DOWNSPEAR", "WIN", "Love", "40K", "T", "CHAT"]


def test_mario_laion_box_past_the_edge_is_clipped_and_doubled_space_tidied():
    result = validate_records(read_corpus("mario", REAL / "mario"), CFG)
    assert [v.record_id for v in result.kept] == MARIO_IDS and not result.quarantined
    assert result.normalised == 2 and result.clipped_boxes == 1
    assert result.normalisations() == {"clipped_ocr_box": 1, "whitespace": 1}
    kept = {v.record_id: v for v in result.kept}
    tail = kept["27197_271975131"].record
    assert tail.extra["clipped"] is True
    assert tail.extra["clipped_words"] == [
        {"index": 0, "text": "VH-EZT", "quad": [143.0, 133.0, 501.0, 82.0, 532.0, 301.0, 175.0, 352.0]}
    ]
    assert tail.words[0].quad == (143.0, 133.0, 501.0, 82.0, 512.0, 301.0, 175.0, 352.0)
    assert tail.extra["info"]["original_width"] == 150
    sign = kept["06269_062690093"].record
    assert sign.caption == "Blechschilder MOORE - CARWASH - Best Hand Job In Town"
    assert sign.extra["normalised"] == ["whitespace"] and "clipped" not in sign.extra
    assert kept["27197_271978467"].normalised == ()


def test_mario_boxes_scale_to_an_image_not_resized_to_512(tmp_path):
    # ocr.txt is in the 512x512 frame TextDiffuser resizes images to; an image left at its
    # img2dataset size (info.json: 480x360) gets each axis scaled on its own.
    src = shutil.copytree(REAL / "mario", tmp_path / "mario")
    sample = src / "06269/062692530"
    with Image.open(sample / "image.jpg") as image:
        image.resize((480, 360)).save(sample / "image.jpg", quality=85)
    record = read("mario", src)["06269_062692530"]
    familia = record.words[0]
    # FAMILIA 185,376,186,277,437,283,436,382 starts at the bottom left; reordered from the top left.
    # The scale factors are exact binary fractions, so abs 1e-3 only absorbs a float32 coordinate (3e-5 here).
    assert familia.quad == pytest.approx((186 * 0.9375, 277 * 0.703125, 437 * 0.9375, 283 * 0.703125,
                                          436 * 0.9375, 382 * 0.703125, 185 * 0.9375, 376 * 0.703125), abs=1e-3)
    verdict = validate_records([record], CFG).kept[0]
    assert verdict.normalised == () and verdict.short_side == 360
