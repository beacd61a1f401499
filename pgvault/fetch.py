"""Taking a set from the remote: choose it, stream its files into a private staging
directory, check each against the manifest, and hand the staged copy to restore or verify,
which then run exactly as on a local set. The staging directory is removed afterwards,
whatever happened (a failure, Ctrl-C, SIGTERM).

The set is staged in $TMPDIR (Python's tempfile rules): it needs the set's size free
there, which is checked before the first byte is downloaded.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

from pgvault import catalog, encryption, naming, units
from pgvault.catalog import LATEST, BackupSet
from pgvault.config import PgvaultConfig, RemoteConfig
from pgvault.errors import ConfigError, IntegrityError, NotFound, PgvaultError
from pgvault.listener import Listener
from pgvault.remote import Remote, open_remote, remote_sets

SCHEMES = ("s3://", "file://")
LIST_HINT = "`pgvault list remote=true` shows the remote's sets"


def is_remote_url(prefix: str | None) -> bool:
    return prefix is not None and prefix.startswith(SCHEMES)


def split_url(prefix: str) -> tuple[str, str]:
    """s3://bucket/path/backup-... -> (s3://bucket/path, backup-...)."""
    base, _, name = prefix.rstrip("/").rpartition("/")
    if not naming.is_prefix(name) or base.endswith(":/") or base.endswith(":"):
        raise ConfigError(
            f"'{prefix}' does not end in a backup set name",
            "give the remote's URL and a set, e.g. s3://bucket/path/backup-YYYY-MM-DD-HHMMSS",
        )
    return base, name


def wanted(cfg: PgvaultConfig, prefix: str | None, remote: bool, ui: Listener) -> bool:
    """Whether restore/verify take the set from the remote: remote=true, a remote URL as
    prefix, or a set name that dir does not hold while remote.url is configured."""
    if is_remote_url(prefix):
        return True
    if remote:
        if not cfg.remote.url:
            raise ConfigError(
                "remote=true but no remote.url is configured",
                "set remote.url=s3://bucket/prefix (or file:///abs/path), or leave remote=true out",
            )
        if prefix and Path(prefix).is_absolute():
            raise ConfigError(
                f"prefix={prefix} is a local path and remote=true takes a set from the remote",
                "give prefix=backup-YYYY-MM-DD-HHMMSS or latest, or leave remote=true out",
            )
        return True
    if not cfg.remote.url or not prefix or prefix == LATEST or not naming.is_prefix(prefix):
        return False
    if _held_locally(cfg.dir, prefix):
        return False
    here = f"not in {cfg.dir}" if cfg.dir else "not local (no dir is set)"
    ui.warn(f"{prefix} is {here}: taking it from the remote {cfg.remote.url}")
    return True


def _held_locally(dir_value: str | None, prefix: str) -> bool:
    """Whether the local directory holds the set complete (an incomplete local copy is
    worth less than the remote's)."""
    try:
        directory = catalog.backup_dir(dir_value, create=False)
        if not directory.is_dir():
            return False
        catalog.find_set(directory, prefix)
    except (ConfigError, NotFound):
        return False
    return True


def remote_for(cfg: PgvaultConfig, prefix: str | None) -> tuple[Remote, str | None]:
    """The remote a set is taken from and the set's name (None/latest: the newest): the
    URL's remote (with the configured endpoint and credentials) or remote.url."""
    remote_cfg: RemoteConfig = cfg.remote
    if prefix is not None and is_remote_url(prefix):
        base, prefix = split_url(prefix)
        remote_cfg = replace(cfg.remote, url=base)
    elif not cfg.remote.url:
        raise ConfigError(
            "no remote.url is configured", "set remote.url=s3://bucket/prefix or file:///abs/path"
        )
    return open_remote(remote_cfg), prefix


@dataclass(frozen=True)
class Fetched:
    """A remote set staged locally: bset's files are in a private directory that is
    removed when the fetch ends."""

    remote: Remote
    bset: BackupSet

    @property
    def where(self) -> str:
        return f"{self.remote.url.rstrip('/')}/{self.bset.prefix}"


@contextlib.contextmanager
def staging() -> Iterator[Path]:
    """A new private (0700) directory in $TMPDIR, removed afterwards whatever happens."""
    path = Path(tempfile.mkdtemp(prefix="pgvault-fetch-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@dataclass(frozen=True)
class Listing:
    """The remote's sets (newest first, manifests in a cache) and its objects' sizes."""

    sets: list[BackupSet]
    sizes: dict[str, int]

    def complete(self, bset: BackupSet) -> bool:
        """A manifest, and every file it names there with the manifest's size."""
        m = bset.manifest
        return (
            m is not None
            and bset.parseable
            and all(self.sizes.get(f.name) == f.size for f in m.files.values())
        )


def listing(remote: Remote, cache: Path) -> Listing:
    # Objects first: a set uploaded in between is then at worst seen incomplete.
    sizes = {o.name: o.size for o in remote.objects()}
    return Listing(remote_sets(remote, cache), sizes)


def choose(remote: Remote, found: Listing, cache: Path, prefix: str | None,
           cfg: PgvaultConfig) -> BackupSet:  # fmt: skip
    """The remote set prefix names (None or latest: the configured target's newest
    complete regular set, as `latest` means locally)."""
    if prefix is None or prefix == LATEST:
        candidates = [s for s in found.sets if found.complete(s)]
        try:
            return catalog.latest(candidates, cache, cfg.target)
        except PgvaultError as e:
            # The catalog names the directory: here that is a cache, the remote is meant.
            what = e.what.replace(str(cache), remote.url)
            hint = "run `pgvault push` to upload the local sets" if isinstance(e, NotFound) else ""
            raise type(e)(what, hint or e.hint) from None
    if not naming.is_prefix(prefix):
        raise ConfigError(
            f"'{prefix}' is not a backup set name",
            "use prefix=backup-YYYY-MM-DD-HHMMSS as `pgvault list remote=true` shows it, or latest",
        )
    bset = next((s for s in found.sets if s.prefix == prefix), None)
    if bset is None:
        raise NotFound(f"no backup set {prefix} on {remote.url}", LIST_HINT)
    if not found.complete(bset):
        raise NotFound(
            f"backup set {prefix} on {remote.url} is incomplete (its upload did not finish)",
            "`pgvault push` completes it from the local set; or pick another set",
        )
    return bset


@contextlib.contextmanager
def fetching(
    cfg: PgvaultConfig, ui: Listener, prefix: str | None, *, allow_damaged: bool = False
) -> Iterator[Fetched]:
    """Stage the remote set prefix names (see remote_for, choose) and yield it, every
    file checked against the manifest (size and sha256). A file that disagrees is an
    IntegrityError before anything is yielded, unless allow_damaged: then the caller's
    own checks (restore's force=true, verify's report) see it."""
    remote, name = remote_for(cfg, prefix)
    with staging() as root:
        cache = root / "catalog"
        cache.mkdir(mode=0o700)
        found = listing(remote, cache)
        chosen = choose(remote, found, cache, name, cfg)
        assert chosen.manifest is not None  # choose gives a complete set
        files = sorted(chosen.manifest.files.values(), key=lambda f: f.name)
        total = sum(f.size for f in files)
        free = shutil.disk_usage(root).free
        if free < total:
            raise PgvaultError(
                f"not enough room to stage {chosen.prefix} in {root.parent}: "
                f"{units.size(free)} free, the set is {units.size(total)}",
                "set TMPDIR to a directory with room",
            )
        directory = root / "set"
        directory.mkdir(mode=0o700)
        key = _key_check(cfg, chosen)
        if key is not None:  # the small roles file first: a wrong key before the big ones
            roles = chosen.manifest.files["roles"].name
            files.sort(key=lambda f: f.name != roles)
        ui.note(f"Downloading {chosen.prefix} from {remote.url} ({units.size(total)})")
        # The manifest first: the files are then checked against what was downloaded.
        for kind in ("manifest", "verify"):
            fname = naming.file_name(chosen.prefix, kind)
            if kind == "manifest" or fname in found.sizes:
                remote.download(fname, directory / fname)
        done = 0
        with ui.transfer(f"download {chosen.prefix}", total) as advance:
            for entry in files:
                remote.download(entry.name, directory / entry.name)
                if key is not None and entry is files[0]:
                    key(directory / entry.name)
                done += entry.size
                advance(done)
        bset = catalog.find_set(directory, chosen.prefix)
        problems = catalog.file_problems(bset, checksums=True)
        if problems and not allow_damaged:
            raise IntegrityError(
                f"backup set {chosen.prefix} on {remote.url} is damaged: {problems[0]}",
                "nothing was used; pick another set, `pgvault list remote=true` shows them",
            )
        yield Fetched(remote, bset)


def _key_check(cfg: PgvaultConfig, chosen: BackupSet) -> Callable[[Path], None] | None:
    """For an encrypted set: the key file is read now, before any download, and the
    returned check opens a downloaded file's header with it (a wrong key is one line
    before the rest of the set comes down)."""
    m = chosen.manifest
    if m is None or m.encryption is None:
        return None
    identities = encryption.load_identities(cfg.encryption.identity)
    shown = ", ".join(m.encryption.recipients)
    key_path = str(cfg.encryption.identity)
    return lambda path: encryption.check_key(path, identities, key_path, shown)


@contextlib.contextmanager
def fetched(
    cfg: PgvaultConfig, ui: Listener, prefix: str | None, *, allow_damaged: bool = False
) -> Iterator[BackupSet]:
    """prefix None/"latest": the configured target's newest complete remote set; a set
    name; or a remote URL ending in one. Downloads the set into a private temp dir (0700),
    checks every file's size and sha256 against the manifest BEFORE yielding, and
    removes the dir afterwards."""
    with fetching(cfg, ui, prefix, allow_damaged=allow_damaged) as got:
        yield got.bset


def complete_prefixes(cfg: PgvaultConfig) -> list[str]:
    """The configured remote's complete sets, newest first (verify all=true)."""
    remote, _ = remote_for(cfg, None)
    with staging() as cache:
        found = listing(remote, cache)
        prefixes = [s.prefix for s in found.sets if found.complete(s)]
    if not prefixes:
        raise NotFound(
            f"no complete backup set on {remote.url}",
            "run `pgvault push` to upload the local sets",
        )
    return prefixes
