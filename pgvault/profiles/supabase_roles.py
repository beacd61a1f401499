"""The Supabase profile's roles file: what of pg_dumpall --roles-only a restore as
Supabase's non-superuser `postgres` may run. Reserved roles are never created, altered or
given a password; of their settings only those Supabase lets postgres set are kept."""

from __future__ import annotations

import re

from pgvault.profiles.supabase import LOGIN_ROLE, is_reserved

# Role settings a restore as postgres may set (and Supabase lets it set) on its roles.
_KEPT_SETTING_RE = re.compile(
    r'"?(pgaudit\.[a-z_]+|pgrst\.[a-z_.]+|session_replication_role|statement_timeout'
    r'|track_io_timing)"?'
)
# The reserved roles whose settings Supabase lets postgres change (supautils marks them
# with a `*`): the API roles PostgREST switches to.
_SETTABLE_ROLES = frozenset({"anon", "authenticated", "authenticator", "service_role"})

_IDENT = r'(?:"(?:[^"]|"")*"|[^\s";]+)'
_ROLE_STMT = re.compile(rf"(CREATE ROLE|ALTER ROLE|COMMENT ON ROLE) ({_IDENT})(.*)", re.S)
_LABEL = re.compile(rf"SECURITY LABEL FOR {_IDENT} ON ROLE ({_IDENT}) ", re.S)
_MEMBERSHIP = re.compile(rf"GRANT ({_IDENT}) TO ({_IDENT})(.*?)(?: GRANTED BY {_IDENT})?;", re.S)
_SETTING = re.compile(rf" (?:IN DATABASE {_IDENT} )?(?:SET|RESET) ({_IDENT})")
_ADMIN = re.compile(r"\bADMIN (?:OPTION|TRUE)\b")
# PostgreSQL 15 lets only a superuser name these attributes at all, even to say "no".
_SUPERUSER_ATTRS = re.compile(r" (?:NOSUPERUSER|NOREPLICATION|NOBYPASSRLS)\b")


def _unquote(ident: str) -> str:
    return ident[1:-1].replace('""', '"') if ident.startswith('"') else ident


def roles_statement(stmt: str, superusers: frozenset[str]) -> str | None:
    """Given one statement of pg_dumpall --roles-only, return what a restore as postgres
    may run of it (None: nothing). Reserved roles are never created, altered or given a
    password; of their settings only those Supabase lets postgres set are kept."""
    if m := _ROLE_STMT.match(stmt):
        role = _unquote(m[2])
        setting = _SETTING.match(m[3]) if m[1] == "ALTER ROLE" else None
        if setting is not None:
            if role in superusers:
                return None
            if is_reserved(role) and not (
                role in _SETTABLE_ROLES and _KEPT_SETTING_RE.fullmatch(setting[1])
            ):
                return None
            return stmt
        if is_reserved(role):
            return None
        return _SUPERUSER_ATTRS.sub("", stmt) if m[1] == "ALTER ROLE" else stmt
    if m := _LABEL.match(stmt):
        return None if is_reserved(_unquote(m[1])) else stmt
    if m := _MEMBERSHIP.fullmatch(stmt):
        role, member = _unquote(m[1]), _unquote(m[2])
        if is_reserved(member) and (is_reserved(role) or role.startswith("pg_")):
            return None
        if member == LOGIN_ROLE and _ADMIN.search(m[3]):
            # PostgreSQL 16 gives a role's creator ADMIN on it by itself; granting it back
            # to one's own grantor is refused.
            return None
        # The grantor is whoever restores; naming another needs its privileges.
        return f"GRANT {m[1]} TO {m[2]}{m[3]};"
    if stmt.startswith(("GRANT ", "REVOKE ")) and " ON PARAMETER " in stmt:
        return None  # needs a superuser; Supabase grants its own
    return stmt


def _open_quote(text: str) -> bool:
    """Whether text ends inside a single-quoted string or a double-quoted name (a role
    may be named o'brien, or hold a newline)."""
    single = double = False
    for c in text:
        if c == "'" and not double:
            single = not single
        elif c == '"' and not single:
            double = not double
    return single or double


class SupabaseRoles:
    """Transform for pg_dumpall --roles-only output: keeps what roles_statement keeps.
    Statements are whole lines, but a quoted string may span lines."""

    def __init__(self, superusers: frozenset[str]) -> None:
        self.superusers = superusers
        self._carry = b""
        self._pending: list[str] = []

    def __call__(self, chunk: bytes) -> bytes:
        data = self._carry + chunk
        if chunk:
            end = data.rfind(b"\n") + 1
            self._carry = data[end:]
            data = data[:end]
        else:
            self._carry = b""
        out: list[str] = []
        for line in data.decode("utf-8").splitlines():
            self._pending.append(line)
            stmt = "\n".join(self._pending)
            comment = len(self._pending) == 1 and line.startswith("--")
            if chunk and not comment and _open_quote(stmt):
                continue  # a string or a quoted name goes on on the next line
            self._pending = []
            if stmt.startswith(("--", "\\")) or not stmt.strip():
                out.append(stmt)
                continue
            kept = roles_statement(stmt, self.superusers)
            if kept is not None:
                out.append(kept)
        if not out:
            return b""
        return ("\n".join(out) + ("\n" if chunk else "")).encode()
