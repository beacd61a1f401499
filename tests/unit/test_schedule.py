"""pgvault schedule: the cron parser and its translations (hypothesis), the rendered
units, plists, crontab lines and schtasks lines parsed back, and the systemd install path
with its systemctl calls recorded (no user systemd runs in this container)."""

from __future__ import annotations

import itertools
import os
import plistlib
import re
import shlex
import shutil
import subprocess
from dataclasses import replace
from datetime import date, datetime, timedelta
from pathlib import Path

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pgvault import agents as filed
from pgvault import cronexpr, schedule
from pgvault.config import PgvaultConfig, ScheduleVerify
from pgvault.cronexpr import CronError
from pgvault.errors import ConfigError, PgvaultError, Refused
from pgvault.ui import Reporter

FIELDS = cronexpr.FIELDS

# -- Generated expressions ------------------------------------------------------------------


@st.composite
def cron_item(draw, index: int) -> tuple[str, set[int]]:
    """One list item of a field, and the values it means (weekday 7 as 7)."""
    _, lo, hi = FIELDS[index]
    names = {3: cronexpr.MONTHS, 4: cronexpr.WEEKDAYS}.get(index)

    def word(n: int) -> str:
        if names and n < len(names) + (index == 3) and draw(st.booleans()):
            return (
                names[n - 1 if index == 3 else n].upper()
                if draw(st.booleans())
                else names[n - 1 if index == 3 else n]
            )
        return str(n)

    kind = draw(st.sampled_from(["star", "one", "range", "star-step", "range-step"]))
    if kind == "star":
        return "*", set(range(lo, hi + 1))
    a = draw(st.integers(lo, hi))
    if kind == "one":
        return word(a), {a}
    b = draw(st.integers(a, hi))
    step = draw(st.integers(1, hi - lo + 1))
    if kind == "range":
        return f"{word(a)}-{word(b)}", set(range(a, b + 1))
    if kind == "star-step":
        return f"*/{step}", set(range(lo, hi + 1, step))
    return f"{word(a)}-{word(b)}/{step}", set(range(a, b + 1, step))


@st.composite
def cron_field(draw, index: int) -> tuple[str, set[int]]:
    items = draw(st.lists(cron_item(index), min_size=1, max_size=3))
    values = set().union(*(v for _, v in items))
    if index == 4 and 7 in values:
        values = (values - {7}) | {0}
    return ",".join(t for t, _ in items), values


@st.composite
def cron_text(draw) -> tuple[str, list[set[int]]]:
    """A valid expression (one that runs at all) and its five sets."""
    fields = [draw(cron_field(i)) for i in range(5)]
    text = " ".join(t for t, _ in fields)
    either = not (fields[2][0].startswith("*") or fields[4][0].startswith("*"))
    runs = either or any(
        d <= cronexpr.MONTH_DAYS[m - 1] for m in fields[3][1] for d in fields[2][1]
    )
    if not runs:
        fields[2] = ("*", set(range(1, 32)))
        text = " ".join(t for t, _ in fields)
    return text, [v for _, v in fields]


@given(cron_text())
def test_valid_expressions_parse_to_their_sets(case):
    text, sets = case
    c = cronexpr.parse(text)
    assert [set(c.minutes), set(c.hours), set(c.days), set(c.months), set(c.weekdays)] == sets


@given(st.integers(0, 4), st.data())
def test_out_of_range_values_are_refused_with_the_field_and_range(index, data):
    name, lo, hi = FIELDS[index]
    bad = data.draw(
        st.one_of(st.integers(hi + 1, 10_000), st.integers(0, lo - 1) if lo else st.nothing())
    )
    good = data.draw(st.integers(lo, hi))
    form = data.draw(st.sampled_from(["{b}", "{g}-{b}", "{b},{g}", "{g},{b}-{b}/2"]))
    words = ["0", "2", "*", "*", "*"]
    words[index] = form.format(b=bad, g=good)
    with pytest.raises(CronError) as e:
        cronexpr.parse(" ".join(words))
    assert str(e.value) == f"{name} {bad} is out of {lo}-{hi}"


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("0 25 * * *", "hour 25 is out of 0-23"),
        ("* * * *", "it has 4 fields, not 5"),
        ("0 2 * * * *", "it has 6 fields, not 5"),
        ("0 0 30 feb *", "it never runs: no day 30 in feb"),
        ("5/10 * * * *", "minute '5/10' has a step without a range: write 5-59/10"),
        ("*/0 * * * *", "minute '*/0' has a step of 0"),
        ("0 0 * * fri-mon", "day of week range fri-mon runs backwards"),
        ("0 0 * foo *", "month 'foo' is not a number or jan-dec"),
        ("0 0 1,,2 * *", "an empty item in day of month '1,,2' is not *"),
        ("@reboot", "@reboot is not one of @yearly"),
        ("-1 * * * *", "minute '-1' is not *"),
    ],
)
def test_bad_expressions_give_the_reason(text, reason):
    with pytest.raises(CronError) as e:
        cronexpr.parse(text)
    assert str(e.value).startswith(reason)


def test_cron_day_rule_is_vixies():
    # Both day fields restricted: the 1st OR a Monday; a * in either: both must hold.
    either = cronexpr.parse("0 2 1 * mon")
    assert either.matches(datetime(2026, 6, 1, 2, 0)) and either.matches(datetime(2026, 6, 8, 2))
    assert not either.matches(datetime(2026, 6, 9, 2))
    both = cronexpr.parse("0 2 */2 * mon")
    assert both.matches(datetime(2026, 6, 1, 2)) and not both.matches(datetime(2026, 6, 8, 2))
    assert cronexpr.parse("0 0 * * 7").weekdays == {0}
    assert cronexpr.parse("@daily").minutes == {0} and cronexpr.daily("7:05").hours == {7}
    for bad in ("24:00", "12:60", "noon", "1200"):
        with pytest.raises(CronError):
            cronexpr.daily(bad)


# -- OnCalendar and launchd, parsed back -----------------------------------------------------

DAYS = [date(2027, 1, 1) + timedelta(days=i) for i in range(731)]  # 2028 has a Feb 29th


def _values(text: str, lo: int, hi: int, names: tuple[str, ...] = ()) -> set[int]:
    """A component of a calendar spec as written by our renderer."""
    if text == "*":
        return set(range(lo, hi + 1))
    out: set[int] = set()
    for part in text.split(","):
        a, _, b = part.partition("..")
        conv = (lambda w: names.index(w)) if names else int
        out |= set(range(conv(a), conv(b or a) + 1))
    return out


def on_calendar_matcher(specs: list[str]):
    """Parse `[Weekdays ]*-MM-DD HH:MM:00` (each part * or a list) back into a matcher."""
    parsed = []
    for spec in specs:
        m = re.fullmatch(r"(?:(\S+) )?\*-(\S+)-(\S+) (\S+):(\S+):00", spec)
        assert m, spec
        wd, mo, dd, hh, mi = m.groups()
        parsed.append((
            _values(wd or "*", 0, 6, cronexpr.SYSTEMD_DAYS) if wd else set(range(7)),
            _values(mo, 1, 12), _values(dd, 1, 31), _values(hh, 0, 23), _values(mi, 0, 59),
        ))  # fmt: skip

    def matches(t: datetime) -> bool:
        return any(
            t.isoweekday() % 7 in w
            and t.month in mo
            and t.day in d
            and t.hour in h
            and t.minute in mi
            for w, mo, d, h, mi in parsed
        )

    return matches


def launchd_matcher(intervals: list[dict[str, int]]):
    def one(i: dict[str, int], t: datetime) -> bool:
        now = {"Minute": t.minute, "Hour": t.hour, "Day": t.day, "Month": t.month,
               "Weekday": t.isoweekday() % 7}  # fmt: skip
        return all(now[k] == v for k, v in i.items())

    return lambda t: any(one(i, t) for i in intervals)


def assert_same_minutes(cron: cronexpr.Cron, other) -> None:
    """Every day of two years at a few times each, and every minute of some days."""
    times = {(min(cron.hours), min(cron.minutes)), (max(cron.hours), max(cron.minutes)), (0, 0),
             (23, 59), (min(cron.hours), max(cron.minutes))}  # fmt: skip
    for d in DAYS:
        for h, m in times:
            t = datetime(d.year, d.month, d.day, h, m)
            assert cron.matches(t) == other(t), t
    for d in DAYS[::300]:
        for h, m in itertools.product(range(24), range(60)):
            t = datetime(d.year, d.month, d.day, h, m)
            assert cron.matches(t) == other(t), t


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cron_text())
def test_on_calendar_runs_exactly_when_cron_does(case):
    cron = cronexpr.parse(case[0])
    assert_same_minutes(cron, on_calendar_matcher(cronexpr.on_calendar(cron)))


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cron_text())
def test_launchd_intervals_run_exactly_when_cron_does_or_are_refused(case):
    cron = cronexpr.parse(case[0])
    try:
        intervals = cronexpr.launchd_intervals(cron)
    except CronError as e:
        partial_days = cron.days != cronexpr.full(2) and cron.weekdays != cronexpr.full(4)
        assert (partial_days and not cron.either_day) or "more than" in str(e)
        return
    for i in intervals:
        assert not ("Day" in i and "Weekday" in i)  # launchd would OR them
    assert_same_minutes(cron, launchd_matcher(intervals))


def next_runs(cron: cronexpr.Cron, after: datetime, count: int) -> list[datetime]:
    """The next runs by our matcher, trying only the times of day the fields allow."""
    out: list[datetime] = []
    day = after.date()
    while len(out) < count:
        for h, m in itertools.product(sorted(cron.hours), sorted(cron.minutes)):
            t = datetime(day.year, day.month, day.day, h, m)
            if t > after and cron.matches(t) and len(out) < count:
                out.append(t)
        day += timedelta(days=1)
    return out


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
@pytest.mark.parametrize(
    "text",
    ["0 2 * * *", "*/15 9-17 * * mon-fri", "0 2 1 * mon", "30 4 * * 0", "5 */6 */2 * *",
     "0 0 1,15 jan,jul *", "59 23 * * sat,sun", "0 12 29 feb *", "0,30 8-10 1-7 * 1"],
)  # fmt: skip
def test_systemd_analyze_agrees_on_the_next_runs(text):
    cron = cronexpr.parse(text)
    base = datetime(2027, 1, 1, 0, 0)
    elapses: set[datetime] = set()
    for spec in cronexpr.on_calendar(cron):
        when = f"--base-time={base:%Y-%m-%d %H:%M:%S} UTC"
        res = subprocess.run(
            ["systemd-analyze", "calendar", "--iterations=12", when, spec],
            capture_output=True, text=True, check=True, env={**os.environ, "TZ": "UTC"},
        )  # fmt: skip
        for found in re.findall(r"(?:Next elapse|Iter\. #\d+): \w+ (\S+ \S+) UTC", res.stdout):
            elapses.add(datetime.strptime(found, "%Y-%m-%d %H:%M:%S"))
    assert sorted(elapses)[:12] == next_runs(cron, base, 12)


def test_schtasks_schedules():
    assert cronexpr.schtasks_args(cronexpr.daily("02:00")) == ["/SC", "DAILY", "/ST", "02:00"]
    assert cronexpr.schtasks_args(cronexpr.parse("30 4 * * 0,6")) == [
        "/SC", "WEEKLY", "/D", "SUN,SAT", "/ST", "04:30"]  # fmt: skip
    assert cronexpr.schtasks_args(cronexpr.parse("0 3 1,15 jan *")) == [
        "/SC", "MONTHLY", "/D", "1,15", "/M", "JAN", "/ST", "03:00"]  # fmt: skip
    for text in ("0 2,14 * * *", "0 2 1 * mon"):
        with pytest.raises(CronError):
            cronexpr.schtasks_args(cronexpr.parse(text))


# -- The plan and the rendered entries ---------------------------------------------------------


def config(tmp_path: Path, **options: object) -> PgvaultConfig:
    cfg = PgvaultConfig()
    cfg.dir = str(tmp_path / "my backups 100%")
    cfg.target.name = "crm"
    for key, value in options.items():
        setattr(cfg.schedule, key, value)
    return cfg


@pytest.fixture(autouse=True)
def _no_user_conf(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("PGVAULT_CONFIG_DIR", raising=False)


def test_the_entry_runs_this_pgvault_with_the_same_overrides(tmp_path):
    cfg = config(tmp_path, cron="0 3 * * *", verify=ScheduleVerify.after)
    cfg.clients.bindir = "/usr/lib/postgresql/16/bin"
    (entry,) = schedule.plan(cfg, "prod", "linux").entries
    assert entry.name == "pgvault-backup-crm-prod"
    assert Path(entry.argv[0]).is_absolute()
    parsed = [OverridesParser.create().parse_override(a) for a in entry.argv if "=" in a]
    overrides = {o.key_or_group: o.value() for o in parsed}
    assert overrides == {
        "dir": cfg.dir, "target": "crm", "env": "prod", "quiet": True,
        "clients.bindir": "/usr/lib/postgresql/16/bin", "log.file": f"{cfg.dir}/pgvault.log",
        "backup.verify": True,
    }  # fmt: skip
    assert entry.argv[entry.argv.index("backup") - 1] in (entry.argv[0], "pgvault")


def test_weekly_verify_is_a_second_entry_and_default_env_has_no_suffix(tmp_path):
    cfg = config(tmp_path, verify=ScheduleVerify.weekly)
    cfg.log.file = str(tmp_path / "pgvault.log")
    plan = schedule.plan(cfg, "default", "linux")
    assert [e.name for e in plan.entries] == ["pgvault-backup-crm", "pgvault-verify-crm"]
    assert plan.entries[1].cron.text == "30 4 * * 0" and "verify" in plan.entries[1].argv
    assert all(e.log == tmp_path / "pgvault.log" for e in plan.entries)
    assert schedule.plan(config(tmp_path), "default", "linux").stale == ("pgvault-verify-crm",)


@pytest.mark.parametrize(
    ("options", "line"),
    [
        ({"cron": "0 25 * * *"}, "schedule.cron '0 25 * * *': hour 25 is out of 0-23"),
        ({"at": "25:00"}, "schedule.at '25:00': it is not a time from 00:00 to 23:59"),
        ({"verify": ScheduleVerify.weekly, "verify_cron": "61 * * * *"},
         "schedule.verify_cron '61 * * * *': minute 61 is out of 0-59"),
        ({"install": True, "uninstall": True}, "install=true and uninstall=true together"),
        ({"randomized_delay": -1}, "schedule.randomized_delay is -1"),
    ],
)  # fmt: skip
def test_bad_options_are_refused_before_anything_is_written(tmp_path, monkeypatch, options, line):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    calls: list[list[str]] = []
    cfg = config(tmp_path, **{"install": True, **options})
    with pytest.raises(ConfigError) as e:
        schedule.execute(cfg, Reporter(quiet=True), "default", run=recorder(calls))
    assert e.value.line().startswith(line) and "\n" not in e.value.line()
    assert calls == [] and sorted(os.listdir(tmp_path)) == []


def test_relative_or_missing_dir_and_odd_names_are_refused(tmp_path):
    cfg = config(tmp_path)
    cfg.dir = "backups"
    with pytest.raises(ConfigError, match="absolute"):
        schedule.plan(cfg, "default", "linux")
    cfg = config(tmp_path)
    cfg.target.name = "crm prod"
    with pytest.raises(ConfigError, match="cannot name a scheduled entry"):
        schedule.plan(cfg, "default", "linux")
    cfg = config(tmp_path)
    cfg.dir = "/srv/${oops}"
    with pytest.raises(ConfigError, match="cannot be scheduled"):
        schedule.plan(cfg, "default", "linux")


def unquote_systemd(line: str) -> list[str]:
    # Our quoting is a subset that shlex reads the same way; then the specifiers.
    return [w.replace("%%", "%").replace("$$", "$") for w in shlex.split(line)]


def unit_keys(text: str) -> dict[str, list[str]]:
    keys: dict[str, list[str]] = {}
    section = ""
    for line in text.splitlines():
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
        elif "=" in line and not line.startswith("#"):
            k, v = line.split("=", 1)
            keys.setdefault(f"{section}.{k}", []).append(v)
    return keys


def test_systemd_units_parse_back_and_pass_systemd_analyze_verify(tmp_path):
    cfg = config(tmp_path, cron="0 2 1 * mon", randomized_delay=900)
    (entry,) = schedule.plan(cfg, "default", "linux").entries
    units = filed.systemd_units(entry, 900)
    service = unit_keys(units["pgvault-backup-crm.service"])
    timer = unit_keys(units["pgvault-backup-crm.timer"])
    assert unquote_systemd(service["Service.ExecStart"][0]) == list(entry.argv)
    assert service["Service.StandardOutput"] == [f"append:{cfg.dir.replace('%', '%%')}/pgvault.log"]
    assert service["Service.StandardError"] == service["Service.StandardOutput"]
    assert service["Service.Type"] == ["oneshot"]
    assert timer["Timer.OnCalendar"] == ["*-*-01 02:00:00", "Mon *-*-* 02:00:00"]
    assert timer["Timer.Persistent"] == ["true"] and timer["Timer.RandomizedDelaySec"] == ["900"]
    assert timer["Install.WantedBy"] == ["timers.target"]
    if shutil.which("systemd-analyze") is None:
        return  # parsed above; nothing more to ask
    units_dir = tmp_path / "units"
    units_dir.mkdir()
    for name, text in units.items():
        (units_dir / name).write_text(text)
    # System mode: --user needs a user manager's runtime dir, which this container lacks.
    res = subprocess.run(
        ["systemd-analyze", "verify", *(str(units_dir / n) for n in units)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    broken = replace(entry, argv=("/nonexistent/pgvault", *entry.argv[1:]))
    (units_dir / "pgvault-backup-crm.service").write_text(
        filed.systemd_units(broken, 900)["pgvault-backup-crm.service"]
    )
    res = subprocess.run(["systemd-analyze", "verify", *(str(units_dir / n) for n in units)],
                         capture_output=True, text=True)  # fmt: skip
    assert res.returncode != 0 and "/nonexistent/pgvault" in res.stderr


def test_launchd_plist_round_trips(tmp_path):
    cfg = config(tmp_path, cron="*/30 9-10 * * 1-5")
    (entry,) = schedule.plan(cfg, "prod", "darwin").entries
    agent = plistlib.loads(filed.launchd_plist(entry))
    assert agent["Label"] == "dev.pgvault.backup-crm-prod"
    assert agent["ProgramArguments"] == list(entry.argv)
    assert agent["StandardOutPath"] == agent["StandardErrorPath"] == f"{cfg.dir}/pgvault.log"
    assert "EnvironmentVariables" not in agent
    intervals = agent["StartCalendarInterval"]
    assert len(intervals) == 2 * 2 * 5
    assert_same_minutes(entry.cron, launchd_matcher(intervals))


def test_crontab_line_parses_back_and_its_command_runs_under_sh(tmp_path):
    cfg = config(tmp_path, cron="*/5 1-3 * jan-mar mon-fri")
    (entry,) = schedule.plan(cfg, "default", "linux").entries
    mark, line = schedule.crontab_block(entry).splitlines()
    assert cronexpr.cron_marks(mark) == "pgvault-backup-crm"
    fields, command = line.split(" ", 5)[:5], line.split(" ", 5)[5]
    assert cronexpr.parse(" ".join(fields)) == replace(entry.cron, text=" ".join(fields))
    # cron's own step: an unescaped % would end the command, and \% becomes %.
    assert re.search(r"(?<!\\)%", command) is None
    shell_line = command.replace("\\%", "%")
    # The same line with printf in pgvault's place: the words arrive intact, into the log.
    probe = replace(entry, argv=("printf", "[%s]\\n", *entry.argv[1:]))
    Path(cfg.dir).mkdir()
    probe_line = schedule.crontab_block(probe).splitlines()[1].split(" ", 5)[5]
    subprocess.run(["sh", "-c", probe_line.replace("\\%", "%")], check=True)
    logged = (Path(cfg.dir) / "pgvault.log").read_text()
    assert logged == "".join(f"[{a}]\n" for a in entry.argv[1:])
    assert shell_line.endswith(f">>{shlex.quote(str(entry.log))} 2>&1")


def test_schtasks_line_and_windows_refuses_to_install(tmp_path):
    cfg = config(tmp_path, at="02:15")
    (entry,) = schedule.plan(cfg, "default", "win32").entries
    line = schedule.schtasks_command(entry)
    assert line.startswith("schtasks /Create /F /TN pgvault\\pgvault-backup-crm /TR ")
    assert line.endswith("/SC DAILY /ST 02:15") and "2>&1" in line
    cfg.schedule.install = True
    with pytest.raises(Refused) as e:
        schedule.execute(cfg, Reporter(quiet=True), "default", platform="win32")
    assert "run the schtasks command" in e.value.line()
    assert os.listdir(tmp_path) == []


# -- The crontab text and the systemd install path ----------------------------------------------

other_lines = st.lists(
    st.text(st.characters(blacklist_categories=["Cs", "Cc"]), max_size=30).filter(
        lambda s: not s.startswith(cronexpr.CRON_MARK)
    ),
    max_size=6,
)


@given(other_lines, other_lines)
def test_crontab_replace_keeps_every_other_line_byte_for_byte(before, after):
    table = "".join(f"{line}\n" for line in before)
    block = "# pgvault:pgvault-backup-crm x\n0 2 * * * pgvault backup log.file=/l >>/l 2>&1\n"
    with_ours = cronexpr.crontab_replace(table, {"pgvault-backup-crm": block})
    assert with_ours == table + block
    around = with_ours + "".join(f"{line}\n" for line in after)
    again = cronexpr.crontab_replace(around, {"pgvault-backup-crm": block})
    assert again == around
    gone = cronexpr.crontab_replace(
        around, {"pgvault-backup-crm": None, "pgvault-verify-crm": None}
    )
    assert gone == table + "".join(f"{line}\n" for line in after)


def test_a_marker_whose_command_was_deleted_takes_no_other_line_with_it():
    users = "0 3 * * * /usr/local/bin/rotate-logs\n"
    table = "# pgvault:pgvault-backup-crm Written by `pgvault schedule`\n" + users
    assert cronexpr.crontab_replace(table, {"pgvault-backup-crm": None}) == users
    block = "# pgvault:pgvault-backup-crm x\n0 2 * * * pgvault backup log.file=/l >>/l 2>&1\n"
    assert cronexpr.crontab_replace(table, {"pgvault-backup-crm": block}) == block + users


def recorder(calls: list[list[str]], fail: str | None = None, off: bool = False):
    def run(args: list[str], stdin: str | None) -> subprocess.CompletedProcess[str]:
        calls.append(args)
        bad = (fail is not None and fail in args) or (off and "is-enabled" in args)
        return subprocess.CompletedProcess(args, 1 if bad else 0, "", "boom" if bad else "")

    return run


def test_systemd_dir_honours_xdg_config_home(tmp_path):
    assert filed.systemd_dir({"XDG_CONFIG_HOME": str(tmp_path)}) == tmp_path / "systemd/user"
    assert filed.systemd_dir({"XDG_CONFIG_HOME": "rel"}) == Path.home() / ".config/systemd/user"


# The user manager is not running here, so systemctl's calls are recorded, not made; the
# unit files are really written into a temporary XDG_CONFIG_HOME.
def test_systemd_install_twice_replace_fail_and_uninstall(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    cfg = config(tmp_path)
    agents = filed.systemd_agents(600)
    units = tmp_path / "xdg/systemd/user"
    assert agents.directory == units
    plan = schedule.plan(cfg, "default", "linux")
    calls: list[list[str]] = []
    assert filed.agents_install(agents, plan, recorder(calls))
    ctl = ["systemctl", "--user"]
    assert calls == [[*ctl, "daemon-reload"], [*ctl, "enable", "--now", "pgvault-backup-crm.timer"]]
    assert sorted(os.listdir(units)) == ["pgvault-backup-crm.service", "pgvault-backup-crm.timer"]
    first = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in units.iterdir()}
    calls.clear()
    assert not filed.agents_install(agents, plan, recorder(calls))
    assert calls == [[*ctl, "is-enabled", "--quiet", "pgvault-backup-crm.timer"]]
    assert {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in units.iterdir()} == first
    # Another time, and enable fails: the old units are put back.
    later = schedule.plan(config(tmp_path, at="05:00"), "default", "linux")
    calls.clear()
    with pytest.raises(PgvaultError, match=r"enable --now pgvault-backup-crm\.timer` failed: boom"):
        filed.agents_install(agents, later, recorder(calls, fail="enable"))
    assert {p.name: p.read_bytes() for p in units.iterdir()} == {k: v[0] for k, v in first.items()}
    assert calls[-1] == [*ctl, "daemon-reload"]
    calls.clear()
    assert filed.agents_install(agents, later, recorder(calls))
    assert calls[-1] == [*ctl, "restart", "pgvault-backup-crm.timer"]
    assert "OnCalendar=*-*-* 05:00:00" in (units / "pgvault-backup-crm.timer").read_text()
    calls.clear()
    assert filed.agents_uninstall(agents, later.names, recorder(calls)) == ["pgvault-backup-crm"]
    assert calls == [
        [*ctl, "disable", "--now", "pgvault-backup-crm.timer"],
        [*ctl, "daemon-reload"],
    ]
    assert os.listdir(units) == []
    calls.clear()
    assert filed.agents_uninstall(agents, later.names, recorder(calls)) == [] and calls == []


def test_a_first_install_that_fails_leaves_no_files_and_foreign_files_are_kept(tmp_path):
    agents = filed.systemd_agents(600, tmp_path / "units")
    plan = schedule.plan(config(tmp_path), "default", "linux")
    with pytest.raises(PgvaultError, match="daemon-reload` failed"):
        filed.agents_install(agents, plan, recorder([], fail="daemon-reload"))
    assert os.listdir(tmp_path / "units") == []
    (tmp_path / "units/pgvault-backup-crm.timer").write_text("[Timer]\nOnCalendar=daily\n")
    with pytest.raises(PgvaultError, match="was not written by pgvault schedule"):
        filed.agents_install(agents, plan, recorder([]))
    with pytest.raises(PgvaultError, match="was not written by pgvault schedule"):
        filed.agents_uninstall(agents, plan.names, recorder([]))
    assert os.listdir(tmp_path / "units") == ["pgvault-backup-crm.timer"]


def test_a_failed_install_switches_off_what_it_switched_on(tmp_path):
    """The backup timer is enabled, the verify timer's enable fails: the backup timer
    must not stay enabled with its unit files gone again."""
    agents = filed.systemd_agents(600, tmp_path / "units")
    weekly = schedule.plan(config(tmp_path, verify=ScheduleVerify.weekly), "default", "linux")
    calls: list[list[str]] = []
    with pytest.raises(PgvaultError, match=r"pgvault-verify-crm\.timer"):
        filed.agents_install(agents, weekly, recorder(calls, fail="pgvault-verify-crm.timer"))
    ctl = ["systemctl", "--user"]
    assert [*ctl, "enable", "--now", "pgvault-backup-crm.timer"] in calls
    enabled = calls.index([*ctl, "enable", "--now", "pgvault-backup-crm.timer"])
    assert [*ctl, "disable", "--now", "pgvault-backup-crm.timer"] in calls[enabled:]
    assert os.listdir(tmp_path / "units") == []


def test_a_disabled_timer_with_the_same_files_is_enabled_again(tmp_path):
    agents = filed.systemd_agents(600, tmp_path / "units")
    plan = schedule.plan(config(tmp_path), "default", "linux")
    filed.agents_install(agents, plan, recorder([]))
    calls: list[list[str]] = []
    assert filed.agents_install(agents, plan, recorder(calls, off=True))
    assert calls[-1] == ["systemctl", "--user", "enable", "--now", "pgvault-backup-crm.timer"]


def test_weekly_verify_then_none_removes_the_verify_entry(tmp_path):
    agents = filed.systemd_agents(600, tmp_path / "units")
    weekly = schedule.plan(config(tmp_path, verify=ScheduleVerify.weekly), "default", "linux")
    filed.agents_install(agents, weekly, recorder([]))
    assert len(os.listdir(tmp_path / "units")) == 4
    calls: list[list[str]] = []
    assert filed.agents_install(agents, schedule.plan(config(tmp_path), "default", "linux"),
                                   recorder(calls))  # fmt: skip
    assert ["systemctl", "--user", "disable", "--now", "pgvault-verify-crm.timer"] in calls
    assert sorted(os.listdir(tmp_path / "units")) == [
        "pgvault-backup-crm.service", "pgvault-backup-crm.timer"]  # fmt: skip


def test_launchd_install_calls_launchctl(tmp_path):
    agents = filed.launchd_agents(tmp_path / "agents", uid=501)
    plan = schedule.plan(config(tmp_path), "default", "darwin")
    calls: list[list[str]] = []
    assert filed.agents_install(agents, plan, recorder(calls))
    path = tmp_path / "agents/dev.pgvault.backup-crm.plist"
    assert calls == [["launchctl", "bootstrap", "gui/501", str(path)]]
    assert plistlib.loads(path.read_bytes())["Label"] == "dev.pgvault.backup-crm"
    calls.clear()
    assert filed.agents_uninstall(agents, plan.names, recorder(calls)) == ["pgvault-backup-crm"]
    assert calls == [["launchctl", "bootout", "gui/501/dev.pgvault.backup-crm"]]
    assert not path.exists()


@pytest.mark.parametrize(
    ("code", "out", "warned"),
    [(0, "Linger=yes\n", False), (0, "Linger=no\n", True), (1, "", True)],
)
def test_a_systemd_install_warns_while_lingering_is_off(code, out, warned):
    def run(args: list[str], stdin: str | None) -> subprocess.CompletedProcess[str]:
        assert args[:2] == ["loginctl", "show-user"] and args[-1] == "--property=Linger"
        return subprocess.CompletedProcess(args, code, out, "")

    note = schedule.linger_note(run)
    assert (note is not None) is warned
    if note is not None:
        assert "loginctl enable-linger" in note
