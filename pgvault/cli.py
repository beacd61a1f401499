"""argv -> command + Hydra overrides; our errors -> one line on stderr and an exit code.

Hydra has no subcommands: the first word picks the command and becomes `command=NAME`
for one `@hydra.main` app, so --help, --multirun, tab completion and --cfg behave as
Hydra users expect. HYDRA_FULL_ERROR=1 makes Hydra raise instead of printing, so every
error, Hydra's included, reaches main() and leaves as one line.

Passwords are masked wherever text leaves: the process title is rewritten before Hydra
is even imported (hence the imports inside functions), stderr and log records are
masked, and passwords in overrides are replaced by interpolations (pgvault.masking).
"""

from __future__ import annotations

import contextlib
import os
import re
import select
import signal
import sys
import tempfile
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any, NoReturn

from pgvault import __version__, masking
from pgvault.errors import ConfigError, PgvaultError, one_line


def packaged_conf_dir() -> Path:
    """conf/ inside an installed wheel, else the top-level conf/ of a source checkout."""
    here = Path(__file__).resolve().parent
    inside = here / "conf"
    return inside if (inside / "config.yaml").is_file() else here.parent / "conf"


def user_conf_dir() -> Path | None:
    """The user's own configs: $PGVAULT_CONFIG_DIR, else ./conf; None when absent."""
    env = os.environ.get("PGVAULT_CONFIG_DIR")
    if env:
        path = Path(env)
        if not path.is_dir():
            raise ConfigError(
                f"PGVAULT_CONFIG_DIR={env} is not a directory", "create it or unset it"
            )
        return path.resolve()
    local = Path.cwd() / "conf"
    return local.resolve() if local.is_dir() else None


def search_setup() -> tuple[str, list[str]]:
    """Return (main config dir, extra overrides).

    A user's conf/ with its own config.yaml becomes the main config dir (so every one
    of its files wins) and the packaged configs come after it. Without a config.yaml
    the packaged dir stays main and the user's dir follows it: its new targets, envs
    and policies are found, but a file named like a packaged one cannot replace it
    (Hydra 1.3 cannot find the primary config outside the main dir), so we say so.
    """
    packaged = packaged_conf_dir()
    user = user_conf_dir()
    if user is None or user == packaged.resolve():
        return str(packaged), []
    if (user / "config.yaml").is_file():
        return str(user), [f"hydra.searchpath=[file://{packaged}]"]
    for path in sorted(user.glob("*/*.yaml")):
        rel = path.relative_to(user)
        if (packaged / rel).is_file():
            print(
                f"pgvault: warning: {path} does not replace the packaged {rel}; give it "
                f"another name and select it ({rel.parent}={rel.stem}x), or add a config.yaml",
                file=sys.stderr,
            )
    return str(packaged), [f"hydra.searchpath=[file://{user}]"]


def main(argv: list[str] | None = None, secrets: list[str] | None = None) -> None:
    """secrets: the passwords a sweep's job hands its child (pgvault.sweep), which its
    arguments refer to as ${pgvault_secret:N}."""
    args = list(sys.argv[1:] if argv is None else argv)
    remember_secrets(args)
    masking.adopt(secrets or [])
    if argv is None:  # the real command line: this process's title and its last words
        masking.hide_in_title(sys.orig_argv)
        sys.excepthook = _masked_excepthook
    with masking.masked_output():
        _main(args)


def remember_secrets(args: list[str]) -> None:
    """Make the passwords of this run known to the masking: in the arguments (however
    malformed), DATABASE_URL and PGPASSWORD."""
    masking.reset()
    for a in args:
        masking.remember_in(a)
        key, sep, value = a.partition("=")
        if sep and key.lower().endswith(masking.SECRET_KEYS):
            masking.remember(value.strip("'\""))
    masking.remember_in(os.environ.get("DATABASE_URL"))
    for name in ("AWS_SECRET_ACCESS_KEY", "PGVAULT_STORAGE_SECRET_ACCESS_KEY"):
        masking.remember(os.environ.get(name))
    public = " ".join(os.environ.get(k, "") for k in ("PGUSER", "PGDATABASE", "PGHOST"))
    masking.remember(os.environ.get("PGPASSWORD"), public=public)


def _masked_excepthook(
    kind: type[BaseException], e: BaseException, tb: TracebackType | None
) -> None:
    sys.stderr.write(masking.mask("".join(traceback.format_exception(kind, e, tb))))


# Whether the user asked for Hydra's tracebacks; the CLI sets HYDRA_FULL_ERROR for itself.
_full_error = False


def _main(args: list[str]) -> None:
    global _full_error
    full_error = _full_error = os.environ.get("HYDRA_FULL_ERROR") == "1"
    command = "backup"
    # SIGTERM unwinds like Ctrl-C, so throwaway clusters and partial files are cleaned up.
    signal.signal(signal.SIGTERM, _terminated)
    try:
        if "--version" in args or args[:1] == ["-V"]:
            print(f"pgvault {__version__}")
            return
        if args in (["--help"], ["-h"]) and user_conf_dir() is None:
            from pgvault import apphelp

            if apphelp.show_packaged(packaged_conf_dir()):
                return
        if any(a in ("-sc", "--shell-completion") for a in args) and _complete_command():
            return
        from pgvault import arguments  # Hydra and the schema: after the cheap answers

        config_dir, extra = search_setup()
        groups = arguments.config_groups(Path(config_dir), user_conf_dir(), packaged_conf_dir())
        call = arguments.prepare(args, groups)
        command = call.command
        # Hydra gets ${pgvault_secret:N} for each password, so it never holds one.
        hidden = [arguments.conceal(o) for o in call.overrides]
        overrides = [*extra, *hidden, f"command={call.command}"]
        if "--hydra-help" in call.flags:  # Hydra's own help composes no app config
            overrides = extra
        if any(a in ("--cfg", "-c") or a.startswith("--cfg=") for a in call.flags):
            from pgvault.showconfig import show_config

            show_config(config_dir, call.command, call.flags, overrides)
            return
        if any(a in ("--help", "-h") for a in call.flags) and len(call.flags) == 1:
            from pgvault import apphelp

            with hydra_for(config_dir) as hydra:
                shown = apphelp.show(hydra, config_dir, overrides)
            if shown:
                return
        # Set for Hydra only: an embedding process (or a test) keeps its own setting.
        saved = os.environ.get("HYDRA_FULL_ERROR")
        os.environ["HYDRA_FULL_ERROR"] = "1"
        try:
            if any(a in ("-m", "--multirun") for a in call.flags):
                swept = [*call.flags, *overrides]
                _run_sweep(config_dir, swept, lambda a: _run_hydra(config_dir, a))
            else:
                _run_hydra(config_dir, [*call.flags, *overrides])
        finally:
            if saved is None:
                os.environ.pop("HYDRA_FULL_ERROR", None)
            else:
                os.environ["HYDRA_FULL_ERROR"] = saved
    except PgvaultError as e:
        _fail(e.line(), e.exit_code)
    except KeyboardInterrupt:
        _fail("interrupted (nothing that was unfinished was kept)", 130)
    except BrokenPipeError:
        if not _stdout_closed():
            raise
        # The reader went away (`pgvault list | head`): stop quietly, as `ls | head` does.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(141)
    except Exception as e:
        if full_error:
            raise
        from hydra.errors import HydraException
        from omegaconf.errors import OmegaConfBaseException

        if isinstance(e, HydraException | OmegaConfBaseException) or _from_hydra(e):
            _fail(hydra_error_line(e, command), ConfigError.exit_code)
        raise


def _stdout_closed() -> bool:
    """Whether stdout is a pipe whose reader has gone (poll reports an error on it)."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & select.POLLERR for _, events in poller.poll(0))
    except (OSError, ValueError):
        return False


def _terminated(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _from_hydra(e: BaseException) -> bool:
    """Hydra rejects some bad overrides with a bare ValueError/TypeError."""
    tb = e.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    module = tb.tb_frame.f_globals.get("__name__", "") if tb is not None else ""
    return isinstance(e, ValueError | TypeError) and module.startswith(("hydra.", "omegaconf."))


def _complete_command() -> bool:
    """Make Hydra's shell completion see the words after the command.

    The completion script passes the whole line in COMP_LINE; Hydra would read the
    command word as a malformed override. Completing the command word itself is ours.
    Returns True when the completion was answered here.
    """
    from pgvault.commands import SPECS

    line = os.environ.get("COMP_LINE")
    if line is None:
        return False
    point = int(os.environ.get("COMP_POINT", len(line)))
    words = line[:point].split(" ")
    if len(words) == 2 and "=" not in words[1]:
        print(" ".join(c for c in SPECS if c.startswith(words[1])))
        return True
    if len(words) > 2 and words[1] in SPECS:
        cut = len(words[0]) + 1 + len(words[1])
        os.environ["COMP_LINE"] = line[: cut - len(words[1]) - 1] + line[cut:]
        os.environ["COMP_POINT"] = str(point - len(words[1]) - 1)
    return False


def _fail(line: str, code: int) -> NoReturn:
    _error(line)
    sys.exit(code)


def _error(line: str) -> None:
    """Print one error line: on one line, whatever the program that said it, and masked."""
    print(f"pgvault: error: {masking.mask(one_line(line))}", file=sys.stderr)


def hydra_error_line(e: BaseException, command: str = "backup") -> str:
    """Fold a Hydra/OmegaConf error and its cause into one line with a hint."""
    return hydra_error(e, command).line()


def hydra_error(e: BaseException, command: str = "backup") -> ConfigError:
    """A Hydra/OmegaConf error and its cause as our ConfigError, on one line."""
    from pgvault import arguments

    parts = []
    for ex in (e, e.__cause__):
        if ex is None:
            continue
        text = str(ex).split("\n    full_key:")[0].split("\nConfig search path:")[0]
        text = re.sub(r"\s*\n\s*", " ", text).strip()
        if text and text not in parts:
            parts.append(text)
    what = "; ".join(parts) or type(e).__name__
    moved = re.search(r"Key '([\w.]+)' not in 'PgvaultConfig'", what)
    if moved and moved.group(1) in arguments.MOVED:
        # A config file of pgvault 0.1: its command options now live in their node.
        new = arguments.MOVED[moved.group(1)]
        return ConfigError(
            f"invalid configuration: {what}", f"in your conf files, {moved.group(1)} is now {new}"
        )
    return ConfigError(
        f"invalid configuration: {what}", f"see `pgvault --help` and `pgvault {command} --cfg job`"
    )


def _run_hydra(config_dir: str, args: list[str]) -> None:
    import hydra
    from omegaconf import DictConfig

    from pgvault import config

    config.register()
    masking.register_resolver()
    # Our errors are kept here rather than raised through Hydra, which would print its
    # own "Error executing job" line; a multirun thus runs every job, then reports.
    failures: list[PgvaultError] = []

    @hydra.main(version_base="1.3", config_path=config_dir, config_name="config")
    def app(cfg: DictConfig) -> None:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode
        from omegaconf.errors import OmegaConfBaseException

        hc = HydraConfig.get()
        if hc.mode == RunMode.MULTIRUN:  # each job in a process of its own: pgvault.sweep
            _sweep_job(cfg)
            return
        choices = hc.runtime.choices
        try:
            typed = config.to_typed(cfg)
        except OmegaConfBaseException as e:  # a value only resolving it shows wrong
            failures.append(hydra_error(e, str(cfg.get("command") or "backup")))
            return
        try:
            target = choices.get("target")
            dispatch(typed, env_name=str(choices.get("env", "default")),
                     target_group=str(target) if target else None,
                     overrides=tuple(HydraConfig.get().overrides.task))  # fmt: skip
        except PgvaultError as e:
            failures.append(e)

    # Hydra's flags, a config that makes runs sweeps, or one that does not compose: all
    # as @hydra.main does it, with its own command line and its own error.
    outcome = "flags" if any(a.startswith("-") for a in args) else None
    outcome = outcome or _run_once(config_dir, args, app.__wrapped__)
    if outcome != "ran":

        def hydra_main(argv: list[str]) -> None:
            saved = sys.argv
            sys.argv = [saved[0] if saved else "pgvault", *argv]
            try:
                app()
            finally:
                sys.argv = saved

        if outcome == "multirun":  # hydra.mode=MULTIRUN from a config sweeps as -m does
            _run_sweep(config_dir, args, hydra_main)
        else:
            hydra_main(args)
    for e in failures[:-1]:
        _error(e.line())
    if failures:
        raise failures[-1]


def _run_sweep(config_dir: str, args: list[str], run: Callable[[list[str]], None]) -> None:
    """Run a multirun in a private sweep dir, then print its summary (pgvault.sweep);
    raises naming every job that failed. Hydra's multirun is called here rather than
    through @hydra.main, so the jobs' outcomes come back from any launcher (Ray's remote
    workers too); with other Hydra flags, @hydra.main runs it and the outcome files
    alone tell."""
    from pgvault import sweep

    flags = [a for a in args if a.startswith("-")]
    overrides = [a for a in args if not a.startswith("-")]
    sweep.check(overrides)
    with private_sweep() as sweep_dir, sweep.sweeping(overrides, _full_error) as extra:
        more = [f"hydra.sweep.dir={sweep_dir}", *extra]
        returned: Any = []
        stopped: Exception | None = None
        try:
            if set(flags) <= {"-m", "--multirun"}:
                with hydra_for(config_dir) as hydra:
                    returned = hydra.multirun(
                        config_name="config", task_function=_sweep_job,
                        overrides=[*overrides, *more],
                    )  # fmt: skip
            else:
                run([*args, *more])
        except Exception as e:  # the launcher's own failure: the jobs that ended still count
            stopped = e
        sweep.summarize(sweep_dir, sweep.returned(returned), stopped)


def _sweep_job(cfg: Any) -> dict[str, Any]:
    """A multirun's task, in whatever process the launcher gives it: pgvault.sweep."""
    from hydra.core.hydra_config import HydraConfig

    from pgvault import sweep

    hc = HydraConfig.get()
    return sweep.run_job(cfg, tuple(hc.overrides.task), str(hc.sweep.dir), int(hc.job.num))


@contextlib.contextmanager
def private_sweep() -> Iterator[str]:
    """The hydra.sweep.dir of a multirun. Hydra saves the composed config as
    multirun.yaml in the sweep dir, with any password of a config file: a private dir,
    removed afterwards, whose multirun.yaml is /dev/null, so not even a kill -9 leaves it
    behind. The jobs' outcomes are written there too."""
    with tempfile.TemporaryDirectory(prefix="pgvault-multirun-") as sweep:
        os.symlink(os.devnull, os.path.join(sweep, "multirun.yaml"))
        yield sweep


def _run_once(config_dir: str, overrides: list[str], task: Callable[[Any], None]) -> str:
    """What @hydra.main does for a plain run (Hydra.run), less its first composition of
    the config: that one only reads hydra.mode, and costs as much as the second (about
    70 ms of every command). "ran"; or, having run nothing, "multirun" when the config
    sets hydra.mode=MULTIRUN and "failed" when it does not compose: @hydra.main then does
    it all as before."""
    from hydra._internal.callbacks import Callbacks
    from hydra.core.utils import run_job
    from hydra.types import HydraContext, RunMode

    with hydra_for(config_dir) as hydra:
        try:
            cfg = hydra.compose_config(
                config_name="config", overrides=overrides, run_mode=RunMode.RUN,
                with_log_configuration=True,
            )  # fmt: skip
        except Exception:  # e.g. sweep values (dir=a,b) that only a multirun reads
            mode = hydra.get_mode(config_name="config", overrides=overrides)
            return "multirun" if mode == RunMode.MULTIRUN else "failed"
        if cfg.hydra.mode == RunMode.MULTIRUN:
            return "multirun"
        cfg.hydra.mode = RunMode.RUN
        callbacks = Callbacks(cfg)
        callbacks.on_run_start(config=cfg, config_name="config")
        ret = run_job(
            hydra_context=HydraContext(config_loader=hydra.config_loader, callbacks=callbacks),
            task_function=task, config=cfg, job_dir_key="hydra.run.dir", job_subdir_key=None,
            configure_logging=True,
        )  # fmt: skip
        callbacks.on_run_end(config=cfg, config_name="config", job_return=ret)
        _ = ret.return_value  # re-raises what the task raised
        return "ran"


@contextlib.contextmanager
def hydra_for(config_dir: str) -> Iterator[Any]:
    """Hydra's own object for pgvault's configs, as @hydra.main makes it (the schema and
    the password resolver registered), cleared afterwards so @hydra.main can follow."""
    from hydra._internal.hydra import Hydra
    from hydra._internal.utils import create_automatic_config_search_path, detect_task_name
    from hydra.core.global_hydra import GlobalHydra

    from pgvault import config

    config.register()
    masking.register_resolver()
    search_path = create_automatic_config_search_path(None, None, config_dir)
    hydra = Hydra.create_main_hydra2(
        task_name=detect_task_name(__file__, None), config_search_path=search_path
    )
    try:
        yield hydra
    finally:
        GlobalHydra.instance().clear()


def dispatch(
    cfg: Any,
    *,
    env_name: str = "default",
    target_group: str | None = None,
    overrides: tuple[str, ...] = (),
) -> None:
    """Run one command on a typed config; raises PgvaultError on failure."""
    from pgvault import commands
    from pgvault.ui import Reporter

    ctx = commands.Context(env=env_name, target_group=target_group, overrides=overrides)
    commands.run(cfg, Reporter(quiet=cfg.quiet), ctx)
