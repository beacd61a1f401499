"""Start-up (issue 13): what every command pays before it does anything, and its floor.

- backup of an empty database against the seed's three programs on it: the fixed cost;
- the floor under it that no pgvault code can lower: a Python process importing the
  libraries pgvault is built on (Hydra and OmegaConf, psycopg, pydantic), nothing else;
- `pgvault --help`.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from .measure import BenchError, Sample, median, run_pgvault, run_sequence, run_timed
from .report import Row

if TYPE_CHECKING:
    from .workloads import Bench

FIXED_COST = 0.30  # seconds a backup may add to the bare programs on an empty database
HELP_SECONDS = 0.30
LIBRARIES = "import hydra, omegaconf, psycopg, pydantic"


def bench_startup(b: Bench) -> list[Row]:
    from .workloads import fresh_dir, paired_runs, seed_backup_steps

    db = b.fresh_db("bench_empty")
    env, base = b.env(db), b.work / "empty"
    try:
        ours, seed = paired_runs(
            b,
            lambda: run_pgvault(
                ["backup", f"dir={fresh_dir(base, 'set')}", "quiet=true"], env, b.work
            ),
            lambda: Sample(
                run_sequence(seed_backup_steps(b, fresh_dir(base, "seed")), env, b.work)
            ),
        )
    finally:
        b.drop_db(db)
    mine, theirs = [s.seconds for s in ours], [s.seconds for s in seed]
    imports = [
        run_timed([sys.executable, "-c", LIBRARIES], env, b.work)[0] for _ in range(b.repeat)
    ]
    helps: list[float] = []
    try:
        helps = [run_pgvault(["--help"], env, b.work).seconds for _ in range(b.repeat)]
    except BenchError as e:
        return [Row(None, "pgvault --help", note=f"error: {e}")]
    return [
        Row(None, "backup, empty database", "s", median(mine), median(theirs), "seed dumps",
            max_over=FIXED_COST, runs=tuple(mine), base_runs=tuple(theirs)),
        Row(None, "  floor: python importing pgvault's libraries", "s", median(imports),
            runs=tuple(imports), target_text=LIBRARIES),
        Row(None, "pgvault --help", "s", median(helps), max_value=HELP_SECONDS,
            runs=tuple(helps)),
    ]  # fmt: skip
