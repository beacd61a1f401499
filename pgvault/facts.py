"""Facts about a database that a backup records in its manifest and verify checks after
a real restore: sequences, roles, populated materialized views, large objects, indexes
and constraints. Row counts and content checksums come from the COPY stream instead.
"""

from __future__ import annotations

from typing import Any

import psycopg

# Schemas a profile leaves to the platform are passed as %(skip)s.
_USER_NS = """n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')
    AND n.nspname !~ '^pg_(toast_)?temp_' AND NOT n.nspname = ANY(%(skip)s)"""

_SQL = {
    "sequences": """
        SELECT format('%I.%I', schemaname, sequencename), last_value
        FROM pg_catalog.pg_sequences ORDER BY 1""",
    "roles": """
        SELECT rolname FROM pg_catalog.pg_roles WHERE rolname !~ '^pg_' ORDER BY 1""",
    "indexes": f"""
        SELECT format('%%I.%%I', n.nspname, c.relname) FROM pg_catalog.pg_index i
        JOIN pg_catalog.pg_class c ON c.oid = i.indexrelid
        JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
        WHERE {_USER_NS} ORDER BY 1""",
    "constraints": f"""
        SELECT format('%%I.%%I.%%I', n.nspname, c.relname, k.conname)
        FROM pg_catalog.pg_constraint k JOIN pg_catalog.pg_class c ON c.oid = k.conrelid
        JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
        WHERE {_USER_NS} ORDER BY 1""",
}

Cursor = psycopg.Cursor[tuple[Any, ...]]

OUTPUT_SETTINGS = ("TimeZone", "bytea_output")


def pgoptions(settings: dict[str, str], base: str = "") -> str:
    """PGOPTIONS that give a libpq session these settings (after base, the user's own)."""
    options = [base] if base else []
    for name, value in settings.items():
        options.append(f"-c {name}=" + value.replace("\\", "\\\\").replace(" ", "\\ "))
    return " ".join(options)


def read_facts(
    pg: psycopg.Connection[tuple[Any, ...]], skip_schemas: tuple[str, ...] = ()
) -> dict[str, Any]:
    """Given a connection (inside the backup's snapshot, or to a restored database),
    return its facts as the manifest stores them; skip_schemas are the platform's."""
    cur = pg.cursor()
    skip = {"skip": list(skip_schemas)}
    facts: dict[str, Any] = {}
    cur.execute(_SQL["sequences"])
    # A sequence never used has no last_value; pg_dump then restores its start value.
    facts["sequences"] = {name: value for name, value in cur.fetchall()}
    for key in ("roles", "indexes", "constraints"):
        cur.execute(_SQL[key], skip if key != "roles" else None)
        facts[key] = [str(r[0]) for r in cur.fetchall()]
    facts["matviews"] = _populated_matviews(cur, skip)
    # Settings that shape COPY's text and that pg_dump leaves as the session has them
    # (it pins DateStyle, IntervalStyle and extra_float_digits itself): a re-dump for
    # verify must use the same, or a timestamptz reads differently in another time zone.
    cur.execute(
        "SELECT name, setting FROM pg_catalog.pg_settings WHERE name = ANY(%s) ORDER BY 1",
        (list(OUTPUT_SETTINGS),),
    )
    facts["output_settings"] = {str(k): str(v) for k, v in cur.fetchall()}
    cur.execute(
        "SELECT pg_catalog.pg_encoding_to_char(encoding) FROM pg_catalog.pg_database"
        " WHERE datname = pg_catalog.current_database()"
    )
    row = cur.fetchone()
    facts["encoding"] = str(row[0]) if row else "UTF8"
    cur.execute("SELECT count(*) FROM pg_catalog.pg_largeobject_metadata")
    row = cur.fetchone()
    facts["large_objects"] = int(row[0]) if row else 0
    return facts


def _populated_matviews(cur: Cursor, skip: dict[str, list[str]]) -> list[str]:
    """Populated materialized views, each after the ones it reads from."""
    cur.execute(
        """SELECT c.oid, format('%%I.%%I', n.nspname, c.relname) FROM pg_catalog.pg_class c
        JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
        WHERE c.relkind = 'm' AND c.relispopulated AND NOT n.nspname = ANY(%(skip)s)
        ORDER BY c.oid""",
        skip,
    )
    names = {int(oid): str(name) for oid, name in cur.fetchall()}
    cur.execute(
        """SELECT DISTINCT r.ev_class, d.refobjid FROM pg_catalog.pg_rewrite r
        JOIN pg_catalog.pg_depend d ON d.objid = r.oid
            AND d.classid = 'pg_catalog.pg_rewrite'::regclass
        WHERE r.ev_class <> d.refobjid"""
    )
    deps: dict[int, set[int]] = {oid: set() for oid in names}
    for view, ref in cur.fetchall():
        if int(view) in deps and int(ref) in names:
            deps[int(view)].add(int(ref))
    ordered: list[str] = []
    done: set[int] = set()

    def visit(oid: int, seen: frozenset[int]) -> None:
        if oid in done or oid in seen:
            return
        for ref in sorted(deps[oid]):
            visit(ref, seen | {oid})
        done.add(oid)
        ordered.append(names[oid])

    for oid in sorted(names):
        visit(oid, frozenset())
    return ordered
