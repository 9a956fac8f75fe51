"""Readers (and writers) of the real public data formats the three papers train and evaluate on.

Every format module has `read(src: Path) -> Iterator[Record | ReadFailure]`. A reader never raises
on bad content: a malformed line or file, a missing required field or text in the wrong encoding
becomes a `ReadFailure(ref, reason)`. Whether image files exist, decode and are large enough is
validation's job, so records name their (absolute) image paths without opening the pixels. A
`src` that does not exist or holds none of the expected files raises FileNotFoundError naming the
path and what should be there, when `read` is called.

Where the synthetic world wrote `groundtruth.jsonl` beside a corpus (see `groundtruth.py`),
records carry it in `groundtruth`; real corpora give None. Formats the synthetic world writes
have a `write_*` function beside their reader.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

from components.data.formats import (
    cc3m,
    laion_parquet,
    mario,
    mario_eval,
    mmdialog,
    paraimage,
    paraprompts,
    vist,
    vist_sis,
)
from components.data.records import ReadFailure, Record

Reader = Callable[[Path], Iterator[Record | ReadFailure]]

FORMATS: dict[str, Reader] = {
    "cc3m": cc3m.read,
    "vist": vist.read,
    "vist-sis": vist_sis.read,
    "mmdialog": mmdialog.read,
    "paraprompts": paraprompts.read,
    "paraimage": paraimage.read,
    "mario": mario.read,
    "mario-eval": mario_eval.read,
    "laion-parquet": laion_parquet.read,
}


def read_corpus(fmt: str, src: Path) -> Iterator[Record | ReadFailure]:
    """Records of the corpus at `src` in format `fmt` (one of `FORMATS`)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown data format {fmt!r}; valid formats: {', '.join(FORMATS)}")
    return FORMATS[fmt](Path(src))
