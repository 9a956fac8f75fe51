"""The synthetic world: genops's embedded default datasets, written in the real public formats.

`generate_world(cfg, out_dir)` writes one folder per dataset under `out_dir`, each in the format a
real corpus of that kind comes in, so the ingest step reads synthetic and real data with the same
readers (`components/data/formats`)::

    laion_short/      laion-parquet  scenes + ~10-word captions        ParaDiffusion stage 1, SD base
    paraimage_big/    paraimage      scenes + 50-300-word paragraphs   ParaDiffusion stage 2
    paraimage_small/  paraimage      clean scenes + precise paragraphs ParaDiffusion stage 3
    cc3m/             cc3m           caption-image pairs               MiniGPT-5 stage 1
    vist/             vist           5-step evolving stories           MiniGPT-5 stage 2
    mmdialog/         mmdialog       picture dialogues                 MiniGPT-5 stage 2
    mario_laion/      mario          text-rich images, OCR, charseg    VLAD
    paraprompts/      paraprompts    benchmark paragraphs, 8 categories  evaluation
    mario_eval/       mario-eval     benchmark 'quoted word' prompts     evaluation
    world_manifest.json                seed, config, datasets, counts, injected faults

Every dataset folder also holds `groundtruth.jsonl` (see `formats/groundtruth.py`): the scene of
every sample (and the words and their boxes, in image pixels, for text-rich samples; the edit and
narration for story steps), so evaluation can check generated images against the exact truth.

Generation is deterministic: each dataset draws from its own `random.Random` seeded by the world
seed and the dataset name, images are JPEGs encoded with fixed settings and every file is written
with sorted keys or in a fixed order, so the same config gives byte-identical files. Each dataset
is built in a hidden `.<name>.partial` folder and moved into place when complete, replacing the
previous one; datasets whose count is 0 are removed.
"""

from __future__ import annotations

import hashlib
import io
import os
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from PIL import Image

from components.config import to_dict
from components.data.formats.cc3m import write_cc3m
from components.data.formats.groundtruth import write_groundtruth
from components.data.formats.laion_parquet import Img2DatasetRow, write_laion_shard
from components.data.formats.mario import write_mario_sample
from components.data.formats.mario_eval import write_mario_eval
from components.data.formats.mmdialog import write_mmdialog
from components.data.formats.paraimage import write_paraimage
from components.data.formats.paraprompts import write_paraprompts
from components.data.formats.vist import write_vist
from components.data.records import CaptionImagePair, PromptRecord, Story, StoryStep
from components.data.scene import Scene, render_scene, sample_scene
from components.data.synthetic.faults import (
    NON_UTF8_SUFFIX,
    SMALL_IMAGE_SIDE,
    InjectedFault,
    damage_image,
    plan_faults,
)
from components.data.synthetic.language import cc3m_caption, paragraph, short_caption
from components.data.synthetic.scenes import PROMPT_CATEGORIES, category_scene, clean_scene
from components.data.synthetic.stories import sample_dialogue, sample_story
from components.data.synthetic.textrich import (
    Rendered,
    TextLayout,
    render_textrich,
    sample_layout,
    textrich_caption,
)
from components.fileio import atomic_write_bytes, atomic_write_json, atomic_write_text

MANIFEST = "world_manifest.json"
STORY_STEPS = 5
MARIO_EVAL_SUBSET = "WorldEval"
IMAGE_FAULTS = ("corrupt_jpeg", "missing_image", "small_image", "duplicate_image")

# Dataset folder -> the reader that reads it (a key of components.data.formats.FORMATS).
DATASET_FORMATS: dict[str, str] = {
    "laion_short": "laion-parquet",
    "paraimage_big": "paraimage",
    "paraimage_small": "paraimage",
    "cc3m": "cc3m",
    "vist": "vist",
    "mmdialog": "mmdialog",
    "mario_laion": "mario",
    "paraprompts": "paraprompts",
    "mario_eval": "mario-eval",
}

Progress = Callable[[str, int, int], None]
T = TypeVar("T")


@dataclass
class WorldConfig:
    seed: int = 0
    """Seed of every random choice: the same seed and config give byte-identical files."""
    image_size: int = 64
    """Side in pixels of scene images (LAION, ParaImage, CC3M, VIST, MMDialog, ParaPrompts references)."""
    textrich_image_size: int = 256
    """Side in pixels of text-rich images (MARIO-LAION, MARIO-Eval references); OCR must read the words."""
    laion_short: int = 64
    """Scenes with ~10-word captions in laion_short (img2dataset parquet): ParaDiffusion stage 1, SD base."""
    paraimage_big: int = 32
    """Scenes (1-6 objects) with 50-300-word paragraphs in paraimage_big: ParaDiffusion stage 2."""
    paraimage_small: int = 12
    """Clean, centred scenes with precise paragraphs in paraimage_small: ParaDiffusion stage 3."""
    cc3m: int = 48
    """Single caption-image pairs in cc3m (TSV): MiniGPT-5 stage 1."""
    vist: int = 24
    """5-step stories (5 images each) in vist (MiniGPT-5's cleaned VIST JSON): MiniGPT-5 stage 2."""
    mmdialog: int = 24
    """Picture dialogues in mmdialog (JSONL): MiniGPT-5 stage 2."""
    mario_laion: int = 24
    """Text-rich images in mario_laion (MARIO-LAION sample folders): VLAD."""
    paraprompts: int = 16
    """Benchmark paragraphs in paraprompts (ParaPrompts CSV), spread evenly over 8 categories."""
    mario_eval: int = 16
    """Benchmark text-rendering prompts in mario_eval (MARIO-Eval layout), with reference images."""
    laion_shard_size: int = 1000
    """Rows per img2dataset parquet shard in laion_short (img2dataset allows up to 10000)."""
    jpeg_quality: int = 95
    """JPEG quality of every image written (4:4:4 chroma, so tiny shapes keep their colours)."""
    fault_fraction: float = 0.02
    """Fraction of each training dataset's records made deliberately bad (see synthetic/faults.py); 0 = none."""

    def __post_init__(self) -> None:
        if self.image_size < 2 * SMALL_IMAGE_SIDE:
            raise ValueError(f"world.image_size must be >= {2 * SMALL_IMAGE_SIDE} px, got {self.image_size}")
        if self.textrich_image_size < 64:
            raise ValueError(
                f"world.textrich_image_size must be >= 64 px (OCR reads words), got {self.textrich_image_size}"
            )
        for name in DATASET_FORMATS:
            if getattr(self, name) < 0:
                raise ValueError(f"world.{name} must be >= 0, got {getattr(self, name)}")
        if not 1 <= self.laion_shard_size <= 10000:
            raise ValueError(f"world.laion_shard_size must be in 1..10000, got {self.laion_shard_size}")
        if not 1 <= self.jpeg_quality <= 100:
            raise ValueError(f"world.jpeg_quality must be in 1..100, got {self.jpeg_quality}")
        if not 0.0 <= self.fault_fraction <= 0.5:
            raise ValueError(f"world.fault_fraction must be in [0, 0.5], got {self.fault_fraction}")


@dataclass(frozen=True)
class DatasetSummary:
    """What one dataset folder holds."""

    name: str
    format: str
    path: Path
    records: int
    images: int

    def to_json(self) -> dict[str, Any]:
        return {"format": self.format, "path": self.name, "records": self.records, "images": self.images}


@dataclass(frozen=True)
class WorldSummary:
    """What `generate_world` wrote: the datasets, the injected faults, the manifest, and how long it took."""

    out_dir: Path
    seed: int
    datasets: dict[str, DatasetSummary]
    injected_faults: tuple[InjectedFault, ...]
    manifest_path: Path
    seconds: float

    @property
    def records(self) -> int:
        return sum(d.records for d in self.datasets.values())

    @property
    def images(self) -> int:
        return sum(d.images for d in self.datasets.values())


@dataclass
class DatasetBuild:
    """The working state of one dataset while it is generated into `folder`."""

    name: str
    cfg: WorldConfig
    folder: Path
    count: int
    progress: Progress | None
    rng: random.Random = field(init=False)
    groundtruth: list[dict[str, Any]] = field(default_factory=list)
    faults: list[InjectedFault] = field(default_factory=list)
    image_digests: set[bytes] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.rng = random.Random(f"genops-world:{self.cfg.seed}:{self.name}")

    def tick(self, done: int) -> None:
        if self.progress is not None:
            self.progress(self.name, done, self.count)

    def jpeg(self, image: Image.Image) -> bytes:
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=self.cfg.jpeg_quality, subsampling=0)
        return buffer.getvalue()

    def save_image(self, relative: str, image: Image.Image | bytes) -> Path:
        path = self.folder / relative
        atomic_write_bytes(path, image if isinstance(image, bytes) else self.jpeg(image))
        return path.absolute()

    def unique(self, sample: Callable[[], T], draw: Callable[[T], Image.Image]) -> tuple[T, bytes]:
        """A new sample whose JPEG differs from every image already in this dataset, and that JPEG.

        Validation quarantines byte-identical images as duplicates, and small scene spaces (one
        centred object, no jitter) repeat, so only injected duplicates may share bytes.
        """
        for _ in range(100):
            item = sample()
            data = self.jpeg(draw(item))
            digest = hashlib.sha256(data).digest()
            if digest not in self.image_digests:
                self.image_digests.add(digest)
                return item, data
        raise RuntimeError(
            f"{self.name}: 100 samples in a row repeat earlier images; {self.count} distinct images do not fit its scene space"
        )

    def small_jpeg(self, scene: Scene) -> bytes:
        return self.jpeg(render_scene(scene, SMALL_IMAGE_SIDE))

    def fault(self, kind: str, ref: str, record_id: str | None, detail: str, gt_row: dict[str, Any]) -> None:
        gt_row["fault"] = kind
        self.faults.append(InjectedFault(self.name, kind, ref, record_id, detail))

    def damage(
        self,
        kind: str,
        path: Path,
        record_id: str,
        gt_row: dict[str, Any],
        scene: Scene,
        duplicate_of: Path | None,
    ) -> None:
        detail = damage_image(path, kind, duplicate_of, self.small_jpeg(scene))
        self.fault(kind, path.relative_to(self.folder.absolute()).as_posix(), record_id, detail, gt_row)


def clean_before(index: int, plan: dict[int, str]) -> int:
    """The nearest earlier record without a fault: the source a duplicate copies (record 0 is always clean)."""
    return max(i for i in range(index) if i not in plan)


def textrich_groundtruth(layout: TextLayout, rendered: Rendered) -> dict[str, Any]:
    words = [
        {"text": w.text, "quad": list(w.quad), "box": [w.quad[0], w.quad[1], w.quad[4], w.quad[5]]}
        for w in rendered.words
    ]
    return {"scene": layout.scene.to_json(), "words": words, "layout": layout.to_json()}


def build_laion_short(b: DatasetBuild) -> int:
    kinds = (
        "failed_download",
        "corrupt_jpeg",
        "duplicate_image",
        "missing_image",
        "small_image",
        "empty_caption",
    )
    plan = plan_faults(b.rng, b.count, kinds, home=2, fraction=b.cfg.fault_fraction)
    shards: dict[int, list[Img2DatasetRow]] = {}
    pending = []
    for i in range(b.count):
        objects = 1 if b.rng.random() < 0.7 else 2
        scene, jpeg = b.unique(
            lambda n=objects: sample_scene(b.rng, n, n), lambda s: render_scene(s, b.cfg.image_size)
        )
        caption = short_caption(scene, b.rng)
        shard, key = divmod(i, b.cfg.laion_shard_size)
        key = f"{shard:05d}{key:04d}"
        relative = f"{shard:05d}/{key}.jpg"
        kind = plan.get(i)
        row = {"id": key, "image": relative, "scene": scene.to_json(), "caption": caption}
        b.groundtruth.append(row)
        url = f"synthetic://genops/laion_short/{key}.jpg"
        if kind == "failed_download":
            row["image"] = None
            shards.setdefault(shard, []).append(
                Img2DatasetRow(
                    key,
                    caption,
                    url,
                    None,
                    "failed_to_download",
                    "HTTP Error 404: Not Found (synthetic fault)",
                )
            )
            b.fault(kind, f"{shard:05d}.parquet:{key}", None, "status failed_to_download, no files", row)
        else:
            if kind == "empty_caption":
                caption = row["caption"] = ""
                b.fault(kind, f"{shard:05d}.parquet:{key}", key, "caption is empty", row)
            elif kind is not None:
                pending.append((i, kind, relative, key, row, scene))
            shards.setdefault(shard, []).append(Img2DatasetRow(key, caption, url, jpeg))
        b.tick(i + 1)
    for shard, rows in sorted(shards.items()):
        write_laion_shard(b.folder, shard, rows)
    for i, kind, relative, key, row, scene in pending:
        source = b.groundtruth[clean_before(i, plan)]["image"]
        b.damage(kind, b.folder.absolute() / relative, key, row, scene, b.folder.absolute() / source)
    return b.count


def build_caption_pairs(
    b: DatasetBuild,
    kinds: tuple[str, ...],
    home: int,
    scene_fn: Callable[[], Scene],
    caption_fn: Callable[[Scene], str],
    image_name: Callable[[int], str],
    fault_ref: Callable[[int], str],
    source: str,
    write: Callable[[list[CaptionImagePair]], None],
) -> int:
    """One caption per image, written by `write` in one metadata file (ParaImage JSON, CC3M TSV)."""
    plan = plan_faults(b.rng, b.count, kinds, home=home, fraction=b.cfg.fault_fraction) if kinds else {}
    pairs, pending = [], []
    for i in range(b.count):
        scene, jpeg = b.unique(scene_fn, lambda s: render_scene(s, b.cfg.image_size))
        caption = caption_fn(scene)
        relative = image_name(i)
        record_id = relative.rsplit(".", 1)[0]
        path = b.save_image(relative, jpeg)
        row = {"id": record_id, "image": relative, "scene": scene.to_json(), "caption": caption}
        b.groundtruth.append(row)
        kind = plan.get(i)
        if kind == "empty_caption":
            caption = row["caption"] = ""
            b.fault(kind, fault_ref(i), record_id, "caption is empty", row)
        elif kind is not None:
            pending.append((i, kind, path, record_id, row, scene))
        pairs.append(CaptionImagePair(record_id, path, caption, source=source))
        b.tick(i + 1)
    write(pairs)
    for i, kind, path, record_id, row, scene in pending:
        b.damage(kind, path, record_id, row, scene, pairs[clean_before(i, plan)].image_path)
    return b.count


def build_paraimage(b: DatasetBuild, small: bool) -> int:
    return build_caption_pairs(
        b,
        kinds=() if small else ("empty_caption", "duplicate_image", "corrupt_jpeg", "missing_image", "small_image"),
        home=1,
        scene_fn=lambda: clean_scene(b.rng) if small else sample_scene(b.rng, 1, 6),
        caption_fn=lambda scene: paragraph(scene, b.rng, precise=small),
        image_name=lambda i: f"images/{i:06d}.jpg",
        fault_ref=lambda i: f"paraimage.json[{i}]",
        source="paraimage",
        write=lambda pairs: write_paraimage(b.folder / "paraimage.json", pairs),
    )


def build_cc3m(b: DatasetBuild) -> int:
    return build_caption_pairs(
        b,
        kinds=("duplicate_image", "small_image", "corrupt_jpeg", "missing_image", "empty_caption"),
        home=2,
        scene_fn=lambda: sample_scene(b.rng, 1, 3),
        caption_fn=lambda scene: cc3m_caption(scene, b.rng),
        image_name=lambda i: f"train/{i:09d}.jpg",
        fault_ref=lambda i: f"cc3m_train.tsv:{i + 2}",
        source="cc3m",
        write=lambda pairs: write_cc3m(b.folder / "cc3m_train.tsv", pairs),
    )


def build_vist(b: DatasetBuild) -> int:
    # Stories are exempt from duplicate checks (VIST reuses photos) and a story only fails on text
    # when every step is empty, so story faults are image faults.
    plan = plan_faults(
        b.rng,
        b.count,
        ("missing_image", "corrupt_jpeg", "small_image"),
        home=1,
        fraction=b.cfg.fault_fraction,
    )
    stories = []
    for s in range(b.count):
        story_id = f"{s:05d}"
        steps, rows, scenes = [], [], []
        for k, frame in enumerate(sample_story(b.rng, STORY_STEPS)):
            relative = f"train_images/{story_id}{k}.jpg"
            path = b.save_image(relative, render_scene(frame.scene, b.cfg.image_size))
            steps.append(StoryStep(frame.narration, path))
            row = {
                "id": f"{story_id}/{k}",
                "story_id": story_id,
                "step": k,
                "image": relative,
                "scene": frame.scene.to_json(),
                "event": frame.event,
                "narration": frame.narration,
            }
            rows.append(row)
            scenes.append(frame.scene)
        b.groundtruth.extend(rows)
        if s in plan:
            k = b.rng.randrange(STORY_STEPS)
            b.damage(plan[s], steps[k].image_path, story_id, rows[k], scenes[k], None)
        stories.append(Story(story_id, tuple(steps), source="vist"))
        b.tick(s + 1)
    write_vist(b.folder, "train", stories)
    return b.count


def build_mmdialog(b: DatasetBuild) -> int:
    plan = plan_faults(
        b.rng, b.count, ("truncated_jsonl", "missing_image"), home=1, fraction=b.cfg.fault_fraction
    )
    stories, truncate = [], []
    for c in range(b.count):
        steps, imaged = [], []
        for t, turn in enumerate(sample_dialogue(b.rng)):
            relative = f"train/{c:05d}{t:02d}.jpg" if turn.has_image else None
            path = b.save_image(relative, render_scene(turn.scene, b.cfg.image_size)) if relative else None
            steps.append(StoryStep(turn.text, path))
            row = {
                "id": f"{c}/{t}",
                "story_id": str(c),
                "step": t,
                "image": relative,
                "scene": turn.scene.to_json(),
                "speaker": turn.speaker,
            }
            b.groundtruth.append(row)
            if path is not None:
                imaged.append((path, row, turn.scene))
        if plan.get(c) == "missing_image":
            path, row, scene = b.rng.choice(imaged)
            b.damage("missing_image", path, str(c), row, scene, None)
        elif plan.get(c) == "truncated_jsonl":
            truncate.append(c)
        stories.append(Story(str(c), tuple(steps), source="mmdialog"))
        b.tick(c + 1)
    conversations = write_mmdialog(b.folder / "train" / "train_conversations.txt", stories)
    if truncate:
        lines = conversations.read_text(encoding="utf-8").split("\n")
        for c in truncate:
            lines[c] = lines[c][: len(lines[c]) // 2]
            first_row = next(r for r in b.groundtruth if r["story_id"] == str(c) and r["step"] == 0)
            b.fault(
                "truncated_jsonl",
                f"train/train_conversations.txt:{c + 1}",
                None,
                "line cut in half",
                first_row,
            )
        atomic_write_text(conversations, "\n".join(lines))
    return b.count


def build_mario_laion(b: DatasetBuild) -> int:
    kinds = ("non_utf8_caption", "small_image", "corrupt_jpeg", "missing_image", "empty_caption")
    plan = plan_faults(b.rng, b.count, kinds, home=1, fraction=b.cfg.fault_fraction)
    size = b.cfg.textrich_image_size

    def fresh_layout() -> tuple[TextLayout, Rendered]:
        layout = sample_layout(b.rng, size)
        return layout, render_textrich(layout)

    for i in range(b.count):
        (layout, rendered), jpeg = b.unique(fresh_layout, lambda pair: pair[1].image)
        caption = textrich_caption(layout, b.rng)
        key = f"{i:09d}"
        sample_dir, record_id = f"{key[:5]}/{key}", f"{key[:5]}_{key}"
        kind = plan.get(i)
        if kind == "empty_caption":
            caption = ""
        info = {
            "caption": caption,
            "url": f"synthetic://genops/mario_laion/{key}.jpg",
            "key": key,
            "status": "success",
            "error_message": None,
            "width": size,
            "height": size,
            "original_width": size,
            "original_height": size,
            "exif": "{}",
            "sha256": hashlib.sha256(jpeg).hexdigest(),
        }
        sample = write_mario_sample(b.folder, key, jpeg, caption, rendered.words, rendered.charseg, info)
        row = {
            "id": record_id,
            "image": f"{sample_dir}/image.jpg",
            "caption": caption,
            **textrich_groundtruth(layout, rendered),
        }
        b.groundtruth.append(row)
        if kind == "empty_caption":
            b.fault(kind, f"{sample_dir}/caption.txt", record_id, "caption.txt is empty", row)
        elif kind == "non_utf8_caption":
            atomic_write_bytes(sample / "caption.txt", (caption + NON_UTF8_SUFFIX).encode("latin-1"))
            b.fault(
                kind,
                f"{sample_dir}/caption.txt",
                None,
                "caption.txt encoded as latin-1 with a non-ASCII character",
                row,
            )
        elif kind is not None:
            source = b.folder.absolute() / b.groundtruth[clean_before(i, plan)]["image"]
            b.damage(kind, (sample / "image.jpg").absolute(), record_id, row, layout.scene, source)
        b.tick(i + 1)
    return b.count


def build_paraprompts(b: DatasetBuild) -> int:
    records = []
    for i in range(b.count):
        category = PROMPT_CATEGORIES[i % len(PROMPT_CATEGORIES)]
        scene = category_scene(b.rng, category)
        name = f"{i:06d}.jpg"
        b.save_image(f"images/{name}", render_scene(scene, b.cfg.image_size))
        records.append(
            PromptRecord(name, paragraph(scene, b.rng, precise=True), source="paraprompts", category=category)
        )
        b.groundtruth.append(
            {"id": name, "image": f"images/{name}", "scene": scene.to_json(), "category": category}
        )
        b.tick(i + 1)
    write_paraprompts(b.folder / "ParaPrompts.csv", records)
    return b.count


def build_mario_eval(b: DatasetBuild) -> int:
    prompts = []
    for i in range(b.count):
        layout = sample_layout(b.rng, b.cfg.textrich_image_size)
        rendered = render_textrich(layout)
        prompt = textrich_caption(layout, b.rng)
        relative = f"{MARIO_EVAL_SUBSET}/images/{i}.jpg"
        b.save_image(relative, rendered.image)
        prompts.append(prompt)
        b.groundtruth.append(
            {
                "id": f"{MARIO_EVAL_SUBSET}/{i}",
                "image": relative,
                "prompt": prompt,
                **textrich_groundtruth(layout, rendered),
            }
        )
        b.tick(i + 1)
    write_mario_eval(b.folder, MARIO_EVAL_SUBSET, prompts)
    return b.count


BUILDERS: dict[str, Callable[[DatasetBuild], int]] = {
    "laion_short": build_laion_short,
    "paraimage_big": lambda b: build_paraimage(b, small=False),
    "paraimage_small": lambda b: build_paraimage(b, small=True),
    "cc3m": build_cc3m,
    "vist": build_vist,
    "mmdialog": build_mmdialog,
    "mario_laion": build_mario_laion,
    "paraprompts": build_paraprompts,
    "mario_eval": build_mario_eval,
}


def generate_world(cfg: WorldConfig, out_dir: Path, progress: Progress | None = None) -> WorldSummary:
    """Write every dataset of the synthetic world under `out_dir`, plus `world_manifest.json`.

    `progress(dataset, done, total)` is called after each record. Returns what was written.
    """
    start = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summaries: dict[str, DatasetSummary] = {}
    faults: list[InjectedFault] = []
    for name, fmt in DATASET_FORMATS.items():
        final = out_dir / name
        count = getattr(cfg, name)
        if count == 0:
            if final.exists():
                shutil.rmtree(final)
            continue
        partial = out_dir / f".{name}.partial"
        if partial.exists():
            shutil.rmtree(partial)
        partial.mkdir()
        build = DatasetBuild(name, cfg, partial, count, progress)
        records = BUILDERS[name](build)
        write_groundtruth(partial, build.groundtruth)
        if final.exists():
            shutil.rmtree(final)
        os.replace(partial, final)
        images = sum(1 for p in final.rglob("*.jpg") if p.is_file())
        summaries[name] = DatasetSummary(name, fmt, final, records, images)
        faults.extend(build.faults)
    manifest = {
        "generator": "components.data.synthetic",
        "seed": cfg.seed,
        "config": to_dict(cfg),
        "datasets": {name: s.to_json() for name, s in summaries.items()},
        "counts": {name: s.records for name, s in summaries.items()},
        "injected_faults": [f.to_json() for f in faults],
    }
    manifest_path = out_dir / MANIFEST
    atomic_write_json(manifest_path, manifest)
    return WorldSummary(
        out_dir, cfg.seed, summaries, tuple(faults), manifest_path, time.perf_counter() - start
    )
