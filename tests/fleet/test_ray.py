"""A sweep on a Ray cluster (pgvault[ray], `nox -s fleet`): a Ray head on 127.0.0.1,
three databases backed up through hydra-ray-launcher, each set uploaded to the S3 server
(moto) under its target's prefix. Run by `nox -s fleet` only: without Ray it fails, it
is never skipped."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import (
    PASSWORD,
    PASSWORD_USER,
    create_database,
    drop_database,
    pgvault_env,
    run_pgvault,
    run_sql,
)
from tests.s3server import KEY_ID, REGION, SECRET, free_port


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory) -> Iterator[str]:  # type: ignore[no-untyped-def]
    import ray as _ray  # noqa: F401  (pgvault[ray] must be installed: a failure, not a skip)

    bindir = Path(sys.executable).parent
    port = free_port()
    temp = Path("/tmp") / f"ray-{os.getpid()}"  # Ray's socket paths must stay short
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    subprocess.run(
        [str(bindir / "ray"), "start", "--head", "--node-ip-address=127.0.0.1",
         f"--port={port}", "--num-cpus=2", "--include-dashboard=false",
         "--disable-usage-stats", f"--temp-dir={temp}"],
        env=env, check=True, capture_output=True, timeout=180,
    )  # fmt: skip
    try:
        yield f"127.0.0.1:{port}"
    finally:
        subprocess.run([str(bindir / "ray"), "stop", "--force"], env=env, capture_output=True,
                       timeout=120)  # fmt: skip
        shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="module")
def three_dbs(pg_cluster) -> Iterator[list[str]]:  # type: ignore[no-untyped-def]
    names = [create_database(pg_cluster, "fleet") for _ in range(3)]
    for i, name in enumerate(names):
        run_sql(pg_cluster.conn(name), f"CREATE TABLE t AS SELECT generate_series(1, {10 + i}) id")
    yield names
    for name in names:
        drop_database(pg_cluster, name)


def test_three_targets_on_a_ray_cluster_into_s3(ray_head, three_dbs, pg_cluster, s3_server,
                                                 s3_bucket, tmp_path):  # fmt: skip
    conf = tmp_path / "conf" / "target"
    conf.mkdir(parents=True)
    names = [f"crm{i}" for i in range(3)]
    for name, db in zip(names, three_dbs, strict=True):
        url = f"postgresql://{PASSWORD_USER}@127.0.0.1:{pg_cluster.port}/{db}"
        (conf / f"{name}.yaml").write_text(f"name: {name}\nurl: {url}\n")
    # Secrets reach Ray's workers as files their environment names (runtime_env), never
    # on the command line.
    pgpass = tmp_path / "pgpass"
    pgpass.write_text(f"127.0.0.1:{pg_cluster.port}:*:{PASSWORD_USER}:{PASSWORD}\n")
    pgpass.chmod(0o600)
    aws = tmp_path / "aws-credentials"
    aws.write_text(f"[default]\naws_access_key_id = {KEY_ID}\naws_secret_access_key = {SECRET}\n")
    aws.chmod(0o600)
    runtime = (
        f'{{env_vars: {{PGPASSFILE: "{pgpass}", AWS_SHARED_CREDENTIALS_FILE: "{aws}", '
        f'AWS_CONFIG_FILE: "/dev/null", AWS_DEFAULT_REGION: "{REGION}"}}}}'
    )
    env = pgvault_env(
        PGVAULT_CONFIG_DIR=str(tmp_path / "conf"), PGPASSFILE=str(pgpass),
        TMPDIR=str(tmp_path), **s3_server.env(),
    )  # fmt: skip
    remote = [
        f"remote.url=s3://{s3_bucket}/${{target.name}}",
        f"remote.endpoint={s3_server.endpoint}",
    ]
    sets = f"dir={tmp_path}/sets/${{target.name}}"
    res = run_pgvault(
        "backup", "--multirun", f"target={','.join(names)}", sets, *remote,
        "hydra/launcher=ray", f"+hydra.launcher.ray.init.address={ray_head}",
        "+hydra.launcher.ray.init.object_store_memory=null",
        f"+hydra.launcher.ray.init.runtime_env={runtime}",
        "+hydra.launcher.ray.remote.max_retries=0", "sweep.format=json",
        env=env, timeout=600,
    )  # fmt: skip
    assert res.returncode == 0, res.stdout + res.stderr
    doc = json.loads(res.stdout)  # only the summary: Ray and the jobs print to stderr
    assert sorted(j["label"] for j in doc["jobs"]) == names
    assert all(j["status"] == "success" and j["prefix"] for j in doc["jobs"])
    client = s3_server.client()
    for job in doc["jobs"]:
        listing = client.list_objects_v2(Bucket=s3_bucket, Prefix=f"{job['label']}/")
        keys = {o["Key"] for o in listing.get("Contents", [])}
        assert f"{job['label']}/{job['prefix']}-manifest.json" in keys, keys
        listed = run_pgvault("list", "remote=true", "format=json", f"target={job['label']}",
                             *[r.replace("${target.name}", job["label"]) for r in remote],
                             env=env)  # fmt: skip
        assert listed.returncode == 0, listed.stderr
        (one,) = json.loads(listed.stdout)["sets"]
        assert one["prefix"] == job["prefix"] and one["status"] == "complete"
