"""File handling shared by every format module: atomic writes, strict text decoding, locating inputs.

Writes go to a temporary file in the destination folder and are moved into place with
`os.replace`, so a reader never sees half a file (no fsync: the guarantee is against a crashed
process, not a power cut).

Text is decoded as UTF-8 with `surrogateescape`: bytes that are not UTF-8 survive as lone
surrogates, so one bad line or field can be reported (`utf8_problem`) while the rest of the file
is still read. That is how a latin-1 caption becomes a `ReadFailure` naming the encoding instead
of mojibake.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

_SURROGATES = re.compile("[\udc80-\udcff]")


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a temporary file in the same folder and `os.replace`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_text_atomic(path: Path, text: str) -> None:
    """Write `text` as UTF-8 (no newline translation) atomically."""
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: Path, obj: Any, indent: int | None = 2, sort_keys: bool = True) -> None:
    """Write `obj` as UTF-8 JSON (keys sorted unless the caller's order matters) atomically."""
    write_text_atomic(path, json.dumps(obj, indent=indent, sort_keys=sort_keys, ensure_ascii=False) + "\n")


def write_jsonl_atomic(path: Path, rows: list[dict[str, Any]]) -> None:
    """Write one compact JSON object per line (sorted keys) atomically."""
    lines = [json.dumps(row, sort_keys=True, ensure_ascii=False, separators=(",", ":")) for row in rows]
    write_text_atomic(path, "".join(line + "\n" for line in lines))


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
