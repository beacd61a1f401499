"""The remote's pure rules: its retention policy (remote.retention over retention, key by
key), which remote.url values are accepted before anything is contacted, the multipart
upload's part sizes, and which incomplete remote sets push deletes."""

from __future__ import annotations

import itertools
from dataclasses import fields
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pgvault import naming, offsite, offsite_upload, remote, remote_s3
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


@given(st.integers(min_value=remote_s3.PART_SIZE + 1, max_value=5 * 2**40))
def test_parts_fit_s3s_limit_and_memory(size: int) -> None:
    """Up to S3's largest object (5 TiB): at most 10,000 parts (S3 refuses more, after
    the rest went up), every byte in exactly one part, in order, and no more than 24 MiB
    of parts held at once unless one part alone is larger."""
    part, in_flight = remote_s3.part_plan(size)
    spans = list(remote_s3.spans(size, part))
    assert len(spans) <= 10_000
    assert part % (1 << 20) == 0 and part >= remote_s3.PART_SIZE
    assert in_flight >= 1 and part * in_flight <= max(24 * 2**20, part)
    assert spans[0][0] == 0 and sum(length for _, length in spans) == size
    assert all(a + la == b for (a, la), (b, _) in itertools.pairwise(spans))
    assert all(0 < length <= part for _, length in spans)
    assert all(length >= 5 * 2**20 for _, length in spans[:-1])  # S3's smallest part


def test_small_files_keep_8_mib_parts_three_at_a_time() -> None:
    assert remote_s3.part_plan(20 * 2**20) == (8 * 2**20, 3)
    assert remote_s3.part_plan(200 * 2**30)[0] == 23 * 2**20  # 200 GiB / 9,000, in MiB


class Listed:
    """A remote that only lists (the objects a test constructs): no set has a manifest,
    so scan downloads nothing."""

    url = "s3://b/p"

    def __init__(self, objects: list[remote.RemoteObject]) -> None:
        self.listing = objects

    def objects(self) -> list[remote.RemoteObject]:
        return self.listing


NOW = datetime(2024, 6, 1, 12, tzinfo=UTC)
OLD_NAME = "backup-2024-05-01-000000"  # a month before NOW


def leftovers(tmp_path: Path, objects: list[remote.RemoteObject], held: set[str]) -> set[str]:
    found = offsite_upload.scan(Listed(objects), tmp_path)  # type: ignore[arg-type]
    return set(offsite._leftovers(found.sets, held, NOW, found.modified))


@pytest.mark.parametrize(
    ("ages", "held", "deleted"),
    [
        ([2.0, 3.0], False, True),  # every object over a day old: a push cut short
        ([2.0, 0.5], False, False),  # one written today: a push may be sending it now
        ([2.0, None], False, False),  # one of unknown age: kept
        ([2.0, 3.0], True, False),  # the local directory holds it: push completes it
    ],
)
def test_an_upload_cut_short_is_deleted_only_when_all_its_objects_are_old(
    tmp_path: Path, ages: list[float | None], held: bool, deleted: bool
) -> None:
    when = [None if age is None else NOW.timestamp() - age * 86400 for age in ages]
    objects = [
        remote.RemoteObject(f"{OLD_NAME}-{kind}", 4, modified)
        for kind, modified in zip(["roles.sql", "data.sql"], when, strict=True)
    ]
    got = leftovers(tmp_path, objects, {OLD_NAME} if held else set())
    assert got == ({OLD_NAME} if deleted else set())


def test_a_set_named_today_is_never_a_leftover(tmp_path: Path) -> None:
    name = naming.format_prefix(NOW - timedelta(hours=2))
    old = NOW.timestamp() - 5 * 86400  # mtimes can lie (a copied tree): the name rules too
    objects = [remote.RemoteObject(f"{name}-data.sql", 4, old)]
    assert leftovers(tmp_path, objects, set()) == set()
