"""What the benchmark measures, each against what it replaces.

backup  (issue 2): `pgvault backup` vs the seed's three programs run one after another.
list    (issue 3): `pgvault list` over 1,000 sets vs the same command on an empty dir.
restore (issue 4): `pgvault restore` vs the seed's single psql run, on the same files.
verify  (issue 5): `pgvault verify` vs the seed's psql restore plus 3 s.
upload  (issue 12): `pgvault push` vs boto3's upload_file, to a local S3 server (upload.py).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from pgvault import catalog, naming
from pgvault.clients import Programs
from pgvault.cluster import Cluster
from pgvault.connection import connect
from pgvault.dumpstream import CopyStats
from pgvault.load import restore_parts
from pgvault.manifest import read_manifest
from pgvault.pipeline import CHUNK

from .measure import BenchError, Sample, clean_env, median, run_pgvault, run_sequence, run_timed
from .report import Row, announce
from .upload import bench_upload

if TYPE_CHECKING:
    from tests.s3server import MotoServer

LIST_SETS = 1000
VERIFY_ALLOWANCE = 3.0  # seconds issue 5 grants verify beyond a plain restore


@dataclass
class Bench:
    """What every measurement needs: the cluster, its programs, a work dir, repeats."""

    cluster: Cluster
    programs: Programs
    work: Path
    repeat: int
    keep: bool = False
    # The S3 server the upload rows use (None: s3_note says why there is none).
    s3: MotoServer | None = None
    s3_note: str = ""

    def env(self, dbname: str) -> dict[str, str]:
        """libpq's environment for the CLI and the bare programs, as a user would set it."""
        c = self.cluster
        return clean_env(
            PGHOST=str(c.socket_dir), PGPORT=str(c.port), PGUSER=c.superuser, PGDATABASE=dbname
        )

    def settle(self) -> None:
        """Write back what earlier runs left dirty in the page cache (the cluster runs with
        fsync off): a run must not pay for the one before it, whose gigabytes the kernel
        would otherwise write back, throttling every writer, during this one."""
        self.sql("CHECKPOINT")
        os.sync()

    def sql(self, statement: str) -> None:
        with connect(self.cluster.conn(), autocommit=True) as pg:
            pg.execute(statement)

    def fresh_db(self, name: str) -> str:
        self.sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        self.sql(f'CREATE DATABASE "{name}"')
        return name

    def drop_db(self, name: str) -> None:
        self.sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def tool(self, name: str) -> str:
        return self.programs.path(name)


def available(module: str, function: str) -> bool:
    """Whether the command's module has been written yet (another helper may be on it)."""
    if importlib.util.find_spec(module) is None:
        return False
    return hasattr(importlib.import_module(module), function)


def prepare(b: Bench, scale: int) -> str:
    """A pgbench database at this scale, made by the real `pgbench -i`."""
    db = b.fresh_db(f"pgbench_s{scale}")
    argv = [b.tool("pgbench"), "-i", "-q", "-s", str(scale)]
    run_timed(argv, b.env(db), b.work, name="pgbench -i")
    return db


def fresh_dir(parent: Path, name: str) -> Path:
    path = parent / name
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def bench_backup(b: Bench, scale: int, db: str) -> tuple[list[Row], Path, str]:
    """Return the rows, and the directory and prefix of one pgvault set kept for later."""
    env, base = b.env(db), b.work / f"s{scale}"
    ours, seed = paired_runs(
        b,
        lambda: run_pgvault(["backup", f"dir={fresh_dir(base, 'set')}", "quiet=true"], env, b.work),
        lambda: Sample(run_sequence(seed_backup_steps(b, fresh_dir(base, "seed")), env, b.work)),
    )
    kept = base / "set"
    sets = catalog.scan(kept)
    if len(sets) != 1 or not sets[0].complete:
        raise BenchError(f"pgvault backup left no complete set in {kept}")
    rss = [s.rss_mb for s in ours if s.rss_mb is not None]
    mine, theirs = [s.seconds for s in ours], [s.seconds for s in seed]
    work = [checksum_work(base / "seed" / "data.sql") for _ in range(b.repeat)]
    rows = [
        Row(scale, "backup", "s", median(mine), median(theirs), "seed dumps", max_ratio=1.10,
            runs=tuple(mine), base_runs=tuple(theirs)),
        Row(scale, "  floor: seed dumps + checksum work", "s", median(theirs) + median(work),
            median(theirs), "seed dumps", runs=tuple(work),
            target_text=f"the work alone: {median(work):.2f} s"),
        Row(scale, "backup peak RSS", "MB", max(rss) if rss else None,
            max_value=150, note="" if rss else "error: no RSS reported", runs=tuple(rss)),
    ]  # fmt: skip
    return rows, kept, sets[0].prefix


def paired_runs(
    b: Bench, ours: Callable[[], Sample], seed: Callable[[], Sample]
) -> tuple[list[Sample], list[Sample]]:
    """b.repeat timed runs of each, alternating who goes first, after one untimed round.

    Each side's previous output is removed just before its next run (fresh_dir in the
    callables), never earlier: on a VM, memory freed more than a second or two ago goes
    back to the host (free page reporting) and writing into it again costs a fault per
    page, so a side whose files were removed long before would write 0.1 s or 1 s of
    page cache per 500 MB by chance of timing. The untimed round puts both on that
    footing from the first timed run."""
    mine: list[Sample] = []
    theirs: list[Sample] = []
    for i in range(b.repeat + 1):
        for who in ("pgvault", "seed") if i % 2 == 0 else ("seed", "pgvault"):
            b.settle()
            sample = ours() if who == "pgvault" else seed()
            if i > 0:
                (mine if who == "pgvault" else theirs).append(sample)
    return mine, theirs


def checksum_work(data_file: Path) -> float:
    """Seconds this process takes to compute what a manifest records of a data file: its
    sha256, and each table's rows and sha256 (pgvault's own code, from the page cache).
    On two cores that pg_dump and its server already keep busy, pgvault cannot do it in
    parallel for free: it is the floor of what a checked backup adds to the bare dumps."""
    start = time.perf_counter()
    stats, digest = CopyStats(), hashlib.sha256()
    with open(data_file, "rb") as f:
        while chunk := f.read(CHUNK):
            stats.feed(chunk)
            digest.update(chunk)
    return time.perf_counter() - start


def seed_backup_steps(b: Bench, d: Path) -> list[tuple[list[str], Path]]:
    """The seed's backup: `pg_dumpall --roles-only > roles.sql; pg_dump --schema-only >
    schema.sql; pg_dump --data-only > data.sql`."""
    return [
        ([b.tool("pg_dumpall"), "--roles-only"], d / "roles.sql"),
        ([b.tool("pg_dump"), "--schema-only"], d / "schema.sql"),
        ([b.tool("pg_dump"), "--data-only"], d / "data.sql"),
    ]


def synthetic_sets(source: Path, prefix: str, dest: Path, count: int) -> None:
    """Fill dest with count sets made from one real set: its files hard-linked (no copy
    of the data) under new prefixes, each with a manifest rewritten to match."""
    manifest = read_manifest(source / naming.file_name(prefix, "manifest")).to_json()
    when = naming.parse_prefix(prefix)
    for i in range(count):
        stamp = when - timedelta(hours=i + 1)
        new = naming.format_prefix(stamp)
        m = json.loads(json.dumps(manifest))
        m["prefix"] = new
        m["started_at"] = m["finished_at"] = stamp.isoformat()
        for kind, entry in m["files"].items():
            old_name = entry["name"]
            entry["name"] = naming.file_name(new, kind, m["compression"])
            os.link(source / old_name, dest / entry["name"])
        catalog.write_json_atomic(dest / naming.file_name(new, "manifest"), m)


def bench_list(b: Bench, scale: int, set_dir: Path, prefix: str) -> list[Row]:
    if not available("pgvault.commands.list", "run"):
        return [Row(scale, "list", note="skipped: pgvault list not available")]
    many = fresh_dir(b.work / f"s{scale}", "list")
    synthetic_sets(set_dir, prefix, many, LIST_SETS)
    empty = fresh_dir(b.work / f"s{scale}", "list-empty")
    env = b.env("postgres")
    rows = []
    for fmt_args, label in (([], "text"), (["format=json"], "json")):
        base = [run_pgvault(["list", f"dir={empty}", *fmt_args], env, b.work).seconds
                for _ in range(b.repeat)]  # fmt: skip
        runs = [run_pgvault(["list", f"dir={many}", *fmt_args], env, b.work).seconds
                for _ in range(b.repeat)]  # fmt: skip
        rows.append(Row(scale, f"list {LIST_SETS} sets ({label})", "s", median(runs),
                        median(base), "empty dir", max_value=0.5, runs=tuple(runs)))  # fmt: skip
    if not b.keep:
        shutil.rmtree(many)
    return rows


def seed_restore(b: Bench, set_dir: Path, prefix: str, db: str) -> float:
    """The seed's restore of pgvault's files: one psql run in a single transaction."""
    f = {k: str(set_dir / naming.file_name(prefix, k)) for k in naming.SQL_KINDS}
    argv = [
        b.tool("psql"), "-X", "--single-transaction", "-v", "ON_ERROR_STOP=1",
        "-f", f["roles"], "-f", f["schema"],
        "-c", "SET session_replication_role = replica", "-f", f["data"],
    ]  # fmt: skip
    seconds, _ = run_timed(argv, b.env(db), b.work, name="seed psql restore")
    return seconds


def restore_args(set_dir: Path, prefix: str) -> list[str]:
    # The target is the configured one (PGDATABASE = a fresh, empty database).
    return [
        "restore", f"dir={set_dir}", f"prefix={prefix}", "yes=true",
        "restore.safety_backup=false", "quiet=true",
    ]  # fmt: skip


def bench_restore(b: Bench, scale: int, set_dir: Path, prefix: str) -> tuple[list[Row], float]:
    """Return the rows and the seed restore's median (verify's baseline). Each side's
    database is dropped just before its next run (see paired_runs), and all at the end."""
    ours = available("pgvault.commands.restore", "run")
    note = "" if ours else "skipped: pgvault restore not available"
    failed: list[str] = []

    def pgvault() -> Sample:
        if failed or not ours:
            return Sample(0.0)
        db = b.fresh_db(f"restore_pgvault_s{scale}")
        try:
            return run_pgvault(restore_args(set_dir, prefix), b.env(db), b.work)
        except BenchError as e:  # verify still needs the seed's times
            failed.append(f"error: {e}")
            return Sample(0.0)

    def seed() -> Sample:
        return Sample(seed_restore(b, set_dir, prefix, b.fresh_db(f"restore_seed_s{scale}")))

    try:
        runs, base = paired_runs(b, pgvault, seed)
    finally:
        b.drop_db(f"restore_pgvault_s{scale}")
        b.drop_db(f"restore_seed_s{scale}")
    note = note or (failed[0] if failed else "")
    mine = [r.seconds for r in runs] if not note else []
    theirs = [r.seconds for r in base]
    floor = load_floor(b, scale, set_dir, prefix)
    rows = [
        Row(scale, "restore", "s", median(mine) if mine else None, median(theirs),
            "seed psql", max_ratio=0.80, note=note, runs=tuple(mine), base_runs=tuple(theirs)),
        Row(scale, "  floor: pgvault's load through psql alone", "s", median(floor),
            median(theirs), "seed psql", runs=tuple(floor),
            target_text="same stream, no start-up, no checks"),
    ]  # fmt: skip
    return rows, median(theirs)


def load_floor(b: Bench, scale: int, set_dir: Path, prefix: str) -> list[float]:
    """psql reading the very stream pgvault's restore sends it (one transaction, indexes
    after the data), from a file written beforehand: what the restore would take with no
    start-up, no checks and no Python in the way."""
    stream = b.work / f"s{scale}" / "stream.sql"
    parts = restore_parts(catalog.find_set(set_dir, prefix), b.programs.major)
    with open(stream, "wb") as f:
        for chunk in parts([]):
            f.write(chunk)
    argv = [b.tool("psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-f", str(stream)]
    name = f"restore_floor_s{scale}"
    runs = []
    try:
        for _ in range(b.repeat):
            b.settle()
            runs.append(run_timed(argv, b.env(b.fresh_db(name)), b.work, name="psql -f stream")[0])
        return runs
    finally:
        b.drop_db(name)
        stream.unlink()


def bench_verify(b: Bench, scale: int, set_dir: Path, prefix: str, seed: float) -> list[Row]:
    allowance = seed + VERIFY_ALLOWANCE
    if not available("pgvault.commands.verify", "run"):
        return [Row(scale, "verify", "s", None, allowance, "seed psql + 3 s", max_ratio=0.85,
                    note="skipped: pgvault verify not available")]  # fmt: skip
    args = ["verify", f"dir={set_dir}", f"prefix={prefix}", "quiet=true"]
    runs = []
    for _ in range(b.repeat):
        b.settle()
        runs.append(run_pgvault(args, b.env("postgres"), b.work).seconds)
    return [Row(scale, "verify", "s", median(runs), allowance, "seed psql + 3 s", max_ratio=0.85,
                runs=tuple(runs))]  # fmt: skip


def run_scale(b: Bench, scale: int) -> list[Row]:
    """Every measurement at one scale; a failing one becomes an `error` row."""
    rows: list[Row] = []

    def keep(new: list[Row]) -> None:
        for r in new:
            announce(r)
        rows.extend(new)

    db = prepare(b, scale)
    try:
        new, set_dir, prefix = bench_backup(b, scale, db)
        keep(new)
    except BenchError as e:
        keep([Row(scale, "backup", note=f"error: {e}")])
        return rows
    finally:
        b.drop_db(db)
    try:
        keep(bench_list(b, scale, set_dir, prefix))
    except BenchError as e:
        keep([Row(scale, "list", note=f"error: {e}")])
    seed = None
    try:
        new, seed = bench_restore(b, scale, set_dir, prefix)
        keep(new)
    except BenchError as e:
        keep([Row(scale, "restore", note=f"error: {e}")])
    try:
        if seed is not None:
            keep(bench_verify(b, scale, set_dir, prefix, seed))
    except BenchError as e:
        keep([Row(scale, "verify", note=f"error: {e}")])
    try:
        keep(bench_upload(b, scale, set_dir, prefix, b.s3, b.s3_note))
    except BenchError as e:
        keep([Row(scale, "push (upload)", note=f"error: {e}")])
    if not b.keep:
        shutil.rmtree(b.work / f"s{scale}", ignore_errors=True)
    return rows
