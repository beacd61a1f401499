"""One file's upload to a remote, against moto's S3 server over HTTP (tests/s3server.py)
and a directory: only bytes with the manifest's sha256 ever become an object, the object
records that sha256, a share that cannot fsync a directory does not fail an upload, two
pushes never take each other's .partial, a failed multipart upload is aborted after its
last part, and unreadable files or a full disk are one line."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from pgvault import offsite_upload, remote, remote_s3
from pgvault.catalog import BackupSet
from pgvault.config import RemoteConfig
from pgvault.errors import IntegrityError, PgvaultError
from pgvault.manifest import VerifyRecord
from pgvault.s3 import RemoteError
from tests.s3server import KEY_ID, SECRET

NAME = "backup-2024-01-02-030405-data.sql"


def s3_remote(server, bucket: str) -> remote_s3.S3Remote:  # type: ignore[no-untyped-def]
    cfg = RemoteConfig(url=f"s3://{bucket}/p", endpoint=server.endpoint,
                       access_key_id=KEY_ID, secret_access_key=SECRET)  # fmt: skip
    rem = remote.open_remote(cfg)
    assert isinstance(rem, remote_s3.S3Remote)
    return rem


def test_s3_multipart_upload_is_kept_only_with_the_manifests_sha256(s3_server, s3_bucket, tmp_path):
    data = os.urandom(remote_s3.PART_SIZE + 4096)  # two parts
    sha = hashlib.sha256(data).hexdigest()
    path = tmp_path / "f"
    path.write_bytes(data)
    rem = s3_remote(s3_server, s3_bucket)
    client = s3_server.client()
    with open(path, "rb") as f:
        path.unlink()  # read from the descriptor: local retention may delete the file
        with pytest.raises(IntegrityError, match="do not match its sha256"):
            rem.send(f.fileno(), len(data), NAME, hashlib.sha256(b"other").hexdigest())
        assert rem.objects() == []
        assert client.list_multipart_uploads(Bucket=s3_bucket).get("Uploads", []) == []
        rem.send(f.fileno(), len(data), NAME, sha)
    got = client.get_object(Bucket=s3_bucket, Key=f"p/{NAME}")
    assert got["Metadata"] == {"sha256": sha} and got["Body"].read() == data
    assert rem.stored_sha256(NAME) == sha


def test_s3_small_upload_and_objects_not_ours(s3_server, s3_bucket, tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"schema")
    rem = s3_remote(s3_server, s3_bucket)
    with open(path, "rb") as f:
        with pytest.raises(IntegrityError):
            rem.send(f.fileno(), 6, NAME, "0" * 64)
        assert rem.objects() == []
        rem.send(f.fileno(), 6, NAME, hashlib.sha256(b"schema").hexdigest())
    assert rem.stored_sha256(NAME) == hashlib.sha256(b"schema").hexdigest()
    rem.upload(path, "backup-2024-01-02-030405-verify.json")  # no manifest covers it
    assert rem.stored_sha256("backup-2024-01-02-030405-verify.json") is not None
    s3_server.client().put_object(Bucket=s3_bucket, Key=f"p/{NAME}", Body=b"schemb")
    assert rem.stored_sha256(NAME) is None  # same size, not uploaded by pgvault
    assert rem.stored_sha256("backup-2024-01-02-030405-roles.sql") is None


def file_remote(tmp_path: Path) -> remote.FileRemote:
    (tmp_path / "nas").mkdir()
    rem = remote.open_remote(RemoteConfig(url=f"file://{tmp_path / 'nas'}"))
    assert isinstance(rem, remote.FileRemote)
    return rem


def test_file_remote_keeps_only_the_manifests_bytes(tmp_path):
    rem = file_remote(tmp_path)
    path = tmp_path / "f"
    path.write_bytes(b"data" * 1000)
    with open(path, "rb") as f:
        with pytest.raises(IntegrityError):
            rem.send(f.fileno(), 4000, NAME, "0" * 64)
        assert list((tmp_path / "nas").iterdir()) == []  # neither the name nor a .partial
        sha = hashlib.sha256(b"data" * 1000).hexdigest()
        rem.send(f.fileno(), 4000, NAME, sha)
    assert (tmp_path / "nas" / NAME).read_bytes() == b"data" * 1000
    assert rem.stored_sha256(NAME) == sha


@pytest.mark.parametrize(("code", "fails"), [(errno.EINVAL, False), (errno.ENOTSUP, False),
                                             (errno.EIO, True)])  # fmt: skip
def test_a_share_that_cannot_fsync_a_directory(tmp_path, monkeypatch, code, fails):
    rem = file_remote(tmp_path)
    path = tmp_path / "f"
    path.write_bytes(b"data")

    def refuse(directory: Path) -> None:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(remote, "fsync_dir", refuse)
    with open(path, "rb") as f:
        if fails:
            with pytest.raises(RemoteError, match="cannot sync"):
                rem.send(f.fileno(), 4, NAME, None)
        else:
            rem.send(f.fileno(), 4, NAME, None)
    assert (tmp_path / "nas" / NAME).read_bytes() == b"data"


def test_a_partial_another_push_is_writing_is_left_alone(tmp_path):
    """The local lock is not held while uploading: two pushes of one file must not take
    each other's NAME.partial. A fresh one fails this push; one over a day old (a killed
    push's) is replaced."""
    rem = file_remote(tmp_path)
    partial = tmp_path / "nas" / (NAME + ".partial")
    partial.write_bytes(b"theirs")
    path = tmp_path / "f"
    path.write_bytes(b"data")
    with open(path, "rb") as f:
        with pytest.raises(RemoteError, match=f"another push is writing {NAME} on file://"):
            rem.send(f.fileno(), 4, NAME, None)
        assert partial.read_bytes() == b"theirs" and not (tmp_path / "nas" / NAME).exists()
        old = time.time() - 2 * 86400
        os.utime(partial, (old, old))
        rem.send(f.fileno(), 4, NAME, hashlib.sha256(b"data").hexdigest())
    assert sorted(p.name for p in (tmp_path / "nas").iterdir()) == [NAME]
    assert (tmp_path / "nas" / NAME).read_bytes() == b"data"


def test_a_failed_multipart_upload_waits_for_its_parts_then_aborts(s3_server, s3_bucket, tmp_path):
    """The file ends before the size promised: part 1 is on the wire when reading part 2
    fails. Nothing of the upload is left, and no part is still being sent when send
    returns (one landing after the abort could be kept by S3)."""
    path = tmp_path / "f"
    path.write_bytes(os.urandom(remote_s3.PART_SIZE + 10))
    rem = s3_remote(s3_server, s3_bucket)
    with open(path, "rb") as f, pytest.raises(IntegrityError, match="ended after"):
        rem.send(f.fileno(), 3 * remote_s3.PART_SIZE, NAME, "0" * 64)
    assert [t for t in threading.enumerate() if t.name.startswith("pgvault-upload")] == []
    client = s3_server.client()
    assert client.list_multipart_uploads(Bucket=s3_bucket).get("Uploads", []) == []
    assert rem.objects() == []


def test_unreadable_files_and_a_full_disk_are_one_line(tmp_path, monkeypatch):
    rem = file_remote(tmp_path)
    (tmp_path / "nas" / NAME).write_bytes(b"data")
    with pytest.raises(IntegrityError, match="cannot read"):
        offsite_upload.local_sha256(tmp_path)  # not a regular file (EACCES alike)

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    dest = tmp_path / "cache" / NAME
    dest.parent.mkdir()
    with pytest.raises(PgvaultError) as e:
        rem.download(NAME, dest)
    assert e.value.line() == (f"no space left in {dest.parent} while downloading {NAME} "
                              "(free space or set TMPDIR to a disk with room)")  # fmt: skip
    assert not dest.exists()
    monkeypatch.undo()

    def failing(fd: int, n: int, offset: int) -> bytes:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(os, "pread", failing)
    with open(tmp_path / "nas" / NAME, "rb") as f, pytest.raises(IntegrityError) as e:
        rem.send(f.fileno(), 4, "backup-2024-01-02-030405-roles.sql", None)
    assert "cannot read backup-2024-01-02-030405-roles.sql" in e.value.line()
    assert os.listdir(tmp_path / "nas") == [NAME]


def test_only_verify_records_newer_than_the_remotes_are_opened(tmp_path):
    """A thousand sets off-site must not hold a thousand descriptors: each local verify
    record is compared with the remote's (cached by the scan) before it is opened."""
    local, cache = tmp_path / "local", tmp_path / "cache"
    local.mkdir()
    cache.mkdir()

    def record(path: Path, day: int) -> None:
        when = datetime(2024, 1, day, tzinfo=UTC)
        rec = VerifyRecord(verdict="verified", checked_at=when, duration_s=1.0,
                           server_version="17", tables=1, rows=1, problems=[])  # fmt: skip
        path.write_text(rec.model_dump_json())

    sets, sizes = [], {}
    for i, (ours, theirs) in enumerate([(5, 5), (5, 9), (5, 2), (5, None)]):
        prefix = f"backup-2024-01-0{i + 1}-000000"
        name = f"{prefix}-verify.json"
        record(local / name, ours)
        if theirs is not None:
            record(cache / name, theirs)
            sizes[name] = (cache / name).stat().st_size
        sets.append(BackupSet(prefix, local, files={"verify": local / name}))
    before = len(os.listdir("/proc/self/fd"))
    with contextlib.ExitStack() as held:
        out = offsite_upload.open_records(held, sets, cache, sizes)
        assert [name for name, _, _ in out] == [
            "backup-2024-01-03-000000-verify.json",  # the remote's is older
            "backup-2024-01-04-000000-verify.json",  # the remote has none
        ]
        assert len(os.listdir("/proc/self/fd")) == before + 2  # nothing else is open
