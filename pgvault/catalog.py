"""A directory of backup sets: checking it, scanning it, manifests, and its lock.

A set is complete only when its manifest exists and every file it names is there; the
manifest is written last, atomically, so no crash can leave a set that looks complete.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
import tempfile
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from pgvault import naming, sources
from pgvault.errors import ConfigError, IntegrityError, NotFound, PgvaultError
from pgvault.manifest import Manifest, VerifyRecord, read_manifest, read_verify_record

# The catalog's lock and writes are its store's; callers reach them as catalog.*.
from pgvault.store import LOCK_NAME as LOCK_NAME
from pgvault.store import LocalStore, Store, open_regular
from pgvault.store import fsync_dir as fsync_dir
from pgvault.store import is_locked as is_locked
from pgvault.store import locked as locked
from pgvault.store import write_json_atomic as write_json_atomic

if TYPE_CHECKING:
    from pgvault.config import TargetConfig

LATEST = "latest"


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
    refuse_system_dir(path, f"dir={value}")
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


# Where pgvault must never write its sets and lock, nor prune: the root and the system's
# own directories (exactly these), and anything at all under the kernel's pseudo-filesystems.
SYSTEM_DIRS = frozenset(
    ["/", "/bin", "/boot", "/etc", "/lib", "/lib32", "/lib64", "/libx32", "/run", "/sbin",
     "/usr", "/usr/bin", "/usr/lib", "/usr/lib64", "/usr/libexec", "/usr/sbin", "/var",
     "/var/lib", "/var/lock", "/var/run"]
)  # fmt: skip
PSEUDO_FS = ("/dev", "/proc", "/sys")
# Nothing under these either (the system's programs and settings); /usr/local is the
# administrator's own.
SYSTEM_TREES = ("/bin", "/boot", "/etc", "/lib", "/lib32", "/lib64", "/libx32", "/sbin", "/usr")


def system_dir(path: Path) -> str | None:
    """What system directory path is or is in (as written or after its symlinks):
    "the filesystem root", "the system directory /etc", "inside /dev"; else None."""
    seen = [os.path.normpath(path)]
    with contextlib.suppress(OSError, RuntimeError):  # a loop: then only the text counts
        seen.append(str(path.resolve()))
    for text in seen:
        text = "/" if text == "//" else text  # POSIX keeps a leading "//" apart
        if text == "/":
            return "the filesystem root"
        if text in SYSTEM_DIRS or text in PSEUDO_FS:
            return f"the system directory {text}"
        for top in PSEUDO_FS + SYSTEM_TREES:
            if text.startswith(top + "/") and not (text + "/").startswith("/usr/local/"):
                return f"inside {top}"
    return None


def refuse_system_dir(path: Path, what: str) -> None:
    """ConfigError when path is the filesystem root or a system directory."""
    found = system_dir(path)
    if found is not None:
        raise ConfigError(
            f"{what} is {found}", "point it at a directory of its own, such as /var/backups/pgvault"
        )


STATUSES = ("complete", "incomplete", "damaged", "in progress")


@dataclass(frozen=True)
class DiskFile:
    name: str
    kind: str
    size: int
    partial: bool


@dataclass
class BackupSet:
    """One prefix in a directory: its files, its manifest, and what is wrong with it.

    The one type of "a set": list shows it, retention decides on it, restore and verify
    load it (find_set gives a complete one, holding only the files its manifest names)."""

    prefix: str
    directory: Path
    files: dict[str, Path] = field(default_factory=dict)
    partial: list[Path] = field(default_factory=list)
    manifest: Manifest | None = None
    manifest_error: str | None = None
    # Another data file than the manifest names (say, a `gunzip -k` copy): the user's,
    # so never part of the set and never deleted with it.
    extras: list[Path] = field(default_factory=list)
    # Filled in by listing.assess: one of STATUSES, what is wrong, the files as found.
    status: str = ""
    problem: str | None = None
    on_disk: tuple[DiskFile, ...] = ()

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
    def compression(self) -> str:
        if self.manifest is not None:
            return self.manifest.compression
        parsed = naming.parse_file_name(self.files["data"].name) if "data" in self.files else None
        return parsed.compression if parsed else "none"

    @property
    def kind(self) -> str:
        """regular, or safety: taken by a restore of the database it replaced."""
        return self.manifest.kind if self.manifest is not None else "regular"

    @property
    def dump_version(self) -> str:
        return self.manifest.dump_version if self.manifest is not None else "0"

    @property
    def dump_major(self) -> int:
        return self.manifest.dump_major if self.manifest is not None else 0

    @property
    def expected(self) -> dict[str, str]:
        """kind -> file name the set must have."""
        if self.manifest is not None:
            names = {k: f.name for k, f in self.manifest.files.items()}
        else:
            comp = self.compression
            names = {k: naming.file_name(self.prefix, k, comp) for k in naming.SQL_KINDS}
        names["manifest"] = naming.file_name(self.prefix, "manifest")
        return names

    @property
    def missing(self) -> list[str]:
        present = {p.name for p in self.files.values()}
        return [name for name in self.expected.values() if name not in present]

    @property
    def complete(self) -> bool:
        return self.manifest is not None and not self.missing and self.parseable

    @property
    def size(self) -> int:
        """Bytes of the set's files as the manifest records them (0 without one)."""
        return sum(f.size for f in self.manifest.files.values()) if self.manifest else 0

    def verification(self) -> VerifyRecord | None:
        """The set's verify record, when there is a readable one."""
        path = self.files.get("verify")
        return read_verify_record(path) if path is not None else None

    def all_paths(self) -> list[Path]:
        return [*self.files.values(), *self.partial]

    @property
    def source(self) -> sources.Source | None:
        """The database the set came from; None when it cannot be told (no manifest)."""
        return sources.of_manifest(self.manifest)


def in_progress(bset: BackupSet, *, locked: bool, newest: bool) -> bool:
    """Whether a set may be one a running backup is writing: while the directory is
    locked, one with .partial files, or the newest set without a manifest (a backup
    writes .partial files, renames them, then writes the manifest)."""
    return locked and bool(bset.partial or (newest and bset.manifest is None))


def scan(where: Path | Store) -> list[BackupSet]:
    """Every set in a directory (or store), newest first. Files pgvault did not write
    are ignored."""
    store = LocalStore(where) if isinstance(where, Path) else where
    directory = store.directory
    sets: dict[str, BackupSet] = {}
    data_files: dict[str, list[tuple[str, Path]]] = {}
    for name in store.names():
        parsed = naming.parse_file_name(name)
        if parsed is None:
            continue
        path = directory / name
        bset = sets.setdefault(parsed.prefix, BackupSet(parsed.prefix, directory))
        if parsed.partial:
            bset.partial.append(path)
        elif parsed.kind not in ("manifest", "verify"):
            # Several names per kind can exist (compressed, encrypted): the manifest says.
            data_files.setdefault(parsed.prefix, []).append((parsed.kind, path))
        else:
            bset.files[parsed.kind] = path
    for bset in sets.values():
        if "manifest" in bset.files:
            try:
                bset.manifest = read_manifest(bset.files["manifest"])
            except IntegrityError as e:
                bset.manifest_error = e.what
        _place_data_files(bset, sorted(data_files.get(bset.prefix, [])))
    return [sets[p] for p in naming.sort_newest_first(list(sets))]


def _place_data_files(bset: BackupSet, paths: list[tuple[str, Path]]) -> None:
    """paths: (kind, path) of the prefix's set files. Each belongs to the set when the
    manifest names it; without a manifest, a roles, schema or data file does when it is the
    only one of its kind (platform and attachments files only with a manifest). Any other
    is an extra: the user's, never deleted with the set."""
    if bset.manifest is not None:
        files = bset.manifest.files
        chosen = [(k, p) for k, p in paths if k in files and files[k].name == p.name]
    else:
        chosen = []
        for kind in naming.SQL_KINDS:
            mine = [(k, p) for k, p in paths if k == kind]
            chosen += mine if len(mine) == 1 else []
    for kind, path in chosen:
        bset.files[kind] = path
    bset.extras = [p for k, p in paths if (k, p) not in chosen]


def file_problems(bset: BackupSet, *, checksums: bool) -> list[str]:
    """Compare a set's files with its manifest: sizes always (a stat each), sha256 too
    when checksums (every byte is read). Missing files are not reported here: they make
    the set incomplete, not damaged. Names are given without the prefix."""
    if bset.manifest is None:
        return ["it has no readable manifest"]
    problems = []
    for kind, entry in sorted(bset.manifest.files.items()):
        path = bset.files.get(kind)
        if path is None:
            continue
        short = path.name.removeprefix(bset.prefix + "-")
        try:
            st = os.lstat(path)
            size = st.st_size
            if not stat.S_ISREG(st.st_mode):
                problems.append(f"{short} is not a plain file")
            elif size != entry.size:
                problems.append(f"{short} is {size} bytes, the manifest says {entry.size}")
            elif checksums and _sha256(path) != entry.sha256:
                problems.append(f"{short} does not match its sha256 in the manifest")
        except FileNotFoundError:
            continue
        except OSError as e:
            problems.append(f"{short} is unreadable: {e.strerror}")
    return problems


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open_regular(path) as f:  # never through a link swapped in since the scan
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


# -- Finding a set -------------------------------------------------------------------


def latest(sets: list[BackupSet], directory: Path, target: TargetConfig | None) -> BackupSet:
    """The set "latest" means (of sets, newest first): the newest complete regular set of
    the configured target's source when the directory has one; else the newest, but only
    while the sets name one source at most. Taking another database's set because it is
    newer would restore the wrong data, so more sources and no match is refused."""
    want = sources.of_target(target) if target is not None else None
    candidates = [s for s in sets if s.complete and s.kind == "regular"]
    if want is not None:
        mine = next((s for s in candidates if s.source == want), None)
        if mine is not None:
            return mine
    if not candidates:
        raise NotFound(f"no complete backup set in {directory}", "run `pgvault backup` first")
    found = sorted({src for s in candidates if (src := s.source) and src.known})
    if len(found) > 1:
        names = ", ".join(src.label for src in found[:3]) + (", ..." if len(found) > 3 else "")
        theirs = f"the configured target ({want.label})" if want else "the configured target"
        raise ConfigError(
            f"'latest' is ambiguous: {directory} holds sets of {len(found)} databases "
            f"({names}) and {theirs} is none of them",
            "pass target= the database whose set you mean, or prefix=backup-YYYY-MM-DD-HHMMSS "
            "(`pgvault list` shows each set's source)",
        )
    return candidates[0]


def previous_set(directory: Path, source: sources.Source) -> BackupSet | None:
    """The newest complete regular set of source in directory (None: there is none, or
    no directory yet): what the next backup of it is estimated from."""
    if not directory.is_dir():
        return None
    for bset in scan(directory):
        if bset.complete and bset.kind == "regular" and bset.source == source:
            return bset
    return None


def resolve_prefix(
    prefix: str | None, dir_value: str | None, target: TargetConfig | None = None
) -> tuple[Path, str]:
    """Given prefix= (short, "latest", or an absolute path ending in a prefix), dir= and
    the configured target (whose source "latest" means), return the set's directory and
    prefix. Rejects anything that is not a pgvault name."""
    if not prefix:
        raise ConfigError(
            "no backup set given",
            "pass prefix=backup-YYYY-MM-DD-HHMMSS or prefix=latest; `pgvault list` shows them",
        )
    path = Path(prefix)
    if path.is_absolute():
        directory, name = path.parent, path.name
        if ".." in path.parts:
            raise ConfigError(f"prefix '{prefix}' contains '..'", "give the set's real path")
        refuse_system_dir(directory, f"the directory of prefix={prefix}")
    else:
        directory, name = backup_dir(dir_value, create=False), prefix
    if name == LATEST:
        return directory, latest(scan(directory), directory, target).prefix
    if not naming.is_prefix(name):
        raise ConfigError(
            f"'{name}' is not a backup set name",
            "use prefix=backup-YYYY-MM-DD-HHMMSS as `pgvault list` shows it, or prefix=latest",
        )
    return directory, name


def find_set(directory: Path, prefix: str, scanned: list[BackupSet] | None = None) -> BackupSet:
    """Return the complete set prefix in directory (from scanned, a scan of it already
    made, if given) with only the files its manifest names, or say what is missing."""
    sets = scan(directory) if scanned is None else scanned
    bset = next((s for s in sets if s.prefix == prefix), None)
    if bset is None:
        raise NotFound(
            f"no backup set {prefix} in {directory}", f"`pgvault list dir={directory}` shows them"
        )
    if bset.manifest is None:
        why = bset.manifest_error or f"{naming.file_name(prefix, 'manifest')} is missing"
        raise NotFound(
            f"backup set {prefix} is incomplete: {why}",
            "it was interrupted or damaged; pick another set",
        )
    if bset.missing:
        raise NotFound(
            f"backup set {prefix} lacks {', '.join(bset.missing)}",
            "restore the missing files or pick another set",
        )
    kinds = [*naming.SQL_KINDS, naming.PLATFORM, naming.ATTACHMENTS]
    files = {k: bset.files[k] for k in kinds if k in bset.manifest.files}
    return BackupSet(prefix, directory, files, manifest=bset.manifest)
