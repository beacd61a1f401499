"""The Supabase profile against a real Supabase-shaped cluster (tests/supabase.py), all as
Supabase's non-superuser `postgres`: what a backup holds, restores into a fresh Supabase
database and into the same one after changes, the Supabase guide's plain psql command,
sign-up after a restore, verify on stock PostgreSQL, and a failed restore that leaves the
target exactly as it was."""

from __future__ import annotations

import json
import re
import resource
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pgvault import naming
from pgvault.cluster import Cluster
from pgvault.connection import Conn, connect
from tests.conftest import one_line_error, pgvault_env, plain_psql_restore, run_pgvault
from tests.fidelity import diff
from tests.integration.test_restore import SourceSet, full_fingerprint
from tests.supabase import (
    APP_TEMPLATE,
    SUPERUSER,
    new_database,
    private_install,
    sign_up,
    supabase_cluster,
    url,
)

RESERVED = (
    "anon", "authenticated", "authenticator", "service_role", "dashboard_user", "pgbouncer",
    "postgres", "supabase_admin", "supabase_auth_admin", "supabase_storage_admin",
    "supabase_functions_admin", "supabase_realtime_admin", "supabase_replication_admin",
    "supabase_read_only_user",
)  # fmt: skip


@pytest.fixture(scope="module")
def sb(server_programs) -> Iterator[Cluster]:
    with supabase_cluster(server_programs) as c:
        yield c


def admin(conn: Conn) -> Conn:
    """The same database as the bootstrap superuser, to look at everything."""
    return Conn(re.sub(r"user=\S+", f"user={SUPERUSER}", conn.conninfo))


def fingerprint(conn: Conn) -> dict[str, Any]:
    return full_fingerprint(admin(conn))


@dataclass(frozen=True)
class SupabaseSet(SourceSet):
    """A set as test_restore's, with what the backup printed."""

    stdout: str = ""

    def file(self, kind: str) -> Path:
        return self.directory / self.manifest["files"][kind]["name"]

    def text(self, kind: str) -> str:
        return self.file(kind).read_text()


def backup(conn: Conn, directory: Path, *args: str) -> SupabaseSet:
    """`pgvault backup` of conn's database as postgres, over TCP like `supabase start`'s."""
    res = run_pgvault(
        "backup", f"dir={directory}", f"target.url={url(conn)}", *args, env=pgvault_env()
    )
    assert res.returncode == 0, res.stderr
    (path,) = directory.glob("*-manifest.json")
    m = json.loads(path.read_text())
    return SupabaseSet(directory, m["prefix"], m, fingerprint(conn), res.stdout)


def restore(conn: Conn, bset: SupabaseSet, *args: str) -> subprocess.CompletedProcess[str]:
    return run_pgvault(
        "restore", f"dir={bset.directory}", f"prefix={bset.prefix}", f"target.url={url(conn)}",
        "yes=true", *args, env=pgvault_env(),
    )  # fmt: skip


@pytest.fixture(scope="module")
def crm(sb) -> Conn:
    """The app's database with its sample rows. Read-only for tests."""
    return new_database(sb, APP_TEMPLATE)


@pytest.fixture(scope="module")
def crm_set(crm, tmp_path_factory) -> SupabaseSet:
    return backup(crm, tmp_path_factory.mktemp("sb") / "backups")


def test_the_profile_is_detected_and_said(crm_set):
    assert "Profile: supabase (detected" in crm_set.stdout
    assert crm_set.manifest["profile"] == "supabase"
    assert crm_set.file(naming.PLATFORM).stat().st_mode & 0o777 == 0o600


def test_the_roles_file_holds_only_the_apps_roles(crm_set):
    roles = crm_set.text("roles")
    statements = [ln for ln in roles.splitlines() if ln and not ln.startswith(("--", "\\"))]
    for name in RESERVED:
        assert not [s for s in statements if re.search(rf"ROLE {name}[ ;]", s)
                    and " SET statement_timeout " not in s], name  # fmt: skip
    # Only the app's role keeps its password; no Supabase role's hash is in the file.
    assert [s for s in statements if "SCRAM-SHA-256" in s] == [
        s for s in statements if s.startswith("ALTER ROLE crm_reporting WITH")
    ]
    assert "CREATE ROLE crm_reporting;" in roles
    assert not re.search(r"NOSUPERUSER|NOREPLICATION|NOBYPASSRLS", roles)
    # Of the reserved roles' settings, only those Supabase lets postgres set.
    assert "ALTER ROLE anon SET statement_timeout TO '3s';" in statements
    assert "ALTER ROLE crm_reporting SET statement_timeout TO '30s';" in statements
    assert not [s for s in statements if "search_path" in s or "lock_timeout" in s]
    assert "GRANT crm_reporting TO authenticator;" in statements
    assert not [s for s in statements if " TO postgres" in s or "GRANTED BY" in s]
    assert "ON PARAMETER" not in roles


def test_the_schema_file_holds_the_apps_objects_and_not_supabases(crm_set):
    schema = crm_set.text("schema")
    assert "CREATE TRIGGER on_auth_user_created AFTER INSERT ON auth.users" in schema
    assert schema.count('CREATE POLICY "Attachments 1mt4rzk_') == 3
    assert "CREATE TABLE public.sales" in schema
    assert "CREATE EXTENSION IF NOT EXISTS citext WITH SCHEMA extensions;" in schema
    assert "ALTER PUBLICATION supabase_realtime ADD TABLE ONLY public.tasks;" in schema
    for gone in (
        "CREATE SCHEMA",
        "CREATE TABLE auth.",
        "CREATE TABLE storage.",
        "EVENT TRIGGER",
        "FOR ROLE supabase_admin",
        "COMMENT ON EXTENSION",
        "CREATE PUBLICATION",
        "update_objects_updated_at",
        "auth.uid() RETURNS",
    ):
        assert gone not in schema, gone  # fmt: skip
    # The app's function in Supabase's extensions schema, its webhook on uploads, its
    # foreign server, and its role's grants on Supabase's objects; not Supabase's function
    # that postgres happens to own.
    assert "CREATE OR REPLACE FUNCTION extensions.crm_slug(value text)" in schema
    assert "CREATE TRIGGER attachment_uploaded AFTER INSERT ON storage.objects" in schema
    assert "CREATE SERVER crm_archive FOREIGN DATA WRAPPER postgres_fdw" in schema
    assert 'GRANT SELECT ON TABLE "auth"."users" TO "crm_reporting";' in schema
    assert 'GRANT USAGE ON SCHEMA "storage" TO "crm_reporting";' in schema
    assert "grant_pg_cron_access" not in schema
    # Nothing only the owner of Supabase's tables may do.
    assert not re.search(r"^ALTER TABLE (ONLY )?(auth|storage)\.", schema, re.M)
    assert not re.search(r"^COMMENT ON .*(auth|storage)\.", schema, re.M)
    platform = crm_set.text(naming.PLATFORM)
    assert "CREATE TABLE auth.users" in platform
    assert "on_auth_user_created" not in platform and "public.sales" not in platform


def test_the_data_file_holds_app_rows_and_auth_and_storage_rows(crm_set):
    copied = set(re.findall(r"^COPY (\S+) ", crm_set.text("data"), re.M))
    assert {"public.sales", "auth.users", "auth.identities", "storage.buckets",
            "storage.objects", "supabase_migrations.schema_migrations"} <= copied  # fmt: skip
    assert not copied & {"auth.schema_migrations", "storage.migrations",
                         "supabase_functions.migrations", "realtime.messages"}  # fmt: skip
    assert crm_set.manifest["tables"]["auth.users"]["rows"] == 5


def test_restore_into_a_fresh_supabase_database(sb, crm_set):
    target = new_database(sb)
    res = restore(target, crm_set)
    assert res.returncode == 0, res.stderr
    assert "Profile: supabase" in res.stdout
    assert diff(crm_set.fingerprint, fingerprint(target)) == []
    # The app works: a sign-up still makes a sales row.
    assert sign_up(target, "new@example.com", "Ada") == [("Ada", "Doe", "new@example.com")]


def test_restore_into_the_same_database_after_changes(sb, tmp_path):
    db = new_database(sb, APP_TEMPLATE)
    bset = backup(db, tmp_path / "backups")
    with connect(db, autocommit=True) as pg:
        pg.execute("CREATE TABLE public.scratch (id int)")
        pg.execute("DELETE FROM public.tasks WHERE id < 5")
        pg.execute("DROP VIEW public.companies_summary")
        pg.execute("CREATE POLICY late ON storage.objects FOR SELECT TO anon USING (true)")
        pg.execute("DROP TRIGGER on_auth_user_updated ON auth.users")
        pg.execute(
            "ALTER DEFAULT PRIVILEGES FOR ROLE postgres IN SCHEMA public "
            "GRANT EXECUTE ON FUNCTIONS TO anon"
        )
        pg.execute("CREATE SCHEMA reports")
        pg.execute("INSERT INTO storage.objects (bucket_id, name) VALUES ('attachments', 'x')")
        pg.execute("DROP FUNCTION extensions.crm_slug(text)")
        pg.execute("CREATE FUNCTION extensions.crm_slug(value text) RETURNS int LANGUAGE sql"
                   " AS 'SELECT 1'")  # fmt: skip
        pg.execute("REVOKE SELECT ON auth.users FROM crm_reporting")
        pg.execute("GRANT UPDATE ON storage.objects TO crm_reporting")
        pg.execute("DROP SERVER crm_archive")
        pg.execute("CREATE SERVER crm_archive FOREIGN DATA WRAPPER postgres_fdw")
        pg.execute("CREATE SERVER stale FOREIGN DATA WRAPPER postgres_fdw")
        pg.execute("DROP TRIGGER attachment_uploaded ON storage.objects")
    sign_up(db, "late@example.com", "Late")
    assert diff(bset.fingerprint, fingerprint(db)) != []
    res = restore(db, bset)
    assert res.returncode == 0, res.stderr
    assert diff(bset.fingerprint, fingerprint(db)) == []
    assert sign_up(db, "again@example.com", "Bo") == [("Bo", "Doe", "again@example.com")]


def test_the_guides_plain_psql_command_restores_the_files_as_postgres(sb, crm_set):
    target = new_database(sb)
    files = {k: crm_set.file(k) for k in naming.SQL_KINDS}
    psql = shutil.which("psql") or "psql"
    plain_psql_restore(psql, url(target), files)
    assert diff(crm_set.fingerprint, fingerprint(target)) == []
    assert sign_up(target, "plain@example.com", "Cy") == [("Cy", "Doe", "plain@example.com")]


def test_a_failed_restore_leaves_the_target_exactly_as_it_was(sb, crm_set):
    target = new_database(sb, APP_TEMPLATE)
    sign_up(target, "kept@example.com", "Kept")
    # An older Supabase: auth.users lacks a column the backup's rows have.
    with connect(admin(target), autocommit=True) as pg:
        pg.execute("ALTER TABLE auth.users DROP COLUMN is_anonymous")
    before = fingerprint(target)
    res = restore(target, crm_set, "restore.safety_backup=false")
    line = one_line_error(res)
    assert "restore failed" in line and "is_anonymous" in line
    assert diff(before, fingerprint(target)) == []


def test_a_wipe_that_fails_leaves_the_target_exactly_as_it_was(sb, crm_set):
    """A schema of a role postgres cannot act for: the wipe fails half-way through."""
    target = new_database(sb, APP_TEMPLATE)
    sign_up(target, "kept@example.com", "Kept")
    role = f"outsider_{target.params['dbname']}"
    with connect(admin(target), autocommit=True) as pg:
        pg.execute(f"CREATE ROLE {role}")
        pg.execute(f"CREATE SCHEMA outsider AUTHORIZATION {role}")
        pg.execute(
            f"CREATE TABLE outsider.notes (id int); ALTER TABLE outsider.notes OWNER TO {role}"
        )
    try:
        before = fingerprint(target)
        res = restore(target, crm_set, "restore.safety_backup=false")
        line = one_line_error(res)
        assert "restore failed" in line and "outsider" in line
        assert diff(before, fingerprint(target)) == []
    finally:
        with connect(admin(target), autocommit=True) as pg:
            pg.execute(f"DROP SCHEMA outsider CASCADE; DROP ROLE {role}")


def test_a_supabase_set_is_not_restored_into_a_plain_database(pg_cluster, crm_set):
    target = pg_cluster.conn("postgres")
    res = restore(target, crm_set)
    line = one_line_error(res)
    assert "is not a Supabase database" in line or "is not one" in line


def verify(directory: Path, prefix: str, tmp: Path) -> subprocess.CompletedProcess[str]:
    return run_pgvault(
        "verify", f"dir={directory}", f"prefix={prefix}", env=pgvault_env(TMPDIR=str(tmp)), cwd=tmp
    )


def test_verify_of_a_supabase_set_on_stock_postgresql(crm_set, tmp, tmp_path):
    directory = tmp_path / "copy"
    shutil.copytree(crm_set.directory, directory)
    res = verify(directory, crm_set.prefix, tmp)
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"{crm_set.prefix} verified" in res.stdout
    assert "auth.users: 5 rows" in res.stdout and "not checked" not in res.stdout
    assert list(tmp.iterdir()) == []


def test_verify_names_an_extension_this_server_lacks(server_programs, tmp, tmp_path):
    private = private_install(server_programs, tmp / "pg", "pgvault_fake_net")
    with supabase_cluster(private) as c:
        db = new_database(c, APP_TEMPLATE)
        with connect(admin(db), autocommit=True) as pg:
            pg.execute("CREATE EXTENSION pgvault_fake_net")
        with connect(db, autocommit=True) as pg:
            pg.execute(
                "CREATE FUNCTION public.notify_webhook() RETURNS bigint LANGUAGE plpgsql"
                " AS $$BEGIN RETURN net.http_get('https://example.com'); END$$"
            )
        bset = backup(db, tmp_path / "backups")
    assert "pgvault_fake_net" in bset.text("schema")
    shutil.rmtree(tmp / "pg")
    res = verify(bset.directory, bset.prefix, tmp)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "not checked: extension pgvault_fake_net is not available" in res.stdout
    assert f"{bset.prefix} verified" in res.stdout
    record = json.loads((bset.directory / f"{bset.prefix}-verify.json").read_text())
    assert record["verdict"] == "verified"
    assert any("pgvault_fake_net" in n for n in record["not_checked"])


def test_a_stopped_supabase_gets_the_seeds_message(tmp_path):
    res = run_pgvault(
        "backup", "target=supabase_local", env=pgvault_env(BACKUP_DIR=str(tmp_path / "b"))
    )
    line = one_line_error(res)
    assert line == (
        "pgvault: error: Supabase does not appear to be running at 127.0.0.1:54322 "
        "(start it with `supabase start`)"
    )
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize("limit_kib", [4, 12, 20])
def test_a_full_disk_leaves_no_file_of_a_supabase_set(crm, tmp_path, limit_kib):
    """The disk fills while the four files are written (the platform file among them): no
    file of the set stays, partial or not."""
    directory = tmp_path / "backups"

    def small_disk() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_kib << 10, limit_kib << 10))

    res = run_pgvault(
        "backup", f"dir={directory}", f"target.url={url(crm)}", env=pgvault_env(),
        preexec_fn=small_disk,
    )  # fmt: skip
    line = one_line_error(res)
    assert "cannot write the backup" in line and "File too large" in line
    assert [p.name for p in directory.iterdir() if p.name.startswith("backup-")] == []


def test_profile_supabase_on_a_plain_database_is_refused(feature_db, tmp_path):
    res = run_pgvault(
        "backup", f"dir={tmp_path / 'b'}", "target.profile=supabase", env=pgvault_env(feature_db)
    )
    assert "is not a Supabase database" in one_line_error(res)
    assert not (tmp_path / "b").exists()


def test_a_plain_database_keeps_the_plain_profile(feature_db, tmp_path):
    res = run_pgvault("backup", f"dir={tmp_path}", env=pgvault_env(feature_db))
    assert res.returncode == 0, res.stderr
    assert "Profile: plain (detected" in res.stdout
    (path,) = tmp_path.glob("*-manifest.json")
    m = json.loads(path.read_text())
    assert m["profile"] == "plain" and naming.PLATFORM not in m["files"]
    assert not list(tmp_path.glob("*-platform.sql"))
