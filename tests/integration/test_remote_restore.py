"""`pgvault restore` and `verify` taking their set from a remote: moto's S3 server over
HTTP and a file:// directory. The local copy is gone in every test; the set is streamed
down, checked against its manifest before use, and restored or verified as usual. A
damaged remote set is refused before the target is touched, and verify records its
verdict on the remote."""

from __future__ import annotations

import hashlib
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from pgvault.connection import Conn
from tests.conftest import create_database, drop_database, pgvault_env, run_pgvault, run_sql
from tests.fidelity import table_contents
from tests.integration.test_verify import EXIT_MISMATCH
from tests.s3server import MotoServer

REMOTE_PATH = "offsite/crm"


@pytest.fixture(scope="module")
def source(pg_cluster) -> Any:
    """A small database with text, bytea and a sequence."""
    name = create_database(pg_cluster, "remote_src")
    conn = pg_cluster.conn(name)
    run_sql(
        conn,
        "CREATE TABLE contacts (id serial PRIMARY KEY, name text, photo bytea);"
        "INSERT INTO contacts (name, photo) SELECT 'contact ' || i, sha256(i::text::bytea)"
        " FROM generate_series(1, 300) i;"
        "CREATE TABLE deals (id int PRIMARY KEY, contact int REFERENCES contacts, amount numeric);"
        "INSERT INTO deals SELECT i, 1 + i % 300, i * 1.5 FROM generate_series(1, 200) i;",
    )
    yield conn
    drop_database(pg_cluster, name)


@pytest.fixture(scope="module")
def local_set(source, tmp_path_factory) -> tuple[Path, str]:
    """One backup of source: its directory and prefix (tests upload copies of it)."""
    directory = tmp_path_factory.mktemp("remote-restore") / "backups"
    res = run_pgvault("backup", f"dir={directory}", "quiet=true", env=pgvault_env(source))
    assert res.returncode == 0, res.stderr
    (manifest,) = directory.glob("backup-*-manifest.json")
    return directory, manifest.name.removesuffix("-manifest.json")


def set_files(directory: Path, prefix: str) -> list[Path]:
    """The set's files, manifest last: the order an upload must keep."""
    files = sorted(p for p in directory.glob(f"{prefix}-*") if not p.name.endswith(".json"))
    return [*files, directory / f"{prefix}-manifest.json"]


def upload(server: MotoServer, bucket: str, local: tuple[Path, str]) -> None:
    client = server.client()
    for path in set_files(*local):
        client.upload_file(str(path), bucket, f"{REMOTE_PATH}/{path.name}")


def remote_args(server: MotoServer, bucket: str) -> list[str]:
    return [f"remote.url=s3://{bucket}/{REMOTE_PATH}", f"remote.endpoint={server.endpoint}"]


def pgvault(conn: Conn | None, *args: str, server: MotoServer | None = None, **env: str) -> Any:
    extra = {**(server.env() if server else {}), **env}
    return run_pgvault(*args, env=pgvault_env(conn, **extra))


def one_line(res: Any) -> str:
    assert res.returncode != 0, res.stdout
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pgvault: error: "), res.stderr
    return lines[0]


def staging_left(tmp: Path) -> list[str]:
    return [p.name for p in tmp.iterdir() if p.name.startswith("pgvault-fetch-")]


def test_restore_from_the_remote_gives_the_same_data(
    s3_server, s3_bucket, source, local_set, pg_cluster, tmp_path, tmp
):
    upload(s3_server, s3_bucket, local_set)
    target = create_database(pg_cluster, "remote_dst")
    run_sql(pg_cluster.conn(target), "CREATE TABLE stale (x int)")
    backups = tmp_path / "nothing-local"  # the disk with the sets is gone
    try:
        res = pgvault(
            source, "restore", "remote=true", "yes=true", f"dir={backups}",
            f"restore.target={target}", *remote_args(s3_server, s3_bucket),
            server=s3_server, TMPDIR=str(tmp),
        )  # fmt: skip
        assert res.returncode == 0, res.stdout + res.stderr
        assert f"From the remote: s3://{s3_bucket}/{REMOTE_PATH}/{local_set[1]}" in res.stdout
        assert table_contents(pg_cluster.conn(target)) == table_contents(source)
        # The safety backup of what was replaced is local, as for a local set.
        assert list(backups.glob("backup-*-manifest.json"))
        assert staging_left(tmp) == []
    finally:
        drop_database(pg_cluster, target)


def test_verify_a_remote_url_records_the_verdict_on_the_remote(
    s3_server, s3_bucket, local_set, tmp
):
    upload(s3_server, s3_bucket, local_set)
    prefix = local_set[1]
    url = f"s3://{s3_bucket}/{REMOTE_PATH}/{prefix}"
    res = pgvault(
        None, "verify", f"prefix={url}", f"remote.endpoint={s3_server.endpoint}",
        server=s3_server, TMPDIR=str(tmp),
    )  # fmt: skip
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"{prefix} verified" in res.stdout
    body = s3_server.client().get_object(
        Bucket=s3_bucket, Key=f"{REMOTE_PATH}/{prefix}-verify.json"
    )["Body"]
    assert json.loads(body.read())["verdict"] == "verified"
    assert staging_left(tmp) == []


def test_a_damaged_remote_set_is_refused_before_the_target_is_touched(
    s3_server, s3_bucket, source, local_set, pg_cluster, tmp_path, tmp
):
    directory, prefix = local_set
    upload(s3_server, s3_bucket, local_set)
    (data,) = directory.glob(f"{prefix}-data.sql*")
    damaged = bytearray(data.read_bytes())
    at = damaged.index(b"contact 1")
    damaged[at : at + 9] = b"CONTACT 1"  # the same size: only the checksum can tell
    client = s3_server.client()
    client.put_object(Bucket=s3_bucket, Key=f"{REMOTE_PATH}/{data.name}", Body=bytes(damaged))
    target = create_database(pg_cluster, "remote_keep")
    run_sql(pg_cluster.conn(target), "CREATE TABLE keep (x int); INSERT INTO keep VALUES (7)")
    before = table_contents(pg_cluster.conn(target))
    backups = tmp_path / "backups"
    try:
        res = pgvault(
            source, "restore", "remote=true", f"prefix={prefix}", "yes=true",
            f"dir={backups}", f"restore.target={target}",
            *remote_args(s3_server, s3_bucket), server=s3_server, TMPDIR=str(tmp),
        )  # fmt: skip
        line = one_line(res)
        assert "is damaged: data.sql does not match its sha256" in line, line
        assert table_contents(pg_cluster.conn(target)) == before
        assert not backups.exists()  # not even a safety backup was taken
    finally:
        drop_database(pg_cluster, target)
    res = pgvault(
        None, "verify", "remote=true", f"prefix={prefix}", *remote_args(s3_server, s3_bucket),
        server=s3_server, TMPDIR=str(tmp),
    )  # fmt: skip
    assert res.returncode == EXIT_MISMATCH, res.stdout + res.stderr
    assert "does NOT match" in res.stdout
    assert "data.sql does not match its sha256" in res.stdout
    body = client.get_object(Bucket=s3_bucket, Key=f"{REMOTE_PATH}/{prefix}-verify.json")["Body"]
    assert json.loads(body.read())["verdict"] == "failed"
    assert staging_left(tmp) == []


def test_bad_requests_get_one_line(s3_server, s3_bucket, source, local_set, tmp_path):
    upload(s3_server, s3_bucket, local_set)
    unknown = "backup-2001-02-03-040506"
    res = pgvault(
        source, "restore", "remote=true", f"prefix={unknown}", "yes=true", f"dir={tmp_path}",
        *remote_args(s3_server, s3_bucket), server=s3_server,
    )  # fmt: skip
    line = one_line(res)
    assert f"no backup set {unknown} on s3://{s3_bucket}/{REMOTE_PATH}" in line
    assert "pgvault list remote=true" in line
    res = pgvault(None, "verify", "remote=true", f"dir={tmp_path}")
    assert "no remote.url is configured" in one_line(res)
    res = pgvault(source, "restore", "remote=true", "yes=true", *remote_args(s3_server, s3_bucket))
    assert "no dir is set" in one_line(res)


def test_a_set_dir_lacks_is_taken_from_a_file_remote(local_set, tmp_path, tmp):
    """file:// remote; the set named is not in dir, so verify says it takes the remote's."""
    directory, prefix = local_set
    share = tmp_path / "nas"
    share.mkdir()
    for path in set_files(directory, prefix):
        shutil.copyfile(path, share / path.name)
    res = pgvault(
        None, "verify", f"prefix={prefix}", f"dir={tmp_path / 'empty'}",
        f"remote.url=file://{share}", TMPDIR=str(tmp),
    )  # fmt: skip
    assert res.returncode == 0, res.stdout + res.stderr
    assert "taking it from the remote" in res.stderr
    assert json.loads((share / f"{prefix}-verify.json").read_text())["verdict"] == "verified"
    assert not (tmp_path / "empty").exists()
    assert staging_left(tmp) == []


def test_ctrl_c_mid_download_removes_the_staged_files(local_set, tmp_path, tmp):
    """A file:// remote set with a 200 MB data file (zeros; its manifest rewritten to
    match), interrupted while it is being staged: nothing of it stays in $TMPDIR."""
    directory, prefix = local_set
    share = tmp_path / "nas"
    share.mkdir()
    for path in set_files(directory, prefix)[:-1]:
        shutil.copyfile(path, share / path.name)
    (data,) = share.glob(f"{prefix}-data.sql*")
    size = 200 * 1024 * 1024
    with open(data, "wb") as f:
        f.truncate(size)
    manifest = json.loads((directory / f"{prefix}-manifest.json").read_text())
    digest = hashlib.sha256()
    with open(data, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    manifest["files"]["data"].update(size=size, sha256=digest.hexdigest())
    (share / f"{prefix}-manifest.json").write_text(json.dumps(manifest))
    proc = subprocess.Popen(
        [sys.executable, "-m", "pgvault", "verify", "remote=true", f"remote.url=file://{share}"],
        env=pgvault_env(TMPDIR=str(tmp)),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 60
    while not list(tmp.glob(f"pgvault-fetch-*/set/{data.name}")) and proc.poll() is None:
        assert time.monotonic() < deadline, "the download never started"
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert staging_left(tmp) == []
