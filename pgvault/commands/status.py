"""`pgvault status`: fresh, verified, last run fine, room for the next set? Exit 0 when
every check passes, 1 with one line per problem (2, as everywhere, for bad config)."""

from __future__ import annotations

import json

from pgvault import catalog, status
from pgvault.commands import Context, Outcome
from pgvault.commands.list import emit
from pgvault.config import OutputFormat, PgvaultConfig
from pgvault.errors import NotFound, PgvaultError
from pgvault.ui import Reporter


class StatusProblem(PgvaultError):
    """A check failed: the backups need a look (not a usage error)."""


def run(cfg: PgvaultConfig, ui: Reporter, ctx: Context) -> Outcome:
    directory = catalog.backup_dir(cfg.dir, create=False)
    if not directory.exists():
        raise NotFound(f"{directory} does not exist", "check dir= or BACKUP_DIR; no backup ran")
    st = status.assess(cfg, directory, ctx.clock())
    if cfg.status.format is OutputFormat.json:
        emit(ui, json.dumps(status.as_json(st, cfg.monitor), indent=2))
    else:
        lines = status.as_text(st)
        if ui.quiet:  # for cron: only the problems
            lines = [ln for ln in lines if ln.startswith("✗")]
        if lines:
            emit(ui, "\n".join(lines))
    if st.problems:
        raise StatusProblem(
            f"{len(st.problems)} check(s) failed for target {cfg.target.name}",
            "see the lines above; `pgvault status format=json` for scripts",
        )
    return Outcome()
