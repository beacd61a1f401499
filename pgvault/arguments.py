"""argv -> (command, Hydra flags, overrides), checked against the command's options.

Hydra would accept any key of the schema for any command, and offer `+key=value` for a
misspelt one. Here every override is read with Hydra's own grammar first, then:
- a bare option of the command gets its node (`list format=json` -> `list.format=json`);
- a key the config does not have is refused with the closest one it does have;
- a key of another command is refused with the keys this command takes.
"""

from __future__ import annotations

import difflib
import functools
import os
import re
from dataclasses import dataclass, fields, is_dataclass
from pathlib import Path

from pgvault import masking
from pgvault.commands import COMMON, SPECS, Spec
from pgvault.config import PgvaultConfig
from pgvault.errors import ConfigError

# Hydra's own flags; those in _TAKES_VALUE read the next word too.
HYDRA_FLAGS = {
    "--help",
    "-h",
    "--hydra-help",
    "--info",
    "-i",
    "--shell-completion",
    "-sc",
    "--cfg",
    "-c",
    "--multirun",
    "-m",
    "--resolve",
    "--package",
    "-p",
}
_TAKES_VALUE = {"--cfg", "-c", "--package", "-p"}
_OPTIONAL_VALUE = {
    "--info": {"all", "config", "defaults", "defaults-tree", "plugins", "searchpath"},
    "-i": {"all", "config", "defaults", "defaults-tree", "plugins", "searchpath"},
    "--shell-completion": {
        f"{verb}={shell}"
        for verb in ("install", "uninstall", "query")
        for shell in ("bash", "zsh", "fish")
    },
}
_OPTIONAL_VALUE["-sc"] = _OPTIONAL_VALUE["--shell-completion"]

# `verify` is a config group, so `verify=true` would read as a group choice: for backup
# it has always meant "verify the new set".
_SHORTHAND: dict[str, dict[str, str]] = {
    "backup": {"verify=true": "backup.verify=true", "verify=false": "backup.verify=false"},
    "schedule": {f"verify={v}": f"schedule.verify={v}" for v in ("none", "after", "weekly")},
}
# `remote` is the remote's node, so `remote=true` would replace it: for the commands that
# read sets it means "the remote's sets".
# `prune` is the prune command's node, so `push prune=false` means push's own option.
_SHORTHAND["push"] = {f"prune={v}": f"push.prune={v}" for v in ("true", "false")}
for _cmd in ("list", "restore", "verify"):
    _SHORTHAND.setdefault(_cmd, {}).update(
        {f"remote={v}": f"{_cmd}.remote={v}" for v in ("true", "false")}
    )


# Keys that moved into their command's node in 0.2: where they went.
MOVED = {
    "compression": "backup.compression", "verify.after_backup": "backup.verify",
    "format": "list.format", "check": "list.check", "dry_run": "prune.dry_run",
    "prefix": "restore.prefix", "yes": "restore.yes", "force": "restore.force",
    "all": "verify.all",
}  # fmt: skip


@dataclass(frozen=True)
class Invocation:
    command: str
    flags: list[str]
    overrides: list[str]


@functools.cache
def schema_paths(cls: type = PgvaultConfig, prefix: str = "") -> frozenset[str]:
    """Every node and leaf of the config schema as a dotted path."""
    out: set[str] = set()
    for f in fields(cls):
        path = f"{prefix}{f.name}"
        out.add(path)
        kind = f.default_factory() if callable(f.default_factory) else None
        if kind is not None and is_dataclass(kind):
            node: type = type(kind)
            out |= schema_paths(node, path + ".")
    return frozenset(out)


@functools.cache
def text_keys(cls: type = PgvaultConfig, prefix: str = "") -> frozenset[str]:
    """The leaves of the schema that hold text (str or str | None): where a URL goes."""
    out: set[str] = set()
    for f in fields(cls):
        kind = f.default_factory() if callable(f.default_factory) else None
        if kind is not None and is_dataclass(kind):
            node: type = type(kind)
            out |= text_keys(node, f"{prefix}{f.name}.")
        elif str(f.type) in ("str", "str | None"):
            out.add(f"{prefix}{f.name}")
    return frozenset(out)


def config_groups(*dirs: Path | None) -> set[str]:
    """The config groups (sub-folders) of the given conf dirs."""
    return {p.name for d in dirs if d is not None and d.is_dir() for p in d.iterdir() if p.is_dir()}


def split(argv: list[str]) -> tuple[str | None, list[str], list[str]]:
    """Return (command word or None, Hydra flags with their values, the other words)."""
    command = argv[0] if argv and not argv[0].startswith("-") else None
    rest = argv[1:] if command is not None else argv
    flags: list[str] = []
    words: list[str] = []
    it = iter(range(len(rest)))
    for i in it:
        a = rest[i]
        name = a.split("=", 1)[0]
        if name in HYDRA_FLAGS and (name == a or name in ("--cfg", "--info")):
            flags.append(a)
            if (a in _TAKES_VALUE and i + 1 < len(rest)) or (
                a in _OPTIONAL_VALUE and i + 1 < len(rest) and rest[i + 1] in _OPTIONAL_VALUE[a]
            ):
                flags.append(rest[i + 1])
                next(it, None)
            elif a in ("--info", "-i"):
                # Its value is optional: said explicitly, it cannot swallow an override.
                flags.append("all")
        elif a.startswith("-") and "=" not in a:
            raise ConfigError(f"unknown flag {a}", "see `pgvault --help`")
        elif a in SPECS:
            raise ConfigError(
                f"'{a}' is a command, and the command comes first",
                f"write pgvault {a} {' '.join(x for x in argv if x != a)}",
            )
        else:
            words.append(a)
    return command, flags, words


def expand_home(word: str) -> str:
    """`dir=~/backups` as zsh passes it: expand ~ as the shell would have (in each value
    of a `--multirun` sweep too)."""
    key, sep, value = word.partition("=")
    if not sep or "~" not in value:
        return word
    return f"{key}=" + ",".join(_expand(v) for v in value.split(","))


def _expand(value: str) -> str:
    if value == "~" or value.startswith("~/") or re.match(r"~[\w.-]+(/|$)", value):
        return os.path.expanduser(value)
    return value


def prepare(argv: list[str], groups: set[str]) -> Invocation:
    """Given argv after `pgvault` and the config groups, return what to run; ConfigError
    (one line) for a command, flag or override that cannot be right."""
    word, flags, words = split(argv)
    if word is None:
        if not flags or any(f in ("-m", "--multirun") for f in flags):
            raise ConfigError(
                "no command given", f"use one of: {', '.join(SPECS)}; see pgvault --help"
            )
        word = "backup"  # `pgvault --help`, `pgvault --cfg job`: Hydra's flags alone
    spec = SPECS.get(word)
    if spec is None:
        close = difflib.get_close_matches(word, SPECS, n=1)
        hint = f"did you mean `pgvault {close[0]}`?" if close else f"use one of: {', '.join(SPECS)}"
        raise ConfigError(f"unknown command '{word}'", hint)
    overrides = [check_override(spec, _shorthand(word, w), groups) for w in words]
    return Invocation(word, flags, overrides)


# How Hydra and OmegaConf spell a bool; a shorthand takes any of them.
_BOOLS = {"true": "true", "yes": "true", "on": "true", "false": "false", "no": "false",
          "off": "false"}  # fmt: skip


def _shorthand(command: str, word: str) -> str:
    key, sep, value = word.partition("=")
    spelled = _BOOLS.get(value.lower(), value.lower()) if sep else value
    return _SHORTHAND.get(command, {}).get(f"{key}={spelled}", expand_home(word))


def check_override(spec: Spec, word: str, groups: set[str]) -> str:
    """Return the override as Hydra should get it, or raise ConfigError."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        override = OverridesParser.create().parse_override(word)
    except HydraException as e:
        why = str(e).strip().splitlines()[0] if str(e).strip() else "unreadable"
        raise ConfigError(
            f"cannot read '{word}': {why}",
            "write key=value; quote a value with spaces or any of []{}(),'\"=~$ in single "
            "quotes for the shell and double quotes inside, e.g. 'dir=\"/a b\"'",
        ) from None
    key = override.key_or_group
    if key == "hydra" or key.startswith(("hydra.", "hydra/")):
        return word
    if override.is_delete():
        raise ConfigError(f"'{word}' removes {key} from the config", f"set it instead: {key}=VALUE")
    paths = schema_paths()
    if key not in paths and key not in groups:
        if "." not in key and "/" not in key and key in option_names(spec):
            key = f"{spec.options}.{key}"
        elif any(key in option_names(s) for s in SPECS.values()):
            raise ConfigError(f"{spec.name} does not take {key}", what_it_takes(spec, key))
        elif key in MOVED:
            raise ConfigError(f"{key} is now {MOVED[key]}", f"write {MOVED[key]}=VALUE")
        else:
            raise ConfigError(f"unknown key '{key}'", suggest(spec, key, paths | groups))
    if override.is_add() or override.is_force_add():
        raise ConfigError(
            f"'{word}' adds a key, and {key} is one already", f"drop the +: {word.lstrip('+')}"
        )
    if not takes(spec, key):
        raise ConfigError(f"{spec.name} does not take {key}", what_it_takes(spec, key))
    value = word.split("=", 1)[1] if "=" in word else ""
    return f"{key}={value}"


def conceal(word: str) -> str:
    """Return the override with each password in its value (or each value of a sweep)
    replaced by an interpolation that reads it back from this process (masking.slot), so
    Hydra never holds it: not in --info, its errors, or a saved config."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import ChoiceSweep, Override, QuotedString, ValueType

    override = OverridesParser.create().parse_override(word)
    key = override.key_or_group
    # hydra.job.env_set.PGPASSWORD, remote.secret_access_key
    whole = key.lower().endswith(masking.SECRET_KEYS)
    if key not in text_keys() and not whole:
        return word  # Hydra refuses a URL for a number, an enum or a bool at once
    value = override.value()
    if isinstance(value, str):
        shown = _concealed(value, whole)
    elif isinstance(value, ChoiceSweep) and not value.tags and not value.shuffle:
        items = [
            _concealed(v, whole) if isinstance(v, str | QuotedString) else None for v in value.list
        ]
        if all(i is None for i in items):
            return word
        listed = ",".join(
            i if i is not None else Override._get_value_element_as_str(v)
            for i, v in zip(items, value.list, strict=True)
        )
        simple = override.value_type is ValueType.SIMPLE_CHOICE_SWEEP
        shown = listed if simple else f"choice({listed})"
    else:
        return word
    return word if shown is None else f"{override.get_key_element()}={shown}"


def _concealed(value: object, whole: bool) -> str | None:
    """The value, as a quoted override value with its passwords taken out; None when it
    holds none."""
    from hydra.core.override_parser.types import Quote, QuotedString

    text = value.text if isinstance(value, QuotedString) else str(value)
    found = [(0, len(text))] if whole and text else masking.password_spans(text)
    # A sweep job's child gets its overrides with the slots still in: they stay as they are.
    taken = masking.slot_spans(text)
    found = [(a, b) for a, b in found if all(b <= c or a >= d for c, d in taken)]
    spans: list[tuple[int, int]] = []
    for a, b in sorted(found, key=lambda s: s[0] - s[1]):  # a password before its prefix
        if all(b <= c or a >= d for c, d in spans):
            spans.append((a, b))
    if not spans:
        return None
    out, pos = [], 0
    for a, b in sorted(spans):
        out += [text[pos:a], masking.slot(text[a:b], public=text[:a] + text[b:])]
        pos = b
    return QuotedString(text="".join([*out, text[pos:]]), quote=Quote.single).with_quotes()


def option_names(spec: Spec) -> list[str]:
    """The keys a command takes bare: its options node's fields."""
    return sorted(p.split(".", 1)[1] for p in schema_paths() if p.startswith(spec.options + "."))


def takes(spec: Spec, key: str) -> bool:
    """Whether spec reads key: it is one of its keys, inside one, or a node holding one."""
    return any(key == k or key.startswith(k + ".") or k.startswith(key + ".") for k in spec.keys)


def suggest(spec: Spec, key: str, known: frozenset[str] | set[str]) -> str:
    """The hint for an unknown key: the closest key this command takes."""
    mine = sorted(p for p in known if takes(spec, p)) + option_names(spec)
    close = difflib.get_close_matches(key, mine, n=1, cutoff=0.6)
    if close:
        return f"did you mean {close[0]}?"
    return what_it_takes(spec, key)


def what_it_takes(spec: Spec, key: str) -> str:
    known = key in schema_paths()
    owners = [
        s.name
        for s in SPECS.values()
        if s is not spec and (key in option_names(s) or (known and takes(s, key)))
    ]
    lead = f"{key} is an option of {' and '.join(owners)}; " if owners else ""
    # An option named like a common key, or like a node the command also reads (list's
    # remote=true and the remote node), is only reached in full (restore.target).
    options = ", ".join(
        f"{spec.options}.{n}" if n in COMMON or n in spec.takes else n for n in option_names(spec)
    )
    others = ", ".join(k for k in spec.takes)
    return (
        f"{lead}{spec.name} takes {options}"
        + (f", {others}" if others else "")
        + f", and {', '.join(COMMON)}"
    )
