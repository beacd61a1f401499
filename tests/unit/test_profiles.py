"""The rules of the Supabase profile and of the entry filter, as pure functions: which roles
are Supabase's, what of a roles dump a restore as postgres may run, and that filtering a
dump keeps exactly the chosen entries however the stream is cut."""

from __future__ import annotations

import re

from hypothesis import given
from hypothesis import strategies as st

from pgvault import naming
from pgvault.dumpfilter import Entry, EntryFilter, parse_header
from pgvault.manifest import Manifest
from pgvault.profiles import Plan
from pgvault.profiles.supabase import (
    SupabaseScope,
    app_entry,
    data_args,
    edit_app_entry,
    is_reserved,
)
from pgvault.profiles.supabase_roles import SupabaseRoles, roles_statement
from tests.manifests import manifest


def cut(data: bytes, size: int) -> list[bytes]:
    """data in pieces of size bytes (the last one shorter)."""
    return [data[i : i + size] for i in range(0, len(data), size)]


names = st.from_regex(r"[a-z][a-z0-9_]{0,20}", fullmatch=True)
app_names = names.filter(lambda n: not is_reserved(n))
reserved = st.sampled_from(
    ["anon", "authenticated", "authenticator", "service_role", "postgres", "supabase_admin",
     "dashboard_user", "pgbouncer", "pgtle_admin"]
) | names.map(lambda n: f"supabase_{n}") | names.map(lambda n: f"pgsodium_{n}") | names.map(
    lambda n: f"cli_login_{n}"
)  # fmt: skip
attrs = st.lists(
    st.sampled_from(["SUPERUSER", "NOSUPERUSER", "INHERIT", "NOINHERIT", "CREATEROLE",
                     "NOCREATEROLE", "LOGIN", "NOLOGIN", "REPLICATION", "NOREPLICATION",
                     "BYPASSRLS", "NOBYPASSRLS"]),
    min_size=1, max_size=8,
)  # fmt: skip
settings = st.sampled_from(
    ["statement_timeout", "search_path", "lock_timeout", "pgrst.db_schemas", "pgaudit.log",
     "session_replication_role", "track_io_timing", "session_preload_libraries"]
)  # fmt: skip
KEPT = {"statement_timeout", "pgrst.db_schemas", "pgaudit.log", "session_replication_role",
        "track_io_timing"}  # fmt: skip


def quote(name: str, quoted: bool) -> str:
    return f'"{name}"' if quoted else name


@given(reserved, st.booleans(), attrs)
def test_reserved_roles_are_never_created_or_altered(role, quoted, words):
    ident = quote(role, quoted)
    assert is_reserved(role)
    assert roles_statement(f"CREATE ROLE {ident};", frozenset()) is None
    stmt = f"ALTER ROLE {ident} WITH {' '.join(words)} PASSWORD 'SCRAM-SHA-256$x';"
    assert roles_statement(stmt, frozenset()) is None


@given(app_names, st.booleans(), attrs)
def test_app_roles_keep_everything_a_non_superuser_may_set(role, quoted, words):
    ident = quote(role, quoted)
    assert roles_statement(f"CREATE ROLE {ident};", frozenset()) == f"CREATE ROLE {ident};"
    kept = roles_statement(f"ALTER ROLE {ident} WITH {' '.join(words)};", frozenset())
    assert kept is not None
    assert not re.search(r"\bNO(SUPERUSER|REPLICATION|BYPASSRLS)\b", kept)
    others = [w for w in words if w not in ("NOSUPERUSER", "NOREPLICATION", "NOBYPASSRLS")]
    assert kept == f"ALTER ROLE {ident} WITH {' '.join(others)};".replace("WITH ;", "WITH;")


@given(st.one_of(reserved, app_names), settings, st.booleans())
def test_role_settings_of_reserved_roles_only_from_the_allowlist(role, setting, superuser):
    stmt = f"ALTER ROLE {role} SET {setting} TO '1';"
    kept = roles_statement(stmt, frozenset({role} if superuser else ()))
    if superuser:
        assert kept is None
    elif is_reserved(role):
        settable = role in ("anon", "authenticated", "authenticator", "service_role")
        assert (kept is not None) == (settable and setting in KEPT)
    else:
        assert kept == stmt


@given(st.one_of(reserved, app_names), st.one_of(reserved, app_names, names.map("pg_{}".format)),
       st.one_of(reserved, app_names))  # fmt: skip
def test_memberships_among_supabases_roles_go_and_grantors_are_dropped(member, role, grantor):
    kept = roles_statement(f"GRANT {role} TO {member} GRANTED BY {grantor};", frozenset())
    if is_reserved(member) and (is_reserved(role) or role.startswith("pg_")):
        assert kept is None
    else:
        assert kept == f"GRANT {role} TO {member};"


@given(app_names, st.sampled_from(["", " WITH INHERIT TRUE, SET FALSE"]))
def test_postgresql_16_admin_grants_to_the_login_role_are_left_to_create_role(role, more):
    admin = f"GRANT {role} TO postgres WITH ADMIN OPTION, INHERIT FALSE, SET FALSE GRANTED BY x;"
    assert roles_statement(admin, frozenset()) is None
    plain = f"GRANT {role} TO postgres{more} GRANTED BY supabase_admin;"
    assert roles_statement(plain, frozenset()) == f"GRANT {role} TO postgres{more};"
    other = f"GRANT {role} TO authenticator WITH ADMIN OPTION GRANTED BY postgres;"
    assert (
        roles_statement(other, frozenset()) == f"GRANT {role} TO authenticator WITH ADMIN OPTION;"
    )


def test_parameter_privileges_need_a_superuser_and_are_left_out():
    for stmt in ("GRANT SET ON PARAMETER session_replication_role TO postgres;",
                 "REVOKE ALL ON PARAMETER work_mem FROM PUBLIC;"):  # fmt: skip
        assert roles_statement(stmt, frozenset()) is None


def test_a_role_name_with_a_quote_does_not_start_a_string():
    dump = (
        b'CREATE ROLE "o\'brien";\nALTER ROLE "o\'brien" WITH NOSUPERUSER LOGIN;\n'
        b"-- it's a comment\nCREATE ROLE app;\n"
    )
    f = SupabaseRoles(frozenset())
    out = b"".join(f(c) for c in cut(dump, 5)) + f(b"")
    assert out == (
        b'CREATE ROLE "o\'brien";\nALTER ROLE "o\'brien" WITH LOGIN;\n'
        b"-- it's a comment\nCREATE ROLE app;\n"
    )


def test_the_roles_transform_handles_strings_across_lines_and_chunks():
    dump = (
        b"CREATE ROLE anon;\nCOMMENT ON ROLE anon IS 'two\nlines;';\n"
        b"CREATE ROLE app;\nCOMMENT ON ROLE app IS 'its\nown;';\n"
        b"GRANT SET ON PARAMETER session_replication_role TO postgres;\n"
    )
    for size in (1, 3, 7, len(dump)):
        f = SupabaseRoles(frozenset())
        out = b"".join(f(c) for c in cut(dump, size)) + f(b"")
        assert out == b"CREATE ROLE app;\nCOMMENT ON ROLE app IS 'its\nown;';\n", size


def test_the_roles_transform_keeps_role_names_across_lines_whole():
    """A role may be named with a newline: its statements span lines and must reach the
    restore whole, and a reserved name inside it must not be mistaken for a statement."""
    dump = (
        b'CREATE ROLE "line1\nline2";\nALTER ROLE "line1\nline2" WITH NOSUPERUSER LOGIN;\n'
        b'CREATE ROLE "x\nCREATE ROLE anon;\n";\nCREATE ROLE anon;\n'
    )
    for size in (1, 4, 9, len(dump)):
        f = SupabaseRoles(frozenset())
        out = b"".join(f(c) for c in cut(dump, size)) + f(b"")
        assert out == (
            b'CREATE ROLE "line1\nline2";\nALTER ROLE "line1\nline2" WITH LOGIN;\n'
            b'CREATE ROLE "x\nCREATE ROLE anon;\n";\n'
        ), size


# --- the entry filter ----------------------------------------------------------------------

entry_types = st.sampled_from(["TABLE", "FUNCTION", "TRIGGER", "POLICY", "ACL", "DEFAULT ACL"])
entries = st.lists(st.tuples(names, entry_types, names, names, st.booleans()), max_size=8)


def render(name: str, kind: str, schema: str, owner: str) -> bytes:
    return (
        f"--\n-- Name: {name}; Type: {kind}; Schema: {schema}; Owner: {owner}\n--\n\n"
        f"CREATE {kind} {schema}.{name};\n--\n-- a comment inside\n--\nSET x = 1;\n\n\n"
    ).encode()


PREAMBLE = b"--\n-- PostgreSQL database dump\n--\n\n\\restrict k\nSET a = 1;\n\n"
END = b"--\n-- PostgreSQL database dump complete\n--\n\n\\unrestrict k\n\n"


@given(entries, st.integers(min_value=1, max_value=200))
def test_the_entry_filter_keeps_exactly_the_chosen_entries_however_cut(items, size):
    dump = PREAMBLE + b"".join(render(*i[:4]) for i in items) + END
    chosen = {(n, k, s, o) for n, k, s, o, keep in items if keep}
    f = EntryFilter(lambda e: (e.name, e.type, e.schema, e.owner) in chosen)
    out = b"".join(f(c) for c in cut(dump, size)) + f(b"")
    want = PREAMBLE + b"".join(render(*i[:4]) for i in items if i[:4] in chosen) + END
    assert out == want


def test_edits_reach_only_the_lines_of_their_entries():
    dump = render("f()", "FUNCTION", "extensions", "postgres") + render(
        "g()", "FUNCTION", "public", "postgres"
    )
    f = EntryFilter(lambda e: True, edit_app_entry(SCOPE))
    out = f(dump) + f(b"")
    assert b"CREATE OR REPLACE FUNCTION extensions.f();" in out
    assert b"CREATE FUNCTION public.g();" in out
    ext = b"--\n-- Name: pgmq; Type: EXTENSION; Schema: -; Owner: -\n--\n\n"
    ext += b"CREATE EXTENSION IF NOT EXISTS pgmq WITH SCHEMA pgmq;\n"
    f = EntryFilter(lambda e: True, edit_app_entry(SCOPE))
    assert b"CREATE EXTENSION IF NOT EXISTS pgmq;\n" in f(ext) + f(b"")


def test_headers_parse_with_spaces_and_semicolons_in_names():
    e = parse_header(b"-- Name: objects Attachments 1; x; Type: POLICY; Schema: storage; Owner: s")
    assert e == Entry("objects Attachments 1; x", "POLICY", "storage", "s")
    assert parse_header(b"-- Name: x") is None


# --- what is whose -------------------------------------------------------------------------

SCOPE = SupabaseScope(
    managed=("auth", "storage", "extensions", "realtime"),
    data_schemas=("auth", "storage"),
    platform_roles={"postgres": {"superuser": False}, "supabase_admin": {"superuser": True},
                    "supabase_auth_admin": {"superuser": False}},
    app_entries=(("TRIGGER", "auth", "users on_signup"), ("POLICY", "storage", "objects p")),
    app_functions=(("extensions", "slug"),),
)  # fmt: skip


def test_app_entries_in_and_on_managed_schemas():
    keep = app_entry(SCOPE)
    assert keep(Entry("users on_signup", "TRIGGER", "auth", "supabase_auth_admin"))
    assert keep(Entry("objects p", "POLICY", "storage", "supabase_storage_admin"))
    assert not keep(Entry("users other", "TRIGGER", "auth", "supabase_auth_admin"))
    assert not keep(Entry("users", "TABLE", "auth", "supabase_auth_admin"))
    assert keep(Entry("slug(text)", "FUNCTION", "extensions", "postgres"))
    assert keep(Entry("FUNCTION slug(value text)", "ACL", "extensions", "postgres"))
    assert not keep(Entry("grant_pg_cron_access()", "FUNCTION", "extensions", "postgres"))
    assert not keep(Entry("pgrst_watch()", "FUNCTION", "extensions", "supabase_admin"))
    assert not keep(Entry("auth", "SCHEMA", "-", "supabase_admin"))
    assert not keep(Entry("SCHEMA auth", "ACL", "-", "supabase_admin"))
    assert keep(Entry("SCHEMA public", "ACL", "-", "pg_database_owner"))
    assert not keep(
        Entry("DEFAULT PRIVILEGES FOR TABLES", "DEFAULT ACL", "public", "supabase_admin")
    )
    assert keep(Entry("DEFAULT PRIVILEGES FOR TABLES", "DEFAULT ACL", "public", "postgres"))
    assert not keep(Entry("watch", "EVENT TRIGGER", "-", "supabase_admin"))
    assert not keep(Entry("supabase_realtime", "PUBLICATION", "-", "postgres"))
    assert keep(Entry("supabase_realtime tasks", "PUBLICATION TABLE", "public", "postgres"))
    assert keep(Entry("citext", "EXTENSION", "-", "-"))
    assert not keep(Entry("EXTENSION citext", "COMMENT", "-", ""))
    assert keep(Entry("sales", "TABLE", "public", "postgres"))


def test_the_data_selection_leaves_out_other_managed_schemas_and_bookkeeping():
    args = data_args(SCOPE)
    assert '--exclude-schema="extensions"' in args and '--exclude-schema="realtime"' in args
    assert '--exclude-table-data="auth"."schema_migrations"' in args
    assert '--exclude-table-data="storage"."migrations"' in args
    assert not [a for a in args if '"auth"' in a and "exclude-schema" in a]


@given(st.lists(names, max_size=5), st.lists(names, max_size=3))
def test_a_plan_survives_the_manifest(managed, data):
    scope = SupabaseScope(
        managed=tuple(managed), data_schemas=tuple(data), platform_roles={"anon": {"login": False}},
        memberships=(("anon", "authenticator"),), extensions={"citext": "extensions"},
    )  # fmt: skip
    plan = Plan("supabase", scope)
    prefix = "backup-2026-01-31-120000"
    files = {
        k: {"name": naming.file_name(prefix, k), "size": 1, "sha256": "0" * 64}
        for k in (*naming.SQL_KINDS, naming.PLATFORM)
    }
    written = manifest(prefix, files=files, **plan.manifest())
    assert Plan.from_manifest(Manifest.model_validate(written.to_json())) == plan
    assert Plan.from_manifest(manifest(prefix)) == Plan()


@given(st.lists(st.integers(0, 300)))
def test_chained_transforms_flush_only_at_the_end(cuts):
    src = (b"CREATE ROLE anon;\nALTER ROLE anon WITH NOLOGIN;\n"
           b"CREATE ROLE app;\nALTER ROLE app WITH NOSUPERUSER LOGIN;\n")  # fmt: skip
    both = Plan("supabase", SCOPE).roles_transform()
    out, pos = b"", 0
    for c in sorted(set(c % (len(src) + 1) for c in cuts)):
        out += both(src[pos:c])
        pos = c
    out += both(src[pos:]) + both(b"")
    assert out == (
        b"DO $pgvault$ BEGIN CREATE ROLE app; EXCEPTION WHEN duplicate_object THEN NULL; "
        b"END $pgvault$;\nALTER ROLE app WITH LOGIN;\n"
    )
