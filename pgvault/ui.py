"""What pgvault shows a person: messages on stdout, progress on stderr's terminal."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console

MB = 1024 * 1024


def mb(size: int) -> str:
    return f"{size / MB:.2f} MB"


class Reporter:
    """quiet=True prints nothing but errors (for cron)."""

    def __init__(self, *, quiet: bool = False, out: Console | None = None) -> None:
        self.quiet = quiet
        self.out = out or Console(highlight=False, soft_wrap=True)
        self.err = Console(stderr=True, highlight=False, soft_wrap=True)

    def say(self, text: str = "") -> None:
        if not self.quiet:
            self.out.print(text, markup=False)

    def ok(self, text: str) -> None:
        self.say(f"✓ {text}")

    def warn(self, text: str) -> None:
        self.err.print(f"pgvault: warning: {text}", markup=False)

    @contextmanager
    def transfer(self, label: str) -> Iterator[Callable[[int], None]]:
        """Yield a callback taking bytes done; draws a progress line on a terminal only."""
        if self.quiet or not self.err.is_terminal:
            yield lambda _done: None
            return
        start = time.monotonic()
        last = [0.0]

        def update(done: int) -> None:
            now = time.monotonic()
            if now - last[0] < 0.25:
                return
            last[0] = now
            rate = done / max(now - start, 1e-6)
            sys.stderr.write(f"\r  {label}: {mb(done)} at {mb(int(rate))}/s   ")
            sys.stderr.flush()

        try:
            yield update
        finally:
            if last[0]:
                sys.stderr.write("\r\033[K")
                sys.stderr.flush()
