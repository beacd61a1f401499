"""Reading and rewriting pg_dump's plain output as it streams, in constant memory.

CopyStats counts each table's rows and hashes its COPY block; RolesRewriter makes
pg_dumpall's roles file restorable into a cluster that already has some of its roles.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

_TERMINATOR = b"\\.\n"
# How many backslashes find_terminator looks at one by one before it searches for the
# whole line instead (escapes such as \N for NULL can be frequent).
_BACKSLASH_HITS = 16


def find_terminator(
    block: bytes | bytearray, pos: int, end: int, patience: int = _BACKSLASH_HITS
) -> int:
    """Where the first line of block[pos:end] that reads `\\.` starts, or -1; pos must
    start a line. Searches for the backslash (memchr, many times faster than a search for
    the whole line) and checks each one found, until patience of them were not it."""
    i = block.find(b"\\", pos, end)
    hits = 0
    while i >= 0:
        if (i == pos or block[i - 1] == 0x0A) and block.startswith(b".\n", i + 1, end):
            return i
        hits += 1
        if hits >= patience:
            # No line between pos and i is the terminator, and block[i] is no newline.
            found = block.find(b"\n" + _TERMINATOR, i, end)
            return found + 1 if found >= 0 else -1
        i = block.find(b"\\", i + 1, end)
    return -1


def parse_copy_header(line: bytes | bytearray) -> str:
    """Given `COPY schema.table (cols) FROM stdin;`, return `schema.table` as pg_dump
    wrote it (quoted identifiers kept quoted)."""
    text = line.decode("utf-8", "replace")
    if not text.startswith("COPY "):
        raise ValueError(f"not a COPY header: {text!r}")
    i = 5
    out = []
    while i < len(text):
        c = text[i]
        if c == '"':
            j = i + 1
            while j < len(text):
                if text[j] == '"':
                    if j + 1 < len(text) and text[j + 1] == '"':
                        j += 2
                        continue
                    break
                j += 1
            out.append(text[i : j + 1])
            i = j + 1
        elif c in " (":
            break
        else:
            out.append(c)
            i += 1
    return "".join(out)


@dataclass
class TableStats:
    rows: int = 0
    nbytes: int = 0  # of its COPY rows as text: `show` reports it as the table's size
    hasher: Any = field(default_factory=hashlib.sha256)

    @property
    def sha256(self) -> str:
        return str(self.hasher.hexdigest())


# pg_dump's line for a sequence: its value, and whether nextval() was called since.
_SETVAL_START = b"SELECT pg_catalog.setval("
_SETVAL = re.compile(rb"SELECT pg_catalog\.setval\('((?:[^']|'')*)', (-?\d+), (true|false)\);")


class CopyStats:
    """Observer of a data stream: rows and a sha256 of the COPY rows, per table, and the
    value pg_dump gave each sequence (None when never called, as pg_sequences shows it).

    Sequences are read from the stream because they are not transactional: pg_dump
    reads them after the snapshot was taken, while other sessions may still call
    nextval(), so only its own lines say what a restore will set."""

    def __init__(self) -> None:
        self.tables: dict[str, TableStats] = {}
        self.sequences: dict[str, int | None] = {}
        self._carry = b""
        self._current: TableStats | None = None

    def feed(self, chunk: bytes | bytearray) -> None:
        # Work on the chunk in place (indices and memoryviews): a stream is hundreds of
        # megabytes, and every copy of it costs as much as the hashing.
        start = 0
        if self._carry:
            nl = chunk.find(b"\n")
            if nl < 0:
                self._carry += chunk
                return
            head = self._carry + chunk[: nl + 1]
            self._carry = b""
            self._scan(head, 0, len(head))
            start = nl + 1
        end = chunk.rfind(b"\n", start) + 1
        if end <= start:
            self._carry = bytes(chunk[start:])
            return
        self._carry = bytes(chunk[end:])  # the chunk's buffer may be reused once we return
        self._scan(chunk, start, end)

    def _scan(self, block: bytes | bytearray, pos: int, end: int) -> None:
        # Invariant: pos is always at the start of a line.
        view = memoryview(block)
        while pos < end:
            cur = self._current
            if cur is None:
                idx = block.find(b"COPY ", pos, end)
                while idx > pos and block[idx - 1] != 0x0A:
                    idx = block.find(b"COPY ", idx + 1, end)
                self._setvals(block, pos, end if idx < 0 else idx)
                if idx < 0:
                    return
                eol = block.index(b"\n", idx)
                if not block[idx:eol].endswith(b" FROM stdin;"):
                    pos = eol + 1  # a line that merely starts with COPY
                    continue
                name = parse_copy_header(block[idx:eol])
                cur = self.tables.setdefault(name, TableStats())
                self._current = cur
                pos = eol + 1
                continue
            term = find_terminator(block, pos, end)
            stop = end if term < 0 else term
            cur.rows += block.count(b"\n", pos, stop)
            cur.nbytes += stop - pos
            cur.hasher.update(view[pos:stop])
            if term < 0:
                return
            self._current = None
            pos = term + len(_TERMINATOR)

    def _setvals(self, block: bytes | bytearray, pos: int, end: int) -> None:
        """Record the setval lines in block[pos:end] (SQL, whole lines). A plain find
        first: large-object data makes this part of a dump long."""
        i = block.find(_SETVAL_START, pos, end)
        while i >= 0:
            if i == pos or block[i - 1] == 0x0A:
                eol = block.find(b"\n", i, end)
                m = _SETVAL.fullmatch(block, i, end if eol < 0 else eol)
                if m is not None:
                    name = m[1].replace(b"''", b"'").decode("utf-8", "replace")
                    self.sequences[name] = int(m[2]) if m[3] == b"true" else None
            i = block.find(_SETVAL_START, i + 1, end)

    def result(self) -> dict[str, dict[str, object]]:
        return {
            name: {"rows": st.rows, "size": st.nbytes, "sha256": st.sha256}
            for name, st in sorted(self.tables.items())
        }


# One lexical token of pg_dumpall's output: a quoted identifier or string (either may
# span lines), a comment, a newline, or a run of anything else. A quote or comment the
# data ends inside of matches nothing: the rest waits for the next chunk.
_TOKEN = re.compile(rb'"(?:[^"]|"")*"|\'(?:[^\']|\'\')*\'|--[^\n]*\n|\n|[^"\'\n-]+|-')
_CREATE_ROLE = re.compile(rb'CREATE ROLE ("(?:[^"]|"")*"|[^\s";]+);\n?')
_CREATE_WORDS = b"CREATE ROLE "


def _line_end(data: bytes, i: int, final: bool) -> int | None:
    """Where the line starting at i ends (past its newline), reading quoted text as a
    whole so a newline inside a role's name does not end it; None: not in data yet."""
    n = len(data)
    while i < n:
        m = _TOKEN.match(data, i)
        if m is None:
            return n if final else None
        i = m.end()
        if data[i - 1 : i] == b"\n":
            return i
    return n if final else None


def _dollar_tag(text: bytes) -> bytes:
    """A dollar-quote tag that text does not contain (a role may be named x$pgvault$y)."""
    tag, k = b"$pgvault$", 0
    while tag in text:
        k += 1
        tag = b"$pgvault%d$" % k
    return tag


class RolesRewriter:
    """Transform for pg_dumpall --roles-only output.

    `CREATE ROLE x;` aborts a restore into any cluster that has x (every cluster has
    its bootstrap superuser), so each becomes a block that tolerates an existing role.
    The ALTER ROLE that follows still sets every attribute, so the result is the same.
    Role names are read as SQL reads them: a quoted name may hold newlines, quotes and
    dollar signs, and text inside a name or string is never taken for a statement.
    """

    def __init__(self) -> None:
        self._carry = b""

    def __call__(self, chunk: bytes) -> bytes:
        final = not chunk  # an empty chunk ends the stream
        data = self._carry + chunk
        out = bytearray()
        i = 0
        while i < len(data):
            end = _line_end(data, i, final)
            if end is None:
                break
            line = data[i:end]
            m = _CREATE_ROLE.fullmatch(line) if line.startswith(_CREATE_WORDS) else None
            if m is None:
                out += line
            else:
                tag = _dollar_tag(m[1])
                body = b" BEGIN CREATE ROLE " + m[1] + b"; EXCEPTION WHEN duplicate_object"
                out += b"DO " + tag + body + b" THEN NULL; END " + tag + b";"
                out += b"\n" if line.endswith(b"\n") else b""
            i = end
        self._carry = data[i:]
        return bytes(out)


_BLOB_TRANSACTION = (b"BEGIN;", b"COMMIT;")


class DataFilter:
    """Transform for a data file on its way into pgvault's one restore transaction.

    pg_dump writes large objects inside their own BEGIN/COMMIT, which would end the
    restore transaction early and make it non-atomic; those lines are dropped. Only
    lines outside COPY data are looked at: a row may well read `BEGIN;`. drop_also
    names further whole lines to drop there (e.g. settings an older server lacks).
    After the end of the stream (an empty chunk), open_copy names the table whose COPY
    data never ended: psql would read whatever follows as rows; rows holds the number of
    rows the stream carried for each table, to hold against the manifest.
    """

    def __init__(self, drop_also: tuple[bytes, ...] = ()) -> None:
        self.drop = frozenset((*_BLOB_TRANSACTION, *drop_also))
        self._carry = b""
        self._in_copy = False
        self.open_copy: str | None = None  # the table whose COPY has not ended yet
        self.rows: dict[str, int] = {}

    def __call__(self, chunk: bytes) -> bytes:
        if not chunk:  # end of stream: a last line without a newline is a line too
            rest, self._carry = self._carry, b""
            if self._in_copy or not rest:
                return rest  # a `\.` without its newline does not end the data for psql
            self._outside_copy(rest)
            return b"" if rest in self.drop else rest
        data = self._carry + chunk if self._carry else chunk
        end = data.rfind(b"\n") + 1
        self._carry = data[end:]
        out: list[bytes] = []
        pos = 0
        while pos < end:
            if self._in_copy:
                term = find_terminator(data, pos, end)
                assert self.open_copy is not None
                if term < 0:
                    self.rows[self.open_copy] += data.count(b"\n", pos, end)
                    out.append(data[pos:end])
                    break
                self.rows[self.open_copy] += data.count(b"\n", pos, term)
                out.append(data[pos : term + len(_TERMINATOR)])
                pos = term + len(_TERMINATOR)
                self._in_copy = False
                self.open_copy = None
                continue
            eol = data.index(b"\n", pos)
            line = data[pos:eol]
            if line not in self.drop:
                out.append(data[pos : eol + 1])
            self._outside_copy(line)
            pos = eol + 1
        return out[0] if len(out) == 1 else b"".join(out)

    def _outside_copy(self, line: bytes) -> None:
        if line.startswith(b"COPY ") and line.endswith(b" FROM stdin;"):
            self._in_copy = True
            self.open_copy = parse_copy_header(line)
            self.rows.setdefault(self.open_copy, 0)


def drop_lines(drop: tuple[bytes, ...]) -> Callable[[bytes], bytes]:
    """A transform for SQL files (no COPY data) that drops whole lines equal to one of drop."""
    dropped = frozenset(drop)
    carry = [b""]

    def transform(chunk: bytes) -> bytes:
        if not chunk:
            rest, carry[0] = carry[0], b""
            return b"" if rest in dropped else rest
        data = carry[0] + chunk
        end = data.rfind(b"\n") + 1
        carry[0] = data[end:]
        if not any(d in data for d in dropped):
            return data[:end]
        lines = data[:end].split(b"\n")
        return b"\n".join(ln for ln in lines if ln not in dropped)

    return transform
