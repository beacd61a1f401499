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

import functools
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
# Supabase's own functions that postgres may own in its schemas (never the app's).
SUPABASE_FUNCTIONS = (
    "extensions.grant_pg_cron_access", "extensions.grant_pg_graphql_access",
    "extensions.grant_pg_net_access", "extensions.pgrst_ddl_watch", "extensions.pgrst_drop_watch",
    "extensions.set_graphql_placeholder", "pgbouncer.get_auth",
)  # fmt: skip
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
    # The app's functions in managed schemas: (schema, name).
    app_functions: tuple[tuple[str, str], ...] = ()
    # What the app's roles were granted on Supabase's objects, as GRANT statements.
    app_grants: tuple[str, ...] = ()
    # Supabase's tables in the app's schemas ("schema.table"): not the app's data.
    platform_tables: tuple[str, ...] = ()
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
            "app_functions_in_managed_schemas": [list(f) for f in self.app_functions],
            "app_grants_on_managed_objects": list(self.app_grants),
            "platform_tables_in_app_schemas": list(self.platform_tables),
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
            app_functions=tuple(
                (str(a), str(b)) for a, b in m.get("app_functions_in_managed_schemas", ())
            ),
            app_grants=tuple(str(g) for g in m.get("app_grants_on_managed_objects", ())),
            platform_tables=tuple(str(t) for t in m.get("platform_tables_in_app_schemas", ())),
            extensions={str(k): str(v) for k, v in m.get("extensions", {}).items()},
        )


_ROLES = """SELECT rolname, rolsuper, rolinherit, rolcreaterole, rolcreatedb, rolcanlogin,
    rolreplication, rolbypassrls FROM pg_catalog.pg_roles WHERE rolname !~ '^pg_'"""
_MEMBERSHIPS = """SELECT r.rolname, m.rolname FROM pg_catalog.pg_auth_members a
    JOIN pg_catalog.pg_roles r ON r.oid = a.roleid JOIN pg_catalog.pg_roles m ON m.oid = a.member"""


def read_scope(pg: psycopg.Connection[Any]) -> SupabaseScope:
    """Given a connection inside the backup's snapshot, decide what is whose."""
    keys = ("superuser", "inherit", "createrole", "createdb", "login", "replication", "bypassrls")
    roles = {
        str(name): dict(zip(keys, (bool(a) for a in attrs), strict=True))
        for name, *attrs in pg.execute(_ROLES).fetchall()
        if is_reserved(str(name))
    }
    memberships = tuple(
        (str(role), str(member))
        for role, member in pg.execute(_MEMBERSHIPS).fetchall()
        if str(member) in roles and (str(role) in roles or str(role).startswith("pg_"))
    )
    platform = _oids(_one(pg, rule("platform")))
    managed = tuple(str(n) for n in _one(pg, rule("managed", platform)))
    where = (platform, _array(managed))
    entries = [("TRIGGER", a, f"{b} {c}") for a, b, c in pg.execute(rule("triggers", *where))]
    entries += [("POLICY", a, f"{b} {c}") for a, b, c in pg.execute(rule("policies", *where))]
    functions = tuple((str(a), str(b)) for a, b, _, _ in pg.execute(rule("functions", *where)))
    grants = tuple(_grant(*g) for g in pg.execute(rule("grants", *where)))
    tables = tuple(f"{a}.{b}" for a, b in pg.execute(rule("platform_tables", *where)))
    owner = _one(pg, "SELECT pg_catalog.pg_get_userbyid(datdba) FROM pg_catalog.pg_database"
                     " WHERE datname = pg_catalog.current_database()")  # fmt: skip
    extensions = pg.execute(
        "SELECT e.extname, n.nspname FROM pg_catalog.pg_extension e"
        " JOIN pg_catalog.pg_namespace n ON n.oid = e.extnamespace ORDER BY 1"
    ).fetchall()
    return SupabaseScope(
        managed=managed,
        data_schemas=tuple(s for s in DATA_SCHEMAS if s in managed),
        database_owner=str(owner),
        platform_roles=roles,
        memberships=memberships,
        app_entries=tuple((str(a), str(b), str(c)) for a, b, c in entries),
        app_functions=functions,
        app_grants=grants,
        platform_tables=tables,
        extensions={str(name): str(schema) for name, schema in extensions},
    )


def _one(pg: psycopg.Connection[Any], query: str) -> Any:
    row = pg.execute(query).fetchone()
    assert row is not None
    return row[0]


def _oids(oids: list[int]) -> str:
    return "ARRAY[" + ", ".join(str(int(o)) for o in oids) + "]::oid[]"


def _grant(kind: str, schema: str, name: str | None, role: str, priv: str, grantable: bool) -> str:
    target = _ident(schema) if name is None else f"{_ident(schema)}.{_ident(name)}"
    option = " WITH GRANT OPTION" if grantable else ""
    return f"GRANT {priv} ON {kind} {target} TO {_ident(role)}{option};"


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


_RULES_FILE = Path(__file__).with_name("supabase_rules.sql")


@functools.cache
def _rules() -> dict[str, str]:
    """supabase_rules.sql, one query per `-- @rule NAME:` comment."""
    out: dict[str, str] = {}
    for part in _RULES_FILE.read_text().split("-- @rule ")[1:]:
        name, _, body = part.partition(":")
        lines = [ln for ln in body.splitlines()[1:] if not ln.startswith("--")]
        out[name] = "\n".join(lines).strip()
    return out


def rule(name: str, platform: str = "'{}'::oid[]", managed: str = "'{}'::text[]") -> str:
    """The query of one rule, for the given platform roles (an oid[] expression) and
    managed schemas (a text[] expression)."""
    subst = {
        "@PLATFORM@": platform,
        "@MANAGED@": managed,
        "@RESERVED@": _array(sorted(_RESERVED)),
        "@RESERVED_RE@": _literal("^(" + _RESERVED_RE.pattern + ")$"),
        "@LISTED@": _array(MANAGED_SCHEMAS),
        "@LISTED_RE@": _literal(_MANAGED_RE),
        "@SUPABASE_FUNCTIONS@": _array(SUPABASE_FUNCTIONS),
    }
    query = _rules()[name]
    for key, value in subst.items():
        query = query.replace(key, value)
    return query


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
    """The app's own function in a managed schema (say, extensions), its ACL or comment."""
    if e.owner in scope.platform_owners or e.owner in ("", "-"):
        return False
    if e.type in _FUNCTION_TYPES:
        name = e.name
    elif e.type in ("ACL", "COMMENT") and e.name.split(" ")[0] in _FUNCTION_TYPES:
        name = e.name.partition(" ")[2]
    else:
        return False
    proname = name.partition("(")[0]
    if proname.startswith('"'):
        proname = proname[1:-1].replace('""', '"')
    return (e.schema, proname) in scope.app_functions


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
        if _on_managed_schema(scope, e):
            return True
        # What is in Supabase's schemas, and what its roles own elsewhere (event triggers,
        # grants on foreign data wrappers, default privileges).
        return (e.schema in scope.managed or e.owner in scope.platform_owners) and not app(e)

    return keep


# Extensions that make their own schema: `WITH SCHEMA` would name one a fresh database
# lacks (as the Supabase CLI, leave it out).
_OWN_SCHEMA_EXTENSIONS = frozenset({"pgmq", "pgsodium", "pg_tle"})
_WITH_SCHEMA = re.compile(rb" WITH SCHEMA [^;]+;$")


def edit_app_entry(scope: SupabaseScope) -> Callable[[Entry, bytes], bytes]:
    """Line edits for the schema file: the app's functions in managed schemas as CREATE OR
    REPLACE (a plain psql restore may meet them), and no WITH SCHEMA for extensions that
    make their own schema."""

    def edit(e: Entry, line: bytes) -> bytes:
        if (
            e.type in _FUNCTION_TYPES
            and e.schema in scope.managed
            and line.startswith((b"CREATE FUNCTION ", b"CREATE PROCEDURE ", b"CREATE AGGREGATE "))
        ):
            return b"CREATE OR REPLACE " + line.removeprefix(b"CREATE ")
        if e.type == "EXTENSION" and e.name in _OWN_SCHEMA_EXTENSIONS:
            return _WITH_SCHEMA.sub(b";", line)
        return line

    return edit


def schema_trailer(scope: SupabaseScope) -> bytes:
    """The app's roles' grants on Supabase's objects, after the schema file's post-data:
    pg_dump writes an object's grants as one entry, Supabase's and the app's together."""
    if not scope.app_grants:
        return b""
    head = "\n-- pgvault: what the app's roles were granted on Supabase's objects\n"
    return (head + "\n".join(scope.app_grants) + "\n").encode()


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
    for table in scope.platform_tables:
        schema, _, name = table.partition(".")
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
    sql = _WIPE.read_text()
    for name in _rules():
        sql = sql.replace(f"@RULE_{name}@", rule(name, "platform", "managed"))
    subst = {
        "@DATA@": _array(scope.data_schemas),
        "@BOOKKEEPING@": _array(BOOKKEEPING_TABLES),
    }
    for key, value in subst.items():
        sql = sql.replace(key, value)
    return sql
