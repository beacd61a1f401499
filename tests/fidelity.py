"""An independent fingerprint of a database, read with SQL (never with pg_dump), so two
databases can be compared in full: rows, sequences, large objects, matviews, roles,
grants, comments, policies, triggers, indexes and constraints."""

from __future__ import annotations

from typing import Any

from pgvault.connection import Conn, connect

_USER_NS = """n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')
    AND n.nspname !~ '^pg_temp_' AND n.nspname !~ '^pg_toast_temp_'"""

QUERIES: dict[str, str] = {
    "schemas": f"""SELECT n.nspname, r.rolname, coalesce(n.nspacl::text, '')
        FROM pg_namespace n JOIN pg_roles r ON r.oid = n.nspowner WHERE {_USER_NS}""",
    "relations": f"""SELECT format('%I.%I', n.nspname, c.relname), c.relkind, r.rolname,
            coalesce(c.relacl::text, ''), c.relrowsecurity, c.relispartition
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        JOIN pg_roles r ON r.oid = c.relowner
        WHERE {_USER_NS} AND c.relkind IN ('r','p','v','m','S','i','I','f')""",
    "columns": f"""SELECT format('%I.%I', n.nspname, c.relname), a.attname,
            format_type(a.atttypid, a.atttypmod), a.attnotnull, a.attidentity, a.attgenerated,
            coalesce(pg_get_expr(d.adbin, d.adrelid), ''), coalesce(a.attacl::text, '')
        FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace
        LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
        WHERE {_USER_NS} AND a.attnum > 0 AND NOT a.attisdropped
            AND c.relkind IN ('r','p','v','m','f')""",
    "constraints": f"""SELECT format('%I.%I', n.nspname, c.relname), k.conname,
            pg_get_constraintdef(k.oid)
        FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace WHERE {_USER_NS}""",
    "indexes": f"""SELECT format('%I.%I', n.nspname, c.relname), pg_get_indexdef(i.indexrelid)
        FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace WHERE {_USER_NS}""",
    "triggers": """SELECT tgrelid::regclass::text, tgname, pg_get_triggerdef(oid), tgenabled
        FROM pg_trigger WHERE NOT tgisinternal""",
    "policies": """SELECT schemaname, tablename, policyname, cmd, roles::text,
            coalesce(qual, ''), coalesce(with_check, '') FROM pg_policies""",
    "types": f"""SELECT format('%I.%I', n.nspname, t.typname), t.typtype,
            coalesce(pg_get_constraintdef(k.oid), ''),
            coalesce((SELECT string_agg(e.enumlabel, ',' ORDER BY e.enumsortorder)
                      FROM pg_enum e WHERE e.enumtypid = t.oid), '')
        FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
        LEFT JOIN pg_constraint k ON k.contypid = t.oid
        WHERE {_USER_NS} AND t.typtype IN ('e','d')""",
    "functions": f"""SELECT format('%I.%I', n.nspname, p.proname), pg_get_functiondef(p.oid)
        FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
        LEFT JOIN pg_depend d ON d.objid = p.oid AND d.deptype = 'e'
        WHERE {_USER_NS} AND d.objid IS NULL""",
    "extensions": "SELECT extname, extversion FROM pg_extension",
    "comments": """SELECT pg_describe_object(classoid, objoid, objsubid), description
        FROM pg_description WHERE classoid <> 'pg_catalog.pg_proc'::regclass
            OR objoid >= 16384""",
    "shared_comments": """SELECT pg_describe_object(classoid, objoid, 0), description
        FROM pg_shdescription WHERE classoid = 'pg_authid'::regclass""",
    "sequences": """SELECT format('%I.%I', schemaname, sequencename), last_value,
            start_value, increment_by FROM pg_sequences""",
    "large_objects": """SELECT m.oid::bigint, r.rolname, md5(lo_get(m.oid)),
            coalesce(m.lomacl::text, '')
        FROM pg_largeobject_metadata m JOIN pg_roles r ON r.oid = m.lomowner""",
}

ROLE_QUERIES = {
    "roles": """SELECT rolname, rolsuper, rolinherit, rolcreaterole, rolcreatedb, rolcanlogin,
            rolreplication, rolbypassrls, rolconnlimit, coalesce(rolpassword, '')
        FROM pg_authid WHERE rolname !~ '^pg_'""",
    "memberships": """SELECT r.rolname, m.rolname, g.admin_option FROM pg_auth_members g
        JOIN pg_roles r ON r.oid = g.roleid JOIN pg_roles m ON m.oid = g.member""",
}


def _rows(cur: Any, sql: str) -> list[tuple[Any, ...]]:
    cur.execute(sql)
    return sorted(tuple(str(v) for v in row) for row in cur.fetchall())


def table_contents(conn: Conn) -> dict[str, tuple[int, str]]:
    """Every table's and matview's row count and an order-independent md5 of its rows."""
    out: dict[str, tuple[int, str]] = {}
    with connect(conn, autocommit=True) as pg:
        cur = pg.cursor()
        cur.execute(
            f"""SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c
            JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE {_USER_NS} AND c.relkind IN ('r', 'm')"""
        )
        for (name,) in cur.fetchall():
            cur.execute(
                f"SELECT count(*), coalesce(md5(string_agg(t::text, E'\\n' ORDER BY t::text)), '')"
                f" FROM {name} t"
            )
            count, digest = cur.fetchone()  # type: ignore[misc]
            out[name] = (int(count), str(digest))
    return out


def fingerprint(conn: Conn, *, roles: bool = True) -> dict[str, Any]:
    """The database's fingerprint; with roles=True also the cluster's roles."""
    fp: dict[str, Any] = {}
    with connect(conn, autocommit=True) as pg:
        cur = pg.cursor()
        for key, sql in QUERIES.items():
            fp[key] = _rows(cur, sql)
        if roles:
            for key, sql in ROLE_QUERIES.items():
                fp[key] = _rows(cur, sql)
    fp["tables"] = table_contents(conn)
    return fp


def diff(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """Human-readable differences between two fingerprints (empty when identical)."""
    out = []
    for key in sorted(set(a) | set(b)):
        if a.get(key) != b.get(key):
            av, bv = a.get(key), b.get(key)
            if isinstance(av, list) and isinstance(bv, list):
                only_a = [r for r in av if r not in bv][:5]
                only_b = [r for r in bv if r not in av][:5]
                out.append(f"{key}: only in first {only_a}; only in second {only_b}")
            elif isinstance(av, dict) and isinstance(bv, dict):
                keys = [k for k in set(av) | set(bv) if av.get(k) != bv.get(k)]
                out.append(f"{key}: differ in {sorted(keys)[:10]}")
            else:
                out.append(f"{key}: {av!r} != {bv!r}")
    return out
