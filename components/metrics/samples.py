"""Reading what the metrics are computed over: image folders, prompt files, ground truth, dialogue turns.

Formats accepted (paths inside files are relative to the images folder, or absolute):
- a folder of images (`.png .jpg .jpeg .bmp .webp`, searched recursively, sorted);
- prompts as JSONL `{"image": <path>, "prompt": <text>}` or as CC3M's TSV (`caption<TAB>image_path`
  header);
- a MARIO-LAION-style folder, where every `caption.txt` sits beside its `image.jpg`/`image.png`;
- the synthetic world's `groundtruth.jsonl`: `{"id", "image", "scene": Scene.to_json()}` (rows
  whose image is null, e.g. image-less story steps, are skipped);
- dialogue turns as JSONL `{"dialogue"?, "prediction", "reference", "predicted_image"?, "reference_image"?}`.

Every malformed line raises an error (ValueError, or TypeError for a wrong JSON type) naming the file and line.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from components.data.scene import Scene
from components.metrics.narration import Turn

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


def list_images(folder: str | Path) -> list[Path]:
    """Every image under `folder`, recursively, in sorted order."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder {folder} does not exist")
    images = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not images:
        raise ValueError(f"image folder {folder} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    return images


@dataclass(frozen=True)
class PromptedImage:
    """One image and the prompt it was generated from (or that describes it)."""

    image: Path
    prompt: str


def _resolve(base: Path, value: Any, where: str) -> Path:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{where}: image path must be a non-empty string, got {value!r}")
    path = Path(value)
    path = path if path.is_absolute() else base / path
    if not path.is_file():
        raise FileNotFoundError(f"{where}: image {path} does not exist")
    return path


def _jsonl_rows(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{where}: not valid JSON ({err})") from err
        if not isinstance(row, dict):
            raise TypeError(f"{where}: each line must be a JSON object")
        yield where, row


def read_prompted_images(images_dir: str | Path, prompts: str | Path | None = None) -> list[PromptedImage]:
    """Image-prompt pairs from a prompts file (JSONL or CC3M TSV), or from a MARIO-style folder."""
    images_dir = Path(images_dir)
    if not images_dir.is_dir():
        raise FileNotFoundError(f"image folder {images_dir} does not exist")
    if prompts is None:
        return _read_mario_folder(images_dir)
    prompts = Path(prompts)
    if not prompts.is_file():
        raise FileNotFoundError(f"prompts file {prompts} does not exist")
    out = []
    if prompts.suffix == ".tsv":
        with prompts.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f, delimiter="\t")
            if reader.fieldnames is None or not {"caption", "image_path"} <= set(reader.fieldnames):
                raise ValueError(
                    f"{prompts}: a TSV prompts file needs the CC3M header 'caption<TAB>image_path'"
                )
            for lineno, row in enumerate(reader, start=2):
                where = f"{prompts}:{lineno}"
                out.append(
                    PromptedImage(_resolve(images_dir, row["image_path"], where), row["caption"] or "")
                )
    elif prompts.suffix == ".jsonl":
        for where, row in _jsonl_rows(prompts):
            if not isinstance(row.get("prompt"), str):
                raise TypeError(f"{where}: needs a string 'prompt'")
            out.append(PromptedImage(_resolve(images_dir, row.get("image"), where), row["prompt"]))
    else:
        raise ValueError(f"prompts file {prompts} must be .jsonl ({{'image', 'prompt'}}) or .tsv (CC3M)")
    if not out:
        raise ValueError(f"prompts file {prompts} lists no images")
    return out


def _read_mario_folder(folder: Path) -> list[PromptedImage]:
    out = []
    for caption in sorted(folder.rglob("caption.txt")):
        image = next(
            (
                caption.with_name(f"image{s}")
                for s in IMAGE_SUFFIXES
                if caption.with_name(f"image{s}").is_file()
            ),
            None,
        )
        if image is None:
            raise FileNotFoundError(f"{caption} has no image.jpg / image.png beside it")
        out.append(PromptedImage(image, caption.read_text(encoding="utf-8").strip()))
    if not out:
        raise ValueError(
            f"{folder} has no caption.txt files (MARIO layout); pass a prompts file (.jsonl or CC3M .tsv) instead"
        )
    return out


@dataclass(frozen=True)
class GroundTruthImage:
    """One image of a synthetic dataset and the scene it shows."""

    id: str
    image: Path
    scene: Scene


def read_groundtruth(path: str | Path, images_dir: str | Path | None = None) -> list[GroundTruthImage]:
    """Rows of a `groundtruth.jsonl`; image paths resolve against `images_dir` (default: the file's folder).

    Pointing `images_dir` at a folder of generated images laid out like the dataset evaluates those
    images against the scenes their prompts describe.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ground-truth file {path} does not exist")
    base = Path(images_dir) if images_dir is not None else path.parent
    out = []
    for where, row in _jsonl_rows(path):
        if row.get("image") is None:
            continue
        if not isinstance(row.get("scene"), dict):
            raise TypeError(f"{where}: needs a 'scene' object (Scene.to_json())")
        try:
            scene = Scene.from_json(row["scene"])
        except (KeyError, TypeError) as err:
            raise ValueError(f"{where}: 'scene' is not a Scene.to_json() object ({err})") from err
        out.append(
            GroundTruthImage(str(row.get("id", row["image"])), _resolve(base, row["image"], where), scene)
        )
    if not out:
        raise ValueError(f"ground-truth file {path} lists no images")
    return out


def read_turns(path: str | Path, images_dir: str | Path | None = None) -> list[Turn]:
    """Dialogue turns / story steps from JSONL; a line without "dialogue" is its own dialogue."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"turns file {path} does not exist")
    base = Path(images_dir) if images_dir is not None else path.parent
    turns = []
    for index, (where, row) in enumerate(_jsonl_rows(path)):
        for key in ("prediction", "reference"):
            if not isinstance(row.get(key, ""), str):
                raise TypeError(f"{where}: '{key}' must be a string")
        images = {
            key: _resolve(base, row[key], where) if row.get(key) is not None else None
            for key in ("predicted_image", "reference_image")
        }
        turns.append(
            Turn(
                prediction=row.get("prediction", ""),
                reference=row.get("reference", ""),
                predicted_image=images["predicted_image"],
                reference_image=images["reference_image"],
                dialogue=str(row.get("dialogue", f"line-{index}")),
            )
        )
    if not turns:
        raise ValueError(f"turns file {path} holds no turns")
    return turns
