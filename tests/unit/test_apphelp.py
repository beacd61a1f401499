"""`pgvault --help` is rendered by pgvault.apphelp; it must read exactly as Hydra's own."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest

from pgvault import apphelp, cli


def hydras_help(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    """The help Hydra itself prints for these arguments."""
    config_dir, extra = cli.search_setup()
    capsys.readouterr()
    with contextlib.suppress(SystemExit):
        cli._run_hydra(config_dir, ["--help", *extra, *args])
    return capsys.readouterr().out


def ours(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    capsys.readouterr()
    with contextlib.suppress(SystemExit):  # Hydra exits after its help
        cli.main(["--help", *args] if args else ["--help"])
    return capsys.readouterr().out


@pytest.fixture
def no_user_conf(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("PGVAULT_CONFIG_DIR", raising=False)


def test_the_packaged_help_reads_as_hydras(no_user_conf, capsys):
    mine = ours(capsys)
    assert "== Config groups ==" in mine and "target: local, supabase_local" in mine
    assert mine == hydras_help(capsys, "command=backup")


def test_a_users_groups_are_listed_as_hydra_lists_them(tmp_path, monkeypatch, capsys):
    conf = tmp_path / "conf"
    for rel in ("target/crm.yaml", "retention/weekly.yaml", "hooks/extra/slack.yaml"):
        (conf / rel).parent.mkdir(parents=True, exist_ok=True)
        (conf / rel).write_text("{}\n")
    (conf / "hydra" / "job_logging").mkdir(parents=True)
    (conf / "hydra" / "job_logging" / "mine.yaml").write_text("{}\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("PGVAULT_CONFIG_DIR", raising=False)
    mine = ours(capsys)
    assert "target: crm, local, supabase_local" in mine and "hooks/extra: slack" in mine
    assert "job_logging" not in mine
    # Hydra's own --help lists only the groups of its first search path, never those a
    # hydra.searchpath override adds (the user's here), though they can be chosen: ours
    # lists them too, and is otherwise the same text.
    theirs = hydras_help(capsys, "command=backup")
    head, _, rest = theirs.partition("== Config groups ==\n")
    groups, _, tail = rest.partition("\n\n")
    assert mine.startswith(head) and mine.endswith(tail)
    for line in groups.splitlines():
        group, _, options = line.partition(": ")
        listed = next(ln for ln in mine.splitlines() if ln.startswith(group + ": "))
        assert set(options.split(", ")) <= set(listed.partition(": ")[2].split(", "))


def test_a_template_that_needs_hydra_is_left_to_hydra(tmp_path, monkeypatch, capsys):
    """A user's config.yaml whose help shows the config: only Hydra fills $CONFIG in."""
    conf = tmp_path / "conf"
    conf.mkdir()
    packaged = cli.packaged_conf_dir()
    text = (packaged / "config.yaml").read_text()
    head = text.split("  help:\n")[0]
    (conf / "config.yaml").write_text(
        head + "  help:\n    template: |-\n      mine: $APP_CONFIG_GROUPS\n      $CONFIG\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("PGVAULT_CONFIG_DIR", raising=False)
    assert apphelp.render("x $CONFIG", [conf]) is None
    mine = ours(capsys)
    assert mine.startswith("mine: ") and "retention:" in mine  # the composed config
    assert mine == hydras_help(capsys, "command=backup")


def test_render_fills_only_the_groups(tmp_path: Path):
    conf, elsewhere = tmp_path / "conf", tmp_path / "elsewhere"
    (conf / "a" / "b").mkdir(parents=True)
    (conf / "a" / "one.yaml").write_text("{}")
    (conf / "a" / "b" / "two.yaml").write_text("{}")
    (conf / "top.yaml").write_text("{}")
    (conf / "a" / "notes.txt").write_text("not a config")
    elsewhere.mkdir()
    (elsewhere / "three.yaml").write_text("{}")
    (conf / "linked").symlink_to(elsewhere)  # Hydra follows a symlinked group folder
    text = apphelp.render("$$HOME\n$APP_CONFIG_GROUPS", [conf])
    assert text == "$HOME\na: one\na/b: two\nlinked: three\n"
