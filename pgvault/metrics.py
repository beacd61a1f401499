"""Prometheus metrics for node_exporter's textfile collector (metrics.textfile).

One file may describe several targets and commands (several dirs, a multirun, backups
and verifies on their own timers): each write reads the file back and keeps every sample
this run does not replace, so a run never erases another target's last success, nor a
failure its own target's. The file is replaced atomically: the collector never reads
half of it.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from pgvault import hooks, space
from pgvault.config import PgvaultConfig
from pgvault.errors import PgvaultError
from pgvault.store import create_new, flock_dir, fsync_dir, open_regular

COMMANDS = ("backup", "verify", "prune")
BY_RUN = ("target", "command")
BY_TARGET = ("target",)
# name -> (help, label names), in the order the file lists them.
METRICS: dict[str, tuple[str, tuple[str, ...]]] = {
    "pgvault_last_success_timestamp_seconds": ("When the last successful run ended.", BY_RUN),
    "pgvault_last_failure_timestamp_seconds": ("When the last failed run ended.", BY_RUN),
    "pgvault_last_run_duration_seconds": ("How long the last run took.", BY_RUN),
    "pgvault_last_run_success": ("1 when the last run succeeded, 0 when it failed.", BY_RUN),
    "pgvault_last_backup_size_bytes": ("Bytes of the last backup set written.", BY_TARGET),
    "pgvault_last_backup_rows": ("Rows the last backup wrote.", BY_TARGET),
    "pgvault_last_verify_ok": ("1 when the last verify matched, 0 when it did not.", BY_TARGET),
    "pgvault_backup_sets": ("Complete backup sets of the target in its dir.", BY_TARGET),
    "pgvault_backup_dir_free_bytes": ("Bytes free for pgvault in the target's dir.", BY_TARGET),
}
# A metrics file is small; a bigger one is not ours (or not any more).
MAX_BYTES = 4 * 1024 * 1024
# How long a write waits for another pgvault writing the same file.
LOCK_WAIT = 10.0

Labels = tuple[tuple[str, str], ...]  # sorted (name, value) pairs
Samples = dict[tuple[str, Labels], float]


def observer(cfg: PgvaultConfig) -> hooks.Hook:
    """The hook that writes cfg.metrics.textfile when a backup, verify or prune ends."""
    path = Path(str(cfg.metrics.textfile))

    def count(directory: Path) -> int:
        from pgvault.status import target_sets  # the same sets `pgvault status` judges

        return len(target_sets(cfg, directory))

    def record(event: hooks.Event, run: hooks.Run) -> None:
        if event is not hooks.Event.start and run.command in COMMANDS:
            write(path, samples(run, event, count))

    return record


def samples(
    run: hooks.Run, event: hooks.Event, count: Callable[[Path], int] | None = None
) -> Samples:
    """What this run says, by (metric, labels); count gives the target's complete sets in
    a directory (by default: the regular ones whose manifest names the target)."""
    by_run: Labels = (("command", run.command), ("target", run.target))
    by_target: Labels = (("target", run.target),)
    ok = event is hooks.Event.success
    ended = run.started_at + (run.duration_s or 0.0) if run.started_at else time.time()
    out: Samples = {
        (f"pgvault_last_{'success' if ok else 'failure'}_timestamp_seconds", by_run): ended,
        ("pgvault_last_run_success", by_run): 1.0 if ok else 0.0,
    }
    if run.duration_s is not None:
        out["pgvault_last_run_duration_seconds", by_run] = run.duration_s
    if ok and run.command == "backup":
        if run.size_bytes is not None:
            out["pgvault_last_backup_size_bytes", by_target] = float(run.size_bytes)
        if run.rows is not None:
            out["pgvault_last_backup_rows", by_target] = float(run.rows)
    if run.verified is not None:  # verify's, or backup verify=true's, verdict
        out["pgvault_last_verify_ok", by_target] = 1.0 if run.verified else 0.0
    directory = _directory(run.directory)
    if directory is not None:
        with contextlib.suppress(PgvaultError, OSError):
            n = count(directory) if count else _complete_sets(directory, run.target)
            out["pgvault_backup_sets", by_target] = float(n)
        with contextlib.suppress(OSError):
            out["pgvault_backup_dir_free_bytes", by_target] = float(space.free_bytes(directory))
    return out


def _directory(value: str | None) -> Path | None:
    from pgvault import catalog

    try:
        path = catalog.backup_dir(value, create=False)
        return path if path.is_dir() else None
    except (PgvaultError, OSError):
        return None


def _complete_sets(directory: Path, target: str) -> int:
    from pgvault import catalog

    sets = catalog.scan(directory)
    return sum(
        1
        for s in sets
        if s.complete and s.kind == "regular" and s.manifest and s.manifest.target == target
    )


def write(path: Path, new: Samples) -> None:
    """Merge new into the metrics file at path and replace it atomically."""
    if not path.is_absolute():
        raise PgvaultError(
            f"metrics.textfile must be an absolute path, got '{path}'",
            f"use metrics.textfile={path.absolute()}",
        )
    with _locked(path.parent):
        merged = {**read(path), **new}
        _replace(path, generate_latest(_registry(merged)))


def read(path: Path) -> Samples:
    """The samples of our metrics in the file at path ({} when there is none)."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return {}
    except OSError as e:
        raise _cannot(path, e, "read") from None
    if not stat.S_ISREG(mode):  # a symlink, a fifo or a directory: never followed or replaced
        raise PgvaultError(
            f"metrics.textfile {path} is not a regular file",
            "point metrics.textfile at a file of pgvault's own",
        )
    try:
        with open_regular(path) as f:
            raw = f.read(MAX_BYTES + 1)
    except OSError as e:
        raise _cannot(path, e, "read") from None
    try:
        if len(raw) > MAX_BYTES:
            raise ValueError("too big")
        text = raw.decode()
        families = list(text_string_to_metric_families(text))
    except Exception:  # the parser raises what it likes on junk
        if raw.strip() and b"pgvault_" not in raw:
            raise _not_ours(path) from None
        return {}  # a file of ours that a crash or an older pgvault left unreadable
    if any(not f.name.startswith("pgvault_") for f in families):
        raise _not_ours(path)
    out: Samples = {}
    for family in families:
        names = METRICS.get(family.name, ("", ()))[1]
        for s in family.samples:
            # Only what this version writes: a metric or label set we dropped goes away.
            if s.name == family.name and names and sorted(s.labels) == sorted(names):
                out[s.name, tuple(sorted(s.labels.items()))] = float(s.value)
    return out


def _not_ours(path: Path) -> PgvaultError:
    return PgvaultError(
        f"metrics.textfile {path} holds something other than pgvault's metrics",
        "point metrics.textfile at a file of pgvault's own",
    )


def _cannot(path: Path, e: OSError, verb: str = "write") -> PgvaultError:
    return PgvaultError(
        f"cannot {verb} metrics.textfile {path}: {e.strerror or e}",
        "fix its directory's permissions or change metrics.textfile",
    )


class _Samples(Collector):
    def __init__(self, merged: Samples) -> None:
        self.merged = merged

    def collect(self) -> Iterator[Metric]:
        for name, (doc, label_names) in METRICS.items():
            rows = sorted((labels, v) for (n, labels), v in self.merged.items() if n == name)
            if not rows:
                continue
            family = GaugeMetricFamily(name, doc, labels=list(label_names))
            for labels, value in rows:
                values = dict(labels)
                family.add_metric([values[k] for k in label_names], value)
            yield family


def _registry(merged: Samples) -> CollectorRegistry:
    # A fresh registry per write: the process-wide one holds the client's own metrics.
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Samples(merged))
    return registry


def _replace(path: Path, data: bytes) -> None:
    """Write data to a new file beside path, then rename it over path."""
    # Not *.prom: the collector skips it while it is being written.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        fd = create_new(tmp)
    except OSError as e:
        raise _cannot(path, e) from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fchmod(f.fileno(), 0o644)  # node_exporter runs as its own user; no secrets here
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except OSError as e:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise _cannot(path, e) from None
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """Two runs ending at once must not lose each other's samples between read and rename."""
    try:
        with flock_dir(directory, timeout=LOCK_WAIT):
            yield
    except OSError as e:
        raise _cannot(directory, e, "lock the directory of") from None
