"""`pgvault schedule`: the daily backup (and a weekly verify) as an entry of this
machine's scheduler: a systemd user timer, a launchd agent, a crontab line, or the
schtasks command to paste on Windows.

Everything is checked and rendered before anything is written. The entry runs this
installation's pgvault by absolute path with the overrides it was scheduled with, so it
does not depend on the scheduler's environment, and its output goes to the log file.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from pgvault import catalog, cronexpr
from pgvault.agents import (
    MARKER,
    Agents,
    agents_install,
    agents_uninstall,
    launchd_agents,
    systemd_agents,
)
from pgvault.config import PgvaultConfig, ScheduleVerify
from pgvault.cronexpr import CRON_MARK, Runner, cron_marks, crontab_apply, run_program
from pgvault.errors import ConfigError, PgvaultError, Refused
from pgvault.ui import Reporter

MAX_DELAY = 86_400
# Connection settings a shell may hold that no scheduler passes on.
SHELL_ONLY = ("DATABASE_URL", "PGHOST", "PGPORT", "PGUSER", "PGDATABASE", "PGPASSWORD")


@dataclass(frozen=True)
class Entry:
    """One scheduled command."""

    name: str  # pgvault-backup-crm, pgvault-verify-crm-prod
    what: str
    cron: cronexpr.Cron
    argv: tuple[str, ...]
    log: Path
    env: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Plan:
    entries: tuple[Entry, ...]
    # Ours but no longer wanted (a weekly verify entry after verify=none): install removes.
    stale: tuple[str, ...] = ()
    delay: int = 600
    notes: tuple[str, ...] = field(default=())

    @property
    def names(self) -> tuple[str, ...]:
        return (*(e.name for e in self.entries), *self.stale)


def expression(key: str, text: str) -> cronexpr.Cron:
    """The cron expression of a schedule key; one ConfigError line with the reason."""
    try:
        return cronexpr.daily(text) if key == "schedule.at" else cronexpr.parse(text)
    except cronexpr.CronError as e:
        if key == "schedule.at":
            yaml = " (quote it in YAML: at: '02:00')" if text.isdigit() else ""
            raise ConfigError(
                f"{key} '{text}': {e}", f"give HH:MM from 00:00 to 23:59{yaml}"
            ) from None
        raise ConfigError(f"{key} '{text}': {e}", cronexpr.HINT) from None


def program(platform: str = sys.platform) -> list[str]:
    """This installation's pgvault: the console script beside the interpreter, else -m."""
    exe = Path(os.path.abspath(sys.executable))
    script = exe.parent / ("pgvault.exe" if platform == "win32" else "pgvault")
    return [str(script)] if script.is_file() else [str(exe), "-m", "pgvault"]


def override(key: str, value: str) -> str:
    """key=value as Hydra reads it back: quoted unless plain, and never interpolated."""
    if "${" in value or any(ord(c) < 32 for c in value):
        raise ConfigError(
            f"{key} '{value}' cannot be scheduled", "use a path without ${ or control characters"
        )
    if re.fullmatch(r"[\w/.:@+-]+", value):
        return f"{key}={value}"
    return f"{key}='" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def entry_names(cfg: PgvaultConfig, env: str) -> tuple[str, str]:
    """The names of the target's backup and verify entries; all uninstall needs."""
    for what, name in (("target.name", cfg.target.name), ("env", env)):
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
            raise ConfigError(
                f"{what} '{name}' cannot name a scheduled entry",
                "use letters, digits, '.', '_', '-'",
            )
    suffix = cfg.target.name + ("" if env == "default" else f"-{env}")
    return f"pgvault-backup-{suffix}", f"pgvault-verify-{suffix}"


def plan(
    cfg: PgvaultConfig,
    env: str,
    platform: str = sys.platform,
    *,
    target_group: str | None = None,
    overrides: tuple[str, ...] = (),
) -> Plan:
    """Check the schedule options and say what to install; ConfigError, writing nothing.

    The entry selects the target by its config file (target_group, as target=NAME chose
    it); target.* settings given on the command line would not reach it, so they are
    refused rather than silently dropped (a URL there may also hold a password)."""
    from pgvault.cli import packaged_conf_dir, user_conf_dir

    opts = cfg.schedule
    if opts.install and opts.uninstall:
        raise ConfigError("install=true and uninstall=true together", "give one of them")
    group = target_group or cfg.target.name
    given = sorted({o.split("=", 1)[0] for o in overrides if o.startswith("target.")})
    if given:
        raise ConfigError(
            f"{', '.join(given)} on the command line would not reach the scheduled run",
            f"put it in conf/target/{group}.yaml (or a new target file) and pass target=NAME",
        )
    key, text = ("schedule.cron", opts.cron) if opts.cron else ("schedule.at", opts.at)
    when = expression(key, text)
    weekly = opts.verify is ScheduleVerify.weekly
    verify_when = expression("schedule.verify_cron", opts.verify_cron) if weekly else None
    if not 0 <= opts.randomized_delay <= MAX_DELAY:
        raise ConfigError(
            f"schedule.randomized_delay is {opts.randomized_delay}",
            f"give 0 to {MAX_DELAY} seconds",
        )
    directory = catalog.backup_dir(cfg.dir, create=False)
    log = Path(cfg.log.file) if cfg.log.file else directory / "pgvault.log"
    if not log.is_absolute():
        raise ConfigError(
            f"log.file must be an absolute path, got '{log}'", f"use log.file={log.absolute()}"
        )
    backup_name, verify_name = entry_names(cfg, env)
    common = [override("dir", str(directory)), override("target", group), f"env={env}"]
    if cfg.clients.bindir:
        common.append(override("clients.bindir", cfg.clients.bindir))
    common += ["quiet=true", override("log.file", str(log))]
    # The user's conf/ is found from the working directory, which a scheduler does not keep.
    conf = user_conf_dir()
    mine = conf is not None and conf != packaged_conf_dir().resolve()
    extra = (("PGVAULT_CONFIG_DIR", str(conf)),) if mine else ()
    if mine:
        override("PGVAULT_CONFIG_DIR", str(conf))  # a path to check as dir is
    about = f"target {cfg.target.name} (env {env})"
    run = program(platform)
    backup = [*run, "backup", *common] + (
        ["backup.verify=true"] if opts.verify is ScheduleVerify.after else []
    )
    entries = [
        Entry(
            backup_name,
            f"pgvault backup of {about}",
            when,
            tuple(backup),
            log,
            extra,
        )
    ]
    if verify_when is not None:
        entries.append(Entry(verify_name, f"pgvault verify of {about}", verify_when,
                             (*run, "verify", *common), log, extra))  # fmt: skip
    stale = () if weekly else (verify_name,)
    shell = [k for k in SHELL_ONLY if os.environ.get(k)]
    notes = (
        (f"this shell's {', '.join(shell)} will not reach the scheduled run: put the connection"
         f" in conf/target/{group}.yaml and a password in ~/.pgpass",) if shell else ()
    )  # fmt: skip
    return Plan(tuple(entries), stale, opts.randomized_delay, notes)


def crontab_block(entry: Entry) -> str:
    """The marker line and the entry's line; cron turns a bare % into a newline."""
    env = "".join(f"{k}={shlex.quote(v)} " for k, v in entry.env)
    # umask: the log names databases and errors; a shell redirect would create it 0644.
    command = f"umask 077; {env}{shlex.join(entry.argv)} >>{shlex.quote(str(entry.log))} 2>&1"
    line = " ".join(entry.cron.text.split()) + " " + command.replace("%", "\\%")
    mark = f"{CRON_MARK}{entry.name} {MARKER[2:]}; `pgvault schedule uninstall=true` removes it"
    return f"{mark}\n{line}\n"


def schtasks_command(entry: Entry) -> str:
    try:
        when = cronexpr.schtasks_args(entry.cron)
    except cronexpr.CronError as e:
        raise ConfigError(f"schedule '{entry.cron.text}': {e}", "use schedule.at=HH:MM") from None
    env = "".join(f'set "{k}={v}" && ' for k, v in entry.env)
    log = subprocess.list2cmdline([str(entry.log)])
    inner = f"{env}{subprocess.list2cmdline(entry.argv)} >> {log} 2>&1"
    name = f"pgvault\\{entry.name}"
    args = ["schtasks", "/Create", "/F", "/TN", name, "/TR", f'cmd /c "{inner}"', *when]
    return subprocess.list2cmdline(args)


# -- The crontab ------------------------------------------------------------------------------


def crontab_install(plan: Plan, user: str | None = None, run: Runner = run_program) -> bool:
    """Put the plan's entries into the crontab; False when it held exactly them already."""
    blocks: dict[str, str | None] = {e.name: crontab_block(e) for e in plan.entries}
    return crontab_apply(blocks | dict.fromkeys(plan.stale), user, run)[0]


def crontab_uninstall(
    names: tuple[str, ...], user: str | None = None, run: Runner = run_program
) -> list[str]:
    """Take the named entries out of the crontab; the names that were there."""
    _, table = crontab_apply(dict.fromkeys(names), user, run)
    return [n for n in names if any(cron_marks(line) == n for line in table.splitlines())]


# -- The command ---------------------------------------------------------------------------


def systemd_running(run: Runner = run_program) -> bool:
    if not Path("/run/systemd/system").exists():
        return False
    try:
        return run(["systemctl", "--user", "show-environment"], None).returncode == 0
    except PgvaultError:
        return False


def backend(platform: str = sys.platform, run: Runner = run_program) -> str:
    """Which scheduler this machine has: systemd, launchd, crontab or schtasks."""
    if platform == "win32":
        return "schtasks"
    if platform == "darwin":
        return "launchd" if shutil.which("launchctl") else "crontab"
    return "systemd" if systemd_running(run) else "crontab"


KINDS = {"systemd": "systemd user timer", "launchd": "launchd agent",
         "crontab": "crontab entry", "schtasks": "scheduled task"}  # fmt: skip


def describe(plan: Plan, kind: str, agents: Agents | None, user: str | None = None) -> list[str]:
    """What would be installed, as the blocks `pgvault schedule` prints."""
    if kind == "schtasks":
        return [f"REM {e.what}, in cmd.exe:\n{schtasks_command(e)}" for e in plan.entries]
    if kind == "crontab":
        import getpass

        head = f"# in the crontab of {user or getpass.getuser()}:"
        return [head, *(crontab_block(e).rstrip() for e in plan.entries)]
    assert agents is not None
    files = [(n, d) for e in plan.entries for n, d in agents.files(e).items()]
    return [f"# {agents.directory / n}\n{d.decode().rstrip()}\n" for n, d in files]


def execute(cfg: PgvaultConfig, ui: Reporter, env: str, *, platform: str = sys.platform,
            run: Runner = run_program, user: str | None = None,
            target_group: str | None = None, overrides: tuple[str, ...] = ()) -> None:  # fmt: skip
    """Print, install or remove the schedule of cfg's target (user: whose crontab)."""
    opts = cfg.schedule
    if opts.install and opts.uninstall:
        raise ConfigError("install=true and uninstall=true together", "give one of them")
    kind = backend(platform, run)
    delay = opts.randomized_delay
    agents = {"systemd": lambda: systemd_agents(delay), "launchd": launchd_agents}.get(kind)
    where = agents() if agents else None
    if opts.uninstall:  # by name only: no dir, cron or target settings needed to remove
        names = entry_names(cfg, env)
        if kind == "schtasks":
            delete = " && ".join(f"schtasks /Delete /F /TN pgvault\\{n}" for n in names)
            raise Refused("pgvault cannot change Windows' scheduled tasks itself", delete)
        gone = agents_uninstall(where, names, run) if where else crontab_uninstall(names, user, run)
        ui.say(
            f"removed {KINDS[kind]} {', '.join(gone)}"
            if gone
            else f"nothing to uninstall: no {KINDS[kind]} {names[0]}"
        )
        return
    the = plan(cfg, env, platform, target_group=target_group, overrides=overrides)
    if kind == "schtasks" and opts.install:
        raise Refused(
            "pgvault cannot change Windows' scheduled tasks itself",
            "run the schtasks command `pgvault schedule` prints",
        )
    blocks = describe(the, kind, where, user)  # every refusal comes before anything is written
    notes = [*the.notes, *([linger_note(run)] if kind == "systemd" else [])]
    for note in filter(None, notes):
        ui.warn(note)
    shown = ", ".join(e.name for e in the.entries)
    if not opts.install:
        ui.say(f"pgvault schedule would install this {KINDS[kind]} (install=true installs it):")
    else:
        _log_dir(the)
        changed = agents_install(where, the, run) if where else crontab_install(the, user, run)
        ui.say(
            f"installed {KINDS[kind]} {shown}:"
            if changed
            else f"already installed: {KINDS[kind]} {shown}"
        )
        if not changed:
            return
    for block in blocks:
        ui.say(block)


def _log_dir(plan: Plan) -> None:
    """The log's directory must exist before the first run, or that run fails unseen;
    the log itself is created 0600 (it names databases and errors)."""
    for log in {e.log for e in plan.entries}:
        try:
            log.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.close(os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o600))
        except OSError as e:
            raise PgvaultError(
                f"cannot create {log}: {e.strerror}", "create it or set log.file"
            ) from None


def linger_note(run: Runner = run_program) -> str | None:
    """Without lingering, a user's systemd stops at logout and does not start at boot:
    the timer would not run on a server nobody is logged in to."""
    import getpass

    user = getpass.getuser()
    try:
        res = run(["loginctl", "show-user", user, "--property=Linger"], None)
    except PgvaultError:
        res = None
    if res is not None and res.returncode == 0 and res.stdout.strip() == "Linger=yes":
        return None
    return (f"the timer runs only while {user} is logged in unless systemd keeps the user's "
            f"manager running: `loginctl enable-linger {user}` (once, as root)")  # fmt: skip
