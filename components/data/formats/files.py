"""File handling shared by every format module: strict text decoding, locating inputs.

Writers use `components.fileio` (temporary file + `os.replace`), so a reader never sees half a file.

Text is decoded as UTF-8 with `surrogateescape`: bytes that are not UTF-8 survive as lone
surrogates, so one bad line or field can be reported (`utf8_problem`) while the rest of the file
is still read. That is how a latin-1 caption becomes a `ReadFailure` naming the encoding instead
of mojibake.

Text that is only untidy is normalised, not rejected: `tidy_text` decodes HTML character
references and collapses runs of whitespace, and readers record what it changed in the record's
`extra["normalised"]`, which validation counts.
"""

from __future__ import annotations

import html
import os
import re
from collections.abc import Iterable
from pathlib import Path

_SURROGATES = re.compile("[\udc80-\udcff]")
# Only references closed by ';'. html.unescape alone also decodes HTML5's legacy names without one,
# which turns ordinary text into symbols: "Fish&notes" -> "Fish¬es", "R&copy" -> "R©".
_CHARACTER_REFERENCE = re.compile(r"&(?:#[0-9]{1,7}|#[xX][0-9a-fA-F]{1,6}|[A-Za-z][A-Za-z0-9]{1,31});")

HTML_ENTITIES = "html_entities"
WHITESPACE = "whitespace"


def decode_text(data: bytes) -> str:
    """Decode bytes as UTF-8 (a leading BOM is dropped); undecodable bytes become lone surrogates."""
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    return data.decode("utf-8", errors="surrogateescape")


def utf8_problem(text: str, what: str) -> str | None:
    """A reason naming the encoding problem if `text` (from `decode_text`) held non-UTF-8 bytes, else None."""
    match = _SURROGATES.search(text)
    if match is None:
        return None
    byte = ord(match.group()) - 0xDC00
    return (
        f"{what} is not valid UTF-8 (byte 0x{byte:02x} at character {match.start()}; "
        "wrong encoding, e.g. latin-1?): re-encode the file as UTF-8"
    )


def tidy_text(text: str) -> tuple[str, tuple[str, ...]]:
    """`text` with HTML character references decoded and whitespace collapsed, and what changed.

    Web-scraped captions carry both: LAION alt-text and MMDialog tweets hold "&amp;" and "&gt;"
    (MiniGPT-5's MMDialog sample has them), MARIO-LAION caption.txt has runs of spaces
    ("Blechschilder  MOORE"), and a quoted CSV prompt may hold CRLF line breaks. Returns the text
    stripped, with every run of whitespace (newlines, tabs, no-break spaces) made one space, and the
    codes of the changes: `HTML_ENTITIES`, `WHITESPACE` (leading/trailing whitespace alone is not
    counted: every line-based format ends its lines with some).
    """
    changes = []
    unescaped = _CHARACTER_REFERENCE.sub(lambda m: html.unescape(m.group()), text)
    if unescaped != text:
        changes.append(HTML_ENTITIES)
    collapsed = " ".join(unescaped.split())
    if collapsed != unescaped.strip():
        changes.append(WHITESPACE)
    return collapsed, tuple(changes)


def normalised_extra(extra: dict, changes: Iterable[str]) -> dict:
    """`extra` with the normalisation codes `changes` added under "normalised" (sorted, once each)."""
    codes = set(extra.get("normalised", ())) | set(changes)
    if not codes:
        return extra
    return {**extra, "normalised": sorted(codes)}


def printable(text: str, limit: int = 300) -> str:
    """`text` with undecodable bytes shown as U+FFFD, cut to `limit` characters, for `ReadFailure.raw`."""
    text = _SURROGATES.sub("\ufffd", text)
    return text if len(text) <= limit else text[:limit] + "..."


def absolute(path: Path) -> Path:
    """`path` made absolute and normalised ('..' folded, no symlink resolution): the form records carry."""
    return Path(os.path.normpath(Path(path).absolute()))


def under(base: Path, relative: str) -> Path:
    """Absolute, normalised path of `relative` taken from folder `base`."""
    return absolute(Path(base) / relative)


def relative_posix(path: Path, base: Path, what: str) -> str:
    """`path` relative to `base` in POSIX form; ValueError naming `what` if it lies outside `base`."""
    path, base = absolute(path), absolute(base)
    try:
        return path.relative_to(base).as_posix()
    except ValueError:
        raise ValueError(
            f"{what} {path} is not inside {base}; the format stores paths relative to it"
        ) from None


def require_dir(src: Path, expected: str) -> Path:
    """`src` as a Path if it is a folder, else FileNotFoundError saying what should be there."""
    src = Path(src)
    if not src.is_dir():
        raise FileNotFoundError(f"{src} is not a folder; expected {expected}")
    return src


def single_file(src: Path, suffix: str, expected: str) -> Path:
    """`src` if it is a file, else the one `*{suffix}` file directly inside folder `src`.

    FileNotFoundError (naming the path and `expected`) if `src` does not exist, or holds no such
    file or more than one.
    """
    src = Path(src)
    if src.is_file():
        return src
    if not src.is_dir():
        raise FileNotFoundError(f"{src} does not exist; expected {expected}")
    found = sorted(p for p in src.iterdir() if p.is_file() and p.name.endswith(suffix))
    if len(found) != 1:
        listed = ", ".join(p.name for p in found) or "none"
        raise FileNotFoundError(
            f"{src} must hold exactly one *{suffix} file, found: {listed}; expected {expected}"
        )
    return found[0]
