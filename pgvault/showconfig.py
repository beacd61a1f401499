"""`--cfg job|hydra|all`: Hydra's own printout, with every password masked."""

from __future__ import annotations

from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from pgvault import config
from pgvault.connection import mask_secrets
from pgvault.errors import ConfigError


def _parse(args: list[str]) -> tuple[str, bool, str | None, list[str]]:
    which, resolve, package, overrides = "job", False, None, []
    it = iter(args)
    for a in it:
        if a in ("--cfg", "-c"):
            which = next(it, "job")
        elif a.startswith("--cfg="):
            which = a.split("=", 1)[1]
        elif a == "--resolve":
            resolve = True
        elif a in ("--package", "-p"):
            package = next(it, None)
        elif a.startswith("-"):
            raise ConfigError(f"{a} does not go with --cfg", "use --cfg job|hydra|all [--resolve]")
        else:
            overrides.append(a)
    if which not in ("job", "hydra", "all"):
        raise ConfigError(f"--cfg {which} is not known", "use --cfg job, hydra or all")
    return which, resolve, package, overrides


def show_config(config_dir: str, args: list[str]) -> None:
    which, resolve, package, overrides = _parse(args)
    config.register()
    with initialize_config_dir(config_dir=config_dir, version_base="1.3", job_name="pgvault"):
        cfg = compose("config", overrides=overrides, return_hydra_config=which != "job")
    if which == "job":
        node = cfg
    elif which == "hydra":
        node = OmegaConf.create({"hydra": cfg.hydra})
    else:
        node = cfg
    if package:
        node = OmegaConf.select(node, package)
    text = OmegaConf.to_yaml(node, resolve=resolve) if OmegaConf.is_config(node) else f"{node}\n"
    print(mask_secrets(text), end="")
