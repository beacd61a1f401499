"""The commands: what each one is, which config it takes, and the one way to run one.

Each command is a module here with `run(cfg, ui, ctx) -> Outcome`: config and a reporter
in, services called, nothing of its own. Adding a command is one module, its entry in
SPECS and its options node in config.py.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from pgvault import hooks, sweep
from pgvault.config import PgvaultConfig, validate
from pgvault.errors import ConfigError, PgvaultError, VerifyMismatch
from pgvault.ui import Reporter

# Keys every command takes (`env` is the config group of per-environment overlays).
COMMON = ("dir", "target", "clients", "quiet", "env", "sweep")
# What runs around a command that changes something: hook commands, pings and Apprise,
# metrics, the log file (pgvault.operations).
OPS = ("hooks", "notify", "metrics", "log")
# Reading a set that may be encrypted, or kept off-site.
READ = ("remote", "encryption.identity")


@dataclass(frozen=True)
class Spec:
    """options: the config node whose keys may be given bare (`format=json` is
    `list.format=json`); takes: the other keys the command reads."""

    name: str
    summary: str
    options: str
    takes: tuple[str, ...] = ()

    @property
    def keys(self) -> tuple[str, ...]:
        """Every top-level key or dotted path this command accepts."""
        return (*COMMON, self.options, *self.takes)


SPECS: dict[str, Spec] = {
    s.name: s
    for s in (
        Spec("backup", "write a complete, checksummed set, then apply retention", "backup",
             ("retention", "verify.target", "lock_timeout", "monitor.min_free", "remote",
              "encryption", *OPS)),
        Spec("list", "show the sets in dir, newest first", "list", ("remote",)),
        Spec("prune", "apply the retention policy now", "prune",
             ("retention", "lock_timeout", *OPS)),
        Spec("restore", "replace the target database with a set", "restore",
             ("lock_timeout", "hooks", "notify", "log", *READ)),
        Spec("verify", "restore a set into a throwaway cluster and compare", "verify",
             (*OPS, *READ)),
        Spec("push", "upload the sets not yet off-site, then apply the remote's retention",
             "push", ("retention", "lock_timeout", "remote", "encryption", *OPS)),
        Spec("show", "what one set holds", "show"),
        Spec("status", "whether the backups are fresh, verified and have room", "status",
             ("monitor", "remote")),
        Spec("schedule", "print, install or remove the daily backup's timer", "schedule",
             ("log",)),
        Spec("doctor", "which PostgreSQL programs the target gets, and why", "doctor"),
    )
}  # fmt: skip


@dataclass
class Context:
    """What a command needs beyond its config: the env's name and the clock and prompt
    (tests replace them)."""

    env: str = "default"
    clock: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))
    ask: Callable[[str], str] = input
    # The target config file chosen (target=NAME) and the command line's overrides as
    # Hydra got them: what `schedule` may carry into its entry.
    target_group: str | None = None
    overrides: tuple[str, ...] = ()


@dataclass
class Outcome:
    """What a successful command tells the hooks."""

    prefix: str | None = None
    size_bytes: int | None = None
    rows: int | None = None
    verified: bool | None = None


def run(cfg: PgvaultConfig, ui: Reporter, ctx: Context | None = None) -> Outcome:
    """Run cfg.command with its start, success and failure events; raises PgvaultError.

    A command that changes something also runs the configured operations around it
    (pgvault.operations): a before-hook that fails ends the run as a failure."""
    ctx = ctx or Context()
    name = cfg.command
    if name not in SPECS:
        raise ConfigError(f"unknown command '{name}'", f"use one of: {', '.join(SPECS)}")
    validate(cfg)
    module = importlib.import_module(f"pgvault.commands.{name}")
    from pgvault import masking, operations

    # Known before any event: a hook's environment and message must not carry them, and
    # the target's URL is otherwise read (and its password remembered) only inside the run.
    for url in (cfg.target.url, cfg.restore.target, cfg.verify.target):
        masking.remember_in(url)
    masking.remember(cfg.remote.secret_access_key)
    masking.remember(cfg.target.storage.secret_access_key)

    observers = operations.observers(cfg, ui, ctx) if name in operations.COMMANDS else []

    def tell(event: hooks.Event, what: hooks.Run) -> None:
        hooks.call(event, what, ui.warn, extra=observers)
        if event is not hooks.Event.start:
            sweep.record(what)  # a sweep's job reads it (only in a sweep's child)

    started = time.monotonic()
    info = hooks.Run(name, cfg.target.name, ctx.env, cfg.dir, started_at=time.time())

    def ended(**changes: Any) -> hooks.Run:
        return replace(info, duration_s=time.monotonic() - started, **changes)

    tell(hooks.Event.start, info)
    try:
        if name in operations.COMMANDS:
            operations.before(cfg, info)
        outcome: Outcome = module.run(cfg, ui, ctx)
    except PgvaultError as e:
        from pgvault.connection import mask_secrets  # psycopg: only when needed

        verdict = False if isinstance(e, VerifyMismatch) else None
        failed = ended(status="failure", error=mask_secrets(e.line()), exit_code=e.exit_code,
                       verified=verdict)  # fmt: skip
        tell(hooks.Event.failure, failed)
        raise
    except KeyboardInterrupt:
        tell(hooks.Event.failure, ended(status="failure", error="interrupted", exit_code=130))
        raise
    except BaseException as e:  # a bug still ends the run for the hooks
        from pgvault.connection import mask_secrets

        error = mask_secrets(f"{type(e).__name__}: {e}")
        tell(hooks.Event.failure, ended(status="failure", error=error, exit_code=1))
        raise
    done = ended(status="success", prefix=outcome.prefix, size_bytes=outcome.size_bytes,
                 rows=outcome.rows, verified=outcome.verified)  # fmt: skip
    tell(hooks.Event.success, done)
    return outcome
