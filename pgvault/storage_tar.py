"""The attachments part's tar (see pgvault.attachments), written and read as streams, and
read against the manifest's list (verify).

Writing: tarfile takes a whole member per addfile() call, so a generator feeding
pipeline.write_chunks would have to hold the object (or run tarfile on a thread). Here
tarfile makes each header and the body passes straight through, laid out exactly as
tarfile's stream mode ("w|", PAX: long and unicode keys survive) lays it out. Reading:
tarfile's own stream mode ("r|") over the set file's (decrypted) chunks.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import tarfile
import tempfile
from collections.abc import Generator, Iterator
from typing import TYPE_CHECKING, Any

from pgvault import naming, pipeline
from pgvault.errors import IntegrityError

if TYPE_CHECKING:
    from pgvault.catalog import BackupSet
    from pgvault.manifest import StorageObject

_MAX_PROBLEMS = 20


def header(name: str, size: int, mtime: float) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = int(mtime)
    info.mode = 0o600
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


def padding(size: int) -> bytes:
    return tarfile.NUL * (-size % tarfile.BLOCKSIZE)


def end(offset: int) -> bytes:
    """What tarfile's close() writes in stream mode: two zero blocks, then zeros up to a
    whole record."""
    tail = tarfile.NUL * (2 * tarfile.BLOCKSIZE)
    return tail + tarfile.NUL * (-(offset + len(tail)) % tarfile.RECORDSIZE)


class _ChunkReader(io.RawIOBase):
    """A read-only file over an iterator of byte chunks (tarfile reads files)."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._view = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self._view:
            chunk = next(self._chunks, None)
            if chunk is None:
                return 0
            self._view = memoryview(chunk)
        n = min(len(buffer), len(self._view))
        buffer[:n] = self._view[:n]
        self._view = self._view[n:]
        return n


@contextlib.contextmanager
def members(bset: BackupSet, identity: str | None) -> Iterator[Iterator[tuple[str, int, Any]]]:
    """The part's members as (name, size, file to read the body from), streamed (and
    decrypted) from the set's file."""
    path = bset.files.get(naming.ATTACHMENTS)
    if path is None:
        raise IntegrityError(
            f"set {bset.prefix} has no attachments file", "restore with restore.attachments=false"
        )
    chunks = pipeline.read_chunks(path, identity=identity)
    reader = _ChunkReader(chunks)
    try:
        with tarfile.open(fileobj=reader, mode="r|", encoding="utf-8") as tar:

            def each() -> Iterator[tuple[str, int, Any]]:
                for member in tar:
                    body = tar.extractfile(member) if member.isreg() else None
                    yield member.name, member.size, body

            yield each()
    finally:
        # Ends a decryption stage, and closes the file, when we stop reading early.
        if (close := getattr(chunks, "close", None)) is not None:
            close()


def copy_hashed(body: Any, out: Any) -> tuple[int, str]:
    """Read body to its end, writing it to out (if not None); return its size and sha256."""
    digest, size = hashlib.sha256(), 0
    while chunk := body.read(pipeline.CHUNK):
        digest.update(chunk)
        size += len(chunk)
        if out is not None:
            out.write(chunk)
    return size, digest.hexdigest()


_DAMAGED = "the set is damaged: restore another one, or restore.attachments=false"


def spooled(
    bset: BackupSet, identity: str | None, private: str
) -> Generator[tuple[StorageObject, str], None, None]:
    """Each object of the part, in the part's order, as (its manifest entry, a 0600 file
    in the private directory holding its bytes), checked against the manifest before it
    is yielded and removed when the caller asks for the next. Raises IntegrityError on a
    member the manifest does not list so, a body that does not match, or one missing."""
    assert bset.manifest is not None and bset.manifest.attachments is not None
    want = {f"{o.bucket}/{o.key}": o for o in bset.manifest.attachments.objects}
    seen: set[str] = set()
    with members(bset, identity) as each:
        for name, size, body in each:
            o = want.get(name)
            if body is None or o is None or name in seen or size != o.size:
                raise IntegrityError(
                    f"the attachments part of {bset.prefix} holds {name!r} ({size} bytes), "
                    "which its manifest does not list so",
                    _DAMAGED,
                )
            seen.add(name)
            fd, spool = tempfile.mkstemp(dir=private)  # 0600, in the 0700 directory
            try:
                with os.fdopen(fd, "wb") as out:
                    got, sha = copy_hashed(body, out)
                if got != o.size or sha != o.sha256:
                    raise IntegrityError(
                        f"attachment {name!r} in {bset.prefix} does not match its sha256 in "
                        "the manifest; it was not put back",
                        _DAMAGED,
                    )
                yield o, spool
            finally:
                os.unlink(spool)
    if missing := [n for n in want if n not in seen]:
        raise IntegrityError(
            f"the attachments part of {bset.prefix} lacks {missing[0]!r}"
            + (f" and {len(missing) - 1} more" if len(missing) > 1 else ""),
            _DAMAGED,
        )


def check_part(bset: BackupSet, identity: str | None) -> list[str]:
    """Read the attachments part against the manifest's list, both ways: every member
    listed, every listed object there, sizes and sha256s equal. [] when they agree."""
    assert bset.manifest is not None and bset.manifest.attachments is not None
    want = {f"{o.bucket}/{o.key}": o for o in bset.manifest.attachments.objects}
    seen: set[str] = set()
    problems: list[str] = []
    try:
        with members(bset, identity) as each:
            for name, _, body in each:
                o = want.get(name)
                if body is None or o is None or name in seen:
                    why = "twice" if name in seen else "which the manifest does not list"
                    problems.append(f"the attachments part holds {name!r}, {why}")
                    continue
                seen.add(name)
                got, sha = copy_hashed(body, None)
                if got != o.size:
                    problems.append(
                        f"attachment {name!r} is {got} bytes, the manifest says {o.size}"
                    )
                elif sha != o.sha256:
                    problems.append(
                        f"attachment {name!r} does not match its sha256 in the manifest"
                    )
    except (tarfile.TarError, EOFError, OSError) as e:
        problems.append(f"the attachments part is not a readable tar: {e}")
    except IntegrityError as e:  # its ciphertext is damaged (a wrong key is raised)
        problems.append(f"the attachments part is damaged: {e.what}")
    lacking = [f"the attachments part lacks {n!r}" for n in want if n not in seen]
    if problems and lacking and problems[-1].startswith("the attachments part is "):
        lacking = [f"{len(lacking)} listed objects after the damage could not be checked"]
    problems += lacking
    if len(problems) > _MAX_PROBLEMS:
        problems[_MAX_PROBLEMS:] = [f"and {len(problems) - _MAX_PROBLEMS} more attachment problems"]
    return problems
