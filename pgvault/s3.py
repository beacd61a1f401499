"""S3-compatible object storage through boto3: the one place a client is made and the one
place its errors become pgvault's one-line errors.

boto3 because it streams both ways (multipart uploads from a file, ranged and chunked
reads), reads credentials where AWS users keep them (environment, ~/.aws profiles, SSO,
instance roles), and every S3-compatible service documents it. It is imported only when
a remote or attachments are configured: it costs 0.3 s and ~35 MB.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from pgvault import masking
from pgvault.errors import ConfigError, PgvaultError


class RemoteError(PgvaultError):
    """The object store refused or could not be reached."""


@dataclass(frozen=True)
class Endpoint:
    """How to reach one S3-compatible service; keys None: boto3's usual chain."""

    endpoint: str | None = None
    region: str | None = None
    profile: str | None = None
    access_key_id: str | None = None
    secret_access_key: str | None = None
    timeout: float = 60.0

    @property
    def shown(self) -> str:
        return self.endpoint or "AWS S3"


def client(where: Endpoint) -> Any:
    """A boto3 S3 client for where. Secrets given in config are remembered for masking."""
    import boto3
    import botocore.config
    import botocore.exceptions

    masking.remember(where.secret_access_key)
    try:
        session = boto3.session.Session(profile_name=where.profile)
    except botocore.exceptions.ProfileNotFound:
        raise ConfigError(
            f"AWS profile '{where.profile}' is not in ~/.aws/config or ~/.aws/credentials",
            "check remote.profile, or give the keys in the environment",
        ) from None
    config = botocore.config.Config(
        connect_timeout=min(where.timeout, 30.0),
        read_timeout=where.timeout,
        retries={"max_attempts": 3, "mode": "standard"},
        # Path-style addressing: what MinIO and Supabase Storage expect, and AWS accepts.
        s3={"addressing_style": "path"} if where.endpoint else {},
        # pgvault sends Content-MD5 with every part itself (remote_s3.py), which every
        # S3-compatible service checks; boto3's newer CRC headers, which some of them
        # refuse and which AWS wants declared when a multipart upload starts, only where
        # an operation requires them.
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    try:
        return session.client(
            "s3",
            endpoint_url=where.endpoint,
            region_name=where.region or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1",
            aws_access_key_id=where.access_key_id,
            aws_secret_access_key=where.secret_access_key,
            config=config,
        )
    except ValueError as e:  # an endpoint or region boto3 cannot use
        raise ConfigError(
            f"cannot use {where.shown}: {masking.mask(str(e))}",
            "check the endpoint (http(s)://host[:port]) and the region",
        ) from None


# S3's error codes, and what the user can do about each.
_CODES = {
    "NoSuchBucket": ("bucket '{bucket}' does not exist at {where}", "create it, or fix the URL"),
    "InvalidAccessKeyId": (
        "{where} does not know the access key",
        "check AWS_ACCESS_KEY_ID (or the configured key) for this service",
    ),
    "SignatureDoesNotMatch": (
        "{where} refused the secret key",
        "check AWS_SECRET_ACCESS_KEY (or the configured secret)",
    ),
    "AccessDenied": ("{where} denied access to '{bucket}'", "check the key's permissions"),
    "InvalidBucketName": ("'{bucket}' is not a valid bucket name", "fix the URL"),
}


@contextlib.contextmanager
def errors(what: str, where: Endpoint, bucket: str = "") -> Iterator[None]:
    """Turn boto3's exceptions raised inside into a RemoteError naming what was done."""
    import botocore.exceptions

    try:
        yield
    except botocore.exceptions.ClientError as e:
        code = str(e.response.get("Error", {}).get("Code", ""))
        if code in _CODES:
            line, hint = _CODES[code]
            raise RemoteError(
                f"{what}: " + line.format(bucket=bucket, where=where.shown), hint
            ) from None
        message = masking.mask(str(e.response.get("Error", {}).get("Message", code)))
        raise RemoteError(f"{what}: {where.shown} answered {code}: {message}", "") from None
    except botocore.exceptions.NoCredentialsError:
        raise RemoteError(
            f"{what}: no credentials for {where.shown}",
            "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or remote.profile",
        ) from None
    except (
        botocore.exceptions.EndpointConnectionError,
        botocore.exceptions.ConnectionClosedError,
        botocore.exceptions.ReadTimeoutError,
        botocore.exceptions.ConnectTimeoutError,
    ) as e:
        raise RemoteError(
            f"{what}: cannot reach {where.shown} ({type(e).__name__})",
            "check that the service is up and the endpoint is right, then run again",
        ) from None
    except botocore.exceptions.BotoCoreError as e:
        raise RemoteError(f"{what}: {masking.mask(str(e))}", "") from None
