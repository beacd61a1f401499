"""The commands: what each one is, which config it takes, and the one way to run one.

Each command is a module here with `run(cfg, ui, ctx) -> Outcome`: config and a reporter
in, services called, nothing of its own. Adding a command is one module, its entry in
SPECS and its options node in config.py.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

from pgvault import hooks
from pgvault.config import PgvaultConfig, validate
from pgvault.errors import ConfigError, PgvaultError
from pgvault.ui import Reporter

# Keys every command takes (`env` is the config group of per-environment overlays).
COMMON = ("dir", "target", "clients", "quiet", "env")


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
             ("retention", "verify.target", "lock_timeout")),
        Spec("list", "show the sets in dir, newest first", "list"),
        Spec("prune", "apply the retention policy now", "prune", ("retention", "lock_timeout")),
        Spec("restore", "replace the target database with a set", "restore", ("lock_timeout",)),
        Spec("verify", "restore a set into a throwaway cluster and compare", "verify"),
        Spec("show", "what one set holds", "show"),
    )
}  # fmt: skip


@dataclass
class Context:
    """What a command needs beyond its config: the env's name and the clock and prompt
    (tests replace them)."""

    env: str = "default"
    clock: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))
    ask: Callable[[str], str] = input


@dataclass
class Outcome:
    """What a successful command tells the hooks."""

    prefix: str | None = None
    size_bytes: int | None = None


def run(cfg: PgvaultConfig, ui: Reporter, ctx: Context | None = None) -> Outcome:
    """Run cfg.command with its start, success and failure events; raises PgvaultError."""
    ctx = ctx or Context()
    name = cfg.command
    if name not in SPECS:
        raise ConfigError(f"unknown command '{name}'", f"use one of: {', '.join(SPECS)}")
    validate(cfg)
    module = importlib.import_module(f"pgvault.commands.{name}")
    info = hooks.Run(name, cfg.target.name, ctx.env, cfg.dir)
    hooks.call(hooks.Event.start, info, ui.warn)
    try:
        outcome: Outcome = module.run(cfg, ui, ctx)
    except PgvaultError as e:
        from pgvault.connection import mask_secrets  # psycopg: only when needed

        failed = replace(info, error=mask_secrets(e.line()), exit_code=e.exit_code)
        hooks.call(hooks.Event.failure, failed, ui.warn)
        raise
    except KeyboardInterrupt:
        hooks.call(hooks.Event.failure, replace(info, error="interrupted", exit_code=130), ui.warn)
        raise
    except BaseException as e:  # a bug still ends the run for the hooks
        from pgvault.connection import mask_secrets

        failed = replace(info, error=mask_secrets(f"{type(e).__name__}: {e}"), exit_code=1)
        hooks.call(hooks.Event.failure, failed, ui.warn)
        raise
    done = replace(info, prefix=outcome.prefix, size_bytes=outcome.size_bytes)
    hooks.call(hooks.Event.success, done, ui.warn)
    return outcome
