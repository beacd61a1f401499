"""`pgvault verify`: restore sets into a throwaway cluster and compare them with their
manifests; record each verdict beside its set. Exit 3 when one does not match; exit 1,
recording nothing, when verify could not run (no space, memory, server...).

A set from the remote (remote=true, a remote URL as prefix, or a set name dir lacks) is
staged by pgvault.fetch, verified like a local one, and its record uploaded beside it."""

from __future__ import annotations

from pgvault import fetch, naming
from pgvault.commands import Context, Outcome
from pgvault.config import PgvaultConfig
from pgvault.errors import PgvaultError, VerifyMismatch
from pgvault.ui import Reporter
from pgvault.verify import VerifyResult, sets_to_verify, verify_set, write_record


def run(cfg: PgvaultConfig, ui: Reporter, ctx: Context) -> Outcome:
    opts = cfg.verify
    results = []
    if fetch.wanted(cfg, opts.prefix, opts.remote, ui):
        chosen = fetch.complete_prefixes(cfg) if opts.all and not opts.prefix else [opts.prefix]
        for prefix in chosen:
            results.append(verify_remote(cfg, ui, prefix))
    else:
        for bset in sets_to_verify(cfg):
            result = verify_set(cfg, bset, ui)
            report(ui, result)
            write_record(ui, bset.directory, result)
            results.append(result)
    failed = [r.prefix for r in results if not r.ok]
    if failed:
        raise VerifyMismatch(
            f"{', '.join(failed)} did not verify", "see the report above; keep an older set"
        )
    rows = sum(t.rows or 0 for r in results for t in r.tables)
    return Outcome(results[-1].prefix if len(results) == 1 else None, rows=rows, verified=True)


def verify_remote(cfg: PgvaultConfig, ui: Reporter, prefix: str | None) -> VerifyResult:
    """Verify one remote set from a staged copy. Damaged files are let through the
    fetch: verify's own file check reports them, and the verdict is recorded."""
    with fetch.fetching(cfg, ui, prefix, allow_damaged=True) as got:
        bset = got.bset
        result = verify_set(cfg, bset, ui)
        report(ui, result)
        # The staged copy holds the remote's earlier record, so its history carries on.
        write_record(ui, bset.directory, result)
        name = naming.file_name(bset.prefix, "verify")
        record = bset.directory / name
        if record.exists():
            try:
                got.remote.upload(record, name)
            except PgvaultError as e:
                ui.warn(f"the verdict on {bset.prefix} was not recorded on {got.remote.url}: "
                        f"{e.line()}")  # fmt: skip
    return result


def report(ui: Reporter, result: VerifyResult) -> None:
    how = " as postgres, in a Supabase-shaped cluster" if result.profile == "supabase" else ""
    ui.say(f"{result.prefix} (profile {result.profile}, restored{how} on PostgreSQL "
           f"{result.server_version}):")  # fmt: skip
    for t in result.tables:
        mark = "✓" if t.ok else "✗"
        if t.rows is None:
            detail = "missing"
        elif t.expected_rows is None:
            detail = f"{t.rows} rows, not in the manifest"
        elif t.rows != t.expected_rows:
            detail = f"{t.rows} rows, the backup had {t.expected_rows}"
        elif not t.content_ok:
            detail = f"{t.rows} rows, content differs"
        else:
            detail = f"{t.rows} rows"
        ui.say(f"  {mark} {t.name}: {detail}")
    if not result.restored:
        ui.say("  (the restore failed: the tables above are as the data file holds them)")
    for problem in result.problems:
        ui.say(f"  ✗ {problem}")
    for note in result.unchecked:
        ui.say(f"  ? not checked: {note}")
    rows = sum(t.rows or 0 for t in result.tables)
    if result.ok:
        ui.ok(
            f"{result.prefix} verified: {len(result.tables)} tables, {rows} rows match "
            f"({result.duration_s:.1f} s)"
        )
    else:
        bad = len(result.problems) + sum(not t.ok for t in result.tables)
        ui.say(f"✗ {result.prefix} does NOT match its backup: {bad} problem(s)")
