"""ParaPrompts (ParaDiffusion's paragraph benchmark): a CSV of prompts with categories.

Layout (ParaDiffusion's `ParaPrompts-400/ParaPrompts_400.csv`)::

    Image,Prompt,Category,Prompt_Chinese
    0f04e2fe766b54523b7fe89174c7b2eb.JPEG,"A large pot was placed on ...",Human,一个烧着火的火炉...

A standard CSV read with the csv module (quoted fields may hold commas, doubled quotes and line
breaks; LF or CRLF line endings), UTF-8 with or without BOM. `src` is the .csv or a
folder holding exactly one. Each row becomes a `PromptRecord`: id = the Image value, category
kept, extra = {"image": Image, "prompt_chinese": Prompt_Chinese (may be empty)}. ParaPrompts
carry no words to render, so `quoted_words` stays empty. A header without Image, Prompt and
Category is one `ReadFailure`; a row with the wrong number of fields, no Image value or bytes that
are not UTF-8 is a `ReadFailure` ("file:line"). An empty prompt is kept (validation decides).
Prompts are tidied (`files.tidy_text`: a line break inside a quoted prompt becomes a space), noted
in extra["normalised"]; Prompt_Chinese is kept as written (stripped).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Iterator
from pathlib import Path

from components.data.formats.files import (
    decode_text,
    normalised_extra,
    printable,
    single_file,
    tidy_text,
    utf8_problem,
)
from components.data.formats.groundtruth import load_groundtruth
from components.data.records import PromptRecord, ReadFailure
from components.fileio import atomic_write_text

SOURCE = "paraprompts"
COLUMNS = ("Image", "Prompt", "Category", "Prompt_Chinese")
REQUIRED = ("Image", "Prompt", "Category")


def read(src: Path) -> Iterator[PromptRecord | ReadFailure]:
    """Prompts of the ParaPrompts CSV at `src` (the .csv, or a folder with exactly one)."""
    path = single_file(src, ".csv", "a ParaPrompts CSV with columns " + ",".join(COLUMNS))
    return _read(path)


def _read(path: Path) -> Iterator[PromptRecord | ReadFailure]:
    groundtruth = load_groundtruth(path.parent)
    rows = csv.reader(io.StringIO(decode_text(path.read_bytes()), newline=""))
    header = next(rows, None)
    if header is None or not all(name in header for name in REQUIRED):
        yield ReadFailure(
            ref=f"{path}:1", reason=f"header must name the columns {list(REQUIRED)}, got {header}"
        )
        return
    col = {name: header.index(name) for name in COLUMNS if name in header}
    last_line = rows.line_num
    for row in rows:
        ref, last_line = f"{path}:{last_line + 1}", rows.line_num
        if not any(field.strip() for field in row):
            continue
        raw = printable(",".join(row))
        problem = utf8_problem(",".join(row), "this row")
        if problem:
            yield ReadFailure(ref=ref, reason=problem, raw=raw)
            continue
        if len(row) != len(header):
            yield ReadFailure(ref=ref, reason=f"expected {len(header)} fields, got {len(row)}", raw=raw)
            continue
        image = row[col["Image"]].strip()
        if not image:
            yield ReadFailure(ref=ref, reason="missing required field Image", raw=raw)
            continue
        prompt, changes = tidy_text(row[col["Prompt"]])
        yield PromptRecord(
            id=image,
            prompt=prompt,
            source=SOURCE,
            category=row[col["Category"]].strip() or None,
            groundtruth=groundtruth.for_id(image),
            extra=normalised_extra(
                {
                    "image": image,
                    "prompt_chinese": row[col["Prompt_Chinese"]].strip() if "Prompt_Chinese" in col else "",
                },
                changes,
            ),
        )


def write_paraprompts(path: Path, prompts: Iterable[PromptRecord]) -> Path:
    """Write `prompts` as a ParaPrompts CSV at `path` (Image = id, Prompt_Chinese from extra or empty)."""
    out = io.StringIO(newline="")
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(COLUMNS)
    for p in prompts:
        writer.writerow([p.id, p.prompt, p.category or "", p.extra.get("prompt_chinese", "")])
    atomic_write_text(Path(path), out.getvalue())
    return Path(path)
