"""One writer at a time on a remote (pgvault.lease), on a directory remote and on a real
S3 server: a held lease refuses a second run, an expired one is taken over by exactly
one of two racers, and a backup that finds the lease held writes nothing."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from pathlib import Path

import pytest

from pgvault import lease
from pgvault.config import RemoteConfig
from pgvault.errors import LockBusy
from pgvault.remote import open_remote
from tests.conftest import pgvault_env, run_pgvault


@pytest.fixture(params=["file", "s3"])
def where(request, tmp_path, monkeypatch):  # type: ignore[no-untyped-def]
    if request.param == "file":
        share = tmp_path / "share"
        share.mkdir()
        return open_remote(RemoteConfig(url=f"file://{share}"))
    server = request.getfixturevalue("s3_server")
    bucket = request.getfixturevalue("s3_bucket")
    for key, value in server.env().items():
        monkeypatch.setenv(key, value)
    return open_remote(RemoteConfig(url=f"s3://{bucket}/pg", endpoint=server.endpoint))


def current(where) -> dict:  # type: ignore[no-untyped-def,type-arg]
    found = where.lease_read()
    assert found is not None
    return dict(json.loads(found[0]))


def elsewhere(held: lease.Lease) -> bytes:
    """held's lease as another live process of this machine would write it."""
    info = json.loads(held.body())
    info["pid"] = os.getppid()
    return json.dumps(info).encode()


def test_a_held_lease_refuses_a_second_run_until_given_back(where):
    with lease.held(where, ttl=600, what="backup"):
        with pytest.raises(LockBusy) as e:
            lease.Lease(where, 600, "push").take()
        assert "holds its lease" in e.value.what and "expires at" in e.value.hint
    assert lease.stale(current(where))  # given back: written expired
    with lease.held(where, ttl=600, what="push"):
        assert current(where)["what"] == "push"


def test_a_waiting_run_gets_the_lease_once_it_is_given_back(where):
    first = lease.Lease(where, 600, "backup")
    first.take()
    threading.Timer(1.0, first.give_back).start()
    started = time.monotonic()
    second = lease.Lease(where, 600, "push")
    second.take(wait=30)
    assert 0.9 < time.monotonic() - started < 20
    assert current(where)["token"] == second.token


def test_an_expired_lease_goes_to_exactly_one_of_two_racers(where):
    dead = lease.Lease(where, -1, "backup")  # a run that died: its lease has expired
    dead.take()
    found = where.lease_read()
    assert found is not None
    first, second = lease.Lease(where, 600, "a"), lease.Lease(where, 600, "b")
    # Both read the same expired lease; only the first conditional write lands. (The
    # first stands for another live process: its lease names one.)
    assert where.lease_write(elsewhere(first), found[1]) is not None
    assert where.lease_write(elsewhere(second), found[1]) is None
    assert current(where)["what"] == "a"
    with pytest.raises(LockBusy):
        second.take()


def test_a_lease_of_a_run_of_this_machine_that_is_gone_is_taken_at_once(where):
    gone = subprocess.Popen(["true"])
    gone.wait()
    other = lease.Lease(where, 600, "push")
    other.take()
    info = current(where)
    # The same lease, as the run that died would have left it on this machine.
    info["pid"] = gone.pid
    assert where.lease_write(json.dumps(info).encode(), where.lease_read()[1])
    with lease.held(where, ttl=600, what="backup"):
        assert current(where)["what"] == "backup"
    # Another machine's run (or another container's: its own pid namespace) is not
    # known to be gone: its lease holds until it expires.
    info["machine"] = "elsewhere:boot:1"
    assert where.lease_write(json.dumps(info).encode(), where.lease_read()[1])
    with pytest.raises(LockBusy):
        lease.Lease(where, 600, "backup").take()


def test_a_lease_this_process_wrote_but_never_got_is_no_obstacle_to_it(where):
    """A conditional write that landed but whose answer was lost: the lease names this
    process, with a token none of its leases holds. Its next take (the push after a
    backup whose take failed so) must not wait for itself."""
    ghost = lease.Lease(where, 600, "backup")
    assert where.lease_write(ghost.body(), None) is not None  # its take never learnt of it
    with lease.held(where, ttl=600, what="push"):
        assert current(where)["what"] == "push"


def test_the_holder_keeps_its_lease_fresh(where):
    with lease.held(where, ttl=3.0, what="backup"):
        first = current(where)["expires"]
        time.sleep(2.5)  # a renewal every second
        assert current(where)["expires"] > first
        assert not lease.stale(current(where))


def test_a_lease_taken_over_is_lost_and_its_old_holder_writes_nothing_more(where):
    old = lease.Lease(where, -1, "old")  # expired: a run that stalled past its ttl
    old.take()
    new = lease.Lease(where, 600, "new")
    new.take()  # over the expired one
    with pytest.raises(LockBusy):
        old.renew()
    with pytest.raises(LockBusy):
        old.check()  # what a push asks before each upload and delete
    old.give_back()  # not its lease any more: its conditional write fails
    assert current(where)["token"] == new.token and not lease.stale(current(where))


def test_a_push_that_lost_its_lease_uploads_nothing(pg_cluster, tmp_path, monkeypatch):
    """The lease is taken over (its renewals failed for a whole lease_ttl) while the push
    looks at the remote: it stops with LockBusy before it uploads or deletes anything."""
    from pgvault import offsite
    from pgvault.backup import take_backup
    from pgvault.config import PgvaultConfig, TargetConfig
    from pgvault.ui import Reporter

    share = tmp_path / "share"
    share.mkdir()
    local = tmp_path / "local"
    url = f"postgresql://postgres@127.0.0.1:{pg_cluster.port}/postgres"
    cfg = PgvaultConfig(dir=str(local), target=TargetConfig(name="local", url=url),
                        remote=RemoteConfig(url=f"file://{share}"))  # fmt: skip
    take_backup(cfg, Reporter(quiet=True), apply_retention=False)
    where = open_remote(cfg.remote)
    real_scan = offsite.sending.scan

    def scan_while_the_lease_goes(*args, **kwargs):  # type: ignore[no-untyped-def]
        held = lease._HELD[where.url]
        held.valid_until = 0.0  # as if no renewal had landed for lease_ttl ...
        info = current(where)
        info["expires"] = time.time() - 1  # ... so it expired, and another run took it
        assert where.lease_write(json.dumps(info).encode(), where.lease_read()[1])
        lease.Lease(where, 600, "elsewhere").take()
        monkeypatch.setattr(lease.Lease, "renew", lambda self: None)  # its renewals fail
        return real_scan(*args, **kwargs)

    monkeypatch.setattr(offsite.sending, "scan", scan_while_the_lease_goes)
    with pytest.raises(LockBusy) as e:
        offsite.push(cfg, Reporter(quiet=True), local)
    assert "could not be renewed" in e.value.what
    assert sorted(p.name for p in share.iterdir()) == [lease.NAME]  # nothing uploaded
    assert current(where)["what"] == "elsewhere"


def test_a_backup_that_finds_the_remote_leased_writes_nothing(pg_cluster, tmp_path):
    share = tmp_path / "share"
    share.mkdir()
    other = lease.Lease(open_remote(RemoteConfig(url=f"file://{share}")), 600, "backup")
    other.take()  # another machine's run of the same target
    local = tmp_path / "local"
    env = pgvault_env(pg_cluster.conn())
    args = ("backup", f"dir={local}", f"remote.url=file://{share}")
    res = run_pgvault(*args, env=env)
    assert res.returncode == 1
    (line,) = [ln for ln in res.stderr.splitlines() if not ln.startswith("pgvault: warning: ")]
    assert (
        line.startswith(f"pgvault: error: file://{share} is in use: backup on ")
        and "expires at" in line
    )
    assert not local.exists() or not list(local.glob("backup-*"))
    assert sorted(p.name for p in share.iterdir()) == [lease.NAME]  # the other's only
    # Once it has expired, the next run takes the lease, uploads, and gives it back.
    info = json.loads((share / lease.NAME).read_text())
    info["expires"] = time.time() - 1
    (share / lease.NAME).write_text(json.dumps(info))
    res = run_pgvault(*args, env=env)
    assert res.returncode == 0, res.stderr
    names = sorted(p.name for p in share.iterdir())
    assert any(n.endswith("-manifest.json") for n in names)
    assert lease.stale(json.loads((share / lease.NAME).read_text()))  # given back
    assert Path(local).is_dir()
