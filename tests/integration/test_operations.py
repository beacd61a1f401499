"""Hooks, pings, metrics and the log through the real command line against a real
cluster, with a password in the environment that none of them may see."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import (
    PASSWORD,
    PASSWORD_USER,
    create_database,
    drop_database,
    one_line_error,
    pgvault_env,
    run_pgvault,
    run_sql,
)
from tests.unit.test_notify import closed_port, server  # noqa: F401 (fixtures)

# A hook that writes its PGVAULT_* variables, and whether it saw a password, to a file.
DUMP_ENV = (
    "import json, os, sys; json.dump({'vars': {k: v for k, v in os.environ.items()"
    " if k.startswith('PGVAULT_')}, 'all': repr(dict(os.environ)) + ' '.join(sys.argv)},"
    " open(sys.argv[1], 'a')); open(sys.argv[1], 'a').write('\\n')"
)


@pytest.fixture(scope="module")
def crm(pg_cluster):
    name = create_database(pg_cluster, "ops")
    run_sql(pg_cluster.conn(name), "CREATE TABLE deals AS SELECT i FROM generate_series(1, 500) i")
    yield pg_cluster.conn(name, tcp=True, user=PASSWORD_USER)
    drop_database(pg_cluster, name)


def env_for(conn) -> dict[str, str]:
    return pgvault_env(conn, PGPASSWORD=PASSWORD)


def hook(script: Path, out: Path) -> str:
    script.write_text(DUMP_ENV)
    return f"{sys.executable} {script} {out}"


def seen(out: Path) -> list[dict]:
    return [json.loads(ln) for ln in out.read_text().splitlines() if ln.strip()]


def sets_in(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.glob("backup-*"))


def test_before_and_after_hooks_see_the_run_and_never_the_password(crm, tmp_path):
    out = tmp_path / "hooks.jsonl"
    command = hook(tmp_path / "dump_env.py", out)
    backups = tmp_path / "b"
    res = run_pgvault("backup", f"dir={backups}", "target.name=crm", "quiet=true",
                      f"hooks.before=['{command}']", f"hooks.after=['{command}']",
                      env=env_for(crm))  # fmt: skip
    assert res.returncode == 0, res.stderr
    before, after = seen(out)
    assert before["vars"]["PGVAULT_STATUS"] == "running"
    assert before["vars"]["PGVAULT_COMMAND"] == "backup"
    assert before["vars"]["PGVAULT_TARGET"] == "crm" and "PGVAULT_PREFIX" not in before["vars"]
    (manifest,) = backups.glob("*-manifest.json")
    prefix = manifest.name.removesuffix("-manifest.json")
    assert after["vars"]["PGVAULT_STATUS"] == "success"
    assert after["vars"]["PGVAULT_PREFIX"] == prefix
    assert after["vars"]["PGVAULT_ROWS"] == "500"
    assert int(after["vars"]["PGVAULT_SIZE_BYTES"]) > 0
    assert after["vars"]["PGVAULT_DIR"] == str(backups)
    for record in (before, after):
        assert PASSWORD not in record["all"]


def test_a_failing_before_hook_stops_the_backup_cleanly(crm, tmp_path):
    backups = tmp_path / "b"
    backups.mkdir(mode=0o700)
    out = tmp_path / "hooks.jsonl"
    command = hook(tmp_path / "dump_env.py", out)
    res = run_pgvault("backup", f"dir={backups}", "target.name=crm",
                      "hooks.before=['/bin/false']", f"hooks.on_failure=['{command}']",
                      f"hooks.after=['{command}']", env=env_for(crm))  # fmt: skip
    line = one_line_error(res)
    assert "hooks.before" in line and "/bin/false" in line
    assert sets_in(backups) == []
    (failed,) = seen(out)  # on_failure ran, after did not
    assert failed["vars"]["PGVAULT_STATUS"] == "failure"
    assert "/bin/false" in failed["vars"]["PGVAULT_ERROR"]
    status = run_pgvault("status", f"dir={backups}", "target.name=crm", env=env_for(crm))
    assert status.returncode == 1 and "hooks.before" in status.stdout


def test_on_failure_gets_the_error_line_without_the_password(crm, tmp_path):
    out = tmp_path / "hooks.jsonl"
    command = hook(tmp_path / "dump_env.py", out)
    bad = env_for(crm) | {"PGDATABASE": "no_such_db"}
    res = run_pgvault("backup", f"dir={tmp_path / 'b'}", "target.name=crm",
                      f"hooks.on_failure=['{command}']", env=bad)  # fmt: skip
    line = one_line_error(res)
    (failed,) = seen(out)
    assert failed["vars"]["PGVAULT_ERROR"] == line.removeprefix("pgvault: error: ")
    assert failed["vars"]["PGVAULT_EXIT_CODE"] == str(res.returncode)
    assert PASSWORD not in failed["all"]


def test_pings_and_metrics_of_a_real_backup(crm, tmp_path, server):  # noqa: F811
    prom = tmp_path / "metrics" / "pgvault.prom"
    prom.parent.mkdir()
    backups = tmp_path / "b"
    res = run_pgvault("backup", f"dir={backups}", "target.name=crm", "quiet=true",
                      f"notify.ping_url={server.url}/uuid-1", f"metrics.textfile={prom}",
                      env=env_for(crm))  # fmt: skip
    assert res.returncode == 0 and res.stderr == "", res.stderr
    assert [p for _, p, _ in server.requests] == ["/uuid-1/start", "/uuid-1"]
    values = {
        (s.name, s.labels.get("command")): s.value
        for family in text_string_to_metric_families(prom.read_text())
        for s in family.samples
    }
    assert values[("pgvault_last_run_success", "backup")] == 1.0
    assert values[("pgvault_last_backup_rows", None)] == 500.0
    assert values[("pgvault_backup_sets", None)] == 1.0
    (manifest,) = backups.glob("*-manifest.json")
    files = json.loads(manifest.read_text())["files"]
    assert values[("pgvault_last_backup_size_bytes", None)] == sum(
        f["size"] for f in files.values()
    )
    # A failed run keeps the last success and sends /fail with the error line.
    bad = env_for(crm) | {"PGDATABASE": "no_such_db"}
    res = run_pgvault("backup", f"dir={backups}", "target.name=crm",
                      f"notify.ping_url={server.url}/uuid-1", f"metrics.textfile={prom}",
                      env=bad)  # fmt: skip
    line = one_line_error(res).removeprefix("pgvault: error: ")
    assert server.requests[-1][1] == "/uuid-1/fail" and line in server.requests[-1][2]
    families = {f.name: f for f in text_string_to_metric_families(prom.read_text())}
    assert families["pgvault_last_run_success"].samples[0].value == 0.0
    assert families["pgvault_last_success_timestamp_seconds"].samples
    assert families["pgvault_last_failure_timestamp_seconds"].samples
    assert PASSWORD not in prom.read_text()


def test_a_notifier_that_is_down_is_one_warning_and_the_backup_succeeds(
    crm,
    tmp_path,
    closed_port,  # noqa: F811
):
    res = run_pgvault("backup", f"dir={tmp_path / 'b'}", "target.name=crm", "quiet=true",
                      f"notify.ping_url=http://127.0.0.1:{closed_port}/secret-uuid",
                      "notify.timeout=1", "notify.retries=0", env=env_for(crm))  # fmt: skip
    assert res.returncode == 0, res.stderr
    warnings = res.stderr.strip().splitlines()
    assert warnings and all(
        w.startswith("pgvault: warning: ping to http://127.0.0.1") for w in warnings
    )
    assert "secret-uuid" not in res.stderr
    assert len(sets_in(tmp_path / "b")) == 4


def test_cfg_job_shows_notifier_urls_without_their_tokens(tmp_path):
    res = run_pgvault("backup", "--cfg", "job", f"dir={tmp_path}",
                      "notify.ping_url=https://hc-ping.com/secret-uuid-1",
                      "notify.apprise=[tgram://123456:bot-token-2/chat,ntfy://ntfy.sh/topic-3]",
                      env=pgvault_env())  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert "ping_url: https://hc-ping.com/..." in res.stdout
    assert "- tgram://..." in res.stdout and "- ntfy://ntfy.sh/..." in res.stdout
    for token in ("secret-uuid-1", "bot-token-2", "topic-3"):
        assert token not in res.stdout


@pytest.mark.parametrize(
    ("override", "said"),
    [
        ('hooks.before=["echo \'x"]', "hooks.before[0] `echo 'x`: No closing quotation"),
        ("hooks.on_failure=['']", "hooks.on_failure[0] is empty"),
        ("notify.ping_url=ftp://host/uuid", "notify.ping_url ftp://... is not an http(s) URL"),
        ("notify.apprise=[nosuch://token]", "notify.apprise[0] nosuch://... is not a URL Apprise"),
        ("notify.timeout=604800", "notify.timeout is 604800.0"),
        ("notify.retries=50", "notify.retries is 50"),
        ("monitor.min_free=64 megabytes", "monitor.min_free='64 megabytes' is not a size"),
        ("log.file=relative.log", "log.file must be an absolute path"),
        ("metrics.textfile=m.prom", "metrics.textfile must be an absolute path"),
    ],
)
def test_bad_operations_settings_are_one_line_before_anything_runs(tmp_path, override, said):
    backups = tmp_path / "b"
    backups.mkdir()
    res = run_pgvault("backup", f"dir={backups}", override, env=pgvault_env())
    line = one_line_error(res)
    assert res.returncode == 2 and said in line, line
    assert list(backups.iterdir()) == []


def test_backup_verify_true_reports_the_verdict_to_hooks_and_metrics(crm, tmp_path):
    out = tmp_path / "hooks.jsonl"
    command = hook(tmp_path / "dump_env.py", out)
    prom = tmp_path / "pgvault.prom"
    res = run_pgvault("backup", f"dir={tmp_path / 'b'}", "target.name=crm", "verify=true",
                      "quiet=true", f"hooks.after=['{command}']", f"metrics.textfile={prom}",
                      env=env_for(crm))  # fmt: skip
    assert res.returncode == 0, res.stderr
    (after,) = seen(out)
    assert after["vars"]["PGVAULT_VERIFIED"] == "true"
    families = {f.name: f for f in text_string_to_metric_families(prom.read_text())}
    (sample,) = families["pgvault_last_verify_ok"].samples
    assert sample.value == 1.0 and sample.labels == {"target": "crm"}


def test_a_password_in_an_interpolated_url_never_reaches_a_before_hook(crm, tmp_path):
    """The target file's URL takes its password from ${oc.env:...}: known only once the
    config resolves, and known before the first hook runs."""
    out = tmp_path / "hooks.jsonl"
    command = hook(tmp_path / "dump_env.py", out)
    p = crm.params
    conf = tmp_path / "conf" / "target"
    conf.mkdir(parents=True)
    (conf / "crm_env.yaml").write_text(
        "name: crm\n"
        f"url: postgresql://{PASSWORD_USER}:${{oc.env:CRM_DB_PW}}@{p['host']}:{p['port']}/"
        f"{p['dbname']}\n"
    )
    env = pgvault_env() | {"CRM_DB_PW": PASSWORD, "PGVAULT_CONFIG_DIR": str(tmp_path / "conf")}
    res = run_pgvault("backup", f"dir={tmp_path / 'b'}", "target=crm_env", "quiet=true",
                      f"hooks.before=['{command}']", env=env)  # fmt: skip
    assert res.returncode == 0, res.stderr
    (before,) = seen(out)
    assert PASSWORD not in before["all"] and "CRM_DB_PW" not in before["all"]
