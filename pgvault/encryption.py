"""Encryption at rest with age (the pyrage binding): recipients and identities checked up
front, and streaming encryption and decryption on threads of their own.

pyrage's encrypt_io and decrypt_io run a whole stream through from a reader to a writer and
release the GIL while they work (measured: a thread spinning in Python beside them keeps
over 90% of its pace). So each runs on a thread, fed or drained through an os.pipe: the
pipe's ends are C-level files, and memory stays flat (the pipe, and a buffer each side).
pyrage is imported only here, and only when a set is encrypted.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from pgvault import naming
from pgvault.errors import ConfigError, IntegrityError
from pgvault.store import open_regular

if TYPE_CHECKING:
    from pgvault.catalog import BackupSet

METHOD = "age"
_BUFFER = 1 << 20
# What age says when no identity opens the header (pinned by a unit test).
_NO_MATCH = "No matching keys"
# A header with this many bytes read is past any real one (a recipient stanza is ~100).
_HEADER_PROBE = 1 << 20
_KEY_HINT = "give encryption.identity=/path/to/age-key, the key file of one of its recipients"


def _age() -> Any:
    """The pyrage module (it ships no type information), imported on first use: the CLI
    never loads it for a set that is not encrypted."""
    import pyrage  # type: ignore[import-untyped]

    return pyrage


def is_encrypted(path: Path) -> bool:
    return path.name.endswith(naming.ENCRYPTED_SUFFIX)


def check_recipients(recipients: Iterable[str]) -> list[Any]:
    """The parsed age recipients; ConfigError naming the first that is not an age X25519
    public key (a public key is no secret: it may be shown)."""
    recipients = list(recipients)
    if not recipients:
        return []  # pyrage stays unloaded for a set that is not encrypted
    age = _age()
    out = []
    for text in recipients:
        try:
            out.append(age.x25519.Recipient.from_str(text.strip()))
        except (age.RecipientError, ValueError):
            raise ConfigError(
                f"encryption.recipients: {text!r} is not an age public key",
                "give X25519 recipients as age-keygen prints them: age1 and 58 characters",
            ) from None
    return out


def load_identities(path: str | None) -> list[Any]:
    """The age identities in the key file at path (lines `AGE-SECRET-KEY-1...`; `#`
    comments and blank lines allowed). ConfigError when there is no path, no file, or no
    key in it; the key's text is never shown."""
    age = _age()
    if not path:
        raise ConfigError(
            "the set is encrypted and encryption.identity is not set",
            "give encryption.identity=/path/to/age-key",
        )
    try:
        with open_regular(Path(path)) as f:
            text = f.read(_HEADER_PROBE).decode("utf-8")
    except (OSError, UnicodeError) as e:
        why = e.strerror if isinstance(e, OSError) and e.strerror else "it is not a text file"
        raise ConfigError(
            f"cannot read the age key file {path}: {why}",
            "give encryption.identity=/path/to/age-key, a file age-keygen wrote",
        ) from None
    keys = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            keys.append(age.x25519.Identity.from_str(line))
        except (age.IdentityError, ValueError):
            raise ConfigError(
                f"line {number} of the age key file {path} is not an age secret key",
                "the file holds AGE-SECRET-KEY-1... lines, as age-keygen writes them",
            ) from None
    if not keys:
        raise ConfigError(
            f"the age key file {path} holds no key",
            "give encryption.identity=/path/to/age-key, a file age-keygen wrote",
        )
    return keys


def _reason(e: BaseException) -> str:
    text = str(e).strip()
    return text if text and text != "decryption error" else "authentication failed"


def check_key(path: Path, identities: Sequence[Any], key_path: str, recipients: str) -> None:
    """Decrypt the beginning of path: ConfigError when no identity opens it, IntegrityError
    when its header is damaged. Nothing is kept of what it decrypts."""
    pyrage = _age()
    with open_regular(path) as f:
        head = f.read(_HEADER_PROBE)
    sink = _Discard()
    try:
        pyrage.decrypt_io(_Bytes(head), sink, list(identities))
    except pyrage.DecryptError as e:
        if _NO_MATCH in str(e):
            raise ConfigError(
                f"no key in {key_path} opens {path.name} (a key of another recipient than "
                f"{recipients}, or a damaged header)",
                _KEY_HINT,
            ) from None
        raise IntegrityError(
            f"{path.name} cannot be decrypted: {_reason(e)}",
            "the file is damaged or not an age file; restore another set",
        ) from None
    except OSError:
        pass  # past the header: the key fits (what follows was cut off by the probe)


def check_set(bset: BackupSet, key_path: str | None) -> None:
    """Before an encrypted set is used: the key file loads and opens each file's header."""
    m = bset.manifest
    if m is None or m.encryption is None:
        return
    identities = load_identities(key_path)
    assert key_path is not None
    shown = ", ".join(m.encryption.recipients)
    for kind in sorted(bset.files):
        if is_encrypted(bset.files[kind]):
            check_key(bset.files[kind], identities, key_path, shown)


class _Bytes:
    def __init__(self, data: bytes) -> None:
        self.data, self.at = data, 0

    def read(self, n: int = -1) -> bytes:
        end = len(self.data) if n < 0 else self.at + n
        out = self.data[self.at : end]
        self.at += len(out)
        return out


class _Discard:
    def write(self, data: bytes) -> int:
        return len(data)

    def flush(self) -> None:
        pass


class _HashingWriter:
    """Where the ciphertext goes: the file, hashed and counted."""

    def __init__(self, fd: int) -> None:
        self.fd, self.hash, self.size = fd, hashlib.sha256(), 0
        # pyrage hands on only the text of an error met here: kept to re-raise (ENOSPC).
        self.error: OSError | None = None

    def write(self, data: bytes) -> int:
        self.hash.update(data)
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self.fd, view) :]
        except OSError as e:
            self.error = e
            raise
        self.size += len(data)
        return len(data)

    def flush(self) -> None:
        pass


class Encryptor:
    """Plain bytes written here reach fd encrypted for recipients; finish() returns the
    ciphertext's sha256 and size. fd stays the caller's (neither synced nor closed)."""

    def __init__(self, fd: int, recipients: Sequence[str]) -> None:
        self.recipients = check_recipients(recipients)
        self.out = _HashingWriter(fd)
        self.error: BaseException | None = None
        rfd, self.wfd = os.pipe()
        self.reader = os.fdopen(rfd, "rb", buffering=_BUFFER)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        pyrage = _age()
        try:
            with self.reader:
                pyrage.encrypt_io(self.reader, self.out, self.recipients)
        except BaseException as e:  # re-raised by write() or finish()
            self.error = e

    def _failed(self) -> BaseException:
        self.thread.join()
        if self.out.error is not None:
            return self.out.error
        e = self.error
        return e if isinstance(e, OSError) else OSError(f"age encryption failed: {e}")

    def write(self, chunk: bytes) -> None:
        view = memoryview(chunk)
        try:
            while view:
                view = view[os.write(self.wfd, view) :]
        except BrokenPipeError:  # the encrypting thread stopped: its error says why
            raise self._failed() from None

    def finish(self) -> tuple[str, int]:
        os.close(self.wfd)
        self.wfd = -1
        self.thread.join()
        if self.error is not None:
            raise self._failed()
        return self.out.hash.hexdigest(), self.out.size

    def abort(self) -> None:
        if self.wfd >= 0:
            os.close(self.wfd)
            self.wfd = -1
        self.thread.join(timeout=30)


class Decryptor:
    """path's plain bytes, readable from .reader (the read end of a pipe a thread decrypts
    into). check() after the last byte: IntegrityError when decryption failed."""

    def __init__(self, path: Path, key_path: str | None) -> None:
        self.name = path.name
        self.identities = load_identities(key_path)
        self.key_path = key_path
        self.error: BaseException | None = None
        self.source = open_regular(path)
        rfd, wfd = os.pipe()
        self.reader: BinaryIO = os.fdopen(rfd, "rb", buffering=_BUFFER)
        self.writer = os.fdopen(wfd, "wb", buffering=_BUFFER)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        pyrage = _age()
        try:
            with self.source, self.writer:
                pyrage.decrypt_io(self.source, self.writer, self.identities)
        except BrokenPipeError:
            pass  # the reader stopped early: not the file's fault
        except BaseException as e:  # raised by check()
            self.error = e

    def check(self) -> None:
        self.thread.join()
        e = self.error
        if e is None:
            return
        if _NO_MATCH in str(e):
            raise ConfigError(f"no key in {self.key_path} opens {self.name}", _KEY_HINT)
        raise IntegrityError(
            f"{self.name} cannot be decrypted: {_reason(e)}",
            "the file is damaged; restore another set",
        )

    def close(self) -> None:
        """Stop early: the thread ends on its next write into the closed pipe."""
        with contextlib.suppress(OSError):
            self.reader.close()
        self.thread.join(timeout=30)
