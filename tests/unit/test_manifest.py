"""The manifest and verify-record models: what pgvault writes reads back equal, and
anything else is refused with one line (an IntegrityError for a manifest, None for a
verify record), never with another exception."""

from __future__ import annotations

import json
import tempfile
import typing
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from pgvault import catalog, manifest, naming
from pgvault.errors import IntegrityError
from pgvault.manifest import Manifest, VerifyRecord, read_manifest, read_verify_record
from pgvault.profiles import Plan
from pgvault.profiles.supabase import SupabaseScope

# What every manifest pgvault ever wrote holds (backup.py since its first release).
ALWAYS = ("format", "tool", "tool_version", "prefix", "target", "env", "database", "host",
          "server_version", "server_major", "clients", "snapshot", "started_at",
          "finished_at", "compression", "files", "schema_post_data_offset", "tables",
          "sequences", "roles", "matviews", "large_objects")  # fmt: skip
# Added to format 1 later (old manifests lack them), and the keys format 2 brought.
LATER = ("indexes", "constraints", "output_settings", "encoding", "role_passwords", "profile")
NEW_IN_2 = ("kind", "server", "data_raw_bytes")
TIMESTAMPS = ("started_at", "finished_at")

names = st.text(max_size=12)
sha256 = st.text("0123456789abcdef", min_size=64, max_size=64)
sizes = st.integers(0, 2**62)
offsets = st.integers(-1439, 1439).map(lambda m: timezone(timedelta(minutes=m)))
# Fixed offsets only: an aware datetime in a zone's DST gap never equals one elsewhere.
moments = st.datetimes(datetime(1971, 1, 1), datetime(2200, 1, 1), timezones=offsets)
pairs = st.tuples(names, names)
scopes = st.builds(
    SupabaseScope,
    managed=st.lists(names).map(tuple),
    data_schemas=st.lists(names).map(tuple),
    database_owner=names,
    platform_roles=st.dictionaries(names, st.dictionaries(names, st.booleans())),
    memberships=st.lists(pairs).map(tuple),
    app_entries=st.lists(st.tuples(names, names, names)).map(tuple),
    app_functions=st.lists(pairs).map(tuple),
    app_grants=st.lists(names).map(tuple),
    platform_tables=st.lists(names).map(tuple),
    extensions=st.dictionaries(names, names),
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)


@st.composite
def manifest_dicts(draw: st.DrawFn, fmt: int | None = None) -> dict[str, Any]:
    """A manifest as backup.py writes it (format 1: with any of the later keys left out)."""
    fmt = draw(st.sampled_from([1, 2])) if fmt is None else fmt
    prefix = naming.format_prefix(draw(moments))
    compression = draw(st.sampled_from(sorted(naming.COMPRESSION_SUFFIX)))
    scope = draw(st.none() | scopes)
    plan = Plan("supabase", scope) if scope is not None else Plan()
    kinds = naming.SQL_KINDS + ((naming.PLATFORM,) if scope is not None else ())
    files = {
        k: {"name": naming.file_name(prefix, k, compression), "size": draw(sizes),
            "sha256": draw(sha256)}
        for k in kinds
    }  # fmt: skip
    m: dict[str, Any] = {
        "format": fmt, "tool": "pgvault", "tool_version": draw(names), "prefix": prefix,
        "target": draw(names), "env": draw(names), "database": draw(names),
        "host": draw(names), "server_version": draw(names), "server_major": draw(sizes),
        "clients": {"bindir": draw(names), "version": draw(names)},
        "snapshot": {"id": draw(names), "time": draw(moments).isoformat()},
        "started_at": draw(moments).isoformat(), "finished_at": draw(moments).isoformat(),
        "compression": compression, "files": files,
        "schema_post_data_offset": draw(st.integers(0, files["schema"]["size"])),
        "tables": draw(st.dictionaries(names, st.fixed_dictionaries(
            {"rows": sizes, "sha256": sha256, "size": st.none() | sizes}))),
        "sequences": draw(st.dictionaries(names, st.none() | st.integers(-(2**63), 2**63 - 1))),
        "roles": draw(st.lists(names)), "matviews": draw(st.lists(names)),
        "large_objects": draw(sizes),
        "indexes": draw(st.lists(names)), "constraints": draw(st.lists(names)),
        "output_settings": draw(st.dictionaries(names, names)), "encoding": draw(names),
        "role_passwords": draw(st.booleans()), **plan.manifest(),
    }  # fmt: skip
    if fmt == 2:
        m["kind"] = draw(st.sampled_from(["regular", "safety"]))
        m["server"] = draw(st.none() | names)
        m["data_raw_bytes"] = draw(st.none() | sizes)
        if scope is None and draw(st.booleans()):
            m["supabase"] = None
    else:
        for key in LATER:
            if (scope is None or key != "profile") and draw(st.booleans()):
                del m[key]
    return m


@pytest.fixture(scope="module")
def folder() -> Iterator[Path]:
    with tempfile.TemporaryDirectory() as d:
        yield Path(d)


def write(folder: Path, data: Any, prefix: str = "backup-2026-01-02-030405") -> Path:
    path = folder / naming.file_name(prefix, "manifest")
    path.write_text(json.dumps(data))
    return path


def refused(path: Path) -> str:
    """read_manifest's one-line refusal of path (fails the test if it reads)."""
    with pytest.raises(IntegrityError) as info:
        read_manifest(path)
    what = info.value.what
    assert what.startswith(f"manifest {path.name} is ") and "\n" not in what
    return what


def comparable(m: dict[str, Any]) -> dict[str, Any]:
    """m with its times parsed, so the same moment written two ways compares equal."""
    out = json.loads(json.dumps(m))
    for key in TIMESTAMPS:
        out[key] = datetime.fromisoformat(out[key])
    out["snapshot"]["time"] = datetime.fromisoformat(out["snapshot"]["time"])
    return out


quick = settings(max_examples=60, deadline=None)
few = settings(max_examples=5, deadline=None)  # for tests run once per parameter


@quick
@given(m=manifest_dicts())
def test_what_backup_writes_reads_back_and_writes_back_equal(folder, m):
    path = folder / naming.file_name(m["prefix"], "manifest")
    catalog.write_json_atomic(path, m)
    read = read_manifest(path)
    out = read.to_json()
    assert {k: v for k, v in comparable(out).items() if k in m} == comparable(m)
    assert Manifest.model_validate(out) == read
    catalog.write_json_atomic(path, out)
    assert read_manifest(path) == read
    if read.supabase is not None:  # what restore and verify make of it
        scope = SupabaseScope.from_manifest(m["supabase"])
        assert SupabaseScope.from_manifest(read.supabase.to_json()) == scope
        assert SupabaseScope.from_manifest(read.supabase.model_dump()) == scope


@quick
@given(m=manifest_dicts(fmt=1))
def test_a_format_1_manifest_gets_the_defaults_of_what_it_lacks(folder, m):
    read = read_manifest(write(folder, m, m["prefix"]))
    assert (read.kind, read.server, read.data_raw_bytes) == ("regular", None, None)
    defaults = {"indexes": [], "constraints": [], "output_settings": {}, "encoding": "UTF8",
                "role_passwords": True, "profile": "plain"}  # fmt: skip
    for key, value in defaults.items():
        assert getattr(read, key) == m.get(key, value)


@few
@given(data=st.data())
@pytest.mark.parametrize("key", ALWAYS + LATER + NEW_IN_2)
def test_a_manifest_without_a_key_it_must_have_is_refused(folder, data, key):
    # Format 1 may lack the later keys (the test above); format 2 must have them all.
    m = data.draw(manifest_dicts(fmt=None if key in ALWAYS else 2))
    prefix = m.pop(key) if key == "prefix" else m["prefix"]
    m.pop(key, None)
    what = refused(write(folder, m, prefix))
    if key == "format":
        assert what.endswith("is not a pgvault manifest")
    else:
        assert key in what


CHANGES = [
    (("files", "schema", "size"), -1, "files.schema.size: Input should be greater than"),
    (("files", "data", "size"), "10", "files.data.size"),
    (("files", "roles", "sha256"), "0" * 63, "files.roles.sha256"),
    (("files", "roles", "sha256"), "A" * 64, "files.roles.sha256"),
    (("files", "roles", "extra"), 1, "files.roles.extra"),
    (("files", "wal"), {"name": "x", "size": 1, "sha256": "0" * 64}, "files.wal"),
    (("files", "data", "name"), "backup-2026-01-02-030405-data.sql.bz2", "files.data names"),
    (("files", "platform"), {"name": "platform.sql", "size": 1, "sha256": "0" * 64},
     "files.platform names"),
    (("tables",), [], "tables"),
    (("tables", "public.t"), {"rows": True, "sha256": "0" * 64}, "tables.public.t.rows"),
    (("tables", "a\nb"), {"rows": -1, "sha256": "0" * 64}, "tables.a\\nb.rows"),
    (("large_objects",), 1.5, "large_objects"),
    (("role_passwords",), "yes", "role_passwords"),
    (("started_at",), 0, "started_at: Input should be"),
    (("started_at",), "2026-01-02T03:04:05", "started_at"),  # no offset: not a moment
    (("snapshot", "time"), "yesterday", "snapshot.time"),
    (("sequences", "s"), "5", "sequences.s"),
    (("compression",), "lz4", "compression"),
    (("compression",), None, "compression"),
    (("tool",), "pgdump", "tool"),
    (("kind",), "nightly", "kind"),
    (("profile",), "auto", "profile"),
    (("supabase",), {}, "supabase"),
    (("unknown",), 1, "unknown"),
    (("format",), 3, "written by a newer pgvault"),
    (("format",), 0, "is not a pgvault manifest"),
    (("format",), True, "is not a pgvault manifest"),
    (("format",), "1", "is not a pgvault manifest"),
    (("prefix",), "yesterday", "prefix"),
]  # fmt: skip
# What the schema cannot say: names that go with the prefix, and times (a JSON Schema
# validator checks "format": "date-time" only when asked to).
MODEL_ONLY = {"files.data names", "files.platform names", "started_at", "snapshot.time"}


@few
@given(m=manifest_dicts(fmt=2))
@pytest.mark.parametrize(("where", "value", "said"), CHANGES)
def test_a_manifest_with_an_odd_value_is_refused_saying_where(folder, where, value, said, m):
    node = m
    for step in where[:-1]:
        node = node[step]
    node[where[-1]] = value
    assert said in refused(write(folder, m, m["prefix"]))


@quick
@given(m=manifest_dicts(), data=st.data())
def test_a_manifest_is_refused_by_a_file_that_another_prefix_names(folder, m, data):
    other = naming.format_prefix(data.draw(moments))
    if other != m["prefix"]:
        assert refused(write(folder, m, other)).endswith(f"it belongs to {m['prefix']!r}")


@quick
@given(m=manifest_dicts(), extra=st.integers(1, 2**40))
def test_a_post_data_offset_beyond_the_schema_file_is_refused(folder, m, extra):
    m["schema_post_data_offset"] = m["files"]["schema"]["size"] + extra
    assert "schema_post_data_offset" in refused(write(folder, m, m["prefix"]))


@quick
@given(m=manifest_dicts())
def test_a_supabase_scope_goes_with_the_supabase_profile_only(folder, m):
    if m.get("profile") == "supabase":
        del m["supabase"]
    else:
        m["supabase"] = SupabaseScope(("auth",), ("auth",)).to_manifest()
    assert "supabase" in refused(write(folder, m, m["prefix"]))


@quick
@given(value=json_values)
def test_any_other_json_is_refused_in_one_line(folder, value):
    refused(write(folder, value))


@quick
@given(m=manifest_dicts(), data=st.data())
def test_any_value_anywhere_is_read_or_refused_never_a_crash(folder, m, data):
    node, key = m, data.draw(st.sampled_from(sorted(m)))
    while isinstance(node[key], dict) and node[key] and data.draw(st.booleans()):
        node, key = node[key], data.draw(st.sampled_from(sorted(node[key])))
    prefix = m["prefix"]
    node[key] = data.draw(json_values)
    path = write(folder, m, prefix)
    try:
        read_manifest(path)
    except IntegrityError:
        refused(path)


@pytest.mark.parametrize(
    "content",
    [b"\xff\xfe{}", b'{"format": 1', b"", b"[" * 100_000, b'{"format": NaN}',
     '{"format": 1, "tool": "pgvault\u00e9"}'.encode("latin-1")],
)  # fmt: skip
def test_bytes_that_are_not_json_are_unreadable(folder, content):
    path = folder / naming.file_name("backup-2026-01-02-030405", "manifest")
    path.write_bytes(content)
    assert "is unreadable: " in refused(path)


def test_a_missing_manifest_is_unreadable(folder):
    assert "is unreadable: " in refused(folder / "backup-2026-01-02-030406-manifest.json")


@pytest.mark.parametrize(
    ("version", "major"),
    [("17.2", 17), ("16.4 (Debian 16.4-1.pgdg120+1)", 16), ("9.6.24", 9), ("", 0), ("x", 0)],
)
@few
@given(m=manifest_dicts())
def test_dump_version_and_major(version, major, m):
    m["clients"]["version"] = version
    read = Manifest.model_validate(m)
    assert read.dump_version == (version or "0") and read.dump_major == major


def test_the_compressions_are_those_naming_knows():
    assert set(typing.get_args(manifest.Compression)) == set(naming.COMPRESSION_SUFFIX)


# -- Verify records -----------------------------------------------------------------

records = st.fixed_dictionaries(
    {"verdict": st.sampled_from(["verified", "failed"]),
     "checked_at": moments.map(datetime.isoformat),
     "duration_s": st.floats(0, 1e6).map(lambda f: round(f, 3)),
     "server_version": names, "tables": sizes, "rows": sizes, "problems": st.lists(names)},
    optional={"not_checked": st.lists(names)},
)  # fmt: skip


@quick
@given(record=records)
def test_a_verify_record_reads_back_and_writes_back_equal(folder, record):
    path = folder / naming.file_name("backup-2026-01-02-030405", "verify")
    catalog.write_json_atomic(path, record)
    read = read_verify_record(path)
    assert read is not None
    assert read.verdict == record["verdict"] and read.rows == record["rows"]
    assert read.not_checked == record.get("not_checked", [])
    assert read.checked_at == datetime.fromisoformat(record["checked_at"])
    catalog.write_json_atomic(path, read.to_json())
    assert read_verify_record(path) == read == VerifyRecord.model_validate(read.to_json())


@quick
@given(value=json_values | records.flatmap(
    lambda r: st.sampled_from(sorted(r)).flatmap(
        lambda k: json_values.map(lambda v: {**r, k: v}))))  # fmt: skip
def test_a_garbled_verify_record_is_none_never_a_crash(folder, value):
    path = folder / naming.file_name("backup-2026-01-02-030405", "verify")
    path.write_text(json.dumps(value))
    read = read_verify_record(path)
    assert read is None or read == VerifyRecord.model_validate(value)


@pytest.mark.parametrize(
    "content",
    [None, b"\xff", b'{"verdict": "verified"}', b'{"verdict": "maybe"}', b"[]",
     b'{"verdict": "verified", "checked_at": "2026-01-02T03:04:05+00:00", "duration_s": NaN,'
     b' "server_version": "17", "tables": 0, "rows": 0, "problems": []}'],
)  # fmt: skip
def test_an_unusable_verify_record_is_none(folder, content):
    path = folder / "backup-2026-01-02-030407-verify.json"
    path.unlink(missing_ok=True)
    if content is not None:
        path.write_bytes(content)
    assert read_verify_record(path) is None


# -- JSON Schemas ------------------------------------------------------------------


@pytest.fixture(scope="module")
def schemas() -> dict[str, Draft202012Validator]:
    out = {}
    for name, schema in manifest.json_schemas().items():
        Draft202012Validator.check_schema(schema)
        assert schema["$id"] == f"https://pgvault.dev/schemas/{name}.schema.json"
        assert schema["title"]
        out[name] = Draft202012Validator(schema)
    return out


@quick
@given(m=manifest_dicts(), record=records)
def test_what_pgvault_writes_fits_its_schemas(schemas, m, record):
    schemas["manifest"].validate(Manifest.model_validate(m).to_json())
    schemas["verify-record"].validate(VerifyRecord.model_validate(record).to_json())


@few
@given(m=manifest_dicts(fmt=2))
@pytest.mark.parametrize(("where", "value", "said"), [c for c in CHANGES if c[2] not in MODEL_ONLY])
def test_the_schema_refuses_odd_values_too(schemas, m, where, value, said):
    out = Manifest.model_validate(m).to_json()
    node = out
    for step in where[:-1]:
        node = node.setdefault(step, {})
    node[where[-1]] = value
    assert not schemas["manifest"].is_valid(out)
