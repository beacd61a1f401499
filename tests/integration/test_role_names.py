"""Roles with names that SQL allows but a careless rewriter breaks on: a name holding the
rewriter's own dollar-quote tag, and one holding a newline. Any role with CREATEROLE can
make them, and they must not make the later backups of the cluster unrestorable.

Roles are cluster-wide, so these tests run on a cluster of their own."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from pgvault import cluster as clusters
from pgvault.connection import Conn, connect
from tests.conftest import pgvault_env, run_pgvault, run_sql

ODD_ROLES = ("x$pgvault$y", "line1\nline2", "$pgvault$", "q'uote\"d;\nCREATE ROLE z;")


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


@pytest.fixture(scope="module")
def odd_db(server_programs) -> Iterator[Conn]:
    with clusters.throwaway(server_programs) as c:
        run_sql(c.conn(), "CREATE DATABASE app")
        conn = c.conn("app")
        stmts = [f"CREATE ROLE {_ident(r)} NOLOGIN" for r in ODD_ROLES]
        stmts.append("CREATE TABLE notes (id int PRIMARY KEY, body text)")
        stmts.append("INSERT INTO notes SELECT i, 'note ' || i FROM generate_series(1, 20) i")
        stmts += [f"GRANT SELECT ON notes TO {_ident(r)}" for r in ODD_ROLES]
        run_sql(conn, ";".join(stmts))
        yield conn


def _roles(conn: Conn) -> set[str]:
    with connect(conn) as pg:
        rows = pg.execute("SELECT rolname FROM pg_roles WHERE rolname !~ '^pg_'").fetchall()
    return {str(r[0]) for r in rows}


def _grants(conn: Conn) -> set[str]:
    with connect(conn) as pg:
        rows = pg.execute(
            "SELECT grantee FROM information_schema.role_table_grants WHERE table_name = 'notes'"
        ).fetchall()
    return {str(r[0]) for r in rows}


def test_odd_role_names_restore_in_place_and_verify(odd_db, tmp_path: Path) -> None:
    env = pgvault_env(odd_db)
    directory = tmp_path / "bk"
    res = run_pgvault("backup", f"dir={directory}", "quiet=true", env=env)
    assert res.returncode == 0, res.stderr
    roles_before, grants_before = _roles(odd_db), _grants(odd_db)
    assert set(ODD_ROLES) <= roles_before

    run_sql(odd_db, "DELETE FROM notes WHERE id > 5")
    # In place: every role of the set already exists in the cluster.
    res = run_pgvault(
        "restore", f"dir={directory}", "prefix=latest", "yes=true", "quiet=true", env=env
    )
    assert res.returncode == 0, res.stderr
    with connect(odd_db) as pg:
        assert pg.execute("SELECT count(*) FROM notes").fetchone() == (20,)
    assert _roles(odd_db) == roles_before
    assert _grants(odd_db) == grants_before

    # Into a fresh cluster, where none of them exists yet.
    res = run_pgvault("verify", f"dir={directory}", "quiet=true", env=env)
    assert res.returncode == 0, res.stderr + res.stdout
