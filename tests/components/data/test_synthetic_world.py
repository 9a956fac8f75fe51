"""The synthetic world end to end: determinism, formats, ground truth against pixels, faults.

One default (tiny-profile) world is generated per module and read back with the real readers.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from components.data.formats import read_corpus
from components.data.formats.mario import char_class
from components.data.records import CaptionImagePair, PromptRecord, ReadFailure, Story, TextRichImage
from components.data.scene import COLOURS, Scene, render_scene
from components.data.synthetic import DATASET_FORMATS, FAULT_KINDS, MANIFEST, WorldConfig, generate_world
from components.data.synthetic.faults import SMALL_IMAGE_SIDE
from components.data.synthetic.scenes import PROMPT_CATEGORIES
from components.data.synthetic.stories import MAX_TURN_WORDS

TINY = WorldConfig(
    seed=3,
    image_size=32,
    textrich_image_size=128,
    laion_short=6,
    paraimage_big=5,
    paraimage_small=3,
    cc3m=5,
    vist=3,
    mmdialog=4,
    mario_laion=4,
    paraprompts=8,
    mario_eval=3,
    laion_shard_size=4,
    fault_fraction=0.2,
)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    out = tmp_path_factory.mktemp("world")
    calls: list[tuple[str, int, int]] = []
    summary = generate_world(WorldConfig(), out, progress=lambda *a: calls.append(a))
    manifest = json.loads((out / MANIFEST).read_text())
    read = {name: list(read_corpus(fmt, out / name)) for name, fmt in DATASET_FORMATS.items()}
    return out, summary, manifest, read, calls


def digests(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def records_of(read: list) -> list:
    return [r for r in read if not isinstance(r, ReadFailure)]


def test_same_seed_gives_byte_identical_files_and_another_seed_differs(tmp_path):
    first = digests(generate_world(TINY, tmp_path / "a").out_dir)
    second = digests(generate_world(TINY, tmp_path / "b").out_dir)
    assert first == second
    assert len(first) > 100 and not any(".partial" in name or name.endswith(".tmp") for name in first)
    other = digests(generate_world(WorldConfig(**{**TINY.__dict__, "seed": 4}), tmp_path / "c").out_dir)
    images = [n for n in first if n.endswith(".jpg")]
    assert sum(first[n] != other.get(n) for n in images) > 0.9 * len(images)
    assert first[MANIFEST] != other[MANIFEST]


def test_manifest_and_summary(world):
    out, summary, manifest, _, calls = world
    cfg = WorldConfig()
    assert manifest["seed"] == cfg.seed and manifest["config"]["image_size"] == cfg.image_size
    assert sorted(manifest["datasets"]) == sorted(DATASET_FORMATS)
    for name, fmt in DATASET_FORMATS.items():
        entry = manifest["datasets"][name]
        assert entry["format"] == fmt and entry["path"] == name
        assert (
            entry["records"]
            == manifest["counts"][name]
            == getattr(cfg, name)
            == summary.datasets[name].records
        )
        assert entry["images"] == sum(1 for _ in (out / name).rglob("*.jpg"))
        assert (out / name / "groundtruth.jsonl").is_file()
        assert (name, getattr(cfg, name), getattr(cfg, name)) in calls
    assert summary.manifest_path == out / MANIFEST and summary.records == sum(manifest["counts"].values())
    assert [f.to_json() for f in summary.injected_faults] == manifest["injected_faults"]


def test_every_fault_kind_is_injected_and_listed(world):
    out, _, manifest, read, _ = world
    faults = manifest["injected_faults"]
    assert {f["kind"] for f in faults} == set(FAULT_KINDS)
    assert {f["dataset"] for f in faults} <= {
        "laion_short",
        "paraimage_big",
        "cc3m",
        "vist",
        "mmdialog",
        "mario_laion",
    }
    for fault in faults:
        folder = out / fault["dataset"]
        path = folder / fault["ref"].split(":")[0].split("[")[0]
        kind = fault["kind"]
        if kind == "corrupt_jpeg":
            with pytest.raises(OSError), Image.open(path) as image:
                image.load()
        elif kind == "missing_image":
            assert not path.exists()
        elif kind == "small_image":
            assert Image.open(path).size == (SMALL_IMAGE_SIDE, SMALL_IMAGE_SIDE)
        elif kind == "duplicate_image":
            source = fault["detail"].removeprefix("byte copy of ")
            assert path.read_bytes() == (folder / source).read_bytes() and path != folder / source
        failures = [r for r in read[fault["dataset"]] if isinstance(r, ReadFailure)]
        if fault["record_id"] is None:
            # The reader cannot read it: exactly one ReadFailure points at the faulty place.
            assert [f for f in failures if f.ref.endswith(fault["ref"])], fault
        else:
            (record,) = [r for r in records_of(read[fault["dataset"]]) if r.id == fault["record_id"]]
            if kind == "empty_caption":
                assert record.caption == ""
    # Nothing else fails to read: every ReadFailure is an injected fault.
    listed = [f["ref"] for f in faults if f["record_id"] is None]
    for name, items in read.items():
        for failure in (r for r in items if isinstance(r, ReadFailure)):
            assert any(failure.ref.endswith(ref) for ref in listed), (name, failure)


def test_readers_attach_groundtruth_to_every_record(world):
    _, _, _, read, _ = world
    for name, items in read.items():
        for record in records_of(items):
            if isinstance(record, Story):
                assert all(step.groundtruth is not None for step in record.steps), name
                assert [s.groundtruth["step"] for s in record.steps] == list(range(len(record.steps)))
            else:
                assert record.groundtruth is not None and record.groundtruth["id"] == record.id, name


def object_colours_match(image_path: Path, scene: dict) -> bool:
    with Image.open(image_path) as image:
        pixels = np.asarray(image.convert("RGB"), dtype=int)  # (H, W, 3)
    side = pixels.shape[0]
    for obj in Scene.from_json(scene).objects:
        x, y = min(int(obj.x * side), side - 1), min(int(obj.y * side), side - 1)
        if np.abs(pixels[y, x] - np.array(COLOURS[obj.colour])).max() > 40:
            return False
    return True


def test_groundtruth_matches_the_rendered_pixels(world):
    _, _, _, read, _ = world
    checked = 0
    for name in ("laion_short", "paraimage_big", "paraimage_small", "cc3m", "vist", "mmdialog"):
        for record in records_of(read[name]):
            steps = record.steps if isinstance(record, Story) else [record]
            for step in steps:
                gt, path = step.groundtruth, step.image_path
                if path is None or gt.get("fault") or not path.exists():
                    continue
                assert object_colours_match(path, gt["scene"]), (name, path)
                checked += 1
    assert checked > 300


def test_captions_describe_the_scene_within_their_lengths(world):
    _, _, _, read, _ = world
    for name, low, high in (
        ("laion_short", 6, 15),
        ("paraimage_big", 50, 300),
        ("paraimage_small", 50, 300),
        ("cc3m", 6, 60),
    ):
        for record in records_of(read[name]):
            if record.groundtruth.get("fault") == "empty_caption":
                continue
            assert low <= len(record.caption.split()) <= high, (name, record.caption)
            for obj in record.groundtruth["scene"]["objects"]:
                assert obj["colour"] in record.caption.lower() and obj["shape"] in record.caption.lower()
    for record in records_of(read["paraprompts"]):
        assert isinstance(record, PromptRecord) and 50 <= len(record.prompt.split()) <= 300
    categories = [r.category for r in records_of(read["paraprompts"])]
    assert (
        sorted(set(categories)) == sorted(PROMPT_CATEGORIES)
        and len(set(map(categories.count, categories))) == 1
    )


def test_vist_stories_evolve_step_by_step(world):
    _, _, _, read, _ = world
    stories = records_of(read["vist"])
    assert stories and all(len(s.steps) == 5 for s in stories)
    for story in stories:
        events = [step.groundtruth["event"] for step in story.steps]
        assert events[0] == {"type": "start"}
        assert {e["type"] for e in events[1:]} <= {"appear", "move", "recolour", "resize", "disappear"}
        for before, after, event, step in zip(
            story.steps, story.steps[1:], events[1:], story.steps[1:], strict=False
        ):
            assert before.groundtruth["scene"] != after.groundtruth["scene"]
            if event["type"] in ("move", "recolour", "resize"):
                assert (
                    f"from {event['from']} to {event['to']}" in step.text
                    or f"from the {event['from']}" in step.text
                )


def test_mmdialog_alternates_speakers_with_short_turns(world):
    _, _, _, read, _ = world
    for dialogue in records_of(read["mmdialog"]):
        speakers = [step.groundtruth["speaker"] for step in dialogue.steps]
        assert speakers == ["user", "assistant"] * (len(speakers) // 2) and len(speakers) in (4, 6)
        assert all(len(step.text.split()) <= MAX_TURN_WORDS for step in dialogue.steps)
        assert any(step.image_path is not None for step in dialogue.steps)


def test_mario_boxes_contain_the_drawn_text_and_charseg(world):
    _, _, _, read, _ = world
    samples = [r for r in records_of(read["mario_laion"]) if not r.groundtruth.get("fault")]
    assert samples
    for sample in samples:
        assert isinstance(sample, TextRichImage)
        gt = sample.groundtruth
        quoted = [w.strip("'") for w in sample.caption.split("'")[1::2]]
        assert " ".join(quoted).split() == [w["text"] for w in gt["words"]] == [w.text for w in sample.words]
        # ocr.txt (512-px frame, integers) read back equals the ground-truth boxes within rounding.
        for word, truth in zip(sample.words, gt["words"], strict=True):
            assert np.allclose(word.quad, truth["quad"], rtol=0, atol=0.5 * 256 / 512)  # half a frame pixel
        # Every pixel that differs from the text-free background lies inside a word box.
        layout = gt["layout"]
        background = render_scene(
            Scene.from_json(layout["scene"]), 256, supersample=2 if gt["scene"]["objects"] else 1
        )
        with Image.open(sample.image_path) as image:
            drawn = np.asarray(image.convert("RGB"), dtype=int)
        ink = (
            np.abs(drawn - np.asarray(background, dtype=int)).max(axis=2) > 60
        )  # (256, 256), JPEG noise is smaller
        inside = np.zeros_like(ink)
        for x0, y0, x1, y1 in (w["box"] for w in gt["words"]):
            inside[int(y0) : int(np.ceil(y1)), int(x0) : int(np.ceil(x1))] = True
        assert ink.any() and not (ink & ~inside).any()
        charseg = np.load(sample.charseg_path)
        assert charseg.shape == (256, 256) and charseg.dtype == np.int64
        assert not ((charseg > 0) & ~inside).any()
        assert set(np.unique(charseg)) - {0} == {char_class(c) for w in gt["words"] for c in w["text"]}


def test_mario_eval_prompts_quote_the_reference_words(world):
    out, _, _, read, _ = world
    for prompt in records_of(read["mario_eval"]):
        assert prompt.quoted_words == tuple(w["text"] for w in prompt.groundtruth["words"])
        assert Path(prompt.extra["image"]).is_file()
        assert Path(prompt.extra["image"]) == out / "mario_eval" / prompt.groundtruth["image"]


def test_pairs_have_images_of_the_configured_size(world):
    _, _, _, read, _ = world
    for name in ("laion_short", "cc3m", "paraimage_big"):
        pair = next(r for r in records_of(read[name]) if not r.groundtruth.get("fault"))
        assert isinstance(pair, CaptionImagePair) and Image.open(pair.image_path).size == (64, 64)


def test_regenerating_replaces_datasets_and_drops_zero_count_ones(tmp_path):
    generate_world(TINY, tmp_path)
    (tmp_path / "cc3m" / "stale.txt").write_text("left over")
    summary = generate_world(
        WorldConfig(**{**TINY.__dict__, "mario_laion": 0, "fault_fraction": 0.0}), tmp_path
    )
    assert not (tmp_path / "mario_laion").exists() and "mario_laion" not in summary.datasets
    assert not (tmp_path / "cc3m" / "stale.txt").exists()
    assert summary.injected_faults == ()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("image_size", 8, "world.image_size"),
        ("textrich_image_size", 32, "world.textrich_image_size"),
        ("cc3m", -1, "world.cc3m"),
        ("fault_fraction", 0.9, "world.fault_fraction"),
        ("laion_shard_size", 0, "world.laion_shard_size"),
    ],
)
def test_config_errors_name_the_field(field, value, message):
    with pytest.raises(ValueError, match=message):
        WorldConfig(**{field: value})


def test_only_injected_duplicates_share_image_bytes(world, tmp_path):
    out, _, manifest, _, _ = world
    faulty = {(f["dataset"], f["ref"]) for f in manifest["injected_faults"]}
    for name in ("laion_short", "paraimage_big", "paraimage_small", "cc3m", "mario_laion"):
        clean = [
            p
            for p in sorted((out / name).rglob("*.jpg"))
            if (name, p.relative_to(out / name).as_posix()) not in faulty
        ]
        assert len({hashlib.sha256(p.read_bytes()).digest() for p in clean}) == len(clean), name
    # ParaImage-Small's centred, unjittered scenes repeat often in a large set: generation must resample them.
    only_small = {name: 0 for name in DATASET_FORMATS} | {"paraimage_small": 150}
    summary = generate_world(WorldConfig(image_size=16, fault_fraction=0.0, **only_small), tmp_path)
    images = sorted((tmp_path / "paraimage_small" / "images").glob("*.jpg"))
    assert summary.datasets["paraimage_small"].images == len(images) == 150
    assert len({hashlib.sha256(p.read_bytes()).digest() for p in images}) == 150
