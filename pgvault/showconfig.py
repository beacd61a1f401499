"""`--cfg job|hydra|all`: the configuration as a command would use it, passwords masked.

`--cfg job` shows what the command takes, with every value resolved the way the
command resolves it: dir from $BACKUP_DIR, the target from DATABASE_URL or libpq's
environment. Hydra's own `--cfg hydra|all` printout is passed through, masked.
"""

from __future__ import annotations

import os
from dataclasses import asdict
from enum import Enum
from typing import Any
from urllib.parse import quote, urlencode

from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from pgvault import config, masking
from pgvault.commands import SPECS
from pgvault.connection import conn_for_target, mask_secrets
from pgvault.errors import ConfigError, PgvaultError


def _parse(flags: list[str]) -> tuple[str, str | None, bool]:
    which, package, resolve = "job", None, False
    it = iter(flags)
    for a in it:
        if a in ("--cfg", "-c"):
            which = next(it, "job")
        elif a.startswith("--cfg="):
            which = a.split("=", 1)[1]
        elif a in ("--package", "-p"):
            package = next(it, None)
        elif a == "--resolve":
            resolve = True
        else:
            raise ConfigError(f"{a} does not go with --cfg", "use --cfg job|hydra|all")
    if which not in ("job", "hydra", "all"):
        raise ConfigError(f"--cfg {which} is not known", "use --cfg job, hydra or all")
    return which, package, resolve


def effective(cfg: config.PgvaultConfig, command: str) -> tuple[dict[str, Any], list[str]]:
    """The keys command takes with the values it would use, and notes on where the
    values came from. Passwords are left in: the caller masks the text."""
    full = _plain(asdict(cfg))
    notes = []
    if cfg.dir is None:
        notes.append("dir: BACKUP_DIR is not set and no dir= was given")
    elif os.environ.get("BACKUP_DIR") == cfg.dir:
        notes.append("dir: from $BACKUP_DIR")
    try:
        conn = conn_for_target(cfg.target)
        params = conn.params
        if not cfg.target.url:
            source = "DATABASE_URL" if os.environ.get("DATABASE_URL") else "libpq's environment"
            notes.append(f"target.url: from {source}")
        full["target"]["url"] = cfg.target.url or _url(
            conn.user, conn.where, conn.dbname, conn.password, params
        )
    except PgvaultError as e:
        notes.append(f"target.url: {e.line()}")
    # A ping URL's path and most Apprise URLs are tokens: shown as scheme and host.
    from pgvault.notify import shown_url

    notify = full["notify"]
    if notify["ping_url"]:
        notify["ping_url"] = shown_url(notify["ping_url"])
    notify["apprise"] = [shown_url(u) for u in notify["apprise"]]
    for node in (full["remote"], full["target"]["storage"]):
        if node["secret_access_key"]:
            node["secret_access_key"] = "****"
    keys = SPECS[command].keys
    shown: dict[str, Any] = {"command": command}
    for key in full:
        if key in keys:
            shown[key] = full[key]
        else:
            inner = {k.split(".", 1)[1] for k in keys if k.startswith(key + ".")}
            if inner:
                shown[key] = {k: v for k, v in full[key].items() if k in inner}
    return shown, notes


def _url(user: str, where: str, dbname: str, password: str | None, params: dict[str, str]) -> str:
    """A libpq URL of what the client programs will reach (its password as ****)."""
    host, _, port = where.rpartition(":")
    query = {k: v for k, v in sorted(params.items()) if k not in ("host", "port", "user", "dbname")}
    if host.startswith("/"):  # a socket directory goes in the query
        query = {"host": host, "port": port, **query}
        netloc = ""
    else:
        netloc = f"{host}:{port}"
    auth = quote(user) + (":****" if password else "")
    return f"postgresql://{auth}@{netloc}/{quote(dbname)}" + (
        f"?{urlencode(query, safe='/')}" if query else ""
    )


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value.value if isinstance(value, Enum) else value


def show_config(config_dir: str, command: str, flags: list[str], overrides: list[str]) -> None:
    which, package, resolve = _parse(flags)
    config.register()
    masking.register_resolver()  # the overrides' passwords are ${pgvault_secret:N}
    with initialize_config_dir(config_dir=config_dir, version_base="1.3", job_name="pgvault"):
        cfg = compose("config", overrides=overrides, return_hydra_config=which != "job")
    if which == "job":
        shown, notes = effective(config.to_typed(cfg), command)
        node: Any = OmegaConf.create(shown)
    else:
        node, notes = (OmegaConf.create({"hydra": cfg.hydra}) if which == "hydra" else cfg), []
    if package:
        node = OmegaConf.select(node, package)
    # job's values are resolved already; Hydra's own need a run to resolve some of them.
    resolved = resolve or which == "job"
    text = OmegaConf.to_yaml(node, resolve=resolved) if OmegaConf.is_config(node) else f"{node}\n"
    print(mask_secrets(text), end="")
    for note in notes:
        print(mask_secrets(f"# {note}"))
