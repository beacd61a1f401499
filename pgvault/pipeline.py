"""Running client programs as streaming pipelines, with every stage's exit status checked.

Bytes that must be counted or hashed pass through Python in large chunks; everything else
goes from process to process or file. The stages themselves (started, killed, checked,
their stderr in temporary files) are pgvault.execute's; Stage, stages and run_text are
re-exported from there for the modules that use them by this name.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import queue
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from pgvault import encryption, store
from pgvault.errors import ClientProgramError
from pgvault.execute import DEVNULL, PIPE, widen
from pgvault.execute import Stage as Stage
from pgvault.execute import run_text as run_text
from pgvault.execute import stages as stages
from pgvault.store import open_regular as open_regular

CHUNK = 1 << 20
_QUEUED_CHUNKS = 4  # at most this many chunks wait for the writer: memory stays flat


class Observer(Protocol):
    def feed(self, chunk: bytes | bytearray) -> None: ...


@dataclass(frozen=True)
class FileStats:
    sha256: str
    size: int
    # Offset at which each source's output begins (of the uncompressed stream).
    offsets: tuple[int, ...] = ()


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


class _Sink:
    """Where a stream's bytes go: observers, then the file, through a compressor if any.

    The file's sha256 and size are taken of the bytes that reach it (after compression).
    Hashing and writing happen on a thread of their own (both release the GIL), so they
    overlap with reading and observing the stream on the calling thread.
    """

    def __init__(
        self,
        fd: int,
        observers: Sequence[Observer],
        comp: Stage | None,
        recipients: Sequence[str] = (),
    ) -> None:
        self.fd = fd
        # Encrypting: the bytes go on to a thread of their own, which hashes what it writes.
        self.encryptor = encryption.Encryptor(fd, recipients) if recipients else None
        self.observers = observers
        self.comp = comp
        self.hash = hashlib.sha256()
        self.written = 0  # bytes in the file so far (the writer thread's count)
        self.digest = ""  # the file's sha256, once finished
        self.accepted = 0  # bytes handed in so far: an offset before compression
        self.errors: list[BaseException] = []
        self.queue: queue.Queue[bytes | None] = queue.Queue(maxsize=_QUEUED_CHUNKS)
        self.stopping = False
        if comp is not None:
            widen(comp.proc.stdin)
            self.thread = threading.Thread(target=self._pump, daemon=True)
        else:
            self.thread = threading.Thread(target=self._drain, daemon=True)
        self.thread.start()

    def _to_file(self, chunk: bytes) -> None:
        if self.encryptor is not None:
            self.encryptor.write(chunk)
            return
        self.hash.update(chunk)
        write_all(self.fd, chunk)
        self.written += len(chunk)

    def _pump(self) -> None:
        assert self.comp is not None and self.comp.proc.stdout is not None
        try:
            while chunk := self.comp.proc.stdout.read(CHUNK):
                self._to_file(chunk)
        except BaseException as e:  # re-raised by the main thread
            self.errors.append(e)
            self.comp.kill()

    def _drain(self) -> None:
        while True:
            try:
                chunk = self.queue.get(timeout=0.2)
            except queue.Empty:
                if self.stopping:
                    return
                continue
            if chunk is None:
                return
            if self.errors or self.stopping:
                continue  # keep taking chunks so the producer never blocks
            try:
                self._to_file(chunk)
            except BaseException as e:  # re-raised by the main thread
                self.errors.append(e)

    def write(self, chunk: bytes) -> None:
        if self.errors:
            raise self.errors[0]
        self.accepted += len(chunk)
        for obs in self.observers:
            obs.feed(chunk)
        if self.comp is None:
            self.queue.put(chunk)
            return
        assert self.comp.proc.stdin is not None
        try:
            self.comp.proc.stdin.write(chunk)
        except BrokenPipeError:
            # The compressor is gone, so its output ends and the pump thread with it. Wait
            # for the pump before judging: a write error it met (a full disk; it killed the
            # compressor because of it) is the cause, whichever of the two we saw first.
            self.thread.join()
            if self.errors:
                raise self.errors[0] from None
            self.comp.check()  # the compressor died by itself: its exit status says why
            raise

    def finish(self) -> None:
        if self.comp is None:
            self.queue.put(None)
            self.thread.join()
        else:
            assert self.comp.proc.stdin is not None
            with contextlib.suppress(BrokenPipeError):
                self.comp.proc.stdin.close()
            self.thread.join()
        if self.errors:
            raise self.errors[0]
        if self.comp is not None:
            self.comp.check()
        if self.encryptor is not None:
            self.digest, self.written = self.encryptor.finish()
        else:
            self.digest = self.hash.hexdigest()

    def abort(self) -> None:
        """Stop the writer thread without finishing the file."""
        self.stopping = True
        if self.comp is not None:
            self.comp.kill()  # its output ends, so the pump thread ends too
        self.thread.join(timeout=30)
        if self.encryptor is not None:
            self.encryptor.abort()


def stream_to_file(
    sources: Sequence[Sequence[str]],
    env: Mapping[str, str],
    dest: Path,
    *,
    transform: Callable[[bytes], bytes] | None = None,
    observers: Sequence[Observer] = (),
    compressor: Sequence[str] | None = None,
    progress: Callable[[int], None] | None = None,
    prologue: bytes = b"",
    trailer: bytes = b"",
    recipients: Sequence[str] = (),
) -> FileStats:
    """Run each argv in sources, one after another, streaming their stdout into a new
    file dest (mode 0600; a `.partial` a killed run left there is replaced, anything else
    there is an error, and a symlink is never followed).

    Each chunk goes through transform, to the observers, then (optionally) through a
    compressor, then (when there are recipients) age encryption; prologue comes first and
    trailer last. The sha256 and size are of the bytes written to dest. On failure every
    stage is killed, dest removed, and the error raised.
    """
    with store.new_file(dest) as fd, stages() as running:
        comp = None
        if compressor is not None:
            comp = Stage(compressor, env, stdin=PIPE)
            running.append(comp)
        sink = _Sink(fd, observers, comp, recipients)
        try:
            total = 0
            offsets = []
            if prologue:
                sink.write(prologue)
            for argv in sources:
                offsets.append(sink.accepted)
                source = Stage(argv, env)
                running.append(source)
                assert source.proc.stdout is not None
                while chunk := source.proc.stdout.read(CHUNK):
                    total += len(chunk)
                    sink.write(transform(chunk) if transform is not None else chunk)
                    if progress is not None:
                        progress(total)
                source.check()
            tail = (transform(b"") if transform is not None else b"") + trailer
            if tail:
                sink.write(tail)
            sink.finish()
        except BaseException:
            sink.abort()
            raise
    return FileStats(sink.digest, sink.written, tuple(offsets))


def file_chunks(
    path: Path,
    env: Mapping[str, str],
    running: list[Stage],
    *,
    decompressor: Sequence[str] | None = None,
    start: int = 0,
    stop: int | None = None,
    identity: str | None = None,
) -> Iterator[bytes]:
    """Yield the bytes of path[start:stop], through a decompressor if one is given
    (then the whole file). The decompressor's exit status is checked at the end.

    A file whose name ends in .age is decrypted first with the age key file identity
    (start and stop are then offsets of the plain bytes); a decryption that fails is an
    IntegrityError, raised before the decompressor's own complaint about its cut input."""
    if encryption.is_encrypted(path):
        yield from _decrypted_chunks(path, env, running, decompressor, start, stop, identity)
        return
    if decompressor is not None:
        # The file goes in as stdin, opened here: given the path, gzip follows a symlink
        # and zstd blocks forever on a fifo.
        with open_regular(path) as source:
            stage = Stage(list(decompressor), env, stdin=source)
        running.append(stage)
        assert stage.proc.stdout is not None
        while chunk := stage.proc.stdout.read(CHUNK):
            yield chunk
        stage.check()
        return
    with open_regular(path) as f:
        f.seek(start)
        left = None if stop is None else stop - start
        while left is None or left > 0:
            chunk = f.read(CHUNK if left is None else min(CHUNK, left))
            if not chunk:
                break
            if left is not None:
                left -= len(chunk)
            yield chunk


def _decrypted_chunks(
    path: Path,
    env: Mapping[str, str],
    running: list[Stage],
    decompressor: Sequence[str] | None,
    start: int,
    stop: int | None,
    identity: str | None,
) -> Iterator[bytes]:
    dec = encryption.Decryptor(path, identity)
    stage = None
    try:
        if decompressor is not None:
            stage = Stage(list(decompressor), env, stdin=dec.reader)
            running.append(stage)
            # Only the decompressor reads the pipe now: when it stops, the decrypting
            # thread's next write fails and the thread ends.
            dec.reader.close()
            assert stage.proc.stdout is not None
            while chunk := stage.proc.stdout.read(CHUNK):
                yield chunk
            dec.check()
            stage.check()
            return
        at = 0
        while stop is None or at < stop:
            want = CHUNK if stop is None else min(CHUNK, stop - at)
            chunk = dec.reader.read(want)
            if not chunk:
                dec.check()
                return
            begin, at = at, at + len(chunk)
            if at > start:
                yield chunk[max(0, start - begin) :]
    finally:
        # Stopped early (a reader that gave up, or an error): the decompressor goes first,
        # else the decrypting thread could wait on it while it waits on a reader.
        if stage is not None:
            stage.kill()
        dec.close()


def stream_into(
    argv: Sequence[str],
    env: Mapping[str, str],
    parts: Callable[[list[Stage]], Iterator[bytes]],
) -> None:
    """Run argv with parts(running) streamed into its stdin, its stdout discarded.

    parts may start stages of its own (decompressors) by appending them to running; on
    any failure every stage is killed. Raises ClientProgramError unless argv exits 0.
    """
    with stages() as running:
        sink = Stage(argv, env, stdin=PIPE, stdout=DEVNULL)
        running.append(sink)
        stdin = sink.proc.stdin
        assert stdin is not None
        widen(stdin)
        try:
            for chunk in parts(running):
                stdin.write(chunk)
            stdin.close()
        except BrokenPipeError:
            sink.check()  # it stopped reading: its exit status and stderr say why
            raise ClientProgramError(
                f"{sink.name} stopped reading its input and exited 0",
                "run it again; if it keeps happening, report it",
            ) from None
        sink.check()


def observe(argv: Sequence[str], env: Mapping[str, str], observers: Sequence[Observer]) -> None:
    """Run argv and feed its whole stdout to observers, keeping none of it."""
    with stages() as running:
        source = Stage(argv, env)
        running.append(source)
        assert source.proc.stdout is not None
        while chunk := source.proc.stdout.read(CHUNK):
            for obs in observers:
                obs.feed(chunk)
        source.check()


def write_chunks(
    dest: Path, chunks: Iterable[bytes], *, recipients: Sequence[str] = ()
) -> FileStats:
    """Write chunks into a new file dest (as stream_to_file creates it), encrypted for
    recipients when there are any; sha256 and size are of the bytes on disk. On failure
    dest is removed and the error raised."""
    fd = store.create_new(dest)
    digest, size = hashlib.sha256(), 0
    encryptor = None
    try:
        if recipients:
            encryptor = encryption.Encryptor(fd, recipients)
            for chunk in chunks:
                encryptor.write(chunk)
            sha256, size = encryptor.finish()
            os.fsync(fd)
            os.close(fd)
            return FileStats(sha256, size)
        for chunk in chunks:
            digest.update(chunk)
            write_all(fd, chunk)
            size += len(chunk)
        os.fsync(fd)
    except BaseException:
        if encryptor is not None:
            encryptor.abort()
        os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            dest.unlink()
        raise
    os.close(fd)
    return FileStats(digest.hexdigest(), size)


def read_chunks(path: Path, *, identity: str | None = None) -> Iterator[bytes]:
    """Yield a set file's plain bytes: decrypted with identity when the name says it is
    encrypted; IntegrityError when that fails."""
    if encryption.is_encrypted(path):
        yield from _decrypted_chunks(path, {}, [], None, 0, None, identity)
        return
    with open_regular(path) as f:
        while chunk := f.read(CHUNK):
            yield chunk
