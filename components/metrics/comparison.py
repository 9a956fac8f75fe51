"""Comparison tables in the shape of the papers' tables: one row per model / baseline, one column per metric.

ParaDiffusion Tables 6/10, MiniGPT-5 Tables 1/5/6 and VLAD Tables I/II all put the methods in rows
and the metrics in columns with an arrow saying which way is better; here every table also carries
the rows that give the scale (the ceiling: the same metric on the ground-truth images; the floor: a
model that ignores the condition).
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Column:
    """One metric column: the metric key, its header as the paper writes it, and which way is better."""

    key: str
    header: str
    higher_is_better: bool


@dataclass(frozen=True)
class Row:
    """One method: its name, what kind of row it is (model / baseline / ceiling / floor), its metrics."""

    name: str
    kind: str
    metrics: dict[str, float]


def _cell(row: Row, column: Column) -> str:
    value = row.metrics.get(column.key)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.4f}" if abs(value) < 100 else f"{value:.1f}"


def _header(column: Column) -> str:
    return f"{column.header} {'↑' if column.higher_is_better else '↓'}"


def comparison_markdown(title: str, columns: Sequence[Column], rows: Sequence[Row], notes: str = "") -> str:
    """A markdown table: `Method | <metric> ↑/↓ ...`, rows in the order given."""
    if not rows:
        raise ValueError(f"table {title!r} has no rows")
    lines = [f"### {title}", "", "| Method | " + " | ".join(_header(c) for c in columns) + " |",
             "|---|" + "---:|" * len(columns)]
    for row in rows:
        name = row.name if row.kind == "model" else f"*{row.name}*"
        lines.append(f"| {name} | " + " | ".join(_cell(row, c) for c in columns) + " |")
    if notes:
        lines += ["", notes]
    return "\n".join(lines) + "\n"


def comparison_html(title: str, columns: Sequence[Column], rows: Sequence[Row], notes: str = "") -> str:
    """The same table as a standalone HTML page."""
    if not rows:
        raise ValueError(f"table {title!r} has no rows")
    head = "".join(f"<th>{html.escape(_header(c))}</th>" for c in columns)
    body = "".join(
        f'<tr class="{html.escape(row.kind)}"><td>{html.escape(row.name)}</td>'
        + "".join(f"<td>{_cell(row, c)}</td>" for c in columns) + "</tr>"
        for row in rows
    )
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            "<style>table{border-collapse:collapse}td,th{border:1px solid #999;padding:4px 8px;text-align:right}"
            "td:first-child{text-align:left}tr.ceiling,tr.floor{font-style:italic;color:#555}</style></head>"
            f"<body><h3>{html.escape(title)}</h3><table><tr><th>Method</th>{head}</tr>{body}</table>"
            f"<p>{html.escape(notes)}</p></body></html>\n")
