"""One file's upload to a remote, against moto's S3 server over HTTP (tests/s3server.py)
and a directory: only bytes with the manifest's sha256 ever become an object, the object
records that sha256, and a share that cannot fsync a directory does not fail an upload."""

from __future__ import annotations

import errno
import hashlib
import os
from pathlib import Path

import pytest

from pgvault import remote, remote_s3
from pgvault.config import RemoteConfig
from pgvault.errors import IntegrityError
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
