"""upload (issue 12): `pgvault push` of the bench's set to an S3 server on loopback (moto's
standalone server, started once per bench run) against boto3's own bulk call,
`client.upload_file` for the same files with boto3's default TransferConfig. Both run as a
new Python process each time (start-up and the boto3 import included on both sides), each
into a fresh bucket that is emptied and removed afterwards.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from .measure import Sample, clean_env, median, run_pgvault, run_timed
from .report import Row

if TYPE_CHECKING:
    from tests.s3server import MotoServer

    from .workloads import Bench

MB = 1024 * 1024
PUSH_RATIO = 1.25  # what pgvault's checks and start-up may add to boto3's own upload

# boto3's bulk upload, as a user of the library would write it.
_BOTO3 = """\
import sys
import boto3
client = boto3.client("s3", endpoint_url=sys.argv[1])
bucket = sys.argv[2]
for path in sys.argv[3:]:
    client.upload_file(path, bucket, "bench/" + path.rsplit("/", 1)[1])
"""


def start_server(work: Path) -> tuple[MotoServer | None, str]:
    """The S3 server for the upload rows, or None and why there is none."""
    try:
        from tests.s3server import MotoServer
    except ImportError as e:  # moto or pytest not installed: the other rows still run
        return None, f"skipped: {e}"
    server = MotoServer(work)
    try:
        server.start()
    except RuntimeError as e:
        return None, f"error: {e}"
    return server, ""


def _bucket(server: MotoServer, name: str) -> str:
    server.client().create_bucket(Bucket=name)
    return name


def _drop_bucket(server: MotoServer, name: str) -> None:
    """Empty and remove a bucket: moto keeps what it holds until it exits."""
    client = server.client()
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=name):
        for item in page.get("Contents", []):
            client.delete_object(Bucket=name, Key=item["Key"])
    client.delete_bucket(Bucket=name)


def bench_upload(
    b: Bench, scale: int, set_dir: Path, prefix: str, server: MotoServer | None, why: str
) -> list[Row]:
    """Rows: push's wall time against boto3's, its throughput, and its peak RSS."""
    from .workloads import available

    if server is None:
        return [Row(scale, "push (upload)", note=why or "skipped: no S3 server")]
    if not available("pgvault.commands.push", "run"):
        return [Row(scale, "push (upload)", note="skipped: pgvault push not available")]
    files = sorted(p for p in set_dir.glob(f"{prefix}-*") if p.is_file())
    size_mb = sum(p.stat().st_size for p in files) / MB
    env = clean_env(**server.env())
    ours: list[Sample] = []
    theirs: list[float] = []
    for i in range(b.repeat):
        for who in ("pgvault", "boto3") if i % 2 == 0 else ("boto3", "pgvault"):
            bucket = _bucket(server, f"bench-{who}-s{scale}-{i}-{time.monotonic_ns() % 10**6}")
            try:
                if who == "pgvault":
                    args = ["push", f"dir={set_dir}", f"remote.url=s3://{bucket}/bench",
                            f"remote.endpoint={server.endpoint}", "push.prune=false",
                            "quiet=true"]  # fmt: skip
                    ours.append(run_pgvault(args, env, b.work))
                else:
                    argv = [sys.executable, "-c", _BOTO3, server.endpoint, bucket,
                            *map(str, files)]  # fmt: skip
                    theirs.append(run_timed(argv, env, b.work, name="boto3 upload_file")[0])
            finally:
                _drop_bucket(server, bucket)
    push_s, boto_s = median([s.seconds for s in ours]), median(theirs)
    rss = [s.rss_mb for s in ours if s.rss_mb is not None]
    label = f"push {size_mb:.0f} MB to S3 (moto)"
    return [
        Row(scale, label, "s", push_s, boto_s, "boto3 upload_file", max_ratio=PUSH_RATIO),
        Row(scale, "push throughput", "MB/s", size_mb / push_s, size_mb / boto_s, "boto3",
            target_text="reported"),
        Row(scale, "push peak RSS", "MB", max(rss) if rss else None, max_value=150,
            note="" if rss else "error: no RSS reported"),
    ]  # fmt: skip
