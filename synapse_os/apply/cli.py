"""`synapse apply | verify | rollback | history`: thin click wrappers."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from synapse_os.cli import emit_json

ROOT_OPTION = click.option(
    "--root", type=click.Path(file_okay=False, path_type=Path), default=Path("/"),
    show_default=True,
    help="Act on a mounted target or a test tree instead of the running system.")
JSON_OPTION = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")


def _existing_root(root: Path) -> Path:
    from synapse_os.errors import UserError

    if not root.is_dir():
        raise UserError(f"--root {root}: no such directory; pass the target's root directory")
    return root


@click.command("apply")
@click.argument("profile", type=click.Path(path_type=Path))
@ROOT_OPTION
@click.option("--dry-run", is_flag=True, help="Print the plan (diffs, sysctls, units, "
              "cmdline, reboot) and change nothing.")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@JSON_OPTION
def apply_cmd(profile: Path, root: Path, dry_run: bool, yes: bool, as_json: bool) -> None:
    """Make ROOT match PROFILE: back up, write atomically, activate, journal.

    On the running system (--root /), a profile whose hardware section this machine
    contradicts (vendor, cores, RAM, ISA, GPU) is refused before anything changes.
    Only files that differ are written; a second apply of the same profile changes
    nothing. Every original is kept so `synapse rollback` restores it byte for byte.
    A transaction interrupted by a crash is rolled back by the next apply (which then
    applies afresh) or by `synapse rollback`.
    """
    from synapse_os.apply import journal, plan, rootmount, transaction
    from synapse_os.profile import load_profile

    loaded = load_profile(profile)
    root = _existing_root(root)
    if not dry_run:
        transaction.refuse_live_without_root(root)
    if root.resolve() == Path("/"):
        from synapse_os.profile.hardware import detect, refuse_contradicting
        from synapse_os.tunables.zram import refuse_busy_backing_device

        refuse_contradicting(loaded, detect())
        refuse_busy_backing_device(loaded)
    if dry_run:
        the_plan = plan.make_plan(loaded, root)
        if as_json:
            emit_json(the_plan.as_dict() | {"dry_run": True, "diffs": {
                "/" + c.rel: plan.file_diff(root, c) for c in the_plan.files}})
        else:
            click.echo(plan.plan_text(the_plan), nl=False)
        return
    remount: list[str] = []  # a read-only root not made read-only again
    with journal.locked(root):
        with rootmount.writable(root, remount, needed=transaction.unfinished(root)):
            recovered = transaction.recover(root)
        for j in recovered:
            click.echo(f"rolled back interrupted transaction {j.id}", err=True)
        the_plan = plan.make_plan(loaded, root)
        if the_plan.empty:
            if as_json:
                emit_json(the_plan.as_dict() | {"transaction": None,
                                                "recovered": [j.id for j in recovered]})
            else:
                click.echo(plan.plan_text(the_plan), nl=False)
            return
        if not as_json:
            click.echo(plan.plan_text(the_plan), nl=False)
        if not yes and not click.confirm("apply these changes?", default=False, err=True):
            raise click.exceptions.Abort()
        with rootmount.writable(root, remount):
            outcome = transaction.execute(the_plan)
    assert outcome.journal is not None
    outcome.warnings += remount
    if as_json:
        emit_json(the_plan.as_dict() | {
            "transaction": outcome.journal.id, "recovered": [j.id for j in recovered],
            "activations": outcome.journal.activations, "warnings": outcome.warnings,
            "errors": outcome.errors})
    else:
        for record in outcome.journal.activations:
            mark = "ok" if record["ok"] else "FAILED"
            click.echo(f"ran {' '.join(record['argv'])}: {mark}")
        click.echo(f"applied transaction {outcome.journal.id} "
                   f"({len(the_plan.files)} files, {len(the_plan.units)} unit changes)")
        if the_plan.reboot_reasons:
            click.echo("reboot needed: " + "; ".join(the_plan.reboot_reasons))
        for w in outcome.warnings:
            click.echo(f"warning: {w}", err=True)
    if outcome.errors:
        for e in outcome.errors:
            click.echo(f"error: {e}", err=True)
        click.echo("the files are in place but activation failed; `synapse verify` shows "
                   "what is not live, `synapse rollback` undoes the transaction", err=True)
        sys.exit(1)


@click.command("verify")
@click.argument("profile", type=click.Path(path_type=Path))
@ROOT_OPTION
@click.option("--settings-only", is_flag=True,
              help="Check live settings only, not the files the profile places.")
@JSON_OPTION
def verify_cmd(profile: Path, root: Path, settings_only: bool, as_json: bool) -> None:
    """Compare the live system with PROFILE: a table, exit 1 on drift.

    A value this machine cannot show (no cpufreq in a VM) is "unknown", never "pass".
    """
    from synapse_os.apply.verify import report_text, verify
    from synapse_os.profile import load_profile

    report = verify(load_profile(profile), _existing_root(root), settings_only)
    if as_json:
        emit_json(report.as_dict())
    else:
        click.echo(report_text(report), nl=False)
    if not report.ok:
        sys.exit(1)


@click.command("rollback")
@click.argument("transaction", required=False)
@ROOT_OPTION
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@click.option("--force", is_flag=True,
              help="Restore originals even over files changed since the apply.")
@JSON_OPTION
def rollback_cmd(transaction: str | None, root: Path, yes: bool, force: bool,
                 as_json: bool) -> None:
    """Undo TRANSACTION and every later one (default: the newest), byte for byte.

    An interrupted transaction is always rolled back first.
    """
    from synapse_os.apply import journal, rootmount
    from synapse_os.apply import transaction as tx

    root = _existing_root(root)
    tx.refuse_live_without_root(root)
    if not yes:
        what = f"transaction {transaction} and every later one" if transaction \
            else "the newest transaction"
        if not click.confirm(f"roll back {what} on {root}?", default=False, err=True):
            raise click.exceptions.Abort()
    remount: list[str] = []
    with journal.locked(root), rootmount.writable(root, remount):
        recovered, done = tx.rollback(root, transaction, force)
    for w in remount:
        click.echo(f"warning: {w}", err=True)
    if as_json:
        emit_json({"recovered": [j.summary() for j in recovered],
                   "rolled_back": [j.summary() for j in done]})
        return
    for j in recovered:
        click.echo(f"rolled back interrupted transaction {j.id} ({j.profile})")
    for j in done:
        click.echo(f"rolled back transaction {j.id} ({j.profile}, {len(j.entries)} steps)")
    for j in recovered + done:
        for w in j.warnings:
            click.echo(f"warning: {w}", err=True)
    if not recovered and not done:
        click.echo(f"nothing to roll back under {root}")


@click.command("history")
@ROOT_OPTION
@JSON_OPTION
def history_cmd(root: Path, as_json: bool) -> None:
    """List transactions: time, profile (name and hash), result."""
    from synapse_os.apply.journal import all_journals

    journals = all_journals(_existing_root(root))
    if as_json:
        emit_json([j.summary() for j in journals])
        return
    if not journals:
        click.echo(f"no transactions under {root}")
        return
    for j in journals:
        s = j.summary()
        extra = f"  rolled back {j.rolled_back}" if j.rolled_back else ""
        click.echo(f"{j.id}  {j.started}  {j.profile} {j.profile_hash[:12]}  "
                   f"{j.state:<11}  {s['files']} files{extra}")
