"""The benchmark's results: one Row per measurement, printed as a table at the end."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from rich.console import Console
from rich.table import Table

console = Console(highlight=False)
if not console.is_terminal:  # e.g. `make bench | tee`: room for the whole table
    console = Console(highlight=False, width=140)


@dataclass
class Row:
    """One measurement at one scale (None: across scales).

    value/baseline are medians in `unit`; runs/base_runs every run behind them (their
    spread is shown: on a VM one run can differ from the next by a quarter). The target
    is `ratio <= max_ratio` when there is a baseline and max_ratio is set, `value -
    baseline <= max_over` with max_over, else `value <= max_value`. note replaces the
    figures when the measurement was skipped or failed.
    """

    scale: int | None
    what: str
    unit: str = "s"
    value: float | None = None
    baseline: float | None = None
    baseline_what: str = ""
    max_ratio: float | None = None
    max_value: float | None = None
    target_text: str = ""
    note: str = ""
    max_over: float | None = None
    runs: tuple[float, ...] = ()
    base_runs: tuple[float, ...] = ()

    @property
    def ratio(self) -> float | None:
        if self.value is None or not self.baseline:
            return None
        return self.value / self.baseline

    @property
    def passed(self) -> bool | None:
        if self.note or self.value is None:
            return None
        if self.max_ratio is not None:
            return self.ratio is not None and self.ratio <= self.max_ratio
        if self.max_over is not None:
            return self.baseline is not None and self.value - self.baseline <= self.max_over
        if self.max_value is not None:
            return self.value <= self.max_value
        return None

    @property
    def target(self) -> str:
        if self.target_text:
            return self.target_text
        if self.max_ratio is not None:
            return f"ratio <= {self.max_ratio:.2f}"
        if self.max_over is not None:
            return f"<= +{self.max_over:g} {self.unit} over it"
        if self.max_value is not None:
            return f"<= {self.max_value:g} {self.unit}"
        return ""

    @property
    def verdict(self) -> str:
        if self.note:
            return self.note.split(":")[0]
        return {True: "pass", False: "MISS", None: "-"}[self.passed]


def fmt(value: float | None, unit: str) -> str:
    if value is None:
        return ""
    return f"{value:.2f} {unit}" if unit == "s" else f"{value:.1f} {unit}"


def spread(runs: Sequence[float], unit: str) -> str:
    return f"{min(runs):.2f}-{max(runs):.2f}" if len(runs) > 1 and unit == "s" else ""


def say(text: str) -> None:
    """A progress line while the benchmark runs."""
    console.print(text, markup=False, soft_wrap=True)


def announce(row: Row) -> None:
    if row.note:
        say(f"  {row.what}: {row.note}")
        return
    parts = [f"  {row.what}: {fmt(row.value, row.unit)}"]
    if row.baseline is not None:
        parts.append(f"vs {row.baseline_what} {fmt(row.baseline, row.unit)}")
    if row.ratio is not None:
        parts.append(f"ratio {row.ratio:.2f}")
    if row.runs:
        parts.append(f"[runs {' '.join(f'{x:.2f}' for x in row.runs)}")
        parts[-1] += f" vs {' '.join(f'{x:.2f}' for x in row.base_runs)}]" if row.base_runs else "]"
    parts.append(f"(target {row.target}: {row.verdict})")
    say(" ".join(parts))


def print_table(rows: Sequence[Row], repeat: int) -> None:
    table = Table(title=f"pgvault benchmark (medians of {repeat} runs)", show_lines=False)
    columns = ("scale", "measurement", "pgvault", "baseline", "ratio", "spread", "target", "result")
    for col in columns:
        table.add_column(
            col, justify="right" if col in ("pgvault", "baseline", "ratio") else "left"
        )
    style = {"pass": "green", "MISS": "bold red", "error": "bold red", "skipped": "yellow"}
    for r in rows:
        base = f"{fmt(r.baseline, r.unit)} {r.baseline_what}".strip() if r.baseline else ""
        table.add_row(
            "all" if r.scale is None else str(r.scale),
            r.what,
            fmt(r.value, r.unit) if not r.note else r.note.partition(": ")[2],
            base,
            f"{r.ratio:.2f}" if r.ratio is not None else "",
            " / ".join(x for x in (spread(r.runs, r.unit), spread(r.base_runs, r.unit)) if x),
            r.target,
            f"[{style.get(r.verdict, '')}]{r.verdict}[/]" if r.verdict in style else r.verdict,
        )
    console.print(table)
