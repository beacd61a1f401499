"""Retention: the invariants of decide() as hypothesis properties over arbitrary sets,
clocks and policies (sets built in memory), one example per rule, and the few helpers
that touch files (deletion order, verify records, damage)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pgvault import catalog, naming, retention, sources
from pgvault.config import RetentionConfig, TargetConfig
from pgvault.errors import ConfigError, NotFound, PgvaultError
from pgvault.store import LocalStore
from tests.manifests import manifest, manifest_dict

STATES = ("complete", "damaged", "missing_file", "no_manifest", "bad_manifest", "partial")
STATES += ("verify_only",)
UNPARSEABLE = ("backup-2024-13-01-000000", "backup-2025-02-30-120000", "backup-2023-00-10-996199")
BASE = datetime(2024, 1, 1, tzinfo=UTC)


def make_set(
    prefix: str | datetime,
    state: str = "complete",
    *,
    compression: str = "none",
    verify: bool = False,
    directory: Path = Path("/backups"),
    **source: Any,
) -> catalog.BackupSet:
    """A set as catalog.scan would return it for files in the given state; source: the
    manifest's database, server, host or target when not the default one."""
    if isinstance(prefix, datetime):
        prefix = naming.format_prefix(prefix)
    names = {k: naming.file_name(prefix, k, compression) for k in (*naming.SQL_KINDS, "manifest")}
    files = {k: directory / n for k, n in names.items()}
    bset = catalog.BackupSet(
        prefix, directory, files, manifest=manifest(prefix, compression, **source)
    )
    if state == "missing_file":
        del bset.files["data"]
    elif state == "no_manifest":
        del bset.files["manifest"]
        bset.manifest = None
    elif state == "bad_manifest":
        bset.manifest, bset.manifest_error = None, f"manifest {names['manifest']} is unreadable"
    elif state == "partial":
        bset.partial = [p.with_name(p.name + naming.PARTIAL_SUFFIX) for p in files.values()]
        bset.files, bset.manifest = {}, None
    elif state == "verify_only":
        bset.files, bset.manifest = {}, None
    if verify or state == "verify_only":
        bset.files["verify"] = directory / naming.file_name(prefix, "verify")
    return bset


@dataclasses.dataclass
class Scenario:
    sets: list[catalog.BackupSet]
    damaged: dict[str, str]
    verified: set[str]
    now: datetime

    def decide(
        self, policy: RetentionConfig, protect: str | None = None
    ) -> list[retention.Decision]:
        return retention.decide(
            self.sets, policy, self.now, protect, damaged=self.damaged, verified=self.verified
        )


# Offsets in minutes from BASE: often hours apart (same day, same week), sometimes years.
offsets = st.one_of(st.integers(0, 36 * 60), st.integers(0, 2 * 366 * 24 * 60))
# Mostly complete sets, where the rules act; a verify passed on few of them.
states = st.sampled_from(("complete",) * 5 + STATES[1:])
verdicts = st.sampled_from((True, False, False))


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    entries = draw(
        st.lists(
            st.tuples(offsets, states, verdicts, st.sampled_from(["none", "gzip", "zstd"])),
            max_size=30,
            unique_by=lambda e: e[0],
        )
    )
    sets, damaged, verified = [], {}, set()
    for minutes, state, is_verified, comp in entries:
        bset = make_set(BASE + timedelta(minutes=minutes), state, compression=comp)
        sets.append(bset)
        if state == "damaged":
            damaged[bset.prefix] = "data.sql is 3 bytes, the manifest says 10"
        if is_verified or state == "verify_only":
            verified.add(bset.prefix)
    for prefix in draw(st.lists(st.sampled_from(UNPARSEABLE), unique=True)):
        sets.append(make_set(prefix))
    # The clock: mostly a little after the newest set, sometimes anywhere, so that some
    # sets are in its future.
    last = max((e[0] for e in entries), default=0)
    minutes = draw(st.one_of(st.integers(last, last + 90 * 24 * 60), offsets))
    now = BASE + timedelta(minutes=minutes, seconds=draw(st.integers(0, 59)))
    return Scenario(draw(st.permutations(sets)), damaged, verified, now)


def off_or(values: st.SearchStrategy[int]) -> st.SearchStrategy[int]:
    """A rule's value, switched off half the time: any rule that is on keeps the newest
    sets anyway, so the other invariants only show with most rules off."""
    return st.one_of(st.just(0), values)


policies = st.builds(
    RetentionConfig,
    days=off_or(st.integers(1, 60)),
    keep_last=off_or(st.integers(1, 6)),
    keep_daily=off_or(st.integers(1, 6)),
    keep_weekly=off_or(st.integers(1, 6)),
    keep_monthly=off_or(st.integers(1, 6)),
    keep_yearly=off_or(st.integers(1, 6)),
)
# The protections show only when no rule already keeps the set: look harder for them.
many = settings(max_examples=400)


def kept(decisions: list[retention.Decision]) -> set[str]:
    return {d.prefix for d in decisions if d.keep}


def intact(sc: Scenario) -> list[catalog.BackupSet]:
    return [
        s
        for s in sc.sets
        if s.complete and s.prefix not in sc.damaged and s.time is not None and s.time <= sc.now
    ]


# -- Invariants ----------------------------------------------------------------------


@given(scenarios(), policies)
def test_one_decision_per_set_newest_first_naming_nothing_else(sc, policy):
    decisions = sc.decide(policy)
    assert [d.prefix for d in decisions] == sorted((s.prefix for s in sc.sets), reverse=True)


@many
@given(scenarios(), policies)
def test_the_newest_complete_set_is_never_deleted(sc, policy):
    keep = kept(sc.decide(policy))
    complete = [s.prefix for s in sc.sets if s.complete]
    if complete:
        assert max(complete) in keep
    # Nor the newest one that is sound: a damaged newest set must not cost the one before.
    if intact(sc):
        assert max(s.prefix for s in intact(sc)) in keep


@many
@given(scenarios(), policies)
def test_incomplete_damaged_or_unparseable_sets_are_kept_and_reported(sc, policy):
    by_prefix = {d.prefix: d for d in sc.decide(policy)}
    for s in sc.sets:
        if not s.complete or s.prefix in sc.damaged:
            assert by_prefix[s.prefix].keep and by_prefix[s.prefix].flagged, s.prefix
        else:
            assert not by_prefix[s.prefix].flagged


@many
@given(scenarios(), policies)
def test_the_newest_verified_set_is_never_deleted(sc, policy):
    keep = kept(sc.decide(policy))
    if sc.verified:
        assert max(sc.verified) in keep
    complete_verified = [s.prefix for s in sc.sets if s.complete and s.prefix in sc.verified]
    if complete_verified:
        assert max(complete_verified) in keep


@given(scenarios(), policies)
def test_sets_from_the_future_are_kept(sc, policy):
    keep = kept(sc.decide(policy))
    for s in sc.sets:
        if s.time is not None and s.time > sc.now:
            assert s.prefix in keep


@given(scenarios(), policies, st.data())
def test_the_set_just_written_is_kept(sc, policy, data):
    if sc.sets:
        protect = data.draw(st.sampled_from(sc.sets)).prefix
        assert protect in kept(sc.decide(policy, protect))


@many
@given(scenarios(), policies, policies)
def test_a_policy_that_keeps_more_keeps_a_superset(sc, smaller, extra):
    fields = [f.name for f in dataclasses.fields(RetentionConfig)]
    larger = RetentionConfig(**{f: getattr(smaller, f) + getattr(extra, f) for f in fields})
    assert kept(sc.decide(smaller)) <= kept(sc.decide(larger))


@given(scenarios(), policies, st.randoms(use_true_random=False))
def test_the_order_sets_arrive_in_does_not_matter(sc, policy, rnd):
    shuffled = list(sc.sets)
    rnd.shuffle(shuffled)
    other = retention.decide(shuffled, policy, sc.now, damaged=sc.damaged, verified=sc.verified)
    assert other == sc.decide(policy)


@given(scenarios(), st.data())
def test_deleting_goes_manifest_first_and_takes_the_whole_set(sc, data):
    """From the first unlink on, what is left has no manifest, so it reads as incomplete
    whenever the prune stops; and every file of the set is in the order exactly once."""
    if not sc.sets:
        return
    bset = data.draw(st.sampled_from(sc.sets))
    stray = bset.files.get("data", Path("/backups/x"))
    bset.partial.append(stray.with_name(stray.name + naming.PARTIAL_SUFFIX))
    order = retention.deletion_order(bset)
    assert sorted(order) == sorted(bset.all_paths())
    for k in range(1, len(order)):
        gone = set(order[:k])
        left = catalog.BackupSet(
            bset.prefix,
            bset.directory,
            {kind: p for kind, p in bset.files.items() if p not in gone},
            [p for p in bset.partial if p not in gone],
            manifest=bset.manifest if bset.files.get("manifest") not in gone else None,
        )
        assert "manifest" not in left.files and not left.complete
    if "verify" in bset.files:
        assert order[-1] == bset.files["verify"]


# -- One example per rule ------------------------------------------------------------


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def survivors(times: list[str], now: str, **policy: int) -> list[str]:
    """The times (ISO, UTC) of the complete sets that policy keeps, newest first."""
    policy.setdefault("days", 0)
    sets = [make_set(at(t)) for t in times]
    decisions = retention.decide(sets, RetentionConfig(**policy), at(now))
    names = {naming.format_prefix(at(t)): t for t in times}
    return [names[d.prefix] for d in decisions if d.keep]


TWO_A_DAY = [f"2026-11-{d:02d}T{h}:00:00" for d in range(10, 15) for h in ("08", "20")]


def test_keep_daily_keeps_the_newest_set_of_each_of_the_newest_days():
    assert survivors(TWO_A_DAY, "2026-11-20T00:00:00", keep_daily=3) == [
        "2026-11-14T20:00:00",
        "2026-11-13T20:00:00",
        "2026-11-12T20:00:00",
    ]


def test_a_bucket_rule_with_counts_left_also_keeps_the_oldest_set_as_restic_does():
    assert survivors(TWO_A_DAY, "2026-11-20T00:00:00", keep_daily=7) == [
        "2026-11-14T20:00:00",
        "2026-11-13T20:00:00",
        "2026-11-12T20:00:00",
        "2026-11-11T20:00:00",
        "2026-11-10T20:00:00",
        "2026-11-10T08:00:00",
    ]


def test_days_are_utc_days_from_the_name():
    times = ["2026-11-24T00:30:00", "2026-11-23T23:30:00", "2026-11-22T12:00:00"]
    # Two different UTC days, though the same day in UTC+2.
    assert survivors(times, "2026-12-01T00:00:00", keep_daily=2) == times[:2]


def test_keep_last_keeps_the_newest_n():
    assert survivors(TWO_A_DAY, "2026-11-20T00:00:00", keep_last=3) == [
        "2026-11-14T20:00:00",
        "2026-11-14T08:00:00",
        "2026-11-13T20:00:00",
    ]


def test_keep_weekly_uses_iso_weeks_across_the_new_year():
    # 2024-12-30 and 2025-01-03 are both in ISO week 2025-W01; 2024-12-27 is 2024-W52.
    times = ["2025-01-03T10:00:00", "2024-12-30T10:00:00", "2024-12-27T10:00:00"]
    assert survivors(times, "2025-03-01T00:00:00", keep_weekly=2) == [times[0], times[2]]


def test_keep_weekly_keeps_the_newest_set_of_each_week():
    times = ["2026-11-16T01:00:00", "2026-11-15T23:00:00", "2026-11-09T01:00:00"]
    times += ["2026-11-06T12:00:00", "2026-11-02T12:00:00"]
    assert survivors(times, "2026-12-01T00:00:00", keep_weekly=2) == times[:2]


def test_keep_monthly_keeps_the_newest_set_of_each_month():
    times = ["2026-11-01T00:00:00", "2026-10-31T23:59:59", "2026-10-01T00:00:00"]
    times += ["2026-09-30T00:00:00", "2026-09-15T00:00:00"]
    assert survivors(times, "2027-01-01T00:00:00", keep_monthly=2) == times[:2]


def test_keep_yearly_keeps_the_newest_set_of_each_year():
    times = ["2025-12-31T00:00:00", "2025-03-01T00:00:00", "2024-12-01T00:00:00"]
    times += ["2024-01-01T00:00:00", "2023-06-01T00:00:00"]
    assert survivors(times, "2027-01-01T00:00:00", keep_yearly=2) == [times[0], times[2]]


def test_days_keeps_sets_younger_than_n_days_by_the_name_alone():
    times = ["2026-11-19T00:00:01", "2026-11-19T00:00:00", "2026-11-10T00:00:00"]
    # Exactly 7 days old is not younger than 7 days. The newest set is kept regardless.
    assert survivors(times, "2026-11-26T00:00:00", days=7) == times[:1]
    assert survivors(times, "2026-11-26T00:00:00", days=8) == times[:2]


def test_rules_combine_as_a_union():
    got = survivors(TWO_A_DAY, "2026-11-20T00:00:00", keep_last=2, keep_daily=2)
    assert got == ["2026-11-14T20:00:00", "2026-11-14T08:00:00", "2026-11-13T20:00:00"]


def test_a_policy_with_every_rule_off_keeps_only_the_newest_set():
    assert survivors(TWO_A_DAY, "2026-11-20T00:00:00") == ["2026-11-14T20:00:00"]


def test_a_clock_behind_keeps_the_future_set_and_the_current_one():
    sets = [make_set(at(t)) for t in ("2026-11-25T00:00:00", "2026-11-10T00:00:00")]
    sets.append(make_set(at("2026-11-01T00:00:00")))
    decisions = retention.decide(sets, RetentionConfig(days=7), at("2026-11-20T00:00:00"))
    assert [d.keep for d in decisions] == [True, True, False]
    assert "future" in decisions[0].reason


def test_a_damaged_newest_set_does_not_cost_the_intact_one_before_it():
    newest, older, oldest = (at(f"2026-11-{d:02d}T00:00:00") for d in (19, 5, 1))
    sets = [make_set(newest), make_set(older), make_set(oldest)]
    damaged = {naming.format_prefix(newest): "checksum disagrees"}
    decisions = retention.decide(
        sets, RetentionConfig(days=7), at("2026-11-20T00:00:00"), damaged=damaged
    )
    assert [(d.keep, d.flagged) for d in decisions] == [(True, True), (True, False), (False, False)]
    assert "checksum disagrees" in decisions[0].reason


def test_the_newest_verified_set_outlives_the_policy_but_a_verify_record_alone_does_not_count():
    times = [at(f"2026-11-{d:02d}T00:00:00") for d in (19, 12, 8, 5)]
    sets = [make_set(times[0]), make_set(times[1], "verify_only"), make_set(times[2])]
    sets.append(make_set(times[3]))
    verified = {naming.format_prefix(t) for t in times[1:]}
    decisions = retention.decide(
        sets, RetentionConfig(days=7), at("2026-11-20T00:00:00"), verified=verified
    )
    assert [d.keep for d in decisions] == [True, True, True, False]
    assert decisions[1].flagged and "incomplete" in decisions[1].reason
    assert "verified" in decisions[2].reason


# -- Helpers that read or delete files -----------------------------------------------


def write_set(directory: Path, when: datetime, payload: bytes = b"x" * 10) -> catalog.BackupSet:
    prefix = naming.format_prefix(when)
    files = {}
    for kind in naming.SQL_KINDS:
        path = directory / naming.file_name(prefix, kind)
        path.write_bytes(payload)
        files[kind] = {"name": path.name, "size": len(payload)}
        files[kind]["sha256"] = hashlib.sha256(payload).hexdigest()
    text = json.dumps(manifest_dict(prefix, files=files))
    (directory / naming.file_name(prefix, "manifest")).write_text(text)
    record = {"verdict": "verified", "checked_at": when.isoformat(), "duration_s": 1.0,
              "server_version": "15.0", "tables": 0, "rows": 0, "problems": []}  # fmt: skip
    (directory / naming.file_name(prefix, "verify")).write_text(json.dumps(record))
    (bset,) = [s for s in catalog.scan(directory) if s.prefix == prefix]
    return bset


def test_delete_set_follows_the_order_and_leaves_other_files(tmp_path, monkeypatch):
    bset = write_set(tmp_path, BASE)
    (tmp_path / "notes.txt").write_text("mine")
    seen: list[str] = []
    real_unlink = Path.unlink

    def unlink(self: Path, missing_ok: bool = False) -> None:
        seen.append(self.name)
        real_unlink(self, missing_ok)

    monkeypatch.setattr(Path, "unlink", unlink)
    assert retention.delete_set(bset) == 5
    assert seen == [p.name for p in retention.deletion_order(bset)]
    assert seen[0].endswith("-manifest.json")
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


@pytest.mark.parametrize("stop_after", range(1, 5))
def test_an_interrupted_delete_leaves_a_set_that_reads_incomplete(
    tmp_path, monkeypatch, stop_after
):
    bset = write_set(tmp_path, BASE)
    done = [0]
    real_unlink = Path.unlink

    def unlink(self: Path, missing_ok: bool = False) -> None:
        if done[0] == stop_after:
            raise PermissionError(13, "Permission denied")
        done[0] += 1
        real_unlink(self, missing_ok)

    monkeypatch.setattr(Path, "unlink", unlink)
    with pytest.raises(PgvaultError, match="reads as incomplete"):
        retention.delete_set(bset)
    (left,) = catalog.scan(tmp_path)
    assert not left.complete and left.manifest is None


def test_verification_status_is_tolerant(tmp_path):
    bset = make_set(BASE, verify=True, directory=tmp_path)
    record = bset.files["verify"]
    assert retention.verification_status(make_set(BASE)) == "never"
    assert retention.verification_status(bset) == "never"  # named but not on disk
    for garbage in (b"\xff\x00", b"{", b"[1, 2]", b'{"verdict": "maybe"}', b'"verified"'):
        record.write_bytes(garbage)
        assert retention.verification_status(bset) == "never", garbage
    for verdict in ("verified", "failed"):
        full = {"verdict": verdict, "checked_at": "2026-11-24T03:00:00Z", "duration_s": 2.5,
                "server_version": "15.0", "tables": 1, "rows": 2, "problems": []}  # fmt: skip
        record.write_text(json.dumps(full))
        assert retention.verification_status(bset) == verdict
        record.write_text(json.dumps({k: v for k, v in full.items() if k != "tables"}))
        assert retention.verification_status(bset) == "never"


def test_damage_compares_sizes_always_and_checksums_when_asked(tmp_path):
    bset = write_set(tmp_path, BASE)
    assert retention.damage(bset) is None and retention.damage(bset, check=True) is None
    bset.files["data"].write_bytes(b"y" * 10)  # same size, other bytes
    assert retention.damage(bset) is None
    assert "sha256" in (retention.damage(bset, check=True) or "")
    bset.files["data"].write_bytes(b"y" * 3)
    assert "3 bytes" in (retention.damage(bset) or "")


def test_prune_deletes_only_what_decide_says_and_a_dry_run_nothing(tmp_path):
    old, new = write_set(tmp_path, BASE), write_set(tmp_path, BASE + timedelta(days=30))
    (tmp_path / "notes.txt").write_text("mine")
    policy, now = RetentionConfig(days=7), BASE + timedelta(days=31)
    dry = retention.prune(tmp_path, policy, now=now, dry_run=True)
    assert len(list(tmp_path.iterdir())) == 11
    # Both sets are verified: only the newest verified one is protected.
    result = retention.prune(tmp_path, policy, now=now)
    assert result.deleted_sets == dry.deleted_sets == [old.prefix]
    assert result.deleted_files == dry.deleted_files == 5
    assert {s.prefix for s in catalog.scan(tmp_path)} == {new.prefix}
    assert (tmp_path / "notes.txt").exists()


RULES = ("days", "keep_last", "keep_daily", "keep_weekly", "keep_monthly", "keep_yearly")


@given(st.fixed_dictionaries({k: st.integers(0, 50) for k in RULES}))
def test_a_policy_is_refused_only_when_every_rule_is_off(counts):
    policy = RetentionConfig(**counts)
    if any(counts.values()):
        retention.check_policy(policy)
    else:
        with pytest.raises(PgvaultError, match="keeps nothing"):
            retention.check_policy(policy)


@given(st.sampled_from(RULES), st.integers(-1000, -1))
def test_negative_counts_are_refused(rule, value):
    with pytest.raises(PgvaultError, match=f"retention.{rule} is {value}"):
        retention.check_policy(dataclasses.replace(RetentionConfig(days=7), **{rule: value}))


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"compression": "lz4"}, "compression"),
        ({"compression": None}, "compression"),
        ({"prefix": "backup-1999-01-01-000000"}, "backup-1999-01-01-000000"),
        ({"schema_post_data_offset": "x"}, "schema_post_data_offset"),
        ({"files": {}}, "no entry for"),
    ],
)
def test_an_odd_manifest_makes_a_damaged_set_that_is_kept(tmp_path, change, why):
    bset = write_set(tmp_path, BASE)
    mpath = bset.files["manifest"]
    manifest = json.loads(mpath.read_text())
    mpath.write_text(json.dumps({**manifest, **change}))
    (scanned,) = catalog.scan(tmp_path)
    assert scanned.manifest is None and why in (scanned.manifest_error or "")
    result = retention.prune(tmp_path, RetentionConfig(keep_last=1), now=BASE + timedelta(days=400))
    assert [d.keep for d in result.decisions] == [True] and result.deleted_sets == []


def test_a_second_data_file_is_the_users_and_survives_the_set(tmp_path):
    bset = write_set(tmp_path, BASE)
    extra = tmp_path / naming.file_name(bset.prefix, "data", "gzip")
    extra.write_bytes(b"a copy the user made")
    (scanned,) = catalog.scan(tmp_path)
    assert scanned.complete and scanned.files["data"].name.endswith("-data.sql")
    assert scanned.extras == [extra]
    retention.delete_set(scanned)
    assert [p.name for p in tmp_path.iterdir()] == [extra.name]


def test_a_platform_file_the_manifest_does_not_name_is_the_users(tmp_path):
    bset = write_set(tmp_path, BASE)
    stray = tmp_path / naming.file_name(bset.prefix, naming.PLATFORM)
    stray.write_bytes(b"not written by this set")
    (scanned,) = catalog.scan(tmp_path)
    assert scanned.complete and naming.PLATFORM not in scanned.files
    assert scanned.extras == [stray]
    retention.delete_set(scanned)
    assert [p.name for p in tmp_path.iterdir()] == [stray.name]


def test_a_platform_file_the_manifest_names_goes_with_its_set(tmp_path):
    bset = write_set(tmp_path, BASE)
    platform = tmp_path / naming.file_name(bset.prefix, naming.PLATFORM)
    platform.write_bytes(b"CREATE SCHEMA auth;\n")
    mpath = bset.files["manifest"]
    manifest = json.loads(mpath.read_text())
    manifest["files"][naming.PLATFORM] = {"name": platform.name, "size": 20, "sha256": "0" * 64}
    mpath.write_text(json.dumps(manifest))
    (scanned,) = catalog.scan(tmp_path)
    assert scanned.complete and scanned.files[naming.PLATFORM] == platform
    (tmp_path / platform.name).unlink()
    (missing,) = catalog.scan(tmp_path)
    assert not missing.complete and platform.name in missing.missing


def test_a_set_is_deleted_through_the_store_it_is_given(tmp_path):
    bset = write_set(tmp_path, BASE)
    calls: list[str] = []

    class Recording(LocalStore):
        def delete(self, name: str) -> None:
            calls.append(name)
            super().delete(name)

        def sync(self) -> None:
            calls.append("sync")
            super().sync()

    assert retention.delete_set(bset, Recording(tmp_path)) == len(calls) - 1
    assert calls[0].endswith("-manifest.json") and calls[1] == "sync"
    assert calls[-1].endswith("-verify.json") and list(tmp_path.iterdir()) == []


# -- Per source: a directory holding the sets of several databases -------------------

# Manifest fields naming a source: two databases on one server, the same name on another
# server, one socket path seen from two machines, and format-1 sets (no server recorded).
SOURCES: tuple[dict[str, Any], ...] = (
    {},
    {"database": "b"},
    {"server": "10.0.0.2:5432"},
    {"server": "/run/postgresql:5432", "host": "m1"},
    {"server": "/run/postgresql:5432", "host": "m2"},
    {"server": None, "format": 1},
    {"server": None, "format": 1, "database": "b"},
)


@st.composite
def mixed(draw: st.DrawFn, sources: tuple[dict[str, Any], ...] = SOURCES) -> Scenario:
    """A scenario whose sets come from several sources, interleaved in time."""
    sc = draw(scenarios())
    sets = []
    for s in sc.sets:
        fields = draw(st.sampled_from(sources))
        if s.manifest is not None:
            s.manifest = manifest(s.prefix, s.compression, **fields)
        sets.append(s)
    return Scenario(sets, sc.damaged, sc.verified, sc.now)


def by_source(
    sc: Scenario, policy: RetentionConfig, protect: str | None = None, **kw: Any
) -> list[retention.Decision]:
    return retention.decide_by_source(
        sc.sets, policy, sc.now, protect, damaged=sc.damaged, verified=sc.verified, **kw
    )


def groups(sets: list[catalog.BackupSet]) -> dict[object, list[catalog.BackupSet]]:
    out: dict[object, list[catalog.BackupSet]] = {}
    for s in sets:
        out.setdefault(s.source, []).append(s)
    return out


@many
@given(mixed(), policies)
def test_every_source_keeps_its_newest_complete_intact_and_verified_set(sc, policy):
    keep = kept(by_source(sc, policy))
    for group in groups(sc.sets).values():
        complete = [s.prefix for s in group if s.complete]
        good = [s.prefix for s in intact(sc) if s in group]
        checked = [p for p in complete if p in sc.verified]
        for newest in (complete, good, checked):
            if newest:
                assert max(newest) in keep


@many
@given(mixed(), policies, st.data())
def test_a_backup_deletes_only_sets_of_the_source_it_wrote(sc, policy, data):
    complete = [s for s in sc.sets if s.complete]
    if not complete:
        return
    just = data.draw(st.sampled_from(complete))
    decisions = by_source(sc, policy, just.prefix)
    source = {s.prefix: s.source for s in sc.sets}
    for d in decisions:
        if not d.keep:
            # Never another database's set, nor one whose source cannot be told.
            assert source[d.prefix] == just.source and just.source.known, d
    keep = kept(decisions)
    mine = [s.prefix for s in complete if s.source == just.source]
    assert just.prefix in keep and max(mine) in keep


@given(mixed(SOURCES[:1]), policies)
def test_with_one_source_the_decisions_are_those_of_decide(sc, policy):
    plain = sc.decide(policy)
    split = by_source(sc, policy)
    assert [(d.prefix, d.keep, d.reason, d.flagged) for d in split] == [
        (d.prefix, d.keep, d.reason, d.flagged) for d in plain
    ]


@many
@given(mixed(), policies, policies)
def test_per_source_a_policy_that_keeps_more_keeps_a_superset(sc, smaller, extra):
    fields = [f.name for f in dataclasses.fields(RetentionConfig)]
    larger = RetentionConfig(**{f: getattr(smaller, f) + getattr(extra, f) for f in fields})
    assert kept(by_source(sc, smaller)) <= kept(by_source(sc, larger))


@many
@given(mixed(), policies, st.data())
def test_stale_marks_delete_incomplete_sets_and_nothing_else(sc, policy, data):
    prefixes = [s.prefix for s in sc.sets]
    chosen = data.draw(st.lists(st.sampled_from(prefixes), unique=True)) if prefixes else []
    stale = dict.fromkeys(chosen, "stale")
    before = {d.prefix for d in by_source(sc, policy) if not d.keep}
    after = {d.prefix for d in by_source(sc, policy, stale=stale) if not d.keep}
    # Only sets with no manifest at all (readable or not) and a dated name can go.
    leftovers = {s.prefix for s in sc.sets if s.manifest is None and s.manifest_error is None}
    leftovers &= {s.prefix for s in sc.sets if s.time is not None}
    assert after == before | (set(stale) & leftovers)


@given(mixed(), policies)
def test_a_sources_decisions_do_not_depend_on_other_sources_sets(sc, policy):
    """Whatever other databases' sets are there, verified or not, and however new, each
    source's sets fare as if they were alone in the directory."""
    together = {d.prefix: d for d in by_source(sc, policy)}
    for group in groups(sc.sets).values():
        prefixes = {s.prefix for s in group}
        alone = Scenario(group, sc.damaged, sc.verified, sc.now)
        assert by_source(alone, policy) == [together[p] for p in sorted(prefixes, reverse=True)]


def test_the_issue_case_a_backup_of_b_keeps_as_ten_day_old_set():
    now = at("2026-11-20T00:00:00")
    a_old = make_set(now - timedelta(days=10))
    b_old = make_set(now - timedelta(days=12), database="b")
    b_new = make_set(now, database="b")
    decisions = retention.decide_by_source(
        [a_old, b_old, b_new], RetentionConfig(days=7), now, b_new.prefix
    )
    assert {d.prefix: d.keep for d in decisions} == {
        a_old.prefix: True,
        b_old.prefix: False,
        b_new.prefix: True,
    }
    labels = {d.source for d in decisions}
    assert labels == {"crm at 127.0.0.1:5432 on test", "b at 127.0.0.1:5432 on test"}


@pytest.mark.parametrize(
    ("server", "local"),
    [
        ("127.0.0.1:5432", True),
        ("127.0.1.1:5432", True),
        ("localhost:5432", True),
        ("::1:5432", True),
        ("[::1]:5432", True),
        ("/var/run/postgresql:5432", True),
        ("@abstract:5432", True),
        ("db.example.com:5432", False),
        ("10.0.0.2:6543", False),
    ],
)
def test_a_local_server_is_told_apart_by_the_machine(server, local):
    src = sources.at(server, "crm", "m1")
    assert src.known and (src.machine == "m1") == local
    assert (sources.at(server, "crm", "m2") == src) == (not local)


def test_format_1_sets_are_their_own_sources_by_target_and_database():
    one = make_set(BASE, server=None, format=1).source
    assert one is not None and not one.known and one.target == "local"
    assert "server not recorded" in one.label
    assert one != make_set(BASE).source
    assert one != make_set(BASE, server=None, format=1, target="other").source
    assert make_set(BASE, "no_manifest").source is None


# -- "latest": the configured target's newest set -----------------------------------

LATEST_SOURCES: tuple[dict[str, Any], ...] = (
    {"server": "10.0.0.1:5432", "database": "a"},
    {"server": "10.0.0.1:5432", "database": "b"},
    {"server": "10.0.0.2:5432", "database": "a"},
    {"server": None, "format": 1, "database": "a"},
    {"kind": "safety", "server": "10.0.0.1:5432", "database": "a"},
)
TARGETS = ("10.0.0.1:5432/a", "10.0.0.1:5432/b", "10.0.0.2:5432/a", "10.0.0.9:5432/z")


@many
@given(mixed(LATEST_SOURCES), st.sampled_from(TARGETS))
def test_latest_is_the_targets_newest_set_and_never_another_databases(sc, where):
    target = TargetConfig(name="t", url=f"postgresql://u@{where}")
    want = sources.of_target(target)
    assert want is not None and want.known
    sets = sorted(sc.sets, key=lambda s: s.prefix, reverse=True)
    regular = [s for s in sets if s.complete and s.kind == "regular"]
    mine = [s for s in regular if s.source == want]
    known = {s.source for s in regular if s.source is not None and s.source.known}
    try:
        chosen = catalog.latest(sets, Path("/backups"), target)
    except ConfigError as e:
        assert not mine and len(known) > 1, e
        assert "ambiguous" in e.what
        return
    except NotFound:
        assert not regular
        return
    if mine:
        assert chosen is mine[0]
    else:
        # Another source's set only when the directory holds no other known one.
        assert len(known) <= 1 and chosen is regular[0]


def test_latest_without_a_target_is_refused_when_two_databases_share_the_dir():
    a = make_set(BASE)
    b = make_set(BASE + timedelta(hours=1), database="b")
    with pytest.raises(ConfigError, match=r"ambiguous.*2 databases"):
        catalog.latest([b, a], Path("/backups"), None)
    assert catalog.latest([a], Path("/backups"), None) is a
    # Format-1 sets of another database do not make it ambiguous: no source is known.
    old_b = make_set(BASE - timedelta(days=1), server=None, format=1, database="b")
    assert catalog.latest([a, old_b], Path("/backups"), None) is a


# -- prune incomplete=true -----------------------------------------------------------

DAY = timedelta(days=1)
NOW = datetime(2026, 11, 20, tzinfo=UTC)


def leftover(directory: Path, when: datetime, kinds: tuple[str, ...], age: timedelta) -> str:
    """The files a backup killed before its manifest leaves (a kind ending in .partial is
    a partial file), with mtimes age before NOW; returns the prefix."""
    prefix = naming.format_prefix(when)
    for kind in kinds:
        base, _, partial = kind.partition(".")
        path = directory / (naming.file_name(prefix, base) + ("." + partial if partial else ""))
        path.write_bytes(b"-- killed\n")
        os.utime(path, ((NOW - age).timestamp(),) * 2)
    return prefix


def stale_of(directory: Path, *, locked: bool = False) -> set[str]:
    return set(retention.stale_incomplete(catalog.scan(directory), NOW, locked=locked))


def test_only_incomplete_sets_old_by_name_and_by_mtime_are_stale(tmp_path):
    kinds = ("roles", "schema", "data")
    old = leftover(tmp_path, NOW - 3 * DAY, kinds, 2 * DAY)
    touched = leftover(tmp_path, NOW - 4 * DAY, kinds, 2 * DAY)
    os.utime(tmp_path / naming.file_name(touched, "data"))  # written to just now
    young_name = leftover(tmp_path, NOW - DAY / 2, kinds, 2 * DAY)
    partial = leftover(tmp_path, NOW - 5 * DAY, ("roles", "data.partial"), 3 * DAY)
    verify_only = leftover(tmp_path, NOW - 6 * DAY, ("verify",), 3 * DAY)
    complete = write_set(tmp_path, NOW - 30 * DAY).prefix
    assert stale_of(tmp_path) == {old, partial, verify_only}
    assert complete not in stale_of(tmp_path)
    assert young_name not in stale_of(tmp_path)


def test_a_set_with_a_manifest_or_a_second_data_file_is_never_stale(tmp_path):
    missing = write_set(tmp_path, NOW - 9 * DAY)
    missing.files["data"].unlink()  # a manifest, a file gone: the user's to look at
    damaged = write_set(tmp_path, NOW - 8 * DAY)
    damaged.files["manifest"].write_text("{")
    two = leftover(tmp_path, NOW - 7 * DAY, ("roles", "data"), 2 * DAY)
    copy = tmp_path / naming.file_name(two, "data", "gzip")
    copy.write_bytes(b"the user's copy")
    os.utime(copy, (0, 0))
    for p in tmp_path.iterdir():
        os.utime(p, (0, 0))
    assert stale_of(tmp_path) == set()


def test_an_in_progress_set_is_never_stale(tmp_path):
    older = leftover(tmp_path, NOW - 4 * DAY, ("roles", "schema"), 2 * DAY)
    newest = leftover(tmp_path, NOW - 3 * DAY, ("roles", "schema", "data"), 2 * DAY)
    assert stale_of(tmp_path) == {older, newest}
    # While a backup holds the directory, its set is the newest without a manifest (or
    # has .partial files): that one stays, an older leftover goes.
    assert stale_of(tmp_path, locked=True) == {older}
    partial = leftover(tmp_path, NOW - 5 * DAY, ("data.partial",), 2 * DAY)
    assert partial not in stale_of(tmp_path, locked=True)


def test_prune_incomplete_deletes_leftovers_only_and_a_dry_run_nothing(tmp_path):
    kept_set = write_set(tmp_path, NOW - 2 * DAY)
    gone = leftover(tmp_path, NOW - 3 * DAY, ("roles", "schema", "data.partial"), 2 * DAY)
    foreign = tmp_path / "backup-2001-01-01-000000-data.sql.bak"
    foreign.write_text("mine")
    os.utime(foreign, (0, 0))
    policy = RetentionConfig(days=7)
    before = sorted(p.name for p in tmp_path.iterdir())
    plain = retention.prune(tmp_path, policy, now=NOW)
    assert plain.deleted_sets == [] and sorted(p.name for p in tmp_path.iterdir()) == before
    (flag,) = [d for d in plain.decisions if d.prefix == gone]
    assert flag.keep and flag.flagged
    dry = retention.prune(tmp_path, policy, now=NOW, dry_run=True, incomplete=True)
    assert dry.deleted_sets == dry.deleted_incomplete == [gone] and dry.deleted_files == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    real = retention.prune(tmp_path, policy, now=NOW, incomplete=True)
    assert real.deleted_sets == [gone] and real.deleted_files == 3
    assert {s.prefix for s in catalog.scan(tmp_path)} == {kept_set.prefix}
    assert foreign.read_text() == "mine"


# -- dir= is never the root or a system directory ------------------------------------

# Path segments: any name but "." and ".." (which leave the directory they are under).
segments = st.text(st.characters(codec="utf-8", exclude_characters="/\x00"), min_size=1).filter(
    lambda s: s not in (".", "..")
)


@given(st.sampled_from(catalog.PSEUDO_FS), st.lists(segments, max_size=4))
def test_anything_under_dev_proc_and_sys_is_refused(top, parts):
    path = Path(top, *parts)
    with pytest.raises(ConfigError, match=r"is (inside|the system directory) /(dev|proc|sys)"):
        catalog.backup_dir(str(path), create=False)


@pytest.mark.parametrize("value", [*sorted(catalog.SYSTEM_DIRS), "//", "/usr/../etc", "/etc/."])
def test_the_root_and_system_directories_are_refused(value):
    with pytest.raises(ConfigError, match=r"filesystem root|system directory"):
        catalog.backup_dir(value, create=True)


@given(st.lists(segments, min_size=1, max_size=3))
def test_a_directory_of_its_own_is_accepted(tmp_path_factory, parts):
    base = tmp_path_factory.getbasetemp()
    assert catalog.system_dir(Path(base, *parts)) is None
    for mine in ("/var/backups/pgvault", "/usr/local/backups", "/srv/db", "/home/u/bk"):
        assert catalog.system_dir(Path(mine)) is None


def test_a_symlink_to_a_system_directory_is_refused(tmp_path):
    (tmp_path / "bk").symlink_to("/dev")
    with pytest.raises(ConfigError, match="/dev"):
        catalog.backup_dir(str(tmp_path / "bk"), create=True)
    with pytest.raises(ConfigError, match="/proc"):
        catalog.resolve_prefix("/proc/backup-2026-01-01-000000", None)
