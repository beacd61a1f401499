"""Keeping passwords out of what pgvault shows or leaves behind: printed and logged text,
Hydra's printouts, the process title, and the overrides Hydra saves.

Two nets. Patterns catch a password where it belongs (a URL's user:password@,
password=..., a YAML password: key), even in a URL we never parsed. The secrets this run
knows (from its arguments, the URLs it parsed, PGPASSWORD) are replaced wherever they
appear, so a malformed URL quoted back by libpq or Hydra is masked too. Light on
purpose: the CLI uses it before it imports Hydra or psycopg.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import sys
from collections.abc import Iterator
from typing import Any, TextIO
from urllib.parse import quote, unquote

MASK = "****"
# Shorter strings are ordinary words ("pw" is in "pwd"): the patterns still mask them in
# their URL, but not everywhere else.
MIN_LITERAL = 4
# A password that is part of the scheme (Supabase's local "postgres") would mask every URL.
_SCHEME_WORDS = "postgresql"
RESOLVER = "pgvault_secret"

_known: set[str] = set()
_slots: list[str] = []  # secrets taken out of overrides, read back by the resolver

# scheme:/... or postgres(ql): then the user and the ':' that starts a password.
_HEAD = re.compile(r"(?:\b[A-Za-z][A-Za-z0-9+.-]*:/+|\bpostgres(?:ql)?:)[^\s:/@'\"\[\]]*:")
_KEYWORD = re.compile(r"(password\s*=\s*)('(?:[^'\\\n]|\\.)*(?:'|$)|\S+)", re.I | re.M)
_YAML = re.compile(r"^(\s*[\w.-]*password:\s*)(\S.*)$", re.MULTILINE | re.IGNORECASE)
_NEXT_KEYWORD = re.compile(r"\s+\w+\s*=|$")
_SLOT = re.compile(r"\$\{" + RESOLVER + r":\d+\}")
_PORTS = re.compile(r"\d*(?:,[^,/?\s]*)*")  # a port, or the first of host:port,host:port


# Config keys whose whole value is a secret (a URL's password is found inside it).
SECRET_KEYS = ("password", "secret_access_key")


def reset() -> None:
    """Forget the secrets of an earlier run (a process that runs main() twice)."""
    _known.clear()
    _slots.clear()


def remember(secret: str | None, public: str = "") -> None:
    """Mask secret, and the forms it takes when encoded or quoted, wherever it appears.

    public is text the secret is not hidden in (the rest of its URL): a password that is
    also the user's name is left to the patterns.
    """
    if not secret:
        return
    for form in _forms(secret):
        if len(form) >= MIN_LITERAL and form.lower() not in _SCHEME_WORDS and form not in public:
            _known.add(form)


def _forms(secret: str) -> set[str]:
    forms = {secret, unquote(secret)}
    for s in list(forms):
        forms |= {
            quote(s, safe=""),
            quote(s, safe="!$&'()*+,;=:"),  # percent-encoded as a URL's userinfo
            s.replace("'", "''"),  # YAML single quotes
            s.replace("'", "\\'"),  # in Hydra's quotes
            re.sub(r"([\\()\[\]{}:=, \t])", r"\\\1", s),  # escaped by Hydra, unquoted
            json.dumps(s)[1:-1],
            json.dumps(s, ensure_ascii=False)[1:-1],
        }
    return forms


def passwords_in(text: str) -> list[str]:
    """The strings of text that may be passwords (see password_spans), unquoted."""
    found = []
    for a, b in password_spans(text):
        secret = text[a:b]
        if a > 0 and text[a - 1] == "'" and re.match(r"password\s*=\s*'$", text[:a][-40:], re.I):
            secret = re.sub(r"\\(.)", r"\1", secret)  # password='it\'s' in a conninfo
        found.append(secret)
    return [f for f in dict.fromkeys(found) if f]


def password_spans(text: str) -> list[tuple[int, int]]:
    """Where text may hold a password: between a URL's user: and its @ (libpq's first @
    and the last one), a port that is not a number, and password=... values. text is one
    value (an argument, a URL): a password in it may hold spaces."""
    found: list[tuple[int, int]] = []
    for m in _HEAD.finditer(text):
        start, rest = m.end(), text[m.end() :]
        if "@" in rest:
            found += [(start, start + rest.index("@")), (start, start + rest.rindex("@"))]
        else:  # no @: a port, or a password (spaces and all) where the host should be
            word = re.match(r"[^/?\n]*", rest)
            if word and not _PORTS.fullmatch(word.group()):
                found.append((start, start + word.end()))
    for m in _KEYWORD.finditer(text):
        a, b = m.span(2)
        if text[a] == "'":
            a, b = a + 1, b - (text[b - 1] == "'" and b - 1 > a)
        else:  # unquoted, a space ends it for libpq, but maybe not for the user
            more = _NEXT_KEYWORD.search(text, b)
            found.append((a, more.start() if more else len(text)))
        found.append((a, b))
    return [(a, b) for a, b in dict.fromkeys(found) if b > a]


def remember_in(text: str | None) -> None:
    """Remember every password text holds (see passwords_in)."""
    for secret in passwords_in(text or ""):
        remember(secret, public=text.replace(secret, "", 1) if text else "")


def slot(secret: str, public: str = "") -> str:
    """Keep secret here and return the interpolation that reads it back, for a value
    Hydra will see (and may save, print or quote in an error)."""
    remember(secret, public)
    _slots.append(secret)
    return f"${{{RESOLVER}:{len(_slots) - 1}}}"


def slots() -> list[str]:
    """The secrets slot() holds, in order (for a sweep's workers: pgvault.sweep)."""
    return list(_slots)


def adopt(secrets: list[str]) -> None:
    """Take another process's slots (a launcher's worker, whose jobs' configs refer to
    them), unless this process has its own; mask them all."""
    if not secrets:
        return
    if not _slots:
        _slots.extend(secrets)
    for secret in secrets:
        remember(secret)
    register_resolver()


def slot_spans(text: str) -> list[tuple[int, int]]:
    """Where text holds slot() interpolations (a sweep job's overrides keep them)."""
    return [m.span() for m in _SLOT.finditer(text)]


# Where a sweep hands its slots to a launcher's local workers (pgvault.sweep).
SLOTS_ENV = "PGVAULT_SWEEP_SECRETS"


def _resolve_slot(i: str) -> str:
    # Module-level, so a launcher that pickles OmegaConf's resolvers (joblib's, Ray's)
    # sends a reference to it, never the secrets; a local worker reads them from its
    # environment (Hydra may resolve a job's config before the job runs).
    if not _slots:
        adopt(json.loads(os.environ.get(SLOTS_ENV) or "[]"))
    if int(i) >= len(_slots):
        raise KeyError(
            "a password given on the command line cannot reach this job's worker; give it "
            "in ~/.pgpass, a libpq service file or the workers' environment"
        )
    return _slots[int(i)]


def register_resolver() -> None:
    """Let OmegaConf resolve slot()'s interpolations (in this process only)."""
    from omegaconf import OmegaConf

    if not OmegaConf.has_resolver(RESOLVER):
        OmegaConf.register_new_resolver(RESOLVER, _resolve_slot)


def mask(text: str) -> str:
    """Return text with every password it may hold replaced by ****."""
    text = _SLOT.sub(MASK, text)
    # Known secrets first: a pattern would mask only the start of `password=pa ss`.
    for secret in sorted(_known, key=len, reverse=True):
        text = text.replace(secret, MASK)
    text = _KEYWORD.sub(lambda m: m.group(1) + MASK, text)
    text = _YAML.sub(lambda m: m.group(1) + MASK, text)
    return "\n".join(_mask_urls(line) for line in text.split("\n"))


def _mask_urls(line: str) -> str:
    """line with the password of each URL in it masked."""
    m = _HEAD.search(line)
    if m is None:
        return line
    head, rest = line[: m.end()], line[m.end() :]
    word = re.match(r"\S*", rest).group()  # type: ignore[union-attr]
    after = _HEAD.search(word)  # a list of URLs: each masked on its own
    if after and "@" in word[: after.start()]:
        word = word[: after.start()]
    if "@" in word:  # user:password@host, the password maybe holding an @
        at = word.rindex("@")
        return head + MASK + _mask_urls(rest[at:])
    port = re.match(r"[^/?\s]*", rest).group()  # type: ignore[union-attr]
    if _PORTS.fullmatch(port):  # host:port
        return head + _mask_urls(rest)
    # Not a port: a password, maybe with a space in it, up to the line's last @.
    at = rest.rfind("@")
    return head + MASK + (_mask_urls(rest[at:]) if at > 0 else _mask_urls(rest[len(port) :]))


# --- where text leaves the process --------------------------------------------------------


class MaskedStream:
    """A text stream that masks what is written to it; everything else is the stream's."""

    def __init__(self, inner: TextIO) -> None:
        self._inner = inner

    def write(self, text: str) -> int:
        self._inner.write(mask(text))
        return len(text)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


@contextlib.contextmanager
def masked_output() -> Iterator[None]:
    """Mask stderr and every log record (Hydra's --info and debug output are log records)."""
    saved_err, saved_factory = sys.stderr, logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = saved_factory(*args, **kwargs)
        with contextlib.suppress(Exception):  # a record that cannot format stays as it is
            message = record.getMessage()
            shown = mask(message)
            if shown != message:
                record.msg, record.args = shown, None
        return record

    sys.stderr = MaskedStream(saved_err)
    logging.setLogRecordFactory(factory)
    try:
        yield
    finally:
        sys.stderr = saved_err
        logging.setLogRecordFactory(saved_factory)


def hide_in_title(argv: list[str]) -> None:
    """Show argv with its passwords masked as this process's title (ps, /proc/PID/cmdline)."""
    shown = [mask(a) for a in argv]
    if shown == argv:
        return
    # Within argv's own memory: /proc/PID/environ stays readable.
    saved = os.environ.get("SPT_NOENV")
    os.environ["SPT_NOENV"] = "1"
    try:
        import setproctitle

        setproctitle.setproctitle(" ".join(shown))
    finally:
        if saved is None:
            os.environ.pop("SPT_NOENV", None)
        else:
            os.environ["SPT_NOENV"] = saved
