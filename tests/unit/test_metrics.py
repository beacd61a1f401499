"""The metrics textfile: written after backup, verify and prune, parsed back with
prometheus-client's own parser; several targets and commands share it, and a run never
erases what another one (or an earlier success) recorded."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import stat
import tempfile
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from pgvault import hooks, metrics, naming
from pgvault.config import PgvaultConfig
from pgvault.errors import PgvaultError
from tests.manifests import manifest_dict

BASE = datetime(2024, 5, 1, 2, 0, tzinfo=UTC)
SHA = hashlib.sha256(b"x" * 10).hexdigest()


def parsed(path: Path) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = path.read_text()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def by_run(target: str, command: str) -> tuple[tuple[str, str], ...]:
    return (("command", command), ("target", target))


def by_target(target: str) -> tuple[tuple[str, str], ...]:
    return (("target", target),)


def observe(path: Path, event: hooks.Event, run: hooks.Run) -> None:
    """As commands.run calls it: the configured target is the run's, here the database
    of that name on the server write_set's manifests name."""
    cfg = PgvaultConfig()
    cfg.target.name = run.target
    cfg.target.url = f"postgresql://u@127.0.0.1:5432/{run.target}"
    cfg.metrics.textfile = str(path)
    metrics.observer(cfg)(event, run)


def run(target: str = "crm", command: str = "backup", ok: bool = True, **kw: object) -> hooks.Run:
    fields = {"started_at": 1_700_000_000.0, "duration_s": 12.5, "directory": None, **kw}
    status = {"status": "success"} if ok else {"status": "failure", "error": "x", "exit_code": 1}
    return hooks.Run(command=command, target=target, env="default", **status, **fields)


def write_set(directory: Path, when: datetime, target: str, *, complete: bool = True) -> None:
    prefix = naming.format_prefix(when)
    files = {}
    for kind in naming.SQL_KINDS:
        path = directory / naming.file_name(prefix, kind)
        if kind != "data" or complete:
            path.write_bytes(b"x" * 10)
        files[kind] = {
            "name": path.name,
            "size": 10,
            "sha256": hashlib.sha256(b"x" * 10).hexdigest(),
        }
    # Written on this machine from its loopback server: the configured target's source.
    fields = {"target": target, "database": target, "host": socket.gethostname()}
    text = json.dumps(manifest_dict(prefix, files=files, **fields))
    (directory / naming.file_name(prefix, "manifest")).write_text(text)


def test_a_backup_writes_its_metrics(tmp_path):
    sets, prom_dir = tmp_path / "sets", tmp_path / "textfile"
    sets.mkdir()
    prom_dir.mkdir()
    write_set(sets, BASE, "crm")
    write_set(sets, BASE + timedelta(days=1), "crm")
    write_set(sets, BASE + timedelta(days=2), "crm", complete=False)
    write_set(sets, BASE + timedelta(days=3), "billing")
    prom = prom_dir / "pgvault.prom"
    done = run(directory=str(sets), size_bytes=4096, rows=120)
    observe(prom, hooks.Event.success, done)
    got = parsed(prom)
    assert got["pgvault_last_success_timestamp_seconds", by_run("crm", "backup")] == 1_700_000_012.5
    assert got["pgvault_last_run_duration_seconds", by_run("crm", "backup")] == 12.5
    assert got["pgvault_last_run_success", by_run("crm", "backup")] == 1.0
    assert got["pgvault_last_backup_size_bytes", by_target("crm")] == 4096
    assert got["pgvault_last_backup_rows", by_target("crm")] == 120
    assert got["pgvault_backup_sets", by_target("crm")] == 2
    assert got["pgvault_backup_dir_free_bytes", by_target("crm")] > 0
    assert not any(name == "pgvault_last_failure_timestamp_seconds" for name, _ in got)
    # Readable by node_exporter's own user; nothing else left beside it.
    assert stat.S_IMODE(prom.stat().st_mode) == 0o644
    assert os.listdir(prom_dir) == ["pgvault.prom"]


def test_a_failure_keeps_the_last_success_and_sizes(tmp_path):
    prom = tmp_path / "pgvault.prom"
    observe(prom, hooks.Event.success, run(size_bytes=10, started_at=1000.0, duration_s=1.0))
    observe(prom, hooks.Event.failure, run(ok=False, started_at=2000.0, duration_s=3.0))
    got = parsed(prom)
    key = by_run("crm", "backup")
    assert got["pgvault_last_success_timestamp_seconds", key] == 1001.0
    assert got["pgvault_last_failure_timestamp_seconds", key] == 2003.0
    assert got["pgvault_last_run_success", key] == 0.0
    assert got["pgvault_last_run_duration_seconds", key] == 3.0
    assert got["pgvault_last_backup_size_bytes", by_target("crm")] == 10


def test_targets_and_commands_share_the_file(tmp_path):
    prom = tmp_path / "pgvault.prom"
    observe(prom, hooks.Event.success, run("crm", "backup", started_at=100.0))
    observe(prom, hooks.Event.success, run("crm", "verify", verified=True, started_at=200.0))
    observe(prom, hooks.Event.success, run("billing", "prune", started_at=300.0))
    observe(prom, hooks.Event.failure, run("billing", "verify", ok=False, verified=False))
    got = parsed(prom)
    successes = {labels for name, labels in got if name == "pgvault_last_success_timestamp_seconds"}
    assert successes == {by_run("crm", "backup"), by_run("crm", "verify"),
                         by_run("billing", "prune")}  # fmt: skip
    assert got["pgvault_last_verify_ok", by_target("crm")] == 1.0
    assert got["pgvault_last_verify_ok", by_target("billing")] == 0.0
    assert got["pgvault_last_run_success", by_run("billing", "verify")] == 0.0


def test_start_and_other_commands_write_nothing(tmp_path):
    prom = tmp_path / "pgvault.prom"
    observe(prom, hooks.Event.start, run())
    observe(prom, hooks.Event.success, run(command="restore"))
    assert not prom.exists()


def test_the_file_is_replaced_not_rewritten(tmp_path):
    prom = tmp_path / "pgvault.prom"
    observe(prom, hooks.Event.success, run())
    keep = prom.open()  # a reader in the middle of the old file keeps reading the old file
    old = keep.read()
    observe(prom, hooks.Event.failure, run(ok=False, started_at=5.0))
    assert os.fstat(keep.fileno()).st_ino != prom.stat().st_ino
    keep.close()
    assert "pgvault_last_failure_timestamp_seconds" not in old
    assert sorted(os.listdir(tmp_path)) == ["pgvault.prom"]


@pytest.mark.parametrize("kind", ["symlink", "directory", "fifo"])
def test_something_else_at_the_path_is_an_error_never_followed(tmp_path, kind):
    prom, elsewhere = tmp_path / "pgvault.prom", tmp_path / "elsewhere.txt"
    elsewhere.write_text("precious\n")
    if kind == "symlink":
        prom.symlink_to(elsewhere)
    elif kind == "directory":
        prom.mkdir()
    else:
        os.mkfifo(prom)
    with pytest.raises(PgvaultError, match="is not a regular file"):
        observe(prom, hooks.Event.success, run())
    assert elsewhere.read_text() == "precious\n"
    assert sorted(os.listdir(tmp_path)) == ["elsewhere.txt", "pgvault.prom"]


def test_a_failing_metrics_hook_is_a_warning(tmp_path):
    prom = tmp_path / "pgvault.prom"
    prom.mkdir()
    cfg = PgvaultConfig()
    cfg.metrics.textfile = str(prom)
    warnings: list[str] = []
    hooks.call(hooks.Event.success, run(), warnings.append, extra=[metrics.observer(cfg)])
    assert len(warnings) == 1 and "is not a regular file" in warnings[0]


def test_a_damaged_file_of_ours_is_overwritten_and_a_foreign_one_refused(tmp_path):
    prom = tmp_path / "pgvault.prom"
    prom.write_text('pgvault_last_run_success{target="crm" 1\n\x00garbage')
    observe(prom, hooks.Event.success, run())
    assert parsed(prom)["pgvault_last_run_success", by_run("crm", "backup")] == 1.0
    for foreign in ("node_cpu_seconds_total 12\n", "just some notes\n"):
        prom.write_text(foreign)
        with pytest.raises(PgvaultError, match="something other than pgvault's metrics"):
            observe(prom, hooks.Event.success, run())
        assert prom.read_text() == foreign


def test_samples_this_version_does_not_write_are_dropped(tmp_path):
    prom = tmp_path / "pgvault.prom"
    prom.write_text(
        "# TYPE pgvault_retired gauge\npgvault_retired 1\n"
        "# TYPE pgvault_last_run_success gauge\n"
        'pgvault_last_run_success{target="old",command="backup"} 1\n'
        'pgvault_last_run_success{target="old",command="backup",dir="/x"} 1\n'
    )
    observe(prom, hooks.Event.success, run())
    got = parsed(prom)
    assert not any(name == "pgvault_retired" for name, _ in got)
    runs = {k for n, k in got if n == "pgvault_last_run_success"}
    assert runs == {by_run("old", "backup"), by_run("crm", "backup")}


def test_a_relative_path_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(PgvaultError, match="must be an absolute path"):
        observe(Path("pgvault.prom"), hooks.Event.success, run())
    assert os.listdir(tmp_path) == []


def test_runs_ending_at_once_lose_nothing(tmp_path):
    prom = tmp_path / "pgvault.prom"
    errors: list[BaseException] = []

    def writer(target: str) -> None:
        try:
            for i in range(15):
                observe(prom, hooks.Event.success, run(target, started_at=float(i)))
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(t,)) for t in ("a", "b", "c")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    got = parsed(prom)
    for target in ("a", "b", "c"):
        assert got["pgvault_last_success_timestamp_seconds", by_run(target, "backup")] == 26.5


RUNS = st.lists(
    st.tuples(st.sampled_from(["crm", "billing"]), st.sampled_from(metrics.COMMANDS),
              st.booleans()),
    min_size=1, max_size=12,
)  # fmt: skip


@settings(max_examples=40, deadline=None)
@given(runs=RUNS)
def test_the_file_holds_each_runs_last_success_and_failure(runs):
    with tempfile.TemporaryDirectory() as d:
        prom = Path(d) / "pgvault.prom"
        last: dict[tuple[str, str, bool], float] = {}
        latest: dict[tuple[str, str], bool] = {}
        for i, (target, command, ok) in enumerate(runs):
            started = 1_000.0 + 10 * i
            event = hooks.Event.success if ok else hooks.Event.failure
            observe(prom, event, run(target, command, ok, started_at=started, duration_s=2.0))
            last[target, command, ok] = started + 2.0
            latest[target, command] = ok
        got = parsed(prom)
    for name, ok in (("pgvault_last_success_timestamp_seconds", True),
                     ("pgvault_last_failure_timestamp_seconds", False)):  # fmt: skip
        held = {labels: v for (n, labels), v in got.items() if n == name}
        assert held == {by_run(t, c): ts for (t, c, o), ts in last.items() if o is ok}
    held = {labels: v for (n, labels), v in got.items() if n == "pgvault_last_run_success"}
    assert held == {by_run(t, c): float(ok) for (t, c), ok in latest.items()}
