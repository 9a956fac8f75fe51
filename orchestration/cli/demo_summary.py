"""The closing summary of `genops demo`: what each asset produced, its metrics and its wall time.

A pure renderer (no Dagster here), so a test can render realistic metadata at any width. Nothing is
ever cut: a value that does not fit beside its label moves to the next line, lists wrap between their
items, and a single value longer than the width is printed whole (the terminal may soft-wrap it, a
log keeps it intact) rather than truncated.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

# Facts recorded by the data and model assets, in the order shown, with their labels.
FACTS = (
    ("records_read", "records read"),
    ("records_kept", "records kept"),
    ("quarantined", "quarantined"),
    ("quarantine_reasons", "quarantine reasons"),
    ("split_counts", "splits"),
    ("injected_faults", "injected faults"),
    ("vocab_size", "vocabulary"),
    ("registered_model_uri", "registered model"),
    ("mlflow_run_id", "MLflow run"),
    ("dataset_version", "data version"),
)
# Faithfulness metrics (eval/...) are laid out as one row per measure, the model beside its ceilings.
# Recipes name them eval/<measure>_precision (sd_base), eval/vae_roundtrip_<measure>_precision,
# eval/real_images_<measure>_precision, and (the VAE's own) eval/roundtrip_<measure>.
CEILING_COLUMNS = (("", "model"), ("vae_roundtrip_", "VAE round-trip"), ("roundtrip_", "VAE round-trip"),
                   ("real_images_", "real images"))
MEASURES = {"object": "object", "attribute": "attribute", "location": "location", "all": "all three",
            "all_three": "all three", "colour_placement": "colour placement"}
INDENT = "  "
GAP = "  "


@dataclass(frozen=True)
class AssetSummary:
    """One materialized asset: its name, its metadata as plain values, and its wall time if known."""

    asset: str
    metadata: Mapping[str, Any] = field(default_factory=dict)
    seconds: float | None = None
    """Wall time of the step that materialized it (None when the run did not record one)."""


def format_value(value: Any) -> str:
    """A number to 6 significant digits (integers whole, integral floats as `1.0`), anything else as str.

    Six digits show every demo metric as computed (ratios of counts like 14/62, 1/64 = 0.015625).
    """
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        if value == int(value) and abs(value) < 1e15:
            return f"{value:.1f}"
        if 1e-4 <= abs(value) < 1e6:
            return f"{value:.6g}"
        return f"{value:.5e}"
    return str(value)


def format_seconds(seconds: float) -> str:
    """Seconds with one decimal, plus minutes from a minute on: `492.3 s (8.2 min)`."""
    return f"{seconds:.1f} s" + (f" ({seconds / 60:.1f} min)" if seconds >= 60 else "")


def _tokens(value: Any) -> list[str]:
    """A value as the pieces a line may break between: `key=value` items of a mapping, list items."""
    if isinstance(value, Mapping):
        return [f"{k}={format_value(v)}" for k, v in value.items()] or ["none"]
    if isinstance(value, list | tuple):
        return [format_value(v) for v in value] or ["none"]
    return [format_value(value)]


def _row(label: str, tokens: Sequence[str], label_width: int, width: int, indent: str = INDENT) -> list[str]:
    """`label  value` lines: tokens joined by ', ' and wrapped between tokens, never inside one."""
    pieces = [token + "," for token in tokens[:-1]] + [tokens[-1]]
    head = f"{indent}{label:<{label_width}}{GAP}"
    if len(head) + len(pieces[0]) <= width:
        lines, column, current = [], " " * len(head), head
    else:  # not even the first piece fits beside the label: the value goes below it
        lines, column = [f"{indent}{label}"], indent * 2
        current = column
    empty = True
    for piece in pieces:
        if not empty and len(current) + 1 + len(piece) > width:
            lines.append(current)
            current, empty = column, True
        current += piece if empty else " " + piece
        empty = False
    lines.append(current)
    return lines


def _faithfulness(metrics: Mapping[str, Any]) -> tuple[list[tuple[str, dict[str, str]]], list[str]]:
    """The eval/ measures found, as (measure, {column: value}) in MEASURES order, and the keys used."""
    cells: dict[str, dict[str, str]] = {}
    used: list[str] = []
    for key, value in metrics.items():
        if not key.startswith("eval/") or not isinstance(value, int | float):
            continue
        name = key.removeprefix("eval/")
        for prefix, column in sorted(CEILING_COLUMNS, key=lambda c: -len(c[0])):  # longest prefix first
            if prefix and not name.startswith(prefix):
                continue
            measure = name.removeprefix(prefix).removesuffix("_precision")
            if measure in MEASURES:
                cells.setdefault(MEASURES[measure], {})[column] = format_value(value)
                used.append(key)
            break
    order = list(dict.fromkeys(MEASURES.values()))
    return [(m, cells[m]) for m in order if m in cells], used


def _faithfulness_lines(rows: list[tuple[str, dict[str, str]]], label_width: int, width: int) -> list[str] | None:
    """The measures as a small table (model beside its ceilings), or None when it cannot fit `width`."""
    columns = [c for c in dict.fromkeys(name for _, name in CEILING_COLUMNS) if any(c in r for _, r in rows)]
    cell = max(len(c) for c in columns + [v for _, r in rows for v in r.values()])
    title = "faithfulness (eval/)"
    first = max(label_width, len(title), *(len(m) + 2 for m, _ in rows))
    lines = [f"{INDENT}{title:<{first}}" + "".join(f"{GAP}{c:>{cell}}" for c in columns)]
    for measure, values in rows:
        lines.append(f"{INDENT}{INDENT + measure:<{first}}"
                     + "".join(f"{GAP}{values.get(c, '-'):>{cell}}" for c in columns))
    return lines if max(map(len, lines)) <= width else None


def asset_rows(
    summary: AssetSummary,
) -> tuple[list[tuple[str, list[str]]], list[tuple[str, dict[str, str]]], list[tuple[str, list[str]]]]:
    """An asset's (label, value pieces) rows, its faithfulness measures, and those measures as plain rows
    (for a width too narrow for their table), from its metadata."""
    meta = summary.metadata
    rows = [(label, _tokens(meta[key])) for key, label in FACTS if meta.get(key) not in (None, "", {})]
    if meta.get("train_seconds") is not None:
        rows.append(("training job", [format_seconds(float(meta["train_seconds"]))]))
    metrics = meta.get("final_metrics") or {}
    measures, used = _faithfulness(metrics)
    rows.extend((key, _tokens(value)) for key, value in metrics.items()
                if key not in used and isinstance(value, int | float | str))
    return rows, measures, [(key, _tokens(metrics[key])) for key in used]


def render_summary(
    assets: Sequence[AssetSummary],
    width: int = 80,
    *,
    run_id: str | None = None,
    total_seconds: float | None = None,
) -> str:
    """The summary as plain text lines of at most `width` characters (longer only for a single value
    that is itself longer than the line), one block per asset, then the total."""
    width = max(width, 40)
    rule = "-" * width
    known = [a.seconds for a in assets if a.seconds is not None]
    lines = [f"genops demo: {len(assets)} assets materialized"]
    if total_seconds is not None:
        took = f" in {format_seconds(total_seconds)}"
        if len(lines[0] + took) <= width:
            lines[0] += took
        else:
            lines.append(took.strip())
    lines += ([f"run {run_id}"] if run_id else []) + [rule]
    for summary in assets:
        rows, measures, measure_rows = asset_rows(summary)
        time = f"wall {format_seconds(summary.seconds)}" if summary.seconds is not None else "wall time not recorded"
        name = summary.asset
        lines.append(name + " " * max(1, width - len(name) - len(time)) + time)
        label_width = min(max((len(label) for label, _ in rows), default=0), width // 2)
        for label, tokens in rows:
            lines.extend(_row(label, tokens, label_width, width))
        if measures:
            table = _faithfulness_lines(measures, label_width, width)
            if table is None:  # too narrow for the table: one row per metric instead
                table = [line for key, tokens in measure_rows for line in _row(key, tokens, label_width, width)]
            lines.extend(table)
    lines.append(rule)
    if known:
        timed = "" if len(known) == len(assets) else f" ({len(known)} of {len(assets)} assets timed)"
        lines.append(f"asset steps together: {format_seconds(sum(known))}{timed}")
    if total_seconds is not None:
        lines.append(f"total wall time: {format_seconds(total_seconds)}")
    return "\n".join(lines) + "\n"
