"""Record validation as a Ray Data pipeline, for corpora too large for one process (ParaImage-Big).

The per-record function is the same `components.data.validation.validate_record` the in-process
engine calls; Ray only fans it out over the cluster's CPUs in batches. Records travel as JSON so
the driver never pickles file handles or images, and verdicts stream back as they finish.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import Any

from components.config import from_dict, to_dict
from components.data.records import ReadFailure, Record, record_from_json, record_to_json
from components.data.validation import ValidationConfig, Verdict, validate_record


def _verdict_to_json(verdict: Verdict) -> str:
    return json.dumps(
        {
            "record": record_to_json(verdict.record),
            "reason": verdict.reason,
            "image_sha256": list(verdict.image_sha256),
            "short_side": verdict.short_side,
            "words": verdict.words,
            "nouns": verdict.nouns,
        }
    )


def _verdict_from_json(text: str) -> Verdict:
    row: dict[str, Any] = json.loads(text)
    return Verdict(
        record=record_from_json(row["record"]),
        reason=row["reason"],
        image_sha256=tuple(row["image_sha256"]),
        short_side=row["short_side"],
        words=row["words"],
        nouns=row["nouns"],
    )


def _validate_batch(batch: dict[str, Any], cfg: dict[str, Any]) -> dict[str, list[str]]:
    config = from_dict(ValidationConfig, cfg)
    verdicts = [validate_record(record_from_json(json.loads(text)), config) for text in batch["record"]]
    return {"verdict": [_verdict_to_json(v) for v in verdicts]}


def ray_engine(batch_size: int = 64):
    """A validation engine (see `validate_records`) that maps batches of records over Ray workers."""

    def engine(records: Iterable[Record | ReadFailure], cfg: ValidationConfig) -> Iterator[Verdict]:
        import ray

        from training_jobs.cluster import connect_ray

        connect_ray()
        items = [{"record": json.dumps(record_to_json(r))} for r in records]
        if not items:
            return
        dataset = ray.data.from_items(items).map_batches(
            _validate_batch, fn_kwargs={"cfg": to_dict(cfg)}, batch_size=batch_size, batch_format="numpy"
        )
        for row in dataset.iter_rows():
            yield _verdict_from_json(row["verdict"])

    return engine
