"""A Supabase-shaped cluster for the tests, written from the facts of Supabase's public init
scripts and migrations (tests/sql/supabase/*.sql): bootstrap superuser supabase_admin,
Supabase's roles with `postgres` demoted, its managed schemas, and an Atomic-CRM-shaped
app installed as `postgres` on top."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

from pgvault import clients
from pgvault import cluster as clusters
from pgvault.connection import Conn, connect

SQL = Path(__file__).parent / "sql" / "supabase"
SUPERUSER = "supabase_admin"
LOGIN = "postgres"
TEMPLATE = "supabase_fresh"  # a fresh Supabase database, before any app migration
APP_TEMPLATE = "supabase_crm"  # the same with the CRM app and its sample rows


def psql_file(programs: clients.Programs, conn: Conn, path: Path) -> None:
    """Run a SQL file with the real psql, stopping at the first error."""
    res = subprocess.run(
        [programs.path("psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", conn.conninfo,
         "-f", str(path)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert res.returncode == 0, f"{path.name}: {res.stderr}"


@contextlib.contextmanager
def supabase_cluster(programs: clients.Programs) -> Iterator[clusters.Cluster]:
    """A started cluster with the templates TEMPLATE and APP_TEMPLATE."""
    from tests.conftest import needs_contrib

    needs_contrib(programs)
    with clusters.throwaway(programs, superuser=SUPERUSER, tcp=True) as c:
        psql_file(programs, c.conn(), SQL / "cluster.sql")
        with connect(c.conn(), autocommit=True) as pg:
            pg.execute(f"CREATE DATABASE {TEMPLATE} OWNER {LOGIN}")
        psql_file(programs, c.conn(TEMPLATE), SQL / "database.sql")
        with connect(c.conn(), autocommit=True) as pg:
            pg.execute(f"CREATE DATABASE {APP_TEMPLATE} TEMPLATE {TEMPLATE} OWNER {LOGIN}")
        app = c.conn(APP_TEMPLATE, user=LOGIN)
        psql_file(programs, app, SQL / "atomic_crm.sql")
        psql_file(programs, app, SQL / "sample_data.sql")
        yield c


def new_database(c: clusters.Cluster, template: str = TEMPLATE) -> Conn:
    """A new database copied from a template, owned by postgres; as postgres."""
    name = f"sb_{uuid.uuid4().hex[:10]}"
    with connect(c.conn(), autocommit=True) as pg:
        pg.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}" OWNER {LOGIN}')
    return c.conn(name, user=LOGIN)


def url(conn: Conn) -> str:
    """The URL of conn's database over TCP, as the Supabase guide writes it."""
    p = conn.params
    return f"postgresql://{p['user']}@127.0.0.1:{p['port']}/{p['dbname']}"


def sign_up(conn: Conn, email: str, first_name: str) -> list[tuple[object, ...]]:
    """Sign a user up as GoTrue does (a row in auth.users); return the sales rows the
    app's trigger made for it."""
    with connect(conn, autocommit=True) as pg:
        pg.execute(
            "INSERT INTO auth.users (id, aud, role, email, raw_user_meta_data, created_at)"
            " VALUES (gen_random_uuid(), 'authenticated', 'authenticated', %s,"
            " jsonb_build_object('first_name', %s::text, 'last_name', 'Doe'), now())",
            (email, first_name),
        )
        return pg.execute(
            "SELECT first_name, last_name, email::text FROM public.sales WHERE email = %s",
            (email,),
        ).fetchall()


def private_install(programs: clients.Programs, root: Path, extension: str) -> clients.Programs:
    """A private copy of the server programs whose share directory holds one more
    (SQL-only) extension, so that a source can have an extension that the stock server,
    which verify uses, lacks. PostgreSQL finds its share and lib directories relative to
    its own binary, so the binaries are copied and the rest linked."""
    major = str(programs.major)
    bindir = programs.bindir.resolve()
    libdir = bindir.parent / "lib"
    out_bin = root / "lib" / "postgresql" / major / "bin"
    out_lib = root / "lib" / "postgresql" / major / "lib"
    out_share = root / "share" / "postgresql" / major
    out_bin.mkdir(parents=True)
    for prog in ("initdb", "pg_ctl", "postgres", "psql", "pg_dump", "pg_dumpall", "pg_config"):
        shutil.copy2(bindir / prog, out_bin / prog)
    out_lib.symlink_to(libdir)
    sharedir = subprocess.run(
        [str(bindir / "pg_config"), "--sharedir"], capture_output=True, text=True, check=True
    )
    share = Path(sharedir.stdout.strip())
    out_share.mkdir(parents=True)
    for item in share.iterdir():
        if item.name != "extension":
            (out_share / item.name).symlink_to(item)
    (out_share / "extension").mkdir()
    for item in (share / "extension").iterdir():
        (out_share / "extension" / item.name).symlink_to(item)
    (out_share / "extension" / f"{extension}.control").write_text(
        "default_version = '1.0'\nrelocatable = false\nschema = 'net'\ntrusted = true\n"
    )
    (out_share / "extension" / f"{extension}--1.0.sql").write_text(
        "CREATE FUNCTION http_get(url text) RETURNS bigint LANGUAGE sql AS 'SELECT 1::bigint';\n"
    )
    for d in (root, *root.rglob("*")):
        if d.is_dir() and not d.is_symlink():
            os.chmod(d, 0o755)
    return clients.Programs(out_bin, programs.major, programs.version)
