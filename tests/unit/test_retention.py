"""Retention: the invariants of decide() as hypothesis properties over arbitrary sets,
clocks and policies (sets built in memory), one example per rule, and the few helpers
that touch files (deletion order, verify records, damage)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pgvault import catalog, naming, retention
from pgvault.config import RetentionConfig
from pgvault.errors import PgvaultError
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
) -> catalog.BackupSet:
    """A set as catalog.scan would return it for files in the given state."""
    if isinstance(prefix, datetime):
        prefix = naming.format_prefix(prefix)
    names = {k: naming.file_name(prefix, k, compression) for k in (*naming.SQL_KINDS, "manifest")}
    files = {k: directory / n for k, n in names.items()}
    bset = catalog.BackupSet(prefix, directory, files, manifest=manifest(prefix, compression))
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
