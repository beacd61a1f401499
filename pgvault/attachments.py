"""Supabase Storage's objects as one more part of a set (backup.attachments=true).

Atomic CRM keeps notes' attachments and avatars in Supabase Storage, outside the database:
a restore without them leaves broken links. The backup copies every object of every bucket
in the database's storage.buckets rows through Storage's S3-compatible endpoint
(target.storage) into a tar (pgvault.storage_tar), one member `BUCKET/KEY` per object, in
the manifest's order; the manifest lists each object with its size, sha256 and content
type. Restore puts them back so that each of those buckets holds exactly the set's
objects; verify reads the part against that list.

No object is ever held whole in memory: bodies stream from the endpoint into the part, and
from the part into a 0600 file in a private directory, checked before it is uploaded (in
parts of bounded number and size) over the bucket's copy.
boto3 is imported (by pgvault.s3) only when attachments are used.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pgvault import manifest, pipeline, s3, space, storage_tar
from pgvault.errors import ConfigError, Refused
from pgvault.storage_tar import check_part as check_part  # verify's entry point

if TYPE_CHECKING:
    import psycopg

    from pgvault.catalog import BackupSet
    from pgvault.config import PgvaultConfig
    from pgvault.listener import Listener

KEY_ID_ENV = "PGVAULT_STORAGE_ACCESS_KEY_ID"
SECRET_ENV = "PGVAULT_STORAGE_SECRET_ACCESS_KEY"
_KEYS_HINT = (
    "give target.storage.access_key_id and target.storage.secret_access_key, or set "
    f"{KEY_ID_ENV} and {SECRET_ENV}; `supabase status` shows Storage's S3 keys"
)
NOT_PUT_BACK = (
    "Storage objects not put back: restore.target is another database; "
    "restore.attachments=true to put them back"
)
# The manifest lists every object, and a manifest over manifest.MAX_BYTES can never be
# read back: a set lists at most MAX_OBJECTS objects (~250 bytes of manifest each with
# short keys), and at most half of MAX_BYTES by estimate (keys may be 1 KiB, escaped), so
# the tables and the rest always fit.
MAX_OBJECTS = manifest.MAX_BYTES // 1024
_MAX_LIST_BYTES = manifest.MAX_BYTES // 2
_ENTRY_BYTES = 256  # an entry's indented JSON besides its bucket and key
_DELETE_BATCH = 1000  # DeleteObjects' limit on S3
_PART = 8 << 20  # multipart part size on restore; the smallest S3 part is 5 MiB


def _endpoint(cfg: PgvaultConfig) -> s3.Endpoint:
    st = cfg.target.storage
    key_id = st.access_key_id or os.environ.get(KEY_ID_ENV)
    secret = st.secret_access_key or os.environ.get(SECRET_ENV)
    if not key_id or not secret:
        raise ConfigError(f"no S3 keys for Supabase Storage at {st.endpoint}", _KEYS_HINT)
    return s3.Endpoint(
        endpoint=st.endpoint, region=st.region, access_key_id=key_id, secret_access_key=secret
    )


@contextlib.contextmanager
def _errors(what: str, where: s3.Endpoint, bucket: str = "") -> Iterator[None]:
    """s3.errors, with hints that name Storage's keys rather than AWS's variables."""
    import boto3.exceptions

    try:
        with s3.errors(what, where, bucket):
            try:
                yield
            except boto3.exceptions.S3UploadFailedError as e:
                raise s3.RemoteError(f"{what}: {e}", "") from None
    except s3.RemoteError as e:
        if "AWS_" in e.hint:
            raise s3.RemoteError(e.what, _KEYS_HINT) from None
        raise


def check(cfg: PgvaultConfig, profile: str) -> None:
    """Refuse backup.attachments=true unless the profile is supabase and Storage answers
    with the keys given. Called before anything is written; does nothing when attachments
    are off."""
    if not cfg.backup.attachments:
        return
    if profile != "supabase":
        raise ConfigError(
            f"backup.attachments=true copies Supabase Storage's buckets, but the database's "
            f"profile is {profile}",
            "back up a Supabase database (target.profile=supabase or auto), "
            "or set backup.attachments=false",
        )
    _reach(_endpoint(cfg))  # once here, not after a dump of many minutes


def _reach(where: s3.Endpoint) -> None:
    with _errors("reaching Supabase Storage", where):
        s3.client(where).list_buckets()


def put_back(cfg: PgvaultConfig, bset: BackupSet) -> bool:
    """Whether restoring bset puts its Storage objects back into target.storage. Storage
    belongs to the configured target: restore.attachments unset (None) puts them back only
    when the restore goes into that target itself, not into restore.target (a scratch copy
    must not rewrite the live buckets); true always, false never."""
    if bset.manifest is None or bset.manifest.attachments is None:
        return False
    wanted = cfg.restore.attachments
    return cfg.restore.target is None if wanted is None else bool(wanted)


def skipped(cfg: PgvaultConfig, bset: BackupSet) -> str | None:
    """The note to show when bset has Storage objects that the rule above leaves out only
    because the restore goes elsewhere."""
    has = bset.manifest is not None and bset.manifest.attachments is not None
    if has and cfg.restore.attachments is None and not put_back(cfg, bset):
        return NOT_PUT_BACK
    return None


def check_restore(cfg: PgvaultConfig, bset: BackupSet) -> None:
    """Before a restore changes anything: when it is to put bset's attachments back, the
    keys are given, Storage answers, and the temporary directory has room to stage the
    largest object (a restore must not fail on them after it replaced the database)."""
    if not put_back(cfg, bset):
        return
    try:
        where = _endpoint(cfg)
    except ConfigError as e:
        raise ConfigError(e.what, f"{e.hint}; or pass restore.attachments=false") from None
    assert bset.manifest is not None and bset.manifest.attachments is not None
    largest = max((o.size for o in bset.manifest.attachments.objects), default=0)
    staging = tempfile.gettempdir()  # where restore_part's private directory goes
    if largest and space.free_bytes(Path(staging)) < largest:
        raise Refused(
            f"not enough room in {staging} to stage the largest attachment "
            f"({largest / (1 << 20):.2f} MB)",
            "set TMPDIR to a disk with room",
        )
    _reach(where)


def _keys(client: Any, where: s3.Endpoint, bucket: str, missing_ok: bool = False) -> Iterator[str]:
    """Every key in bucket, in the endpoint's order, one page at a time; none when
    missing_ok and the endpoint has no such bucket."""
    import botocore.exceptions

    token: str | None = None
    while True:
        more = {"ContinuationToken": token} if token else {}
        with _errors(f"listing bucket {bucket}", where, bucket):
            try:
                page = client.list_objects_v2(Bucket=bucket, **more)
            except botocore.exceptions.ClientError as e:
                if e.response.get("Error", {}).get("Code") != "NoSuchBucket":
                    raise
                if missing_ok:
                    return
                raise s3.RemoteError(
                    f"bucket {bucket} is in storage.buckets but not at {where.shown}",
                    "point target.storage.endpoint at this database's Supabase Storage",
                ) from None
        for item in page.get("Contents", []):
            yield str(item["Key"])
        if not page.get("IsTruncated"):
            return
        token = page["NextContinuationToken"]


def _listing(
    client: Any, where: s3.Endpoint, buckets: list[str], optional: set[str]
) -> list[tuple[str, str]]:
    """Every (bucket, key) to copy, listed before any is copied: a Storage whose list
    could not fit in a readable manifest is refused before gigabytes are read. A bucket
    in optional that the endpoint lacks is empty."""
    found: list[tuple[str, str]] = []
    estimate = 0
    for bucket in buckets:
        for key in _keys(client, where, bucket, missing_ok=bucket in optional):
            found.append((bucket, key))
            estimate += _ENTRY_BYTES + len(json.dumps(bucket)) + len(json.dumps(key))
            if len(found) > MAX_OBJECTS or estimate > _MAX_LIST_BYTES:
                raise Refused(
                    f"Supabase Storage at {where.shown} holds more than {len(found) - 1} "
                    f"objects in the buckets {', '.join(buckets)}, more than one set's "
                    f"manifest can list (at most {MAX_OBJECTS} objects, "
                    f"{_MAX_LIST_BYTES >> 20} MB of it); no set was written",
                    "copy the buckets with another tool and back up with backup.attachments=false",
                )
    return found


def write_part(
    cfg: PgvaultConfig,
    pg: psycopg.Connection[Any],
    dest: Path,
    recipients: Sequence[str],
    also: Sequence[str] = (),
) -> tuple[pipeline.FileStats, manifest.Attachments]:
    """Copy every object of every bucket in pg's storage.buckets rows, and of the buckets
    named in also, into the attachments part dest, encrypted for recipients if any. pg is
    the backup's connection; the rows are read right after the dump (Storage's objects are
    outside the snapshot anyway, and a bucket made meanwhile is better copied than
    missed). A bucket of also that the endpoint lacks is empty (a restore's safety backup
    names the restored set's buckets, which the restore creates). The bytes are exactly
    what tarfile writes in stream mode ("w|", PAX): see pgvault.storage_tar.
    """
    where = _endpoint(cfg)
    client = s3.client(where)
    rows = _bucket_ids(pg)
    # Code point order, as COLLATE "C" orders the rows.
    buckets = sorted(set(rows).union(also))
    listed = _listing(client, where, buckets, set(also) - set(rows))
    objects: list[manifest.StorageObject] = []

    def chunks() -> Iterator[bytes]:
        offset = 0
        for bucket, key in listed:
            got = _get(client, where, bucket, key)
            if got is None:
                continue  # deleted since it was listed: not part of Storage any more
            with contextlib.closing(got.body):
                header = storage_tar.header(f"{bucket}/{key}", got.size, got.mtime)
                yield header
                digest, done = hashlib.sha256(), 0
                while chunk := _read(got.body, where, bucket, key):
                    done += len(chunk)
                    if done > got.size:
                        break  # the header said less: the tar would be wrong
                    digest.update(chunk)
                    yield chunk
            if done != got.size:
                raise s3.RemoteError(
                    f"reading {bucket}/{key}: {where.shown} sent {done} bytes or more, "
                    f"not the {got.size} it announced (was it rewritten meanwhile?)",
                    "run the backup again",
                )
            pad = storage_tar.padding(got.size)
            yield pad
            offset += len(header) + got.size + len(pad)
            objects.append(
                manifest.StorageObject(
                    bucket=bucket, key=key, size=got.size, sha256=digest.hexdigest(),
                    content_type=got.content_type,
                )
            )  # fmt: skip
        yield storage_tar.end(offset)

    stats = pipeline.write_chunks(dest, chunks(), recipients=recipients)
    found = manifest.Attachments(endpoint=where.shown, buckets=buckets, objects=objects)
    return stats, found


def _bucket_ids(pg: psycopg.Connection[Any]) -> list[str]:
    """The ids of pg's storage.buckets rows (the id is the bucket's name in S3 calls)."""
    row = pg.execute("SELECT to_regclass('storage.buckets') IS NOT NULL").fetchone()
    if row is None or not row[0]:
        return []  # a database without Storage's schema has no buckets
    rows = pg.execute('SELECT id FROM storage.buckets ORDER BY id COLLATE "C"').fetchall()
    return [str(r[0]) for r in rows]


@dataclass
class _Got:
    body: Any  # botocore's StreamingBody
    size: int
    mtime: float
    content_type: str | None


def _get(client: Any, where: s3.Endpoint, bucket: str, key: str) -> _Got | None:
    import botocore.exceptions

    with _errors(f"reading {bucket}/{key}", where, bucket):
        try:
            res = client.get_object(Bucket=bucket, Key=key)
        except botocore.exceptions.ClientError as e:
            if e.response.get("Error", {}).get("Code") == "NoSuchKey":
                return None
            raise
    modified = res.get("LastModified")
    return _Got(
        body=res["Body"],
        size=int(res["ContentLength"]),
        mtime=modified.timestamp() if modified is not None else 0.0,
        content_type=res.get("ContentType"),
    )


def _read(body: Any, where: s3.Endpoint, bucket: str, key: str) -> bytes:
    with _errors(f"reading {bucket}/{key}", where, bucket):
        return bytes(body.read(pipeline.CHUNK))


def restore_part(cfg: PgvaultConfig, bset: BackupSet, ui: Listener, identity: str | None) -> None:
    """Put the set's objects back into Storage (target.storage) so that each bucket of
    the set holds exactly the set's objects; buckets the set does not name are left alone.

    Order, so that a failure midway deletes nothing: missing buckets are created, then
    every object is uploaded over the bucket's copy (each checked against the manifest
    first), and only when all are there are the bucket's other objects deleted. A failure
    before the end leaves some objects holding the set's bytes and the rest as they were;
    the restore's safety backup holds what was there before, and running the restore again
    finishes the job.
    """
    assert bset.manifest is not None and bset.manifest.attachments is not None
    att = bset.manifest.attachments
    where = _endpoint(cfg)
    client = s3.client(where)
    for bucket in att.buckets:
        if not _bucket_exists(client, where, bucket):
            with _errors(f"creating bucket {bucket}", where, bucket):
                client.create_bucket(Bucket=bucket)
            ui.note(f"Created bucket {bucket} in Supabase Storage")
    private = tempfile.mkdtemp(prefix="pgvault-attachments-")  # 0700
    try:
        with ui.transfer("attachments", sum(o.size for o in att.objects)) as progress:
            put = _upload_all(client, where, bset, identity, private, progress)
    finally:
        shutil.rmtree(private, ignore_errors=True)
    removed = 0
    keep: dict[str, set[str]] = {b: set() for b in att.buckets}
    for o in att.objects:
        keep[o.bucket].add(o.key)
    for bucket in att.buckets:
        extra = [k for k in _keys(client, where, bucket) if k not in keep[bucket]]
        for start in range(0, len(extra), _DELETE_BATCH):
            batch = extra[start : start + _DELETE_BATCH]
            with _errors(f"deleting objects the set lacks from bucket {bucket}", where, bucket):
                res = client.delete_objects(
                    Bucket=bucket,
                    Delete={"Objects": [{"Key": k} for k in batch], "Quiet": True},
                )
            if failed := res.get("Errors"):
                first = failed[0]
                raise s3.RemoteError(
                    f"deleting objects the set lacks from bucket {bucket}: {len(failed)} "
                    f"refused, first {first.get('Key')!r}: {first.get('Code')}",
                    "check the keys' permissions, then restore again",
                )
            removed += len(batch)
    ui.note(
        f"Attachments: {len(att.objects)} objects ({put / (1 << 20):.2f} MB) put back into "
        f"{len(att.buckets)} buckets at {where.shown}; {removed} objects the set does not "
        "hold removed"
    )


def _bucket_exists(client: Any, where: s3.Endpoint, bucket: str) -> bool:
    import botocore.exceptions

    with _errors(f"looking for bucket {bucket}", where, bucket):
        try:
            client.head_bucket(Bucket=bucket)
        except botocore.exceptions.ClientError as e:
            if str(e.response.get("Error", {}).get("Code")) in ("404", "NoSuchBucket"):
                return False
            raise
    return True


def _upload_all(
    client: Any,
    where: s3.Endpoint,
    bset: BackupSet,
    identity: str | None,
    private: str,
    progress: Any,
) -> int:
    """Upload every object of the part; return the bytes put."""
    from boto3.s3.transfer import TransferConfig

    # Uploaded from a file by name, s3transfer reads each part from the file as it sends
    # it; from a seekable file object it reads parts ahead into memory (ten 8 MiB parts
    # and more queued), which went past the 150 MB pgvault allows itself. Two 8 MiB parts
    # in flight keep memory flat whatever an object's size.
    transfer = TransferConfig(
        multipart_threshold=2 * _PART, multipart_chunksize=_PART, max_concurrency=2
    )
    done = 0
    with contextlib.closing(storage_tar.spooled(bset, identity, private)) as each:
        for o, spool in each:
            extra = {"ContentType": o.content_type} if o.content_type else None
            with _errors(f"putting {o.bucket}/{o.key} back", where, o.bucket):
                client.upload_file(spool, o.bucket, o.key, ExtraArgs=extra, Config=transfer)
            done += o.size
            progress(done)
    return done
