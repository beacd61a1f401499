"""A backup of a feature-rich database restores, with the plain psql command of Supabase's
guide, into an empty database of a fresh cluster and gives an identical database."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import (
    create_database,
    drop_database,
    pgvault_env,
    plain_psql_restore,
    run_pgvault,
)
from tests.fidelity import diff, fingerprint


def set_files(directory: Path) -> dict[str, Path]:
    files = {}
    for kind in ("roles", "schema", "data"):
        (match,) = directory.glob(f"backup-*-{kind}.sql")
        files[kind] = match
    return files


def test_feature_rich_round_trip_through_plain_psql(
    feature_db, other_cluster, server_programs, backup_dir
):
    res = run_pgvault("backup", f"dir={backup_dir}", env=pgvault_env(feature_db))
    assert res.returncode == 0, res.stderr
    files = set_files(backup_dir)

    target = create_database(other_cluster, "restored")
    try:
        conn = other_cluster.conn(target)
        # Twice into the same fresh cluster: the roles file tolerates roles that exist.
        plain_psql_restore(server_programs.path("psql"), conn.conninfo, files)
        second = create_database(other_cluster, "again")
        plain_psql_restore(server_programs.path("psql"), other_cluster.conn(second).conninfo, files)
        drop_database(other_cluster, second)

        source, restored = fingerprint(feature_db), fingerprint(conn)
        # The clusters differ in roles the test suite made; compare the backed-up ones.
        manifest = json.loads(next(backup_dir.glob("*-manifest.json")).read_text())
        for fp in (source, restored):
            fp["roles"] = [r for r in fp["roles"] if r[0] in manifest["roles"]]
            fp["memberships"] = [m for m in fp["memberships"] if m[0] in manifest["roles"]]
        assert diff(source, restored) == []
        # The audit trigger did not fire while data loaded: exactly the source's rows.
        assert restored["tables"]["audit.log"] == source["tables"]["audit.log"]
        assert restored["tables"]["crm.deal_totals"][0] > 0  # materialized view populated
        assert len(restored["large_objects"]) == 2
    finally:
        drop_database(other_cluster, target)
