"""Names of backup sets and their files: format, parse, order. Pure functions."""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from datetime import UTC, datetime

PREFIX_FORMAT = "backup-%Y-%m-%d-%H%M%S"
_PREFIX_RE = re.compile(r"backup-(\d{4})-(\d{2})-(\d{2})-(\d{2})(\d{2})(\d{2})")

# The set's SQL files, in the order they restore.
SQL_KINDS = ("roles", "schema", "data")
# Written beside the three for some profiles: the platform's own definitions (Supabase's
# managed schemas), which verify loads before the set; a plain restore never needs it.
PLATFORM = "platform"
# Supabase Storage's objects (backup.attachments=true): one tar of every bucket's objects.
ATTACHMENTS = "attachments"
KINDS = (*SQL_KINDS, PLATFORM, ATTACHMENTS, "manifest", "verify")
COMPRESSION_SUFFIX = {"none": "", "gzip": ".gz", "zstd": ".zst"}
# Every file of an encrypted set but its manifest and verify record carries it.
ENCRYPTED_SUFFIX = ".age"
PARTIAL_SUFFIX = ".partial"

_FILE_RE = re.compile(
    r"(?P<prefix>backup-\d{4}-\d{2}-\d{2}-\d{6})-"
    r"(?:(?:(?P<sql>roles|schema|platform)\.sql|data\.sql(?P<comp>\.gz|\.zst)?"
    r"|(?P<tar>attachments)\.tar)(?P<age>\.age)?|(?P<json>manifest|verify)\.json)"
    r"(?P<partial>\.partial)?"
)


def format_prefix(when: datetime) -> str:
    """Given an aware datetime, return the set prefix for it in UTC."""
    if when.tzinfo is None:
        raise ValueError("naive datetime")
    return when.astimezone(UTC).strftime(PREFIX_FORMAT)


YEARS = (1970, 9998)


# Both parsers are pure and asked about the same names many times over (`list` of 1,000
# sets: 5,000 times each).
@functools.lru_cache(maxsize=16384)
def parse_prefix(prefix: str) -> datetime:
    """Given a set prefix, return its UTC time; ValueError if it is not a pgvault prefix."""
    m = _PREFIX_RE.fullmatch(prefix)
    if m is None:
        raise ValueError(f"not a pgvault prefix: {prefix!r}")
    y, mo, d, h, mi, s = (int(g) for g in m.groups())
    if not YEARS[0] <= y <= YEARS[1]:
        # Beyond these, converting to local time overflows (year 9999 east of UTC).
        raise ValueError(f"not a pgvault prefix (year {y}): {prefix!r}")
    return datetime(y, mo, d, h, mi, s, tzinfo=UTC)


def is_prefix(text: str) -> bool:
    try:
        parse_prefix(text)
    except ValueError:
        return False
    return True


def file_name(prefix: str, kind: str, compression: str = "none", encrypted: bool = False) -> str:
    """Return the file name of one part of a set (the manifest and verify record are
    never encrypted)."""
    age = ENCRYPTED_SUFFIX if encrypted else ""
    if kind == "data":
        return f"{prefix}-data.sql{COMPRESSION_SUFFIX[compression]}{age}"
    if kind in ("manifest", "verify"):
        return f"{prefix}-{kind}.json"
    if kind in (*SQL_KINDS, PLATFORM):
        return f"{prefix}-{kind}.sql{age}"
    if kind == ATTACHMENTS:
        return f"{prefix}-{kind}.tar{age}"
    raise ValueError(f"unknown kind {kind!r}")


@dataclass(frozen=True)
class ParsedName:
    """What a file name in a backup directory says about itself."""

    prefix: str
    kind: str
    compression: str
    partial: bool
    encrypted: bool = False


@functools.lru_cache(maxsize=16384)
def parse_file_name(name: str) -> ParsedName | None:
    """Return what a file name means, or None when it is not a file pgvault writes.

    Names with an impossible date (month 13) are pgvault-shaped but unparseable: they
    come back with their prefix so callers can report them, and parse_prefix fails on it.
    """
    m = _FILE_RE.fullmatch(name)
    if m is None:
        return None
    kind = m["sql"] or m["json"] or m["tar"] or "data"
    comp = {None: "none", ".gz": "gzip", ".zst": "zstd"}[m["comp"]]
    return ParsedName(m["prefix"], kind, comp, m["partial"] is not None, m["age"] is not None)


def sort_newest_first(prefixes: list[str]) -> list[str]:
    """Order prefixes newest first; their fixed-width UTC format sorts as text."""
    return sorted(prefixes, reverse=True)
