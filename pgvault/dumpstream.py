"""Reading and rewriting pg_dump's plain output as it streams, in constant memory.

CopyStats counts each table's rows and hashes its COPY block; RolesRewriter makes
pg_dumpall's roles file restorable into a cluster that already has some of its roles.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import Any

_TERMINATOR = b"\\.\n"


def parse_copy_header(line: bytes) -> str:
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
    hasher: Any = field(default_factory=hashlib.sha256)

    @property
    def sha256(self) -> str:
        return str(self.hasher.hexdigest())


class CopyStats:
    """Observer of a data stream: rows and a sha256 of the COPY rows, per table."""

    def __init__(self) -> None:
        self.tables: dict[str, TableStats] = {}
        self._carry = b""
        self._current: TableStats | None = None

    def feed(self, chunk: bytes) -> None:
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
            self._carry = chunk[start:]
            return
        self._carry = chunk[end:]
        self._scan(chunk, start, end)

    def _scan(self, block: bytes, pos: int, end: int) -> None:
        # Invariant: pos is always at the start of a line.
        view = memoryview(block)
        while pos < end:
            cur = self._current
            if cur is None:
                idx = block.find(b"COPY ", pos, end)
                while idx > pos and block[idx - 1] != 0x0A:
                    idx = block.find(b"COPY ", idx + 1, end)
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
            if block.startswith(_TERMINATOR, pos):
                term = pos
            else:
                found = block.find(b"\n" + _TERMINATOR, pos, end)
                term = found + 1 if found >= 0 else -1
            stop = end if term < 0 else term
            cur.rows += block.count(b"\n", pos, stop)
            cur.hasher.update(view[pos:stop])
            if term < 0:
                return
            self._current = None
            pos = term + len(_TERMINATOR)

    def result(self) -> dict[str, dict[str, object]]:
        return {
            name: {"rows": st.rows, "sha256": st.sha256} for name, st in sorted(self.tables.items())
        }


_CREATE_ROLE = re.compile(rb"^CREATE ROLE (.+);$")


class RolesRewriter:
    """Transform for pg_dumpall --roles-only output.

    `CREATE ROLE x;` aborts a restore into any cluster that has x (every cluster has
    its bootstrap superuser), so each becomes a block that tolerates an existing role.
    The ALTER ROLE that follows still sets every attribute, so the result is the same.
    """

    def __init__(self) -> None:
        self._carry = b""

    def __call__(self, chunk: bytes) -> bytes:
        if not chunk:  # end of stream
            rest, self._carry = self._carry, b""
            return self._rewrite(rest)
        data = self._carry + chunk
        end = data.rfind(b"\n") + 1
        self._carry = data[end:]
        return self._rewrite(data[:end])

    @staticmethod
    def _rewrite(block: bytes) -> bytes:
        if b"CREATE ROLE " not in block:
            return block
        lines = block.split(b"\n")
        for i, line in enumerate(lines):
            m = _CREATE_ROLE.match(line)
            if m:
                lines[i] = (
                    b"DO $pgvault$ BEGIN CREATE ROLE " + m.group(1) + b"; "
                    b"EXCEPTION WHEN duplicate_object THEN NULL; END $pgvault$;"
                )
        return b"\n".join(lines)
