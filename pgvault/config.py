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
class StorageConfig:
    """Supabase Storage's S3-compatible endpoint, where backup.attachments=true copies the
    buckets from and restore puts them back. Keys: `supabase status` shows them; null reads
    PGVAULT_STORAGE_ACCESS_KEY_ID / PGVAULT_STORAGE_SECRET_ACCESS_KEY."""

    endpoint: str = "http://127.0.0.1:54321/storage/v1/s3"
    region: str = "local"
    access_key_id: str | None = None
    secret_access_key: str | None = None


@dataclass
class TargetConfig:
    """Which database to back up. No url: DATABASE_URL, else libpq's PG* environment."""

    name: str = MISSING
    url: str | None = None
    description: str = ""
    # What belongs to the application and what to the platform it runs on.
    profile: Profile = Profile.auto
    storage: StorageConfig = field(default_factory=StorageConfig)


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
class RemoteRetentionConfig:
    """The remote's own policy: each null key takes the local retention's value."""

    days: int | None = None
    keep_last: int | None = None
    keep_daily: int | None = None
    keep_weekly: int | None = None
    keep_monthly: int | None = None
    keep_yearly: int | None = None


@dataclass
class RemoteConfig:
    """Off-site copies: s3://bucket/prefix (any S3-compatible service) or file:///abs/path.
    Credentials: AWS's usual chain (environment, profile) unless given here."""

    url: str | None = None
    # An S3-compatible service's address (MinIO, R2, B2, Supabase Storage); null: AWS.
    endpoint: str | None = None
    region: str | None = None
    profile: str | None = None
    access_key_id: str | None = None
    secret_access_key: str | None = None
    # Upload each new set right after its backup; false: only `pgvault push` uploads.
    upload: bool = True
    # Seconds one request may take before it is retried, then given up.
    timeout: float = 60.0
    # One writer at a time (pgvault.lease): false for a store without conditional writes.
    lease: bool = True
    # Seconds a run's lease on the remote lasts unless renewed (every third of it): how
    # long a run that died on another machine blocks the remote's other writers.
    lease_ttl: float = 900.0
    retention: RemoteRetentionConfig = field(default_factory=RemoteRetentionConfig)


@dataclass
class EncryptionConfig:
    """age encryption at rest: every file of a set but the manifest, for these recipients
    (age1... public keys); identity: the key file that restore and verify decrypt with."""

    recipients: list[str] = field(default_factory=list)
    identity: str | None = None


@dataclass
class RestoreConfig:
    """restore: the policy (config group restore/) and the command's options."""

    allowed: bool = True
    confirm: Confirm = Confirm.tty
    safety_backup: bool = True
    # Restore into this database name or URL instead of the configured target.
    target: str | None = None
    create_database: bool = False
    # Seconds to wait for a table another session has locked before giving up.
    table_lock_timeout: float = 120.0
    # backup-YYYY-MM-DD-HHMMSS, an absolute path ending in one, or "latest".
    prefix: str | None = None
    yes: bool = False
    force: bool = False
    # Take the set from remote.url (streamed down and checked before use).
    remote: bool = False
    # Put the set's Supabase Storage objects back, when it has them. null: only when the
    # restore goes into the configured target itself (not into restore.target).
    attachments: bool | None = None


@dataclass
class VerifyConfig:
    """verify: where to restore (config group verify/) and which sets."""

    # "ephemeral": a throwaway cluster; otherwise the URL of a scratch database.
    target: str = "ephemeral"
    prefix: str | None = None
    all: bool = False
    remote: bool = False


@dataclass
class BackupOptions:
    compression: Compression = Compression.none
    # Verify the new set right away (verify.target says where).
    verify: bool = False
    # Seconds pg_dump waits for a table another session has locked before giving up.
    table_lock_timeout: float = 120.0
    # Also copy every object of the set's Supabase Storage buckets (target.storage).
    attachments: bool = False


@dataclass
class ListOptions:
    format: OutputFormat = OutputFormat.text
    # Also compare every file's sha256 with the manifest; exit 1 when a set needs a look.
    check: bool = False
    # The sets on remote.url instead of dir's.
    remote: bool = False


@dataclass
class PruneOptions:
    dry_run: bool = False
    check: bool = False
    # Also delete incomplete sets (a killed backup's leftovers) older than a day.
    incomplete: bool = False


@dataclass
class PushOptions:
    dry_run: bool = False
    # Apply the remote's retention policy after uploading.
    prune: bool = True


@dataclass
class ShowOptions:
    prefix: str | None = None
    format: OutputFormat = OutputFormat.text


class ScheduleVerify(Enum):
    none = "none"
    after = "after"  # every scheduled backup also verifies its set
    weekly = "weekly"  # a second entry verifies the newest set once a week


@dataclass
class ScheduleOptions:
    """schedule: when the backup runs, and what `pgvault schedule` installs."""

    # Daily at HH:MM local time; `cron` (five fields) replaces it when set.
    at: str = "02:00"
    cron: str | None = None
    verify: ScheduleVerify = ScheduleVerify.none
    # When verify=weekly: the verify entry's time, as a cron expression.
    verify_cron: str = "30 4 * * 0"
    # Seconds systemd may delay a run at random, so many machines do not start at once.
    randomized_delay: int = 600
    install: bool = False
    uninstall: bool = False


@dataclass
class DoctorOptions:
    format: OutputFormat = OutputFormat.text


@dataclass
class StatusOptions:
    format: OutputFormat = OutputFormat.text


@dataclass
class MonitorConfig:
    """Thresholds of `pgvault status` and of backup's space check. Durations: 90s, 30m,
    26h, 8d, 2w; sizes: 512KB, 64MB, 2GB (1024-based); null switches a check off."""

    max_age: str | None = "26h"
    max_unverified_age: str | None = "8d"
    # Free space a backup leaves beyond its set's expected size, or it refuses to start.
    min_free: str | None = "64MB"


@dataclass
class HooksConfig:
    """Commands run around backup, restore, verify and prune. Each is split like a shell
    line but run without one; the run is described in PGVAULT_* environment variables."""

    before: list[str] = field(default_factory=list)
    after: list[str] = field(default_factory=list)
    on_failure: list[str] = field(default_factory=list)
    # Seconds a hook command may run before it is killed.
    timeout: float = 300.0


class NotifyWhen(Enum):
    failure = "failure"
    always = "always"


@dataclass
class NotifyConfig:
    """Pings in healthchecks.io's style (URL/start, URL, URL/fail) and Apprise URLs."""

    ping_url: str | None = None
    apprise: list[str] = field(default_factory=list)
    apprise_on: NotifyWhen = NotifyWhen.failure
    # Per attempt; a notifier that is down or slow gets one retry, then a warning.
    timeout: float = 10.0
    retries: int = 1


@dataclass
class MetricsConfig:
    # node_exporter's textfile collector reads this file (absolute path, *.prom).
    textfile: str | None = None


@dataclass
class LogConfig:
    # Absolute path: one JSON line per run is appended (the scheduled entry's log).
    file: str | None = None


@dataclass
class ClientsConfig:
    # Directory holding pg_dump/psql (and initdb/postgres for verify); null: search the
    # system's, then the embedded ones (pgvault[embedded]); `system` or `embedded`: only those.
    bindir: str | None = None


@dataclass
class SweepConfig:
    """A multirun (--multirun target=a,b,c): each job's time limit, and the summary's form."""

    # A job still running after this long (90s, 30m, 2h) is ended and reported; null: no limit.
    timeout: str | None = None
    format: OutputFormat = OutputFormat.text


@dataclass
class PgvaultConfig:
    """Keys every command takes, then one node per command (its options)."""

    # The first word of the command line; pgvault.commands.SPECS names the commands.
    command: str = "backup"
    dir: str | None = None
    target: TargetConfig = field(default_factory=TargetConfig)
    clients: ClientsConfig = field(default_factory=ClientsConfig)
    quiet: bool = False
    # Seconds a writer waits for another one in the same directory; 0 fails at once.
    lock_timeout: float = 0.0
    retention: RetentionConfig = field(default_factory=RetentionConfig)
    backup: BackupOptions = field(default_factory=BackupOptions)
    list: ListOptions = field(default_factory=ListOptions)
    prune: PruneOptions = field(default_factory=PruneOptions)
    restore: RestoreConfig = field(default_factory=RestoreConfig)
    verify: VerifyConfig = field(default_factory=VerifyConfig)
    push: PushOptions = field(default_factory=PushOptions)
    show: ShowOptions = field(default_factory=ShowOptions)
    status: StatusOptions = field(default_factory=StatusOptions)
    doctor: DoctorOptions = field(default_factory=DoctorOptions)
    schedule: ScheduleOptions = field(default_factory=ScheduleOptions)
    monitor: MonitorConfig = field(default_factory=MonitorConfig)
    hooks: HooksConfig = field(default_factory=HooksConfig)
    notify: NotifyConfig = field(default_factory=NotifyConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    log: LogConfig = field(default_factory=LogConfig)
    remote: RemoteConfig = field(default_factory=RemoteConfig)
    encryption: EncryptionConfig = field(default_factory=EncryptionConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)


def register() -> None:
    """Register the schema; config.yaml lists it first so every file merges into it."""
    cs = ConfigStore.instance()
    cs.store(name="pgvault_schema", node=PgvaultConfig)


# The widest values that still mean something; beyond them dates overflow and waits
# never end. (retention.check_policy adds the rules about what a policy may keep.)
MAX_DAYS = 36_500
MAX_COUNT = 1_000_000
MAX_WAIT = 7 * 86_400.0


def validate(cfg: PgvaultConfig) -> None:
    """Refuse values out of range before anything runs, with the key and its range."""
    from pgvault.errors import ConfigError

    counts: dict[str, tuple[int, int]] = {"retention.days": (cfg.retention.days, MAX_DAYS)}
    if cfg.remote.retention.days is not None:
        counts["remote.retention.days"] = (cfg.remote.retention.days, MAX_DAYS)
    for rule in ("last", "daily", "weekly", "monthly", "yearly"):
        counts[f"retention.keep_{rule}"] = (getattr(cfg.retention, f"keep_{rule}"), MAX_COUNT)
        remote = getattr(cfg.remote.retention, f"keep_{rule}")
        if remote is not None:
            counts[f"remote.retention.keep_{rule}"] = (remote, MAX_COUNT)
    for key, (value, most) in counts.items():
        if not 0 <= value <= most:
            raise ConfigError(f"{key} is {value}", f"use 0 to {most:_} (0: rule off)")
    waits = {
        "lock_timeout": (cfg.lock_timeout, 0.0),
        "backup.table_lock_timeout": (cfg.backup.table_lock_timeout, 1.0),
        "restore.table_lock_timeout": (cfg.restore.table_lock_timeout, 1.0),
    }
    waits["hooks.timeout"] = (cfg.hooks.timeout, 1.0)
    waits["remote.timeout"] = (cfg.remote.timeout, 1.0)
    waits["remote.lease_ttl"] = (cfg.remote.lease_ttl, 30.0)
    for key, (seconds, least) in waits.items():
        # Written so that nan fails too: every comparison with it is false.
        if not least <= seconds <= MAX_WAIT:
            raise ConfigError(f"{key} is {seconds}", f"give seconds from {least:g} to {MAX_WAIT:g}")
    if not 0 <= cfg.notify.retries <= 10:
        raise ConfigError(f"notify.retries is {cfg.notify.retries}", "use 0 to 10")
    _validate_operations(cfg)


def _validate_operations(cfg: PgvaultConfig) -> None:
    from pathlib import Path

    from pgvault import units
    from pgvault.errors import ConfigError

    m = cfg.monitor
    for key, value in (("max_age", m.max_age), ("max_unverified_age", m.max_unverified_age)):
        if value is not None:
            units.parse_duration(value, f"monitor.{key}")
    if m.min_free is not None:
        units.parse_size(m.min_free, "monitor.min_free")
    if cfg.sweep.timeout is not None:
        units.parse_duration(cfg.sweep.timeout, "sweep.timeout")
    from pgvault import notify

    notify.check(cfg)
    for key, url in (
        ("remote.endpoint", cfg.remote.endpoint),
        ("target.storage.endpoint", cfg.target.storage.endpoint),
    ):
        _check_endpoint(key, url)
    paths = [("log.file", cfg.log.file), ("metrics.textfile", cfg.metrics.textfile)]
    if cfg.clients.bindir not in ("embedded", "system"):  # the two choices that are not paths
        paths.append(("clients.bindir", cfg.clients.bindir))
    for key, path in paths:
        if path is not None and not Path(path).is_absolute():
            raise ConfigError(
                f"{key} must be an absolute path, got '{path}'",
                f"use {key}={Path(path).absolute()}",
            )


def _check_endpoint(key: str, url: str | None) -> None:
    """An S3 endpoint is http(s)://host[:port][/path]; boto3 would fail on anything else
    with a traceback, and only once it is first used."""
    from urllib.parse import urlsplit

    from pgvault.errors import ConfigError

    if url is None:
        return
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  (raises ValueError for a port that is not a number)
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(
            f"{key} must be an http:// or https:// address with a host",
            f"e.g. {key}=https://s3.example.com or http://127.0.0.1:9000",
        )
    if parts.username or parts.password or parts.query or parts.fragment:
        raise ConfigError(
            f"{key} holds a user, query or fragment part",
            "give only scheme, host, port and path; keys go in the environment",
        )


def to_typed(cfg: Any) -> PgvaultConfig:
    """Turn a composed DictConfig into the dataclass the commands take."""
    from omegaconf import OmegaConf

    obj = OmegaConf.to_object(cfg)
    assert isinstance(obj, PgvaultConfig)
    return obj
