"""Many databases (issue 15): one sweep of 4 targets, run by the joblib launcher (2 and 4
jobs at a time) against the basic launcher's one after another, in the same run."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .measure import BenchError, Sample, median, run_pgvault, run_timed
from .report import Row

if TYPE_CHECKING:
    from .workloads import Bench

TARGETS = 4
SCALE = 5  # pgbench scale of each database: a typical small CRM each


def bench_sweep(b: Bench) -> list[Row]:
    from .workloads import fresh_dir, paired_runs

    dbs = [b.fresh_db(f"bench_sweep_{i}") for i in range(TARGETS)]
    conf = b.work / "sweep-conf"
    (conf / "target").mkdir(parents=True, exist_ok=True)
    c = b.cluster
    for i, db in enumerate(dbs):
        run_timed([b.tool("pgbench"), "-i", "-q", "-s", str(SCALE)], b.env(db), b.work,
                  name="pgbench -i")  # fmt: skip
        url = f"postgresql://{c.superuser}@127.0.0.1:{c.port}/{db}"
        (conf / "target" / f"t{i}.yaml").write_text(f"name: t{i}\nurl: {url}\n")
    env = {**b.env(dbs[0]), "PGVAULT_CONFIG_DIR": str(conf)}
    targets = "target=" + ",".join(f"t{i}" for i in range(TARGETS))
    base = b.work / "sweep"

    def sweep(name: str, *launcher: str) -> Sample:
        out = fresh_dir(base, name)
        args = ["backup", "--multirun", targets, f"dir={out}/${{target.name}}", "quiet=true"]
        sample = run_pgvault([*args, *launcher], env, b.work)
        made = sorted(p.parent.name for p in out.glob("*/*-manifest.json"))
        if len(made) != TARGETS:
            raise BenchError(f"the {name} sweep left {len(made)} complete sets, not {TARGETS}")
        return sample

    rows = []
    try:
        for jobs in (2, 4):
            joblib = ("hydra/launcher=joblib", f"hydra.launcher.n_jobs={jobs}")
            par, seq = paired_runs(
                b, lambda j=joblib: sweep("parallel", *j), lambda: sweep("sequential")
            )
            mine, theirs = [s.seconds for s in par], [s.seconds for s in seq]
            rows.append(
                Row(None, f"sweep of {TARGETS} targets (s{SCALE}), joblib n_jobs={jobs}", "s",
                    median(mine), median(theirs), "one after another", runs=tuple(mine),
                    base_runs=tuple(theirs), target_text="measured, no target")
            )  # fmt: skip
    finally:
        for db in dbs:
            b.drop_db(db)
    return rows
