from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from hypothesis import given
from hypothesis import strategies as st

from pgvault import naming

times = st.datetimes(
    min_value=datetime(1970, 1, 1), max_value=datetime(9998, 12, 31), timezones=st.just(UTC)
).map(lambda t: t.replace(microsecond=0))
zones = st.integers(-14 * 60, 14 * 60).map(lambda m: timezone(timedelta(minutes=m)))


@given(times)
def test_prefix_round_trips(when):
    assert naming.parse_prefix(naming.format_prefix(when)) == when


@given(times, zones)
def test_prefix_is_utc_whatever_the_zone(when, zone):
    assert naming.format_prefix(when.astimezone(zone)) == naming.format_prefix(when)


@given(st.lists(times, min_size=2, max_size=20, unique=True))
def test_newest_first_is_chronological(whens):
    prefixes = [naming.format_prefix(w) for w in whens]
    ordered = naming.sort_newest_first(prefixes)
    assert [naming.parse_prefix(p) for p in ordered] == sorted(whens, reverse=True)


@given(times, st.sampled_from(["none", "gzip", "zstd"]), st.sampled_from(naming.KINDS))
def test_file_names_parse_back(when, compression, kind):
    prefix = naming.format_prefix(when)
    name = naming.file_name(prefix, kind, compression)
    parsed = naming.parse_file_name(name)
    assert parsed is not None
    assert (parsed.prefix, parsed.kind, parsed.partial) == (prefix, kind, False)
    if kind == "data":
        assert parsed.compression == compression
    partial = naming.parse_file_name(name + naming.PARTIAL_SUFFIX)
    assert partial is not None and partial.partial


@given(st.text(max_size=60))
def test_foreign_names_are_not_ours(text):
    parsed = naming.parse_file_name(text)
    if parsed is not None:
        # Anything we claim must be exactly a name we would write.
        rebuilt = naming.file_name(parsed.prefix, parsed.kind, parsed.compression)
        assert text in (rebuilt, rebuilt + naming.PARTIAL_SUFFIX)


def test_names_that_look_close_are_rejected():
    for name in [
        "backup-2024-01-01-000000-data.sql.bak",
        "backup-2024-01-01-000000-data.sql.lz4",
        "xbackup-2024-01-01-000000-roles.sql",
        "backup-2024-01-01-00000-roles.sql",
        "backup-2024-01-01-000000-users.sql",
        "notes.txt",
    ]:
        assert naming.parse_file_name(name) is None, name


def test_impossible_dates_are_ours_but_unparseable():
    parsed = naming.parse_file_name("backup-2024-13-45-256199-roles.sql")
    assert parsed is not None
    assert not naming.is_prefix(parsed.prefix)
    for bad in ["backup-2024-13-01-000000", "../backup-2024-01-01-000000", "backup-1-2-3"]:
        assert not naming.is_prefix(bad)


def test_naive_datetimes_are_refused():
    import pytest

    with pytest.raises(ValueError):
        naming.format_prefix(datetime(2024, 1, 1))


@given(st.integers(1, 9999), st.integers(-14 * 60, 14 * 60))
def test_a_parsed_time_shows_in_any_time_zone(year, minutes):
    """A name dated at the calendar's edge must not crash list or restore when they
    show it in local time: such names are not pgvault's (the set is unparseable)."""
    prefix = f"backup-{year:04d}-12-31-235959"
    try:
        t = naming.parse_prefix(prefix)
    except ValueError:
        assert not naming.YEARS[0] <= year <= naming.YEARS[1]
        return
    assert t.astimezone(timezone(timedelta(minutes=minutes))).year in (year, year + 1)
    assert t.replace(month=1, day=1, hour=0, minute=0, second=0).astimezone(
        timezone(timedelta(minutes=minutes))
    )
