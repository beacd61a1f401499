"""Off-site copies: what a remote holds (scan: its sets, read by push, list and fetch),
and the upload half: a set's files opened while the local directory is locked, then sent
from the open descriptors, checked, and confirmed (see offsite.py)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pgvault import catalog, lease, manifest, naming, remote, retention
from pgvault.catalog import BackupSet, DiskFile
from pgvault.errors import IntegrityError, PgvaultError
from pgvault.listener import Listener
from pgvault.manifest import read_verify_record
from pgvault.remote import Remote, RemoteObject
from pgvault.s3 import RemoteError
from pgvault.store import open_regular
from pgvault.ui import mb

# What a set that cannot go up is told to: its prefix and why.
Fail = Callable[[str, PgvaultError], None]


class NameTaken(RemoteError):
    """The remote holds another set (another manifest) under a local set's name."""


class Unconfirmed(RemoteError):
    """A file of the set is not on the remote as it was sent (another uploader replaced
    it, or cut it): its manifest does not go up, the set fails, the others still go."""


@dataclass
class Opened:
    """A set's files opened under the lock: kind -> (descriptor, size)."""

    bset: BackupSet
    files: dict[str, tuple[int, int]]
    manifest_sha256: str
    sent: list[str] = field(default_factory=list)


def local_sha256(path: Path) -> str:
    """IntegrityError when the file cannot be read (EACCES, EIO): one line, no traceback."""
    try:
        with open_regular(path) as f:
            return remote.hash_fd(f.fileno(), f.seek(0, 2), path.name)
    except OSError as e:
        raise IntegrityError(
            f"cannot read {path}: {e.strerror or e}",
            "check the file's permissions and its disk, then run `pgvault push` again",
        ) from None


def cached_sha256(path: Path) -> str | None:
    """The sha256 of a remote manifest scan downloaded; None when it was not (too big)."""
    return local_sha256(path) if os.path.lexists(path) else None


def open_sets(
    ui: Listener, held: contextlib.ExitStack, sets: list[BackupSet],
    manifest_sha256: dict[str, str], fail: Fail,
) -> list[Opened]:  # fmt: skip
    """Open each set's files (the lock is held). A set deleted since the plan is left
    out; one whose file has another size than its manifest's fails."""
    out = []
    for s in sets:
        assert s.manifest is not None
        files = {}
        try:
            for kind, path in s.files.items():
                f = held.enter_context(open_regular(path))
                size = f.seek(0, 2)
                entry = s.manifest.files.get(kind)
                if entry is not None and size != entry.size:
                    short = path.name.removeprefix(s.prefix + "-")
                    raise IntegrityError(
                        f"{short} is {size} bytes, the manifest says {entry.size}",
                        "`pgvault list check=true` shows the damage; take a new backup",
                    )
                files[kind] = (f.fileno(), size)
        except FileNotFoundError:
            ui.note(f"{s.prefix} was deleted locally meanwhile: not uploaded")
            continue
        except IntegrityError as e:
            fail(s.prefix, e)
            continue
        except OSError as e:
            fail(s.prefix, IntegrityError(f"cannot read it: {e}", ""))
            continue
        out.append(Opened(s, files, manifest_sha256[s.prefix]))
    return out


def open_records(
    held: contextlib.ExitStack, sets: list[BackupSet], cache: Path, sizes: dict[str, int]
) -> list[tuple[str, int, int]]:
    """The verify records to send of sets already off-site (name, descriptor, size): a
    set verified here after it went up. Each is compared with the remote's (scan cached
    it) before it is opened: a thousand sets off-site must not hold a thousand
    descriptors. One the remote holds from a later check (`verify remote=true`) is never
    replaced."""
    out = []
    for s in sets:
        path, ours = s.files.get("verify"), s.verification()
        if path is None or ours is None:
            continue
        theirs = read_verify_record(cache / path.name) if path.name in sizes else None
        if theirs is not None and ours.checked_at <= theirs.checked_at:
            continue
        with contextlib.suppress(OSError):  # gone meanwhile: the next push sends it
            f = held.enter_context(open_regular(path))
            out.append((path.name, f.fileno(), f.seek(0, 2)))
    return out


def upload(
    ui: Listener, rem: remote.Remote, opened: list[Opened], sizes: dict[str, int],
    fail: Fail, done: Callable[[Opened, int], None],
) -> None:  # fmt: skip
    for o in opened:
        try:
            sent = _upload_set(ui, rem, o, sizes)
        except IntegrityError as e:  # a local file that is not what its manifest says
            fail(o.bset.prefix, e)
            for name in o.sent:  # ours, and no manifest will ever join them
                with contextlib.suppress(PgvaultError, OSError):
                    rem.delete(name)
            continue
        except (NameTaken, Unconfirmed) as e:  # another uploader's doing: left as it is
            fail(o.bset.prefix, e)
            continue
        done(o, sent)


def _upload_set(ui: Listener, rem: remote.Remote, o: Opened, sizes: dict[str, int]) -> int:
    """Upload the files of a set the remote lacks, confirm each one's size and sha256
    there, then its manifest and verify record. A file is skipped only when the remote
    holds it with the manifest's size and sha256 (an upload of ours cut short sent it
    whole). Returns the files sent."""
    s = o.bset
    assert s.manifest is not None
    entries = s.manifest.files
    ui.note(f"Uploading {s.prefix} to {rem.url} ({len(entries)} files, {mb(s.size)})")
    for kind, entry in entries.items():
        if sizes.get(entry.name) == entry.size and rem.stored_sha256(entry.name) == entry.sha256:
            continue
        fd, size = o.files[kind]
        lease.check(rem.url)  # each write under the remote's lease, while it is ours
        o.sent.append(entry.name)
        rem.send(fd, size, entry.name, entry.sha256)
    found = {x.name: x.size for x in rem.objects()}
    for entry in entries.values():
        # Sizes alone would miss another uploader's bytes of the same size, sent after
        # ours (push uploads without the local lock): the sha256 the remote holds for it
        # (S3: the object's metadata; a directory: its bytes, hashed again) is checked.
        if found.get(entry.name) != entry.size:
            held = f"with {found.get(entry.name, 'no')} bytes, not {entry.size}"
        elif rem.stored_sha256(entry.name) != entry.sha256:
            held = "with other bytes than the manifest's"
        else:
            continue
        raise Unconfirmed(
            f"{rem.url} holds {entry.name} {held} after the upload (another push of the "
            f"same set?); {s.prefix} is not off-site",
            "run `pgvault push` again",
        )
    name = s.files["manifest"].name
    if name in found:  # ours from a push cut short, or another machine's since the plan
        digest = hashlib.sha256()
        for chunk in rem.chunks(name):
            digest.update(chunk)
        if digest.hexdigest() != o.manifest_sha256:
            raise NameTaken(
                f"another set named {s.prefix} was uploaded meanwhile (from another machine "
                "or directory?)", "give each backup directory its own remote.url prefix",
            )  # fmt: skip
    else:  # the manifest last: now the set is complete there
        lease.check(rem.url)
        rem.send(*o.files["manifest"], name, o.manifest_sha256)
    if "verify" in o.files:
        lease.check(rem.url)
        rem.send(*o.files["verify"], s.files["verify"].name, None)
    return len(o.sent) + (name not in found) + ("verify" in o.files)


def send_records(rem: remote.Remote, records: list[tuple[str, int, int]]) -> None:
    """Send the verify records open_records chose."""
    for name, fd, size in records:
        lease.check(rem.url)
        rem.send(fd, size, name, None)


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
    listing shows them) and the sizes and times of the objects they were made of."""

    sets: list[BackupSet]
    sizes: dict[str, int]
    store: RemoteStore
    modified: dict[str, float | None] = field(default_factory=dict)


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
    return Scan(sets, sizes, store, {o.name: o.modified for o in listing})


def _cached(path: Path, size: int) -> bool:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    return stat.S_ISREG(st.st_mode) and st.st_size == size


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
