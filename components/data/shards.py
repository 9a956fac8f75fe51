"""WebDataset-format tar shards: write them deterministically, stream them into training workers.

A sample is the group of tar members sharing a key: `<key>.json` (the record, see
`records.record_to_json`, with file references replaced by member names) plus its files
(`<key>.jpg`, `<key>.charseg.npy`, story images `<key>.0.jpg`, ...). Any WebDataset reader can
open these shards; `components.data.training_data.ShardDataset` streams them into Ray Train
workers. This module stays free of torch, so the data-pipeline commands start fast.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from components.data.records import CaptionImagePair, Record, Story, TextRichImage, record_to_json
from components.fileio import atomic_write_bytes


def sample_key(record_id: str) -> str:
    """A WebDataset key for a record id: no dots or slashes (they split keys from extensions)."""
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in record_id)


def sample_members(record: Record, extra: dict[str, Any] | None = None) -> dict[str, bytes]:
    """The tar members of one record: its JSON and the bytes of every file it refers to."""
    key = sample_key(record.id)
    meta = record_to_json(record)
    files: dict[str, bytes] = {}
    if isinstance(record, (CaptionImagePair, TextRichImage)):
        name = f"{key}{record.image_path.suffix.lower() or '.jpg'}"
        files[name] = record.image_path.read_bytes()
        meta["image_path"] = name
    if isinstance(record, TextRichImage) and record.charseg_path is not None:
        name = f"{key}.charseg.npy"
        files[name] = record.charseg_path.read_bytes()
        meta["charseg_path"] = name
    if isinstance(record, Story):
        for i, (step, step_meta) in enumerate(zip(record.steps, meta["steps"])):
            if step.image_path is not None:
                name = f"{key}.{i}{step.image_path.suffix.lower() or '.jpg'}"
                files[name] = step.image_path.read_bytes()
                step_meta["image_path"] = name
    if extra:
        meta["extra"] = {**meta.get("extra", {}), **extra}
    return {f"{key}.json": json.dumps(meta, sort_keys=True).encode("utf-8"), **files}


def write_shard(path: Path, samples: list[dict[str, bytes]]) -> str:
    """Write one tar shard atomically and reproducibly (fixed mtime/owner); return its sha256."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for members in samples:
            for name in sorted(members):
                data = members[name]
                info = tarfile.TarInfo(name)
                info.size = len(data)
                info.mtime = 0
                info.mode = 0o644
                tar.addfile(info, io.BytesIO(data))
    payload = buffer.getvalue()
    atomic_write_bytes(path, payload)
    return hashlib.sha256(payload).hexdigest()


def iter_shard(path: Path) -> Iterator[dict[str, bytes]]:
    """Yield the samples of one shard as {"__key__": key, "<ext>": bytes, ...} dicts, in order."""
    current: dict[str, Any] = {}
    with tarfile.open(path, mode="r|") as tar:
        for info in tar:
            if not info.isfile():
                continue
            key, _, ext = info.name.partition(".")
            if current and current["__key__"] != key:
                yield current
                current = {}
            current["__key__"] = key
            current[ext] = tar.extractfile(info).read()
    if current:
        yield current


def list_shards(prepared_dir: Path, split: str) -> list[Path]:
    """The shards of one split of a prepared dataset, in order; a clear error when there are none."""
    shards = sorted((Path(prepared_dir) / split).glob("shard-*.tar"))
    if not shards:
        raise FileNotFoundError(
            f"no shards in {Path(prepared_dir) / split}: prepare the dataset first (genops data prepare)"
        )
    return shards


def split_texts(prepared_dir: Path, split: str) -> Iterator[str]:
    """Every caption / step text / prompt of one split of a prepared dataset, in shard order."""
    prepared_dir = Path(prepared_dir)
    prompts = prepared_dir / "prompts.jsonl"
    if prompts.is_file():
        for line in prompts.read_text(encoding="utf-8").splitlines():
            yield json.loads(line)["prompt"]
        return
    for shard in list_shards(prepared_dir, split):
        for sample in iter_shard(shard):
            meta = json.loads(sample["json"])
            if "steps" in meta:
                yield from (s["text"] for s in meta["steps"] if s["text"])
            else:
                yield meta["caption"]


def decode_json(sample: dict[str, bytes]) -> dict[str, Any]:
    """The record JSON of a shard sample."""
    return json.loads(sample["json"])
