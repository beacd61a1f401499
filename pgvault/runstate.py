"""What every run did: the state file in the backup directory and the log file.

`pgvault-state.json` keeps, per target, the last run of each command (also the failed
ones, and a run that started and never ended: killed). `pgvault status` reads it. It is
replaced atomically under a lock on the directory itself, so two runs ending together
both land. `log.file` gets one JSON line per ended run, for people and log shippers.
"""

from __future__ import annotations

import json
import os
import socket
import stat
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pgvault import hooks, store
from pgvault.errors import PgvaultError

STATE_FILE = "pgvault-state.json"
FORMAT = 1
# Seconds to wait for another run's update of the state file (it takes milliseconds).
LOCK_WAIT = 10.0


def record(run: hooks.Run, event: hooks.Event, directory: Path) -> None:
    """Put run as its target's last run of its command into directory's state file."""
    with store.flock_dir(directory, timeout=LOCK_WAIT):
        state = read(directory)
        runs = state.setdefault("runs", {}).setdefault(run.target, {})
        runs[run.command] = entry(run, event)
        store.write_json_atomic(directory / STATE_FILE, state)


def record_offsite(directory: Path, target: str, entry: dict[str, Any]) -> None:
    """Merge entry (url, last_upload, newest) into target's off-site record: what
    `pgvault status` says about the remote without asking it. A failed upload's entry
    has no newest: the one recorded before stays, unless it was another remote's."""
    with store.flock_dir(directory, timeout=LOCK_WAIT):
        state = read(directory)
        records = state.get("offsite")
        if not isinstance(records, dict):
            records = state["offsite"] = {}
        before = records.get(target)
        if not isinstance(before, dict) or before.get("url") != entry.get("url"):
            before = {}
        records[target] = {**before, **entry}
        store.write_json_atomic(directory / STATE_FILE, state)


def offsite(directory: Path, target: str) -> dict[str, Any] | None:
    """target's off-site record (record_offsite), or None."""
    records = read(directory).get("offsite")
    found = records.get(target) if isinstance(records, dict) else None
    return found if isinstance(found, dict) else None


def entry(run: hooks.Run, event: hooks.Event) -> dict[str, Any]:
    out: dict[str, Any] = {
        "status": run.status if event is not hooks.Event.start else "running",
        "started_at": _iso(run.started_at),
        "host": socket.gethostname(),
        "pid": os.getpid(),
    }
    if event is not hooks.Event.start:
        out["finished_at"] = _iso(run.started_at + (run.duration_s or 0.0))
        out["duration_s"] = round(run.duration_s or 0.0, 3)
    for key in ("prefix", "size_bytes", "rows", "verified", "error"):
        value = getattr(run, key)
        if value is not None:
            out[key] = value
    if run.error is not None:
        out["exit_code"] = run.exit_code
    return out


def read(directory: Path) -> dict[str, Any]:
    """The state file's content; an empty state when there is none. A damaged one reads
    as empty too (it only reports; the sets themselves say what exists)."""
    try:
        with store.open_regular(directory / STATE_FILE) as f:
            data = json.load(f)
    except (OSError, ValueError):
        return {"format": FORMAT, "runs": {}}
    if not isinstance(data, dict) or not isinstance(data.get("runs"), dict):
        return {"format": FORMAT, "runs": {}}
    return data


def last_run(directory: Path, target: str, command: str) -> dict[str, Any] | None:
    runs = read(directory)["runs"].get(target)
    found = runs.get(command) if isinstance(runs, dict) else None
    return found if isinstance(found, dict) else None


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds")


def log_line(run: hooks.Run) -> str:
    """One JSON line for log.file: time, command, target, outcome, duration, sizes, error."""
    fields: dict[str, Any] = {
        "time": _iso(run.started_at + (run.duration_s or 0.0)),
        "command": run.command,
        "target": run.target,
        "env": run.env,
        "outcome": run.status,
        "duration_s": round(run.duration_s or 0.0, 3),
    }
    for key in ("directory", "prefix", "size_bytes", "rows", "verified", "error"):
        value = getattr(run, key)
        if value is not None:
            fields[key] = value
    return json.dumps(fields, sort_keys=False)


def append_log(path: Path, run: hooks.Run) -> None:
    """Append run's line to path (created 0600: it names databases and errors). One
    write of one line with O_APPEND, so concurrent runs never interleave within a line."""
    data = (log_line(run) + "\n").encode()
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, 0o600)
    except OSError as e:
        raise PgvaultError(
            f"cannot append to log.file {path}: {e.strerror}", "check log.file"
        ) from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):  # a fifo there would block the run
            raise PgvaultError(f"log.file {path} is not a regular file", "point log.file at a file")
        os.set_blocking(fd, True)
        os.write(fd, data)
    finally:
        os.close(fd)
