"""Rendering for the terminal: JSON, CSV and aligned text tables (all to stdout)."""

from __future__ import annotations

import csv
import io
import json
import math
import sys
from typing import Any, Sequence

from ..report import Report

__all__ = ["emit_json", "render_table", "emit_csv", "report_rows", "fmt"]


def emit_json(payload: dict[str, Any]) -> None:
    json.dump(payload, sys.stdout, indent=2)
    sys.stdout.write("\n")


def fmt(x: float, digits: int = 2) -> str:
    return f"{x:,.{digits}f}" if math.isfinite(x) else str(x)


def report_rows(label: str, report: Report, splits: Sequence[str]) -> list[str]:
    """One table row: label, perplexity per split, bits per byte per split."""
    return [label, *(fmt(report.splits[s].perplexity) for s in splits),
            *(fmt(report.splits[s].bits_per_byte, 3) for s in splits)]


def render_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """An aligned plain-text table: first column left-aligned, the others right-aligned."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    def line(r: Sequence[str]) -> str:
        cells = [str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))]
        return "  ".join(cells).rstrip()
    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(header), rule, *map(line, rows)])


def emit_csv(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    sys.stdout.write(buf.getvalue())
