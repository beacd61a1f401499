"""`pgvault verify`: restore a set into a throwaway cluster (or a scratch database) with
restore's own code path, then compare what the database holds with the manifest.

The data path: set -> file checks -> throwaway cluster (pgvault.scratch) -> load_set ->
pg_dump --data-only of the restored database through CopyStats (rows and content per
table) + facts -> comparison with the manifest -> report -> a `-verify.json` record beside
the set. A failure that says nothing about the set (no space, memory, a server gone) is
raised instead: verify could not run, and the earlier verdict stands.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import tempfile
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import psycopg

from pgvault import catalog, clients, encryption, load, naming, pipeline
from pgvault.catalog import BackupSet
from pgvault.config import PgvaultConfig, Profile
from pgvault.connection import connect
from pgvault.dumpstream import CopyStats
from pgvault.errors import ClientProgramError, IntegrityError, NotFound, PgvaultError
from pgvault.facts import pgoptions, read_facts
from pgvault.listener import Listener
from pgvault.manifest import (
    HISTORY,
    Manifest,
    PastVerdict,
    TableEntry,
    VerifyRecord,
    read_verify_record,
)
from pgvault.profiles import Plan, skip_entries
from pgvault.scratch import INSTALL_EXTENSION, Scratch, first_line, scratch

VERIFIED: Literal["verified"] = "verified"
FAILED: Literal["failed"] = "failed"


@dataclass
class TableCheck:
    name: str
    rows: int | None  # in the restored database; None: the table is not there
    expected_rows: int | None  # in the manifest; None: the manifest does not know it
    content_ok: bool

    @property
    def ok(self) -> bool:
        return self.content_ok and self.rows == self.expected_rows


@dataclass
class VerifyResult:
    prefix: str
    tables: list[TableCheck] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    server_version: str = ""
    duration_s: float = 0.0
    restored: bool = True  # False: the restore failed; tables come from the data file
    profile: str = Profile.plain.value
    # What this server could not check (say, an extension it lacks); not a failure.
    unchecked: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems and all(t.ok for t in self.tables)

    def record(self) -> VerifyRecord:
        bad = [t.name for t in self.tables if not t.ok]
        return VerifyRecord(
            verdict=VERIFIED if self.ok else FAILED,
            checked_at=datetime.now(UTC),
            duration_s=round(self.duration_s, 3),
            server_version=self.server_version,
            tables=len(self.tables),
            rows=sum(t.rows or 0 for t in self.tables),
            problems=[*self.problems, *(f"table {n} differs" for n in bad)],
            not_checked=self.unchecked,
        )


def compare_tables(
    expected: Mapping[str, TableEntry], actual: dict[str, dict[str, Any]]
) -> list[TableCheck]:
    """Given the manifest's tables and the restored database's (rows, sha256 per table),
    return one check per table either side knows."""
    checks = []
    for name in sorted(set(expected) | set(actual)):
        want, got = expected.get(name), actual.get(name)
        checks.append(
            TableCheck(
                name,
                None if got is None else int(got["rows"]),
                None if want is None else want.rows,
                want is not None and got is not None and want.sha256 == got["sha256"],
            )
        )
    return checks


def compare_facts(manifest: Manifest, facts: dict[str, Any]) -> list[str]:
    """What the restored database's facts lack or change against the manifest's."""
    problems = []
    for name, value in sorted(manifest.sequences.items()):
        got = facts["sequences"].get(name, "missing")
        if got != value:
            problems.append(f"sequence {name} is {got}, the backup had {value}")
    for key, what in (("roles", "role"), ("indexes", "index"), ("constraints", "constraint")):
        missing = sorted(set(getattr(manifest, key)) - set(facts[key]))
        problems += [f"{what} {name} is missing" for name in missing]
    for name in manifest.matviews:
        if name not in facts["matviews"]:
            problems.append(f"materialized view {name} is not populated")
    want_lo = manifest.large_objects
    if facts["large_objects"] != want_lo:
        problems.append(f"{facts['large_objects']} large objects, the backup had {want_lo}")
    return problems


def _manifest(bset: BackupSet) -> Manifest:
    assert bset.manifest is not None, "verify takes a complete set"
    return bset.manifest


def verify_set(
    cfg: PgvaultConfig, bset: BackupSet, progress: Listener | None = None
) -> VerifyResult:
    """Restore bset into an empty database and compare it with its manifest. Raises
    PgvaultError only when the check could not run; a bad set is a failed result."""
    result = VerifyResult(bset.prefix, profile=Plan.from_manifest(_manifest(bset)).profile)
    started = time.monotonic()
    key = cfg.encryption.identity
    try:
        encryption.check_set(bset, key)  # a missing or wrong key: verify cannot run
    except IntegrityError as e:  # a damaged header: the set is bad, nothing to load
        result.problems += catalog.file_problems(bset, checksums=True) or [e.what]
        result.restored = False
    with contextlib.ExitStack() as stack:
        if result.restored:
            pool = stack.enter_context(ThreadPoolExecutor(max_workers=1))
            # Checksums are read while the cluster starts (hashing releases the GIL).
            checked = pool.submit(catalog.file_problems, bset, checksums=True)
            target = stack.enter_context(scratch(cfg, _for_scratch(stack, bset, key)))
            damage = checked.result()
            result.problems += damage
            try:
                _restore_and_compare(bset, target, result, progress, key)
            except PgvaultError:
                if not damage:
                    raise
                # Files that disagree with the manifest make a bad set, whatever else
                # then failed (a file swapped for a link or a fifo cannot even be read).
        if _manifest(bset).attachments is not None:
            from pgvault import attachments

            result.problems += attachments.check_part(bset, key)
    result.duration_s = time.monotonic() - started
    return result


def _for_scratch(stack: contextlib.ExitStack, bset: BackupSet, key: str | None) -> BackupSet:
    """bset as the throwaway cluster's setup reads it: a Supabase stand-in loads the
    roles and platform files with `psql -f`, so an encrypted set's go there decrypted, in
    a private directory removed afterwards (the cluster beside them holds the plain
    data anyway)."""
    if not any(encryption.is_encrypted(p) for p in bset.files.values()):
        return bset
    if not Plan.from_manifest(_manifest(bset)).scope:
        return bset
    tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="pgvault-verify-")))
    files = dict(bset.files)
    for kind in ("roles", naming.PLATFORM):
        if kind in files:
            files[kind] = tmp / files[kind].name.removesuffix(naming.ENCRYPTED_SUFFIX)
            pipeline.write_chunks(files[kind], pipeline.read_chunks(bset.files[kind], identity=key))
    return dataclasses.replace(bset, files=files)


def _restore_and_compare(
    bset: BackupSet,
    target: Scratch,
    result: VerifyResult,
    progress: Listener | None,
    key: str | None = None,
) -> None:
    """Load bset into the target's empty database, then fill result with the comparison."""
    m = _manifest(bset)
    expected = m.tables
    with _could_not_run(bset.prefix, target), connect(target.admin, autocommit=True) as pg:
        result.server_version = str(pg.info.parameter_status("server_version") or "")
    missing = sorted(target.unavailable)
    result.unchecked += [
        f"extension {name} is not available on this server: what uses it was not checked"
        for name in missing
    ] + target.notes
    keep = skip_entries(set(missing)) if missing else None
    try:
        load.load_set(
            bset, target.conn, target.psql, target.major, schema_keep=keep, progress=progress,
            identity=key,
        )  # fmt: skip
    except PgvaultError as e:
        if missing:
            raise PgvaultError(
                f"verify of {bset.prefix} could not run: {e.what}",
                f"it needs {', '.join(missing)}, which this server lacks; {INSTALL_EXTENSION}",
            ) from None
        if (reason := target.could_not_run(e.what)) is not None:
            raise PgvaultError(
                f"verify of {bset.prefix} could not run: {reason[0]}", reason[1]
            ) from None
        result.problems.append(e.what)
        # Name the tables all the same, from what the data file holds.
        result.restored = False
        result.tables = compare_tables(expected, file_tables(bset, key))
        return
    # The set loaded: whatever fails from here on is not its fault.
    with _could_not_run(bset.prefix, target):
        _compare(bset, target, result)


def _compare(bset: BackupSet, target: Scratch, result: VerifyResult) -> None:
    """Fill result with what the loaded database holds against the manifest."""
    m = _manifest(bset)
    plan = Plan.from_manifest(m)
    stats = CopyStats()
    pg_dump = str(Path(target.psql).with_name("pg_dump"))
    # Large objects are counted in the facts; their bytes need not pass through here.
    # The same selection as the backup's data dump (a profile may leave schemas out).
    argv = [pg_dump, "--data-only", "-B", "--no-password", f"--dbname={target.admin.conninfo}",
            *plan.data_args()]  # fmt: skip
    env = target.admin.env()
    settings = m.output_settings
    if settings:
        env["PGOPTIONS"] = pgoptions(settings, env.get("PGOPTIONS", ""))
    pipeline.observe(argv, env, [stats])
    result.tables = compare_tables(m.tables, stats.result())
    with connect(target.admin, autocommit=True) as pg:
        facts = read_facts(pg, skip_schemas=plan.platform_schemas)
        result.problems += compare_facts(m, facts)


@contextlib.contextmanager
def _could_not_run(prefix: str, target: Scratch) -> Iterator[None]:
    """Any failure in here says nothing about the set: verify could not run, and names
    the cause (no space, memory or connection, a server gone) where it can tell."""
    try:
        yield
    except (PgvaultError, psycopg.Error) as e:
        what = e.what if isinstance(e, PgvaultError) else first_line(e)
        hint = e.hint if isinstance(e, PgvaultError) and e.hint else "run verify again"
        why, hint = target.could_not_run(what) or (what, hint)
        raise PgvaultError(f"verify of {prefix} could not run: {why}", hint) from None


def file_tables(bset: BackupSet, key: str | None = None) -> dict[str, dict[str, Any]]:
    """Rows and content checksum per table as the set's data file holds them, as far as
    it can be read (a damaged file: up to where it breaks off). key: the age key file of
    an encrypted set."""
    stats = CopyStats()
    decompress = clients.decompressor(bset.compression)
    cannot = (ClientProgramError, IntegrityError, OSError)
    with contextlib.suppress(*cannot), pipeline.stages() as running:
        for chunk in pipeline.file_chunks(
            bset.files["data"], os.environ, running, decompressor=decompress, identity=key
        ):
            stats.feed(chunk)
    return stats.result()


def write_record(ui: Listener, directory: Path, result: VerifyResult) -> None:
    """Record the verdict beside the set (the earlier ones go into its history), unless
    the set went away meanwhile. A record that cannot be written is a warning: the
    verdict itself stands."""
    manifest = directory / naming.file_name(result.prefix, "manifest")
    try:
        with catalog.locked(directory, timeout=60, what="verify"):
            if manifest.exists():
                path = directory / naming.file_name(result.prefix, "verify")
                record = result.record()
                old = read_verify_record(path) if path.exists() else None
                if old is not None:
                    past = PastVerdict(
                        verdict=old.verdict, checked_at=old.checked_at, problems=old.problems
                    )
                    history = [past, *old.history][:HISTORY]
                    record = record.model_copy(update={"history": history})
                catalog.write_json_atomic(path, record.to_json())
    except (OSError, PgvaultError) as e:
        why = e.line() if isinstance(e, PgvaultError) else str(e.strerror)
        ui.warn(f"the verdict on {result.prefix} was not recorded: {why}")


def sets_to_verify(cfg: PgvaultConfig) -> list[BackupSet]:
    """prefix= names one set; all=true every complete set; else the set prefix=latest
    means: the newest regular set of the configured target's source (the one a restore
    would be taken from), never another database's newer set."""
    opts = cfg.verify
    if opts.prefix:
        found_dir, prefix = catalog.resolve_prefix(opts.prefix, cfg.dir, cfg.target)
        return [catalog.find_set(found_dir, prefix)]
    directory = catalog.backup_dir(cfg.dir, create=False)
    scanned = catalog.scan(directory)  # once: each set's manifest is read here
    if opts.all:
        chosen = [s.prefix for s in scanned if s.complete]
    else:
        chosen = [catalog.latest(scanned, directory, cfg.target).prefix]
    if not chosen:
        raise NotFound(f"no complete backup set in {directory}", "run `pgvault backup` first")
    return [catalog.find_set(directory, p, scanned) for p in chosen]
