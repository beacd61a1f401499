"""One writer at a time on a remote (pgvault.lease), on a directory remote and on a real
S3 server: a held lease refuses a second run, an expired one is taken over by exactly
one of two racers, and a backup that finds the lease held writes nothing."""

from __future__ import annotations

import json
import subprocess
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


def test_a_held_lease_refuses_a_second_run_until_given_back(where):
    with lease.held(where, ttl=600, what="backup"):
        with pytest.raises(LockBusy) as e:
            lease.Lease(where, 600, "push").take()
        assert "holds its lease" in e.value.what and "expires at" in e.value.hint
    assert where.lease_read() is None  # given back
    with lease.held(where, ttl=600, what="push"):
        assert json.loads(where.lease_read()[0])["what"] == "push"


def test_an_expired_lease_goes_to_exactly_one_of_two_racers(where):
    dead = lease.Lease(where, -1, "backup")  # a run that died: its lease has expired
    dead.take()
    found = where.lease_read()
    assert found is not None
    first, second = lease.Lease(where, 600, "a"), lease.Lease(where, 600, "b")
    # Both read the same expired lease; only the first conditional write lands.
    assert where.lease_write(first.body(), found[1]) is True
    assert where.lease_write(second.body(), found[1]) is False
    assert json.loads(where.lease_read()[0])["what"] == "a"
    with pytest.raises(LockBusy):
        second.take()


def test_a_lease_of_a_run_of_this_machine_that_is_gone_is_taken_at_once(where):
    gone = subprocess.Popen(["true"])
    gone.wait()
    other = lease.Lease(where, 600, "push")
    other.take()
    info = json.loads(where.lease_read()[0])
    # The same lease, as the run that died would have left it on this machine.
    info["pid"] = gone.pid
    found = where.lease_read()
    assert where.lease_write(json.dumps(info).encode(), found[1])
    with lease.held(where, ttl=600, what="backup"):
        assert json.loads(where.lease_read()[0])["what"] == "backup"
    # Another machine's run is not known to be gone: its lease holds until it expires.
    info["host"] = "elsewhere"
    assert where.lease_write(json.dumps(info).encode(), None)
    with pytest.raises(LockBusy):
        lease.Lease(where, 600, "backup").take()


def test_the_holder_keeps_its_lease_fresh(where):
    with lease.held(where, ttl=0.6, what="backup"):
        first = json.loads(where.lease_read()[0])["expires"]
        time.sleep(0.9)  # a renewal every 0.2 s
        assert json.loads(where.lease_read()[0])["expires"] > first
        assert not lease.stale(json.loads(where.lease_read()[0]))


def test_a_lease_taken_over_cannot_be_renewed_or_given_back_by_its_old_holder(where):
    old = lease.Lease(where, -1, "old")
    old.take()
    new = lease.Lease(where, 600, "new")
    new.take()  # over the expired one
    with pytest.raises(LockBusy):
        old.renew()
    old.give_back()  # not its lease any more: left alone
    assert json.loads(where.lease_read()[0])["what"] == "new"


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
    assert sorted(p.name for p in share.iterdir()) == [lease.NAME]
    # Once it has expired, the next run takes the lease, uploads, and gives it back.
    info = json.loads((share / lease.NAME).read_text())
    info["expires"] = time.time() - 1
    (share / lease.NAME).write_text(json.dumps(info))
    res = run_pgvault(*args, env=env)
    assert res.returncode == 0, res.stderr
    names = sorted(p.name for p in share.iterdir())
    assert lease.NAME not in names and any(n.endswith("-manifest.json") for n in names)
    assert Path(local).is_dir()
