"""The container image definition, the Kubernetes manifests and the Nomad job in
pgvault/deploy: they cannot run here, so they are parsed, validated against Kubernetes'
own schemas (kubernetes-validate, strict: an unknown field fails) and a schema of the
Nomad job's parts we rely on, and every pgvault command line in them must be one the CLI
accepts."""

from __future__ import annotations

import copy
import shlex
from pathlib import Path
from typing import Any

import hcl2
import jsonschema
import kubernetes_validate
import pytest
import yaml
from dockerfile_parse import DockerfileParser

from pgvault import arguments, cli
from pgvault.errors import ConfigError

DEPLOY = Path(cli.__file__).parent / "deploy"
K8S_VERSION = "1.30"  # backoffLimitPerIndex is beta (on by default) from 1.29


def k8s_docs(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((DEPLOY / "kubernetes" / name).read_text()) if d]


def accepted(argv: list[str]) -> arguments.Invocation:
    """What the CLI makes of argv (a ConfigError if it would refuse it)."""
    groups = arguments.config_groups(cli.packaged_conf_dir(), None, cli.packaged_conf_dir())
    return arguments.prepare(argv, groups | {"target"})


def pod_spec(doc: dict[str, Any]) -> dict[str, Any]:
    spec = doc["spec"]
    job = spec["jobTemplate"]["spec"] if doc["kind"] == "CronJob" else spec
    return dict(job["template"]["spec"])


@pytest.mark.parametrize("name", ["cronjob.yaml", "indexed-job.yaml"])
def test_the_manifests_are_valid_kubernetes(name):
    docs = k8s_docs(name)
    assert docs
    for doc in docs:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    # The validator is strict: the same manifest with a misspelt field fails.
    broken = copy.deepcopy(next(d for d in docs if d["kind"] in ("CronJob", "Job")))
    spec = broken["spec"]["jobTemplate"]["spec"] if broken["kind"] == "CronJob" else broken["spec"]
    spec["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


def test_the_cronjob_never_overlaps_and_keeps_passwords_out_of_argv():
    (cron,) = [d for d in k8s_docs("cronjob.yaml") if d["kind"] == "CronJob"]
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    pod = pod_spec(cron)
    assert pod["restartPolicy"] == "Never" and pod["securityContext"]["runAsNonRoot"] is True
    (container,) = pod["containers"]
    call = accepted(container["args"])
    assert call.command == "backup" and "target=acme" in call.overrides
    assert any(o.startswith("remote.url=s3://") for o in call.overrides)
    secret_env = {e["name"] for e in container["env"] if "valueFrom" in e}
    assert {"PGPASSWORD", "AWS_SECRET_ACCESS_KEY"} <= secret_env
    assert not any("password" in a.lower() for a in container["args"])
    # The ConfigMap's target files are pgvault target configs.
    (conf,) = [d for d in k8s_docs("cronjob.yaml") if d["kind"] == "ConfigMap"]
    for body in conf["data"].values():
        target = yaml.safe_load(body)
        assert set(target) <= {"name", "url", "description", "profile"} and target["name"]


def test_the_indexed_job_gives_each_index_its_own_target():
    (job,) = [d for d in k8s_docs("indexed-job.yaml") if d["kind"] == "Job"]
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed" and spec["parallelism"] < spec["completions"]
    (container,) = pod_spec(job)["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    targets = env["TARGETS"].split()
    assert len(targets) == spec["completions"]
    (conf,) = [d for d in k8s_docs("indexed-job.yaml") if d["kind"] == "ConfigMap"]
    assert sorted(conf["data"]) == sorted(f"{t}.yaml" for t in targets)
    # The script's pgvault line, with index i's target put in: the CLI accepts it.
    script = container["args"][0]
    line = script[script.index("exec pgvault ") + len("exec pgvault ") :].replace("\\\n", " ")
    for target in targets:
        argv = shlex.split(line.replace('"$1"', target).replace("$1", target))
        call = accepted(argv)
        assert f"target={target}" in call.overrides


NOMAD_SCHEMA = {
    "type": "object",
    "required": ["job"],
    "properties": {"job": {"type": "array", "minItems": 1, "items": {
        "type": "object", "minProperties": 1, "additionalProperties": {
            "type": "object",
            "required": ["type", "periodic", "group"],
            "properties": {
                "type": {"const": '"batch"'},
                "periodic": {"type": "array", "items": {
                    "type": "object", "required": ["crons", "prohibit_overlap"],
                    "properties": {"prohibit_overlap": {"const": True},
                                   "crons": {"type": "array", "minItems": 1}}}},
                "group": {"type": "array", "items": {"type": "object", "additionalProperties": {
                    "type": "object", "required": ["task"]}}},
            },
        }}}},
}  # fmt: skip


def test_the_nomad_job_is_a_periodic_batch_job_that_never_overlaps():
    doc = hcl2.load((DEPLOY / "nomad" / "pgvault-acme.nomad.hcl").open())
    jsonschema.validate(doc, NOMAD_SCHEMA)
    (job,) = doc["job"][0].values()
    (group,) = job["group"][0].values()
    (task,) = group["task"][0].values()
    assert task["driver"] == '"docker"'
    args = [a.strip('"') for a in task["config"][0]["args"]]
    call = accepted(args)
    assert call.command == "backup" and "target=acme" in call.overrides
    env_templates = [t for t in task["template"] if t.get("env") is True]
    assert env_templates and "PGPASSWORD=" in env_templates[0]["data"]
    assert not any("password" in a.lower() for a in args)
    broken = copy.deepcopy(doc)
    next(iter(broken["job"][0].values()))["periodic"][0]["prohibit_overlap"] = False
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, NOMAD_SCHEMA)


def test_the_image_installs_pgvault_with_both_kinds_of_programs_and_runs_unprivileged():
    parser = DockerfileParser(fileobj=(DEPLOY / "Containerfile").open("rb"))
    steps = [
        (i["instruction"], i["value"]) for i in parser.structure if i["instruction"] != "COMMENT"
    ]
    assert steps[0][0] == "FROM" and "bookworm" in steps[0][1]
    runs = " ".join(v for k, v in steps if k == "RUN")
    assert "postgresql-client" in runs and "'/src[embedded]'" in runs
    users = [v for k, v in steps if k == "USER"]
    assert users and users[-1] not in ("root", "0")
    assert ("ENTRYPOINT", '["pgvault"]') in steps
    # Built from the repository's top: what it copies is there, and nothing else (a
    # checkout's .venv or .git would go into the image).
    top = Path(cli.__file__).parent.parent
    copied = [v.split()[:-1] for k, v in steps if k == "COPY"]
    assert copied and all((top / src).exists() for srcs in copied for src in srcs)
    assert not any(src in (".", "./") for srcs in copied for src in srcs)
    env = " ".join(v for k, v in steps if k == "ENV")
    assert "PGVAULT_CONFIG_DIR=/etc/pgvault" in env and "/etc/pgvault" in runs
    (cmd,) = [v for k, v in steps if k == "CMD"]
    assert accepted(yaml.safe_load(cmd)).command == "status"


def test_a_bad_pgvault_line_would_be_caught():
    with pytest.raises(ConfigError):
        accepted(["backup", "target.nope=1"])
