"""Off-site copies against a real S3 server over HTTP (moto's standalone server, see
tests/s3server.py) and a file:// directory: upload after backup, list, push after a
failed upload, an upload cut half-way, wrong credentials, a missing bucket, the remote's
retention per source database, and a file replaced by another uploader before the
manifest goes up."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import boto3
import pytest

from pgvault import catalog, lease, naming, offsite, runstate
from pgvault import remote as remote_module
from pgvault.backup import take_backup
from pgvault.config import PgvaultConfig, RemoteConfig, TargetConfig
from pgvault.s3 import RemoteError
from pgvault.ui import Reporter
from tests.conftest import create_database, drop_database, pgvault_env, run_pgvault, run_sql
from tests.s3server import KEY_ID, REGION, SECRET, MotoServer


def error_line(res) -> str:  # type: ignore[no-untyped-def]
    """The run failed with one error line (warnings aside) and no traceback."""
    assert res.returncode != 0, res.stdout
    assert "Traceback" not in res.stderr, res.stderr
    lines = [ln for ln in res.stderr.strip().splitlines() if not ln.startswith("pgvault: warning:")]
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("pgvault: error: ") and lines[0].endswith(")"), lines[0]
    return lines[0]


def local_files(directory: Path) -> dict[str, int]:
    return {
        p.name: p.stat().st_size
        for p in directory.iterdir()
        if naming.parse_file_name(p.name) is not None
    }


def remote_objects(client, bucket: str, prefix: str = "pg/") -> dict[str, int]:  # type: ignore[no-untyped-def]
    pages = client.get_paginator("list_objects_v2").paginate(
        Bucket=bucket, Prefix=prefix, Delimiter="/"
    )
    # The runs' lease (pgvault.lease) stays, expired, once given back: it is not a set's.
    return {
        o["Key"][len(prefix) :]: o["Size"]
        for p in pages
        for o in p.get("Contents", [])
        if o["Key"][len(prefix) :] != lease.NAME
    }


def intact(directory: Path) -> str:
    """The one set in directory is complete and matches its manifest; its prefix."""
    (bset,) = [s for s in catalog.scan(directory) if s.complete]
    assert catalog.file_problems(bset, checksums=True) == []
    return bset.prefix


@pytest.fixture(scope="module")
def source(pg_cluster):
    name = create_database(pg_cluster, "remote")
    run_sql(
        pg_cluster.conn(name),
        "CREATE ROLE remote_app_role PASSWORD 'role-pw';"
        "CREATE TABLE t (id int PRIMARY KEY, v text);"
        "INSERT INTO t SELECT i, md5(i::text) FROM generate_series(1, 2000) i;",
    )
    yield pg_cluster.url(name)
    drop_database(pg_cluster, name)
    run_sql(pg_cluster.conn(), "DROP ROLE IF EXISTS remote_app_role")


@pytest.fixture(scope="module")
def local_set(tmp_path_factory, source) -> Path:
    """A backup directory holding one set, written once; copy it before changing it."""
    directory = tmp_path_factory.mktemp("local") / "backups"
    cfg = PgvaultConfig(dir=str(directory), target=TargetConfig(name="local", url=source))
    take_backup(cfg, Reporter(quiet=True), apply_retention=False)
    return directory


def copy_of(local_set: Path, tmp_path: Path) -> Path:
    directory = tmp_path / "backups"
    shutil.copytree(local_set, directory)
    return directory


def s3_args(bucket: str, endpoint: str, *more: str) -> list[str]:
    return [f"remote.url=s3://{bucket}/pg", f"remote.endpoint={endpoint}", *more]


def test_backup_uploads_the_set_and_list_shows_it(s3_server, s3_bucket, source, tmp_path):
    env = pgvault_env(**s3_server.env())
    directory = tmp_path / "backups"
    client = s3_server.client()
    # Not pgvault's: never listed, never deleted.
    client.put_object(Bucket=s3_bucket, Key="pg/notes.txt", Body=b"mine")
    client.put_object(Bucket=s3_bucket, Key="pg/deeper/backup-2001-01-01-000000-manifest.json",
                      Body=b"{}")  # fmt: skip
    remote = s3_args(s3_bucket, s3_server.endpoint)
    res = run_pgvault("backup", f"dir={directory}", f"target.url={source}", *remote, env=env)
    assert res.returncode == 0, res.stderr
    assert "Backup completed successfully!" in res.stdout and "Uploaded 1 set(s)" in res.stdout
    assert res.stderr.count("password hashes") == 1, res.stderr  # warned once per run
    prefix = intact(directory)
    objects = remote_objects(client, s3_bucket)
    assert objects == {**local_files(directory), "notes.txt": 4}  # every file, every size
    deeper = remote_objects(client, s3_bucket, "pg/deeper/")
    assert deeper == {"backup-2001-01-01-000000-manifest.json": 2}

    res = run_pgvault("list", "remote=true", *remote, env=env)
    assert res.returncode == 0, res.stderr
    assert f"Backups in s3://{s3_bucket}/pg, newest first:" in res.stdout
    (row,) = [ln for ln in res.stdout.splitlines() if ln.startswith(prefix)]
    assert " complete " in row and "notes" not in res.stdout
    res = run_pgvault("list", "remote=true", "format=json", "check=true", *remote, env=env)
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["directory"] == f"s3://{s3_bucket}/pg" and doc["checksums_checked"]
    (listed,) = doc["sets"]
    assert (listed["prefix"], listed["status"]) == (prefix, "complete")
    assert {f["name"]: f["size_bytes"] for f in listed["files"]} == local_files(directory)

    res = run_pgvault("status", f"dir={directory}", f"target.url={source}", *remote, env=env)
    assert f"newest off-site: {prefix}" in res.stdout, res.stdout
    assert "upload" not in "".join(ln for ln in res.stdout.splitlines() if ln.startswith("✗"))

    # A remote file changed behind pgvault's back, same size: check=true streams it and says.
    data = naming.file_name(prefix, "data")
    size = objects[data]
    client.put_object(Bucket=s3_bucket, Key=f"pg/{data}", Body=b"x" * size)
    res = run_pgvault("list", "remote=true", "check=true", "format=json", *remote, env=env)
    assert res.returncode == 1
    (listed,) = json.loads(res.stdout)["sets"]
    assert listed["status"] == "damaged" and "sha256" in listed["problem"]


def test_missing_bucket_then_push_after_the_failed_upload(s3_server, source, tmp_path):
    env = pgvault_env(**s3_server.env())
    directory = tmp_path / "backups"
    bucket = f"later-{os.getpid()}-{tmp_path.name[-6:]}".lower().replace("_", "-")
    remote = s3_args(bucket, s3_server.endpoint)
    # A bad URL: refused before anything is written.
    res = run_pgvault("backup", f"dir={directory}", f"target.url={source}",
                      "remote.url=ftp://host/x", env=env)  # fmt: skip
    assert "s3:// or file://" in error_line(res) and res.returncode == 2
    assert not directory.exists()

    res = run_pgvault("backup", f"dir={directory}", f"target.url={source}", *remote, env=env)
    line = error_line(res)
    assert f"bucket '{bucket}' does not exist" in line and "`pgvault push` uploads it" in line
    assert "Backup completed successfully!" in res.stdout  # the backup's own lines stay
    prefix = intact(directory)
    res = run_pgvault("status", f"dir={directory}", f"target.url={source}", *remote, env=env)
    assert res.returncode == 1 and f"✗ the last upload to s3://{bucket}/pg" in res.stdout

    client = s3_server.client()
    client.create_bucket(Bucket=bucket)
    res = run_pgvault("push", f"dir={directory}", f"target.url={source}", *remote, env=env)
    assert res.returncode == 0, res.stderr
    assert "Uploaded 1 set(s)" in res.stdout
    assert remote_objects(client, bucket) == local_files(directory)
    res = run_pgvault("status", f"dir={directory}", f"target.url={source}", *remote, env=env)
    assert f"newest off-site: {prefix}" in res.stdout and "last upload" not in res.stdout
    # Nothing left to do: a second push uploads nothing.
    res = run_pgvault("push", f"dir={directory}", *remote, env=env)
    assert (
        res.returncode == 0
        and "Nothing to upload" in res.stdout
        and "1 already there" in res.stdout
    )
    # Each object carries the sha256 of the bytes sent, the manifest's.
    (bset,) = catalog.scan(directory)
    assert bset.manifest is not None
    for entry in bset.manifest.files.values():
        head = client.head_object(Bucket=bucket, Key=f"pg/{entry.name}")
        assert head["Metadata"]["sha256"] == entry.sha256
    # An upload cut short, then a data object of the right size and other bytes (not
    # ours): the next push sends it again rather than trusting its size.
    data = naming.file_name(prefix, "data")
    client.delete_object(Bucket=bucket, Key=f"pg/{naming.file_name(prefix, 'manifest')}")
    client.put_object(Bucket=bucket, Key=f"pg/{data}", Body=b"x" * local_files(directory)[data])
    res = run_pgvault("push", f"dir={directory}", *remote, env=env)
    assert res.returncode == 0 and "Uploaded 1 set(s)" in res.stdout, res.stderr
    body = client.get_object(Bucket=bucket, Key=f"pg/{data}")["Body"].read()
    assert body == (directory / data).read_bytes()


class CuttingProxy:
    """A TCP proxy to the S3 server that cuts every connection once `limit` bytes went
    upstream, and refuses all after: the server dies in the middle of the upload."""

    def __init__(self, upstream_port: int, limit: int) -> None:
        self.upstream = upstream_port
        self.limit = limit
        self.sent = 0
        self.cut = threading.Event()
        self.lock = threading.Lock()
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            if self.cut.is_set():
                client.close()
                continue
            up = socket.create_connection(("127.0.0.1", self.upstream))
            with self.lock:
                self.sockets += [client, up]
            threading.Thread(target=self._pump, args=(client, up, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(up, client, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, upstream: bool) -> None:
        try:
            while chunk := src.recv(65536):
                if upstream:
                    with self.lock:
                        self.sent += len(chunk)
                        over = self.sent > self.limit
                    if over:
                        self._cut()
                        return
                dst.sendall(chunk)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                close_now(s)

    def _cut(self) -> None:
        self.cut.set()
        with self.lock:
            for s in self.sockets:
                close_now(s)

    def close(self) -> None:
        self._cut()
        self.server.close()


def close_now(s: socket.socket) -> None:
    with contextlib.suppress(OSError):
        s.shutdown(socket.SHUT_RDWR)
    s.close()


@pytest.fixture(scope="module")
def bigger(pg_cluster):
    """~20 MB of data: more than one 16 MB part, so the upload is multipart."""
    name = create_database(pg_cluster, "remotebig")
    run_sql(
        pg_cluster.conn(name),
        "CREATE TABLE ledger (id bigserial PRIMARY KEY, note text);"
        "INSERT INTO ledger (note) SELECT repeat(md5(i::text), 2)"
        " FROM generate_series(1, 300000) i;",
    )
    yield pg_cluster.url(name)
    drop_database(pg_cluster, name)


def test_an_upload_cut_half_way_leaves_no_complete_looking_set(
    s3_server, s3_bucket, bigger, tmp_path
):
    env = pgvault_env(**s3_server.env())
    directory = tmp_path / "backups"
    res = run_pgvault("backup", f"dir={directory}", f"target.url={bigger}", "quiet=true", env=env)
    assert res.returncode == 0, res.stderr
    prefix = intact(directory)
    data = naming.file_name(prefix, "data")
    assert local_files(directory)[data] > 16 * 1024 * 1024
    proxy = CuttingProxy(s3_server.port, limit=10 * 1024 * 1024)
    try:
        cut = s3_args(s3_bucket, f"http://127.0.0.1:{proxy.port}", "remote.timeout=10")
        res = run_pgvault("push", f"dir={directory}", *cut, env=env)
    finally:
        proxy.close()
    assert proxy.cut.is_set()
    line = error_line(res)
    assert f"s3://{s3_bucket}/pg" in line or data in line, line
    assert intact(directory) == prefix  # the local set as it was

    client = s3_server.client()
    objects = remote_objects(client, s3_bucket)
    assert naming.file_name(prefix, "manifest") not in objects
    assert data not in objects
    remote = s3_args(s3_bucket, s3_server.endpoint)
    res = run_pgvault("list", "remote=true", "format=json", *remote, env=env)
    assert res.returncode == 0, res.stderr
    assert all(s["status"] != "complete" for s in json.loads(res.stdout)["sets"])
    res = run_pgvault("status", f"dir={directory}", f"target.url={bigger}", *remote, env=env)
    assert f"✗ the last upload to s3://{s3_bucket}/pg" in res.stdout

    res = run_pgvault("push", f"dir={directory}", *remote, env=env)  # the next push completes it
    assert res.returncode == 0, res.stderr
    assert remote_objects(client, s3_bucket) == local_files(directory)
    res = run_pgvault("list", "remote=true", "check=true", "format=json", *remote, env=env)
    assert res.returncode == 0, res.stdout + res.stderr
    assert [s["status"] for s in json.loads(res.stdout)["sets"]] == ["complete"]


def test_wrong_credentials(tmp_path, local_set):
    directory = copy_of(local_set, tmp_path)
    before = local_files(directory)
    server = MotoServer(tmp_path, authenticate_after=4)
    server.start()
    try:
        # The first requests go unchecked: make a user, its key and a bucket with them.
        iam = boto3.client("iam", endpoint_url=server.endpoint, region_name=REGION,
                           aws_access_key_id=KEY_ID, aws_secret_access_key=SECRET)  # fmt: skip
        iam.create_user(UserName="pgvault")
        policy = {"Version": "2012-10-17",
                  "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}  # fmt: skip
        iam.put_user_policy(UserName="pgvault", PolicyName="all", PolicyDocument=json.dumps(policy))
        key = iam.create_access_key(UserName="pgvault")["AccessKey"]
        good = boto3.client("s3", endpoint_url=server.endpoint, region_name=REGION,
                            aws_access_key_id=key["AccessKeyId"],
                            aws_secret_access_key=key["SecretAccessKey"])  # fmt: skip
        good.create_bucket(Bucket="authed")
        remote = s3_args("authed", server.endpoint)
        env = pgvault_env(**server.env())
        env.update(AWS_ACCESS_KEY_ID=key["AccessKeyId"], AWS_SECRET_ACCESS_KEY="wrong-secret-00")
        res = run_pgvault("push", f"dir={directory}", *remote, env=env)
        assert "refused the secret key" in error_line(res)
        assert "wrong-secret-00" not in res.stdout + res.stderr
        env.update(AWS_ACCESS_KEY_ID="AKIANOBODYKNOWSTHIS0")
        assert "does not know the access key" in error_line(
            run_pgvault("push", f"dir={directory}", *remote, env=env)
        )
        assert local_files(directory) == before
        intact(directory)
        assert good.list_objects_v2(Bucket="authed").get("KeyCount") == 0
        env.update(AWS_ACCESS_KEY_ID=key["AccessKeyId"],
                   AWS_SECRET_ACCESS_KEY=key["SecretAccessKey"])  # fmt: skip
        res = run_pgvault("push", f"dir={directory}", *remote, env=env)
        assert res.returncode == 0, res.stderr  # the same run with the right key works
    finally:
        server.stop()


def test_file_remote(tmp_path, local_set):
    directory = copy_of(local_set, tmp_path)
    prefix = intact(directory)
    target = tmp_path / "nas" / "pgvault"
    url = f"remote.url=file://{target}"
    env = pgvault_env()
    res = run_pgvault("push", f"dir={directory}", url, env=env)
    assert "does not exist" in error_line(res)  # an unmounted share is not created
    target.mkdir(parents=True, mode=0o700)
    # A symlink planted at one of the set's names: replaced, never written through.
    victim = tmp_path / "victim"
    victim.write_text("precious")
    roles = naming.file_name(prefix, "roles")
    (target / roles).symlink_to(victim)
    (target / "notes.txt").write_text("mine")
    # Uploads named long ago of sets the local directory does not hold: one untouched for
    # two days (a push cut short) is deleted; one written just now (another push may be
    # sending it) is kept.
    stale, sending = "backup-2001-02-03-040506-data.sql", "backup-2001-02-04-040506-data.sql"
    for name in (stale, sending):
        (target / name).write_bytes(b"half")
    old = (datetime.now(UTC) - timedelta(days=2)).timestamp()
    os.utime(target / stale, (old, old))
    res = run_pgvault("push", f"dir={directory}", url, env=env)
    assert res.returncode == 0, res.stderr
    assert victim.read_text() == "precious" and not (target / roles).is_symlink()
    assert not (target / stale).exists() and (target / sending).read_bytes() == b"half"
    (target / sending).unlink()
    ours = [p for p in target.iterdir() if p.name not in ("notes.txt", lease.NAME)]
    assert lease.stale(json.loads((target / lease.NAME).read_text()))  # given back
    copied = {p.name: p.stat().st_size for p in ours}
    assert copied == local_files(directory)
    for p in ours:
        assert stat.S_IMODE(p.stat().st_mode) == 0o600
        assert p.read_bytes() == (directory / p.name).read_bytes()
    manifest = (target / naming.file_name(prefix, "manifest")).stat().st_mtime_ns
    assert all(manifest >= p.stat().st_mtime_ns for p in target.iterdir() if "roles" in p.name
               or "schema" in p.name or "data" in p.name)  # fmt: skip
    res = run_pgvault("list", "remote=true", url, env=env)
    assert res.returncode == 0 and f"Backups in file://{target}, newest first:" in res.stdout
    assert prefix in res.stdout and "complete" in res.stdout


NOW = datetime.now(UTC).replace(microsecond=0)


def test_remote_retention_per_source(s3_server, s3_bucket, source, pg_cluster, tmp_path):
    """Two sources; the remote's own policy (remote.retention.days over retention.days)."""
    other = create_database(pg_cluster, "remote_other")
    try:
        directory = tmp_path / "backups"
        made: dict[str, str] = {}
        ages = {"a-1h": timedelta(hours=1), "a-10d": timedelta(days=10),
                "a-20d": timedelta(days=20), "a-40d": timedelta(days=40),
                "b-30d": timedelta(days=30), "b-40d": timedelta(days=40)}  # fmt: skip
        for label, age in ages.items():
            url = source if label.startswith("a") else pg_cluster.url(other)
            cfg = PgvaultConfig(dir=str(directory), target=TargetConfig(name="t", url=url))
            result = take_backup(cfg, Reporter(quiet=True), clock=lambda w=NOW - age: w,
                                 apply_retention=False)  # fmt: skip
            made[label] = result.prefix
    finally:
        drop_database(pg_cluster, other)
    client = s3_server.client()
    fresh = naming.format_prefix(NOW - timedelta(hours=2))
    foreign = {"pg/notes.txt": b"mine", "pg/backup-2001-01-01-000000-data.sql.bak": b"mine",
               # pgvault-shaped but no valid date
               "pg/backup-2020-13-01-000000-manifest.json": b"{}",
               # incomplete uploads: one the local directory still holds, one of today
               "pg/backup-2001-03-04-050607-data.sql": b"half",
               f"pg/{fresh}-data.sql": b"half"}  # fmt: skip
    # An upload named long ago, of a set the local directory no longer holds, but written
    # just now: another push may be sending it from descriptors it opened before a local
    # prune, so it is kept (S3 cannot backdate an object: the old one that is deleted is
    # test_file_remote's, and the rule's unit test).
    sending = "pg/backup-2001-02-03-040506-data.sql"
    foreign[sending] = b"half"
    for key, body in foreign.items():
        client.put_object(Bucket=s3_bucket, Key=key, Body=body)
    (directory / "backup-2001-03-04-050607-data.sql").write_bytes(b"half")
    env = pgvault_env(**s3_server.env())
    remote = s3_args(s3_bucket, s3_server.endpoint, "retention.days=7")
    res = run_pgvault("push", f"dir={directory}", *remote, "remote.retention.days=100",
                      "push.dry_run=true", env=env)  # fmt: skip
    assert "an upload cut short" not in res.stdout, res.stdout
    res = run_pgvault("push", f"dir={directory}", *remote, "remote.retention.days=100", env=env)
    assert res.returncode == 0, res.stderr
    assert "Uploaded 6 set(s)" in res.stdout
    everything = remote_objects(client, s3_bucket)
    assert all(key.removeprefix("pg/") in everything for key in foreign)

    res = run_pgvault("push", f"dir={directory}", *remote, "remote.retention.days=15",
                      "push.dry_run=true", env=env)  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert remote_objects(client, s3_bucket) == everything  # a dry run deletes nothing
    for label in ("a-20d", "a-40d", "b-40d"):
        assert f"delete  {made[label]}" in res.stdout, res.stdout

    res = run_pgvault("push", f"dir={directory}", *remote, "remote.retention.days=15", env=env)
    assert res.returncode == 0, res.stderr
    left = remote_objects(client, s3_bucket)
    prefixes = {p.prefix for n in left if (p := naming.parse_file_name(n))}
    kept = {made[label] for label in ("a-1h", "a-10d", "b-30d")}  # b-30d: its source's newest
    assert prefixes == kept | {"backup-2020-13-01-000000", "backup-2001-03-04-050607", fresh,
                               "backup-2001-02-03-040506"}  # fmt: skip
    for key in foreign:
        assert key.removeprefix("pg/") in left
    # Whole sets: every file of a kept set is still there.
    for label in ("a-1h", "a-10d", "b-30d"):
        names = [n for n in everything if n.startswith(made[label])]
        assert all(n in left for n in names) and len(names) >= 4
    # The local sets are the local policy's business: all still here.
    assert {s.prefix for s in catalog.scan(directory) if s.complete} == set(made.values())
    assert (directory / "backup-2001-03-04-050607-data.sql").exists()
    # A push that would upload a set only to delete it again does not upload it.
    res = run_pgvault("push", f"dir={directory}", *remote, "remote.retention.days=15", env=env)
    assert res.returncode == 0 and "Nothing to upload" in res.stdout, res.stdout
    assert remote_objects(client, s3_bucket) == left


def test_two_directories_pushing_to_one_prefix(s3_server, s3_bucket, pg_cluster, local_set,
                                               tmp_path):  # fmt: skip
    """Another directory's set of the same name is never taken for ours, nor overwritten;
    the other sets still go up, and backup's error says which set failed."""
    mine = copy_of(local_set, tmp_path / "a")
    prefix = intact(mine)
    twin = create_database(pg_cluster, "remote_twin")
    try:
        other = tmp_path / "b" / "backups"
        cfg = PgvaultConfig(dir=str(other), target=TargetConfig(name="b", url=pg_cluster.url(twin)))
        take_backup(cfg, Reporter(quiet=True), clock=lambda: naming.parse_prefix(prefix),
                    apply_retention=False)  # fmt: skip
        env = pgvault_env(**s3_server.env())
        remote = s3_args(s3_bucket, s3_server.endpoint)
        res = run_pgvault("push", f"dir={mine}", *remote, env=env)
        assert res.returncode == 0, res.stderr
        client = s3_server.client()
        theirs = remote_objects(client, s3_bucket)
        assert theirs == local_files(mine)

        res = run_pgvault("backup", f"dir={other}", f"target.url={pg_cluster.url(twin)}",
                          *remote, env=env)  # fmt: skip
    finally:
        drop_database(pg_cluster, twin)
    line = error_line(res)
    new = max(s.prefix for s in catalog.scan(other))
    assert new != prefix and f"{new} was uploaded to s3://{s3_bucket}/pg, but" in line, line
    assert f"remote already holds another set named {prefix}" in line
    assert "its own remote.url prefix" in line
    left = remote_objects(client, s3_bucket)
    assert {n: left[n] for n in theirs} == theirs  # the first directory's set as it was
    for name in theirs:
        got = client.get_object(Bucket=s3_bucket, Key=f"pg/{name}")["Body"].read()
        assert got == (mine / name).read_bytes()
    assert naming.file_name(new, "manifest") in left  # the new set went up
    res = run_pgvault("push", f"dir={mine}", *remote, "push.prune=false", env=env)
    assert res.returncode == 0 and "1 already there" in res.stdout, res.stdout


class StallingProxy(CuttingProxy):
    """Once `limit` bytes went upstream, holds every connection open without forwarding
    and refuses new ones: an upload that hangs until the process is stopped."""

    def __init__(self, upstream_port: int, limit: int) -> None:
        self.release = threading.Event()
        super().__init__(upstream_port, limit)

    def _cut(self) -> None:
        self.cut.set()
        self.release.wait()

    def close(self) -> None:
        self.release.set()
        CuttingProxy._cut(self)
        self.server.close()


def test_a_long_push_lets_backups_run_and_a_stopped_one_is_recorded(
    s3_server, s3_bucket, source, local_set, tmp_path
):
    directory = copy_of(local_set, tmp_path)
    env = pgvault_env(**s3_server.env())
    remote = s3_args(s3_bucket, s3_server.endpoint)
    res = run_pgvault("push", f"dir={directory}", *remote, env=env)
    assert res.returncode == 0, res.stderr
    client = s3_server.client()
    for name in remote_objects(client, s3_bucket):  # gone from the remote: pushed again
        client.delete_object(Bucket=s3_bucket, Key=f"pg/{name}")
    (record,) = runstate.read(directory)["offsite"].values()
    assert record["last_upload"]["status"] == "success"

    proxy = StallingProxy(s3_server.port, limit=8 * 1024)
    try:
        stalled = s3_args(s3_bucket, f"http://127.0.0.1:{proxy.port}", "remote.timeout=5")
        push = subprocess.Popen([sys.executable, "-m", "pgvault", "push", f"dir={directory}",
                                 *stalled], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)  # fmt: skip
        try:
            assert proxy.cut.wait(120), "the push never started uploading"
            # The nightly backup (lock_timeout=0) runs while the push hangs mid-upload;
            # a remote without upload still warns about the unencrypted roles file.
            no_upload = [f"remote.url=s3://{s3_bucket}/pg", "remote.upload=false"]
            res = run_pgvault("backup", f"dir={directory}", f"target.url={source}", *no_upload,
                              env=env)  # fmt: skip
            assert res.returncode == 0, res.stderr
            assert res.stderr.count("password hashes") == 1, res.stderr
            push.send_signal(signal.SIGTERM)  # stopped mid-upload: the failure is recorded
            _, err = push.communicate(timeout=120)
        finally:
            if push.poll() is None:
                push.kill()
                push.wait()
        assert push.returncode != 0 and "Traceback" not in err, err
    finally:
        proxy.close()
    (record,) = runstate.read(directory)["offsite"].values()
    assert record["last_upload"]["status"] == "failure", record
    assert "interrupted" in record["last_upload"]["error"]
    assert naming.file_name(intact_any(directory), "manifest") not in remote_objects(
        client, s3_bucket
    )
    res = run_pgvault("push", f"dir={directory}", *remote, env=env)
    assert res.returncode == 0 and "Uploaded 2 set(s)" in res.stdout, res.stdout + res.stderr
    assert remote_objects(client, s3_bucket) == local_files(directory)


def intact_any(directory: Path) -> str:
    """The oldest complete set of directory, checked against its manifest."""
    bset = [s for s in catalog.scan(directory) if s.complete][-1]
    assert catalog.file_problems(bset, checksums=True) == []
    return bset.prefix


def test_a_file_replaced_before_the_manifest_goes_up(s3_server, s3_bucket, local_set, tmp_path,
                                                     monkeypatch):  # fmt: skip
    """Another uploader puts other bytes of the same size under one of the set's names
    after it went up (push uploads without the local lock): the sha256 the remote holds
    for it is not the manifest's, so the manifest does not go up and the set fails."""
    directory = copy_of(local_set, tmp_path)
    prefix = intact(directory)
    data = naming.file_name(prefix, "data")
    client = s3_server.client()
    opened = remote_module.open_remote

    def racing(cfg):  # type: ignore[no-untyped-def]
        rem = opened(cfg)
        send = rem.send

        def send_then_replace(fd: int, size: int, name: str, sha256: str | None) -> None:
            send(fd, size, name, sha256)
            if name == data:  # the other uploader: same size, other bytes, its own sha256
                client.put_object(Bucket=s3_bucket, Key=f"pg/{name}", Body=b"x" * size,
                                  Metadata={"sha256": "0" * 64})  # fmt: skip

        rem.send = send_then_replace
        return rem

    monkeypatch.setattr(remote_module, "open_remote", racing)
    cfg = PgvaultConfig(dir=str(directory), remote=RemoteConfig(
        url=f"s3://{s3_bucket}/pg", endpoint=s3_server.endpoint, access_key_id=KEY_ID,
        secret_access_key=SECRET))  # fmt: skip
    with pytest.raises(RemoteError) as e:
        offsite.push(cfg, Reporter(quiet=True), directory)
    assert f"holds {data} with other bytes than the manifest's" in e.value.line()
    assert f"{prefix} is not off-site" in e.value.line()
    objects = remote_objects(client, s3_bucket)
    assert data in objects and naming.file_name(prefix, "manifest") not in objects
    assert intact(directory) == prefix
