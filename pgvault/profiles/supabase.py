"""The Supabase profile: which parts of a Supabase database are the app's, and which are
Supabase's own, for a backup and a restore made as Supabase's non-superuser `postgres`.

The app owns its schemas (public and any it created), its roles, its objects on Supabase's
tables (triggers, policies), its functions in Supabase's schemas, its grants on them, and
the rows of auth, storage, supabase_functions and supabase_migrations. Supabase owns its
roles, its schemas and their definitions, event triggers, and its default privileges.
The rules follow the Supabase CLI's own dumps (reserved roles, internal schemas, kept role
settings), plus what the CLI loses: the app's objects in or on managed schemas.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from pgvault.dumpfilter import Entry

LOGIN_ROLE = "postgres"
_RESERVED = frozenset({
    "anon", "authenticated", "authenticator", "dashboard_user", "pgbouncer", "postgres",
    "service_role", "pgtle_admin", "supabase_admin",
})  # fmt: skip
_RESERVED_RE = re.compile(r"(supabase_|pgsodium_|cli_login_).*")
# The CLI's internal schemas, and the schemas of the extensions Supabase manages.
MANAGED_SCHEMAS = (
    "_analytics", "_realtime", "_supavisor", "auth", "cron", "dbdev", "etl", "extensions",
    "graphql", "graphql_public", "net", "pgbouncer", "pgmq", "pgsodium", "pgsodium_masks",
    "pgtle", "realtime", "repack", "storage", "supabase_functions", "supabase_migrations",
    "supabase_subscription_mgmt", "tiger", "tiger_data", "topology", "vault",
)  # fmt: skip
_MANAGED_RE = r"^_?timescaledb_"
# Managed schemas whose rows are the app's state: users, identities, buckets, objects
# metadata, webhooks, and the CLI's record of which app migrations were applied.
DATA_SCHEMAS = ("auth", "storage", "supabase_functions", "supabase_migrations")
# Their migrations bookkeeping belongs to the services, not to the app.
BOOKKEEPING_TABLES = (
    "auth.schema_migrations",
    "storage.migrations",
    "supabase_functions.migrations",
)
# Realtime's publications are Supabase's; the app only adds its tables to them.
_PLATFORM_PUBLICATION_RE = re.compile(r"supabase_realtime.*")


def is_reserved(role: str) -> bool:
    """Whether a role is Supabase's own: never created, altered or given a password."""
    return role in _RESERVED or _RESERVED_RE.fullmatch(role) is not None


_DETECT = """SELECT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'supabase_admin')
    AND EXISTS (SELECT FROM pg_catalog.pg_namespace n
        JOIN pg_catalog.pg_roles r ON r.oid = n.nspowner
        WHERE n.nspname = 'auth' AND r.rolname ~ '^supabase_')"""


def detect(pg: psycopg.Connection[Any]) -> bool:
    """Whether the database looks like Supabase's: supabase_admin exists and the auth
    schema is owned by a Supabase role."""
    row = pg.execute(_DETECT).fetchone()
    return bool(row and row[0])


@dataclass(frozen=True)
class SupabaseScope:
    """What a backup decided, inside its snapshot, about one Supabase database. It goes
    into the manifest: restore and verify need the same answers."""

    managed: tuple[str, ...]
    data_schemas: tuple[str, ...]
    database_owner: str = LOGIN_ROLE
    # Supabase's roles as the source had them: verify makes its stand-in from these.
    platform_roles: dict[str, dict[str, bool]] = field(default_factory=dict)
    memberships: tuple[tuple[str, str], ...] = ()
    # The app's triggers and policies on managed tables: (type, schema, pg_dump tag).
    app_entries: tuple[tuple[str, str, str], ...] = ()
    # Every extension, by schema: verify names those its server lacks.
    extensions: dict[str, str] = field(default_factory=dict)

    @property
    def platform_owners(self) -> frozenset[str]:
        """Roles whose objects are Supabase's (every reserved role but the login role)."""
        return frozenset(r for r in self.platform_roles if r != LOGIN_ROLE)

    def to_manifest(self) -> dict[str, Any]:
        return {
            "managed_schemas": list(self.managed),
            "data_schemas": list(self.data_schemas),
            "bookkeeping_tables": list(BOOKKEEPING_TABLES),
            "database_owner": self.database_owner,
            "platform_roles": self.platform_roles,
            "memberships": [list(m) for m in self.memberships],
            "app_objects_in_managed_schemas": [list(e) for e in self.app_entries],
            "extensions": self.extensions,
        }

    @classmethod
    def from_manifest(cls, m: dict[str, Any]) -> SupabaseScope:
        return cls(
            managed=tuple(m.get("managed_schemas", ())),
            data_schemas=tuple(m.get("data_schemas", ())),
            database_owner=str(m.get("database_owner", LOGIN_ROLE)),
            platform_roles={str(k): dict(v) for k, v in m.get("platform_roles", {}).items()},
            memberships=tuple((str(a), str(b)) for a, b in m.get("memberships", ())),
            app_entries=tuple(
                (str(a), str(b), str(c)) for a, b, c in m.get("app_objects_in_managed_schemas", ())
            ),
            extensions={str(k): str(v) for k, v in m.get("extensions", {}).items()},
        )


_ROLES = """SELECT rolname, rolsuper, rolinherit, rolcreaterole, rolcreatedb, rolcanlogin,
    rolreplication, rolbypassrls FROM pg_catalog.pg_roles WHERE rolname !~ '^pg_'"""
_MEMBERSHIPS = """SELECT r.rolname, m.rolname FROM pg_catalog.pg_auth_members a
    JOIN pg_catalog.pg_roles r ON r.oid = a.roleid JOIN pg_catalog.pg_roles m ON m.oid = a.member"""
_MANAGED = """SELECT n.nspname FROM pg_catalog.pg_namespace n
    JOIN pg_catalog.pg_roles r ON r.oid = n.nspowner
    WHERE n.nspname <> 'public' AND n.nspname NOT IN ('pg_catalog', 'information_schema')
      AND n.nspname !~ '^pg_'
      AND (n.nspname = ANY(%(listed)s) OR n.nspname ~ %(pattern)s OR r.rolname = ANY(%(platform)s)
           OR EXISTS (SELECT FROM pg_catalog.pg_depend d
                      WHERE d.classid = 'pg_catalog.pg_namespace'::regclass
                        AND d.objid = n.oid AND d.deptype = 'e'))
    ORDER BY 1"""
# Triggers on managed tables that call a function of the app's (Supabase's own call its
# own functions), and every policy there: Supabase ships none.
_APP_ENTRIES = """
SELECT 'TRIGGER', n.nspname, c.relname || ' ' || t.tgname
FROM pg_catalog.pg_trigger t JOIN pg_catalog.pg_class c ON c.oid = t.tgrelid
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
JOIN pg_catalog.pg_proc p ON p.oid = t.tgfoid JOIN pg_catalog.pg_roles o ON o.oid = p.proowner
WHERE NOT t.tgisinternal AND n.nspname = ANY(%(managed)s) AND NOT o.rolname = ANY(%(platform)s)
UNION ALL
SELECT 'POLICY', n.nspname, c.relname || ' ' || p.polname
FROM pg_catalog.pg_policy p JOIN pg_catalog.pg_class c ON c.oid = p.polrelid
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = ANY(%(managed)s)
ORDER BY 1, 2, 3"""


def read_scope(pg: psycopg.Connection[Any]) -> SupabaseScope:
    """Given a connection inside the backup's snapshot, decide what is whose."""
    roles = {}
    for name, *attrs in pg.execute(_ROLES).fetchall():
        if is_reserved(str(name)):
            keys = ("superuser", "inherit", "createrole", "createdb", "login", "replication",
                    "bypassrls")  # fmt: skip
            roles[str(name)] = dict(zip(keys, (bool(a) for a in attrs), strict=True))
    platform = sorted(r for r in roles if r != LOGIN_ROLE)
    memberships = tuple(
        (str(role), str(member))
        for role, member in pg.execute(_MEMBERSHIPS).fetchall()
        if str(member) in roles and (str(role) in roles or str(role).startswith("pg_"))
    )
    managed = tuple(
        str(r[0])
        for r in pg.execute(
            _MANAGED,
            {"listed": list(MANAGED_SCHEMAS), "pattern": _MANAGED_RE, "platform": platform},
        ).fetchall()
    )
    entries = tuple(
        (str(a), str(b), str(c))
        for a, b, c in pg.execute(
            _APP_ENTRIES, {"managed": list(managed), "platform": platform}
        ).fetchall()
    )
    row = pg.execute(
        "SELECT pg_catalog.pg_get_userbyid(datdba) FROM pg_catalog.pg_database"
        " WHERE datname = pg_catalog.current_database()"
    ).fetchone()
    extensions = {
        str(name): str(schema)
        for name, schema in pg.execute(
            "SELECT e.extname, n.nspname FROM pg_catalog.pg_extension e"
            " JOIN pg_catalog.pg_namespace n ON n.oid = e.extnamespace ORDER BY 1"
        ).fetchall()
    }
    return SupabaseScope(
        extensions=extensions,
        managed=managed,
        data_schemas=tuple(s for s in DATA_SCHEMAS if s in managed),
        database_owner=str(row[0]) if row else LOGIN_ROLE,
        platform_roles=roles,
        memberships=memberships,
        app_entries=entries,
    )


# --- the schema file and the platform file ---------------------------------------------

_FUNCTION_TYPES = ("FUNCTION", "PROCEDURE", "AGGREGATE")


def _on_managed_schema(scope: SupabaseScope, e: Entry) -> bool:
    """An entry for a managed schema itself (its CREATE, ACL or comment)."""
    name = e.name.removeprefix("SCHEMA ") if e.type in ("ACL", "COMMENT") else e.name
    return (
        e.schema == "-"
        and (e.type == "SCHEMA" or e.name.startswith("SCHEMA "))
        and (name in scope.managed or name.strip('"') in scope.managed)
    )


def _app_function(scope: SupabaseScope, e: Entry) -> bool:
    """The app's own function in a managed schema (say, extensions): kept, as CREATE OR
    REPLACE, never dropped (Supabase's event triggers may call functions there)."""
    if e.owner in scope.platform_owners or e.owner in ("", "-"):
        return False
    return e.type in _FUNCTION_TYPES or (
        e.type in ("ACL", "COMMENT") and e.name.split(" ")[0] in _FUNCTION_TYPES
    )


def app_entry(scope: SupabaseScope) -> Callable[[Entry], bool]:
    """Which entries of a full pg_dump go into the schema file: the app's."""
    entries = set(scope.app_entries)
    platform = scope.platform_owners

    def keep(e: Entry) -> bool:
        if e.type == "COMMENT" and e.name.startswith("EXTENSION "):
            return False  # needs the extension's owner, and says nothing of the app
        if e.type == "EXTENSION":
            return True  # written as CREATE EXTENSION IF NOT EXISTS: a no-op where present
        if e.schema in scope.managed:
            return (e.type, e.schema, e.name) in entries or _app_function(scope, e)
        if _on_managed_schema(scope, e):
            return False
        if e.type == "PUBLICATION" and _PLATFORM_PUBLICATION_RE.fullmatch(e.name):
            return False
        return e.owner not in platform  # event triggers, default privileges, ...

    return keep


def platform_entry(scope: SupabaseScope) -> Callable[[Entry], bool]:
    """Which entries of a full pg_dump go into the platform file: Supabase's own schemas
    and what is in them, for verify's stand-in of a Supabase database."""
    app = app_entry(scope)

    def keep(e: Entry) -> bool:
        if e.type == "EXTENSION":
            return True
        if e.type == "COMMENT" and e.name.startswith("EXTENSION "):
            return False
        if e.type == "PUBLICATION" and _PLATFORM_PUBLICATION_RE.fullmatch(e.name):
            return True  # the app adds its tables to it
        return _on_managed_schema(scope, e) or (e.schema in scope.managed and not app(e))

    return keep


def or_replace(scope: SupabaseScope) -> Callable[[Entry], bool]:
    """Entries whose CREATE FUNCTION becomes CREATE OR REPLACE FUNCTION."""
    return lambda e: e.schema in scope.managed and e.type in _FUNCTION_TYPES


# What a fresh Supabase grants by default in public and the backup may not: the schema file
# takes it back first, so that the backup's own default privileges are all that remain.
DEFAULT_PRIVILEGES_RESET = "".join(
    f"ALTER DEFAULT PRIVILEGES FOR ROLE {LOGIN_ROLE} IN SCHEMA public REVOKE ALL ON {kind} "
    f"FROM PUBLIC, anon, authenticated, service_role, {LOGIN_ROLE};\n"
    for kind in ("TABLES", "SEQUENCES", "FUNCTIONS", "TYPES")
)


def schema_prologue(scope: SupabaseScope) -> bytes:
    """What the schema file starts with: the default privileges reset, when the API roles
    it names exist (they do in every Supabase database)."""
    if not {"anon", "authenticated", "service_role"} <= set(scope.platform_roles):
        return b""
    return (
        "-- pgvault: default privileges in public as the backup had them, not as a fresh\n"
        "-- Supabase database grants them (its own follow in the post-data part).\n"
        + DEFAULT_PRIVILEGES_RESET
        + "\n"
    ).encode()


def data_args(scope: SupabaseScope) -> list[str]:
    """pg_dump selection for the data file: app schemas and the data schemas' rows, no
    migrations bookkeeping."""
    args = [f"--exclude-schema={pattern_literal(s)}" for s in scope.managed
            if s not in scope.data_schemas]  # fmt: skip
    for table in BOOKKEEPING_TABLES:
        schema, name = table.split(".")
        if schema in scope.data_schemas:
            args.append(f"--exclude-table-data={pattern_literal(schema)}.{pattern_literal(name)}")
    return args


def pattern_literal(name: str) -> str:
    """A psql/pg_dump pattern that matches exactly this name (double quotes make every
    character literal)."""
    return '"' + name.replace('"', '""') + '"'


# --- the restore's wipe --------------------------------------------------------------------


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _array(values: tuple[str, ...] | list[str]) -> str:
    return "ARRAY[" + ", ".join(_literal(v) for v in values) + "]::text[]"


_WIPE = Path(__file__).with_name("supabase_wipe.sql")


def wipe_sql(scope: SupabaseScope) -> str:
    """The restore's wipe for a Supabase database, run as postgres inside the restore's
    transaction: everything the app owns goes, Supabase's own stays. What is Supabase's
    is decided again in the target, by the rules the backup used."""
    subst = {
        "@RESERVED@": _array(sorted(_RESERVED)),
        "@RESERVED_RE@": _literal("^(" + _RESERVED_RE.pattern + ")$"),
        "@MANAGED@": _array(sorted(set(MANAGED_SCHEMAS) | set(scope.managed))),
        "@MANAGED_RE@": _literal(_MANAGED_RE),
        "@DATA@": _array(scope.data_schemas),
        "@BOOKKEEPING@": _array(BOOKKEEPING_TABLES),
    }
    sql = _WIPE.read_text()
    for key, value in subst.items():
        sql = sql.replace(key, value)
    return sql
