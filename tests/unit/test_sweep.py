"""A sweep's plan, its jobs' labels, its summary and the secrets its workers get back."""

from __future__ import annotations

import json
from dataclasses import asdict
from urllib.parse import quote

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from pgvault import masking, sweep


def test_only_the_keys_that_sweep_label_the_jobs():
    words = ["target=a,b", "dir=/x", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
             "retention.days=range(1,3)", "quiet=true"]  # fmt: skip
    assert sweep.swept_keys(words) == ["target", "retention.days"]


def test_a_label_is_the_swept_value(monkeypatch):
    monkeypatch.setenv(sweep.KEYS_ENV, "target")
    assert sweep.label({}, ["command=backup", "target=crm_a"], 0) == "crm_a"
    monkeypatch.setenv(sweep.KEYS_ENV, "dir;target.url")
    words = ["dir=/b/one", r"target.url=postgresql\://u:${pgvault_secret:0}@h/db"]
    assert sweep.label({}, words, 1) == "dir=/b/one target.url=postgresql://u:****@h/db"
    monkeypatch.setenv(sweep.KEYS_ENV, "")
    assert sweep.label({"target": {"name": "local"}}, [], 3) == "local#3"


def outcome(tmp_path, num, label, status, **more):  # type: ignore[no-untyped-def]
    o = sweep.JobOutcome(num=num, label=label, status=status, **more)
    (tmp_path / f"outcome-{num}.json").write_text(json.dumps(asdict(o)))


def test_the_summary_names_every_failed_job_and_fails(tmp_path, capsys):
    outcome(tmp_path, 0, "a", "success", exit_code=0, prefix="backup-2026-01-01-000000",
            size_bytes=2048)  # fmt: skip
    outcome(tmp_path, 1, "b", "failure", error="PostgreSQL does not appear to be running")
    outcome(tmp_path, 2, "c", "timeout", exit_code=124, error="still running")
    with pytest.raises(sweep.SweepFailed) as e:
        sweep.summarize(str(tmp_path))
    assert e.value.what == "2 of 3 jobs failed: b, c"
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["job", "result", "set", "size", "time", "error"]
    assert out[1].split()[:3] == ["a", "ok", "backup-2026-01-01-000000"]
    assert out[2].split()[:2] == ["b", "failure"] and out[2].endswith("be running")
    assert out[-1] == "1 of 3 jobs succeeded"


def test_all_good_is_no_error_and_json_is_one_document(tmp_path, capsys):
    outcome(tmp_path, 1, "b", "success", exit_code=0, format="json")
    outcome(tmp_path, 0, "a", "failure", format="json")
    # What the launcher returned wins over a job's file (a worker on another machine
    # writes none), and a job known only from either still counts.
    came_back = [
        sweep.JobOutcome(num=0, label="a", status="success", exit_code=0, format="json"),
        sweep.JobOutcome(num=2, label="c", status="success", exit_code=0, format="json"),
    ]
    sweep.summarize(str(tmp_path), came_back)
    doc = json.loads(capsys.readouterr().out)
    assert [j["label"] for j in doc["jobs"]] == ["a", "b", "c"]
    assert "format" not in doc["jobs"][0]


def test_a_launcher_that_stopped_is_reported_with_what_ended(tmp_path, capsys):
    outcome(tmp_path, 0, "a", "success", exit_code=0)
    with pytest.raises(sweep.SweepFailed) as e:
        sweep.summarize(str(tmp_path), stopped=RuntimeError("worker died"))
    assert "the sweep stopped after 1 job(s): worker died" in e.value.what
    with pytest.raises(RuntimeError):
        sweep.summarize(str(tmp_path / "nothing"), stopped=RuntimeError("before any job"))


@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
               min_size=1, max_size=24))  # fmt: skip
def test_a_jobs_child_gets_every_password_back_as_it_was(secret):
    """The CLI takes the password out of the override (a slot); the job hands the child
    the override as it is and the secrets apart; the child's own concealing leaves the
    slot alone, and the value resolves to the password, whatever its characters."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    from pgvault import arguments

    masking.reset()
    word = f"target.url=postgresql://u:{quote(secret, safe='')}@h/db"
    try:
        OverridesParser.create().parse_override(word)
    except Exception:
        assume(False)  # the CLI refuses what Hydra cannot read before any job
    hidden = arguments.conceal(word)
    assert "${pgvault_secret:0}" in hidden
    secrets = masking.slots()
    masking.reset()  # the child: a process of its own
    masking.adopt(secrets)
    assert arguments.conceal(hidden) == hidden
    value = OverridesParser.create().parse_override(hidden).value()
    resolved = OmegaConf.to_container(OmegaConf.create({"v": value}), resolve=True)
    assert resolved == {"v": f"postgresql://u:{quote(secret, safe='')}@h/db"}
    masking.reset()
