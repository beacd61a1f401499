"""The typed configuration: dataclasses registered with Hydra's ConfigStore.

Hydra validates every YAML file and command-line override against these classes, so a
misspelt key or a wrong type fails at composition, before anything runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING


class Command(Enum):
    backup = "backup"
    list = "list"
    prune = "prune"
    restore = "restore"
    verify = "verify"


class Compression(Enum):
    none = "none"
    gzip = "gzip"
    zstd = "zstd"


class Profile(Enum):
    auto = "auto"  # supabase when the database looks like Supabase's, else plain
    plain = "plain"
    supabase = "supabase"


class OutputFormat(Enum):
    text = "text"
    json = "json"


class Confirm(Enum):
    tty = "tty"  # ask when stdin is a terminal; without one, refuse unless yes=true
    always = "always"  # ask even when yes=true
    never = "never"


@dataclass
class TargetConfig:
    """Which database to back up. No url: DATABASE_URL, else libpq's PG* environment."""

    name: str = MISSING
    url: str | None = None
    description: str = ""
    # What belongs to the application and what to the platform it runs on.
    profile: Profile = Profile.auto


@dataclass
class RetentionConfig:
    """A set is kept when any rule keeps it; 0 switches a rule off."""

    days: int = 7
    keep_last: int = 0
    keep_daily: int = 0
    keep_weekly: int = 0
    keep_monthly: int = 0
    keep_yearly: int = 0


@dataclass
class RestoreConfig:
    allowed: bool = True
    confirm: Confirm = Confirm.tty
    safety_backup: bool = True
    # Restore into this database name or URL instead of the configured target.
    target: str | None = None
    create_database: bool = False


@dataclass
class VerifyConfig:
    # "ephemeral": a throwaway cluster; otherwise the URL of a scratch database.
    target: str = "ephemeral"
    after_backup: bool = False


@dataclass
class ClientsConfig:
    # Directory holding pg_dump/psql (and initdb/postgres for verify); null: search.
    bindir: str | None = None


@dataclass
class PgvaultConfig:
    command: Command = Command.backup
    dir: str | None = None
    target: TargetConfig = field(default_factory=TargetConfig)
    retention: RetentionConfig = field(default_factory=RetentionConfig)
    restore: RestoreConfig = field(default_factory=RestoreConfig)
    verify: VerifyConfig = field(default_factory=VerifyConfig)
    clients: ClientsConfig = field(default_factory=ClientsConfig)
    compression: Compression = Compression.none
    quiet: bool = False
    # Seconds a backup waits for another one in the same directory; 0 fails at once.
    lock_timeout: float = 0.0
    # list (and prune): also compare every file's sha256 with the manifest
    format: OutputFormat = OutputFormat.text
    check: bool = False
    # prune
    dry_run: bool = False
    # restore / verify
    prefix: str | None = None
    yes: bool = False
    force: bool = False
    all: bool = False


def register() -> None:
    """Register the schema; config.yaml lists it first so every file merges into it."""
    cs = ConfigStore.instance()
    cs.store(name="pgvault_schema", node=PgvaultConfig)


def to_typed(cfg: Any) -> PgvaultConfig:
    """Turn a composed DictConfig into the dataclass the commands take."""
    from omegaconf import OmegaConf

    obj = OmegaConf.to_object(cfg)
    assert isinstance(obj, PgvaultConfig)
    return obj
