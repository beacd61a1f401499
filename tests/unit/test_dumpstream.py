from __future__ import annotations

import hashlib
import re

from hypothesis import example, given
from hypothesis import strategies as st

from pgvault.dumpstream import CopyStats, RolesRewriter, find_terminator, parse_copy_header

# COPY text format escapes backslash, tab, newline and CR, so rows never contain them raw.
cell = st.text(
    alphabet=st.characters(blacklist_characters="\t\n\r\\", blacklist_categories=("Cs",)),
    max_size=8,
).map(lambda s: s.replace("\\", "\\\\")) | st.sampled_from(
    ["\\N", "\\\\.", "\\\\", "\\t", "\\n", "."]
)
row = st.lists(cell, min_size=1, max_size=3).map(lambda cells: "\t".join(cells) + "\n")
table = st.tuples(
    st.sampled_from(["public.t", 'crm."Odd ""x"" (t)"', '"S p"."a b"']),
    st.lists(row, max_size=20),
)


def render(tables):
    parts = ["--\n-- PostgreSQL database dump\n--\nSET x = 1;\n"]
    for name, rows in tables:
        parts.append(f"COPY {name} (a, b) FROM stdin;\n" + "".join(rows) + "\\.\n\n")
    parts.append("SELECT pg_catalog.lowrite(0, '\\x434f5059');\nCOPY in a comment?\n")
    return "".join(parts).encode()


def feed_in_pieces(data: bytes, cuts: list[int], *, reused: bool = False) -> CopyStats:
    """Feed data cut at cuts. reused: each piece in a bytearray that is scribbled over as
    soon as feed() returns, as pgvault.direct reuses its one read buffer."""
    stats = CopyStats()
    pos = 0
    for cut in [*sorted(set(c % (len(data) + 1) for c in cuts)), len(data)]:
        piece = data[pos:cut]
        if reused:
            buffer = bytearray(piece)
            stats.feed(buffer)
            buffer[:] = b"\xff" * len(buffer)
        else:
            stats.feed(piece)
        pos = cut
    return stats


@given(st.lists(table, max_size=4, unique_by=lambda t: t[0]), st.lists(st.integers(0, 10**6)))
def test_counts_and_hashes_do_not_depend_on_chunking(tables, cuts):
    data = render(tables)
    stats = feed_in_pieces(data, cuts).result()
    assert feed_in_pieces(data, cuts, reused=True).result() == stats
    expected = {
        name: {
            "rows": len(rows),
            "size": len("".join(rows).encode()),
            "sha256": hashlib.sha256("".join(rows).encode()).hexdigest(),
        }
        for name, rows in tables
    }
    assert stats == expected


def first_terminator(block: bytes, pos: int, end: int) -> int:
    """The plain definition: the first line in block[pos:end] that is exactly `\\.`."""
    at = pos
    while at < end:
        eol = block.find(b"\n", at, end)
        if eol < 0:
            return -1
        if block[at:eol] == b"\\.":
            return at
        at = eol + 1
    return -1


@given(
    st.lists(
        st.sampled_from([b"\\", b".", b"\n", b"N", b"ab", b"\\.\n", b"\\N\t", b"\\\n"]), max_size=80
    ),
    st.integers(0, 400),
    st.integers(0, 400),
    st.integers(1, 20),
)
@example([b"\\\n", b"\\.\n"], 0, 9, 1)  # the end found right after a backslash that was not it
def test_the_terminator_search_finds_the_first_line_that_ends_the_data(pieces, a, b, patience):
    """Many backslashes (past the point where the search changes strategy) or none, the
    answer is the first whole line `\\.` in the range, whatever the range's bounds."""
    block = b"".join(pieces)
    # pos must start a line: the block's start or just after one of its newlines.
    starts = [0] + [i + 1 for i, c in enumerate(block) if c == 0x0A]
    pos = starts[a % len(starts)]
    end = pos + b % (len(block) - pos + 1)
    assert find_terminator(block, pos, end, patience) == first_terminator(block, pos, end)


def test_copy_header_names():
    assert parse_copy_header(b"COPY public.t (a, b) FROM stdin;") == "public.t"
    assert parse_copy_header(
        b'COPY "Odd Schema"."Mixed Case ""Table""" ("select") FROM stdin;'
    ) == ('"Odd Schema"."Mixed Case ""Table"""')
    assert parse_copy_header(b'COPY crm."a (b" FROM stdin;') == 'crm."a (b"'


@given(st.lists(st.integers(0, 400)))
def test_roles_rewrite_tolerates_existing_roles_in_any_chunking(cuts):
    src = (
        b"SET default_transaction_read_only = off;\n"
        b"CREATE ROLE postgres;\nALTER ROLE postgres WITH SUPERUSER LOGIN;\n"
        b'CREATE ROLE "odd ""role""";\nALTER ROLE "odd ""role""" WITH NOLOGIN;\n'
        b"-- CREATE ROLE not_a_statement;\n"
    )
    rw = RolesRewriter()
    out = b""
    pos = 0
    for cut in sorted(set(c % (len(src) + 1) for c in cuts)):
        out += rw(src[pos:cut])
        pos = cut
    out += rw(src[pos:]) + rw(b"")
    lines = out.decode().splitlines()
    assert not any(line.startswith("CREATE ROLE") for line in lines)
    assert sum("EXCEPTION WHEN duplicate_object" in line for line in lines) == 2
    assert 'CREATE ROLE "odd ""role"""; EXCEPTION' in out.decode()
    assert "ALTER ROLE postgres WITH SUPERUSER LOGIN;" in lines
    assert "-- CREATE ROLE not_a_statement;" in lines


# Sequence names as pg_dump quotes them, single quotes doubled inside the literal.
seq_names = st.sampled_from(["public.t_id_seq", '"Odd S"."q\'s"', 'crm."A""b"'])
setvals = st.lists(
    st.tuples(seq_names, st.integers(-(2**63), 2**63 - 1), st.booleans()), max_size=6
)


@given(
    setvals, st.lists(table, max_size=2, unique_by=lambda t: t[0]), st.lists(st.integers(0, 10**6))
)
def test_sequences_come_from_setval_lines_outside_copy(calls, tables, cuts):
    lines = [
        f"SELECT pg_catalog.setval('{name.replace(chr(39), chr(39) * 2)}', {value}, "
        f"{'true' if called else 'false'});\n"
        for name, value, called in calls
    ]
    decoy = "SELECT pg_catalog.setval('in_copy', 1, true);\n"
    body = "".join(
        f"COPY {name} (a) FROM stdin;\n" + "".join(rows) + decoy + "\\.\n" for name, rows in tables
    )
    data = (body + "".join(lines)).encode()
    stats = feed_in_pieces(data, cuts)
    expected: dict[str, int | None] = {}
    for name, value, called in calls:
        expected[name] = value if called else None
    assert stats.sequences == expected


def _quote_ident(name: str) -> bytes:
    return ('"' + name.replace('"', '""') + '"').encode()


role_names = st.text(
    st.sampled_from(list("ab$'\"\n; -CREATE ROLpgvaut")), min_size=1, max_size=24
) | st.sampled_from(["x$pgvault$y", "line1\nline2", "$pgvault$", "a\nCREATE ROLE b;\nc"])


@given(st.lists(role_names, min_size=1, max_size=4, unique=True), st.lists(st.integers(0, 10**4)))
def test_roles_rewrite_reads_names_as_sql_does(names, cuts):
    """Any role name (dollar signs, newlines, quotes, text that looks like a statement)
    gives exactly one tolerant CREATE per role, whose dollar quote the name cannot end."""
    src = b"SET standard_conforming_strings = on;\n"
    for name in names:
        q = _quote_ident(name)
        src += b"CREATE ROLE " + q + b";\nALTER ROLE " + q + b" WITH NOLOGIN;\n"
        src += b"COMMENT ON ROLE " + q + b" IS '" + name.replace("'", "''").encode() + b"';\n"
    rw = RolesRewriter()
    out = b""
    pos = 0
    for cut in sorted({c % (len(src) + 1) for c in cuts} - {0}):
        out += rw(src[pos:cut])
        pos = cut
    out += rw(src[pos:]) + rw(b"")
    for name in names:
        q = _quote_ident(name)
        m = re.search(rb"DO (\$pgvault\d*\$) BEGIN CREATE ROLE " + re.escape(q) + rb"; ", out)
        assert m is not None, out
        body = out[m.end() : out.index(m[1], m.end())]
        assert body == b"EXCEPTION WHEN duplicate_object THEN NULL; END "
        assert m[1] not in q
        assert b"\nALTER ROLE " + q + b" WITH NOLOGIN;\n" in out
    assert out.count(b"EXCEPTION WHEN duplicate_object") == len(names)
    # Nothing else changed: undoing the wrapping gives the input back.
    undone = re.sub(
        rb"DO (\$pgvault\d*\$) BEGIN (CREATE ROLE .*?); EXCEPTION WHEN duplicate_object THEN"
        rb" NULL; END \1;",
        rb"\2;",
        out,
        flags=re.S,
    )
    assert undone == src
