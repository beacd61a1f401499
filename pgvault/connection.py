"""Reaching a target database: a password-free conninfo, libpq's environment, and
psycopg connections whose failures become one clear line."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from pgvault import masking
from pgvault.config import Profile, TargetConfig
from pgvault.errors import ConfigError, DatabaseMissing, ServerError, one_line

SUPABASE_LOCAL_PORT = "54322"  # `supabase start`'s database
# Written for a URL: postgresql:// (or postgres://) and nothing else.
_URL_SHAPED = re.compile(r"\s*[A-Za-z][A-Za-z0-9+.-]*:/")
_POSTGRES_URL = re.compile(r"\s*postgres(?:ql)?://", re.IGNORECASE)
_ENCODE_HINT = (
    "percent-encode @ as %40, / as %2F, % as %25 and a space as %20 in the URL's user and password"
)

# Kept for the modules that mask through connection; the masking lives in pgvault.masking.
mask_secrets = masking.mask


@dataclass(frozen=True)
class Conn:
    """How to reach one database without a password in any argv.

    conninfo is safe to show and to pass to client programs; the password travels in
    env (PGPASSWORD) only.
    """

    conninfo: str
    password: str | None = None
    extra_env: Mapping[str, str] = field(default_factory=dict)
    # A Supabase target: a server that is down is Supabase's that is not started.
    supabase: bool = False

    @property
    def params(self) -> dict[str, str]:
        return {k: str(v) for k, v in conninfo_to_dict(self.conninfo).items()}

    def env(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """Return the environment for a client program talking to this database."""
        env = dict(os.environ if base is None else base)
        env.update(self.extra_env)
        env.setdefault("PGAPPNAME", "pgvault")
        if self.password is not None:
            env["PGPASSWORD"] = self.password
        return env

    def with_dbname(self, dbname: str) -> Conn:
        params = self.params
        params["dbname"] = dbname
        return Conn(make_conninfo(**params), self.password, self.extra_env, self.supabase)

    @property
    def dbname(self) -> str:
        return self.params.get("dbname") or os.environ.get("PGDATABASE") or self.user

    @property
    def user(self) -> str:
        import getpass

        return self.params.get("user") or os.environ.get("PGUSER") or getpass.getuser()

    @property
    def where(self) -> str:
        """host:port for messages, after libpq's defaults."""
        host = self.params.get("host") or os.environ.get("PGHOST") or "/var/run/postgresql"
        port = self.params.get("port") or os.environ.get("PGPORT") or "5432"
        return f"{host}:{port}"


def _loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def needs_ssl(conn: Conn) -> bool:
    """Whether the client programs for conn must be able to use SSL: sslmode asks for it,
    or (libpq's default, prefer) the server is not on this machine, where programs built
    without SSL (the embedded ones) would send everything unencrypted."""
    p = conn.params
    mode = p.get("sslmode") or os.environ.get("PGSSLMODE") or "prefer"
    if mode in ("disable", "allow"):
        return False
    if mode != "prefer":
        return True
    hosts = p.get("hostaddr") or p.get("host") or os.environ.get("PGHOST") or ""
    return any(h and not h.startswith(("/", "@")) and not _loopback(h) for h in hosts.split(","))


def conn_for_target(target: TargetConfig) -> Conn:
    """Given a target, return its Conn: target.url, else DATABASE_URL, else libpq's env."""
    url = target.url or os.environ.get("DATABASE_URL") or ""
    conn = conn_from_url(url, what=f"target '{target.name}'")
    if target.profile is Profile.supabase or conn.params.get("port") == SUPABASE_LOCAL_PORT:
        conn = replace(conn, supabase=True)
    return conn


def conn_from_url(url: str, what: str = "database URL") -> Conn:
    """Given a URL or key=value conninfo, return its Conn; ConfigError (one line, the
    password masked however malformed the URL) when libpq could misread it."""
    masking.remember_in(url)  # before any message can quote it
    url_shaped = _URL_SHAPED.match(url) is not None
    if url_shaped and not _POSTGRES_URL.match(url):
        raise ConfigError(
            f"{what} does not start with postgresql:// (nor postgres://)",
            "write postgresql://user@host:port/dbname",
        )
    try:
        params = conninfo_to_dict(url)
    except psycopg.ProgrammingError as e:
        raise _unreadable(what, url, str(e)) from None
    except UnicodeDecodeError:  # a %-escape of a byte that is no UTF-8 (%a0)
        raise ConfigError(f"{what} holds a %-escape that is not UTF-8", _ENCODE_HINT) from None
    password = params.pop("password", None)
    masking.remember(None if password is None else str(password))
    if url_shaped and (
        "@" in str(params.get("host") or "")
        or "@" in str(params.get("dbname") or "")
        or not re.fullmatch(r"[\d,]*", str(params.get("port") or ""))
    ):
        # libpq ends the password at the first @ or /: the rest became host or port.
        raise ConfigError(
            f"{what} has an @ or / in its user or password, or a port that is not a number",
            _ENCODE_HINT,
        )
    if params.get("sslpassword"):
        raise ConfigError(
            f"{what} carries an sslpassword, which would show in `ps` as a program argument",
            "leave it out of the URL and put it in a service file (PGSERVICEFILE)",
        )
    rest = {k: str(v) for k, v in params.items() if v is not None}
    return Conn(make_conninfo(**rest), None if password is None else str(password))


def _unreadable(what: str, url: str, message: str) -> ConfigError:
    """libpq's complaint about a connection string, in our words where libpq would quote
    the password; else on one line, masked, and without the fragments libpq quotes when
    the string holds a password (`missing "=" after "ss"` may be the end of one)."""
    if "unexpected spaces" in message:
        return ConfigError(f"{what} holds a space", _ENCODE_HINT)
    if "percent-encoded" in message:
        return ConfigError(f"{what} holds a % that is not a %-escape", _ENCODE_HINT)
    if masking.password_spans(url):
        message = re.sub(r'"([^"]*)"', lambda m: '"="' if m[1] == "=" else '"…"', message)
    return ConfigError(
        f"{what} is not a valid connection string: {masking.mask(one_line(message))}",
        "use postgresql://user@host:port/dbname",
    )


def connect(conn: Conn, *, autocommit: bool = False) -> psycopg.Connection[tuple[object, ...]]:
    """Open a psycopg connection, turning libpq's failures into ServerError."""
    kwargs: dict[str, object] = {"autocommit": autocommit, "application_name": "pgvault"}
    if conn.password is not None:
        kwargs["password"] = conn.password
    try:
        return psycopg.connect(conn.conninfo, **kwargs)  # type: ignore[arg-type]
    except psycopg.OperationalError as e:
        raise explain_connect_error(conn, str(e)) from None


def explain_connect_error(conn: Conn, message: str) -> ServerError:
    """Turn a libpq connection error text into a one-line ServerError with a hint."""
    msg = mask_secrets(message.strip())
    first = msg.splitlines()[0] if msg else "connection failed"
    if "password authentication failed" in msg or "no password supplied" in msg:
        return ServerError(
            f"authentication failed for user '{conn.user}' at {conn.where}",
            "check the password in PGPASSWORD, ~/.pgpass or the target URL",
        )
    if re.search(r'database ".*" does not exist', msg):  # the name may hold a "
        return DatabaseMissing(
            f"database '{conn.dbname}' does not exist on {conn.where}",
            "create it or pick another with target.url=... / PGDATABASE",
        )
    if re.search(r'role ".*" does not exist', msg):
        return ServerError(
            f"role '{conn.user}' does not exist on {conn.where}",
            "connect as an existing role (PGUSER or the user in target.url)",
        )
    if (
        "Connection refused" in msg
        or "No such file or directory" in msg
        or "could not connect" in msg
        or "timeout expired" in msg
    ):
        if conn.supabase:
            return ServerError(
                f"Supabase does not appear to be running at {conn.where}",
                "start it with `supabase start`",
            )
        return ServerError(
            f"PostgreSQL does not appear to be running at {conn.where}",
            "start it, e.g. `supabase start` or `pg_ctlcluster 15 main start`, "
            "or point target.url / PGHOST / PGPORT at a running server",
        )
    return ServerError(f"cannot connect to {conn.where}: {first}", "check the target settings")
