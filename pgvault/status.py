"""`pgvault status`: whether a target's backups can be relied on right now.

Four checks, each against a monitor.* threshold: the newest complete set's age, the
newest verified set's age, the last backup run's outcome (from the state file), and
the free space against the next set's expected size. Any failed check is a problem;
the command exits 1 when there is one, so cron, CI and Nagios can act on it.
With remote.url, it also says which set is the newest off-site, and the last upload
failing is a problem: both from the state file, so status never needs the network.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from pgvault import catalog, naming, runstate, sources, space, store, units
from pgvault.config import MonitorConfig, PgvaultConfig


@dataclass
class SetInfo:
    prefix: str
    time: datetime
    age_s: float
    size_bytes: int


@dataclass
class Status:
    directory: Path
    target: str
    now: datetime
    newest_complete: SetInfo | None = None
    newest_verified: SetInfo | None = None
    last_backup: dict[str, Any] | None = None
    last_verify: dict[str, Any] | None = None
    free_bytes: int | None = None
    expected_bytes: int | None = None
    problems: list[str] = field(default_factory=list)
    # Sets newer than the newest verified one whose verify found a mismatch.
    failed_verify: list[str] = field(default_factory=list)
    # With remote.url: its URL, the newest set uploaded there and the last upload's record.
    remote_url: str | None = None
    newest_offsite: SetInfo | None = None
    last_upload: dict[str, Any] | None = None

    @property
    def ok(self) -> bool:
        return not self.problems


def target_sets(cfg: PgvaultConfig, directory: Path) -> list[catalog.BackupSet]:
    """The target's complete regular sets in directory, newest first."""
    return of_target(cfg, catalog.scan(directory))


def of_target(cfg: PgvaultConfig, sets: list[catalog.BackupSet]) -> list[catalog.BackupSet]:
    """Of sets, the target's complete regular ones: by source when the target's
    connection settings can be read, else by the target name the manifests record."""
    want = sources.of_target(cfg.target)
    found = []
    for s in sets:
        if not (s.complete and s.kind == "regular" and s.manifest is not None):
            continue
        if (s.source == want) if want is not None else (s.manifest.target == cfg.target.name):
            found.append(s)
    return found


def assess(cfg: PgvaultConfig, directory: Path, now: datetime) -> Status:
    """Read the directory and its state file; judge against cfg.monitor."""
    st = Status(directory, cfg.target.name, now)
    mine = target_sets(cfg, directory)

    def info(s: catalog.BackupSet) -> SetInfo:
        assert s.time is not None  # complete sets have a parseable prefix
        return SetInfo(s.prefix, s.time, (now - s.time).total_seconds(), s.size)

    if mine:
        st.newest_complete = info(mine[0])
        st.expected_bytes = mine[0].size
    for s in mine:
        record = s.verification()
        if record is not None and record.verdict == "failed" and st.newest_verified is None:
            st.failed_verify.append(s.prefix)
        if record is not None and record.verdict == "verified":
            st.newest_verified = info(s)
            break
    st.last_backup = runstate.last_run(directory, cfg.target.name, "backup")
    st.last_verify = runstate.last_run(directory, cfg.target.name, "verify")
    if cfg.remote.url:
        _offsite(st, cfg.remote.url, runstate.offsite(directory, cfg.target.name))
    with contextlib.suppress(OSError):
        st.free_bytes = space.free_bytes(directory)
    st.problems = problems(st, cfg.monitor)
    return st


def _offsite(st: Status, url: str, record: dict[str, Any] | None) -> None:
    """Fill in st's off-site part from the state file's record (push, backup's upload)."""
    st.remote_url = url.strip().rstrip("/")
    if record is None or record.get("url") != st.remote_url:
        return  # none recorded, or for another remote than the one configured now
    last = record.get("last_upload")
    st.last_upload = last if isinstance(last, dict) else None
    newest = record.get("newest")
    prefix = newest.get("prefix") if isinstance(newest, dict) else None
    if isinstance(prefix, str):
        with contextlib.suppress(ValueError):
            when = naming.parse_prefix(prefix)
            size = newest.get("size_bytes") if isinstance(newest, dict) else 0
            age = (st.now - when).total_seconds()
            st.newest_offsite = SetInfo(prefix, when, age, size if isinstance(size, int) else 0)


def problems(st: Status, monitor: MonitorConfig) -> list[str]:
    """One line per check that fails; [] when all are fine."""
    out = []
    of = f"of target {st.target}"
    ages = (
        ("complete", st.newest_complete, "max_age", monitor.max_age,
         f"no complete backup {of} in {st.directory}"),
        ("verified", st.newest_verified, "max_unverified_age", monitor.max_unverified_age,
         f"no backup {of} has been verified (run `pgvault verify`)"),
    )  # fmt: skip
    for what, newest, key, limit, none_line in ages:
        if limit is None:  # the check is off
            continue
        if newest is None:
            out.append(none_line)
        elif newest.age_s > units.parse_duration(limit, f"monitor.{key}"):
            out.append(f"the newest {what} backup {of} ({newest.prefix}) is "
                       f"{units.duration(newest.age_s)} old; monitor.{key} is {limit}")  # fmt: skip
    if st.failed_verify:
        out.append(f"{', '.join(st.failed_verify)} of target {st.target} did NOT verify: "
                   "see `pgvault show prefix=...` and take a new backup")  # fmt: skip
    last_verify = st.last_verify
    if last_verify is not None and last_verify.get("status") == "failure" and not st.failed_verify:
        out.append(f"the last verify run {of} ({last_verify.get('started_at')}) failed: "
                   f"{last_verify.get('error', 'no error recorded')}")  # fmt: skip
    last = st.last_backup
    if last is not None and last.get("status") == "failure":
        out.append(f"the last backup run {of} ({last.get('started_at')}) failed: "
                   f"{last.get('error', 'no error recorded')}")  # fmt: skip
    elif last is not None and last.get("status") == "running" and not _may_run(last):
        out.append(f"the last backup run {of} (started {last.get('started_at')}) never "
                   "finished: it was killed or its machine stopped")  # fmt: skip
    upload = st.last_upload
    if upload is not None and upload.get("status") == "failure":
        error = upload.get("error", "no error recorded")
        out.append(f"the last upload to {st.remote_url} ({upload.get('at')}) failed: {error}")
    if monitor.min_free is not None and st.free_bytes is not None:
        margin = units.parse_size(monitor.min_free, "monitor.min_free")
        need = (st.expected_bytes or 0) + margin
        if st.free_bytes < need:
            out.append(
                f"{st.directory} has {units.size(st.free_bytes)} free; the next set needs "
                f"about {units.size(st.expected_bytes or 0)} plus monitor.min_free "
                f"{monitor.min_free}"
            )
    return out


def _may_run(entry: dict[str, Any]) -> bool:
    """Whether a run recorded as running may still be running: on another machine we
    cannot tell, so it may; here, its process must be alive."""
    import socket

    if entry.get("host") != socket.gethostname():
        return True
    pid = entry.get("pid")
    return isinstance(pid, int) and store.alive(pid)


def as_json(st: Status, monitor: MonitorConfig) -> dict[str, Any]:
    def set_json(s: SetInfo | None) -> dict[str, Any] | None:
        if s is None:
            return None
        return {"prefix": s.prefix, "time": s.time.isoformat(), "age_s": round(s.age_s, 1),
                "size_bytes": s.size_bytes}  # fmt: skip

    return {
        "ok": st.ok,
        "directory": str(st.directory),
        "target": st.target,
        "now": st.now.isoformat(),
        "newest_complete": set_json(st.newest_complete),
        "newest_verified": set_json(st.newest_verified),
        "failed_verify": st.failed_verify,
        "last_backup": st.last_backup,
        "last_verify": st.last_verify,
        "free_bytes": st.free_bytes,
        "expected_bytes": st.expected_bytes,
        "thresholds": {
            "max_age": monitor.max_age,
            "max_unverified_age": monitor.max_unverified_age,
            "min_free": monitor.min_free,
        },
        "offsite": None
        if st.remote_url is None
        else {
            "url": st.remote_url,
            "newest": set_json(st.newest_offsite),
            "last_upload": st.last_upload,
        },
        "problems": st.problems,
    }


def as_text(st: Status) -> list[str]:
    lines = [f"Backups of target {st.target} in {st.directory}:"]
    c, v = st.newest_complete, st.newest_verified
    lines.append(f"  newest complete: {c.prefix}, {units.duration(c.age_s)} old" if c
                 else "  newest complete: none")  # fmt: skip
    lines.append(f"  newest verified: {v.prefix}, {units.duration(v.age_s)} old" if v
                 else "  newest verified: none")  # fmt: skip
    if st.remote_url is not None:
        o = st.newest_offsite
        lines.append(f"  newest off-site: {o.prefix}, {units.duration(o.age_s)} old, on "
                     f"{st.remote_url}" if o else f"  newest off-site: none recorded on "
                     f"{st.remote_url}")  # fmt: skip
    last = st.last_backup
    if last is None:
        lines.append("  last backup run: none recorded")
    else:
        lines.append(f"  last backup run: {last.get('status')} at {last.get('started_at')}")
    if st.free_bytes is not None:
        lines.append(f"  free space: {units.size(st.free_bytes)} (the next set: about "
                     f"{units.size(st.expected_bytes or 0)})")  # fmt: skip
    lines += [f"✗ {p}" for p in st.problems]
    if st.ok:
        lines.append("✓ all checks pass")
    return lines
