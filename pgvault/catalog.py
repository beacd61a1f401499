"""A directory of backup sets: checking it, scanning it, manifests, and its lock.

A set is complete only when its manifest exists and every file it names is there; the
manifest is written last, atomically, so no crash can leave a set that looks complete.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from pgvault import naming
from pgvault.errors import ConfigError, IntegrityError, LockBusy, PgvaultError

LOCK_NAME = ".pgvault.lock"
MANIFEST_FORMAT = 1


def backup_dir(value: str | None, *, create: bool) -> Path:
    """Check the configured directory and return it; create it 0700 when asked to."""
    if value is None or value == "":
        raise ConfigError(
            "no backup directory: BACKUP_DIR is not set",
            "export BACKUP_DIR=/abs/path or pass dir=/abs/path",
        )
    path = Path(value)
    if not path.is_absolute():
        raise ConfigError(
            f"dir must be an absolute path, got '{value}'", f"use dir={Path(value).absolute()}"
        )
    try:
        exists = path.exists()
    except OSError as e:  # EACCES on a parent: Path.exists() raises it
        raise ConfigError(
            f"cannot look into {path}: {e.strerror}", "fix the permissions or pick another dir"
        ) from None
    if exists and not path.is_dir():
        raise ConfigError(f"{path} is not a directory", "point dir at a directory")
    if create and not exists:
        try:
            path.mkdir(mode=0o700, parents=True)
        except OSError as e:
            raise PgvaultError(
                f"cannot create {path}: {e.strerror}", "create it or pick a writable dir"
            ) from None
    if create:
        # A real write, not os.access(): root passes access checks on a read-only mount.
        try:
            with tempfile.TemporaryFile(dir=path):
                pass
        except OSError as e:
            raise PgvaultError(
                f"{path} is not writable: {e.strerror}", "fix its permissions or pick another dir"
            ) from None
    return path


@dataclass
class BackupSet:
    """What the directory holds for one prefix."""

    prefix: str
    files: dict[str, Path] = field(default_factory=dict)
    partial: list[Path] = field(default_factory=list)
    manifest: dict[str, Any] | None = None
    manifest_error: str | None = None
    # Another data file than the manifest names (say, a `gunzip -k` copy): the user's,
    # so never part of the set and never deleted with it.
    extras: list[Path] = field(default_factory=list)

    @property
    def time(self) -> datetime | None:
        try:
            return naming.parse_prefix(self.prefix)
        except ValueError:
            return None

    @property
    def parseable(self) -> bool:
        return self.time is not None

    @property
    def expected(self) -> dict[str, str]:
        """kind -> file name the set must have."""
        comp = "none"
        if self.manifest is not None:
            comp = str(self.manifest.get("compression", "none"))
        elif "data" in self.files:
            parsed = naming.parse_file_name(self.files["data"].name)
            comp = parsed.compression if parsed else "none"
        names = {k: naming.file_name(self.prefix, k, comp) for k in naming.SQL_KINDS}
        if self.manifest is not None and naming.PLATFORM in self.manifest["files"]:
            names[naming.PLATFORM] = naming.file_name(self.prefix, naming.PLATFORM)
        names["manifest"] = naming.file_name(self.prefix, "manifest")
        return names

    @property
    def missing(self) -> list[str]:
        present = {p.name for p in self.files.values()}
        return [name for name in self.expected.values() if name not in present]

    @property
    def complete(self) -> bool:
        return self.manifest is not None and not self.missing and self.parseable

    def all_paths(self) -> list[Path]:
        return [*self.files.values(), *self.partial]


def scan(directory: Path) -> list[BackupSet]:
    """Every set in directory, newest first. Files pgvault did not write are ignored."""
    sets: dict[str, BackupSet] = {}
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return []
    data_files: dict[str, list[tuple[str, Path]]] = {}
    for entry in entries:
        parsed = naming.parse_file_name(entry.name)
        if parsed is None or not entry.is_file(follow_symlinks=False):
            continue
        bset = sets.setdefault(parsed.prefix, BackupSet(parsed.prefix))
        if parsed.partial:
            bset.partial.append(Path(entry.path))
        elif parsed.kind in ("data", naming.PLATFORM):
            data_files.setdefault(parsed.prefix, []).append((parsed.kind, Path(entry.path)))
        else:
            bset.files[parsed.kind] = Path(entry.path)
    for bset in sets.values():
        if "manifest" in bset.files:
            try:
                bset.manifest = read_manifest(bset.files["manifest"])
            except IntegrityError as e:
                bset.manifest_error = e.what
        _place_data_files(bset, sorted(data_files.get(bset.prefix, [])))
    return [sets[p] for p in naming.sort_newest_first(list(sets))]


def _place_data_files(bset: BackupSet, paths: list[tuple[str, Path]]) -> None:
    """paths: (kind, path) of the prefix's data and platform files. The data file is the
    one the manifest names (or, without a manifest, the only one); a platform file belongs
    to the set only when the manifest names it. Any other is an extra: the user's, never
    deleted with the set."""
    if bset.manifest is not None:
        files = bset.manifest["files"]
        chosen = [(k, p) for k, p in paths if k in files and files[k]["name"] == p.name]
    else:
        data = [(k, p) for k, p in paths if k == "data"]
        chosen = data if len(data) == 1 else []
    for kind, path in chosen:
        bset.files[kind] = path
    bset.extras = [p for k, p in paths if (k, p) not in chosen]


def read_manifest(path: Path) -> dict[str, Any]:
    """Read a set's manifest; IntegrityError unless it is one pgvault could have written
    for this set (so nothing downstream trips over a missing or odd field)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise IntegrityError(f"manifest {path.name} is unreadable: {e}", "") from None
    if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT:
        raise IntegrityError(f"manifest {path.name} is not a pgvault manifest", "")
    problem = _manifest_problem(path.name.removesuffix("-manifest.json"), data)
    if problem:
        raise IntegrityError(f"manifest {path.name} is not valid: {problem}", "")
    return data


def _manifest_problem(prefix: str, m: dict[str, Any]) -> str | None:
    compression = m.get("compression")
    if compression not in naming.COMPRESSION_SUFFIX:
        return f"unknown compression {compression!r}"
    if m.get("prefix") != prefix:
        return f"it belongs to {m.get('prefix')!r}"
    files = m.get("files")
    if not isinstance(files, dict):
        return "no files"
    for kind in naming.SQL_KINDS:
        entry = files.get(kind)
        want = naming.file_name(prefix, kind, compression)
        if not isinstance(entry, dict) or entry.get("name") != want:
            return f"no entry for {want}"
        if not isinstance(entry.get("size"), int) or not isinstance(entry.get("sha256"), str):
            return f"no size or sha256 for {want}"
    extra = files.get(naming.PLATFORM)
    if extra is not None and (
        not isinstance(extra, dict)
        or extra.get("name") != naming.file_name(prefix, naming.PLATFORM)
        or not isinstance(extra.get("size"), int)
    ):
        return f"no valid entry for {naming.file_name(prefix, naming.PLATFORM)}"
    offset = m.get("schema_post_data_offset")
    if not isinstance(offset, int) or not 0 <= offset <= files["schema"]["size"]:
        return "no valid schema_post_data_offset"
    if not isinstance(m.get("tables", {}), dict):
        return "tables is not an object"
    return None


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    """Write JSON to path via a temporary file, fsync and rename: all or nothing."""
    tmp = path.with_name(path.name + naming.PARTIAL_SUFFIX)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2, sort_keys=True)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    fsync_dir(path.parent)


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# Directories whose lock this process holds: a restore keeps its directory locked while
# its safety backup takes the lock again, and flock() would refuse a second descriptor.
_HELD: set[Path] = set()


@contextlib.contextmanager
def locked(directory: Path, *, timeout: float = 0.0, what: str = "backup") -> Iterator[None]:
    """Hold the directory's exclusive lock (one writer at a time), waiting up to timeout.

    Re-entrant within one process."""
    key = directory.resolve()
    if key in _HELD:
        yield
        return
    path = directory / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as e:
        raise PgvaultError(
            f"cannot lock {directory}: {e.strerror}",
            f"a {what} needs write access to the backup directory",
        ) from None
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as e:
                if e.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                if time.monotonic() >= deadline:
                    holder = _read_holder(fd)
                    raise LockBusy(
                        f"another pgvault {holder or 'run'} is using {directory}",
                        "wait for it to finish, or pass lock_timeout=SECONDS to wait",
                    ) from None
                time.sleep(0.2)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{what} pid {os.getpid()}\n".encode(), 0)
        _HELD.add(key)
        try:
            yield
        finally:
            _HELD.discard(key)
    finally:
        os.close(fd)


def is_locked(directory: Path) -> bool:
    """True while some pgvault process holds the directory's lock."""
    path = directory / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)
    return False


def _read_holder(fd: int) -> str:
    try:
        return os.pread(fd, 200, 0).decode("utf-8", "replace").strip()
    except OSError:
        return ""


def file_problems(
    prefix: str, files: Mapping[str, Path], manifest: Mapping[str, Any], *, checksums: bool
) -> list[str]:
    """Compare a set's files with its manifest: sizes always (a stat each), sha256 too
    when checksums (every byte is read). Missing files are not reported here: they make
    the set incomplete, not damaged. Names are given without the prefix."""
    entries = manifest.get("files")
    if not isinstance(entries, dict) or not entries:
        return ["the manifest lists no files"]
    problems = []
    for kind, entry in sorted(entries.items()):
        path = files.get(kind)
        if path is None:
            continue
        short = path.name.removeprefix(prefix + "-")
        if not isinstance(entry, dict) or not isinstance(entry.get("size"), int):
            problems.append(f"the manifest has no size for {kind}")
            continue
        try:
            size = path.stat().st_size
            if size != entry["size"]:
                problems.append(f"{short} is {size} bytes, the manifest says {entry['size']}")
            elif checksums and _sha256(path) != entry.get("sha256"):
                problems.append(f"{short} does not match its sha256 in the manifest")
        except FileNotFoundError:
            continue
        except OSError as e:
            problems.append(f"{short} is unreadable: {e.strerror}")
    return problems


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()
