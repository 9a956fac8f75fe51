"""WebDataset-format tar shards: write them deterministically, stream them into training workers.

A sample is the group of tar members sharing a key: `<key>.json` (the record, see
`records.record_to_json`, with file references replaced by member names) plus its files
(`<key>.jpg`, `<key>.charseg.npy`, story images `<key>.0.jpg`, ...). Any WebDataset reader can
open these shards; `ShardDataset` is the project's own streaming reader for Ray Train workers.
"""

from __future__ import annotations

import hashlib
import io
import json
import random
import tarfile
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch.utils.data import IterableDataset, get_worker_info

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


class ShardDataset(IterableDataset):
    """Stream samples from tar shards, split across distributed ranks and DataLoader workers.

    With at least as many shards as readers (ranks x workers) each reader takes whole shards;
    otherwise every reader scans all shards and keeps every n-th sample, so small datasets still
    give every rank data. `repeat=True` cycles forever (training loops count steps, not epochs),
    reshuffling shard order each pass with `seed + pass` so ranks stay deterministic.
    """

    def __init__(
        self,
        shards: list[Path],
        decode: Callable[[dict[str, bytes]], Any],
        rank: int = 0,
        world_size: int = 1,
        repeat: bool = False,
        shuffle: bool = False,
        seed: int = 0,
        shuffle_buffer: int = 256,
    ):
        if not shards:
            raise ValueError("ShardDataset needs at least one shard")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world_size {world_size}")
        self.shards = [Path(s) for s in shards]
        self.decode = decode
        self.rank, self.world_size = rank, world_size
        self.repeat, self.shuffle, self.seed = repeat, shuffle, seed
        self.shuffle_buffer = shuffle_buffer

    def _reader(self) -> tuple[int, int]:
        info = get_worker_info()
        workers, worker = (info.num_workers, info.id) if info else (1, 0)
        return self.rank * workers + worker, self.world_size * workers

    def _samples(self, epoch: int) -> Iterator[dict[str, bytes]]:
        reader, readers = self._reader()
        order = list(self.shards)
        if self.shuffle:
            random.Random(self.seed + epoch).shuffle(order)
        if len(order) >= readers:
            for shard in order[reader::readers]:
                yield from iter_shard(shard)
        else:
            index = 0
            for shard in order:
                for sample in iter_shard(shard):
                    if index % readers == reader:
                        yield sample
                    index += 1

    def __iter__(self) -> Iterator[Any]:
        epoch = 0
        rng = random.Random(self.seed * 7919 + self._reader()[0])
        while True:
            buffer: list[dict[str, bytes]] = []
            for sample in self._samples(epoch):
                if not self.shuffle:
                    yield self.decode(sample)
                    continue
                buffer.append(sample)
                if len(buffer) >= self.shuffle_buffer:
                    yield self.decode(buffer.pop(rng.randrange(len(buffer))))
            rng.shuffle(buffer)
            for sample in buffer:
                yield self.decode(sample)
            epoch += 1
            if not self.repeat:
                return


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


def seed_worker(worker_id: int) -> None:
    """DataLoader `worker_init_fn` that makes each worker's torch RNG depend only on the base seed."""
    torch.manual_seed(torch.initial_seed() % 2**31 + worker_id)
