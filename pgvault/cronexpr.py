"""Five-field cron expressions: parse and check them, tell whether a minute matches, and
say the same schedule in systemd's OnCalendar, launchd's StartCalendarInterval and
schtasks' terms (pure functions; a bad expression is a CronError with the reason). Then
the crontab itself: pgvault's marked entries put in or taken out, every other line kept.

The day rule is Vixie cron's (Debian's cron, cronie): when either day field starts with
`*` a day must match both, otherwise either one (`0 2 1 * mon`: the 1st and every Monday).
"""

from __future__ import annotations

import itertools
import re
import shlex
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from pgvault.errors import PgvaultError

# Runs a scheduler's program (crontab, systemctl, launchctl) with an optional stdin.
Runner = Callable[[list[str], str | None], "subprocess.CompletedProcess[str]"]
# The comment line before each of pgvault's crontab lines, naming its entry.
CRON_MARK = "# pgvault:"

FIELDS = (
    ("minute", 0, 59),
    ("hour", 0, 23),
    ("day of month", 1, 31),
    ("month", 1, 12),
    ("day of week", 0, 7),
)
MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
WEEKDAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
NAMES = {3: {m: i + 1 for i, m in enumerate(MONTHS)}, 4: {d: i for i, d in enumerate(WEEKDAYS)}}
# The longest day each month can have (February's 29th comes in leap years).
MONTH_DAYS = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)
ALIASES = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
HINT = (
    "five fields: minute 0-59, hour 0-23, day of month 1-31, month 1-12 or jan-dec, "
    "day of week 0-7 or sun-sat; each *, a number, a range a-b, a step */n or a-b/n, "
    "or a list of those, e.g. '30 2 * * mon-fri'"
)
_ITEM = re.compile(r"(?P<base>\*|[0-9a-z]+(?:-[0-9a-z]+)?)(?:/(?P<step>[0-9]+))?")


class CronError(ValueError):
    """Why an expression is not a valid five-field cron expression."""


@dataclass(frozen=True)
class Cron:
    """The minutes an expression names; weekdays 0-6 with Sunday 0."""

    text: str
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]
    day_star: bool  # the day-of-month field starts with * (then days AND weekdays)
    weekday_star: bool

    @property
    def either_day(self) -> bool:
        """Whether a day runs when its day of month OR its weekday matches."""
        return not (self.day_star or self.weekday_star)

    def matches(self, when: datetime) -> bool:
        if when.minute not in self.minutes or when.hour not in self.hours:
            return False
        if when.month not in self.months:
            return False
        by_day = when.day in self.days
        by_weekday = when.isoweekday() % 7 in self.weekdays
        return (by_day or by_weekday) if self.either_day else (by_day and by_weekday)


def full(index: int) -> frozenset[int]:
    _, lo, hi = FIELDS[index]
    return frozenset(range(lo, min(hi, 6) + 1 if index == 4 else hi + 1))


def parse(text: str) -> Cron:
    """The expression's schedule; CronError naming the first thing wrong with it."""
    words = text.split()
    if len(words) == 1 and words[0].startswith("@"):
        if words[0].lower() not in ALIASES:
            raise CronError(f"{words[0]} is not one of {', '.join(ALIASES)}")
        words = ALIASES[words[0].lower()].split()
    if len(words) != 5:
        raise CronError(f"it has {len(words)} fields, not 5")
    m, h, dom, mon, dow = (parse_field(word, i) for i, word in enumerate(words))
    star = (words[2].startswith("*"), words[4].startswith("*"))
    cron = Cron(text, m, h, dom, mon, dow, day_star=star[0], weekday_star=star[1])
    if cron.either_day:  # every month has every weekday
        return cron
    if not any(d <= MONTH_DAYS[m - 1] for m in cron.months for d in cron.days):
        days = ",".join(str(d) for d in sorted(cron.days))
        months = ",".join(MONTHS[m - 1] for m in sorted(cron.months))
        raise CronError(f"it never runs: no day {days} in {months}")
    return cron


def parse_field(word: str, index: int) -> frozenset[int]:
    name, lo, hi = FIELDS[index]
    out: set[int] = set()
    for item in word.lower().split(","):
        m = _ITEM.fullmatch(item)
        if m is None:
            shown = f"an empty item in {name} '{word}'" if item == "" else f"{name} '{item}'"
            raise CronError(f"{shown} is not *, a number, a range or a step")
        base, step_text = m.group("base"), m.group("step")
        if base == "*":
            first, last = lo, hi
        elif "-" in base:
            a, b = base.split("-")
            first, last = value(a, index), value(b, index)
            if first > last:
                raise CronError(f"{name} range {base} runs backwards")
        else:
            first = last = value(base, index)
            if step_text is not None:
                raise CronError(
                    f"{name} '{item}' has a step without a range: write {base}-{hi}/{step_text}"
                )
        step = 1 if step_text is None else int(step_text)
        if step == 0:
            raise CronError(f"{name} '{item}' has a step of 0")
        if step > hi - lo + 1:
            raise CronError(f"{name} '{item}' steps by {step}, more than {name} spans")
        out.update(range(first, last + 1, step))
    if index == 4 and 7 in out:  # Sunday is both 0 and 7
        out = (out - {7}) | {0}
    return frozenset(out)


def value(word: str, index: int) -> int:
    name, lo, hi = FIELDS[index]
    names = NAMES.get(index, {})
    if word in names:
        return names[word]
    if not word.isdigit():
        extra = (" or jan-dec" if index == 3 else " or sun-sat") if names else ""
        raise CronError(f"{name} '{word}' is not a number{extra}")
    n = int(word)
    if not lo <= n <= hi:
        raise CronError(f"{name} {n} is out of {lo}-{hi}")
    return n


def daily(at: str) -> Cron:
    """HH:MM (H:MM too) as a daily cron expression; CronError when it is no time of day."""
    m = re.fullmatch(r"([0-9]{1,2}):([0-9]{2})", at.strip())
    if m is None:
        raise CronError("it is not HH:MM")
    hour, minute = int(m.group(1)), int(m.group(2))
    if hour > 23 or minute > 59:
        raise CronError("it is not a time from 00:00 to 23:59")
    return parse(f"{minute} {hour} * * *")


# -- The same schedule elsewhere ------------------------------------------------------------


def _numbers(values: frozenset[int], index: int) -> str:
    """systemd's list of values: '*', or runs as a..b, two digits each."""
    if values == full(index):
        return "*"
    ordered = sorted(values)
    parts = []
    for _, run in itertools.groupby(enumerate(ordered), key=lambda p: p[1] - p[0]):
        got = [v for _, v in run]
        if len(got) >= 3:
            parts.append(f"{got[0]:02d}..{got[-1]:02d}")
        else:
            parts.extend(f"{v:02d}" for v in got)
    return ",".join(parts)


SYSTEMD_DAYS = ("Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat")


def on_calendar(cron: Cron) -> list[str]:
    """systemd OnCalendar= values whose union runs exactly when cron does (a timer takes
    several; cron's day OR needs two, as OnCalendar ANDs a weekday with the date)."""
    time = f"{_numbers(cron.hours, 1)}:{_numbers(cron.minutes, 0)}:00"
    months = _numbers(cron.months, 3)
    weekdays = ",".join(SYSTEMD_DAYS[d] for d in sorted(cron.weekdays))
    every_weekday = cron.weekdays == full(4)
    if cron.either_day:
        by_day = f"*-{months}-{_numbers(cron.days, 2)} {time}"
        by_weekday = ("" if every_weekday else weekdays + " ") + f"*-{months}-* {time}"
        return [by_day, by_weekday]
    lead = "" if every_weekday else weekdays + " "
    return [f"{lead}*-{months}-{_numbers(cron.days, 2)} {time}"]


MAX_INTERVALS = 500


def launchd_intervals(cron: Cron) -> list[dict[str, int]]:
    """launchd StartCalendarInterval dicts whose union runs when cron does; a missing key
    is any value. CronError when launchd cannot say it (a day AND a weekday, or too many)."""
    times = [
        [("Minute", m) for m in sorted(cron.minutes)] if cron.minutes != full(0) else [],
        [("Hour", h) for h in sorted(cron.hours)] if cron.hours != full(1) else [],
        [("Month", m) for m in sorted(cron.months)] if cron.months != full(3) else [],
    ]
    by_day = [("Day", d) for d in sorted(cron.days)] if cron.days != full(2) else []
    by_weekday = [("Weekday", d) for d in sorted(cron.weekdays)] if cron.weekdays != full(4) else []
    if cron.either_day:
        choices = [by_day, by_weekday] if by_day and by_weekday else [[]]
    elif by_day and by_weekday:
        raise CronError("launchd cannot run only on days matching both day of month and weekday")
    else:
        choices = [by_day or by_weekday]
    out: list[dict[str, int]] = []
    for days in choices:
        axes = [axis for axis in [*times, days] if axis]
        out.extend(dict(combo) for combo in itertools.product(*axes))
        if len(out) > MAX_INTERVALS:
            raise CronError(f"launchd would need more than {MAX_INTERVALS} calendar intervals")
    return out or [{}]


SCHTASKS_DAYS = ("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT")


def schtasks_args(cron: Cron) -> list[str]:
    """schtasks /Create's schedule options; CronError for what one task cannot say."""
    if len(cron.minutes) != 1 or len(cron.hours) != 1:
        raise CronError("a Windows task runs at one time of day: give one minute and one hour")
    at = ["/ST", f"{min(cron.hours):02d}:{min(cron.minutes):02d}"]
    all_days, all_weekdays = cron.days == full(2), cron.weekdays == full(4)
    all_months = cron.months == full(3)
    if cron.either_day and not all_weekdays:
        raise CronError("a Windows task cannot run on a day of month OR a weekday")
    if all_days and all_weekdays and all_months:
        return ["/SC", "DAILY", *at]
    if all_days and all_months:
        return [
            "/SC",
            "WEEKLY",
            "/D",
            ",".join(SCHTASKS_DAYS[d] for d in sorted(cron.weekdays)),
            *at,
        ]
    if all_weekdays and not all_days:
        months = (
            []
            if all_months
            else ["/M", ",".join(MONTHS[m - 1].upper() for m in sorted(cron.months))]
        )
        return ["/SC", "MONTHLY", "/D", ",".join(str(d) for d in sorted(cron.days)), *months, *at]
    raise CronError("a Windows task cannot say this: use every day, some weekdays, or some days")


# -- The crontab ----------------------------------------------------------------------------


def run_program(args: list[str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run a scheduler's program; PgvaultError when it is missing or hangs."""
    try:
        if stdin is None:
            return subprocess.run(
                args, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60
            )
        return subprocess.run(args, input=stdin, capture_output=True, text=True, timeout=60)
    except FileNotFoundError:
        raise PgvaultError(
            f"{args[0]} is not installed", f"install it to schedule with {args[0]}"
        ) from None
    except subprocess.TimeoutExpired:
        raise PgvaultError(f"`{shlex.join(args)}` did not answer in 60s", "try again") from None


def check(run: Runner, args: list[str], stdin: str | None = None) -> str:
    res = run(args, stdin)
    if res.returncode != 0:
        why = (res.stderr or res.stdout).strip() or f"exit status {res.returncode}"
        raise PgvaultError(f"`{shlex.join(args)}` failed: {why}", "nothing of it was kept")
    return res.stdout


def crontab_args(user: str | None, *rest: str) -> list[str]:
    return ["crontab", *(["-u", user] if user else []), *rest]


def crontab_read(user: str | None = None, run: Runner = run_program) -> str:
    res = run(crontab_args(user, "-l"), None)
    if res.returncode != 0:
        if "no crontab for" in res.stderr:
            return ""
        raise PgvaultError(
            f"`crontab -l` failed: {res.stderr.strip()}", "check that cron is installed"
        )
    return res.stdout


def crontab_replace(table: str, blocks: dict[str, str | None]) -> str:
    """The table with each named block put in place (None: removed; new ones appended);
    every other line byte for byte as it was."""
    lines = table.splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n"
    out: list[str] = []
    placed: set[str] = set()
    i = 0
    while i < len(lines):
        line = lines[i]
        name = cron_marks(line)
        if name is None or name not in blocks:
            out.append(line)
            i += 1
            continue
        follows = lines[i + 1] if i + 1 < len(lines) else ""
        # The line under our marker is ours only if it looks like our command: a user
        # who deleted it and kept the marker must not lose the job that came next.
        i += 2 if is_our_command(follows) else 1
        block = blocks[name]
        if block is not None and name not in placed:
            out.append(block)
            placed.add(name)
    out.extend(b for n, b in blocks.items() if b is not None and n not in placed)
    return "".join(out)


def is_our_command(line: str) -> bool:
    """Whether a crontab line is the command a pgvault block writes."""
    text = line.strip()
    return bool(text) and not text.startswith("#") and "pgvault" in text and "log.file=" in text


def cron_marks(line: str) -> str | None:
    """The entry a crontab line marks as pgvault's, else None."""
    if not line.startswith(CRON_MARK):
        return None
    return line[len(CRON_MARK) :].split(" ", 1)[0].strip() or None


def crontab_apply(
    blocks: dict[str, str | None], user: str | None = None, run: Runner = run_program
) -> tuple[bool, str]:
    """Put the blocks into the crontab of user (None: ours); (whether it changed, the
    table before)."""
    table = crontab_read(user, run)
    new = crontab_replace(table, blocks)
    if new != table:
        check(run, crontab_args(user, "-"), new)
    return new != table, table
