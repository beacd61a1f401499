"""s3://bucket/prefix on AWS or any S3-compatible service (remote.endpoint), and the one
upload path every file takes there.

Uploads are pgvault's own multipart uploads (one put_object for a file of one part), not
boto3's upload_file, so that what arrives is confirmed, not assumed:
- every part (or put) carries a Content-MD5 header, which S3 and the S3-compatible
  services check: a part whose bytes changed on the way is refused;
- the bytes sent are hashed (sha256) as they are read, and the upload is completed only
  when that digest is the manifest's: a local file damaged or changed since its backup
  never becomes a remote object (the multipart upload is aborted);
- the object carries that sha256 as metadata (x-amz-meta-sha256), so a later push can
  tell a whole object of ours from one of the right size and other bytes.
Parts are read with os.pread from a descriptor opened while the backup directory was
locked (the file may be deleted locally meanwhile), at most about 24 MiB of them in memory
(part_plan).
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pgvault import lease, s3
from pgvault.config import RemoteConfig
from pgvault.errors import ConfigError
from pgvault.remote import (
    CHUNK,
    RemoteObject,
    check_name,
    hash_fd,
    mismatch,
    read_at,
    send_path,
    write_new,
)

MIB = 1 << 20
# Parts of 8 MiB (a file up to that size is one put_object), larger for a file that would
# need more than MAX_PARTS of them: S3 refuses a part numbered over 10,000, and would do so
# only after all before it went up.
PART_SIZE = 8 * MIB
MAX_PARTS = 9_000
# Parts held at once (read, waiting or on the wire). The issue allows 150 MB RSS in all:
# measured, a part costs about 1.6 times its size on the way out (boto3's request), and
# pgvault with boto3 loaded is ~90 MB: 64 MiB in flight peaked at 161 MB in `make bench`.
IN_FLIGHT_BYTES = 24 * MIB
# What a part's upload answer may carry besides its ETag when boto3 sent a checksum of
# its own: CompleteMultipartUpload wants it back.
_PART_CHECKSUMS = ("ChecksumCRC32", "ChecksumCRC32C", "ChecksumCRC64NVME", "ChecksumSHA1",
                   "ChecksumSHA256")  # fmt: skip


def part_plan(size: int) -> tuple[int, int]:
    """(part size, parts in flight) for a multipart upload of size bytes: parts of
    PART_SIZE, or of size / MAX_PARTS rounded up to a whole MiB when larger, and as many
    in flight as IN_FLIGHT_BYTES holds, at least one."""
    per_part = _ceil_div(size, MAX_PARTS)
    part = max(PART_SIZE, _ceil_div(per_part, MIB) * MIB)
    return part, max(1, IN_FLIGHT_BYTES // part)


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def spans(size: int, part: int) -> Iterator[tuple[int, int]]:
    """(offset, length) of each part of a file of size bytes, in order."""
    for offset in range(0, size, part):
        yield offset, min(part, size - offset)


def _md5(data: bytes) -> str:
    return base64.b64encode(hashlib.md5(data, usedforsecurity=False).digest()).decode()


@dataclass
class S3Remote:
    """s3://bucket/prefix on AWS or any S3-compatible service (remote.endpoint)."""

    url: str
    bucket: str
    prefix: str  # "" or "some/path/", always ending in "/" when not empty
    where: s3.Endpoint
    _client: Any = field(default=None, repr=False)

    @classmethod
    def from_url(cls, url: str, bucket: str, path: str, cfg: RemoteConfig) -> S3Remote:
        if not bucket:
            raise ConfigError(
                f"remote.url '{url}' names no bucket", "use remote.url=s3://bucket/prefix"
            )
        segments = [s for s in path.split("/") if s]
        if any(s in (".", "..") for s in segments):
            raise ConfigError(f"remote.url '{url}' has a '.' or '..' part", "give a plain prefix")
        where = s3.Endpoint(
            endpoint=cfg.endpoint,
            region=cfg.region,
            profile=cfg.profile,
            access_key_id=cfg.access_key_id,
            secret_access_key=cfg.secret_access_key,
            timeout=cfg.timeout,
        )
        prefix = "/".join(segments) + "/" if segments else ""
        return cls(url.rstrip("/"), bucket, prefix, where)

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = s3.client(self.where)
        return self._client

    def _errors(self, what: str) -> AbstractContextManager[None]:
        return s3.errors(what, self.where, self.bucket)

    def objects(self) -> list[RemoteObject]:
        out = []
        with self._errors(f"listing {self.url}"):
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=self.prefix, Delimiter="/"
            )
            for page in pages:
                for item in page.get("Contents", []):
                    name = str(item["Key"])[len(self.prefix) :]
                    if name:
                        when = item.get("LastModified")  # a datetime, with its zone
                        modified = when.timestamp() if when is not None else None
                        out.append(RemoteObject(name, int(item["Size"]), modified))
        return out

    def stored_sha256(self, name: str) -> str | None:
        """The sha256 name was uploaded with (its metadata); None when there is no such
        object or it has none (not uploaded by this pgvault)."""
        check_name(name)
        import botocore.exceptions

        with self._errors(f"looking at {name} on {self.url}"):
            try:
                head = self.client.head_object(Bucket=self.bucket, Key=self.prefix + name)
            except botocore.exceptions.ClientError as e:
                if str(e.response.get("Error", {}).get("Code")) in ("404", "NoSuchKey"):
                    return None
                raise
        found = head.get("Metadata", {}).get("sha256")
        return str(found) if found else None

    def upload(self, path: Path, name: str) -> None:
        send_path(self, path, name)

    def send(self, fd: int, size: int, name: str, sha256: str | None) -> None:
        """Send the first size bytes of fd to name; sha256: the manifest's, or None (the
        digest of what was read is stored then)."""
        check_name(name)
        key = self.prefix + name
        with self._errors(f"uploading {name} to {self.url}"):
            if size <= PART_SIZE:
                data = read_at(fd, 0, size, name)
                digest = hashlib.sha256(data).hexdigest()
                if sha256 is not None and digest != sha256:
                    raise mismatch(name)
                self.client.put_object(
                    Bucket=self.bucket, Key=key, Body=data, ContentMD5=_md5(data),
                    Metadata={"sha256": digest},
                )  # fmt: skip
                return
            if sha256 is None:  # only files no manifest covers: read them twice
                sha256 = hash_fd(fd, size, name)
            started = self.client.create_multipart_upload(
                Bucket=self.bucket, Key=key, Metadata={"sha256": sha256}
            )
            upload_id = started["UploadId"]
            try:
                parts = self._parts(fd, size, name, key, upload_id, sha256)
                self.client.complete_multipart_upload(
                    Bucket=self.bucket, Key=key, UploadId=upload_id,
                    MultipartUpload={"Parts": parts},
                )  # fmt: skip
            except BaseException:  # Ctrl-C and SIGTERM too: aborted, then re-raised
                self._abort(key, upload_id)
                raise

    def _abort(self, key: str, upload_id: str) -> None:
        """Abort a multipart upload once none of its parts is on the wire (_parts waits
        for them: S3 may keep a part that lands after the abort), tried twice. Best
        effort: an upload left open is invisible, and a bucket lifecycle rule
        (AbortIncompleteMultipartUpload) removes what this cannot."""
        for _ in range(2):
            try:
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
                return
            except Exception:  # tried once more, then left to the lifecycle rule
                continue

    def _parts(
        self, fd: int, size: int, name: str, key: str, upload_id: str, sha256: str
    ) -> list[dict[str, Any]]:
        """Send fd's parts, a few at a time (part_plan); they are read and hashed in
        order by this thread, so the digest is of exactly the bytes sent."""

        def send(number: int, data: bytes) -> dict[str, Any]:
            answer = self.client.upload_part(
                Bucket=self.bucket, Key=key, UploadId=upload_id, PartNumber=number,
                Body=data, ContentMD5=_md5(data),
            )  # fmt: skip
            part = {"PartNumber": number, "ETag": answer["ETag"]}
            # None of them when boto3 sends no checksum (request_checksum_calculation).
            part.update({k: answer[k] for k in _PART_CHECKSUMS if answer.get(k)})
            return part

        part_size, in_flight = part_plan(size)
        digest = hashlib.sha256()
        done: list[dict[str, Any]] = []
        pending: set[Future[dict[str, Any]]] = set()
        pool = ThreadPoolExecutor(in_flight, thread_name_prefix="pgvault-upload")
        try:
            for number, (offset, length) in enumerate(spans(size, part_size), start=1):
                while len(pending) >= in_flight:  # a part is read only when one may go
                    ended, pending = wait(pending, return_when=FIRST_COMPLETED)
                    done += [f.result() for f in ended]
                data = read_at(fd, offset, length, name)
                digest.update(data)
                pending.add(pool.submit(send, number, data))
                del data  # held by the part's task only, until it is sent
            done += [f.result() for f in wait(pending).done]
            if digest.hexdigest() != sha256:
                raise mismatch(name)
        finally:
            # On failure, parts not yet started are dropped and those on the wire waited
            # for (each ends within the client's timeouts), so that the abort comes after
            # the last of them.
            pool.shutdown(wait=True, cancel_futures=True)
        return sorted(done, key=lambda p: int(p["PartNumber"]))

    def chunks(self, name: str) -> Iterator[bytes]:
        check_name(name)
        with self._errors(f"downloading {name} from {self.url}"):
            answer = self.client.get_object(Bucket=self.bucket, Key=self.prefix + name)
            body = answer["Body"]
            try:
                # StreamingBody checks the length it was promised: a cut stream raises.
                yield from body.iter_chunks(CHUNK)
            finally:
                body.close()

    def download(self, name: str, dest: Path) -> None:
        write_new(dest, self.chunks(name))

    def lease_read(self) -> tuple[bytes, str] | None:
        import botocore.exceptions

        with self._errors(f"reading the lease of {self.url}"):
            try:
                answer = self.client.get_object(Bucket=self.bucket, Key=self.prefix + lease.NAME)
            except botocore.exceptions.ClientError as e:
                if str(e.response.get("Error", {}).get("Code")) in ("404", "NoSuchKey"):
                    return None
                raise
            return bytes(answer["Body"].read(65536)), str(answer["ETag"])

    def lease_write(self, data: bytes, tag: str | None) -> str | None:
        """A conditional PUT: If-None-Match: * for a new lease, If-Match: ETag over one;
        the new ETag, or None when the condition failed."""
        import botocore.exceptions

        condition = {"IfNoneMatch": "*"} if tag is None else {"IfMatch": tag}
        with self._errors(f"writing the lease of {self.url}"):
            try:
                answer = self.client.put_object(
                    Bucket=self.bucket, Key=self.prefix + lease.NAME, Body=data, **condition
                )
            except botocore.exceptions.ClientError as e:
                code = str(e.response.get("Error", {}).get("Code"))
                # 412: the condition failed; 409: a concurrent conditional write won.
                if code in ("PreconditionFailed", "412", "ConditionalRequestConflict", "409",
                            "NoSuchKey", "404"):  # fmt: skip
                    return None
                raise
        return str(answer["ETag"])

    def delete(self, name: str) -> None:
        check_name(name)
        with self._errors(f"deleting {name} from {self.url}"):
            self.client.delete_object(Bucket=self.bucket, Key=self.prefix + name)
