"""Supabase Storage attachments: the Supabase test cluster's storage.buckets rows name the
buckets, a real S3 server (moto's, over HTTP on a loopback port) stands in for Storage's
S3-compatible endpoint. A round trip of binary objects with odd names and an empty bucket,
a restore into buckets that hold other objects, verify of a good and a damaged part, and
the refusals (plain profile, no keys, endpoint down) that leave no set."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import botocore.exceptions
import pytest
from pyrage import x25519

from pgvault import attachments, catalog, naming
from pgvault.backup import take_backup
from pgvault.catalog import BackupSet
from pgvault.config import PgvaultConfig
from pgvault.connection import Conn, connect
from pgvault.errors import IntegrityError, Refused
from pgvault.listener import Silent
from tests.conftest import one_line_error, pgvault_env, run_pgvault
from tests.s3server import REGION, MotoServer, free_port
from tests.supabase import APP_TEMPLATE, SUPERUSER, new_database, supabase_cluster, url

# Storage's S3 keys as `supabase status` shows them (moto takes any).
STORAGE_KEY_ID = "625729a08b95bf1b7ff351a663f3a23c"
STORAGE_SECRET = "850181e4652dd023b7a98c58ae0d2d34bd487ee0cc3254aed6eda37307425907"


def blob(n: int, seed: str) -> bytes:
    """n bytes that are not text, different for each seed."""
    out, block = bytearray(), hashlib.sha256(seed.encode()).digest()
    while len(out) < n:
        block = hashlib.sha256(block).digest()
        out += block
    return bytes(out[:n])


# What Storage holds at backup time: (bucket, key) -> (bytes, content type or None).
# The sample data's bucket `attachments` is there; avatars and empty are added.
OBJECTS: dict[tuple[str, str], tuple[bytes, str | None]] = {
    ("attachments", "notes/1/file.pdf"): (blob(200_000, "pdf"), "application/pdf"),
    ("attachments", "notes/2/report final (v2).pdf"): (blob(1234, "v2"), "application/pdf"),
    # Over restore's in-memory spool, and over one chunk of the stream.
    ("attachments", "big/scan.tiff"): (blob(3 << 20, "tiff"), "image/tiff"),
    ("avatars", "ünïcödé/été 😀.png"): (blob(777, "png"), "image/png"),
    ("avatars", "100%+sure & done?.bin"): (blob(513, "pct"), None),
    ("avatars", "a/b/c/deep.bin"): (b"\x00" * 512, None),
    ("avatars", "k" * 180 + "/" + "long-ключ-" * 20 + ".bin"): (blob(99, "long"), None),
    ("avatars", "empty-object"): (b"", "text/plain"),
}
PCT = ("avatars", "100%+sure & done?.bin")
BUCKETS = ["attachments", "avatars", "empty"]  # as storage.buckets orders them


@pytest.fixture(scope="module")
def sb(server_programs) -> Iterator[Any]:
    with supabase_cluster(server_programs) as c:
        yield c


@pytest.fixture(scope="module")
def storage(tmp_path_factory) -> Iterator[MotoServer]:
    """A Storage endpoint of this module's own: its buckets have fixed names."""
    server = MotoServer(tmp_path_factory.mktemp("storage"))
    server.start()
    yield server
    server.stop()


def admin(conn: Conn) -> Conn:
    return Conn(re.sub(r"user=\S+", f"user={SUPERUSER}", conn.conninfo))


def stored(server: MotoServer, bucket: str) -> dict[str, tuple[bytes, str | None]]:
    """Every object of bucket: key -> (bytes, content type)."""
    s3 = server.client()
    out = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for item in page.get("Contents", []):
            got = s3.get_object(Bucket=bucket, Key=item["Key"])
            out[item["Key"]] = (got["Body"].read(), got.get("ContentType"))
    return out


def fill(server: MotoServer) -> None:
    s3 = server.client()
    for bucket in BUCKETS:
        s3.create_bucket(Bucket=bucket)
    for (bucket, key), (data, ctype) in OBJECTS.items():
        s3.put_object(
            Bucket=bucket, Key=key, Body=data, **({"ContentType": ctype} if ctype else {})
        )


def env(**extra: str) -> dict[str, str]:
    return pgvault_env(
        PGVAULT_STORAGE_ACCESS_KEY_ID=STORAGE_KEY_ID,
        PGVAULT_STORAGE_SECRET_ACCESS_KEY=STORAGE_SECRET,
        AWS_CONFIG_FILE=os.devnull,
        AWS_SHARED_CREDENTIALS_FILE=os.devnull,
        **extra,
    )


def storage_args(server: MotoServer | str) -> list[str]:
    endpoint = server if isinstance(server, str) else server.endpoint
    # moto wants a location constraint outside us-east-1; Supabase ignores the region.
    return [f"target.storage.endpoint={endpoint}", f"target.storage.region={REGION}"]


def config(server: MotoServer) -> PgvaultConfig:
    cfg = PgvaultConfig()
    cfg.target.storage.endpoint = server.endpoint
    cfg.target.storage.region = REGION
    cfg.target.storage.access_key_id = STORAGE_KEY_ID
    cfg.target.storage.secret_access_key = STORAGE_SECRET
    return cfg


@dataclass(frozen=True)
class Source:
    conn: Conn
    directory: Path
    manifest: dict[str, Any]
    stdout: str
    stderr: str

    @property
    def part(self) -> Path:
        return self.directory / self.manifest["files"][naming.ATTACHMENTS]["name"]

    def bset(self, directory: Path | None = None) -> BackupSet:
        return catalog.find_set(directory or self.directory, self.manifest["prefix"])


@pytest.fixture(scope="module")
def source(sb, storage, tmp_path_factory) -> Source:
    """A Supabase database with three buckets (one empty) and the set pgvault made of it."""
    conn = new_database(sb, APP_TEMPLATE)
    with connect(admin(conn), autocommit=True) as pg:
        pg.execute(
            "INSERT INTO storage.buckets (id, name, public) VALUES"
            " ('avatars', 'avatars', false), ('empty', 'empty', false)"
        )
    fill(storage)
    storage.client().create_bucket(Bucket="not-in-the-set")
    storage.client().put_object(Bucket="not-in-the-set", Key="keep.txt", Body=b"mine")
    directory = tmp_path_factory.mktemp("att") / "backups"
    res = run_pgvault(
        "backup", f"dir={directory}", f"target.url={url(conn)}", "backup.attachments=true",
        *storage_args(storage), env=env(),
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    (path,) = directory.glob("*-manifest.json")
    return Source(conn, directory, json.loads(path.read_text()), res.stdout, res.stderr)


def test_the_set_holds_every_object_of_every_bucket(source):
    listed = source.manifest["attachments"]
    assert listed["buckets"] == BUCKETS
    assert listed["endpoint"].startswith("http://127.0.0.1:")
    got = {(o["bucket"], o["key"]): o for o in listed["objects"]}
    assert got.keys() == OBJECTS.keys()
    for name, (data, ctype) in OBJECTS.items():
        assert got[name]["size"] == len(data)
        assert got[name]["sha256"] == hashlib.sha256(data).hexdigest()
        assert got[name]["content_type"] == (ctype or "binary/octet-stream")  # moto's default
    entry = source.manifest["files"][naming.ATTACHMENTS]
    assert entry["name"] == f"{source.manifest['prefix']}-attachments.tar"
    assert source.part.stat().st_size == entry["size"]
    assert hashlib.sha256(source.part.read_bytes()).hexdigest() == entry["sha256"]
    assert source.part.stat().st_mode & 0o777 == 0o600
    # Storage's secret is nowhere in what the backup printed or wrote beside the part.
    for text in (source.stdout, source.stderr, json.dumps(source.manifest)):
        assert STORAGE_SECRET not in text


def test_the_part_is_the_tar_that_tarfile_writes_in_stream_mode(source):
    data = source.part.read_bytes()
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        members = tar.getmembers()
        bodies = [tar.extractfile(m).read() for m in members]  # type: ignore[union-attr]
    listed = source.manifest["attachments"]["objects"]
    assert [m.name for m in members] == [f"{o['bucket']}/{o['key']}" for o in listed]
    assert bodies == [OBJECTS[(o["bucket"], o["key"])][0] for o in listed]
    # Byte for byte what tarfile's own "w|" writer makes of the same members.
    again = io.BytesIO()
    with tarfile.open(fileobj=again, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for m, body in zip(members, bodies, strict=True):
            info = tarfile.TarInfo(m.name)
            info.size, info.mtime, info.mode = m.size, m.mtime, m.mode
            tar.addfile(info, io.BytesIO(body))
    assert again.getvalue() == data


def damaged_copy(source, where: Path, at: int | None, flip: int) -> tuple[Path, bytearray]:
    """A copy of the source set in where whose attachments part has one byte flipped:
    at bytes into the PCT object's body, or the part's first byte when at is None.
    Returns the part's path and its new bytes."""
    shutil.copytree(source.directory, where)
    part = where / source.part.name
    data = bytearray(part.read_bytes())
    data[0 if at is None else data.index(OBJECTS[PCT][0]) + at] ^= flip
    part.write_bytes(bytes(data))
    return part, data


def test_check_part_finds_a_good_part_good_and_a_damaged_one_damaged(source, tmp_path):
    assert attachments.check_part(source.bset(), None) == []
    copy = tmp_path / "copy"
    part, data = damaged_copy(source, copy, 100, 0xFF)
    assert attachments.check_part(source.bset(copy), None) == [
        f"attachment 'avatars/{PCT[1]}' does not match its sha256 in the manifest"
    ]
    part.write_bytes(bytes(data[: len(data) // 2]))
    problem, rest = attachments.check_part(source.bset(copy), None)
    assert problem.startswith("the attachments part is not a readable tar")
    assert rest == f"{len(OBJECTS) - 1} listed objects after the damage could not be checked"


def mess_up(server: MotoServer, *, lose_bucket: bool = True) -> None:
    """Change Storage after the backup: an object rewritten, one deleted, strays added,
    the empty bucket gone (lose_bucket)."""
    s3 = server.client()
    s3.put_object(Bucket="attachments", Key="notes/1/file.pdf", Body=b"rewritten")
    s3.put_object(Bucket="avatars", Key=PCT[1], Body=b"rewritten")
    s3.delete_object(Bucket="avatars", Key="a/b/c/deep.bin")
    s3.put_object(Bucket="attachments", Key="stray.txt", Body=b"added later")
    s3.put_object(Bucket="avatars", Key="ünïcödé/new.png", Body=b"added later")
    if lose_bucket:
        with contextlib.suppress(botocore.exceptions.ClientError):  # gone already
            s3.delete_bucket(Bucket="empty")
    else:
        with contextlib.suppress(botocore.exceptions.ClientError):  # there already
            s3.create_bucket(Bucket="empty")


def assert_holds_the_set(server: MotoServer) -> None:
    for bucket in BUCKETS:
        want = {k: (d, c or "binary/octet-stream") for (b, k), (d, c) in OBJECTS.items()
                if b == bucket}  # fmt: skip
        assert stored(server, bucket) == want, bucket
    assert stored(server, "not-in-the-set") == {"keep.txt": (b"mine", "binary/octet-stream")}


def test_a_damaged_part_changes_nothing_it_would_delete(source, storage, tmp_path):
    mess_up(storage)
    copy = tmp_path / "copy"
    damaged_copy(source, copy, 10, 1)
    before = {b: stored(storage, b) for b in ("attachments", "avatars")}
    with pytest.raises(IntegrityError, match="does not match its sha256"):
        attachments.restore_part(config(storage), source.bset(copy), Silent(), None)
    after = {b: stored(storage, b) for b in ("attachments", "avatars")}
    # The objects before the damaged one are back; the damaged one was not put back, and
    # nothing the set lacks was deleted.
    assert (
        after["attachments"]["notes/1/file.pdf"][0]
        == OBJECTS[("attachments", "notes/1/file.pdf")][0]
    )
    assert after["avatars"][PCT[1]][0] == b"rewritten"
    assert after["attachments"]["stray.txt"] == before["attachments"]["stray.txt"]
    assert set(before["avatars"]) <= set(after["avatars"])
    assert stored(storage, "empty") == {}  # created again first


def restore(source: Source, directory: Path, *args: str, **kw: Any) -> Any:
    return run_pgvault(
        "restore", f"dir={directory}", f"prefix={source.manifest['prefix']}",
        f"target.url={url(source.conn)}", "yes=true", *args, **kw,
    )  # fmt: skip


def test_a_restore_into_another_database_leaves_storage_alone(source, sb, storage):
    mess_up(storage)
    before = {b: stored(storage, b) for b in ("attachments", "avatars")}
    scratch = new_database(sb, APP_TEMPLATE)
    res = restore(
        source, source.directory, f"restore.target={url(scratch)}",
        "restore.safety_backup=false", *storage_args(storage), env=env(),
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert attachments.NOT_PUT_BACK in res.stdout
    assert "Supabase Storage at" not in res.stdout
    assert {b: stored(storage, b) for b in ("attachments", "avatars")} == before


def test_restore_takes_storage_into_its_safety_backup_then_leaves_each_bucket_holding_the_set(
    source, storage, tmp_path
):
    # Again (the tests before put some back). The live database lists bucket `empty`: the
    # safety backup needs it there.
    mess_up(storage, lose_bucket=False)
    directory = tmp_path / "backups"
    shutil.copytree(source.directory, directory)
    res = restore(source, directory, *storage_args(storage), env=env())
    assert res.returncode == 0, res.stderr
    # Said before it asks: the buckets, the count, and the deletions.
    assert (
        f"Supabase Storage at {storage.endpoint} is changed too: buckets attachments, "
        f"avatars, empty get the set's {len(OBJECTS)} objects" in res.stdout
    )
    assert "Objects not in the set are DELETED from those buckets" in res.stdout
    assert f"Attachments: {len(OBJECTS)} objects" in res.stdout
    assert "; 2 objects the set does not hold removed" in res.stdout
    assert_holds_the_set(storage)
    # The safety backup holds Storage as it was: the objects overwritten and deleted.
    (safety,) = [p for p in directory.glob("*-manifest.json")
                 if json.loads(p.read_text())["kind"] == "safety"]  # fmt: skip
    bset = catalog.find_set(directory, json.loads(safety.read_text())["prefix"])
    assert bset.manifest is not None and bset.manifest.attachments is not None
    assert attachments.check_part(bset, None) == []
    had = {(o.bucket, o.key): o.sha256 for o in bset.manifest.attachments.objects}
    for name in (("attachments", "notes/1/file.pdf"), PCT, ("attachments", "stray.txt")):
        want = b"added later" if name[1] == "stray.txt" else b"rewritten"
        assert had[name] == hashlib.sha256(want).hexdigest()


def test_a_failed_storage_copy_in_the_safety_backup_changes_nothing(source, storage):
    mess_up(storage, lose_bucket=False)
    before = {b: stored(storage, b) for b in ("attachments", "avatars")}
    with connect(admin(source.conn), autocommit=True) as pg:
        pg.execute("INSERT INTO storage.buckets (id, name) VALUES ('ghost', 'ghost')")
        pg.execute("CREATE TABLE public.after_the_backup (id int)")
    try:
        res = restore(source, source.directory, *storage_args(storage), env=env())
        line = one_line_error(res)
        assert "the safety backup of " in line and "failed, nothing was restored" in line
        assert "bucket ghost is in storage.buckets but not at" in line
        with connect(source.conn, autocommit=True) as pg:
            assert pg.execute("SELECT to_regclass('public.after_the_backup')").fetchone() != (None,)
        assert {b: stored(storage, b) for b in ("attachments", "avatars")} == before
    finally:
        with connect(admin(source.conn), autocommit=True) as pg:
            pg.execute("DELETE FROM storage.buckets WHERE id = 'ghost'")
            pg.execute("DROP TABLE IF EXISTS public.after_the_backup")
        # Storage as the set has it again, for the backups of the tests after this one.
        attachments.restore_part(config(storage), source.bset(), Silent(), None)


def safety_set(directory: Path) -> BackupSet:
    (path,) = [p for p in directory.glob("*-manifest.json")
               if json.loads(p.read_text())["kind"] == "safety"]  # fmt: skip
    return catalog.find_set(directory, json.loads(path.read_text())["prefix"])


def test_the_safety_backup_of_another_database_copies_the_buckets_the_restore_rewrites(
    source, sb, storage, tmp_path
):
    """restore.target=another database, restore.attachments=true: that database lists
    only the sample data's bucket, the restore still rewrites all of the set's, so its
    safety backup copies those."""
    mess_up(storage)  # strays in attachments and avatars; bucket `empty` gone
    scratch = new_database(sb, APP_TEMPLATE)
    with connect(scratch, autocommit=True) as pg:
        assert pg.execute("SELECT array_agg(id) FROM storage.buckets").fetchone() == (
            ["attachments"],
        )
    directory = tmp_path / "backups"
    shutil.copytree(source.directory, directory)
    res = restore(
        source, directory, f"restore.target={url(scratch)}", "restore.attachments=true",
        *storage_args(storage), env=env(),
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert "The safety backup copies the objects in those buckets first" in res.stdout
    assert_holds_the_set(storage)  # the strays are gone
    bset = safety_set(directory)
    assert bset.manifest is not None and bset.manifest.attachments is not None
    assert bset.manifest.attachments.buckets == BUCKETS  # `empty` was missing: empty
    assert attachments.check_part(bset, None) == []
    had = {(o.bucket, o.key): o.sha256 for o in bset.manifest.attachments.objects}
    for name in (("attachments", "stray.txt"), ("avatars", "ünïcödé/new.png")):
        assert had[name] == hashlib.sha256(b"added later").hexdigest()


def test_a_damaged_part_under_force_fails_in_one_line_that_names_the_state(
    source, storage, tmp_path
):
    directory = tmp_path / "backups"
    damaged_copy(source, directory, None, 0x01)  # the first member's header: unreadable tar
    try:
        res = restore(source, directory, "force=true", *storage_args(storage), env=env())
        assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr
        warning, line = res.stderr.strip().splitlines()  # force=true's warning, the error
        assert warning.startswith("pgvault: warning: attachments.tar does not match")
        assert line.startswith("pgvault: error: ")
        safety = safety_set(directory).prefix
        assert f"was restored from {source.manifest['prefix']}" in line
        assert "Storage may be only partly restored" in line
        assert "is not a readable tar" in line
        assert f"the safety backup {safety} in {directory} holds Storage's objects" in line
        assert "run the restore again with another set to finish it" in line
    finally:
        attachments.restore_part(config(storage), source.bset(), Silent(), None)


def test_a_restore_refuses_when_the_temp_dir_cannot_stage_the_largest_object(
    source, storage, monkeypatch
):
    largest = max(len(data) for data, _ in OBJECTS.values())
    monkeypatch.setattr(attachments.space, "free_bytes", lambda _: largest - 1)
    with pytest.raises(Refused, match=r"not enough room in .* to stage the largest attachment"):
        attachments.check_restore(config(storage), source.bset())
    monkeypatch.setattr(attachments.space, "free_bytes", lambda _: largest)
    attachments.check_restore(config(storage), source.bset())


def verify(directory: Path, prefix: str, tmp: Path) -> subprocess.CompletedProcess[str]:
    return run_pgvault(
        "verify", f"dir={directory}", f"prefix={prefix}", env=env(TMPDIR=str(tmp)), cwd=tmp
    )


def test_verify_passes_a_good_part_and_fails_a_rewritten_object(source, tmp, tmp_path):
    prefix = source.manifest["prefix"]
    good = tmp_path / "good"
    shutil.copytree(source.directory, good)
    res = verify(good, prefix, tmp)
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"{prefix} verified" in res.stdout
    # An object's bytes rewritten, and the file's checksum in the manifest fixed to match:
    # only the part's own list can tell.
    bad = tmp_path / "bad"
    _, data = damaged_copy(source, bad, 7, 0x01)
    (path,) = bad.glob("*-manifest.json")
    m = json.loads(path.read_text())
    m["files"][naming.ATTACHMENTS]["sha256"] = hashlib.sha256(data).hexdigest()
    path.write_text(json.dumps(m))
    res = verify(bad, prefix, tmp)
    assert res.returncode != 0
    assert f"attachment 'avatars/{PCT[1]}' does not match its sha256" in res.stdout + res.stderr


def test_an_encrypted_part_reads_back_with_the_key(source, storage, tmp_path):
    key = x25519.Identity.generate()
    identity = tmp_path / "key.txt"
    identity.write_text(f"{key}\n")
    identity.chmod(0o600)
    directory = tmp_path / "sealed"
    res = run_pgvault(
        "backup", f"dir={directory}", f"target.url={url(source.conn)}", "backup.attachments=true",
        f"encryption.recipients=[{key.to_public()}]", *storage_args(storage), env=env(),
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    (path,) = directory.glob("*-manifest.json")
    bset = catalog.find_set(directory, json.loads(path.read_text())["prefix"])
    part = bset.files[naming.ATTACHMENTS]
    assert part.name.endswith("-attachments.tar.age")
    assert OBJECTS[PCT][0] not in part.read_bytes()
    assert attachments.check_part(bset, str(identity)) == []
    data = bytearray(part.read_bytes())
    data[len(data) // 2] ^= 0x01
    part.write_bytes(bytes(data))
    problem, rest = attachments.check_part(bset, str(identity))
    assert problem.startswith("the attachments part is damaged: ")
    assert rest.endswith("listed objects after the damage could not be checked")


def test_backup_refuses_attachments_without_supabase_or_keys(source, storage, tmp_path):
    base = ["backup", f"dir={tmp_path}", f"target.url={url(source.conn)}",
            "backup.attachments=true", *storage_args(storage)]  # fmt: skip
    res = run_pgvault(*base, "target.profile=plain", env=env())
    assert res.returncode == 2
    assert "profile is plain" in one_line_error(res)
    no_keys = {k: v for k, v in env().items() if not k.startswith("PGVAULT_STORAGE")}
    res = run_pgvault(*base, env=no_keys)
    assert res.returncode == 2
    line = one_line_error(res)
    assert "target.storage.access_key_id" in line and attachments.KEY_ID_ENV in line
    down = f"http://127.0.0.1:{free_port()}"
    res = run_pgvault(*base[:4], *storage_args(down), env=env())
    line = one_line_error(res)
    assert "reaching Supabase Storage: cannot reach http://127.0.0.1:" in line
    assert "EndpointConnectionError" in line
    assert list(tmp_path.glob("backup-*")) == []  # no set, not even a partial file


def test_a_bucket_storage_lacks_fails_the_backup_after_the_dump_and_leaves_no_set(
    source, storage, tmp_path
):
    with connect(admin(source.conn), autocommit=True) as pg:
        pg.execute("INSERT INTO storage.buckets (id, name) VALUES ('ghost', 'ghost')")
    try:
        res = run_pgvault(
            "backup", f"dir={tmp_path}", f"target.url={url(source.conn)}",
            "backup.attachments=true", *storage_args(storage), env=env(),
        )  # fmt: skip
    finally:
        with connect(admin(source.conn), autocommit=True) as pg:
            pg.execute("DELETE FROM storage.buckets WHERE id = 'ghost'")
    line = one_line_error(res)
    assert "bucket ghost is in storage.buckets but not at http://127.0.0.1:" in line
    assert list(tmp_path.glob("backup-*")) == []


def test_a_restore_without_storage_keys_changes_nothing(source, storage):
    with connect(source.conn, autocommit=True) as pg:
        pg.execute("CREATE TABLE public.after_the_backup (id int)")
    res = run_pgvault(
        "restore", f"dir={source.directory}", f"prefix={source.manifest['prefix']}",
        f"target.url={url(source.conn)}", "yes=true", "restore.safety_backup=false",
        *storage_args(storage),
        env={k: v for k, v in env().items() if not k.startswith("PGVAULT_STORAGE")},
    )  # fmt: skip
    try:
        assert res.returncode == 2
        assert "restore.attachments=false" in one_line_error(res)
        with connect(source.conn, autocommit=True) as pg:
            assert pg.execute("SELECT to_regclass('public.after_the_backup')").fetchone() != (None,)
    finally:
        with connect(source.conn, autocommit=True) as pg:
            pg.execute("DROP TABLE IF EXISTS public.after_the_backup")


def test_a_storage_too_big_for_one_manifest_is_refused_before_any_object_is_copied(
    source, storage, tmp_path, monkeypatch
):
    monkeypatch.setattr(attachments, "MAX_OBJECTS", 3)
    cfg = config(storage)
    cfg.dir, cfg.target.name, cfg.target.url = str(tmp_path), "sb", url(source.conn)
    cfg.backup.attachments = True
    with pytest.raises(Refused, match=r"holds more than 3 objects in the buckets .*at most 3 "):
        take_backup(cfg, Silent(), apply_retention=False)
    assert list(tmp_path.glob("backup-*")) == []  # no set, not even a partial file


HUGE = 96 << 20


def test_restoring_a_big_object_keeps_memory_flat(source, storage, tmp_path):
    """The issue's bound: at most 150 MB RSS whatever an object's size."""
    with connect(admin(source.conn), autocommit=True) as pg:
        pg.execute("INSERT INTO storage.buckets (id, name) VALUES ('huge', 'huge')")
    s3 = storage.client()
    s3.create_bucket(Bucket="huge")
    s3.put_object(Bucket="huge", Key="video.bin", Body=os.urandom(HUGE))
    try:
        directory = tmp_path / "backups"
        res = run_pgvault(
            "backup", f"dir={directory}", f"target.url={url(source.conn)}",
            "backup.attachments=true", *storage_args(storage), env=env(),
        )  # fmt: skip
        assert res.returncode == 0, res.stderr
        s3.put_object(Bucket="huge", Key="video.bin", Body=b"rewritten")
        (path,) = directory.glob("*-manifest.json")
        # The real command line, its own peak RSS read as it exits: VmHWM, not ru_maxrss,
        # which keeps the forking pytest's size across exec.
        peak = (
            "import runpy, sys\n"
            "sys.argv[0] = 'pgvault'\n"
            "try:\n    runpy.run_module('pgvault', run_name='__main__')\n"
            "finally:\n"
            "    print(*[x for x in open('/proc/self/status') if x.startswith('VmHWM')],"
            " file=sys.stderr)"
        )
        res = subprocess.run(
            [sys.executable, "-c", peak, "restore", f"dir={directory}",
             f"prefix={json.loads(path.read_text())['prefix']}", f"target.url={url(source.conn)}",
             "yes=true", "restore.safety_backup=false", *storage_args(storage)],
            env=env(), capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert res.returncode == 0, res.stderr
        kib = int(res.stderr.rsplit("VmHWM:", 1)[1].split()[0])
        assert kib < 150 * 1024, f"peak RSS {kib // 1024} MB"
        assert s3.head_object(Bucket="huge", Key="video.bin")["ContentLength"] == HUGE
    finally:
        with connect(admin(source.conn), autocommit=True) as pg:
            pg.execute("DELETE FROM storage.buckets WHERE id = 'huge'")
        s3.delete_object(Bucket="huge", Key="video.bin")
