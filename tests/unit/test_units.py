"""Durations and sizes as config spells them: every valid spelling reads as its value,
everything else is refused in one line that names the key."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pgvault import units
from pgvault.errors import ConfigError

UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 7 * 86_400}
UNIT_BYTES = {"B": 1, "KB": 1024, "MB": 1024**2, "GB": 1024**3, "TB": 1024**4}


@given(st.integers(0, 10**9 - 1), st.sampled_from(sorted(UNIT_SECONDS)), st.sampled_from(["", " "]))
def test_a_duration_reads_as_its_seconds(n, unit, space):
    assert units.parse_duration(f"{n}{space}{unit}", "monitor.max_age") == n * UNIT_SECONDS[unit]


@given(st.integers(0, 10**12 - 1), st.sampled_from(sorted(UNIT_BYTES)), st.booleans())
def test_a_size_reads_as_its_bytes_in_either_case(n, unit, lower):
    text = f"{n}{unit.lower() if lower else unit}"
    assert units.parse_size(text, "monitor.min_free") == n * UNIT_BYTES[unit]


@given(st.text(max_size=12))
def test_anything_else_is_refused_in_one_line_naming_the_key(text):
    stripped = text.strip()
    valid_duration = (
        stripped[-1:] in UNIT_SECONDS
        and stripped[:-1].strip().isascii()
        and stripped[:-1].strip().isdigit()
        and len(stripped[:-1].strip()) <= 9
    )
    if valid_duration:
        return
    with pytest.raises(ConfigError) as e:
        units.parse_duration(text, "monitor.max_age")
    line = e.value.line()
    assert "\n" not in line and "monitor.max_age" in line and "26h" in line


@pytest.mark.parametrize("text", ["26", "h", "-1h", "1.5h", "26 hours", "1e3s", "٣h", "26h26m"])
def test_known_bad_durations(text):
    with pytest.raises(ConfigError, match="is not a duration"):
        units.parse_duration(text, "monitor.max_age")


@pytest.mark.parametrize("text", ["64", "MB", "-1MB", "1.5GB", "64 megabytes", "1PB", "64M"])
def test_known_bad_sizes(text):
    with pytest.raises(ConfigError, match="is not a size"):
        units.parse_size(text, "monitor.min_free")


@given(st.integers(0, 1 << 50))
def test_a_printed_size_is_within_a_tenth_of_a_unit(n):
    number, unit = units.size(n).split()
    assert abs(float(number) * UNIT_BYTES[unit] - n) <= 0.05 * UNIT_BYTES[unit] + 0.5
