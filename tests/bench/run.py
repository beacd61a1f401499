"""`make bench` / `nox -s bench`: pgvault against the bare client programs on pgbench data.

    python -m tests.bench.run --scales 20 50 --repeat 3 [--keep]

Everything runs in a throwaway cluster started here (never the machine's own server)
and in a temp dir removed afterwards. Speed is measured and reported, never asserted:
the exit status is non-zero only when a measurement could not be made.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

from pgvault.cluster import server_programs, throwaway
from pgvault.errors import PgvaultError

from .measure import BenchError
from .report import Row, announce, print_table, say
from .startup import bench_startup
from .sweep import bench_sweep
from .upload import start_server
from .workloads import Bench, run_scale

METHOD = """\
Method: wall-clock medians of --repeat runs after one untimed round, pgvault run as its
real CLI (`python -m pgvault`, quiet=true) against libpq's PG* environment, alternating
who goes first; each side's previous output is removed just before its next run (on a VM
the page cache of memory freed seconds earlier costs a host fault per page: 0.1 s or 1 s
per 500 MB by chance), and before each run a CHECKPOINT and sync write back what the
earlier runs left dirty (else one run pays for the last). Every run is listed as a
spread. Baselines are the seed's commands: pg_dumpall --roles-only, pg_dump --schema-
only and pg_dump --data-only one after another into files; `psql --single-transaction -v
ON_ERROR_STOP=1 -f roles -f schema -c 'SET session_replication_role = replica' -f data`
on pgvault's own files. Floors: what pgvault cannot go below on this machine, measured
in this run: Python importing pgvault's libraries; the checksum work (the manifest's
sha256 of the data file and each table's rows and sha256, pgvault's own code reading the
seed's file from the page cache) added to the seed's dumps. Peak RSS is that of the
pgvault Python process alone (getrusage(RUSAGE_SELF) at exit, through a wrapper that
runs the CLI with runpy); wait4()/time(1) would fold in its pg_dump children's peaks.
The list times include Python and Hydra start-up: the baseline column is the same
command on an empty directory. Upload: `pgvault push` of the set (push.prune=false) and
a Python process calling boto3's client.upload_file for the same files (its default
TransferConfig), each into a fresh bucket of a moto server on loopback; moto's own speed
bounds both. Sweep: `pgvault backup --multirun` of 4 pgbench databases (scale 5) with
hydra/launcher=joblib against the basic launcher's one after another."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m tests.bench.run", description="pgvault benchmark")
    p.add_argument("--scales", type=int, nargs="+", default=[20, 50], help="pgbench scales")
    p.add_argument("--repeat", type=int, default=3, help="runs per measurement (median)")
    p.add_argument("--keep", action="store_true", help="keep the temp dirs and say where")
    args = p.parse_args(argv)
    if args.repeat < 1 or any(s < 1 for s in args.scales):
        p.error("--repeat and --scales must be at least 1")
    return args


def rss_flat(rows: list[Row], scales: list[int]) -> list[Row]:
    """Backup's peak RSS at the largest scale against the smallest: memory must not grow
    with the data."""
    peak = {r.scale: r.value for r in rows if r.what.startswith("backup peak RSS") and r.value}
    lo, hi = min(scales), max(scales)
    if lo == hi or lo not in peak or hi not in peak:
        return []
    return [
        Row(None, f"backup peak RSS, scale {hi} vs {lo}", "MB", peak[hi], peak[lo],
            f"at scale {lo}", max_ratio=1.10, target_text="flat: ratio <= 1.10"),
    ]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        programs = server_programs(0, os.environ.get("PGVAULT_TEST_BINDIR"))
    except PgvaultError as e:
        print(f"bench: {e.line()}", file=sys.stderr)
        return 2
    missing = [p for p in ("pgbench", "psql", "pg_dump", "pg_dumpall")
               if not Path(programs.path(p)).is_file()]  # fmt: skip
    if missing:
        print(f"bench: {', '.join(missing)} not in {programs.bindir}", file=sys.stderr)
        return 2
    say(METHOD)
    say(f"PostgreSQL {programs.version} from {programs.bindir}; scales {args.scales}\n")
    work = Path(tempfile.mkdtemp(prefix="pgvault-bench-"))
    rows: list[Row] = []
    s3 = None
    try:
        s3, s3_note = start_server(work)
        with throwaway(programs, tcp=True) as cluster:
            bench = Bench(cluster, programs, work, args.repeat, args.keep, s3, s3_note)
            sections = (
                ("start-up", "an empty database, and the libraries pgvault imports", bench_startup),
                ("sweep", "4 targets, the joblib launcher against one after another", bench_sweep),
            )
            for name, what, measure in sections:
                say(f"{name}: {what}")
                try:
                    for row in measure(bench):
                        announce(row)
                        rows.append(row)
                except BenchError as e:
                    rows.append(Row(None, name, note=f"error: {e}"))
            for scale in args.scales:
                say(f"scale {scale}: pgbench -i -s {scale}, then {args.repeat} run(s) each")
                try:
                    rows += run_scale(bench, scale)
                except BenchError as e:
                    rows.append(Row(scale, "setup", note=f"error: {e}"))
        rows += rss_flat(rows, args.scales)
    finally:
        if s3 is not None:
            s3.stop()
        if args.keep:
            say(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    say("")
    print_table(rows, args.repeat)
    return 1 if any(r.verdict == "error" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
