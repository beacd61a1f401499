"""Files in a backup directory that someone else put there: symlinks, fifos, hard links,
stale `.partial` files, huge and deeply nested JSON, a full file system. pgvault never
writes or reads through them, never hangs on them, and says so in one line."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pgvault import manifest, naming, pipeline, store
from pgvault.errors import ClientProgramError, IntegrityError, PgvaultError
from pgvault.execute import PIPE, Stage
from pgvault.manifest import read_manifest, read_verify_record
from tests.conftest import needs_tool
from tests.manifests import manifest_dict

SECRET = b"the victim's own bytes\n"
PREFIX = "backup-2024-01-02-030405"
RECORD = {"verdict": "verified", "checked_at": "2024-01-02T03:04:05+00:00", "duration_s": 1.0,
          "server_version": "15.0", "tables": 1, "rows": 2, "problems": []}  # fmt: skip


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    """A file outside the backup directory that a planted symlink points at."""
    path = tmp_path / "victim"
    path.write_bytes(SECRET)
    return path


@pytest.fixture
def bk(tmp_path: Path) -> Path:
    path = tmp_path / "bk"
    path.mkdir(mode=0o700)
    return path


@contextlib.contextmanager
def tmpfs(where: Path, options: str) -> Iterator[Path]:
    """A small file system of its own (we are root), to fill up for real."""
    where.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], check=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=True)


def fill(directory: Path, *, inodes: bool = True) -> None:
    """Use up every byte (and every inode) of directory's file system."""
    with contextlib.suppress(OSError), open(directory / "filler", "wb") as f:
        while True:
            f.write(b"\0" * 4096)
            f.flush()
    if not inodes:
        return
    for i in range(100_000):
        try:
            (directory / f"inode-{i}").touch()
        except OSError:
            return
    raise AssertionError("the file system never filled up")


def finishes(call: Callable[[], object], unblock: Callable[[], None]) -> object:
    """call() on a thread; fail (instead of hanging the suite) if it blocks. unblock()
    releases whatever it blocked on, so the thread can end."""
    out: list[object] = []
    thread = threading.Thread(target=lambda: out.append(_outcome(call)), daemon=True)
    thread.start()
    thread.join(30)
    if thread.is_alive():
        unblock()
        thread.join(30)
        raise AssertionError("it blocked")
    return out[0]


def _outcome(call: Callable[[], object]) -> object:
    try:
        return call()
    except Exception as e:
        return e


def open_fifo_writer(path: Path) -> Callable[[], None]:
    return lambda: os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))


# -- Writing: the .partial files and the set's files -----------------------------------


def test_a_symlinked_partial_is_replaced_never_written_through(bk, victim):
    path = bk / naming.file_name(PREFIX, "verify")
    (bk / (path.name + naming.PARTIAL_SUFFIX)).symlink_to(victim)
    store.write_json_atomic(path, RECORD)
    assert victim.read_bytes() == SECRET
    assert not path.is_symlink() and json.loads(path.read_text()) == RECORD
    assert sorted(p.name for p in bk.iterdir()) == [path.name]


def test_a_symlink_at_the_final_name_is_replaced_not_followed(bk, victim):
    path = bk / naming.file_name(PREFIX, "verify")
    path.symlink_to(victim)
    store.write_json_atomic(path, RECORD)
    assert victim.read_bytes() == SECRET
    assert not path.is_symlink() and json.loads(path.read_text()) == RECORD


def test_a_stale_partial_does_not_block_the_next_write(bk):
    path = bk / naming.file_name(PREFIX, "manifest")
    stale = bk / (path.name + naming.PARTIAL_SUFFIX)
    stale.write_text('{"half": ')
    stale.chmod(0o400)
    store.write_json_atomic(path, RECORD)
    assert json.loads(path.read_text()) == RECORD and not stale.exists()
    assert path.stat().st_mode & 0o777 == 0o600


def test_a_partial_that_cannot_be_removed_is_an_oserror_and_nothing_is_written(bk):
    path = bk / naming.file_name(PREFIX, "verify")
    (bk / (path.name + naming.PARTIAL_SUFFIX)).mkdir()
    with pytest.raises(OSError):
        store.write_json_atomic(path, RECORD)
    assert not path.exists()


def test_stream_to_file_replaces_a_symlinked_partial(bk, victim):
    dest = bk / (naming.file_name(PREFIX, "roles") + naming.PARTIAL_SUFFIX)
    dest.symlink_to(victim)
    stats = pipeline.stream_to_file([["printf", "CREATE ROLE x;\\n"]], os.environ, dest)
    assert victim.read_bytes() == SECRET
    assert not dest.is_symlink() and dest.read_bytes() == b"CREATE ROLE x;\n"
    assert stats.size == len(b"CREATE ROLE x;\n")


def test_stream_to_file_never_opens_what_is_at_a_final_name(bk, victim):
    dest = bk / naming.file_name(PREFIX, "roles")
    dest.symlink_to(victim)
    with pytest.raises(FileExistsError):
        pipeline.stream_to_file([["printf", "x"]], os.environ, dest)
    assert victim.read_bytes() == SECRET and dest.is_symlink()


def test_file_chunks_does_not_read_through_a_symlink(bk, victim):
    link = bk / naming.file_name(PREFIX, "schema")
    link.symlink_to(victim)
    with pytest.raises(OSError):
        list(pipeline.file_chunks(link, os.environ, []))
    fifo = bk / naming.file_name(PREFIX, "roles")
    os.mkfifo(fifo)
    got = finishes(lambda: list(pipeline.file_chunks(fifo, os.environ, [])), open_fifo_writer(fifo))
    assert isinstance(got, OSError)


@pytest.mark.parametrize("compression", ["gzip", "zstd"])
def test_a_decompressor_is_never_given_a_link_or_a_fifo(bk, victim, compression):
    """Given a path, gzip follows a symlink and zstd blocks on a fifo forever: the file is
    opened by pgvault and handed over as stdin, so neither can happen."""
    import gzip as gz

    from pgvault import clients

    needs_tool(compression)
    decompress = clients.decompressor(compression)
    packed = bk.parent / "packed"
    packed.write_bytes(gz.compress(SECRET) if compression == "gzip" else b"")
    if compression == "zstd":
        subprocess.run(["zstd", "-q", "-f", "-o", str(packed)], input=SECRET, check=True)
    good = bk / "plain"
    good.write_bytes(packed.read_bytes())
    assert b"".join(pipeline.file_chunks(good, os.environ, [], decompressor=decompress)) == SECRET
    link = bk / naming.file_name(PREFIX, "data", compression)
    link.symlink_to(packed)
    with pytest.raises(OSError):
        list(pipeline.file_chunks(link, os.environ, [], decompressor=decompress))
    link.unlink()
    os.mkfifo(link)
    got = finishes(
        lambda: list(pipeline.file_chunks(link, os.environ, [], decompressor=decompress)),
        open_fifo_writer(link),
    )
    assert isinstance(got, OSError)


def test_the_writers_error_wins_over_a_compressor_that_died_meanwhile(tmp_path):
    """The compressor dies (SIGKILL) while the writer thread is stuck on a write that then
    fails: the write error is the cause to report, not "killed by signal 9"."""
    pidfile = tmp_path / "pid"
    script = f"echo $$ > {pidfile}; head -c 200000; kill -9 $$"
    read_end, write_end = os.pipe()  # the "disk": nobody reads it, so the writer waits

    def close_the_disk_once_the_compressor_is_dead() -> None:
        while not pidfile.exists() or not pidfile.read_text().strip():
            threading.Event().wait(0.01)
        pid = int(pidfile.read_text())
        while _state(pid) not in ("Z", None):
            threading.Event().wait(0.01)
        os.close(read_end)  # the writer's next write fails with EPIPE

    closer = threading.Thread(target=close_the_disk_once_the_compressor_is_dead, daemon=True)
    closer.start()
    comp = Stage(["sh", "-c", script], os.environ, stdin=PIPE)
    sink = pipeline._Sink(write_end, [], comp)
    try:
        with pytest.raises(OSError) as caught:
            for _ in range(100):
                sink.write(b"x" * pipeline.CHUNK)
            sink.finish()
    finally:
        sink.abort()
        comp.kill()
        comp.close()
        os.close(write_end)
        closer.join(30)
    assert not isinstance(caught.value, ClientProgramError)


def _state(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return None


# -- The lock file ----------------------------------------------------------------------


def plant_symlink(bk: Path, victim: Path) -> None:
    (bk / store.LOCK_NAME).symlink_to(victim)


def plant_dangling_symlink(bk: Path, victim: Path) -> None:
    (bk / store.LOCK_NAME).symlink_to(victim.with_name("nowhere"))


def plant_fifo(bk: Path, victim: Path) -> None:
    os.mkfifo(bk / store.LOCK_NAME)


def plant_directory(bk: Path, victim: Path) -> None:
    (bk / store.LOCK_NAME).mkdir()


def plant_hard_link(bk: Path, victim: Path) -> None:
    os.link(victim, bk / store.LOCK_NAME)


PLANTS = {
    "symlink": (plant_symlink, "is a symbolic link"),
    "dangling symlink": (plant_dangling_symlink, "is a symbolic link"),
    "fifo": (plant_fifo, "is not a regular file"),
    "directory": (plant_directory, "is not a regular file"),
    "hard link": (plant_hard_link, "has other hard links"),
}


@pytest.mark.parametrize("plant", list(PLANTS))
def test_a_planted_lock_file_is_refused_never_followed(bk, victim, plant):
    put, why = PLANTS[plant]
    put(bk, victim)

    def take() -> None:
        with store.locked(bk, what="prune"):
            raise AssertionError("the lock was taken")

    got = finishes(take, open_fifo_writer(bk / store.LOCK_NAME))
    assert isinstance(got, PgvaultError), got
    assert why in got.line() and store.LOCK_NAME in got.line() and "remove it" in got.hint
    assert "\n" not in got.line()
    assert victim.read_bytes() == SECRET
    assert not victim.with_name("nowhere").exists()


@pytest.mark.parametrize("plant", list(PLANTS))
def test_is_locked_neither_follows_nor_hangs_on_a_planted_lock_file(bk, victim, plant):
    PLANTS[plant][0](bk, victim)
    assert finishes(lambda: store.is_locked(bk), open_fifo_writer(bk / store.LOCK_NAME)) is False
    assert victim.read_bytes() == SECRET


def test_the_lock_file_names_its_holder_and_is_empty_between_runs(bk):
    lock = bk / store.LOCK_NAME
    with store.locked(bk, what="prune"):
        assert lock.read_text() == f"prune pid {os.getpid()}\n"
        assert store.is_locked(bk)
    assert lock.read_text() == "" and not store.is_locked(bk)


def test_a_killed_holders_line_is_not_taken_for_the_current_holder(bk):
    """The lock is held by a process that has not written its line yet (or could not:
    the disk is full); the file still names a run that is gone."""
    gone = subprocess.Popen(["true"])
    gone.wait()
    (bk / store.LOCK_NAME).write_text(f"backup pid {gone.pid}\n")
    holder = subprocess.Popen(
        ["flock", "--exclusive", str(bk / store.LOCK_NAME), "sleep", "300"],
        start_new_session=True,
    )
    try:
        while not store.is_locked(bk):
            threading.Event().wait(0.02)
        with pytest.raises(PgvaultError) as caught, store.locked(bk, what="prune"):
            pass
    finally:
        os.killpg(holder.pid, signal.SIGKILL)
        holder.wait()
    assert caught.value.what == f"another pgvault run is using {bk}"
    assert (bk / store.LOCK_NAME).read_text() == f"backup pid {gone.pid}\n"


def test_the_lock_holds_on_a_full_disk(tmp_path):
    """No room for the holder's line: the lock is taken all the same (prune is how one
    frees space)."""
    with tmpfs(tmp_path / "full", "size=64k") as d:
        fill(d, inodes=False)
        with store.locked(d, what="prune"):
            assert store.is_locked(d)


def test_no_room_for_the_lock_file_is_one_line(tmp_path):
    with tmpfs(tmp_path / "full", "size=64k,nr_inodes=8") as d:
        fill(d)
        with pytest.raises(PgvaultError) as caught, store.locked(d, what="backup"):
            pass
    line = caught.value.line()
    assert "No space left on device" in line and "free some space" in line
    assert "\n" not in line


# -- Reading a manifest and a verify record ---------------------------------------------


def a_manifest(bk: Path) -> Path:
    """A valid manifest at its name."""
    path = bk / naming.file_name(PREFIX, "manifest")
    path.write_text(json.dumps(manifest_dict(PREFIX)))
    read_manifest(path)  # it reads as it is
    return path


def test_a_symlinked_manifest_or_record_is_not_read(bk, tmp_path):
    real = a_manifest(bk)
    outside = tmp_path / "outside.json"
    real.rename(outside)
    real.symlink_to(outside)
    with pytest.raises(IntegrityError, match="is unreadable: it is a symbolic link"):
        read_manifest(real)
    record = bk / naming.file_name(PREFIX, "verify")
    (tmp_path / "record.json").write_text(json.dumps(RECORD))
    record.symlink_to(tmp_path / "record.json")
    assert read_verify_record(record) is None


def test_a_fifo_as_manifest_or_record_does_not_hang(bk):
    for kind in ("manifest", "verify"):
        os.mkfifo(bk / naming.file_name(PREFIX, kind))
    path = bk / naming.file_name(PREFIX, "manifest")
    got = finishes(lambda: read_manifest(path), open_fifo_writer(path))
    assert isinstance(got, IntegrityError) and "not a regular file" in got.what
    record = bk / naming.file_name(PREFIX, "verify")
    assert finishes(lambda: read_verify_record(record), open_fifo_writer(record)) is None


def test_a_huge_manifest_is_refused_before_it_is_read(bk):
    for kind in ("manifest", "verify"):
        with open(bk / naming.file_name(PREFIX, kind), "wb") as f:
            f.truncate(manifest.MAX_BYTES * 16)  # sparse: no disk, but huge if read
    with pytest.raises(IntegrityError, match="over the limit"):
        read_manifest(bk / naming.file_name(PREFIX, "manifest"))
    assert read_verify_record(bk / naming.file_name(PREFIX, "verify")) is None


DEEP = {
    "open lists": "[" * 100_000,
    "closed lists": "[" * 100_000 + "]" * 100_000,
    "objects": '{"a":' * 100_000 + "1" + "}" * 100_000,
    "inside a manifest": '{"format": 2, "tables": ' + "[" * 100_000 + "]" * 100_000 + "}",
    "inside a record": '{"verdict": "verified", "problems": ' + "[" * 50_000 + "}",
}


@pytest.mark.parametrize("text", list(DEEP.values()), ids=list(DEEP))
def test_deeply_nested_json_is_an_unreadable_file(bk, text):
    path = bk / naming.file_name(PREFIX, "manifest")
    path.write_text(text)
    with pytest.raises(IntegrityError, match=f"^manifest {path.name} is "):
        read_manifest(path)
    record = bk / naming.file_name(PREFIX, "verify")
    record.write_text(text)
    assert read_verify_record(record) is None


@pytest.mark.parametrize("error", [MemoryError, RecursionError, UnicodeDecodeError])
def test_any_failure_to_parse_is_an_unreadable_file(bk, monkeypatch, error):
    path = a_manifest(bk)
    record = bk / naming.file_name(PREFIX, "verify")
    record.write_text(json.dumps(RECORD))

    def fail(*args: object, **kwargs: object) -> object:
        if error is UnicodeDecodeError:
            raise UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte")
        raise error()

    monkeypatch.setattr(manifest.json, "loads", fail)
    with pytest.raises(IntegrityError, match="is unreadable"):
        read_manifest(path)
    assert read_verify_record(record) is None


def test_invalid_utf8_is_an_unreadable_file(bk):
    path = bk / naming.file_name(PREFIX, "manifest")
    path.write_bytes(b'{"format": 2, "tool": "\xff"}')
    with pytest.raises(IntegrityError, match="is unreadable"):
        read_manifest(path)


def test_a_set_file_swapped_for_a_link_after_the_scan_is_not_read(bk, victim):
    """The checksum check looks at the files the scan saw; a symlink swapped in since (to a
    file of the same content) is a problem of the set, never followed to a match."""
    import hashlib

    from pgvault import catalog

    data = bk / naming.file_name(PREFIX, "data")
    data.write_bytes(SECRET)
    m = manifest_dict(PREFIX)
    m["files"]["data"].update(size=len(SECRET), sha256=hashlib.sha256(SECRET).hexdigest())
    bset = catalog.BackupSet(PREFIX, bk, {"data": data}, manifest=manifest.Manifest(**m))
    assert catalog.file_problems(bset, checksums=True) == []
    data.unlink()
    data.symlink_to(victim)
    (problem,) = catalog.file_problems(bset, checksums=True)
    assert problem.startswith("data.sql ")
