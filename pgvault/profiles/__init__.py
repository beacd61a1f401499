"""What differs per kind of database: which of its parts a backup takes, and how a restore
replaces them. `plain` takes everything (the restore needs a superuser); `supabase` takes
what the app owns, as Supabase's non-superuser `postgres` can restore it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psycopg

from pgvault.config import Profile
from pgvault.dumpfilter import Entry, EntryFilter, chain
from pgvault.dumpstream import RolesRewriter
from pgvault.errors import ConfigError
from pgvault.manifest import Manifest
from pgvault.profiles import supabase
from pgvault.profiles.supabase_roles import SupabaseRoles

Transform = Callable[[bytes], bytes]


@dataclass(frozen=True)
class Plan:
    """How one database is backed up and restored: the profile and what it decided.

    A backup makes it inside its snapshot; restore and verify read it back from the
    manifest, so all three draw the line between app and platform in the same place."""

    profile: str = Profile.plain.value
    scope: supabase.SupabaseScope | None = None

    @property
    def platform_schemas(self) -> tuple[str, ...]:
        return self.scope.managed if self.scope is not None else ()

    def roles_transform(self) -> Transform:
        if self.scope is None:
            return RolesRewriter()
        superusers = frozenset(r for r, a in self.scope.platform_roles.items() if a["superuser"])
        return chain(SupabaseRoles(superusers), RolesRewriter())

    def schema_transform(self) -> Transform | None:
        if self.scope is None:
            return None
        return EntryFilter(supabase.app_entry(self.scope), supabase.edit_app_entry(self.scope))

    def schema_prologue(self) -> bytes:
        return supabase.schema_prologue(self.scope) if self.scope is not None else b""

    def schema_trailer(self) -> bytes:
        return supabase.schema_trailer(self.scope) if self.scope is not None else b""

    def platform_transform(self) -> Transform:
        assert self.scope is not None
        return EntryFilter(supabase.platform_entry(self.scope))

    def data_args(self) -> list[str]:
        return supabase.data_args(self.scope) if self.scope is not None else []

    def wipe_sql(self) -> str | None:
        """The restore's wipe; None: the plain one (everything in the database)."""
        return supabase.wipe_sql(self.scope) if self.scope is not None else None

    def manifest(self) -> dict[str, Any]:
        out: dict[str, Any] = {"profile": self.profile}
        if self.scope is not None:
            out["supabase"] = self.scope.to_manifest()
        return out

    @classmethod
    def from_manifest(cls, m: Manifest) -> Plan:
        if m.profile == Profile.supabase.value:
            scope = m.supabase.model_dump() if m.supabase is not None else {}
            return cls(Profile.supabase.value, supabase.SupabaseScope.from_manifest(scope))
        return cls()


def choose(pg: psycopg.Connection[Any], configured: Profile, dbname: str) -> tuple[str, str]:
    """Return (profile, why) for the database pg is connected to; refuse a Supabase
    profile for a database that is not Supabase's."""
    looks_supabase = supabase.detect(pg)
    if configured is Profile.supabase and not looks_supabase:
        raise ConfigError(
            f"target.profile=supabase, but {dbname} is not a Supabase database "
            "(no supabase_admin role or Supabase-owned auth schema)",
            "point the target at Supabase's database, or use target.profile=auto",
        )
    if configured is not Profile.auto:
        return configured.value, "configured"
    if looks_supabase:
        return Profile.supabase.value, "detected: supabase_admin and a Supabase-owned auth schema"
    return Profile.plain.value, "detected: no Supabase roles and schemas"


def plan(pg: psycopg.Connection[Any], profile: str) -> Plan:
    """Given a connection inside the backup's snapshot, decide the plan for profile."""
    if profile == Profile.supabase.value:
        return Plan(profile, supabase.read_scope(pg))
    return Plan(profile)


def skip_entries(names: set[str]) -> Callable[[Entry], bool]:
    """keep() for EntryFilter that leaves out the CREATE EXTENSION of these extensions."""
    return lambda e: not (e.type == "EXTENSION" and e.name in names)


def has_platform_file(profile: str) -> bool:
    return profile == Profile.supabase.value
