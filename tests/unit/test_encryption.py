"""age encryption at rest: recipients and key files checked up front, streaming encryption
and decryption through pipeline (chunk boundaries, slices by plain offset), and the one
line a wrong key, a missing key or a damaged file gets."""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pyrage import x25519

from pgvault import encryption, pipeline
from pgvault.errors import ConfigError, IntegrityError

KEY = x25519.Identity.generate()
OTHER = x25519.Identity.generate()


def key_file(tmp: Path, *keys: x25519.Identity, name: str = "key.txt") -> str:
    path = tmp / name
    lines = ["# created: by the test", "# public key: " + str(keys[0].to_public())]
    path.write_text("\n".join(lines + [str(k) for k in keys]) + "\n")
    path.chmod(0o600)
    return str(path)


def test_recipients_are_checked_and_the_bad_one_named():
    good = str(KEY.to_public())
    assert len(encryption.check_recipients([good, str(OTHER.to_public())])) == 2
    with pytest.raises(ConfigError) as e:
        encryption.check_recipients([good, "age1notakey"])
    assert "'age1notakey' is not an age public key" in e.value.line()
    assert "\n" not in e.value.line()
    with pytest.raises(ConfigError):  # a secret key is no recipient
        encryption.check_recipients([str(KEY)])


def test_key_files(tmp_path):
    assert len(encryption.load_identities(key_file(tmp_path, KEY, OTHER))) == 2
    with pytest.raises(ConfigError, match=r"encryption\.identity is not set"):
        encryption.load_identities(None)
    with pytest.raises(ConfigError, match=r"cannot read the age key file .*No such file"):
        encryption.load_identities(str(tmp_path / "nope"))
    (tmp_path / "comments").write_text("# nothing here\n\n")
    with pytest.raises(ConfigError, match="holds no key"):
        encryption.load_identities(str(tmp_path / "comments"))
    secret = str(KEY)
    (tmp_path / "bad").write_text(f"# ok\n{secret[:-3]}xyz\n")
    with pytest.raises(ConfigError, match="line 2 of the age key file") as e:
        encryption.load_identities(str(tmp_path / "bad"))
    assert secret[20:40] not in e.value.line()  # never the key's text


def encrypt_file(path: Path, chunks: list[bytes], *keys: x25519.Identity) -> pipeline.FileStats:
    return pipeline.write_chunks(path, chunks, recipients=[str(k.to_public()) for k in keys])


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    sizes=st.lists(st.sampled_from([0, 1, 65535, 65536, 65537, 200_000]), max_size=4),
    start=st.integers(0, 400_000),
    length=st.integers(0, 400_000) | st.none(),
)
def test_streaming_round_trip_over_chunk_boundaries(tmp_path, sizes, start, length):
    chunks = [os.urandom(n) for n in sizes]
    plain = b"".join(chunks)
    path = tmp_path / "f.sql.age"
    stats = encrypt_file(path, chunks, KEY)
    on_disk = path.read_bytes()
    assert on_disk.startswith(b"age-encryption.org/v1\n")
    assert stats == pipeline.FileStats(hashlib.sha256(on_disk).hexdigest(), len(on_disk))
    key = key_file(tmp_path, KEY)
    assert b"".join(pipeline.read_chunks(path, identity=key)) == plain
    stop = None if length is None else start + length
    with pipeline.stages() as running:
        chunks = pipeline.file_chunks(path, {}, running, start=start, stop=stop, identity=key)
        got = b"".join(chunks)
    assert got == plain[start:stop]
    path.unlink()


def test_through_a_decompressor_and_with_either_of_two_recipients(tmp_path):
    import gzip

    plain = os.urandom(300_000) + b"x" * 3_000_000
    path = tmp_path / "data.sql.gz.age"
    encrypt_file(path, [gzip.compress(plain, 1)], OTHER, KEY)
    key = key_file(tmp_path, KEY)
    with pipeline.stages() as running:
        got = b"".join(
            pipeline.file_chunks(path, {}, running, decompressor=["gzip", "-d", "-c"], identity=key)
        )
    assert got == plain


def test_stream_to_file_encrypts_after_the_compressor(tmp_path):
    path = tmp_path / "data.sql.gz.age"
    stats = pipeline.stream_to_file(
        [["printf", "COPY t FROM stdin;\\n1\\n\\\\.\\n"]], {"PATH": os.environ["PATH"]}, path,
        compressor=["gzip", "-c"], recipients=[str(KEY.to_public())],
    )  # fmt: skip
    assert stats.size == path.stat().st_size and path.stat().st_mode & 0o777 == 0o600
    key = key_file(tmp_path, KEY)
    with pipeline.stages() as running:
        out = b"".join(
            pipeline.file_chunks(path, {}, running, decompressor=["gzip", "-d", "-c"], identity=key)
        )
    assert out == b"COPY t FROM stdin;\n1\n\\.\n"


def test_a_wrong_key_and_a_damaged_file_get_one_line(tmp_path):
    path = tmp_path / "f.sql.age"
    encrypt_file(path, [os.urandom(500_000)], KEY)
    wrong = key_file(tmp_path, OTHER, name="other.txt")
    said = re.escape(f"no key in {wrong} opens f.sql.age (a key of another recipient than r,")
    with pytest.raises(ConfigError, match=said):
        encryption.check_key(path, encryption.load_identities(wrong), wrong, "r")
    right = key_file(tmp_path, KEY)
    encryption.check_key(path, encryption.load_identities(right), right, "r")
    # A flipped byte in the payload: the header still opens, the stream stops with one line.
    data = bytearray(path.read_bytes())
    data[300_000] ^= 1
    path.write_bytes(bytes(data))
    encryption.check_key(path, encryption.load_identities(right), right, "r")
    with pytest.raises(IntegrityError, match=r"f\.sql\.age cannot be decrypted: authentication"):
        b"".join(pipeline.read_chunks(path, identity=right))
    # In the header: no key can open it.
    path.write_bytes(b"age-encryption.org/v1\n-> X25519 garbage\n")
    with pytest.raises(IntegrityError, match="cannot be decrypted"):
        encryption.check_key(path, encryption.load_identities(right), right, "r")


def test_the_no_match_text_pyrage_gives_is_what_we_look_for():
    import io

    import pyrage

    sealed = pyrage.encrypt(b"x", [KEY.to_public()])
    with pytest.raises(pyrage.DecryptError, match=encryption._NO_MATCH):
        pyrage.decrypt_io(io.BytesIO(sealed), io.BytesIO(), [OTHER])


def test_a_reader_that_stops_early_ends_the_decrypting_thread(tmp_path):
    path = tmp_path / "f.sql.age"
    encrypt_file(path, [os.urandom(5_000_000)], KEY)
    chunks = pipeline.read_chunks(path, identity=key_file(tmp_path, KEY))
    assert len(next(chunks)) > 0
    chunks.close()  # the pipe's reader goes: the thread's next write fails, and it ends
    import gzip

    path = tmp_path / "data.sql.gz.age"
    encrypt_file(path, [gzip.compress(os.urandom(8_000_000), 1)], KEY)
    with pipeline.stages() as running:
        chunks = pipeline.file_chunks(
            path, {}, running, decompressor=["gzip", "-d", "-c"], identity=str(tmp_path / "key.txt")
        )
        assert len(next(chunks)) > 0
        chunks.close()  # the decompressor is killed, so the thread's writes fail too
        assert running[0].proc.returncode is not None


def test_a_full_disk_while_encrypting_is_the_os_error(tmp_path):
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full")
    fd = os.open("/dev/full", os.O_WRONLY)
    enc = encryption.Encryptor(fd, [str(KEY.to_public())])
    with pytest.raises(OSError) as e:
        for _ in range(10):
            enc.write(b"x" * (1 << 20))
        enc.finish()
    assert e.value.errno == 28
    os.close(fd)
