"""CC3M as MiniGPT-5 reads it: a TSV of caption-image pairs.

Layout (MiniGPT-5's `datasets/CC3M`)::

    cc3m_val.tsv            header `caption<TAB>image_path`, then one pair per line
    val/000007775.jpg       images, paths in the TSV relative to the TSV's folder

`src` is the .tsv file or a folder holding exactly one .tsv. Fields are split on the tab with no
quoting (a caption cannot hold a tab or a newline). Each data line becomes a `CaptionImagePair`
whose id is the image path as written, without its suffix ("val/000007775"). A line with the
wrong number of fields, no image path, or bytes that are not UTF-8 becomes a `ReadFailure`
("file:line"); an empty caption is kept (validation decides). Blank lines are skipped. Captions are
tidied (`files.tidy_text`: HTML character references, runs of whitespace), noted in
extra["normalised"].
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path, PurePosixPath

from components.data.formats.files import (
    decode_text,
    normalised_extra,
    printable,
    relative_posix,
    single_file,
    tidy_text,
    under,
    utf8_problem,
)
from components.data.formats.groundtruth import load_groundtruth
from components.data.records import CaptionImagePair, ReadFailure
from components.fileio import atomic_write_text

SOURCE = "cc3m"
HEADER = ("caption", "image_path")


def read(src: Path) -> Iterator[CaptionImagePair | ReadFailure]:
    """Pairs of the CC3M TSV at `src` (the .tsv, or a folder with exactly one)."""
    tsv = single_file(src, ".tsv", "a CC3M TSV with header 'caption<TAB>image_path'")
    return _read(tsv)


def _read(tsv: Path) -> Iterator[CaptionImagePair | ReadFailure]:
    folder = tsv.parent
    groundtruth = load_groundtruth(folder)
    lines = decode_text(tsv.read_bytes()).split("\n")
    header = [h.strip() for h in lines[0].rstrip("\r").split("\t")]
    if not all(name in header for name in HEADER):
        yield ReadFailure(
            ref=f"{tsv}:1",
            reason=f"header must name the columns {list(HEADER)} (tab-separated), got {header}",
            raw=printable(lines[0]),
        )
        return
    caption_col, path_col = header.index("caption"), header.index("image_path")
    for lineno, line in enumerate(lines[1:], start=2):
        line = line.rstrip("\r")
        if not line.strip():
            continue
        ref = f"{tsv}:{lineno}"
        problem = utf8_problem(line, "this line")
        if problem:
            yield ReadFailure(ref=ref, reason=problem, raw=printable(line))
            continue
        fields = line.split("\t")
        if len(fields) != len(header):
            yield ReadFailure(
                ref=ref,
                reason=f"expected {len(header)} tab-separated fields, got {len(fields)}",
                raw=printable(line),
            )
            continue
        relative = fields[path_col].strip()
        if not relative:
            yield ReadFailure(ref=ref, reason="missing required field image_path", raw=printable(line))
            continue
        image_path = under(folder, relative)
        caption, changes = tidy_text(fields[caption_col])
        yield CaptionImagePair(
            id=str(PurePosixPath(relative).with_suffix("")),
            image_path=image_path,
            caption=caption,
            source=SOURCE,
            groundtruth=groundtruth.for_image(image_path),
            extra=normalised_extra({}, changes),
        )


def write_cc3m(tsv: Path, pairs: Iterable[CaptionImagePair]) -> Path:
    """Write `pairs` as a CC3M TSV at `tsv`; images must already lie inside the TSV's folder."""
    tsv = Path(tsv)
    rows = ["\t".join(HEADER)]
    for pair in pairs:
        if "\t" in pair.caption or "\n" in pair.caption:
            raise ValueError(
                f"caption of {pair.id!r} holds a tab or newline, which the CC3M TSV cannot store"
            )
        rows.append(f"{pair.caption}\t{relative_posix(pair.image_path, tsv.parent, f'image of {pair.id!r}')}")
    atomic_write_text(tsv, "\n".join(rows) + "\n")
    return tsv
