"""What psql reads during a restore: the data filter, the one-transaction stream, and the
choices made before it (prefix, psql version, confirmation). No server needed."""

from __future__ import annotations

import hashlib
import io
import itertools
import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pgvault import catalog, load, restore
from pgvault.config import Confirm, PgvaultConfig, RestoreConfig
from pgvault.dumpstream import DataFilter, drop_lines, parse_copy_header
from pgvault.errors import ClientProgramError, ConfigError, IntegrityError, Refused
from tests.manifests import manifest

SETTING = b"SET transaction_timeout = 0;"
DROP = frozenset((b"BEGIN;", b"COMMIT;", SETTING))

# Lines outside COPY data, the ones to drop among them, and near misses that must stay.
sql_line = st.sampled_from(
    [
        b"BEGIN;",
        b"COMMIT;",
        SETTING,
        b"",
        b"--",
        b"-- BEGIN;",
        b" BEGIN;",
        b"BEGIN; ",
        b"COMMIT",
        b"SET row_security = off;",
        b"SELECT pg_catalog.lo_open('16400', 131072);",
        b"SELECT pg_catalog.lowrite(0, '\\x00ff10');",
        b"\\unrestrict abc",
        b"COPY in a comment?",
    ]
)
# Rows of COPY data: escaped text never holds a raw \n, and `\.` alone only ends the block.
row = st.sampled_from(
    [
        b"BEGIN;",
        b"COMMIT;",
        SETTING,
        b"COPY public.t (a) FROM stdin;",
        b"\\\\.",
        b"\\N",
        b"",
        b"1\tBEGIN;",
    ]
) | st.binary(max_size=12).map(lambda b: b.replace(b"\n", b"n").replace(b"\\", b"\\\\"))
table = st.sampled_from(["public.t", 'crm."Odd ""x"" (t)"', '"S p"."a b"'])
copy_block = st.tuples(table, st.lists(row, max_size=6)).map(
    lambda t: [f"COPY {t[0]} (a, b) FROM stdin;".encode(), *t[1], b"\\."]
)
stream = st.lists(sql_line.map(lambda x: [x]) | copy_block, max_size=12).map(
    lambda parts: b"".join(line + b"\n" for part in parts for line in part)
)


def reference(data: bytes, drop: frozenset[bytes]) -> tuple[bytes, str | None]:
    """The filter's meaning, one whole line at a time: drop listed lines outside COPY data;
    a last line without a newline counts as a line, but never ends a COPY block."""
    out = []
    open_copy = None
    lines = data.split(b"\n")
    for i, line in enumerate(lines):
        last = i == len(lines) - 1
        if last and not line:
            break
        end = b"" if last else b"\n"
        if open_copy is not None:
            out.append(line + end)
            if line == b"\\." and not last:
                open_copy = None
        elif line not in drop:
            out.append(line + end)
            if line.startswith(b"COPY ") and line.endswith(b" FROM stdin;"):
                open_copy = parse_copy_header(line)
    return b"".join(out), open_copy


def pieces(data: bytes, cuts: list[int]) -> list[bytes]:
    """data cut at the given points (wrapped into range), then the end-of-stream b""."""
    bounds = [0, *sorted({c % (len(data) + 1) for c in cuts}), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds) if b > a] + [b""]


def run_filter(data: bytes, cuts: list[int]) -> tuple[bytes, str | None]:
    f = DataFilter((SETTING,))
    out = b"".join(f(piece) for piece in pieces(data, cuts))
    return out, f.open_copy


@given(stream, st.lists(st.integers(0, 10**6), max_size=30))
def test_data_filter_drops_exactly_the_lines_outside_copy_in_any_chunking(data, cuts):
    out, open_copy = run_filter(data, cuts)
    assert (out, open_copy) == reference(data, DROP)
    assert open_copy is None


def reference_rows(data: bytes) -> dict[str, int]:
    """Rows per table, one whole line at a time (a table's blocks add up)."""
    rows: dict[str, int] = {}
    current = None
    for line in data.split(b"\n")[:-1]:
        if current is not None:
            if line == b"\\.":
                current = None
            else:
                rows[current] += 1
        elif line.startswith(b"COPY ") and line.endswith(b" FROM stdin;"):
            current = parse_copy_header(line)
            rows.setdefault(current, 0)
    return rows


@given(stream, st.lists(st.integers(0, 10**6), max_size=30))
def test_data_filter_counts_each_tables_rows_in_any_chunking(data, cuts):
    f = DataFilter()
    for piece in pieces(data, cuts):
        f(piece)
    assert f.rows == reference_rows(data)


@given(stream, st.integers(0, 10**6), st.lists(st.integers(0, 10**6), max_size=30))
def test_data_filter_names_the_table_whose_copy_never_ended(data, stop, cuts):
    cut = data[: stop % (len(data) + 1)]
    assert run_filter(cut, cuts) == reference(cut, DROP)


def test_data_filter_keeps_rows_that_read_like_transaction_control():
    data = (
        b"SET row_security = off;\n"
        b"COPY public.t (a) FROM stdin;\nBEGIN;\nCOMMIT;\n\\.\n"
        b"BEGIN;\nSELECT pg_catalog.lo_open('1', 131072);\nCOMMIT;\n"
        b"COPY public.u (a) FROM stdin;\nBEGIN;"
    )
    for size in (1, 2, 7, len(data)):
        f = DataFilter()
        out = b"".join(f(data[i : i + size]) for i in range(0, len(data), size)) + f(b"")
        assert out == (
            b"SET row_security = off;\n"
            b"COPY public.t (a) FROM stdin;\nBEGIN;\nCOMMIT;\n\\.\n"
            b"SELECT pg_catalog.lo_open('1', 131072);\n"
            b"COPY public.u (a) FROM stdin;\nBEGIN;"
        )
        assert f.open_copy == "public.u"


def test_a_copy_header_on_the_last_line_is_an_open_copy():
    # psql would read everything after it (post-data, COMMIT) as rows.
    f = DataFilter()
    assert f(b"SET x = 1;\nCOPY public.t (a) FROM stdin;") == b"SET x = 1;\n"
    assert f(b"") == b"COPY public.t (a) FROM stdin;"
    assert f.open_copy == "public.t"


@given(
    st.lists(st.sampled_from([SETTING, b"SET a = 1;", b"", b"x" + SETTING, b"BEGIN;"])),
    st.booleans(),
    st.lists(st.integers(0, 10**6), max_size=20),
)
def test_drop_lines_drops_whole_lines_in_any_chunking(lines, final_newline, cuts):
    data = b"\n".join(lines) + (b"\n" if final_newline and lines else b"")
    transform = drop_lines((SETTING,))
    out = [transform(piece) for piece in pieces(data, cuts)]
    kept = [ln for ln in data.split(b"\n")]
    if kept and kept[-1] == b"":
        kept.pop()
        expected = b"".join(ln + b"\n" for ln in kept if ln != SETTING)
    else:
        *whole, last = kept or [b""]
        expected = b"".join(ln + b"\n" for ln in whole if ln != SETTING)
        expected += b"" if last == SETTING else last
    assert b"".join(out) == expected


# --- the stream psql reads -----------------------------------------------------------

PRE = b"SET statement_timeout = 0;\nSET transaction_timeout = 0;\nCREATE TABLE public.t (a text);\n"
POST = b"SET transaction_timeout = 0;\nCREATE INDEX t_a ON public.t (a);\n"
COPY = b"COPY public.t (a) FROM stdin;\nBEGIN;\nCOMMIT;\nSET transaction_timeout = 0;\n\\.\n"
DATA = (
    b"SET transaction_timeout = 0;\n"
    + COPY
    + b"BEGIN;\nSELECT pg_catalog.lo_open('16400', 131072);\nCOMMIT;\n"
    + b"REFRESH MATERIALIZED VIEW public.mv;\n"
)


def fake_set(
    tmp_path: Path, data: bytes = DATA, tables: dict[str, dict[str, object]] | None = None
) -> catalog.BackupSet:
    prefix = "backup-2026-01-31-120000"
    files = {
        "roles": tmp_path / f"{prefix}-roles.sql",
        "schema": tmp_path / f"{prefix}-schema.sql",
        "data": tmp_path / f"{prefix}-data.sql",
    }
    files["roles"].write_bytes(b"SET default_transaction_read_only = off;\nALTER ROLE x;")
    files["schema"].write_bytes(PRE + POST)
    files["data"].write_bytes(data)
    sizes = {
        k: {"name": p.name, "size": p.stat().st_size,
            "sha256": hashlib.sha256(p.read_bytes()).hexdigest()}
        for k, p in files.items()
    }  # fmt: skip
    if tables is None:
        tables = {"public.t": {"rows": 3, "sha256": "0" * 64}}
    m = manifest(prefix, files=sizes, schema_post_data_offset=len(PRE), tables=tables,
                 clients={"bindir": "/usr/bin", "version": "17.2"})  # fmt: skip
    return catalog.BackupSet(prefix, tmp_path, files, manifest=m)


def stream_of(bset: catalog.BackupSet, server_major: int) -> bytes:
    return b"".join(load.restore_parts(bset, server_major)([]))


def test_one_transaction_in_restore_order(tmp_path):
    out = stream_of(fake_set(tmp_path), 17)
    assert out.startswith(b"BEGIN;\n") and out.endswith(b"\nCOMMIT;\n")
    # Apart from the COPY rows, the only transaction control is the first and last line.
    outside = out.replace(COPY, b"").split(b"\n")
    control = [i for i, ln in enumerate(outside) if ln.strip().upper() in (b"BEGIN;", b"COMMIT;")]
    assert control == [0, len(outside) - 2]
    assert COPY in out
    order = [
        b"ALTER ROLE x;",
        load.WIPE_SQL.encode(),
        b"CREATE TABLE public.t",
        b"SET session_replication_role = replica;",
        b"COPY public.t",
        b"lo_open",
        b"REFRESH MATERIALIZED VIEW",
        b"SET session_replication_role = DEFAULT;",
        b"CREATE INDEX t_a",
        b"COMMIT;\n",
    ]
    positions = [out.rindex(part) if part == b"COMMIT;\n" else out.index(part) for part in order]
    assert positions == sorted(positions)


def test_settings_older_servers_lack_are_dropped_outside_copy_only(tmp_path):
    bset = fake_set(tmp_path)
    assert stream_of(bset, 17).count(SETTING + b"\n") == 4
    old = stream_of(bset, 15)
    assert old.count(SETTING + b"\n") == 1 and COPY in old


def test_a_truncated_data_file_stops_the_stream_before_commit(tmp_path):
    bset = fake_set(tmp_path, data=DATA[: DATA.index(b"\\.\n")])
    sent = []
    with pytest.raises(IntegrityError, match=r"ends inside the data of public\.t"):
        for chunk in load.restore_parts(bset, 17)([]):
            sent.append(chunk)
    tail = b"".join(sent)
    assert tail.endswith(DATA[: DATA.index(b"\\.\n")])
    assert b"session_replication_role = DEFAULT" not in tail and b"CREATE INDEX" not in tail


def test_rows_that_disagree_with_the_manifest_stop_the_stream_before_commit(tmp_path):
    assert stream_of(fake_set(tmp_path), 17).endswith(b"COMMIT;\n")  # 3 rows: it agrees
    x = "0" * 64
    for tables, named in [
        ({"public.t": {"rows": 4, "sha256": x}}, "public.t has 3 rows, the backup had 4"),
        (
            {"public.t": {"rows": 3, "sha256": x}, "public.u": {"rows": 1, "sha256": x}},
            "public.u has no rows, the backup",
        ),
    ]:
        bset = fake_set(tmp_path, tables=tables)
        sent = []
        with pytest.raises(IntegrityError, match=re.escape(named)):
            for chunk in load.restore_parts(bset, 17)([]):
                sent.append(chunk)
        assert b"CREATE INDEX" not in b"".join(sent)
        # force=true restores it anyway.
        assert b"".join(load.restore_parts(bset, 17, strict=False)([])).endswith(b"COMMIT;\n")


# --- choices made before anything changes --------------------------------------------


def fake_psql(bindir: Path, version: str) -> Path:
    bindir.mkdir(parents=True)
    psql = bindir / "psql"
    psql.write_text(f"#!/bin/sh\necho 'psql (PostgreSQL) {version}'\n")
    psql.chmod(0o755)
    return psql


def test_psql_must_read_what_the_newer_pg_dump_wrote(tmp_path):
    new = fake_psql(tmp_path / "17", "17.2")
    assert load.psql_for(15, 17, "db:5432", str(new.parent)) == str(new)
    old = fake_psql(tmp_path / "15", "15.20")
    assert load.psql_for(15, 15, "db:5432", str(old.parent)) == str(old)
    with pytest.raises(ClientProgramError) as e:
        load.psql_for(15, 17, "db:5432", str(old.parent))
    assert "pg_dump 17" in e.value.what and "psql 17+" in e.value.what
    assert "postgresql-client-17" in e.value.hint


@pytest.mark.parametrize(
    ("version", "knows"),
    [("15.13", False), ("15.14", True), ("16.9", False), ("16.10", True), ("17.6", True),
     ("13.21", False), ("18beta1", True), ("12.22", False), ("0", False)],
)  # fmt: skip
def test_which_releases_know_restrict(version, knows):
    assert load.knows_restrict(version) is knows


def test_a_dump_with_restrict_lines_needs_a_psql_that_reads_them(tmp_path):
    old = fake_psql(tmp_path / "old", "15.13")
    with pytest.raises(ClientProgramError) as e:
        load.psql_for(15, 15, "db:5432", str(old.parent), dump_version="15.14")
    assert "pg_dump 15.14" in e.value.what and "postgresql-client-15" in e.value.hint
    assert load.psql_for(15, 15, "db:5432", str(old.parent), dump_version="15.13") == str(old)
    new = fake_psql(tmp_path / "new", "15.20")
    assert load.psql_for(15, 15, "db:5432", str(new.parent), dump_version="15.14") == str(new)


def test_psql_must_talk_to_the_server(tmp_path):
    old = fake_psql(tmp_path / "15", "15.20")
    with pytest.raises(ClientProgramError) as e:
        load.psql_for(16, 14, "db:5432", str(old.parent))
    assert "PostgreSQL 16 server at db:5432" in e.value.what
    assert "postgresql-client-16" in e.value.hint


@pytest.mark.parametrize(
    "prefix",
    [
        None,
        "",
        "../x",
        "../backup-2026-01-31-120000",
        "a/backup-2026-01-31-120000",
        "backup-2026-01-31-120000/..",
        "/srv/backups/../backup-2026-01-31-120000",
        "/srv/backups/not-a-set",
        "backup-2026-13-31-120000",
        "backup-2026-01-31-120000-data.sql",
    ],
)
def test_only_pgvault_names_are_prefixes(prefix):
    with pytest.raises(ConfigError):
        catalog.resolve_prefix(prefix, "/srv/backups")


def test_short_and_absolute_prefixes():
    assert catalog.resolve_prefix("backup-2026-01-31-120000", "/srv/b") == (
        Path("/srv/b"),
        "backup-2026-01-31-120000",
    )
    assert catalog.resolve_prefix("/mnt/x/backup-2026-01-31-120000", None) == (
        Path("/mnt/x"),
        "backup-2026-01-31-120000",
    )


class _Stdin(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


def _never_asked(prompt: str) -> str:
    raise AssertionError("must not ask")


def cfg(confirm: Confirm, yes: bool) -> PgvaultConfig:
    return PgvaultConfig(restore=RestoreConfig(confirm=confirm, yes=yes))


QUESTION = "Replace database crm at db:5432 with backup-2026-01-31-120000? (y/N) "


@pytest.mark.parametrize(
    ("confirm", "yes"), [(Confirm.never, False), (Confirm.never, True), (Confirm.tty, True)]
)
def test_policies_that_need_no_question(monkeypatch, confirm, yes):
    monkeypatch.setattr("sys.stdin", _Stdin(tty=False))
    assert restore.confirmed(cfg(confirm, yes), QUESTION, _never_asked)


@pytest.mark.parametrize(
    ("confirm", "yes", "hint"),
    [(Confirm.tty, False, "yes=true"), (Confirm.always, True, "restore.confirm=always")],
)
def test_no_terminal_refuses_instead_of_waiting(monkeypatch, confirm, yes, hint):
    monkeypatch.setattr("sys.stdin", _Stdin(tty=False))
    with pytest.raises(Refused, match="no terminal") as e:
        restore.confirmed(cfg(confirm, yes), QUESTION, _never_asked)
    assert hint in e.value.hint
    monkeypatch.setattr("sys.stdin", None)  # cron may close stdin altogether
    with pytest.raises(Refused):
        restore.confirmed(cfg(confirm, yes), QUESTION, _never_asked)


@given(st.sampled_from(["y", "Y", "yes", " YES\n", "n", "", "no", "yes please", "j"]) | st.text())
def test_only_yes_proceeds(answer):
    asked = []

    def ask(prompt: str) -> str:
        asked.append(prompt)
        return answer

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("sys.stdin", _Stdin(tty=True))
        ok = restore.confirmed(cfg(Confirm.always, True), QUESTION, ask)
    assert ok == (answer.strip().lower() in ("y", "yes"))
    assert asked == [QUESTION]


def test_end_of_input_cancels(monkeypatch):
    def eof(prompt: str) -> str:
        raise EOFError

    monkeypatch.setattr("sys.stdin", _Stdin(tty=True))
    assert not restore.confirmed(cfg(Confirm.tty, False), QUESTION, eof)


def test_file_problems_name_size_and_checksum(tmp_path):
    bset = fake_set(tmp_path)
    assert restore.file_problems(bset) == []
    data = bset.files["data"]
    data.write_bytes(data.read_bytes().replace(b"public.mv", b"public.mw"))
    with open(bset.files["roles"], "ab") as f:
        f.write(b"\n")
    problems = restore.file_problems(bset)
    assert len(problems) == 2
    assert any("roles.sql is" in p and "the manifest says" in p for p in problems)
    assert any("data.sql does not match its sha256" in p for p in problems)
