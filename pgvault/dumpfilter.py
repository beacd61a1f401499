"""Choosing what of pg_dump's plain output goes into a file, entry by entry, as it streams.

pg_dump introduces every object it writes with a header comment
(`-- Name: users on_signup; Type: TRIGGER; Schema: auth; Owner: postgres`); everything up
to the next header belongs to that entry. EntryFilter keeps or drops whole entries by
what their header says, so a profile can leave out the objects that are the platform's.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

_HEADER = re.compile(rb"-- Name: (.*); Type: ([A-Z ]+); Schema: (.*); Owner: (.*)")
_DUMP_END = b"-- PostgreSQL database dump complete"
# Session settings pg_dump writes between entries; they belong to what follows, so they
# stay even when the entry before them goes.
_BETWEEN = (b"SET default_tablespace = ", b"SET default_table_access_method = ")


@dataclass(frozen=True)
class Entry:
    """What a header says of one object in a dump."""

    name: str
    type: str
    schema: str
    owner: str


def parse_header(line: bytes) -> Entry | None:
    m = _HEADER.fullmatch(line)
    if m is None:
        return None
    name, kind, schema, owner = (g.decode("utf-8", "replace") for g in m.groups())
    return Entry(name, kind, schema, owner)


class EntryFilter:
    """Transform (chunk in, chunk out; b"" at the end) that drops the entries for which
    keep(entry) is false. What precedes the first entry and follows the last is kept.
    edit(entry, line), when given, may rewrite each line of a kept entry."""

    def __init__(
        self,
        keep: Callable[[Entry], bool],
        edit: Callable[[Entry, bytes], bytes] | None = None,
    ) -> None:
        self.keep = keep
        self.edit = edit
        self._entry: Entry | None = None
        self._keeping = True
        self._carry = b""
        self._dashes = False  # a lone `--` line is held until the next line says why

    def __call__(self, chunk: bytes) -> bytes:
        data = self._carry + chunk
        if chunk:
            end = data.rfind(b"\n") + 1
            self._carry = data[end:]
            lines = data[:end].split(b"\n")[:-1]
        else:
            self._carry = b""
            lines = data.split(b"\n") if data else []
        out: list[bytes] = []
        for line in lines:
            self._line(line, out)
        if not chunk and self._dashes:
            self._dashes = False
            if self._keeping:
                out.append(b"--")
        text = b"\n".join(out)
        return text + b"\n" if out and chunk else text

    def _line(self, line: bytes, out: list[bytes]) -> None:
        if self._dashes:
            self._dashes = False
            entry = parse_header(line) if line.startswith(b"-- Name: ") else None
            if entry is not None:
                self._keeping = self.keep(entry)
                self._entry = entry
            elif line == _DUMP_END:
                self._keeping, self._entry = True, None
            if self._keeping:
                out.append(b"--")
        if line == b"--":
            self._dashes = True
            return
        if self._keeping:
            if self.edit is not None and self._entry is not None:
                line = self.edit(self._entry, line)
            out.append(line)
        elif line.startswith(_BETWEEN):
            out.append(line)


def chain(
    first: Callable[[bytes], bytes], second: Callable[[bytes], bytes]
) -> Callable[[bytes], bytes]:
    """Two stream transforms one after the other. Only the end of the stream (b"") may
    reach second as an empty chunk: it means "flush" to every transform here."""

    def run(chunk: bytes) -> bytes:
        if chunk:
            middle = first(chunk)
            return second(middle) if middle else b""
        rest = first(b"")
        return (second(rest) if rest else b"") + second(b"")

    return run
