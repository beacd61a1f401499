"""The state file and the log file: every ended run lands, concurrent runs included;
a damaged state file never breaks a run; the log is one JSON line per run, private."""

from __future__ import annotations

import json
import multiprocessing
import os
import stat
from datetime import datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pgvault import hooks, runstate
from pgvault.errors import PgvaultError


def a_run(target: str = "crm", command: str = "backup", **kw: object) -> hooks.Run:
    base: dict[str, object] = {
        "status": "success",
        "started_at": 1_700_000_000.0,
        "duration_s": 2.5,
        "prefix": "backup-2023-11-14-221320",
    }
    base.update(kw)
    return hooks.Run(command, target, "default", "/b", **base)  # type: ignore[arg-type]


def test_the_last_run_of_each_command_and_target_is_kept(tmp_path):
    runstate.record(a_run(), hooks.Event.success, tmp_path)
    runstate.record(a_run(command="verify", verified=True), hooks.Event.success, tmp_path)
    failed = a_run(status="failure", error="server down (start it)", exit_code=1, prefix=None)
    runstate.record(failed, hooks.Event.failure, tmp_path)
    runstate.record(a_run(target="other"), hooks.Event.success, tmp_path)
    backup = runstate.last_run(tmp_path, "crm", "backup")
    assert backup is not None and backup["status"] == "failure"
    assert backup["error"] == "server down (start it)" and backup["exit_code"] == 1
    assert runstate.last_run(tmp_path, "crm", "verify")["verified"] is True  # type: ignore[index]
    assert runstate.last_run(tmp_path, "other", "backup")["status"] == "success"  # type: ignore[index]
    assert runstate.last_run(tmp_path, "nobody", "backup") is None
    mode = stat.S_IMODE((tmp_path / runstate.STATE_FILE).stat().st_mode)
    assert mode == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == [runstate.STATE_FILE]


def test_a_started_run_reads_as_running_with_its_process(tmp_path):
    runstate.record(a_run(status="running", duration_s=None), hooks.Event.start, tmp_path)
    entry = runstate.last_run(tmp_path, "crm", "backup")
    assert entry is not None and entry["status"] == "running" and entry["pid"] == os.getpid()
    assert "finished_at" not in entry


@pytest.mark.parametrize("content", [b"", b"{", b"[]", b'{"runs": 3}', b"\xff\xfe", b"null"])
def test_a_damaged_state_file_reads_empty_and_is_replaced(tmp_path, content):
    (tmp_path / runstate.STATE_FILE).write_bytes(content)
    assert runstate.read(tmp_path)["runs"] == {}
    runstate.record(a_run(), hooks.Event.success, tmp_path)
    assert runstate.last_run(tmp_path, "crm", "backup") is not None


def test_a_symlink_at_the_state_file_is_replaced_never_followed(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("precious")
    os.symlink(victim, tmp_path / runstate.STATE_FILE)
    assert runstate.read(tmp_path)["runs"] == {}
    runstate.record(a_run(), hooks.Event.success, tmp_path)
    assert victim.read_text() == "precious"
    assert not (tmp_path / runstate.STATE_FILE).is_symlink()


def _record_many(directory: str, target: str, n: int) -> None:
    from pathlib import Path

    for i in range(n):
        runstate.record(a_run(target=target, duration_s=float(i)), hooks.Event.success,
                        Path(directory))  # fmt: skip


def test_runs_ending_together_all_land(tmp_path):
    """Without the lock, read-modify-replace loses the writes of the runs in between."""
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_record_many, args=(str(tmp_path), f"t{i}", 20)) for i in range(6)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    runs = runstate.read(tmp_path)["runs"]
    assert sorted(runs) == [f"t{i}" for i in range(6)]
    assert all(runs[f"t{i}"]["backup"]["duration_s"] == 19.0 for i in range(6))
    assert not list(tmp_path.glob("*.partial"))


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["a", "b"]), st.sampled_from(["backup", "verify"]),
                          st.booleans()), max_size=12))  # fmt: skip
def test_the_state_holds_the_last_of_any_sequence(tmp_path_factory, sequence):
    directory = tmp_path_factory.mktemp("state")
    last: dict[tuple[str, str], str] = {}
    for i, (target, command, ok) in enumerate(sequence):
        status = "success" if ok else "failure"
        run = a_run(target=target, command=command, status=status, started_at=1e9 + i,
                    error=None if ok else f"error {i}")  # fmt: skip
        runstate.record(run, hooks.Event.success if ok else hooks.Event.failure, directory)
        last[(target, command)] = status + str(i)
    for (target, command), want in last.items():
        entry = runstate.last_run(directory, target, command)
        assert entry is not None
        seen = int(datetime.fromisoformat(entry["started_at"]).timestamp())
        assert entry["status"] + str(seen - 1_000_000_000) == want


def test_the_log_gets_one_json_line_per_run_created_private(tmp_path):
    log = tmp_path / "logs" / "pgvault.log"
    log.parent.mkdir()
    runstate.append_log(log, a_run(size_bytes=1234, rows=56))
    runstate.append_log(log, a_run(status="failure", error="disk full (free some)", prefix=None))
    lines = log.read_text().splitlines()
    assert len(lines) == 2
    first, second = (json.loads(ln) for ln in lines)
    assert first["outcome"] == "success" and first["size_bytes"] == 1234 and first["rows"] == 56
    assert first["command"] == "backup" and first["target"] == "crm" and first["duration_s"] == 2.5
    assert second["outcome"] == "failure" and second["error"] == "disk full (free some)"
    assert stat.S_IMODE(log.stat().st_mode) == 0o600


def test_a_log_path_that_is_a_symlink_is_refused_in_one_line(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("precious")
    os.symlink(victim, tmp_path / "pgvault.log")
    with pytest.raises(PgvaultError) as e:
        runstate.append_log(tmp_path / "pgvault.log", a_run())
    assert "cannot append to log.file" in e.value.line() and victim.read_text() == "precious"


def test_a_fifo_at_the_log_path_is_refused_without_blocking(tmp_path):
    os.mkfifo(tmp_path / "pgvault.log")  # no reader: a blocking open would wait forever
    with pytest.raises(PgvaultError, match=r"log\.file"):
        runstate.append_log(tmp_path / "pgvault.log", a_run())
    reader = os.open(tmp_path / "pgvault.log", os.O_RDONLY | os.O_NONBLOCK)
    try:  # with a reader the open succeeds, and the file type refuses it
        with pytest.raises(PgvaultError, match="is not a regular file"):
            runstate.append_log(tmp_path / "pgvault.log", a_run())
    finally:
        os.close(reader)
