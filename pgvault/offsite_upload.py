"""Off-site copies, the upload half: a set's files opened while the local directory is
locked, then sent from the open descriptors, checked, and confirmed (see offsite.py)."""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pgvault import remote
from pgvault.catalog import BackupSet
from pgvault.errors import IntegrityError, PgvaultError
from pgvault.listener import Listener
from pgvault.manifest import VerifyRecord, read_verify_record
from pgvault.s3 import RemoteError
from pgvault.store import open_regular
from pgvault.ui import mb

# What a set that cannot go up is told to: its prefix and why.
Fail = Callable[[str, PgvaultError], None]


class NameTaken(RemoteError):
    """The remote holds another set (another manifest) under a local set's name."""


@dataclass
class Opened:
    """A set's files opened under the lock: kind -> (descriptor, size)."""

    bset: BackupSet
    files: dict[str, tuple[int, int]]
    manifest_sha256: str
    sent: list[str] = field(default_factory=list)


def local_sha256(path: Path) -> str:
    with open_regular(path) as f:
        return remote.hash_fd(f.fileno(), f.seek(0, 2), path.name)


def cached_sha256(path: Path) -> str | None:
    """The sha256 of a remote manifest scan downloaded; None when it was not (too big)."""
    try:
        return local_sha256(path)
    except FileNotFoundError:
        return None


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
    held: contextlib.ExitStack, sets: list[BackupSet]
) -> list[tuple[str, int, int, VerifyRecord]]:
    """The verify records of sets already off-site: (name, descriptor, size, record)."""
    out = []
    for s in sets:
        path, ours = s.files.get("verify"), s.verification()
        if path is not None and ours is not None:
            with contextlib.suppress(OSError):  # gone meanwhile: the next push sends it
                f = held.enter_context(open_regular(path))
                out.append((path.name, f.fileno(), f.seek(0, 2), ours))
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
        except NameTaken as e:  # another machine completed its set meanwhile
            fail(o.bset.prefix, e)
            continue
        done(o, sent)


def _upload_set(ui: Listener, rem: remote.Remote, o: Opened, sizes: dict[str, int]) -> int:
    """Upload the files of a set the remote lacks, confirm each one's size there, then
    its manifest and verify record. A file is skipped only when the remote holds it with
    the manifest's size and sha256 (an upload of ours cut short sent it whole). Returns
    the files sent."""
    s = o.bset
    assert s.manifest is not None
    entries = s.manifest.files
    ui.note(f"Uploading {s.prefix} to {rem.url} ({len(entries)} files, {mb(s.size)})")
    for kind, entry in entries.items():
        if sizes.get(entry.name) == entry.size and rem.stored_sha256(entry.name) == entry.sha256:
            continue
        fd, size = o.files[kind]
        o.sent.append(entry.name)
        rem.send(fd, size, entry.name, entry.sha256)
    found = {x.name: x.size for x in rem.objects()}
    for entry in entries.values():
        if found.get(entry.name) != entry.size:
            raise RemoteError(
                f"{rem.url} holds {entry.name} with {found.get(entry.name, 'no')} bytes after "
                f"the upload, not {entry.size}; {s.prefix} is not off-site",
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
        rem.send(*o.files["manifest"], name, o.manifest_sha256)
    if "verify" in o.files:
        rem.send(*o.files["verify"], s.files["verify"].name, None)
    return len(o.sent) + (name not in found) + ("verify" in o.files)


def refresh_verify_records(
    rem: remote.Remote, cache: Path, records: list[tuple[str, int, int, VerifyRecord]],
    sizes: dict[str, int],
) -> None:  # fmt: skip
    """A set verified here after it went up: its newer verify record goes up too. One
    the remote holds from a later check (`verify remote=true`) is never replaced."""
    for name, fd, size, ours in records:
        theirs = read_verify_record(cache / name) if name in sizes else None
        if theirs is None or ours.checked_at > theirs.checked_at:
            rem.send(fd, size, name, None)
