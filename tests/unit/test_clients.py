"""Reading client programs' versions, and the exact argv they get (never a password)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from pgvault import clients
from pgvault.connection import conn_from_url, mask_secrets


def test_parse_version():
    assert clients.parse_version("pg_dump (PostgreSQL) 15.20 (Debian 15.20-0+deb12u1)") == (
        15,
        "15.20",
    )
    assert clients.parse_version("psql (PostgreSQL) 18beta1")[0] == 18


def test_argv_is_pinned_and_password_free():
    conn = conn_from_url("postgresql://crm:hunter2@db.example:6543/crm?sslmode=require")
    assert conn.password == "hunter2"
    assert "hunter2" not in conn.conninfo
    argv = [
        *clients.pg_dumpall_roles_args(conn.conninfo),
        *clients.pg_dump_schema_args(conn.conninfo, "00000003-1", "pre-data", 1000),
        *clients.pg_dump_data_args(conn.conninfo, "00000003-1", 1000),
    ]
    assert not any("hunter2" in a for a in argv)
    assert clients.pg_dump_data_args("dbname=crm", "S", 120000) == [
        "--data-only",
        "--snapshot=S",
        "--lock-wait-timeout=120000",
        "--no-password",
        "--dbname=dbname=crm",
    ]
    assert conn.env({})["PGPASSWORD"] == "hunter2"


# Passwords as they appear in URLs and conninfo: no raw whitespace (it would be %-encoded).
secrets = st.text(
    alphabet=st.characters(blacklist_characters="@'\\/:", blacklist_categories=("Z", "Cc", "Cs")),
    min_size=1,
    max_size=20,
)


@given(secrets)
def test_masking_hides_passwords(secret):
    cases = {
        f"postgresql://user:{secret}@host:5432/db": "postgresql://user:****@host:5432/db",
        f"host=x password={secret} dbname=y": "host=x password=**** dbname=y",
        f"  password: {secret}": "  password: ****",
    }
    for text, masked in cases.items():
        assert mask_secrets(text) == masked
