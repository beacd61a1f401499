"""Events at the start, success and failure of every command, and the hooks that hear them.

This is the seam monitoring and notifications plug into: a hook is a function of
(event, run). A hook that fails is reported as a warning and never fails the command
(borgmatic's rule for monitoring hooks).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum


class Event(Enum):
    start = "start"
    success = "success"
    failure = "failure"


@dataclass(frozen=True)
class Run:
    """What a hook learns of a run. Never a password: target is a name, not a URL."""

    command: str
    target: str
    env: str
    directory: str | None
    prefix: str | None = None  # the set written, restored or verified, once known
    size_bytes: int | None = None
    error: str | None = None  # the one-line error of a failure
    exit_code: int = 0
    status: str = "running"  # then "success" or "failure"
    started_at: float = 0.0  # seconds since the epoch
    duration_s: float | None = None  # once ended
    rows: int | None = None  # rows written, restored or verified
    verified: bool | None = None  # verify's verdict: True matched, False did not


Hook = Callable[[Event, Run], None]

_HOOKS: list[Hook] = []


def register(hook: Hook) -> None:
    if hook not in _HOOKS:
        _HOOKS.append(hook)


def unregister(hook: Hook) -> None:
    if hook in _HOOKS:
        _HOOKS.remove(hook)


def call(event: Event, run: Run, warn: Callable[[str], None], extra: Sequence[Hook] = ()) -> None:
    """Call every registered hook, then extra (this run's own); a hook's exception
    becomes a warning."""
    for hook in [*_HOOKS, *extra]:
        try:
            hook(event, run)
        except Exception as e:  # a hook must never decide a command's outcome
            from pgvault.errors import PgvaultError

            if isinstance(e, PgvaultError):  # ours says what failed and how to fix it
                warn(e.line())
            else:
                name = getattr(hook, "__qualname__", repr(hook))
                warn(f"hook {name} failed on {event.value}: {e}")
