"""Figures, their targets, and the one table (and JSON file) a run produces."""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.harness import Stats


@dataclass(frozen=True)
class Target:
    """What a figure must reach: a bound on the ratio of medians, or an exact count.

    ``op`` is ``>=`` or ``<=`` (taskyard median / plain median against
    ``value``), or ``==`` (every sample of both sides equals ``value``).
    """

    op: str
    value: float

    def met(self, figure: Figure) -> bool:
        if self.op == "==":
            samples = [*figure.taskyard.samples, *(figure.plain.samples if figure.plain else ())]
            return all(s == self.value for s in samples)
        ratio = figure.ratio
        if ratio is None:
            return False
        return ratio >= self.value if self.op == ">=" else ratio <= self.value

    def __str__(self) -> str:
        if self.op == "==":
            return f"all = {self.value:g}"
        return f"{self.op} {self.value:g}x"


@dataclass(frozen=True)
class Figure:
    """One measured quantity, for taskyard and (when there is one) plain Celery."""

    key: str
    title: str
    unit: str
    taskyard: Stats
    plain: Stats | None = None
    target: Target | None = None
    note: str = ""

    @property
    def ratio(self) -> float | None:
        """taskyard's median over plain Celery's."""
        if self.plain is None or not self.plain.median:
            return None
        return self.taskyard.median / self.plain.median

    @property
    def met(self) -> bool | None:
        return None if self.target is None else self.target.met(self)

    def as_dict(self) -> dict[str, Any]:
        return {
            "key": self.key, "title": self.title, "unit": self.unit,
            "taskyard": self.taskyard.as_dict(),
            "plain": self.plain.as_dict() if self.plain else None,
            "ratio": self.ratio,
            "target": {"op": self.target.op, "value": self.target.value} if self.target else None,
            "met": self.met,
            "note": self.note,
        }


def number(value: float) -> str:
    """Three significant figures or so, with thousands separated."""
    if not math.isfinite(value):
        return str(value)
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def spread(stats: Stats | None) -> str:
    if stats is None:
        return "-"
    return f"{number(stats.median)} [{number(stats.min)}..{number(stats.max)}]"


def table(figures: list[Figure]) -> str:
    """The figures as one fixed-width table, notes numbered beneath it."""
    header = ("figure", "unit", "taskyard med [min..max]", "plain celery med [min..max]",
              "ratio", "target", "met")
    rows = []
    notes = []
    for figure in figures:
        title = figure.title
        if figure.note:
            notes.append(figure.note)
            title = f"{title} ({len(notes)})"
        met = {None: "", True: "yes", False: "NO"}[figure.met]
        rows.append((title, figure.unit, spread(figure.taskyard), spread(figure.plain),
                     f"{figure.ratio:.2f}x" if figure.ratio is not None else "",
                     str(figure.target) if figure.target else "", met))
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]

    def line(row: tuple[str, ...]) -> str:
        cells = (cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        return "  ".join(cells).rstrip()

    out = [line(header), line(tuple("-" * w for w in widths)), *(line(r) for r in rows)]
    out += [f"({i}) {note}" for i, note in enumerate(notes, 1)]
    return "\n".join(out)


def write_json(path: Path, figures: list[Figure], meta: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"meta": meta, "figures": [f.as_dict() for f in figures]}
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")


def progress(line: str) -> None:
    """A suite's progress line, on stderr (stdout carries the table)."""
    print(line, file=sys.stderr, flush=True)


def emit(text: str, figures: Any, path: Path) -> None:
    """Print a suite's table, write its figures as JSON to ``path``, and say where."""
    print(text)
    path.write_text(json.dumps(figures, indent=2))
    print(f"\nwritten to {path}")
