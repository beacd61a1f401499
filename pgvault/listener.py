"""What services tell whoever runs them, without knowing of a terminal: notes on the way,
warnings, and the bytes of a long transfer. The CLI's Reporter listens; Silent does not."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Protocol

Progress = Callable[[int], None]


class Listener(Protocol):
    def note(self, text: str) -> None: ...

    def warn(self, text: str) -> None: ...

    def transfer(self, label: str, total: int | None = None) -> AbstractContextManager[Progress]:
        """A context yielding a callback that takes the bytes done so far."""
        ...


class Silent:
    """A listener that drops everything (a restore's safety backup, tests)."""

    def note(self, text: str) -> None:
        pass

    def warn(self, text: str) -> None:
        pass

    @contextmanager
    def transfer(self, label: str, total: int | None = None) -> Iterator[Progress]:
        yield lambda _done: None
