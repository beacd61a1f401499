"""`make demo` / `make selftest`: pgvault's main job on an embedded default.

Starts a throwaway cluster, loads a small CRM database (sample_crm.sql), then runs
backup -> list -> verify into a temp dir, and removes everything afterwards. With
--selftest it exits non-zero unless the backup verifies (for CI and for users).

    python -m pgvault.demo [--selftest] [--bindir DIR]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from pgvault import pipeline
from pgvault.backup import run_backup
from pgvault.cluster import server_programs, throwaway
from pgvault.config import PgvaultConfig, TargetConfig
from pgvault.connection import connect
from pgvault.errors import PgvaultError
from pgvault.listing import run_list
from pgvault.ui import Reporter
from pgvault.verify import run_verify

SAMPLE = Path(__file__).parent / "sample_crm.sql"


def run_demo(bindir: str | None, ui: Reporter) -> None:
    """Given where the server programs are (None: search), run backup, list and verify
    of the sample CRM database in a throwaway cluster."""
    programs = server_programs(0, bindir)
    with tempfile.TemporaryDirectory(prefix="pgvault-demo-") as tmp, throwaway(programs) as c:
        ui.say(f"Started a throwaway PostgreSQL {programs.version} cluster on port {c.port}.")
        with connect(c.conn(), autocommit=True) as pg:
            pg.execute("CREATE DATABASE crm")
        psql = programs.path("psql")
        pipeline.run_text([psql, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", c.url("crm"),
                           "-f", str(SAMPLE)])  # fmt: skip
        ui.say(f"Loaded the sample CRM database ({SAMPLE.name}).\n")
        cfg = PgvaultConfig(
            dir=str(Path(tmp) / "backups"), target=TargetConfig(name="demo", url=c.url("crm"))
        )
        cfg.clients.bindir = bindir
        ui.say("$ pgvault backup")
        run_backup(cfg, ui)
        ui.say("\n$ pgvault list")
        run_list(cfg, ui)
        ui.say("\n$ pgvault verify")
        run_verify(cfg, ui)
        ui.say("\n$ pgvault list")
        run_list(cfg, ui)
    ui.say("\nThe cluster and the temp dir are gone again. Try it on your own database:")
    ui.say("  BACKUP_DIR=/abs/path .venv/bin/pgvault backup target.url=postgresql://...")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m pgvault.demo", description=__doc__)
    p.add_argument("--selftest", action="store_true", help="exit non-zero unless it verifies")
    p.add_argument("--bindir", help="directory of initdb/pg_ctl/postgres (default: search)")
    args = p.parse_args(argv)
    try:
        run_demo(args.bindir, Reporter())
    except PgvaultError as e:
        print(f"pgvault: error: {e.line()}", file=sys.stderr)
        sys.exit(e.exit_code)
    if args.selftest:
        print("selftest passed: sample database -> backup -> verify")


if __name__ == "__main__":
    main()
