"""`pgvault backup`: one snapshot, three streams, checksums and row counts, a manifest last.

The data path: config -> connection and snapshot -> three client-program streams into
`.partial` files -> rename -> manifest (the set is complete from this moment) -> retention.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import psycopg

from pgvault import (
    __version__,
    catalog,
    clients,
    direct,
    encryption,
    locks,
    naming,
    pipeline,
    profiles,
    retention,
    sources,
    space,
    unfinished,
)
from pgvault.config import PgvaultConfig
from pgvault.connection import Conn, conn_for_target, connect, needs_ssl
from pgvault.dumpstream import CopyStats
from pgvault.errors import ClientProgramError, PgvaultError
from pgvault.facts import read_facts
from pgvault.listener import Listener
from pgvault.manifest import FORMAT, Manifest

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass
class BackupResult:
    """The set written, and what retention did afterwards (None: it did not run)."""

    set: catalog.BackupSet
    pruned: retention.PruneResult | None = field(default=None)

    @property
    def prefix(self) -> str:
        return self.set.prefix

    @property
    def directory(self) -> Path:
        return self.set.directory


def matview_trailer(matviews: list[str]) -> bytes:
    """pg_dump --data-only leaves materialized views empty; a full pg_dump restore
    refreshes them after the data, and so does the data file's end."""
    if not matviews:
        return b""
    lines = ["", "-- pgvault: populate materialized views, as a full pg_dump restore does"]
    lines += [f"REFRESH MATERIALIZED VIEW {name};" for name in matviews]
    return ("\n".join(lines) + "\n").encode()


def choose_prefix(directory: Path, clock: Clock) -> str:
    """A prefix no file in directory uses yet. Two backups in one second: the second
    waits for the next second (or, with a clock that stands still, takes the next one)."""
    taken = {p.prefix for p in _names(directory)}
    when = clock()
    prefix = naming.format_prefix(when)
    if prefix in taken:
        time.sleep(max(0.0, 1.0 - when.microsecond / 1e6))
        when = max(clock(), when + timedelta(seconds=1))
        prefix = naming.format_prefix(when)
    while prefix in taken:
        when += timedelta(seconds=1)
        prefix = naming.format_prefix(when)
    return prefix


def _names(directory: Path) -> list[naming.ParsedName]:
    out = []
    for p in directory.iterdir():
        parsed = naming.parse_file_name(p.name)
        if parsed is not None:
            out.append(parsed)
    return out


def remove_stale_partials(directory: Path) -> list[Path]:
    """Remove `.partial` files left by a killed run. Call only while holding the lock."""
    removed = []
    for p in directory.iterdir():
        parsed = naming.parse_file_name(p.name)
        # A planted symlink goes too: unlink removes the link, never what it points at.
        if parsed is not None and parsed.partial and (p.is_symlink() or p.is_file()):
            p.unlink()
            removed.append(p)
    return removed


def take_backup(
    cfg: PgvaultConfig,
    ui: Listener,
    *,
    env_name: str = "default",
    clock: Clock = utc_now,
    apply_retention: bool = True,
    kind: str = "regular",
    buckets: Sequence[str] = (),
) -> BackupResult:
    """Given a config, write one complete set into cfg.dir and apply retention; kind
    "safety" marks the set a restore takes before it replaces a database. buckets: Storage
    buckets to copy besides the database's own (backup.attachments=true; a restore's safety
    backup names those the restore will rewrite).

    Everything that can be checked is checked before the directory is touched: its
    name, the compressor, the encryption recipients, the server (reachable, password,
    database) and the client programs' version.
    """
    encryption.check_recipients(cfg.encryption.recipients)
    catalog.backup_dir(cfg.dir, create=False)
    if apply_retention:
        retention.check_policy(cfg.retention)
    conn = conn_for_target(cfg.target)
    compression = cfg.backup.compression.value
    compressor = None
    if compression != "none":
        argv = clients.COMPRESSORS[compression]
        compressor = [clients.tool_path(argv[0]), *argv[1:]]
    with connect(conn, autocommit=True) as pg:
        server_major = pg.info.server_version // 10000
        programs = clients.find_programs(
            server_major, conn.where, clients.CLIENT_PROGRAMS, cfg.clients.bindir,
            ssl=needs_ssl(conn),
        )  # fmt: skip
        profile = profiles.choose(pg, cfg.target.profile, conn.dbname)
        if cfg.backup.attachments:
            from pgvault import attachments

            attachments.check(cfg, profile[0])
        source = sources.at(conn.where, conn.dbname, socket.gethostname())

        def check_room(where: Path) -> None:
            if cfg.monitor.min_free is not None:
                need = space.expected_size(where, source, compression, lambda: table_bytes(pg))
                space.check_room(where, need, cfg.monitor.min_free)

        planned = catalog.backup_dir(cfg.dir, create=False)
        existed = planned.exists()
        if not existed:  # refuse before even creating it
            check_room(planned)
        directory = catalog.backup_dir(cfg.dir, create=True)
        with catalog.locked(directory, timeout=cfg.lock_timeout, what="backup"):
            remove_stale_partials(directory)
            unfinished.clear(directory)
            if existed:  # after a killed run's leftovers are gone: they are free space
                check_room(directory)
            try:
                result = _write_set(
                    cfg, ui, pg, conn, programs, directory, compressor, env_name, clock, profile,
                    kind, buckets,
                )  # fmt: skip
            except (ClientProgramError, psycopg.errors.LockNotAvailable) as e:
                if not locks.is_lock_timeout(str(e)):
                    raise
                with contextlib.suppress(psycopg.Error):
                    pg.rollback()
                raise locks.gave_up(
                    "the backup",
                    cfg.backup.table_lock_timeout,
                    locks.held_by_others(conn, locks.DUMP_BLOCKERS),
                    "backup.table_lock_timeout",
                ) from None
            if apply_retention:
                result.pruned = retention.prune(
                    directory, cfg.retention, now=clock(), protect=result.prefix
                )
    return result


def _write_set(
    cfg: PgvaultConfig,
    ui: Listener,
    pg: psycopg.Connection[tuple[Any, ...]],
    conn: Conn,
    programs: clients.Programs,
    directory: Path,
    compressor: list[str] | None,
    env_name: str,
    clock: Clock,
    chosen: tuple[str, str],
    set_kind: str,
    buckets: Sequence[str],
) -> BackupResult:
    compression = cfg.backup.compression.value
    started = clock()
    server_version = str(pg.execute("SHOW server_version").fetchone()[0])  # type: ignore[index]
    profile, why = chosen
    prefix = choose_prefix(directory, clock)
    kinds = naming.SQL_KINDS + ((naming.PLATFORM,) if profiles.has_platform_file(profile) else ())
    kinds += (naming.ATTACHMENTS,) if cfg.backup.attachments else ()
    recipients = cfg.encryption.recipients
    final = {k: directory / naming.file_name(prefix, k, compression, bool(recipients))
             for k in kinds}  # fmt: skip
    partial = {k: p.with_name(p.name + naming.PARTIAL_SUFFIX) for k, p in final.items()}
    ui.note(f"Backing up {conn.dbname} at {conn.where} (target {cfg.target.name})...")
    ui.note(f"Profile: {profile} ({why})")
    estimate = estimate_size(
        directory, sources.at(conn.where, conn.dbname, socket.gethostname()), pg
    )
    try:
        unfinished.begin(directory, prefix)
        snapshot, facts, stats, tables = _dump(
            ui, pg, conn, programs, partial, compressor, profile, estimate,
            cfg.backup.table_lock_timeout, recipients,
        )  # fmt: skip
        listed = None
        if cfg.backup.attachments:
            from pgvault import attachments

            stats[naming.ATTACHMENTS], listed = attachments.write_part(
                cfg, pg, partial[naming.ATTACHMENTS], recipients, also=buckets
            )
        for kind in kinds:
            partial[kind].rename(final[kind])
        catalog.fsync_dir(directory)
        manifest = Manifest.model_validate({
            "format": FORMAT,
            "tool": "pgvault",
            "tool_version": __version__,
            "prefix": prefix,
            "kind": set_kind,
            "target": cfg.target.name,
            "server": conn.where,
            "env": env_name,
            "database": conn.dbname,
            "host": socket.gethostname(),
            "server_version": server_version,
            "server_major": pg.info.server_version // 10000,
            "clients": {"bindir": str(programs.bindir), "version": programs.version},
            "snapshot": snapshot,
            "started_at": started.isoformat(),
            "finished_at": clock().isoformat(),
            "compression": compression,
            "files": {
                kind: {"name": final[kind].name, "size": st.size, "sha256": st.sha256}
                for kind, st in sorted(stats.items())
            },
            # Where the schema file's post-data part (indexes, constraints, triggers) starts.
            "schema_post_data_offset": stats["schema"].offsets[1],
            "tables": tables,
            "encryption": {"method": encryption.METHOD, "recipients": recipients}
            if recipients else None,
            "attachments": listed.to_json() if listed is not None else None,
            **facts,
        })  # fmt: skip
        path = directory / naming.file_name(prefix, "manifest")
        catalog.write_json_atomic(path, manifest.to_json())
    except BaseException as e:
        if (directory / naming.file_name(prefix, "manifest")).exists():
            # The manifest's rename landed (what failed came after it: the directory's
            # fsync, a signal): the set is whole, and nothing of it may go.
            unfinished.end(directory)
            if isinstance(e, OSError):
                raise _write_error(e, directory) from None
            raise
        # Without its manifest the set is incomplete anyway; remove it so it cannot mislead.
        for p in (*final.values(), *partial.values()):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
        unfinished.end(directory)
        if isinstance(e, OSError):
            raise _write_error(e, directory) from None
        raise
    # After the try: a set with its manifest is whole, whatever happens to the note (one
    # left behind names a set whose manifest is there, which clear() leaves alone).
    unfinished.end(directory)
    return BackupResult(
        catalog.BackupSet(prefix, directory, {**final, "manifest": path}, manifest=manifest)
    )


def _dump(
    ui: Listener,
    pg: psycopg.Connection[tuple[Any, ...]],
    conn: Conn,
    programs: clients.Programs,
    partial: dict[str, Path],
    compressor: list[str] | None,
    profile: str,
    estimate: int | None,
    table_lock_timeout: float,
    recipients: list[str],
) -> tuple[dict[str, str], dict[str, Any], dict[str, pipeline.FileStats], dict[str, Any]]:
    """Run the three dumps into the partial files; return the snapshot, the facts read in
    it, each file's stats and the per-table row counts and checksums."""
    # Schema and data must see one state of the database: export a snapshot from a
    # transaction that stays open until both pg_dump runs have finished.
    pg.autocommit = False
    pg.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
    pg.read_only = True
    wait_ms = locks.milliseconds(table_lock_timeout)
    try:
        # Catalog functions lock tables too: this session gives up when pg_dump would.
        pg.execute("SELECT pg_catalog.set_config('lock_timeout', %s, false)", (f"{wait_ms}",))
        row = pg.execute("SELECT pg_catalog.pg_export_snapshot(), now()").fetchone()
        assert row is not None
        snapshot = str(row[0])
        plan = profiles.plan(pg, profile)
        facts = read_facts(pg, skip_schemas=plan.platform_schemas)
        facts.update(plan.manifest())
        facts["role_passwords"] = _may_read_passwords(pg)
        if not facts["role_passwords"]:
            ui.warn(
                f"{conn.user} is not a superuser: the roles file leaves out role passwords "
                "(back up as a superuser to keep them)"
            )
        env = conn.env()
        pg_dump, info = programs.path("pg_dump"), conn.conninfo
        copy_stats = CopyStats()
        raw = ByteCount()
        stats: dict[str, pipeline.FileStats] = {}
        pre_data = [pg_dump, *clients.pg_dump_schema_args(info, snapshot, "pre-data", wait_ms)]
        post_data = [pg_dump, *clients.pg_dump_schema_args(info, snapshot, "post-data", wait_ms)]
        with ThreadPoolExecutor(max_workers=3) as pool:
            futures: dict[str, Future[pipeline.FileStats]] = {
                "roles": pool.submit(
                    pipeline.stream_to_file,
                    [
                        [
                            programs.path("pg_dumpall"),
                            *clients.pg_dumpall_roles_args(info, passwords=facts["role_passwords"]),
                        ]
                    ],
                    env,
                    partial["roles"],
                    transform=plan.roles_transform(),
                    recipients=recipients,
                ),
                "schema": pool.submit(
                    pipeline.stream_to_file,
                    [pre_data, post_data],
                    env,
                    partial["schema"],
                    transform=plan.schema_transform(),
                    prologue=plan.schema_prologue(),
                    trailer=plan.schema_trailer(),
                    recipients=recipients,
                ),
            }
            if naming.PLATFORM in partial:
                futures[naming.PLATFORM] = pool.submit(
                    pipeline.stream_to_file,
                    [pre_data, post_data],
                    env,
                    partial[naming.PLATFORM],
                    transform=plan.platform_transform(),
                    recipients=recipients,
                )
            data = [pg_dump, *clients.pg_dump_data_args(info, snapshot, wait_ms), *plan.data_args()]
            trailer = matview_trailer(facts["matviews"])
            with ui.transfer("data", estimate) as progress:
                if compressor is None and not recipients:  # pg_dump writes the file itself
                    stats["data"] = direct.dump_to_file(
                        data, env, partial["data"], observers=[copy_stats, raw],
                        progress=progress, trailer=trailer,
                    )  # fmt: skip
                else:
                    stats["data"] = pipeline.stream_to_file(
                        [data], env, partial["data"], observers=[copy_stats, raw],
                        compressor=compressor, progress=progress, trailer=trailer,
                        recipients=recipients,
                    )  # fmt: skip
            for kind, fut in futures.items():
                stats[kind] = fut.result()
    finally:
        with contextlib.suppress(psycopg.Error):
            pg.rollback()
    snap = {"id": snapshot, "time": cast(datetime, row[1]).isoformat()}
    # What the data file will set, not what the snapshot saw: sequences move on outside it.
    facts["sequences"] = dict(sorted(copy_stats.sequences.items()))
    facts["data_raw_bytes"] = raw.total
    return snap, facts, stats, copy_stats.result()


class ByteCount:
    """Counts the data dump's bytes before compression: the next backup's estimate."""

    def __init__(self) -> None:
        self.total = 0

    def feed(self, chunk: bytes | bytearray) -> None:
        self.total += len(chunk)


def estimate_size(
    directory: Path, source: sources.Source, pg: psycopg.Connection[tuple[Any, ...]]
) -> int | None:
    """The data dump's likely size: the previous regular set of this source's, else the
    size of its tables (a dump is text, so this is only a guide)."""
    previous = catalog.previous_set(directory, source)
    m = previous.manifest if previous is not None else None
    if m is not None and m.data_raw_bytes is not None:
        return m.data_raw_bytes
    if m is not None and m.compression == "none":
        return m.files["data"].size
    return table_bytes(pg)


def table_bytes(pg: psycopg.Connection[tuple[Any, ...]]) -> int | None:
    """The size of the database's tables (their dump is text, so only a guide)."""
    tables = "FROM pg_catalog.pg_class WHERE relkind IN ('r', 'm')"
    tables += " AND relnamespace <> 'pg_catalog'::regnamespace"
    try:
        # pg_table_size() locks each table: a locked one must not stall the estimate.
        pg.execute("SET lock_timeout = 500")
        row = pg.execute(f"SELECT sum(pg_catalog.pg_table_size(oid))::bigint {tables}").fetchone()
    except psycopg.errors.LockNotAvailable:  # the catalog's page counts, without a lock
        row = pg.execute(
            "SELECT sum(relpages)::bigint * pg_catalog.current_setting('block_size')::bigint "
            + tables
        ).fetchone()
    finally:
        pg.execute("RESET lock_timeout")
    return int(row[0]) if row and row[0] else None


def _may_read_passwords(pg: psycopg.Connection[tuple[Any, ...]]) -> bool:
    """Whether this session may read pg_authid, where pg_dumpall finds role passwords."""
    row = pg.execute("SELECT pg_catalog.has_table_privilege('pg_catalog.pg_authid', 'SELECT')")
    result = row.fetchone()
    return bool(result and result[0])


def _write_error(e: OSError, directory: Path) -> PgvaultError:
    hint = "free some space or pick another dir" if e.errno in (28, 27) else "check the directory"
    return PgvaultError(f"cannot write the backup into {directory}: {e.strerror}", hint)
