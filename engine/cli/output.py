"""Rendering for the terminal: JSON, CSV and aligned text tables (all to stdout)."""

from __future__ import annotations

import csv
import io
import json
import math
import sys
import textwrap
from typing import Any, Mapping, Sequence

from ..bootstrap import RESAMPLES
from ..report import Report

__all__ = ["emit_json", "render_table", "emit_csv", "report_header", "report_rows", "csv_header", "csv_row",
           "interval_notes", "print_notes", "fmt"]


def emit_json(payload: dict[str, Any]) -> None:
    json.dump(payload, sys.stdout, indent=2)
    sys.stdout.write("\n")


def fmt(x: float, digits: int = 2) -> str:
    return f"{x:,.{digits}f}" if math.isfinite(x) else str(x)


def _interval(x: tuple[float, float] | None) -> str:
    return "-" if x is None else f"[{fmt(x[0])}, {fmt(x[1])}]"


def report_header(splits: Sequence[str]) -> list[str]:
    """The header of ``report_rows``' tables."""
    return ["", *(c for s in splits for c in (f"ppl {s}", f"95% {s}", f"docs 95% {s}")),
            *(f"bpb {s}" for s in splits)]


def report_rows(label: str, report: Report, splits: Sequence[str]) -> list[str]:
    """One table row: label; per split the perplexity, its 95% interval (``Report.interval``:
    ``exact`` for exact figures, ``-`` for an estimate without one) and its bootstrap interval
    over documents (``-`` where not computed); bits per byte per split."""
    cells = []
    for s in splits:
        exact = not report.is_estimate
        cells += [fmt(report.splits[s].perplexity), "exact" if exact else _interval(report.interval.get(s)),
                  _interval(report.documents.get(s))]
    return [label, *cells, *(fmt(report.splits[s].bits_per_byte, 3) for s in splits)]


CSV_COLUMNS = ("ppl", "lo", "hi", "docs lo", "docs hi")
"""Per split, the CSV's columns: ``report_rows``' figures as plain numbers (empty where none)."""


def csv_header(splits: Sequence[str]) -> list[str]:
    return ["", *(f"{c} {s}" for s in splits for c in CSV_COLUMNS), *(f"bpb {s}" for s in splits)]


def csv_row(label: str, report: Report, splits: Sequence[str]) -> list[Any]:
    """``csv_header``'s row of a report: an exact figure's interval is the figure itself."""
    cells: list[Any] = []
    for s in splits:
        interval = report.interval.get(s) or ("", "")
        cells += [report.splits[s].perplexity, *interval, *report.documents.get(s, ("", ""))]
    return [label, *cells, *(report.splits[s].bits_per_byte for s in splits)]


def print_notes(lines: Sequence[str], width: int = 100) -> None:
    """Print note lines under a table, each wrapped at ``width`` columns."""
    for line in lines:
        print(textwrap.fill(line, width, subsequent_indent="  "))


def interval_notes(reports: Sequence[Report], documents: Mapping[str, int] | None = None) -> list[str]:
    """Lines under a table of ``reports``: what each distinct ``95%`` column of an estimate covers
    (or why it is empty), and what the ``docs 95%`` column is (``documents``: per split, how many)."""
    kinds: dict[str, list[str]] = {}
    for r in reports:
        if r.is_estimate and r.estimator not in kinds.setdefault(r.interval_kind, []):
            kinds[r.interval_kind].append(r.estimator)
    lines = [f"95% ({', '.join(names)}): {kind}" for kind, names in kinds.items()]
    if documents and any(r.documents for r in reports):
        counts = ", ".join(f"{n} {s}" for s, n in documents.items())
        lines.append(f"docs 95%: percentile bootstrap over documents ({counts}; whole documents resampled "
                     f"{RESAMPLES:,} times): how much a figure depends on which documents were scored"
                     + ("; rough with so few documents" if min(documents.values()) < 30 else ""))
    return lines


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
