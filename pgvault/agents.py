"""The schedulers whose entries are files a program switches on: systemd user units
and launchd agents. Rendered from a schedule.Entry; installed all or nothing, and only
files pgvault wrote are ever replaced or removed."""

from __future__ import annotations

import contextlib
import os
import plistlib
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pgvault import catalog, cronexpr
from pgvault.cronexpr import Runner, check, run_program
from pgvault.errors import ConfigError, PgvaultError

if TYPE_CHECKING:
    from pgvault.schedule import Entry, Plan

MARKER = "# Written by `pgvault schedule`"

# -- What each scheduler gets ---------------------------------------------------------------


def systemd_quote(word: str) -> str:
    """One ExecStart=/Environment= word: % and $ doubled, quoted when it holds more."""
    word = word.replace("%", "%%").replace("$", "$$")
    if word and re.fullmatch(r"[\w/.:@+=,-]+", word):
        return word
    return '"' + word.replace("\\", "\\\\").replace('"', '\\"') + '"'


def systemd_units(entry: Entry, delay: int) -> dict[str, str]:
    head = f"{MARKER} ({entry.name}); `pgvault schedule uninstall=true` removes it.\n"
    log = str(entry.log).replace("%", "%%")
    env = "".join(f"Environment={systemd_quote(f'{k}={v}')}\n" for k, v in entry.env)
    service = (
        f"{head}[Unit]\nDescription={entry.what}\n\n[Service]\nType=oneshot\nUMask=0077\n{env}"
        f"ExecStart={' '.join(systemd_quote(a) for a in entry.argv)}\n"
        f"StandardOutput=append:{log}\nStandardError=append:{log}\n"
    )
    calendar = "".join(f"OnCalendar={c}\n" for c in cronexpr.on_calendar(entry.cron))
    timer = (
        f"{head}[Unit]\nDescription={entry.what} ({entry.cron.text})\n\n[Timer]\n{calendar}"
        f"Persistent=true\nRandomizedDelaySec={delay}\n\n[Install]\nWantedBy=timers.target\n"
    )
    return {f"{entry.name}.service": service, f"{entry.name}.timer": timer}


def launchd_label(name: str) -> str:
    return "dev.pgvault." + name.removeprefix("pgvault-")


def launchd_plist(entry: Entry) -> bytes:
    try:
        intervals = cronexpr.launchd_intervals(entry.cron)
    except cronexpr.CronError as e:
        raise ConfigError(
            f"schedule '{entry.cron.text}': {e}", "use a simpler expression, or crontab"
        ) from None
    agent: dict[str, object] = {
        "Label": launchd_label(entry.name),
        "ProgramArguments": list(entry.argv),
        "StartCalendarInterval": intervals if len(intervals) > 1 else intervals[0],
        "StandardOutPath": str(entry.log),
        "StandardErrorPath": str(entry.log),
        "ProcessType": "Background",
    }
    if entry.env:
        agent["EnvironmentVariables"] = dict(entry.env)
    return plistlib.dumps(agent)


# -- Unit files and agents: systemd and launchd ----------------------------------------------


@dataclass(frozen=True)
class Agents:
    """A scheduler whose entries are files in a directory, switched on with a program."""

    directory: Path
    files: Callable[[Entry], dict[str, bytes]]
    ours: Callable[[str, bytes], bool]  # whether a file at one of our names is ours
    names: Callable[[str], list[str]]  # an entry's file names, from its name alone
    is_on: Callable[[str], list[str]]  # the command that succeeds when it is switched on
    switch_on: Callable[[str, bool], list[list[str]]]  # (name, replacing an old one)
    switch_off: Callable[[str], list[str]]
    reload: list[list[str]]
    tolerant_off: bool = False  # launchctl bootout fails for an agent that is not loaded


def systemd_dir(environ: dict[str, str] | None = None) -> Path:
    base = (environ if environ is not None else os.environ).get("XDG_CONFIG_HOME", "")
    home = Path(base) if base and Path(base).is_absolute() else Path.home() / ".config"
    return home / "systemd" / "user"


def systemd_agents(delay: int, directory: Path | None = None) -> Agents:
    ctl = ["systemctl", "--user"]
    return Agents(
        directory=directory or systemd_dir(),
        files=lambda e: {n: t.encode() for n, t in systemd_units(e, delay).items()},
        ours=lambda _name, data: data.startswith(MARKER.encode()),
        names=lambda n: [f"{n}.service", f"{n}.timer"],
        is_on=lambda n: [*ctl, "is-enabled", "--quiet", f"{n}.timer"],
        switch_on=lambda n, old: (
            [[*ctl, "enable", "--now", f"{n}.timer"]]
            + ([[*ctl, "restart", f"{n}.timer"]] if old else [])
        ),
        switch_off=lambda n: [*ctl, "disable", "--now", f"{n}.timer"],
        reload=[[*ctl, "daemon-reload"]],
    )


def launchd_agents(directory: Path | None = None, uid: int | None = None) -> Agents:
    domain = f"gui/{os.getuid() if uid is None else uid}"
    where = directory or Path.home() / "Library" / "LaunchAgents"

    def ours(name: str, data: bytes) -> bool:
        with contextlib.suppress(Exception):
            return bool(plistlib.loads(data).get("Label") == name.removesuffix(".plist"))
        return False

    return Agents(
        directory=where,
        files=lambda e: {f"{launchd_label(e.name)}.plist": launchd_plist(e)},
        ours=ours,
        names=lambda n: [f"{launchd_label(n)}.plist"],
        is_on=lambda n: ["launchctl", "print", f"{domain}/{launchd_label(n)}"],
        switch_on=lambda n, old: (
            ([["launchctl", "bootout", f"{domain}/{launchd_label(n)}"]] if old else [])
            + [["launchctl", "bootstrap", domain, str(where / f"{launchd_label(n)}.plist")]]
        ),
        switch_off=lambda n: ["launchctl", "bootout", f"{domain}/{launchd_label(n)}"],
        reload=[],
        tolerant_off=True,
    )


def write_atomic(path: Path, data: bytes) -> None:
    """Write path all or nothing (0644: a unit holds no secret)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    catalog.fsync_dir(path.parent)


def _read(agents: Agents, name: str) -> bytes | None:
    path = agents.directory / name
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise PgvaultError(f"cannot read {path}: {e.strerror}", "fix its permissions") from None
    if not agents.ours(name, data):
        raise PgvaultError(
            f"{path} was not written by pgvault schedule", "move it away, then try again"
        )
    return data


def _put(agents: Agents, files: dict[str, bytes | None]) -> None:
    """Write (bytes) or remove (None) files in the agents' directory."""
    for name, data in files.items():
        path = agents.directory / name
        try:
            if data is None:
                path.unlink(missing_ok=True)
            else:
                write_atomic(path, data)
        except OSError as e:
            raise PgvaultError(
                f"cannot write {path}: {e.strerror}", "fix its permissions"
            ) from None


def agents_install(agents: Agents, plan: Plan, run: Runner = run_program) -> bool:
    """Write the entries' files and switch them on; False when all were so already. On a
    failure the files are put back as they were."""
    want = {n: d for e in plan.entries for n, d in agents.files(e).items()}
    stale = {n for s in plan.stale for n in agents.names(s)}
    old = {n: _read(agents, n) for n in [*want, *stale]}
    changed = [e for e in plan.entries if any(old[n] != want[n] for n in agents.files(e))]
    gone = [s for s in plan.stale if any(old[n] is not None for n in agents.names(s))]
    if not changed and not gone:
        off = [e.name for e in plan.entries if run(agents.is_on(e.name), None).returncode != 0]
        for name in off:
            for args in agents.switch_on(name, False):
                check(run, args)
        return bool(off)
    try:
        agents.directory.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise PgvaultError(
            f"cannot create {agents.directory}: {e.strerror}", "fix its permissions"
        ) from None
    switched: list[str] = []  # new entries this install switched on
    try:
        for name in gone:
            _off(agents, name, run)
        _put(
            agents,
            {n: None for n in stale} | {n: d for e in changed for n, d in agents.files(e).items()},
        )
        for args in agents.reload:
            check(run, args)
        for entry in changed:
            replacing = any(old[n] is not None for n in agents.files(entry))
            if not replacing:
                switched.append(entry.name)
            for args in agents.switch_on(entry.name, replacing):
                check(run, args)
    except PgvaultError:
        with contextlib.suppress(PgvaultError):
            # An entry that did not exist before must not stay switched on (an enable
            # link to a unit file that is gone again).
            for name in switched:
                run(agents.switch_off(name), None)
            _put(agents, old)
            for args in agents.reload:
                run(args, None)
        raise
    return True


def _off(agents: Agents, name: str, run: Runner) -> None:
    if agents.tolerant_off:
        run(agents.switch_off(name), None)
    else:
        check(run, agents.switch_off(name))


def agents_uninstall(
    agents: Agents, names: tuple[str, ...], run: Runner = run_program
) -> list[str]:
    """Switch off and remove our entries; the names of those that were there."""
    present = [n for n in names if any(_read(agents, f) is not None for f in agents.names(n))]
    for name in present:
        _off(agents, name, run)
    _put(agents, {f: None for n in present for f in agents.names(n)})
    if present:
        for args in agents.reload:
            check(run, args)
    return present
