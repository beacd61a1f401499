"""What pgvault shows a person: messages on stdout, progress bars on stderr's terminal."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console

from pgvault.listener import Progress as Advance

MB = 1024 * 1024


def mb(size: int) -> str:
    return f"{size / MB:.2f} MB"


class Reporter:
    """The CLI's listener. quiet=True prints nothing but warnings and errors (for cron)."""

    def __init__(self, *, quiet: bool = False, out: Console | None = None) -> None:
        self.quiet = quiet
        self.out = out or Console(highlight=False, soft_wrap=True)
        self.err = Console(stderr=True, highlight=False, soft_wrap=True)

    def say(self, text: str = "") -> None:
        if not self.quiet:
            self.out.print(text, markup=False)

    def note(self, text: str) -> None:
        self.say(text)

    def ok(self, text: str) -> None:
        self.say(f"✓ {text}")

    def warn(self, text: str) -> None:
        self.err.print(f"pgvault: warning: {text}", markup=False)

    @contextmanager
    def transfer(self, label: str, total: int | None = None) -> Iterator[Advance]:
        """Yield a callback taking bytes done; draws a progress bar (bytes, total, ETA)
        on a terminal only. total may be an estimate, or None when unknown."""
        if self.quiet or not self.err.is_terminal:
            yield lambda _done: None
            return
        from rich.progress import (  # only for a terminal
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        columns = [
            TextColumn(f"  {label}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
        ]
        with Progress(*columns, console=self.err, transient=True) as bar:
            task = bar.add_task(label, total=total)

            def advance(done: int) -> None:
                # An estimate can be short: grow it rather than stall at 100%.
                known = bar.tasks[0].total
                if known is not None and done > known:
                    bar.update(task, total=done)
                bar.update(task, completed=done)

            yield advance
