"""What runs around a command that changes something (backup, restore, verify, prune,
push): the state file `pgvault status` reads (backup, verify and push), log.file,
metrics, hook commands, pings and Apprise. Each is a hooks.Hook for this run; none of them can fail
the command, except a before-hook, which is the user's own gate."""

from __future__ import annotations

import contextlib
from pathlib import Path

from pgvault import hooks, runstate
from pgvault.commands import Context
from pgvault.config import PgvaultConfig
from pgvault.ui import Reporter

COMMANDS = ("backup", "restore", "verify", "prune", "push")


# The runs `pgvault status` reads back from the state file. A restore or prune refused
# for bad input leaves the backup directory exactly as it was.
RECORDED = ("backup", "verify", "push")


def observers(cfg: PgvaultConfig, ui: Reporter, ctx: Context) -> list[hooks.Hook]:
    """This run's hooks, in order: the record first, notifications last."""
    out: list[hooks.Hook] = [_state_recorder(cfg)] if cfg.command in RECORDED else []
    if cfg.log.file:
        out.append(_log_writer(Path(cfg.log.file)))
    if cfg.metrics.textfile:
        from pgvault import metrics

        out.append(metrics.observer(cfg))
    from pgvault import notify

    told = notify.observer(cfg, ui.warn)
    if told is not None:
        out.append(told)
    return out


def before(cfg: PgvaultConfig, run: hooks.Run) -> None:
    """Run hooks.before; one that fails raises, and the command does not start."""
    if cfg.hooks.before:
        from pgvault import notify

        notify.run_commands(cfg.hooks.before, run, timeout=cfg.hooks.timeout)


def _state_recorder(cfg: PgvaultConfig) -> hooks.Hook:
    def recorder(event: hooks.Event, run: hooks.Run) -> None:
        directory = _existing_dir(cfg.dir)
        if directory is None:  # a run refused for its dir has nowhere to record
            return
        # Best effort: a directory the run cannot write to is the run's own error to
        # report (a read-only dir, a full disk), not a second warning.
        with contextlib.suppress(OSError):
            runstate.record(run, event, directory)

    return recorder


def _existing_dir(value: str | None) -> Path | None:
    """The backup dir when it is valid and exists; a run never creates it to record."""
    from pgvault import catalog
    from pgvault.errors import PgvaultError

    try:
        path = catalog.backup_dir(value, create=False)
    except PgvaultError:
        return None
    return path if path.is_dir() else None


def _log_writer(path: Path) -> hooks.Hook:
    def writer(event: hooks.Event, run: hooks.Run) -> None:
        if event is not hooks.Event.start:
            runstate.append_log(path, run)

    return writer
