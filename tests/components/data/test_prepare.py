import json

import pytest
from data_files import write_jpeg
from torch.utils.data import DataLoader

from components.data.prepare import (
    ShardConfig,
    SplitConfig,
    assign_split,
    prepare_dataset,
    read_validated,
    validate_corpus,
)
from components.data.records import CaptionImagePair, PromptRecord, ReadFailure
from components.data.shards import decode_json, iter_shard, list_shards, split_texts
from components.data.training_data import ShardDataset
from components.data.validation import DataQualityError, ValidationConfig

SPLIT = SplitConfig(seed=1, val_fraction=0.2, test_fraction=0.2)


def corpus(pairs, tmp_path):
    bad = CaptionImagePair("pair-900", tmp_path / "images" / "missing.jpg", "a caption", "test")
    return [*pairs, bad, ReadFailure("captions.tsv:7", "line has 1 column, expected 2", raw="oops")]


def test_validate_then_prepare_writes_everything(pairs, tmp_path):
    src = tmp_path / "images"
    validated, prepared = tmp_path / "validated", tmp_path / "prepared"
    summary = validate_corpus(corpus(pairs, tmp_path), validated, dataset="t", fmt="test", source=src,
                              cfg=ValidationConfig(max_bad_fraction=0.1))
    assert (summary.read, summary.kept, summary.quarantined) == (32, 30, 2)
    quarantine = [json.loads(line) for line in (validated / "quarantine.jsonl").read_text().splitlines()]
    assert {q["ref"]: q["reason"].split(":")[0] for q in quarantine} == {
        "captions.tsv:7": "unreadable", "pair-900": "missing_image"}
    assert quarantine[0]["raw"] == "oops"
    # records.jsonl paths are relative to the corpus root: the output does not depend on where it lies
    first = json.loads((validated / "records.jsonl").read_text().splitlines()[0])
    assert first["record"]["image_path"] == "000.jpg"

    result = prepare_dataset(validated, prepared, dataset="t", split_cfg=SPLIT, shard_cfg=ShardConfig(samples_per_shard=4))
    assert sum(result.counts.values()) == 30
    assert set(result.counts) == {"train", "val", "test"}
    manifest = json.loads((prepared / "manifest.json").read_text())
    stats = json.loads((prepared / "stats.json").read_text())
    # avg_words: a float64 mean of 30 word counts, exact up to 1e-15, under approx's default rel 1e-6
    assert stats["all"] == {"count": 30, "avg_short_side": 32.0, "avg_words": pytest.approx(10.0), "avg_nouns": stats["all"]["avg_nouns"]}
    assert stats["quarantined"] == 2 and stats["quarantine_reasons"] == {"missing_image": 1, "unreadable": 1}
    for split, entry in manifest["splits"].items():
        assert sum(s["count"] for s in entry["shards"]) == result.counts[split]
        sizes = [len(list(iter_shard(prepared / shard["file"]))) for shard in entry["shards"]]
        assert sizes[:-1] == [4] * (len(sizes) - 1) and 1 <= sizes[-1] <= 4

    # every kept sample is in exactly one shard, with its image bytes intact
    seen = {}
    for split in result.counts:
        for shard in list_shards(prepared, split):
            for sample in iter_shard(shard):
                meta = json.loads(sample["json"])
                seen[meta["id"]] = (split, sample["jpg"])
                assert assign_split(meta["id"], SPLIT) == split
    by_id = {p.id: p for p in pairs}
    assert set(seen) == set(by_id)
    assert all(seen[i][1] == by_id[i].image_path.read_bytes() for i in seen)
    assert len(list(split_texts(prepared, "train"))) == result.counts["train"]


def test_prepare_is_deterministic(pairs, tmp_path):
    validate_corpus(pairs, tmp_path / "v", dataset="t", fmt="test", source=tmp_path / "images", cfg=ValidationConfig())
    a = prepare_dataset(tmp_path / "v", tmp_path / "a", dataset="t", split_cfg=SPLIT, shard_cfg=ShardConfig(8))
    b = prepare_dataset(tmp_path / "v", tmp_path / "b", dataset="t", split_cfg=SPLIT, shard_cfg=ShardConfig(8))
    assert (tmp_path / "a" / "manifest.json").read_text() == (tmp_path / "b" / "manifest.json").read_text()
    assert a.counts == b.counts
    other = SplitConfig(seed=2, val_fraction=0.2, test_fraction=0.2)
    assert [assign_split(p.id, other) for p in pairs] != [assign_split(p.id, SPLIT) for p in pairs]


def test_too_many_bad_records_fail_after_writing_the_quarantine(pairs, tmp_path):
    broken = [CaptionImagePair(f"b{i}", tmp_path / "nope.jpg", "x y", "t") for i in range(5)]
    with pytest.raises(DataQualityError, match="5 of 10 records quarantined"):
        validate_corpus([*pairs[:5], *broken], tmp_path / "v", dataset="t", fmt="test",
                        source=tmp_path / "images", cfg=ValidationConfig(max_bad_fraction=0.2))
    assert len((tmp_path / "v" / "quarantine.jsonl").read_text().splitlines()) == 5


def test_prompt_sets_become_a_prompt_file(tmp_path):
    prompts = [PromptRecord(f"p{i}", f"a sign that reads 'word{i}'", "test", category="signs",
                            quoted_words=(f"word{i}",)) for i in range(5)]
    validate_corpus(prompts, tmp_path / "v", dataset="p", fmt="test", source=tmp_path, cfg=ValidationConfig())
    result = prepare_dataset(tmp_path / "v", tmp_path / "p", dataset="p", split_cfg=SPLIT, shard_cfg=ShardConfig())
    assert result.counts == {"prompts": 5}
    rows = [json.loads(line) for line in (tmp_path / "p" / "prompts.jsonl").read_text().splitlines()]
    assert rows[0]["quoted_words"] == ["word0"] and rows[0]["category"] == "signs"


def test_read_validated_resolves_against_a_moved_corpus(pairs, tmp_path):
    validate_corpus(pairs, tmp_path / "v", dataset="t", fmt="test", source=tmp_path / "images", cfg=ValidationConfig())
    moved = tmp_path / "moved"
    (tmp_path / "images").rename(moved)
    kept = read_validated(tmp_path / "v", source_root=moved)
    assert kept[0].record.image_path == moved / "000.jpg" and kept[0].record.image_path.is_file()


def test_shard_dataset_splits_samples_across_ranks_and_workers(tmp_path):
    pairs = [CaptionImagePair(f"p{i:02d}", write_jpeg(tmp_path / "i" / f"{i}.jpg", seed=i), f"caption {i}", "t")
             for i in range(20)]
    validate_corpus(pairs, tmp_path / "v", dataset="t", fmt="test", source=tmp_path / "i", cfg=ValidationConfig())
    no_split = SplitConfig(val_fraction=0.0, test_fraction=0.0)
    for per_shard in (3, 20):  # many shards (shard-level split) and one shard (sample striding)
        out = tmp_path / f"p{per_shard}"
        prepare_dataset(tmp_path / "v", out, dataset="t", split_cfg=no_split, shard_cfg=ShardConfig(per_shard))
        shards = list_shards(out, "train")
        ids = []
        for rank in range(2):
            loader = DataLoader(ShardDataset(shards, decode_json, rank=rank, world_size=2), batch_size=None,
                                num_workers=2)
            ids.extend(row["id"] for row in loader)
        assert sorted(ids) == sorted(p.id for p in pairs)
    endless = iter(ShardDataset(shards, decode_json, repeat=True, shuffle=True, seed=3, shuffle_buffer=4))
    first_pass = [next(endless)["id"] for _ in range(20)]
    assert sorted(first_pass) == sorted(p.id for p in pairs) and first_pass != sorted(first_pass)
    assert next(endless)["id"] in first_pass
