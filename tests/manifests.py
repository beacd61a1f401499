"""Valid manifests to build test sets from (written by hand, checked by the model)."""

from __future__ import annotations

from typing import Any

from pgvault import naming
from pgvault.manifest import FORMAT, Manifest


def manifest_dict(
    prefix: str,
    compression: str = "none",
    *,
    files: dict[str, dict[str, Any]] | None = None,
    size: int = 10,
    **overrides: Any,
) -> dict[str, Any]:
    """The JSON object of a valid manifest for prefix; files default to size bytes each."""
    if files is None:
        files = {
            k: {"name": naming.file_name(prefix, k, compression), "size": size, "sha256": "0" * 64}
            for k in naming.SQL_KINDS
        }
    try:
        when = naming.parse_prefix(prefix).isoformat()
    except ValueError:  # a name with no valid date: the model checks the shape only
        when = "2024-01-01T00:00:00+00:00"
    m: dict[str, Any] = {
        "format": FORMAT, "tool": "pgvault", "tool_version": "0.1.0", "prefix": prefix,
        "target": "local", "env": "default", "database": "crm", "host": "test",
        "server": "127.0.0.1:5432", "server_version": "15.0", "server_major": 15,
        "clients": {"bindir": "/usr/lib/postgresql/15/bin", "version": "15.0"},
        "snapshot": {"id": "00000003-00000002-1", "time": when},
        "started_at": when, "finished_at": when, "compression": compression, "files": files,
        "schema_post_data_offset": 0, "tables": {}, "sequences": {}, "roles": [],
        "matviews": [], "large_objects": 0, "indexes": [], "constraints": [],
        "output_settings": {}, "encoding": "UTF8", "role_passwords": True, "profile": "plain",
        "kind": "regular", "data_raw_bytes": None,
    }  # fmt: skip
    m.update(overrides)
    return m


def manifest(prefix: str, compression: str = "none", **kw: Any) -> Manifest:
    return Manifest.model_validate(manifest_dict(prefix, compression, **kw))
