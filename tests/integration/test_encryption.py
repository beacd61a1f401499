"""age encryption at rest through the real CLI and real clusters: an encrypted set holds
no plain SQL, lists and checks without a key, restores and verifies with it; a missing or
wrong key and a damaged ciphertext get one line and leave the target as it was; a bad
recipient writes nothing."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
from pyrage import x25519

from pgvault.connection import Conn
from tests.conftest import (
    create_database,
    drop_database,
    one_line_error,
    pgvault_env,
    run_pgvault,
    run_sql,
)
from tests.fidelity import fingerprint

EXIT_MISMATCH = 3
SECRET_ROW = "a secret note that must not be readable on disk"


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> dict[str, str]:
    """Key files (0600) of two identities: "right" is the set's recipient, "wrong" not."""
    directory = tmp_path_factory.mktemp("keys")
    out = {}
    for name in ("right", "wrong"):
        key = x25519.Identity.generate()
        path = directory / f"{name}.txt"
        path.write_text(f"# public key: {key.to_public()}\n{key}\n")
        path.chmod(0o600)
        out[name], out[f"{name}_public"] = str(path), str(key.to_public())
    return out


@pytest.fixture(scope="module")
def source(pg_cluster):
    name = create_database(pg_cluster, "enc")
    conn = pg_cluster.conn(name)
    run_sql(
        conn,
        "CREATE TABLE notes (id serial PRIMARY KEY, body text);"
        f"INSERT INTO notes (body) SELECT '{SECRET_ROW} ' || i FROM generate_series(1, 3000) i;"
        "CREATE INDEX notes_body_idx ON notes (body);",
    )
    yield conn
    drop_database(pg_cluster, name)


@pytest.fixture(scope="module")
def sealed(source, keys, tmp_path_factory) -> Path:
    """A directory holding one gzip-compressed set encrypted to the "right" key."""
    directory = tmp_path_factory.mktemp("enc") / "backups"
    res = run_pgvault(
        "backup", f"dir={directory}", "backup.compression=gzip",
        f"encryption.recipients=[{keys['right_public']}]", env=pgvault_env(source),
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    return directory


@pytest.fixture
def target(pg_cluster):
    """A database holding other data, which a refused restore must leave as it is."""
    name = create_database(pg_cluster, "enctarget")
    conn = pg_cluster.conn(name)
    run_sql(conn, "CREATE TABLE keep (v int); INSERT INTO keep VALUES (1), (2);")
    yield conn
    drop_database(pg_cluster, name)


def restore(conn: Conn, directory: Path, *args: str):
    return run_pgvault(
        "restore", f"dir={directory}", "prefix=latest", "yes=true", *args,
        env=pgvault_env(conn),
    )  # fmt: skip


def manifest(directory: Path) -> dict:
    (path,) = directory.glob("backup-*-manifest.json")
    return json.loads(path.read_text())


def data_file(directory: Path) -> Path:
    (path,) = directory.glob("backup-*-data.sql.gz.age")
    return path


def test_round_trip(sealed, source, keys, target, tmp, tmp_path):
    m = manifest(sealed)
    assert m["encryption"] == {"method": "age", "recipients": [keys["right_public"]]}
    names = sorted(p.name for p in sealed.iterdir() if p.name.startswith("backup-"))
    assert [n.rsplit("-", 1)[1] for n in names] == [
        "data.sql.gz.age", "manifest.json", "roles.sql.age", "schema.sql.age",
    ]  # fmt: skip
    for kind, entry in m["files"].items():
        on_disk = (sealed / entry["name"]).read_bytes()
        assert on_disk.startswith(b"age-encryption.org/v1\n"), kind
        assert entry["sha256"] == hashlib.sha256(on_disk).hexdigest()  # of the ciphertext
        for plain in (b"CREATE TABLE", b"COPY ", SECRET_ROW.encode(), b"notes"):
            assert plain not in on_disk
    assert m["tables"]["public.notes"]["rows"] == 3000  # counted from the plain stream

    # Listed and checked without any key.
    res = run_pgvault("list", f"dir={sealed}", "check=true", env=pgvault_env())
    assert res.returncode == 0, res.stderr
    assert "gzip+age" in res.stdout and "complete" in res.stdout
    res = run_pgvault("list", f"dir={sealed}", "format=json", env=pgvault_env())
    assert json.loads(res.stdout)["sets"][0]["encryption"] == "age"
    res = run_pgvault("show", f"dir={sealed}", "prefix=latest", env=pgvault_env(source))
    assert f"encryption: age, to {keys['right_public']}" in res.stdout, res.stderr

    # Restored with the key: the target holds the source's data. The safety backup of
    # what it held is encrypted to the set's recipients.
    directory = tmp_path / "backups"
    shutil.copytree(sealed, directory)
    res = restore(target, directory, f"encryption.identity={keys['right']}")
    assert res.returncode == 0, res.stderr
    assert fingerprint(target, roles=False) == fingerprint(source, roles=False)
    (safety,) = (p for p in directory.glob("*-manifest.json") if p.name not in names)
    assert json.loads(safety.read_text())["encryption"]["recipients"] == [keys["right_public"]]

    res = run_pgvault(
        "verify", f"dir={sealed}", f"encryption.identity={keys['right']}",
        env=pgvault_env(source, TMPDIR=str(tmp)),
    )  # fmt: skip
    assert res.returncode == 0, res.stderr + res.stdout


def test_a_missing_or_wrong_key_changes_nothing(sealed, keys, target):
    before = fingerprint(target)
    sets_before = sorted(p.name for p in sealed.iterdir())
    res = restore(target, sealed)
    assert "the set is encrypted and encryption.identity is not set" in one_line_error(res)
    res = restore(target, sealed, f"encryption.identity={keys['wrong']}")
    line = one_line_error(res)
    assert f"no key in {keys['wrong']} opens backup-" in line
    assert f"a key of another recipient than {keys['right_public']}" in line
    assert "AGE-SECRET-KEY" not in res.stderr + res.stdout
    res = run_pgvault("verify", f"dir={sealed}", env=pgvault_env(target))
    assert "encryption.identity is not set" in one_line_error(res)
    assert fingerprint(target) == before
    assert sorted(p.name for p in sealed.iterdir()) == sets_before  # no safety backup


def test_a_damaged_ciphertext_is_caught(sealed, keys, target, tmp_path, tmp):
    directory = tmp_path / "backups"
    shutil.copytree(sealed, directory)
    for p in directory.glob("*-verify.json"):
        p.unlink()
    path = data_file(directory)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    before = fingerprint(target)
    key = f"encryption.identity={keys['right']}"

    res = run_pgvault("list", f"dir={directory}", "check=true", env=pgvault_env())
    assert "damaged" in res.stdout and "does not match its sha256" in res.stdout

    res = restore(target, directory, key)
    assert "is damaged: data.sql.gz.age does not match its sha256" in one_line_error(res)
    assert fingerprint(target) == before

    res = run_pgvault("verify", f"dir={directory}", key, env=pgvault_env(target, TMPDIR=str(tmp)))
    assert res.returncode == EXIT_MISMATCH, res.stderr
    record = json.loads(next(directory.glob("*-verify.json")).read_text())
    assert record["verdict"] == "failed"
    assert any("data.sql.gz.age does not match its sha256" in p for p in record["problems"])

    # With the checksums rewritten to match, decryption itself stops the restore mid-stream:
    # the transaction is rolled back.
    mpath = next(directory.glob("*-manifest.json"))
    m = json.loads(mpath.read_text())
    m["files"]["data"]["sha256"] = hashlib.sha256(bytes(data)).hexdigest()
    mpath.write_text(json.dumps(m))
    res = restore(target, directory, key, "restore.safety_backup=false")
    line = one_line_error(res)
    assert f"restore failed, {target.dbname} is unchanged" in line
    assert "data.sql.gz.age cannot be decrypted" in line
    assert fingerprint(target) == before


def test_a_bad_recipient_writes_nothing(source, keys, tmp_path):
    directory = tmp_path / "backups"
    res = run_pgvault(
        "backup", f"dir={directory}", f"encryption.recipients=[{keys['right_public']},age1nope]",
        env=pgvault_env(source),
    )  # fmt: skip
    assert res.returncode == 2
    assert "encryption.recipients: 'age1nope' is not an age public key" in one_line_error(res)
    assert not directory.exists()
