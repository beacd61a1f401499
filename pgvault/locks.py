"""Table locks held by other sessions: what a backup or restore that gave up waiting for
one names, so the user knows which session to look at."""

from __future__ import annotations

from typing import Any

import psycopg

from pgvault.connection import Conn, connect
from pgvault.errors import PgvaultError

# A dump needs ACCESS SHARE, which only ACCESS EXCLUSIVE blocks; a restore replaces
# tables and so waits for any lock another session holds on them.
DUMP_BLOCKERS = ("AccessExclusiveLock",)


def milliseconds(seconds: float) -> int:
    return max(1, round(seconds * 1000))


def holders(pg: psycopg.Connection[Any], modes: tuple[str, ...] | None = None) -> list[str]:
    """Tables of the connected database that other sessions hold locks on (in one of
    modes; None: any), as "schema.table (pid N)"."""
    rows = pg.execute(
        "SELECT DISTINCT pg_catalog.format('%%I.%%I', n.nspname, c.relname), l.pid"
        " FROM pg_catalog.pg_locks l JOIN pg_catalog.pg_class c ON c.oid = l.relation"
        " JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace"
        " WHERE l.locktype = 'relation' AND l.granted AND l.pid <> pg_catalog.pg_backend_pid()"
        " AND l.database = (SELECT oid FROM pg_catalog.pg_database"
        "                   WHERE datname = pg_catalog.current_database())"
        " AND c.relnamespace <> 'pg_catalog'::regnamespace"
        " AND (%(modes)s::text[] IS NULL OR l.mode = ANY(%(modes)s::text[]))"
        " ORDER BY 1, 2",
        {"modes": list(modes) if modes is not None else None},
    ).fetchall()
    return [f"{name} (pid {pid})" for name, pid in rows]


def held_by_others(conn: Conn, modes: tuple[str, ...] | None = None) -> list[str]:
    """holders() on a new connection; [] when even that fails (the lock may be gone)."""
    try:
        with connect(conn, autocommit=True) as pg:
            return holders(pg, modes)
    except (PgvaultError, psycopg.Error):
        return []


def gave_up(what: str, seconds: float, tables: list[str], option: str) -> PgvaultError:
    """The one line for a run that stopped waiting for a table lock."""
    which = ", ".join(tables[:3]) + (" …" if len(tables) > 3 else "") if tables else "a table"
    return PgvaultError(
        f"{what} gave up after waiting {seconds:g} s for {which}, locked by another session",
        f"end that session's transaction and run it again, or raise {option}",
    )


def is_lock_timeout(text: str) -> bool:
    # pg_dump waits with statement_timeout set around its LOCK TABLE, and clears it for
    # everything else it runs: a statement timeout there is the lock wait.
    return "lock timeout" in text or ("pg_dump" in text and "statement timeout" in text)
