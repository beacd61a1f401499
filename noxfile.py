"""nox sessions: tests, lint, bench, selftest (`nox -s NAME`)."""

import nox

nox.options.sessions = ["lint", "tests"]
nox.options.reuse_existing_virtualenvs = True


@nox.session
def tests(session: nox.Session) -> None:
    session.install("-e", ".[dev,embedded]")
    session.run("pytest", "-q", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    session.install("-e", ".[dev,embedded]")
    session.run("ruff", "check", "pgvault", "tests", "noxfile.py")
    session.run("ruff", "format", "--check", "pgvault", "tests", "noxfile.py")
    session.run("mypy")


@nox.session
def bench(session: nox.Session) -> None:
    session.install("-e", ".[dev,embedded]")
    session.run("python", "-m", "tests.bench.run", *(session.posargs or ["--scales", "20", "50"]))


@nox.session
def selftest(session: nox.Session) -> None:
    session.install("-e", ".[dev,embedded]")
    session.run("python", "-m", "pgvault.demo", "--selftest")
