"""The hook seam: every command's start, and exactly one of success or failure, whatever
ends it; a hook that fails is a warning and never changes the outcome."""

from __future__ import annotations

import pytest

from pgvault import commands, hooks
from pgvault.commands import list as list_command
from pgvault.config import PgvaultConfig
from pgvault.errors import NotFound
from pgvault.ui import Reporter


@pytest.fixture
def heard():
    events: list[tuple[str, str | None, int]] = []

    def listen(event: hooks.Event, run: hooks.Run) -> None:
        events.append((event.value, run.error, run.exit_code))

    hooks.register(listen)
    yield events
    hooks.unregister(listen)


@pytest.mark.parametrize(
    ("raised", "code"),
    [(NotFound("no such set", "pick another"), 1), (KeyboardInterrupt(), 130),
     (RuntimeError("a bug near postgresql://u:s3cret@db/x"), 1)],
)  # fmt: skip
def test_a_command_that_ends_badly_sends_one_failure(monkeypatch, heard, raised, code):
    def boom(*args: object) -> None:
        raise raised

    monkeypatch.setattr(list_command, "run", boom)
    with pytest.raises(type(raised)):
        commands.run(PgvaultConfig(command="list"), Reporter(quiet=True))
    assert [e[0] for e in heard] == ["start", "failure"]
    assert heard[1][2] == code and heard[1][1] and "s3cret" not in heard[1][1]


def test_a_failing_hook_is_a_warning(monkeypatch, heard, capsys):
    def broken(event: hooks.Event, run: hooks.Run) -> None:
        raise OSError("the notifier is down")

    monkeypatch.setattr(list_command, "run", lambda *a: commands.Outcome())
    hooks.register(broken)
    try:
        outcome = commands.run(PgvaultConfig(command="list"), Reporter(quiet=True))
    finally:
        hooks.unregister(broken)
    assert outcome == commands.Outcome()
    assert [e[0] for e in heard] == ["start", "success"]
    assert capsys.readouterr().err.count("the notifier is down") == 2
