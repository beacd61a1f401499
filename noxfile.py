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
def fleet(session: nox.Session) -> None:
    """Sweeps on a Ray cluster: a Ray head on 127.0.0.1, three targets into an S3 server.
    A virtualenv of its own: pgvault[ray] needs cloudpickle<3."""
    session.install("-e", ".[dev,ray]")
    session.run("pytest", "-q", "tests/fleet", *session.posargs, env={"PGVAULT_FLEET": "1"})


@nox.session
def selftest(session: nox.Session) -> None:
    session.install("-e", ".[dev,embedded]")
    session.run("python", "-m", "pgvault.demo", "--selftest")
