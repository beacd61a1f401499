"""`make demo` / `make selftest`: pgvault's main job on an embedded default.

Starts a throwaway cluster, loads a small CRM database (sample_crm.sql), then runs
backup -> list -> verify -> status -> (an accident) restore -> list -> prune dry run into a temp
dir, and removes everything afterwards. With
--selftest it exits non-zero unless the backup verifies (for CI and for users).

    python -m pgvault.demo [--selftest] [--bindir DIR]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

from pgvault import commands, pipeline
from pgvault.cluster import server_programs, throwaway
from pgvault.config import PgvaultConfig, TargetConfig
from pgvault.connection import connect
from pgvault.errors import PgvaultError
from pgvault.ui import Reporter

SAMPLE = Path(__file__).parent / "sample_crm.sql"


def run_demo(bindir: str | None, ui: Reporter) -> None:
    """Given where the server programs are (None: search), run backup, list and verify
    of the sample CRM database in a throwaway cluster."""
    programs = server_programs(0, bindir)
    with tempfile.TemporaryDirectory(prefix="pgvault-demo-") as tmp, throwaway(programs) as c:
        ui.say(
            f"Started a throwaway PostgreSQL {programs.version} cluster on port {c.port} "
            f"({programs.origin} programs in {programs.bindir})."
        )
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
        cfg.restore.yes = True
        cfg.restore.prefix = "latest"
        cfg.prune.dry_run = True

        def step(command: str, shown: str) -> None:
            ui.say(f"\n$ pgvault {shown}")
            commands.run(replace(cfg, command=command), ui)

        step("backup", "backup")
        step("list", "list")
        step("verify", "verify")
        step("status", "status")
        with connect(c.conn("crm"), autocommit=True) as pg:
            pg.execute("DELETE FROM contacts")  # an accident worth a restore
        ui.say("\n(the contacts table was just emptied by mistake)")
        step("restore", "restore prefix=latest yes=true")
        with connect(c.conn("crm"), autocommit=True) as pg:
            row = pg.execute("SELECT count(*) FROM contacts").fetchone()
        ui.say(f"contacts holds {row[0] if row else 0} rows again.")
        step("list", "list")
        step("prune", "prune dry_run=true")
    ui.say("\nThe cluster and the temp dir are gone again. Try it on your own database:")
    ui.say("  BACKUP_DIR=/abs/path .venv/bin/pgvault backup target.url=postgresql://...")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m pgvault.demo", description=__doc__)
    p.add_argument("--selftest", action="store_true", help="exit non-zero unless it verifies")
    p.add_argument(
        "--bindir",
        help="directory of initdb/pg_ctl/postgres, or system or embedded (default: search)",
    )
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
