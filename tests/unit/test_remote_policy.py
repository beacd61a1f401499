"""The remote's pure rules: its retention policy (remote.retention over retention, key by
key) and which remote.url values are accepted, before anything is contacted."""

from __future__ import annotations

from dataclasses import fields

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pgvault import offsite, remote, remote_s3
from pgvault.config import PgvaultConfig, RemoteConfig, RemoteRetentionConfig, RetentionConfig
from pgvault.errors import ConfigError

KEYS = [f.name for f in fields(RetentionConfig)]
counts = st.integers(min_value=0, max_value=10_000)
local_policies = st.builds(RetentionConfig, **{k: counts for k in KEYS})
remote_policies = st.builds(RemoteRetentionConfig, **{k: st.none() | counts for k in KEYS})


@given(local_policies, remote_policies)
def test_each_key_is_the_remotes_when_set_else_the_local_one(
    local: RetentionConfig, own: RemoteRetentionConfig
) -> None:
    merged = offsite.merged_policy(local, own)
    for key in KEYS:
        mine = getattr(own, key)
        assert getattr(merged, key) == (getattr(local, key) if mine is None else mine)
    # Pure: neither input changes.
    assert offsite.merged_policy(local, own) == merged


@given(local_policies)
def test_an_empty_remote_policy_is_the_local_one(local: RetentionConfig) -> None:
    assert offsite.merged_policy(local, RemoteRetentionConfig()) == local


@given(local_policies, local_policies)
def test_a_full_remote_policy_ignores_the_local_one(
    local: RetentionConfig, other: RetentionConfig
) -> None:
    own = RemoteRetentionConfig(**{k: getattr(other, k) for k in KEYS})
    assert offsite.merged_policy(local, own) == other


@given(local_policies, remote_policies, st.sampled_from(KEYS), counts)
def test_raising_one_remote_key_never_lowers_another(
    local: RetentionConfig, own: RemoteRetentionConfig, key: str, more: int
) -> None:
    """Monotone: keeping more on the remote in one key keeps at least as much in all."""
    before = offsite.merged_policy(local, own)
    base = getattr(own, key)
    bigger = RemoteRetentionConfig(**{k: getattr(own, k) for k in KEYS})
    setattr(bigger, key, (base if base is not None else getattr(local, key)) + more)
    after = offsite.merged_policy(local, bigger)
    assert all(getattr(after, k) >= getattr(before, k) for k in KEYS)


def test_a_remote_policy_keeping_nothing_is_refused() -> None:
    cfg = PgvaultConfig()
    cfg.remote = RemoteConfig(
        url="s3://b/p", retention=RemoteRetentionConfig(**{k: 0 for k in KEYS})
    )
    with pytest.raises(ConfigError, match="the remote's policy: the retention policy keeps"):
        offsite.remote_policy(cfg)
    cfg.remote.retention = RemoteRetentionConfig(days=-1)
    with pytest.raises(ConfigError, match=r"retention\.days is -1"):
        offsite.remote_policy(cfg)


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://example.com/x", "must start with s3:// or file://"),
        ("/mnt/nas/backups", "must start with s3:// or file://"),
        ("s3://", "names no bucket"),
        ("s3:///prefix", "names no bucket"),
        ("s3://bucket/a/../b", "'..'"),
        ("s3://KEY:topsecret@bucket/p", "user part"),
        ("s3://bucket/p?versionId=1", "query"),
        ("file://relative/path", "not an absolute file:// path"),
        ("file:///mnt/../etc", "not an absolute path"),
        ("file:///etc", "system directory"),
        ("", "remote.url is not set"),
    ],
)
def test_bad_urls_are_refused_with_one_line(url: str, why: str) -> None:
    with pytest.raises(ConfigError) as e:
        remote.open_remote(RemoteConfig(url=url))
    assert why in e.value.line()
    assert "topsecret" not in e.value.line()


def test_good_urls() -> None:
    s3 = remote.open_remote(RemoteConfig(url="s3://bucket/some/prefix/", endpoint="http://x"))
    assert isinstance(s3, remote_s3.S3Remote)
    assert (s3.bucket, s3.prefix, s3.url) == ("bucket", "some/prefix/", "s3://bucket/some/prefix")
    root = remote.open_remote(RemoteConfig(url="s3://bucket"))
    assert isinstance(root, remote_s3.S3Remote) and root.prefix == ""
    local = remote.open_remote(RemoteConfig(url="file:///mnt/nas/pg%20vault"))
    assert isinstance(local, remote.FileRemote) and str(local.directory) == "/mnt/nas/pg vault"
