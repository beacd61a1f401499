"""Where off-site copies live: an S3-compatible bucket (s3://bucket/prefix) or a directory
on another file system (file:///mnt/nas/path), behind one small interface.

A remote holds sets under the same names as a backup directory. An object appears only
when whole, and only when the bytes sent have the manifest's sha256 (S3 completes a
multipart upload at once, see remote_s3; a file is written as NAME.partial, hashed and
renamed), and push uploads a set's manifest last, so a set is complete on a remote
exactly when its manifest is there and every file it names is there with its size.
Only names pgvault writes (naming.parse_file_name) are ever read or deleted: anything
else under the prefix is someone else's.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import stat
from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import unquote, urlsplit

from pgvault import catalog, manifest, naming, retention
from pgvault.catalog import BackupSet, DiskFile
from pgvault.config import RemoteConfig
from pgvault.errors import ConfigError, IntegrityError, PgvaultError
from pgvault.s3 import RemoteError
from pgvault.store import create_new, fsync_dir, open_regular

CHUNK = 1 << 20
# A directory fsync some file systems and shares refuse (the rename itself is done).
_NO_DIR_FSYNC = {errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP}


@dataclass(frozen=True)
class RemoteObject:
    name: str  # file name under the remote's prefix, e.g. backup-...-data.sql.gz
    size: int


class Remote(Protocol):
    url: str  # as shown to users, no secrets

    def objects(self) -> list[RemoteObject]:
        """Every object directly under the prefix."""
        ...

    def upload(self, path: Path, name: str) -> None:
        """Copy the local file path to name (send, unchecked: a verify record)."""
        ...

    def send(self, fd: int, size: int, name: str, sha256: str | None) -> None:
        """Copy the first size bytes of the open file fd to name, streamed; visible only
        when whole, and only when the bytes sent have sha256 (the manifest's; None: not
        checked). IntegrityError when they do not: nothing is left at name then."""
        ...

    def stored_sha256(self, name: str) -> str | None:
        """The sha256 of name's bytes as the remote holds them, None when it cannot be
        told (no such object, or one not uploaded by pgvault)."""
        ...

    def download(self, name: str, dest: Path) -> None:
        """Stream name into dest, a new 0600 file (removed again if the download fails)."""
        ...

    def delete(self, name: str) -> None: ...

    def chunks(self, name: str) -> Iterator[bytes]:
        """name's bytes, streamed in pieces of about a megabyte (`list check=true`)."""
        ...


def open_remote(cfg: RemoteConfig) -> Remote:
    """The remote cfg.url names. Only checks the URL (ConfigError): nothing is contacted
    until the first call."""
    url = (cfg.url or "").strip()
    if not url:
        raise ConfigError(
            "no remote configured: remote.url is not set",
            "set remote.url=s3://bucket/prefix or remote.url=file:///abs/path",
        )
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("s3", "file"):
        # Not echoed: a mistyped URL may carry credentials.
        raise ConfigError(
            f"remote.url must start with s3:// or file://, not '{scheme or '(no scheme)'}:'",
            "use remote.url=s3://bucket/prefix or remote.url=file:///abs/path",
        )
    if parts.query or parts.fragment or "@" in parts.netloc:
        raise ConfigError(
            "remote.url holds a query, fragment or user part",
            "give keys in the environment or remote.access_key_id, never in the URL",
        )
    if scheme == "file":
        return FileRemote.from_url(url, parts.netloc, unquote(parts.path))
    from pgvault.remote_s3 import S3Remote

    return S3Remote.from_url(url, parts.netloc, parts.path, cfg)


def check_name(name: str) -> None:
    # Every name comes from our own listing or naming: a "/" or ".." would escape it.
    if not name or "/" in name or name in (".", "..") or "\0" in name:
        raise PgvaultError(f"'{name}' is not an object name pgvault uses", "this is a bug")


def write_new(dest: Path, chunks: Iterator[bytes]) -> None:
    """Write chunks into the new file dest (0600, never through a symlink), fsynced; on
    any failure nothing is left at dest."""
    fd = create_new(dest)
    try:
        with os.fdopen(fd, "wb") as f:
            for chunk in chunks:
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            dest.unlink()
        raise


def read_at(fd: int, offset: int, size: int, name: str) -> bytes:
    """size bytes of fd from offset (os.pread: no shared file position, and the file may
    have been unlinked since it was opened). IntegrityError when the file is shorter."""
    pieces, got = [], 0
    while got < size:
        piece = os.pread(fd, min(size - got, 1 << 24), offset + got)
        if not piece:
            raise IntegrityError(
                f"{name} ended after {offset + got} bytes while being uploaded",
                "the local file changed or is damaged: `pgvault list check=true`",
            )
        pieces.append(piece)
        got += len(piece)
    return pieces[0] if len(pieces) == 1 else b"".join(pieces)


def hash_fd(fd: int, size: int, name: str) -> str:
    digest = hashlib.sha256()
    for offset in range(0, size, CHUNK):
        digest.update(read_at(fd, offset, min(CHUNK, size - offset), name))
    return digest.hexdigest()


def send_path(remote: Remote, path: Path, name: str) -> None:
    """remote.upload for a file no manifest covers (a verify record)."""
    with open_regular(path) as f:
        remote.send(f.fileno(), os.fstat(f.fileno()).st_size, name, None)


def mismatch(name: str) -> IntegrityError:
    return IntegrityError(
        f"{name}: the bytes read for the upload do not match its sha256 in the manifest; "
        "nothing of it was kept remotely",
        "the local file changed or is damaged: `pgvault list check=true`",
    )


@dataclass
class FileRemote:
    """file:///abs/path: a directory on another disk or a mounted share. It is never
    created here: an unmounted share's empty mount point must not take the copies."""

    url: str
    directory: Path

    @classmethod
    def from_url(cls, url: str, host: str, path: str) -> FileRemote:
        if host not in ("", "localhost"):
            raise ConfigError(
                f"remote.url '{url}' is not an absolute file:// path",
                "use three slashes: remote.url=file:///abs/path",
            )
        if not path.startswith("/") or ".." in Path(path).parts:
            raise ConfigError(
                f"remote.url '{url}' is not an absolute path", "use remote.url=file:///abs/path"
            )
        directory = Path(os.path.normpath(path))
        catalog.refuse_system_dir(directory, "remote.url")
        return cls(url.rstrip("/"), directory)

    def _fail(self, what: str, e: OSError) -> RemoteError:
        hint = "check that it is mounted and writable, then run again"
        return RemoteError(f"{what} {self.url}: {e.strerror or e}", hint)

    def _present(self) -> None:
        if not self.directory.is_dir():
            raise RemoteError(
                f"the remote directory {self.directory} does not exist",
                f"mount the share or create it (mkdir -m 700 {self.directory})",
            )

    def objects(self) -> list[RemoteObject]:
        self._present()
        out = []
        try:
            for entry in os.scandir(self.directory):
                with contextlib.suppress(FileNotFoundError):  # deleted meanwhile
                    st = entry.stat(follow_symlinks=False)
                    if stat.S_ISREG(st.st_mode):
                        out.append(RemoteObject(entry.name, st.st_size))
        except OSError as e:
            raise self._fail("cannot list", e) from None
        return out

    def upload(self, path: Path, name: str) -> None:
        send_path(self, path, name)

    def send(self, fd: int, size: int, name: str, sha256: str | None) -> None:
        check_name(name)
        self._present()
        final = self.directory / name
        tmp = self.directory / (name + naming.PARTIAL_SUFFIX)
        digest = hashlib.sha256()

        def pieces() -> Iterator[bytes]:
            for offset in range(0, size, CHUNK):
                piece = read_at(fd, offset, min(CHUNK, size - offset), name)
                digest.update(piece)
                yield piece

        try:
            write_new(tmp, pieces())
            if sha256 is not None and digest.hexdigest() != sha256:
                tmp.unlink()
                raise mismatch(name)
            # rename() replaces whatever is at the name, a symlink included, never its target.
            os.replace(tmp, final)
        except OSError as e:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise self._fail(f"cannot write {name} to", e) from None
        self._sync(name)

    def _sync(self, name: str) -> None:
        try:
            fsync_dir(self.directory)
        except OSError as e:
            # The rename is done; a share that cannot fsync a directory (EINVAL,
            # ENOTSUP) must not fail every push. Any other error is real.
            if e.errno not in _NO_DIR_FSYNC:
                raise self._fail(f"cannot sync {name} in", e) from None

    def stored_sha256(self, name: str) -> str | None:
        check_name(name)
        try:
            with open_regular(self.directory / name) as f:
                return hash_fd(f.fileno(), os.fstat(f.fileno()).st_size, name)
        except FileNotFoundError:
            return None
        except OSError as e:
            raise self._fail(f"cannot read {name} from", e) from None

    def chunks(self, name: str) -> Iterator[bytes]:
        check_name(name)
        try:
            with open_regular(self.directory / name) as f:
                while chunk := f.read(CHUNK):
                    yield chunk
        except OSError as e:
            raise self._fail(f"cannot read {name} from", e) from None

    def download(self, name: str, dest: Path) -> None:
        write_new(dest, self.chunks(name))

    def delete(self, name: str) -> None:
        check_name(name)
        try:
            (self.directory / name).unlink()
        except FileNotFoundError:
            raise
        except OSError as e:
            raise self._fail(f"cannot delete {name} from", e) from None
        self._sync(name)


# -- A remote's sets, for the catalog, listing and retention --------------------------


@dataclass(frozen=True)
class RemoteStore:
    """catalog.Store over a remote listing taken once: directory is the cache the
    manifests and verify records were downloaded into; deletes go to the remote."""

    remote: Remote
    directory: Path
    listing: tuple[RemoteObject, ...]

    def names(self) -> list[str]:
        return [o.name for o in self.listing]

    def delete(self, name: str) -> None:
        self.remote.delete(name)

    def write_json(self, name: str, data: dict[str, Any]) -> None:
        raise PgvaultError("a remote's files are written by push only", "this is a bug")

    def sync(self) -> None:
        """Each delete is durable when it returns (a file remote syncs its directory)."""

    def lock(self, *, timeout: float, what: str) -> AbstractContextManager[None]:
        return contextlib.nullcontext()

    def is_locked(self) -> bool:
        return False


@dataclass
class Scan:
    """A remote's sets (newest first, each with status, problem and on_disk filled in as
    listing shows them) and the sizes of the objects they were made of."""

    sets: list[BackupSet]
    sizes: dict[str, int]
    store: RemoteStore


def scan(remote: Remote, cache: Path) -> Scan:
    """List remote, download its manifests and verify records into cache, read them."""
    listing = tuple(remote.objects())
    sizes = {o.name: o.size for o in listing}
    too_big = {}
    for o in listing:
        parsed = naming.parse_file_name(o.name)
        if parsed is None or parsed.partial or parsed.kind not in ("manifest", "verify"):
            continue
        dest = cache / o.name
        if parsed.kind == "manifest" and _cached(dest, o.size):
            continue  # a set's manifest never changes: push scans twice with one cache
        with contextlib.suppress(FileNotFoundError):
            dest.unlink()
        if o.size > manifest.MAX_BYTES:
            too_big[parsed.prefix] = f"its {parsed.kind} is {o.size} bytes, over the limit"
            continue
        remote.download(o.name, dest)
    store = RemoteStore(remote, cache, listing)
    sets = catalog.scan(store)
    for bset in sets:
        _assess(bset, sizes, too_big.get(bset.prefix))
    return Scan(sets, sizes, store)


def _cached(path: Path, size: int) -> bool:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    return stat.S_ISREG(st.st_mode) and st.st_size == size


def remote_sets(remote: Remote, cache: Path) -> list[BackupSet]:
    """The remote's sets, newest first; manifests (and verify records) downloaded into
    cache so catalog/listing/retention code works on them; BackupSet.directory == cache."""
    return scan(remote, cache).sets


def _assess(bset: BackupSet, sizes: dict[str, int], too_big: str | None) -> None:
    """Status as on a remote: a file of the wrong size (a manifest put there by hand, an
    upload another tool cut) does not count, so the set reads as incomplete until a push
    replaces it; sizes come from the listing, nothing else is read."""
    wrong = []
    if bset.manifest is not None:
        for kind, entry in bset.manifest.files.items():
            path = bset.files.get(kind)
            if path is not None and sizes.get(path.name) != entry.size:
                del bset.files[kind]
                short = path.name.removeprefix(bset.prefix + "-")
                wrong.append(
                    f"{short} is {sizes.get(path.name)} bytes, the manifest says {entry.size}"
                )
    paths = sorted({p.name for p in [*bset.all_paths(), *bset.extras]})
    listed = []
    for name in paths:
        parsed = naming.parse_file_name(name)
        kind = parsed.kind if parsed else "?"
        listed.append(DiskFile(name, kind, sizes.get(name, 0), bool(parsed and parsed.partial)))
    bset.on_disk = tuple(listed)
    if too_big and bset.manifest is None:
        bset.manifest_error = too_big
    if bset.complete:
        bset.status, bset.problem = "complete", None
    elif bset.manifest_error is not None:
        bset.status, bset.problem = "damaged", bset.manifest_error
    else:
        problem = "; ".join(wrong) if wrong else retention.incomplete_reason(bset)
        bset.status, bset.problem = "incomplete", problem


def check_checksums(remote: Remote, bset: BackupSet) -> str | None:
    """Stream each of a complete remote set's files and compare its sha256 with the
    manifest (nothing held in memory but a chunk): the first problem, or None."""
    assert bset.manifest is not None
    for _kind, entry in sorted(bset.manifest.files.items()):
        digest = hashlib.sha256()
        for chunk in remote.chunks(entry.name):
            digest.update(chunk)
        if digest.hexdigest() != entry.sha256:
            short = entry.name.removeprefix(bset.prefix + "-")
            return f"{short} does not match its sha256 in the manifest"
    return None
