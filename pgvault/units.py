"""Durations and sizes as people write them in config: 90s, 30m, 26h, 8d, 2w (lower
case: m is minutes, never months); 512KB, 64MB, 2GB (1024-based, as df -h counts; any
case). What status prints for people (3 min, 5.2 h, 64.0 MB) is rounded, not config."""

from __future__ import annotations

import re

from pgvault.errors import ConfigError

SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}
BYTES = {"B": 1, "KB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30, "TB": 1 << 40}

_DURATION = re.compile(r"(\d{1,9}) ?([smhdw])", re.ASCII)
_SIZE = re.compile(r"(\d{1,12}) ?(B|KB|MB|GB|TB)", re.IGNORECASE | re.ASCII)


def parse_duration(text: str, key: str) -> int:
    """Seconds in "26h"; key names the setting in the error."""
    m = _DURATION.fullmatch(text.strip())
    if m is None:
        raise ConfigError(
            f"{key}='{text}' is not a duration", "write a number and a unit: 90s, 30m, 26h, 8d, 2w"
        )
    return int(m.group(1)) * SECONDS[m.group(2)]


def parse_size(text: str, key: str) -> int:
    """Bytes in "64MB"; key names the setting in the error."""
    m = _SIZE.fullmatch(text.strip())
    if m is None:
        raise ConfigError(
            f"{key}='{text}' is not a size", "write a number and a unit: 512KB, 64MB, 2GB"
        )
    return int(m.group(1)) * BYTES[m.group(2).upper()]


def duration(seconds: float) -> str:
    """A short age for people: "3 min", "5.2 h", "2.0 d"."""
    s = max(0.0, seconds)
    if s < 120:
        return f"{s:.0f} s"
    if s < 7200:
        return f"{s / 60:.0f} min"
    if s < 2 * 86_400:
        return f"{s / 3600:.1f} h"
    return f"{s / 86_400:.1f} d"


def size(n: int) -> str:
    """Bytes for people in the units parse_size reads: "64.0 MB"."""
    value = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if abs(value) < 1024:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TB"
