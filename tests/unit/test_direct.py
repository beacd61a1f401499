"""The reader that follows a program writing a set file itself (pgvault.direct).

The program here is a small Python writer, for the mechanics: bursts with pauses, an
exit status, a file size limit. pg_dump itself writes data files this way in every
backup the integration tests take (compression=none), including kill -9 and full disks.
"""

from __future__ import annotations

import errno
import hashlib
import os
import signal
import subprocess
import sys
import time

import pytest

from pgvault.direct import Tether, dump_to_file, write_failure
from pgvault.errors import ClientProgramError
from tests.conftest import process_running

WRITER = """
import os, sys, time
for i in range(int(sys.argv[1])):
    os.write(1, (b"%d:" % i) * 100_003)
    time.sleep(0.03)
sys.exit(int(sys.argv[2]))
"""


class Seen:
    def __init__(self) -> None:
        self.data = bytearray()

    def feed(self, chunk: bytes) -> None:
        self.data += chunk


def writer(bursts: int, status: int = 0) -> list[str]:
    return [sys.executable, "-c", WRITER, str(bursts), str(status)]


def test_every_byte_reaches_the_observers_and_the_checksum(tmp_path):
    dest = tmp_path / "x.sql.partial"
    seen, sizes = Seen(), []
    stats = dump_to_file(
        writer(5), os.environ, dest, observers=[seen], progress=sizes.append, trailer=b"END\n"
    )
    on_disk = dest.read_bytes()
    expected = b"".join((b"%d:" % i) * 100_003 for i in range(5)) + b"END\n"
    assert on_disk == expected and bytes(seen.data) == expected
    assert stats.size == len(expected)
    assert stats.sha256 == hashlib.sha256(expected).hexdigest()
    assert sizes == sorted(sizes) and sizes[-1] == len(expected) - 4
    assert dest.stat().st_mode & 0o777 == 0o600


def test_a_failing_program_leaves_no_file(tmp_path):
    dest = tmp_path / "x.sql.partial"
    with pytest.raises(ClientProgramError, match="exit status 3"):
        dump_to_file(writer(2, status=3), os.environ, dest)
    assert not dest.exists()


def test_a_file_size_limit_is_the_write_error_it_is(tmp_path):
    """The program dies of SIGXFSZ and never says why: the error is EFBIG, as pgvault's
    own write would have met it."""
    dest = tmp_path / "x.sql.partial"
    # A C program such as pg_dump keeps SIGXFSZ's default action, which Python ignores.
    limit = (
        "import resource, signal; signal.signal(signal.SIGXFSZ, signal.SIG_DFL); "
        "resource.setrlimit(resource.RLIMIT_FSIZE, (150_000, 150_000))"
    )
    script = f"{limit}\n{WRITER}"
    with pytest.raises(OSError) as caught:
        dump_to_file([sys.executable, "-c", script, "5", "0"], os.environ, dest)
    assert caught.value.errno == errno.EFBIG
    assert not dest.exists()


def test_a_failure_with_room_left_is_not_a_write_error(tmp_path):
    """The file can still grow: the program failed for its own reasons, which it says."""
    dest = tmp_path / "x.sql.partial"
    with pytest.raises(ClientProgramError, match="exit status 3"):
        dump_to_file(writer(1, status=3), os.environ, dest)
    fd = os.open(tmp_path / "y", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        assert write_failure(1, fd, tmp_path / "y") is None
        assert os.fstat(fd).st_size == 0  # the probe leaves the file as it was
        got = write_failure(-signal.SIGXFSZ, fd, tmp_path / "y")
        assert got is not None and got.errno == errno.EFBIG
    finally:
        os.close(fd)


def test_the_tether_kills_the_program_when_its_owner_dies(tmp_path):
    """An owner process starts a long program and a tether, then is killed with SIGKILL:
    the program goes too. Disarmed, the tether kills nothing."""
    owner = """
import subprocess, sys, time
from pgvault.direct import Tether
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
Tether(child.pid)
print(child.pid, flush=True)
time.sleep(60)
"""
    proc = subprocess.Popen([sys.executable, "-c", owner], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    child = int(proc.stdout.readline())
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 10
    while process_running(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not process_running(child)

    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(0.5)"])
    Tether(sleeper.pid).disarm()
    assert sleeper.wait(timeout=10) == 0
