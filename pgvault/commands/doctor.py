"""`pgvault doctor`: the target's server, the PostgreSQL programs backup, restore and
verify would use for it and why, and every candidate found. Exit 1 when one is missing
or the server cannot be reached."""

from __future__ import annotations

import json

from pgvault import doctor
from pgvault.commands import Context, Outcome
from pgvault.commands.list import emit
from pgvault.config import OutputFormat, PgvaultConfig
from pgvault.errors import PgvaultError
from pgvault.ui import Reporter


class DoctorProblem(PgvaultError):
    """Something the target needs is missing (not a usage error)."""


def run(cfg: PgvaultConfig, ui: Reporter, ctx: Context) -> Outcome:
    d = doctor.diagnose(cfg)
    if cfg.doctor.format is OutputFormat.json:
        emit(ui, json.dumps(doctor.as_json(d), indent=2))
    else:
        emit(ui, "\n".join(doctor.as_text(d)))
    if d.problems:
        raise DoctorProblem(d.problems[0], "see the lines above; `pgvault doctor format=json`")
    return Outcome()
