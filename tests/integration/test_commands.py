"""Each command takes its own options and nothing else, and the CLI behaves as a new user
expects: versions, typos, `~`, config dirs, resolved --cfg, make's ARGS, sources and
safety sets in list, prefix=latest, show, progress, exit codes, hooks and schemas."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest

from pgvault import __version__, cli, hooks, naming
from pgvault.arguments import option_names
from pgvault.commands import SPECS
from pgvault.connection import connect
from pgvault.schemas import HERE as SCHEMA_DIR
from pgvault.schemas import generated, text
from tests.conftest import (
    PASSWORD,
    PASSWORD_USER,
    create_database,
    drop_database,
    needs_tool,
    one_line_error,
    pgvault_env,
    run_pgvault,
    run_sql,
)

ROOT = Path(__file__).resolve().parents[2]


# -- Options belong to their command ---------------------------------------------------


def foreign_option(command: str) -> str:
    """An option some other command takes bare and this one does not."""
    mine = set(option_names(SPECS[command]))
    for other in SPECS.values():
        for name in option_names(other):
            if name not in mine:
                return name
    raise AssertionError(command)


@pytest.mark.parametrize("command", sorted(SPECS))
def test_every_command_rejects_an_option_it_does_not_take(tmp_path, command):
    option = foreign_option(command)
    directory = tmp_path / "backups"
    res = run_pgvault(
        command, f"dir={directory}", f"{option}=true", env=pgvault_env(), cwd=tmp_path
    )
    line = one_line_error(res)
    assert res.returncode == 2
    assert f"{command} does not take {option}" in line
    for own in option_names(SPECS[command]):
        assert own in line  # the hint names what it does take
    assert not directory.exists() and list(tmp_path.iterdir()) == []


def test_the_issues_examples_are_refused(tmp_path):
    env = pgvault_env()
    res = run_pgvault("list", "dry_run=true", "yes=true", "all=true", "force=true", env=env)
    assert "list does not take dry_run" in one_line_error(res)
    assert "prune does not take format" in one_line_error(
        run_pgvault("prune", "format=json", env=env)
    )
    # Another command's option written out in full is refused just the same.
    assert "list does not take restore.yes" in one_line_error(
        run_pgvault("list", "restore.yes=true", env=env)
    )


@pytest.mark.parametrize("word", ["retention.dayz=3", "+retention.dayz=3", "++retention.dayz=3"])
def test_a_misspelt_key_gets_the_closest_one_and_never_a_plus(tmp_path, word):
    directory = tmp_path / "backups"
    res = run_pgvault("backup", f"dir={directory}", word, env=pgvault_env(), cwd=tmp_path)
    line = one_line_error(res)
    assert "unknown key 'retention.dayz'" in line and "did you mean retention.days?" in line
    assert "+" not in line.replace(word, "")
    assert not directory.exists()


def test_keys_that_moved_in_0_2_say_where_they_went(tmp_path):
    line = one_line_error(run_pgvault("backup", "verify.after_backup=true", env=pgvault_env()))
    assert "verify.after_backup is now backup.verify" in line
    (tmp_path / "conf" / "env").mkdir(parents=True)
    (tmp_path / "conf" / "env" / "old.yaml").write_text("# @package _global_\ncompression: zstd\n")
    res = run_pgvault("backup", "env=old", f"dir={tmp_path}/b", env=pgvault_env(), cwd=tmp_path)
    assert "compression is now backup.compression" in one_line_error(res)
    assert not (tmp_path / "b").exists()


def test_the_command_comes_first_and_multirun_needs_one(tmp_path):
    line = one_line_error(run_pgvault("-m", "list", "dir=/x", env=pgvault_env(), cwd=tmp_path))
    assert "'list' is a command, and the command comes first" in line
    line = one_line_error(run_pgvault("-m", "target=local,supabase_local", env=pgvault_env()))
    assert "no command given" in line


def test_a_plus_on_a_known_key_is_refused(tmp_path):
    line = one_line_error(
        run_pgvault("backup", "+retention.days=3", env=pgvault_env(), cwd=tmp_path)
    )
    assert "drop the +: retention.days=3" in line


def test_a_tilde_is_expanded_and_grammar_errors_say_what_to_quote(tmp_path):
    env = pgvault_env(HOME=str(tmp_path))
    res = run_pgvault("list", "dir=~/backups", env=env, cwd=tmp_path)
    assert f"{tmp_path}/backups does not exist" in one_line_error(res)
    (tmp_path / "backups").mkdir()
    res = run_pgvault("list", "dir=~/backups", env=env, cwd=tmp_path)
    assert res.returncode == 0 and f"No backups found in {tmp_path}/backups." in res.stdout
    line = one_line_error(run_pgvault("list", "dir=/a b]", env=env, cwd=tmp_path))
    assert "cannot read 'dir=/a b]'" in line and "quote" in line


def test_version_is_pgvaults():
    for args in (("--version",), ("list", "--version")):
        res = run_pgvault(*args, env=pgvault_env())
        assert res.returncode == 0 and res.stdout == f"pgvault {__version__}\n"


# -- Config dirs: help and multirun work with or without one ----------------------------


def config_dir_case(case: str, tmp_path: Path) -> tuple[Path, dict[str, str]]:
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    env = pgvault_env()
    if case == "none":
        return cwd, env
    conf = cwd / "conf" if case == "./conf" else tmp_path / "mine"
    (conf / "target").mkdir(parents=True)
    (conf / "target" / "crm.yaml").write_text("name: crm\nurl: postgresql://crm@db:5432/crm\n")
    if case == "PGVAULT_CONFIG_DIR":
        env["PGVAULT_CONFIG_DIR"] = str(conf)
    return cwd, env


@pytest.mark.parametrize("case", ["none", "./conf", "PGVAULT_CONFIG_DIR"])
def test_help_and_multirun_work_with_any_config_dir(tmp_path, case):
    cwd, env = config_dir_case(case, tmp_path)
    before = sorted(p.name for p in cwd.iterdir())
    helps = (("--help",), ("-h",), ("list", "--help"), ("--hydra-help",), ("--info",),
             ("list", "-i"), ("backup", "--info", "searchpath"))  # fmt: skip
    for args in helps:
        res = run_pgvault(*args, env=env, cwd=cwd)
        assert res.returncode == 0, (args, res.stderr)
        assert "unrecognized arguments" not in res.stderr
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    res = run_pgvault("list", "--multirun", f"dir={a},{b}", "format=json", env=env, cwd=cwd)
    assert res.returncode == 0, res.stderr
    docs = re.findall(r'"directory": "([^"]+)"', res.stdout)
    assert docs == [str(a), str(b)]
    if case != "none":
        res = run_pgvault("backup", "--cfg", "job", "target=crm", env=env, cwd=cwd)
        assert res.returncode == 0 and "postgresql://crm@db:5432/crm" in res.stdout
    assert sorted(p.name for p in cwd.iterdir()) == before


def test_cfg_job_shows_the_values_that_would_be_used(tmp_path):
    env = pgvault_env(
        BACKUP_DIR=str(tmp_path / "b"),
        PGHOST="db.example",
        PGPORT="6543",
        PGUSER="crm",
        PGDATABASE="sales",
    )
    res = run_pgvault("backup", "--cfg", "job", env=env, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert f"dir: {tmp_path}/b\n" in res.stdout and "${" not in res.stdout
    assert "url: postgresql://crm@db.example:6543/sales" in res.stdout
    assert "# target.url: from libpq's environment" in res.stdout
    url = f"postgresql://u:{PASSWORD}@db:5432/d"
    res = run_pgvault("backup", "--cfg", "job", f"target.url={url}", env=env, cwd=tmp_path)
    assert "url: postgresql://u:****@db:5432/d" in res.stdout and PASSWORD not in res.stdout


# -- Against a real database ------------------------------------------------------------


@pytest.fixture
def crm(pg_cluster):
    """A small database `crm_*` to back up, and a second one to restore into."""
    name = create_database(pg_cluster, "crm")
    other = create_database(pg_cluster, "other")
    run_sql(
        pg_cluster.conn(name),
        "CREATE TABLE contacts AS SELECT g AS id FROM generate_series(1, 500) g",
    )
    run_sql(pg_cluster.conn(other), "CREATE TABLE scratch (x int)")
    yield pg_cluster, name, other
    drop_database(pg_cluster, name)
    drop_database(pg_cluster, other)


def run_make(*argv: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["make", *argv], env=pgvault_env(**env), capture_output=True, text=True, timeout=300
    )


def test_make_targets_pass_args_through(crm, tmp_path):
    needs_tool("zstd")
    cluster, name, _ = crm
    directory = tmp_path / "backups"
    url = cluster.url(name)
    args = f"dir={directory} target.url={url} backup.compression=zstd quiet=true"
    make = [
        "-s",
        "-C",
        str(ROOT),
        "-o",
        ".venv/.installed",
        f"PGVAULT={sys.executable} -m pgvault",
    ]
    res = run_make(*make, "backup-database", f"ARGS={args}")
    assert res.returncode == 0, res.stderr
    assert len(list(directory.glob("*-data.sql.zst"))) == 1
    res = run_make(*make, "list-backups", f"ARGS=dir={directory} format=json")
    assert res.returncode == 0, res.stderr
    (one,) = json.loads(res.stdout)["sets"]
    assert one["compression"] == "zstd"
    run_sql(cluster.conn(name), "DELETE FROM contacts")
    restore = f"dir={directory} target.url={url} yes=true restore.safety_backup=false"
    res = run_make(*make, "restore-database", "BACKUP_PREFIX=latest", f"ARGS={restore}")
    assert res.returncode == 0, res.stderr
    with connect(cluster.conn(name)) as pg:
        assert pg.execute("SELECT count(*) FROM contacts").fetchone() == (500,)
    # The issue's example: overrides given to make itself are refused, not dropped.
    res = run_make(
        *make, "backup-database", "target=supabase_local", "compression=zstd",
        BACKUP_DIR=str(directory),
    )  # fmt: skip
    assert res.returncode != 0 and "went to make, not to pgvault" in res.stdout
    assert len(list(directory.glob("*-manifest.json"))) == 1


def test_sources_safety_sets_latest_and_a_restore_into_another_database(crm, tmp_path):
    cluster, name, other = crm
    directory = tmp_path / "backups"
    env = pgvault_env()
    res = run_pgvault(
        "backup", f"dir={directory}", f"target.url={cluster.url(name)}", "target.name=crm", env=env
    )
    assert res.returncode == 0, res.stderr
    (regular,) = [p.name.removesuffix("-manifest.json") for p in directory.glob("*-manifest.json")]
    res = run_pgvault(
        "restore",
        f"dir={directory}",
        "prefix=latest",
        "yes=true",
        f"target.url={cluster.url(name)}",
        f"restore.target={other}",
        env=env,
    )
    assert res.returncode == 0, res.stderr
    assert f"Source: database {name} at 127.0.0.1:{cluster.port}" in res.stdout
    where = f"127.0.0.1:{cluster.port}"
    assert (
        f"the set is of database {name} at {where}; it goes into {other} at {where}" in res.stdout
    )
    assert f"REPLACE database {other}" in res.stdout
    sets = json.loads(run_pgvault("list", f"dir={directory}", "format=json", env=env).stdout)
    kinds = {s["prefix"]: s["kind"] for s in sets["sets"]}
    (safety,) = [p for p, k in kinds.items() if k == "safety"]
    assert kinds[regular] == "regular" and safety > regular  # the safety set is newer
    source = {s["prefix"]: s["source"] for s in sets["sets"]}
    assert source[regular]["database"] == name and source[safety]["database"] == other
    assert source[regular]["server"] == f"127.0.0.1:{cluster.port}"
    assert source[regular]["target"] == "crm" and source[regular]["server_version"]
    listed = run_pgvault("list", f"dir={directory}", env=env).stdout
    line = next(ln for ln in listed.splitlines() if ln.startswith(safety))
    assert " safety " in line and f"127.0.0.1:{cluster.port}/{other}" in line
    # A plain verify takes the newest regular set, not the newer safety set; so does latest.
    res = run_pgvault("verify", f"dir={directory}", env=env)
    assert res.returncode == 0, res.stderr
    assert f"{regular} verified" in res.stdout and safety not in res.stdout
    shown = run_pgvault("show", f"dir={directory}", "prefix=latest", env=env)
    assert shown.stdout.startswith(regular)


def test_show_tells_what_a_set_holds(crm, tmp_path):
    cluster, name, _ = crm
    directory = tmp_path / "backups"
    env = pgvault_env()
    run_sql(cluster.conn(name), "CREATE SEQUENCE s; SELECT nextval('s'); SELECT nextval('s')")
    assert (
        run_pgvault(
            "backup", f"dir={directory}", f"target.url={cluster.url(name)}", "verify=true", env=env
        ).returncode
        == 0
    )
    assert run_pgvault("verify", f"dir={directory}", env=env).returncode == 0
    res = run_pgvault("show", f"dir={directory}", "prefix=latest", env=env)
    assert res.returncode == 0, res.stderr
    manifest = json.loads(next(directory.glob("*-manifest.json")).read_text())
    assert "public.contacts" in res.stdout and "500 rows" in res.stdout
    assert "public.s = 2" in res.stdout
    for entry in manifest["files"].values():
        assert f"{entry['name']}" in res.stdout and entry["sha256"] in res.stdout
    assert f"pg_dump {manifest['clients']['version']}" in res.stdout
    assert len(re.findall(r"\d{4}-\d\d-\d\dT[\d:.]+\+00:00  verified", res.stdout)) == 2
    doc = json.loads(
        run_pgvault("show", f"dir={directory}", "prefix=latest", "format=json", env=env).stdout
    )
    assert doc["manifest"] == json.loads(json.dumps(manifest))
    assert doc["verification"]["verdict"] == "verified" and len(doc["verification"]["history"]) == 1
    assert doc["manifest"]["tables"]["public.contacts"]["size"] > 0
    line = one_line_error(
        run_pgvault("show", f"dir={directory}", "prefix=backup-2000-01-01-000000", env=env)
    )
    assert "no backup set backup-2000-01-01-000000" in line


def test_list_check_exits_non_zero_when_a_set_needs_a_look(crm, tmp_path):
    cluster, name, _ = crm
    directory = tmp_path / "backups"
    env = pgvault_env()
    assert (
        run_pgvault(
            "backup", f"dir={directory}", f"target.url={cluster.url(name)}", env=env
        ).returncode
        == 0
    )
    assert run_pgvault("list", f"dir={directory}", "check=true", env=env).returncode == 0
    data = next(directory.glob("*-data.sql"))
    body = data.read_bytes()
    data.write_bytes(body[:-2] + b"X\n")  # same size, other content: only check= sees it
    assert run_pgvault("list", f"dir={directory}", env=env).returncode == 0
    res = run_pgvault("list", f"dir={directory}", "check=true", env=env)
    assert res.returncode == 1 and "damaged" in res.stdout
    assert "1 set(s) need a look" in one_line_error(res)
    data.write_bytes(body)
    next(directory.glob("*-schema.sql")).unlink()
    res = run_pgvault("list", f"dir={directory}", "check=true", "format=json", env=env)
    assert res.returncode == 1 and json.loads(res.stdout)["sets"][0]["status"] == "incomplete"


def run_on_terminal(
    args: list[str], env: dict[str, str], answer: bytes | None = None
) -> tuple[int, str]:
    """Run the CLI with stderr (and stdin, stdout) on a pseudo-terminal, typing answer at
    its first (y/N) question; return its exit code and everything it wrote there."""
    pid, fd = pty.fork()
    if pid == 0:  # the child
        os.execvpe(sys.executable, [sys.executable, "-m", "pgvault", *args], env)
    out = b""
    while True:
        ready, _, _ = select.select([fd], [], [], 120)
        if not ready:
            break
        try:
            chunk = os.read(fd, 65536)
        except OSError:
            break
        if not chunk:
            break
        out += chunk
        if answer is not None and b"(y/N)" in out:
            os.write(fd, answer)
            answer = None
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), out.decode("utf-8", "replace")


def test_progress_bars_on_a_terminal_only(crm, tmp_path):
    cluster, name, other = crm
    directory = tmp_path / "backups"
    env = pgvault_env(TERM="xterm", COLUMNS="120")
    run_sql(
        cluster.conn(name),
        "CREATE TABLE big AS SELECT g, repeat('x', 200) AS pad FROM generate_series(1, 60000) g",
    )
    backup = ["backup", f"dir={directory}", f"target.url={cluster.url(name)}"]
    code, shown = run_on_terminal(backup, env)
    assert code == 0, shown
    # The first backup's total is the size of the tables: a bar with bytes of a total.
    assert "  data" in shown and "ETA" in shown and re.search(r"[\d.]+/[\d.]+ MB", shown)
    code, shown = run_on_terminal(["verify", f"dir={directory}"], env)
    assert code == 0, shown
    assert (
        "restore" in shown and "ETA" in shown and re.search(r"\d+(\.\d+)?/\d+(\.\d+)? [kM]B", shown)
    )
    code, quiet = run_on_terminal(["verify", f"dir={directory}", "quiet=true"], env)
    assert code == 0 and "ETA" not in quiet
    piped = run_pgvault("verify", f"dir={directory}", env=env)
    assert piped.returncode == 0 and "ETA" not in piped.stderr + piped.stdout
    restore = ["restore", f"dir={directory}", "prefix=latest", f"target.url={cluster.url(name)}",
               f"restore.target={other}"]  # fmt: skip
    code, shown = run_on_terminal([*restore, "restore.safety_backup=false", "yes=true"], env)
    assert code == 0 and "restore" in shown and "ETA" in shown, shown
    # Asked on a terminal, the question names the database it replaces; "n" cancels.
    code, shown = run_on_terminal(restore, env, answer=b"n\n")
    assert code == 1 and "Restore cancelled" in shown
    assert re.search(rf"Replace database {other} at \S+ with backup-[-\d]+\? \(y/N\)", shown)


# -- Hooks and published schemas -----------------------------------------------------------


def test_hooks_hear_start_success_and_failure_and_cannot_break_a_run(crm, tmp_path, capsys):
    cluster, name, _ = crm
    directory = tmp_path / "backups"
    heard: list[tuple[str, str, str | None, str | None]] = []

    def listen(event: hooks.Event, run: hooks.Run) -> None:
        heard.append((event.value, run.command, run.prefix, run.error))

    def broken(event: hooks.Event, run: hooks.Run) -> None:
        raise RuntimeError("the monitor is down")

    hooks.register(listen)
    hooks.register(broken)
    try:
        url = f"postgresql://{PASSWORD_USER}:{PASSWORD}@127.0.0.1:{cluster.port}/{name}"
        cli.main(["backup", f"dir={directory}", f"target.url={url}", "quiet=true"])
        with pytest.raises(SystemExit) as failed:
            cli.main(["restore", f"dir={directory}", "prefix=backup-2000-01-01-000000"])
    finally:
        hooks.unregister(listen)
        hooks.unregister(broken)
    assert failed.value.code == 1
    (prefix,) = [p.name.removesuffix("-manifest.json") for p in directory.glob("*-manifest.json")]
    assert heard[:2] == [("start", "backup", None, None), ("success", "backup", prefix, None)]
    assert heard[2][:2] == ("start", "restore")
    assert heard[3][:2] == ("failure", "restore") and "no backup set" in (heard[3][3] or "")
    err = capsys.readouterr().err
    assert err.count("hook ") == 4 and "the monitor is down" in err and PASSWORD not in err


def test_published_schemas_are_current_and_describe_real_output(crm, tmp_path):
    for name, schema in generated().items():
        path = SCHEMA_DIR / f"{name}.schema.json"
        assert path.read_text() == text(schema), f"run `python -m pgvault.schemas` ({name})"
        jsonschema.Draft202012Validator.check_schema(schema)
    cluster, db, _ = crm
    directory = tmp_path / "backups"
    env = pgvault_env()
    assert (
        run_pgvault(
            "backup", f"dir={directory}", f"target.url={cluster.url(db)}", "verify=true", env=env
        ).returncode
        == 0
    )
    schemas = generated()
    (manifest,) = directory.glob("*-manifest.json")
    jsonschema.validate(json.loads(manifest.read_text()), schemas["manifest"])
    (record,) = directory.glob("*-verify.json")
    jsonschema.validate(json.loads(record.read_text()), schemas["verify-record"])
    (directory / naming.file_name("backup-2001-01-01-000000", "data")).write_text("stray")
    doc = json.loads(run_pgvault("list", f"dir={directory}", "format=json", env=env).stdout)
    jsonschema.validate(doc, schemas["list"])
    assert {s["status"] for s in doc["sets"]} == {"complete", "incomplete"}
