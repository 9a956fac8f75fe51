"""From raw corpus to training-ready dataset: validate and quarantine, then split, shard and describe.

Two steps with a file boundary between them, so each is a DVC stage of its own:

1. `validate_corpus` reads a corpus in a public format, validates every record and writes
   `records.jsonl` (kept, as normalised), `quarantine.jsonl` (every rejected record with its reason)
   and `validation.json` (quarantined counts by reason, normalised counts by what was tidied). Bad
   records never crash it and are never dropped silently; too many of them fail the run (`validation.max_bad_fraction`) after the quarantine is written.
2. `prepare_dataset` assigns deterministic train/val/test(/holdout) splits, writes WebDataset tar
   shards per split, `stats.json` (ParaDiffusion Table 1 columns per split) and `manifest.json`
   (every shard's sha256 and count). Prompt-only sets get `prompts.jsonl` instead of shards.

File paths in `records.jsonl` are relative to the corpus root, so the output does not depend on
where the corpus sits on disk (and its DVC md5 is the same on every machine).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from components.config import to_dict
from components.data.records import PromptRecord, ReadFailure, Record, record_from_json, record_to_json
from components.data.shards import sample_members, write_shard
from components.data.validation import (
    ValidationConfig,
    ValidationEngine,
    ValidationResult,
    Verdict,
    check_bad_fraction,
    validate_locally,
    validate_records,
)
from components.fileio import atomic_directory, atomic_write_json, atomic_write_jsonl

SPLITS = ("train", "val", "test", "holdout")
NOUN_COUNTER = "wordnet-lexicon (approximate POS; components/data/text_stats.py)"


@dataclass
class SplitConfig:
    seed: int = 0
    """Salt of the split hash: changing it reshuffles which record lands in which split."""
    val_fraction: float = 0.05
    """Fraction of records in the validation split."""
    test_fraction: float = 0.05
    """Fraction of records in the test split."""
    holdout_fraction: float = 0.0
    """Fraction set aside for models that must not share data with the generators (CLIP evaluator)."""

    def __post_init__(self) -> None:
        fractions = (self.val_fraction, self.test_fraction, self.holdout_fraction)
        if any(f < 0 for f in fractions) or sum(fractions) >= 1:
            raise ValueError(
                "split fractions must be >= 0 and leave room for train: "
                f"val_fraction={self.val_fraction}, test_fraction={self.test_fraction}, "
                f"holdout_fraction={self.holdout_fraction}"
            )


@dataclass
class ShardConfig:
    samples_per_shard: int = 256
    """Samples per tar shard; a Ray worker streams whole shards, so keep several per worker."""

    def __post_init__(self) -> None:
        if self.samples_per_shard < 1:
            raise ValueError(f"shards.samples_per_shard must be >= 1, got {self.samples_per_shard}")


def assign_split(record_id: str, cfg: SplitConfig) -> str:
    """Deterministic split of a record: a hash of (seed, id), stable when records are added."""
    digest = hashlib.sha256(f"{cfg.seed}:{record_id}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    for split, fraction in (("test", cfg.test_fraction), ("val", cfg.val_fraction), ("holdout", cfg.holdout_fraction)):
        if u < fraction:
            return split
        u -= fraction
    return "train"


def _verdict_line(verdict: Verdict, root: Path) -> dict[str, Any]:
    return {
        "record": record_to_json(verdict.record, root=root),
        "image_sha256": list(verdict.image_sha256),
        "short_side": verdict.short_side,
        "words": verdict.words,
        "nouns": verdict.nouns,
    }


def _quarantine_line(verdict: Verdict, root: Path) -> dict[str, Any]:
    record = verdict.record
    line = {"ref": verdict.record_id, "reason": verdict.reason}
    if isinstance(record, ReadFailure):
        line["raw"] = record.raw
    else:
        line["record"] = record_to_json(record, root=root)
    return line


@dataclass
class ValidationSummary:
    dataset: str
    read: int
    kept: int
    quarantined: int
    reasons: dict[str, int]
    out_dir: Path
    normalised: int = 0
    """Kept records that were tidied rather than quarantined (see `normalisations`)."""
    normalisations: dict[str, int] = field(default_factory=dict)
    """Kept records per normalisation code (html_entities, whitespace, clipped_ocr_box)."""
    clipped_boxes: int = 0
    """OCR boxes clipped to their image."""


def validate_corpus(
    records: Iterable[Record | ReadFailure],
    out_dir: Path,
    *,
    dataset: str,
    fmt: str,
    source: Path,
    cfg: ValidationConfig,
    engine: ValidationEngine = validate_locally,
    progress: Callable[[int], None] | None = None,
) -> ValidationSummary:
    """Validate a corpus and write records.jsonl, quarantine.jsonl and validation.json to `out_dir`.

    Raises DataQualityError (after writing all three files) when the quarantined fraction is above
    `cfg.max_bad_fraction`.
    """
    source = Path(source)
    given_root = source if source.is_dir() else source.parent
    root = given_root.resolve()
    result: ValidationResult = validate_records(records, cfg, engine=engine, progress=progress)
    out_dir = Path(out_dir)
    atomic_write_jsonl(out_dir / "records.jsonl", (_verdict_line(v, root) for v in result.kept))
    atomic_write_jsonl(out_dir / "quarantine.jsonl", (_quarantine_line(v, root) for v in result.quarantined))
    atomic_write_json(
        out_dir / "validation.json",
        {
            "dataset": dataset,
            "format": fmt,
            "source": str(source),
            "source_root": str(given_root),
            "read": result.total,
            "kept": len(result.kept),
            "quarantined": len(result.quarantined),
            "bad_fraction": round(result.bad_fraction, 6),
            "reasons": result.reasons(),
            "normalised": result.normalised,
            "normalisations": result.normalisations(),
            "clipped_boxes": result.clipped_boxes,
            "config": to_dict(cfg),
        },
    )
    check_bad_fraction(result, cfg, where=f"dataset {dataset} ({source})")
    return ValidationSummary(
        dataset,
        result.total,
        len(result.kept),
        len(result.quarantined),
        result.reasons(),
        out_dir,
        normalised=result.normalised,
        normalisations=result.normalisations(),
        clipped_boxes=result.clipped_boxes,
    )


@dataclass
class KeptRecord:
    """A validated record with the facts validation measured about it."""

    record: Record
    short_side: int | None
    words: int
    nouns: int


def read_validated(validated_dir: Path, source_root: Path | None = None) -> list[KeptRecord]:
    """Load the kept records of a validation run; paths resolve against the corpus root it recorded."""
    validated_dir = Path(validated_dir)
    meta_path = validated_dir / "validation.json"
    if not meta_path.is_file():
        raise FileNotFoundError(f"{meta_path} is missing: run validation first (genops data validate)")
    meta = json.loads(meta_path.read_text())
    if source_root is None:
        source_root = Path(meta["source_root"])
    kept = []
    with open(validated_dir / "records.jsonl", encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            kept.append(
                KeptRecord(record_from_json(row["record"], root=Path(source_root).resolve()),
                           row["short_side"], row["words"], row["nouns"])
            )
    return kept


def _mean(values: list[float]) -> float | None:
    return round(sum(values) / len(values), 3) if values else None


def table1_row(entries: list[KeptRecord]) -> dict[str, Any]:
    """ParaDiffusion Table 1 columns: number, average short side, average words, average nouns."""
    sides = [e.short_side for e in entries if e.short_side is not None]
    return {
        "count": len(entries),
        "avg_short_side": _mean(sides),
        "avg_words": _mean([e.words for e in entries]),
        "avg_nouns": _mean([e.nouns for e in entries]),
    }


@dataclass
class PrepareSummary:
    dataset: str
    counts: dict[str, int]
    shards: dict[str, int]
    stats: dict[str, Any]
    out_dir: Path


def prepare_dataset(
    validated_dir: Path,
    out_dir: Path,
    *,
    dataset: str,
    split_cfg: SplitConfig,
    shard_cfg: ShardConfig,
    source_root: Path | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> PrepareSummary:
    """Split, shard and describe a validated dataset; every output file is written atomically."""
    validated_dir, out_dir = Path(validated_dir), Path(out_dir)
    validation = json.loads((validated_dir / "validation.json").read_text())
    entries = read_validated(validated_dir, source_root)
    out_dir.mkdir(parents=True, exist_ok=True)

    stats: dict[str, Any] = {
        "dataset": dataset,
        "noun_counter": NOUN_COUNTER,
        "quarantined": validation["quarantined"],
        "quarantine_reasons": validation["reasons"],
        "normalised": validation.get("normalised", 0),
        "normalisations": validation.get("normalisations", {}),
        "all": table1_row(entries),
        "splits": {},
    }
    manifest: dict[str, Any] = {
        "dataset": dataset,
        "format": validation["format"],
        "source": validation["source"],
        "split_config": to_dict(split_cfg),
        "shard_config": to_dict(shard_cfg),
        "splits": {},
    }
    counts: dict[str, int] = {}
    shard_counts: dict[str, int] = {}

    if entries and all(isinstance(e.record, PromptRecord) for e in entries):
        atomic_write_jsonl(out_dir / "prompts.jsonl", (record_to_json(e.record) for e in entries))
        counts["prompts"] = len(entries)
        manifest["prompts"] = {"file": "prompts.jsonl", "count": len(entries)}
    else:
        by_split: dict[str, list[KeptRecord]] = {s: [] for s in SPLITS}
        for entry in entries:
            by_split[assign_split(entry.record.id, split_cfg)].append(entry)
        for split in SPLITS:
            split_entries = by_split[split]
            if not split_entries and split == "holdout":
                continue
            shard_files = []
            with atomic_directory(out_dir / split) as tmp:
                size = shard_cfg.samples_per_shard
                batches = [split_entries[i : i + size] for i in range(0, len(split_entries), size)]
                for n, batch in enumerate(batches):
                    name = f"shard-{n:06d}.tar"
                    digest = write_shard(tmp / name, [sample_members(e.record) for e in batch])
                    shard_files.append({"file": f"{split}/{name}", "count": len(batch), "sha256": digest})
                    if progress is not None:
                        progress(split, n + 1, len(batches))
            counts[split] = len(split_entries)
            shard_counts[split] = len(shard_files)
            stats["splits"][split] = table1_row(split_entries)
            manifest["splits"][split] = {"count": len(split_entries), "shards": shard_files}

    atomic_write_json(out_dir / "stats.json", stats)
    atomic_write_json(out_dir / "manifest.json", manifest)
    return PrepareSummary(dataset, counts, shard_counts, stats, out_dir)
