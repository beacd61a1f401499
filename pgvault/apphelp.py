"""`pgvault --help`, rendered as Hydra renders it, without Hydra's cost of listing groups.

Hydra's --help fills $APP_CONFIG_GROUPS and $HYDRA_CONFIG_GROUPS whether the template
uses them or not, and lists each group's options by copying its whole config repository
once per group: three quarters of a second here. The template is still read from the
composed config (a user's config.yaml may replace it) and filled with the same text; a
template that asks for anything else than $APP_CONFIG_GROUPS is left to Hydra.
"""

from __future__ import annotations

import os
import string
from pathlib import Path
from typing import Any


def app_groups(search_dirs: list[Path]) -> str:
    """The $APP_CONFIG_GROUPS text: `group: option, option` per line, as Hydra's
    format_config_groups writes it, for every group with a .yaml file in the dirs (nested
    groups as a/b), Hydra's own groups (hydra/...) left out."""
    groups: dict[str, set[str]] = {}
    for root in search_dirs:
        # Into symlinked folders too, as Hydra's file source goes.
        for folder, _, files in os.walk(root, followlinks=True):
            group = Path(folder).relative_to(root).as_posix()
            if group == "." or group == "hydra" or group.startswith("hydra/"):
                continue
            names = {f.removesuffix(".yaml") for f in files if f.endswith(".yaml")}
            if names:
                groups.setdefault(group, set()).update(names)
    return "".join(f"{g}: {', '.join(sorted(groups[g]))}\n" for g in sorted(groups))


def render(template: str, search_dirs: list[Path]) -> str | None:
    """The help text for template, or None when it uses what only Hydra fills in."""
    text = string.Template(template)
    if not set(text.get_identifiers()) <= {"APP_CONFIG_GROUPS"}:
        return None
    return text.substitute(APP_CONFIG_GROUPS=app_groups(search_dirs))


def show_packaged(conf_dir: Path) -> bool:
    """Print the packaged configs' help, read straight from their config.yaml, with no
    Hydra at all (a user's conf/ may change it: then show() composes it); False when the
    template needs OmegaConf to resolve it, or Hydra to fill it in."""
    import yaml

    with open(conf_dir / "config.yaml", encoding="utf-8") as f:
        data = yaml.safe_load(f)
    template = ((data.get("hydra") or {}).get("help") or {}).get("template")
    if not isinstance(template, str) or "${" in template:
        return False
    text = render(template, [conf_dir])
    if text is None:
        return False
    print(text)
    return True


def show(hydra: Any, config_dir: str, overrides: list[str]) -> bool:
    """Print the app's help for these overrides, composed by hydra (cli.hydra_for);
    False when Hydra must render it."""
    from hydra.types import RunMode

    cfg = hydra.compose_config(config_name="config", overrides=overrides, run_mode=RunMode.RUN)
    extra = [str(p) for p in cfg.hydra.searchpath]
    if any(not p.startswith("file://") for p in extra):  # pkg://: Hydra knows best
        return False
    dirs = [Path(config_dir), *(Path(p.removeprefix("file://")) for p in extra)]
    text = render(str(cfg.hydra.help.template), dirs)
    if text is None:
        return False
    print(text)
    return True
