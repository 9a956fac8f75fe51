"""MARIO-Eval (TextDiffuser's text-rendering benchmark): prompt lists whose words to draw are 'quoted'.

Layout (TextDiffuser's `eval/MARIOEval_generate.py` and `ocr_eval.py`)::

    MARIOEval/
      LAIONEval4000/LAIONEval4000.txt    one prompt per line; the prompt's index is its line index
      LAIONEval4000/images/<index>.jpg   ground-truth images (only the LAION, TMDB, OpenLibrary subsets)
      DrawBenchText/DrawBenchText.txt
      ...

`src` is the MARIOEval folder (every `<name>/<name>.txt` under it, sorted) or one subset folder.
Each line becomes a `PromptRecord`: id "<subset>/<index>" (0-based, blank lines counted, as
TextDiffuser indexes them), category = subset, `quoted_words` = the text between single quotes
split on whitespace, exactly as written (metrics lower-case them, as `ocr_eval.py` does). When the
subset has an images/ folder, extra["image"] is the absolute path of `<index>.jpg` there (missing
files are validation's concern). A line with bytes that are not UTF-8 is a `ReadFailure`
("file:line"); a blank line is kept as an empty prompt (validation decides), so indices stay aligned.
Prompts are tidied (`files.tidy_text`) before the quoted words are taken, noted in
extra["normalised"].
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from pathlib import Path

from components.data.formats.files import (
    absolute,
    decode_text,
    normalised_extra,
    printable,
    tidy_text,
    utf8_problem,
)
from components.data.formats.groundtruth import load_groundtruth
from components.data.records import PromptRecord, ReadFailure
from components.fileio import atomic_write_text

SOURCE = "mario-eval"
_QUOTED = re.compile(r"'(.*?)'")


def quoted_words(prompt: str) -> tuple[str, ...]:
    """Words inside 'single quotes', split on whitespace, as written (TextDiffuser's get_key_words)."""
    return tuple(word for match in _QUOTED.findall(prompt) for word in match.split())


def read(src: Path) -> Iterator[PromptRecord | ReadFailure]:
    """Prompts of the MARIO-Eval folder (or one subset folder) at `src`."""
    src = Path(src)
    expected = "MARIO-Eval prompt lists <subset>/<subset>.txt (one prompt per line)"
    if not src.is_dir():
        raise FileNotFoundError(f"{src} is not a folder; expected {expected}")
    if (src / f"{src.name}.txt").is_file():
        subsets = [src]
    else:
        subsets = sorted(d for d in src.iterdir() if d.is_dir() and (d / f"{d.name}.txt").is_file())
    if not subsets:
        raise FileNotFoundError(f"{src} holds no <subset>/<subset>.txt; expected {expected}")
    return _read(src, subsets)


def _read(src: Path, subsets: list[Path]) -> Iterator[PromptRecord | ReadFailure]:
    groundtruth = load_groundtruth(src)
    for subset in subsets:
        path = subset / f"{subset.name}.txt"
        images = subset / "images"
        lines = decode_text(path.read_bytes()).split("\n")
        if lines and lines[-1] == "":
            lines.pop()
        for index, line in enumerate(lines):
            line = line.rstrip("\r")
            problem = utf8_problem(line, "this prompt")
            if problem:
                yield ReadFailure(ref=f"{path}:{index + 1}", reason=problem, raw=printable(line))
                continue
            record_id = f"{subset.name}/{index}"
            prompt, changes = tidy_text(line)
            yield PromptRecord(
                id=record_id,
                prompt=prompt,
                source=SOURCE,
                category=subset.name,
                quoted_words=quoted_words(prompt),
                groundtruth=groundtruth.for_id(record_id),
                extra=normalised_extra(
                    {"image": str(absolute(images / f"{index}.jpg"))} if images.is_dir() else {}, changes
                ),
            )


def write_mario_eval(root: Path, subset: str, prompts: Iterable[str]) -> Path:
    """Write `root/<subset>/<subset>.txt`, one prompt per line; reference images go to `<subset>/images/`."""
    prompts = list(prompts)
    for index, prompt in enumerate(prompts):
        if "\n" in prompt or "\r" in prompt:
            raise ValueError(
                f"prompt {index} of {subset!r} holds a newline; MARIO-Eval stores one prompt per line"
            )
    path = Path(root) / subset / f"{subset}.txt"
    atomic_write_text(path, "".join(p + "\n" for p in prompts))
    return path
