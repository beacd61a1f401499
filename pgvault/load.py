"""The atomic load that restore and verify share: one psql session reading one stream,
BEGIN, roles, a wipe of the database, pre-data, data (triggers off), post-data, COMMIT,
so that any failure on the way leaves the database exactly as it was.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

from pgvault import clients, pipeline
from pgvault.catalog import BackupSet
from pgvault.connection import Conn
from pgvault.dumpfilter import Entry, EntryFilter, chain
from pgvault.dumpstream import DataFilter, drop_lines
from pgvault.errors import ClientProgramError, IntegrityError, PgvaultError
from pgvault.listener import Listener, Silent
from pgvault.manifest import TableEntry
from pgvault.profiles import Plan

# Server versions before 17 reject this line, which pg_dump 17 and newer write.
_NEW_SETTINGS = (b"SET transaction_timeout = 0;",)

# Drops everything pg_dump would dump from the database (roles are cluster-wide and are
# only created or updated), then makes `public` as initdb does: pg_dump writes only how
# a database's public schema differs from that.
WIPE_SQL = """
DO $pgvault$
DECLARE r record; a record; kind text;
BEGIN
    PERFORM pg_catalog.lo_unlink(oid) FROM pg_catalog.pg_largeobject_metadata;
    FOR r IN SELECT evtname FROM pg_catalog.pg_event_trigger LOOP
        EXECUTE format('DROP EVENT TRIGGER %I', r.evtname);
    END LOOP;
    FOR r IN SELECT pubname FROM pg_catalog.pg_publication LOOP
        EXECUTE format('DROP PUBLICATION %I', r.pubname);
    END LOOP;
    FOR r IN SELECT extname FROM pg_catalog.pg_extension WHERE extname <> 'plpgsql' LOOP
        EXECUTE format('DROP EXTENSION IF EXISTS %I CASCADE', r.extname);
    END LOOP;
    FOR r IN SELECT nspname FROM pg_catalog.pg_namespace
        WHERE nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')
            AND nspname !~ '^pg_(toast_)?temp_' LOOP
        EXECUTE format('DROP SCHEMA IF EXISTS %I CASCADE', r.nspname);
    END LOOP;
    FOR r IN SELECT fdwname FROM pg_catalog.pg_foreign_data_wrapper LOOP
        EXECUTE format('DROP FOREIGN DATA WRAPPER IF EXISTS %I CASCADE', r.fdwname);
    END LOOP;
    FOR r IN SELECT format_type(castsource, NULL) AS s, format_type(casttarget, NULL) AS t
        FROM pg_catalog.pg_cast WHERE oid >= 16384 LOOP
        EXECUTE format('DROP CAST IF EXISTS (%s AS %s) CASCADE', r.s, r.t);
    END LOOP;
    -- Default privileges not bound to a schema: set each back to the built-in default,
    -- which removes its entry (those bound to a schema went with it).
    FOR r IN SELECT defaclrole::regrole::text AS role, defaclrole, defaclobjtype, defaclacl
        FROM pg_catalog.pg_default_acl WHERE defaclnamespace = 0 LOOP
        kind := CASE r.defaclobjtype WHEN 'r' THEN 'TABLES' WHEN 'S' THEN 'SEQUENCES'
            WHEN 'f' THEN 'FUNCTIONS' WHEN 'T' THEN 'TYPES' WHEN 'n' THEN 'SCHEMAS' END;
        FOR a IN SELECT DISTINCT
                CASE WHEN x.grantee = 0 THEN 'PUBLIC' ELSE x.grantee::regrole::text END AS who
            FROM pg_catalog.aclexplode(r.defaclacl) x LOOP
            EXECUTE format('ALTER DEFAULT PRIVILEGES FOR ROLE %s REVOKE ALL ON %s FROM %s',
                           r.role, kind, a.who);
        END LOOP;
        FOR a IN SELECT x.privilege_type AS priv,
                CASE WHEN x.grantee = 0 THEN 'PUBLIC' ELSE x.grantee::regrole::text END AS who
            FROM pg_catalog.aclexplode(pg_catalog.acldefault(
                CASE r.defaclobjtype WHEN 'S' THEN 's' ELSE r.defaclobjtype END,
                r.defaclrole)) x LOOP
            EXECUTE format('ALTER DEFAULT PRIVILEGES FOR ROLE %s GRANT %s ON %s TO %s',
                           r.role, a.priv, kind, a.who);
        END LOOP;
    END LOOP;
    IF current_setting('server_version_num')::int >= 150000 THEN
        CREATE SCHEMA public AUTHORIZATION pg_database_owner;
        GRANT USAGE ON SCHEMA public TO PUBLIC;
    ELSE
        CREATE SCHEMA public;
        EXECUTE format('ALTER SCHEMA public OWNER TO %I',
                       (SELECT rolname FROM pg_catalog.pg_authid WHERE oid = 10));
        GRANT ALL ON SCHEMA public TO PUBLIC;
    END IF;
    COMMENT ON SCHEMA public IS 'standard public schema';
END $pgvault$;
"""


# The releases from which pg_dump writes `\restrict` lines and psql reads them; an older
# psql of the same major version stops at the first one.
_RESTRICT_SINCE = {13: (13, 22), 14: (14, 19), 15: (15, 14), 16: (16, 10), 17: (17, 6)}


def knows_restrict(version: str) -> bool:
    """Whether a PostgreSQL client of this version writes (pg_dump) or reads (psql)
    `\restrict`."""
    numbers = tuple(int(n) for n in re.findall(r"\d+", version)[:2])
    if not numbers:
        return False
    if numbers[0] >= 18:
        return True
    since = _RESTRICT_SINCE.get(numbers[0])
    return since is not None and numbers >= since


def psql_for(
    server_major: int,
    dump_major: int,
    where: str,
    bindir: str | None,
    dump_version: str = "",
    *,
    ssl: bool = False,
) -> str:
    """psql that can talk to the server and read what the set's pg_dump wrote: at least
    both major versions, new enough for `\restrict` when the pg_dump wrote it, and built
    with SSL when the connection needs it."""
    found = clients.available_programs(("psql",), bindir)
    if knows_restrict(dump_version):
        found = [p for p in found if knows_restrict(p.version)]
    need_major = max(server_major, dump_major)
    if ssl:
        found = clients.with_ssl(found, need_major, "psql", where)
    chosen = clients.pick(need_major, found)
    if chosen is not None:
        return chosen.path("psql")
    if dump_major > server_major:
        need = dump_major
        what = f"this set was written by pg_dump {dump_major}; restoring it needs psql {need}+"
    elif knows_restrict(dump_version):
        need = max(server_major, dump_major)
        what = (
            f"this set was written by pg_dump {dump_version}, whose \\restrict lines need a "
            f"psql {need} of the same release or newer"
        )
    else:
        need = server_major
        what = f"no psql {need} or newer for the PostgreSQL {need} server at {where}"
    raise ClientProgramError(what, clients.install_hint(need))


def row_mismatches(expected: Mapping[str, TableEntry], seen: dict[str, int]) -> list[str]:
    """Tables whose row count in the data stream differs from the manifest's."""
    out = []
    for name in sorted(set(expected) | set(seen)):
        want = expected[name].rows if name in expected else None
        got = seen.get(name)
        if want != got:
            out.append(f"{name} has {'no' if got is None else got} rows, the backup had {want}")
    return out


def restore_parts(
    bset: BackupSet,
    server_major: int,
    *,
    strict: bool = True,
    schema_keep: Callable[[Entry], bool] | None = None,
    lock_timeout_ms: int = 60_000,
    identity: str | None = None,
) -> Callable[[list[pipeline.Stage]], Iterator[bytes]]:
    """The one stream psql reads: the whole restore inside a single transaction, in the
    order pre-data, data, post-data, so indexes and constraints are built once.

    strict: stop before COMMIT when the data file's rows disagree with the manifest (a
    file cut between two tables restores cleanly otherwise). schema_keep: leave out the
    schema file's entries for which it is false (verify: extensions a server lacks).
    lock_timeout_ms: how long the wipe waits for a table another session holds. identity:
    the age key file an encrypted set is decrypted with."""
    drop = _NEW_SETTINGS if server_major < 17 else ()
    assert bset.manifest is not None, "restore_parts takes a complete set"
    manifest = bset.manifest
    offset = manifest.schema_post_data_offset
    decompress = clients.decompressor(bset.compression)
    wipe = Plan.from_manifest(manifest).wipe_sql() or WIPE_SQL

    def sql_file(
        path: Path,
        running: list[pipeline.Stage],
        start: int = 0,
        stop: int | None = None,
        keep: Callable[[Entry], bool] | None = None,
    ) -> Iterator[bytes]:
        transform = drop_lines(drop)
        if keep is not None:
            transform = chain(EntryFilter(keep), transform)
        for chunk in pipeline.file_chunks(
            path, {}, running, start=start, stop=stop, identity=identity
        ):
            yield transform(chunk)
        yield transform(b"") + b"\n"

    def parts(running: list[pipeline.Stage]) -> Iterator[bytes]:
        yield b"BEGIN;\nSET LOCAL lock_timeout = %d;\n" % lock_timeout_ms
        yield from sql_file(bset.files["roles"], running)
        yield wipe.encode()
        yield from sql_file(bset.files["schema"], running, stop=offset, keep=schema_keep)
        yield b"SET session_replication_role = replica;\n"
        data = DataFilter(drop)
        started = len(running)
        try:
            for chunk in pipeline.file_chunks(
                bset.files["data"], os.environ, running, decompressor=decompress,
                identity=identity,
            ):  # fmt: skip
                yield data(chunk)
        except ClientProgramError as e:
            # The decompressor failed. Killed, it says nothing of the file; else the file
            # is damaged: stop before COMMIT, naming where it breaks off.
            stages = running[started:]
            if not stages or any((st.proc.returncode or 0) < 0 for st in stages):
                raise
            raise damaged_data(bset.files["data"].name, e.what, data) from None
        yield data(b"")
        if data.open_copy is not None:
            # Never let psql read what follows as rows: stop before COMMIT.
            raise IntegrityError(
                f"{bset.files['data'].name} ends inside the data of {data.open_copy}",
                "the file is truncated; restore another set",
            )
        if strict and (wrong := row_mismatches(manifest.tables, data.rows)):
            more = f" and {len(wrong) - 3} more" if len(wrong) > 3 else ""
            raise IntegrityError(
                f"{bset.files['data'].name} disagrees with the manifest: {'; '.join(wrong[:3])}"
                + more,
                "the file is damaged; restore another set, or force=true to restore it anyway",
            )
        yield b"\n"
        yield b"SET session_replication_role = DEFAULT;\n"
        yield from sql_file(bset.files["schema"], running, start=offset)
        yield b"COMMIT;\n"

    return parts


def damaged_data(name: str, detail: str, data: DataFilter) -> IntegrityError:
    """The error for a compressed data file that cannot be read to its end: where it
    breaks off is named by the last COPY header seen."""
    last = data.open_copy or next(reversed(data.rows), None)
    where = (
        f"inside the data of {last}" if data.open_copy
        else f"after the data of {last}" if last
        else "before the data of any table"
    )  # fmt: skip
    # "zstd failed: …x.zst : Read error (39) : premature end": the tool and its reason.
    tool, _, said = detail.partition(" failed: ")
    reason = said.rpartition(":")[2].strip() or "unreadable"
    return IntegrityError(
        f"{tool} failed: {name} is damaged ({reason}), it breaks off {where}",
        "the file is truncated or corrupt; restore another set",
    )


class RestoreFailed(PgvaultError):
    """The restore transaction did not commit: the database is as it was."""

    def __init__(
        self, lead: str, detail: str, hint: str = "fix the cause and run the restore again"
    ) -> None:
        super().__init__(f"{lead}: {detail}", hint)
        self.detail = detail


def stream_size(bset: BackupSet) -> int | None:
    """About how many bytes psql reads for the set (None: unknown, for a compressed data
    file of a set older than the raw size in its manifest)."""
    m = bset.manifest
    if m is None:
        return None
    data = m.data_raw_bytes
    if data is None and m.compression == "none":
        data = m.files["data"].size
    return None if data is None else m.files["roles"].size + m.files["schema"].size + data


def load_set(
    bset: BackupSet,
    conn: Conn,
    psql: str,
    server_major: int,
    *,
    strict: bool = True,
    schema_keep: Callable[[Entry], bool] | None = None,
    progress: Listener | None = None,
    lock_timeout_ms: int = 60_000,
    identity: str | None = None,
) -> None:
    """Replace conn's database with the set, atomically: on any failure nothing changed.
    strict, schema_keep, lock_timeout_ms and identity: see restore_parts; progress hears
    of the bytes psql reads."""
    argv = [psql, *clients.psql_args(conn.conninfo)]
    parts = restore_parts(
        bset, server_major, strict=strict, schema_keep=schema_keep,
        lock_timeout_ms=lock_timeout_ms, identity=identity,
    )  # fmt: skip
    try:
        with (progress or Silent()).transfer("restore", stream_size(bset)) as advance:

            def counted(running: list[pipeline.Stage]) -> Iterator[bytes]:
                done = 0
                for chunk in parts(running):
                    done += len(chunk)
                    advance(done)
                    yield chunk

            pipeline.stream_into(argv, conn.env(), counted)
    except OSError as e:  # a set file went away or could not be read mid-stream
        detail = f"cannot read {e.filename or 'a set file'}: {e.strerror}"
        raise RestoreFailed(f"restore failed, {conn.dbname} is unchanged", detail) from None
    except ClientProgramError as e:  # psql (or a decompressor) failed
        detail = e.what.removeprefix("psql failed: ")
        raise RestoreFailed(f"restore failed, {conn.dbname} is unchanged", detail) from None
    except IntegrityError as e:  # found in the stream: psql was stopped before COMMIT
        raise RestoreFailed(f"restore failed, {conn.dbname} is unchanged", e.what, e.hint) from None
