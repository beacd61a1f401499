"""Verify's stand-in for a Supabase database on stock PostgreSQL: a throwaway cluster whose
bootstrap superuser is supabase_admin, Supabase's roles as the backup saw them, and its
own schemas and tables from the set's platform file, so that the set loads as it would
into Supabase, as the non-superuser `postgres`.

Supabase's supautils library, which stock PostgreSQL lacks, lets `postgres` manage
policies and triggers on Supabase's tables and set session_replication_role; here that is
stood in for by membership in the tables' owner roles and GRANT SET ON PARAMETER.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from psycopg import sql

from pgvault import clients, pipeline
from pgvault.cluster import throwaway
from pgvault.connection import Conn, connect
from pgvault.naming import PLATFORM
from pgvault.profiles.supabase import LOGIN_ROLE, SupabaseScope

BOOTSTRAP = "supabase_admin"
_ATTRS = ("superuser", "inherit", "createrole", "createdb", "login", "replication", "bypassrls")


@dataclass
class StandIn:
    """A Supabase-shaped database, ready for the set: load as `conn`, read as `admin`."""

    conn: Conn
    admin: Conn
    unavailable: set[str] = field(default_factory=set)
    notes: list[str] = field(default_factory=list)


def role_sql(name: str, attrs: dict[str, bool]) -> sql.Composed:
    words = [("" if attrs.get(a) else "NO") + a.upper() for a in _ATTRS if a in attrs]
    return sql.SQL("CREATE ROLE {} WITH " + " ".join(words)).format(sql.Identifier(name))


@contextlib.contextmanager
def supabase_standin(
    programs: clients.Programs,
    scope: SupabaseScope,
    files: dict[str, Path],
    psql: str,
    dbname: str,
    create_database: sql.Composed,
    settings: dict[str, str],
) -> Iterator[StandIn]:
    """A throwaway cluster with database dbname shaped like the backup's Supabase one.
    files are the set's; create_database is the CREATE DATABASE statement (the source's
    encoding). The set's app roles are made first: Supabase's objects grant them rights."""
    with throwaway(programs, settings=settings, superuser=BOOTSTRAP) as cluster:
        with connect(cluster.conn(), autocommit=True) as pg:
            for name, attrs in sorted(scope.platform_roles.items()):
                if name != BOOTSTRAP:
                    pg.execute(role_sql(name, attrs))
            if LOGIN_ROLE not in scope.platform_roles:
                pg.execute(role_sql(LOGIN_ROLE, {"login": True, "createrole": True}))
            for role, member in scope.memberships:
                if BOOTSTRAP not in (role, member):
                    pg.execute(
                        sql.SQL("GRANT {} TO {}").format(
                            sql.Identifier(role), sql.Identifier(member)
                        )
                    )
            if programs.major >= 15:
                pg.execute(f"GRANT SET ON PARAMETER session_replication_role TO {LOGIN_ROLE}")
            pg.execute(create_database)
            owner = (
                scope.database_owner if scope.database_owner in scope.platform_roles else LOGIN_ROLE
            )
            pg.execute(
                sql.SQL("ALTER DATABASE {} OWNER TO {}").format(
                    sql.Identifier(dbname), sql.Identifier(owner)
                )
            )
        admin = cluster.conn(dbname)
        stand_in = StandIn(cluster.conn(dbname, user=LOGIN_ROLE), admin)
        _load(admin, psql, files["roles"], stand_in, "the app's roles")
        _load(admin, psql, files[PLATFORM], stand_in, "Supabase's own schema")
        with connect(admin, autocommit=True) as pg:
            available = {str(r[0]) for r in pg.execute(
                "SELECT name FROM pg_catalog.pg_available_extensions").fetchall()}  # fmt: skip
            stand_in.unavailable = set(scope.extensions) - available
            # supautils' policy_grants and drop_trigger_grants, as role memberships.
            owners = pg.execute(
                "SELECT DISTINCT pg_catalog.pg_get_userbyid(c.relowner) FROM pg_catalog.pg_class c"
                " JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace"
                " JOIN pg_catalog.pg_roles r ON r.oid = c.relowner"
                " WHERE n.nspname = ANY(%s) AND NOT r.rolsuper AND r.rolname <> %s",
                (list(scope.managed), LOGIN_ROLE),
            ).fetchall()
            for (owner_role,) in owners:
                pg.execute(
                    sql.SQL("GRANT {} TO {}").format(
                        sql.Identifier(str(owner_role)), sql.Identifier(LOGIN_ROLE)
                    )
                )
        yield stand_in


def _load(admin: Conn, psql: str, path: Path, stand_in: StandIn, what: str) -> None:
    """Load a file as the superuser, statement by statement: what needs an extension this
    server lacks fails alone, and is named in the verdict."""
    argv = [psql, "-X", "-q", "--no-password", f"--dbname={admin.conninfo}", "-f", str(path)]
    with pipeline.stages() as running:
        stage = pipeline.Stage(argv, admin.env())
        running.append(stage)
        stage.proc.communicate()
        stage.check()
        errors = [ln for ln in stage.stderr_text().splitlines() if "ERROR:" in ln]
    if errors:
        first = errors[0].split("ERROR:", 1)[1].strip()
        stand_in.notes.append(
            f"{len(errors)} statement(s) of {what} did not load on this server (first: "
            f"{first}); the app's objects that need them were not checked"
        )
