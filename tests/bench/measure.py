"""Running commands for the benchmark: wall-clock time, and pgvault's own peak memory.

pgvault runs exactly as `python -m pgvault ARGS` would, but through a tiny wrapper that
prints `resource.getrusage(RUSAGE_SELF).ru_maxrss` at interpreter exit. RUSAGE_SELF is
the Python process alone (all its threads), never its pg_dump/psql children: the
rusage that wait4() or `/usr/bin/time` report for a child also folds in the peak of
every descendant it reaped, so a large pg_dump would be charged to pgvault.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

RSS_MARK = "pgvault-bench-maxrss-kb="
# main() ends with sys.exit(); the SystemExit unwinds runpy and atexit still runs.
_WRAPPER = f"""\
import atexit, resource, runpy, sys
atexit.register(lambda: print(
    "{RSS_MARK}%d" % resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr))
sys.argv = ["pgvault", *sys.argv[1:]]
runpy.run_module("pgvault", run_name="__main__", alter_sys=True)
"""


class BenchError(Exception):
    """A command the benchmark needs failed; the message is one line."""


@dataclass(frozen=True)
class Sample:
    seconds: float
    rss_mb: float | None = None


def clean_env(**extra: str) -> dict[str, str]:
    """The caller's environment without anything pointing at another PostgreSQL."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "BACKUP_DIR"))}
    env.pop("DATABASE_URL", None)
    env.update(extra)
    return env


def _last_line(text: str) -> str:
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.startswith(RSS_MARK)]
    return lines[-1].strip() if lines else "no output"


def run_timed(
    argv: Sequence[str],
    env: Mapping[str, str],
    cwd: Path,
    *,
    stdout: Path | None = None,
    name: str | None = None,
) -> tuple[float, str]:
    """Run argv (stdout to a file or nowhere); return (wall seconds, stderr text).
    Raise BenchError if it exits non-zero."""
    out = open(stdout, "wb") if stdout is not None else subprocess.DEVNULL  # noqa: SIM115
    try:
        start = time.perf_counter()
        res = subprocess.run(
            list(argv),
            env=dict(env),
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.PIPE,
        )
        elapsed = time.perf_counter() - start
    finally:
        if stdout is not None:
            out.close()  # type: ignore[union-attr]
    err = res.stderr.decode("utf-8", "replace")
    if res.returncode != 0:
        what = name or f"{Path(argv[0]).name} {argv[1]}"
        raise BenchError(f"{what} failed: {_last_line(err)}")
    return elapsed, err


def run_pgvault(args: Sequence[str], env: Mapping[str, str], cwd: Path) -> Sample:
    """Run the real CLI; return its wall time and the Python process's peak RSS."""
    argv = [sys.executable, "-c", _WRAPPER, *args]
    seconds, err = run_timed(argv, env, cwd, name=f"pgvault {args[0]}")
    rss = [ln for ln in err.splitlines() if ln.startswith(RSS_MARK)]
    kb = int(rss[-1][len(RSS_MARK) :]) if rss else None
    return Sample(seconds, None if kb is None else kb / 1024)


def run_sequence(
    steps: Sequence[tuple[Sequence[str], Path]], env: Mapping[str, str], cwd: Path
) -> float:
    """Run each (argv, output file) one after another, as a shell script would; return
    the total wall time."""
    start = time.perf_counter()
    for argv, out in steps:
        run_timed(argv, env, cwd, stdout=out)
    return time.perf_counter() - start


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))
