"""MMDialog conversations (JSON Lines), as MiniGPT-5 reads them.

Layout (MiniGPT-5's `datasets/MMDialog/test`)::

    test_conversations.txt      one conversation per line:
                                {"conversation_id": 0, "conversation": [{"turn": [{"__TEXT__": "..."},
                                                                                   {"__MEDIA__": "<id>"}]}, ...]}
    <id>.jpg                    images, beside the conversations file

`src` is a conversations file (.txt or .jsonl) or a folder: every `*conversations*.txt` and
`*conversations*.jsonl` under it (recursively, sorted) is read, each with the images in its own
folder. A conversation becomes a `Story` (id = conversation_id) with one step per turn: the turn's
text (empty when it has none) and its image (None when it has none: text-only turns are normal,
e.g. the replies after the photos in MiniGPT-5's sample). Texts are tidied (`files.tidy_text`; the
tweets hold "&amp;" and "&gt;"), noted in extra["normalised"]. A line that is not valid
JSON (a truncated line, say), lacks conversation_id/conversation, is malformed, holds bytes that
are not UTF-8 or a turn with more than one image (a step carries one) is a `ReadFailure`
("file:line"). Other top-level keys (e.g. negative_candidate_media_keys) are left out.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from components.data.formats.files import (
    absolute,
    decode_text,
    normalised_extra,
    printable,
    tidy_text,
    utf8_problem,
)
from components.data.formats.groundtruth import GroundTruth, load_groundtruth
from components.data.records import ReadFailure, Story, StoryStep
from components.fileio import atomic_write_text

SOURCE = "mmdialog"
TEXT, MEDIA = "__TEXT__", "__MEDIA__"


def read(src: Path) -> Iterator[Story | ReadFailure]:
    """Conversations of the MMDialog JSONL file(s) at `src` (a file, or a folder searched recursively)."""
    src = Path(src)
    expected = (
        "MMDialog JSON Lines (*conversations*.txt or *conversations*.jsonl) with <media id>.jpg beside them"
    )
    if src.is_file():
        return _read(src.parent, [src])
    if not src.is_dir():
        raise FileNotFoundError(f"{src} does not exist; expected {expected}")
    files = sorted(p for p in src.rglob("*conversations*") if p.is_file() and p.suffix in (".txt", ".jsonl"))
    if not files:
        raise FileNotFoundError(f"{src} holds no *conversations*.txt/.jsonl file; expected {expected}")
    return _read(src, files)


def _read(folder: Path, files: list[Path]) -> Iterator[Story | ReadFailure]:
    groundtruth = load_groundtruth(folder)
    for path in files:
        for lineno, line in enumerate(decode_text(path.read_bytes()).split("\n"), start=1):
            if line.strip():
                yield _conversation(path, line, groundtruth, f"{path}:{lineno}")


def _conversation(path: Path, line: str, groundtruth: GroundTruth, ref: str) -> Story | ReadFailure:
    problem = utf8_problem(line, "this line")
    if problem:
        return ReadFailure(ref=ref, reason=problem, raw=printable(line))
    try:
        data = json.loads(line)
    except json.JSONDecodeError as exc:
        return ReadFailure(
            ref=ref,
            reason=f"line is not valid JSON (truncated?): {exc.msg} (column {exc.colno})",
            raw=printable(line),
        )
    if (
        not isinstance(data, dict)
        or "conversation_id" not in data
        or not isinstance(data.get("conversation"), list)
    ):
        return ReadFailure(
            ref=ref,
            reason="expected an object with 'conversation_id' and a 'conversation' list",
            raw=printable(line),
        )
    story_id = str(data["conversation_id"])
    steps, changes = [], set()
    for index, turn in enumerate(data["conversation"]):
        items = turn.get("turn") if isinstance(turn, dict) else None
        if not isinstance(items, list) or not all(isinstance(item, dict) for item in items):
            return ReadFailure(
                ref=ref,
                reason=f"turn {index} must be {{'turn': [{{'{TEXT}': ...}}, {{'{MEDIA}': ...}}]}}",
                raw=printable(line),
            )
        texts = [item[TEXT] for item in items if TEXT in item]
        media = [item[MEDIA] for item in items if MEDIA in item]
        if len(media) > 1:
            return ReadFailure(ref=ref, reason=f"turn {index} holds {len(media)} images; a step carries one")
        if not all(isinstance(t, str) for t in texts) or not all(isinstance(m, (str, int)) for m in media):
            return ReadFailure(
                ref=ref,
                reason=f"turn {index}: {TEXT} must be a string and {MEDIA} an id",
                raw=printable(line),
            )
        image = absolute(path.parent / f"{media[0]}.jpg") if media else None
        text, turn_changes = tidy_text(" ".join(texts))
        changes.update(turn_changes)
        steps.append(
            StoryStep(
                text=text,
                image_path=image,
                groundtruth=groundtruth.for_step(story_id, index),
            )
        )
    if not steps:
        return ReadFailure(ref=ref, reason="conversation has no turns")
    return Story(
        id=story_id, steps=tuple(steps), source=SOURCE, extra=normalised_extra({"file": path.name}, changes)
    )


def write_mmdialog(path: Path, stories: Iterable[Story]) -> Path:
    """Write `stories` as MMDialog JSON Lines at `path`.

    A step's media id is its image file's stem; images must lie directly in the file's folder.
    Story ids that are plain integers are written as JSON integers, as MMDialog does.
    """
    path = Path(path)
    lines = []
    for story in stories:
        turns = []
        for index, step in enumerate(story.steps):
            items: list[dict[str, Any]] = [{TEXT: step.text}]
            if step.image_path is not None:
                image = Path(step.image_path)
                if absolute(image).parent != absolute(path).parent or image.suffix != ".jpg":
                    raise ValueError(
                        f"story {story.id!r} turn {index}: image {image} must be a .jpg beside {path}"
                    )
                items.append({MEDIA: image.stem})
            turns.append({"turn": items})
        conversation_id: int | str = (
            int(story.id) if story.id.isdigit() and str(int(story.id)) == story.id else story.id
        )
        lines.append(
            json.dumps({"conversation_id": conversation_id, "conversation": turns}, ensure_ascii=False)
        )
    atomic_write_text(path, "".join(line + "\n" for line in lines))
    return path
