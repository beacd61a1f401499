"""Where off-site copies live: an S3-compatible bucket (s3://bucket/prefix) or a directory
on another file system (file:///mnt/nas/path), behind one small interface.

A remote holds sets under the same names as a backup directory. An object appears only
when whole, and only when the bytes sent have the manifest's sha256 (S3 completes a
multipart upload at once, see remote_s3; a file is written as NAME.partial, hashed and
renamed), and push uploads a set's manifest last, so a set is complete on a remote
exactly when its manifest is there and every file it names is there with its size.
Only names pgvault writes (naming.parse_file_name) are ever read or deleted: anything
else under the prefix is someone else's. Reading a remote's sets (scan) lives in
offsite_upload.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol
from urllib.parse import unquote, urlsplit

from pgvault import catalog, lease, naming, retention
from pgvault.catalog import BackupSet
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
    # When it was last written, in POSIX seconds (S3's LastModified, a file's mtime);
    # None: unknown, which never counts as old.
    modified: float | None = None


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

    # The lease (pgvault.lease): one writer at a time.
    def lease_read(self) -> tuple[bytes, str] | None: ...

    def lease_write(self, data: bytes, tag: str | None) -> str | None: ...


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
    """Download chunks into the new file dest (0600, never through a symlink), fsynced;
    on any failure nothing is left at dest. A full disk is one line (PgvaultError)."""
    try:
        fill(create_new(dest), dest, chunks)
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise PgvaultError(
                f"no space left in {dest.parent} while downloading {dest.name}",
                "free space or set TMPDIR to a disk with room",
            ) from None
        raise PgvaultError(
            f"cannot write {dest} while downloading {dest.name}: {e.strerror or e}",
            "check that TMPDIR is writable, or set it to another directory",
        ) from None


def fill(fd: int, path: Path, chunks: Iterator[bytes]) -> None:
    """Write chunks into fd, the file just created at path, and fsync it; on any failure
    path is removed (it is the caller's own: created with O_EXCL)."""
    try:
        with os.fdopen(fd, "wb") as f:
            for chunk in chunks:
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        raise


def read_at(fd: int, offset: int, size: int, name: str) -> bytes:
    """size bytes of fd from offset (os.pread: no shared file position, and the file may
    have been unlinked since it was opened). IntegrityError when the file is shorter."""
    pieces, got = [], 0
    while got < size:
        try:
            piece = os.pread(fd, min(size - got, 1 << 24), offset + got)
        except OSError as e:  # EIO: a failing disk
            raise IntegrityError(
                f"cannot read {name} for the upload: {e.strerror or e}",
                "check the backup directory's disk, then run `pgvault push` again",
            ) from None
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
                        out.append(RemoteObject(entry.name, st.st_size, st.st_mtime))
        except OSError as e:
            raise self._fail("cannot list", e) from None
        return out

    def upload(self, path: Path, name: str) -> None:
        send_path(self, path, name)

    def send(self, fd: int, size: int, name: str, sha256: str | None) -> None:
        check_name(name)
        self._present()
        tmp = self.directory / (name + naming.PARTIAL_SUFFIX)
        digest = hashlib.sha256()

        def pieces() -> Iterator[bytes]:
            for offset in range(0, size, CHUNK):
                piece = read_at(fd, offset, min(CHUNK, size - offset), name)
                digest.update(piece)
                yield piece

        try:
            fill(self._claim(tmp, name), tmp, pieces())  # tmp is removed if this fails
            try:
                if sha256 is not None and digest.hexdigest() != sha256:
                    raise mismatch(name)
                # rename() replaces whatever is at the name, a symlink included, never
                # its target.
                os.replace(tmp, self.directory / name)
            except BaseException:
                with contextlib.suppress(OSError):
                    tmp.unlink()  # our own .partial (_claim made it)
                raise
        except OSError as e:
            raise self._fail(f"cannot write {name} to", e) from None
        self._sync(name)

    def _claim(self, tmp: Path, name: str) -> int:
        """Create tmp (NAME.partial) for this push alone: O_EXCL, never through a symlink,
        and never removing one another push is writing (push uploads without holding the
        local lock, and two directories may push one set). One untouched for over a day
        is a killed push's: it is removed, and the create tried once more."""
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        for _ in range(2):
            try:
                return os.open(tmp, flags, 0o600)
            except FileExistsError:
                try:
                    touched = os.lstat(tmp).st_mtime
                except FileNotFoundError:
                    continue  # its push just ended
                if time.time() - touched < retention.STALE_AFTER.total_seconds():
                    break
                with contextlib.suppress(FileNotFoundError):
                    tmp.unlink()  # unlink removes a symlink itself, never its target
        raise RemoteError(
            f"another push is writing {name} on {self.url}",
            "wait for it, then run pgvault push again",
        )

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
        digest = hashlib.sha256()
        try:
            with open_regular(self.directory / name) as f:
                while chunk := f.read(CHUNK):
                    digest.update(chunk)
        except FileNotFoundError:
            return None
        except OSError as e:
            raise self._fail(f"cannot read {name} from", e) from None
        return digest.hexdigest()

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

    def lease_read(self) -> tuple[bytes, str] | None:
        try:
            return lease.read_file(self.directory / lease.NAME)
        except OSError as e:
            raise self._fail("cannot read the lease of", e) from None

    def lease_write(self, data: bytes, tag: str | None) -> str | None:
        self._present()
        try:
            return lease.write_file(self.directory / lease.NAME, data, tag)
        except OSError as e:
            raise self._fail("cannot write the lease of", e) from None
        finally:
            self._sync(lease.NAME)

    def delete(self, name: str) -> None:
        check_name(name)
        try:
            (self.directory / name).unlink()
        except FileNotFoundError:
            raise
        except OSError as e:
            raise self._fail(f"cannot delete {name} from", e) from None
        self._sync(name)


# -- A remote's sets (scan: offsite_upload) ------------------------------------------


def remote_sets(remote: Remote, cache: Path) -> list[BackupSet]:
    """The remote's sets, newest first; manifests (and verify records) downloaded into
    cache so catalog/listing/retention code works on them; BackupSet.directory == cache."""
    from pgvault.offsite_upload import scan  # with push, which reads them most

    return scan(remote, cache).sets


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
