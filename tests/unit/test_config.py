"""The typed config rejects what it should, and the packaged YAML composes as documented."""

from __future__ import annotations

import dataclasses
import typing

import pytest
from hydra import compose, initialize_config_dir
from hypothesis import given
from hypothesis import strategies as st
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from pgvault import config
from pgvault.cli import hydra_error_line, packaged_conf_dir
from pgvault.config import Compression, Confirm, PgvaultConfig, RetentionConfig, to_typed
from pgvault.errors import ConfigError

SCHEMA = OmegaConf.structured(PgvaultConfig)
_HINTS = typing.get_type_hints(PgvaultConfig)
GROUP_FIELDS = {
    name: {g.name for g in dataclasses.fields(t)}
    for name, t in _HINTS.items()
    if dataclasses.is_dataclass(t)
}
identifiers = st.from_regex(r"[a-z][a-z_]{0,15}", fullmatch=True)


@pytest.fixture(scope="module")
def composed():
    """Compose once (it costs ~100 ms); tests then look at the results."""
    config.register()
    out = {}
    with initialize_config_dir(config_dir=str(packaged_conf_dir()), version_base="1.3"):
        out["default"] = compose("config")
        out["prod"] = compose("config", overrides=["env=prod"])
        out["prod_allowed"] = compose("config", overrides=["env=prod", "restore.allowed=true"])
        for policy in ("default", "locked"):
            out[f"prod_{policy}"] = compose("config", overrides=["env=prod", f"restore={policy}"])
        out["prod_default_allowed"] = compose(
            "config", overrides=["env=prod", "restore=default", "restore.allowed=true"]
        )
        out["supabase"] = compose("config", overrides=["target=supabase_local"])
    return out


@given(identifiers.filter(lambda k: k not in {f.name for f in dataclasses.fields(PgvaultConfig)}))
def test_unknown_top_level_keys_are_rejected(key):
    with pytest.raises(OmegaConfBaseException):
        OmegaConf.merge(SCHEMA, {key: 1})


@given(st.sampled_from(sorted(GROUP_FIELDS)), identifiers)
def test_unknown_group_keys_are_rejected(group, key):
    if key in GROUP_FIELDS[group]:
        return
    with pytest.raises(OmegaConfBaseException):
        OmegaConf.merge(SCHEMA, {group: {key: 1}})


@given(st.text(min_size=1, max_size=10).filter(lambda s: s not in {c.name for c in Compression}))
def test_unknown_compressions_are_rejected(value):
    with pytest.raises(OmegaConfBaseException):
        OmegaConf.merge(SCHEMA, {"backup": {"compression": value}})


@given(st.sampled_from(["keep_last", "days", "keep_daily"]), st.sampled_from(["many", "1.5x", ""]))
def test_retention_counts_must_be_integers(key, value):
    with pytest.raises(OmegaConfBaseException):
        OmegaConf.merge(SCHEMA, {"retention": {key: value}})


@given(st.sampled_from(list(Compression)), st.sampled_from(list(Confirm)), st.integers(0, 10**4))
def test_valid_values_survive_into_typed_objects(compression, confirm, days):
    merged = OmegaConf.merge(
        SCHEMA,
        {
            "target": {"name": "x"},
            "backup": {"compression": compression.name},
            "restore": {"confirm": confirm.name},
            "retention": {"days": days},
        },
    )
    typed = to_typed(merged)
    assert typed.backup.compression is compression
    assert typed.restore.confirm is confirm
    assert typed.retention.days == days


def test_packaged_defaults(composed):
    cfg = to_typed(composed["default"])
    assert cfg.target.name == "local" and cfg.target.url is None
    assert cfg.retention == RetentionConfig(days=7)
    assert cfg.restore.allowed is True and cfg.restore.safety_backup is True
    assert cfg.backup.compression is Compression.none


def test_prod_overrides_only_what_differs(composed):
    prod = to_typed(composed["prod"])
    assert prod.restore.allowed is False
    assert prod.retention.keep_monthly > 0
    assert prod.backup.compression is Compression.zstd
    assert prod.target.name == "local"  # not overridden by the overlay
    assert to_typed(composed["prod_allowed"]).restore.allowed is True


def test_only_restore_allowed_lifts_the_envs_lock(composed):
    """Choosing another restore policy under env=prod keeps restores locked."""
    for name in ("prod_default", "prod_locked"):
        assert to_typed(composed[name]).restore.allowed is False, name
        assert to_typed(composed[name]).restore.confirm is Confirm.always, name
    assert to_typed(composed["prod_default_allowed"]).restore.allowed is True


_NUMERIC = [*(f"{node}.{k}" for node in ("retention", "remote.retention") for k in (
    "days", "keep_last", "keep_daily", "keep_weekly", "keep_monthly", "keep_yearly"))]  # fmt: skip
_WAITS = ["lock_timeout", "backup.table_lock_timeout", "restore.table_lock_timeout",
          "remote.timeout", "hooks.timeout"]  # fmt: skip


def _with(key: str, value: object) -> PgvaultConfig:
    cfg = PgvaultConfig()
    node: object = cfg
    *path, last = key.split(".")
    for part in path:
        node = getattr(node, part)
    setattr(node, last, value)
    return cfg


@given(st.sampled_from(_NUMERIC), st.integers(-(10**12), 10**12))
def test_counts_out_of_range_are_refused_up_front(key, value):
    cfg = _with(key, value)
    if 0 <= value <= (config.MAX_DAYS if key.endswith("retention.days") else config.MAX_COUNT):
        config.validate(cfg)
    else:
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            config.validate(cfg)


@given(st.sampled_from(_WAITS), st.floats(allow_nan=True, allow_infinity=True))
def test_waits_must_be_finite_and_in_range(key, seconds):
    cfg = _with(key, seconds)
    least = 0.0 if key == "lock_timeout" else 1.0
    if least <= seconds <= config.MAX_WAIT:
        config.validate(cfg)
    else:  # nan and inf among them: nan would wait forever
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            config.validate(cfg)


def test_supabase_target(composed):
    cfg = to_typed(composed["supabase"])
    assert cfg.target.url == "postgresql://postgres:postgres@127.0.0.1:54322/postgres"


def test_hydra_errors_fold_into_one_line():
    config.register()
    with (
        initialize_config_dir(config_dir=str(packaged_conf_dir()), version_base="1.3"),
        pytest.raises(Exception) as info,
    ):
        compose("config", overrides=["target.prot=5432"])
    line = hydra_error_line(info.value)
    assert "\n" not in line
    assert "prot" in line and "TargetConfig" in line


def test_every_packaged_env_that_locks_restores_says_so_itself():
    """An env that picks a locked restore policy also sets restore.allowed itself, so a
    `restore=default` on the command line cannot unlock it."""
    import yaml

    for path in sorted((packaged_conf_dir() / "env").glob("*.yaml")):
        doc = yaml.safe_load(path.read_text()) or {}
        picks = [d for d in doc.get("defaults", []) if isinstance(d, dict)]
        locked = any(d.get("override /restore") == "locked" for d in picks)
        if locked:
            assert doc.get("restore", {}).get("allowed") is False, path.name


@pytest.mark.parametrize("key", ["remote.endpoint", "target.storage.endpoint"])
@pytest.mark.parametrize(
    "url, fine",
    [
        ("http://127.0.0.1:9000", True),
        ("https://s3.eu-central-1.example.com", True),
        ("http://127.0.0.1:54321/storage/v1/s3", True),
        ("minio:9000", False),
        ("127.0.0.1:9000", False),
        ("ftp://host", False),
        ("http://", False),
        ("http://host:port", False),
        ("https://key:secret@host", False),
        ("https://host/?token=x", False),
    ],
)
def test_s3_endpoints_are_checked_up_front(key, url, fine):
    cfg = _with(key, url)
    if fine:
        config.validate(cfg)
    else:
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")) as e:
            config.validate(cfg)
        assert "secret" not in e.value.line()


def test_push_takes_prune_false_as_its_own_option():
    from pgvault.arguments import prepare

    assert prepare(["push", "prune=false"], set()).overrides == ["push.prune=false"]
    assert prepare(["push", "prune=False"], set()).overrides == ["push.prune=false"]
    assert prepare(["list", "remote=yes"], set()).overrides == ["list.remote=true"]
    assert prepare(["restore", "remote=TRUE"], set()).overrides == ["restore.remote=true"]
    assert prepare(["schedule", "verify=Weekly"], set()).overrides == ["schedule.verify=weekly"]
    assert prepare(["prune", "dry_run=true"], set()).overrides == ["prune.dry_run=true"]
