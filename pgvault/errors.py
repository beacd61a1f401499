"""pgvault's own exceptions; the CLI turns each into one line and an exit code."""

from __future__ import annotations

import re


def one_line(text: str) -> str:
    """text on one line: libpq, psql and Hydra end a message with a second line (a hint,
    a LINE excerpt) that would break the CLI's one-line errors."""
    lines = [ln.strip() for ln in re.split(r"[\r\n]+", text) if ln.strip()]
    out = lines[0] if lines else ""
    for ln in lines[1:]:
        out += (" " if out.endswith((".", ":", ";", ",", "!", "?")) else "; ") + ln
    return out


class PgvaultError(Exception):
    """Something the user can fix: what is wrong, and how to fix it."""

    exit_code = 1

    def __init__(self, what: str, hint: str = "") -> None:
        what, hint = one_line(what), one_line(hint)
        super().__init__(what)
        self.what = what
        self.hint = hint

    def line(self) -> str:
        """Return the one line the CLI prints (without the 'pgvault: error: ' lead)."""
        return f"{self.what} ({self.hint})" if self.hint else self.what


class ConfigError(PgvaultError):
    """The composed configuration or an override is not valid."""

    exit_code = 2


class NotFound(PgvaultError):
    """A backup set, file or database that was asked for does not exist."""


class ServerError(PgvaultError):
    """The server could not be reached, refused us, or is of an unusable version."""


class DatabaseMissing(ServerError):
    """The server is there, the database is not."""


class ClientProgramError(PgvaultError):
    """A client program (pg_dump, psql, a compressor) failed or is missing."""


class LockBusy(PgvaultError):
    """Another pgvault process holds the directory's lock."""


class IntegrityError(PgvaultError):
    """A backup file disagrees with its manifest."""


class Refused(PgvaultError):
    """A policy or the user said no; nothing was changed."""


class VerifyMismatch(PgvaultError):
    """A restored backup does not match what its manifest recorded."""

    exit_code = 3
