"""Apply a plan as one journaled transaction; undo transactions byte for byte.

Crash policy (documented in `synapse apply --help`): a transaction found unfinished
("in-progress" or "rolling-back") by the next apply or rollback is always rolled back
first, restoring every file it may have touched from its journal; apply then plans again
from that original state, so re-running apply converges to the full result and running
rollback restores the original tree.

Order inside one file step: keep the original (hard link into backups/), journal the
entry, create missing parent directories, write the new file atomically, journal "done".
The journal entry exists before the target is touched, so undo knows every path at risk.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from synapse_os import proc
from synapse_os.apply import activate, faults
from synapse_os.apply.fsops import (
    FileState,
    keep_original,
    make_dirs,
    missing_parents,
    remove_durably,
    remove_empty_dirs,
    remove_if_present,
    restore,
    snapshot,
    write_atomic,
)
from synapse_os.apply.journal import (
    APPLIED,
    FAILED,
    IN_PROGRESS,
    ROLLED_BACK,
    ROLLING_BACK,
    UNFINISHED,
    Journal,
    all_journals,
    find,
    new_journal,
    now,
)
from synapse_os.apply.plan import UNIT_DIR, FileChange, Plan
from synapse_os.apply.untrusted import confined
from synapse_os.errors import OperationError, UserError
from synapse_os.tunables import SystemState
from synapse_os.tunables.files import keeps_permission_bits


@dataclass
class Outcome:
    journal: Journal | None
    warnings: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def refuse_live_without_root(root: Path) -> None:
    if root.resolve() == Path("/") and os.geteuid() != 0:
        raise UserError(
            "changing the running system (--root /) needs root; rerun with sudo, "
            "or pass --root DIR to act on a mounted target or a test tree"
        )


# --- apply ---------------------------------------------------------------------------

def execute(plan: Plan) -> Outcome:
    """Carry out a non-empty plan; on an error undo what was done and raise."""
    root = plan.root
    try:
        journal = new_journal(root, plan.profile.name, plan.profile.hash(), plan.live)
    except OSError as exc:
        raise OperationError(
            f"cannot start a transaction under {root}: {exc.strerror} ({exc.filename}); "
            "nothing was changed"
        ) from None
    try:
        if plan.live:
            journal.live_values = activate.read_live_values(plan.state)
            journal.save("live values")
        for n, change in enumerate(plan.files):
            _apply_file(journal, n, change)
        if plan.units:
            _apply_units(journal, plan)
    except (OSError, OperationError) as exc:
        raise _failed(journal, exc) from None
    outcome = Outcome(journal)
    if plan.live and plan.activations:
        records, errors = activate.run_activations(plan.activations)
        journal.activations = records
        outcome.errors = errors
        outcome.warnings = [f"{' '.join(r['argv'])} failed (optional): {r['detail']}"  # type: ignore[arg-type]
                            for r in records if not r["ok"] and not r["required"]]
    journal.reboot_reasons = plan.reboot_reasons
    journal.warnings = outcome.warnings + outcome.errors
    journal.state = APPLIED
    journal.finished = now()
    try:
        journal.save("applied")
    except OSError as exc:  # a journal that cannot be completely written undoes the apply
        journal.state = IN_PROGRESS
        raise _failed(journal, exc) from None
    return outcome


def _failed(journal: Journal, exc: Exception) -> OperationError:
    what = f"{exc.strerror}: {exc.filename}" if isinstance(exc, OSError) else str(exc)
    try:
        undo(journal, final_state=FAILED, error=what, journal_optional=True)
    except (OSError, OperationError) as undo_exc:
        return OperationError(
            f"apply failed ({what}) and undoing it failed too ({undo_exc}); transaction "
            f"{journal.id} stays unfinished: run `synapse rollback` once the cause is fixed"
        )
    return OperationError(
        f"apply failed ({what}); every change was undone, the target is as before "
        f"(transaction {journal.id} recorded as failed)"
    )


def _tmp_for(path: Path, journal: Journal) -> Path:
    return path.with_name(f".{path.name}.synapse-{journal.id}.tmp")


def _apply_file(journal: Journal, n: int, change: FileChange) -> None:
    root = journal.root
    path = confined(root, change.rel, "the planned file")
    current = snapshot(path)
    if current != change.current:
        raise OperationError(f"{path} changed while the plan was made; run apply again")
    backup = None
    if current.kind == "file":
        backup = f"{n:04d}"
        keep_original(path, journal.backups / backup)
        faults.checkpoint(f"backup {path}")
    dirs = missing_parents(path, root)
    tmp = _tmp_for(path, journal)
    entry: dict[str, Any] = {
        "kind": "file", "path": change.rel, "action": change.action,
        "original": current.as_dict(), "new": change.new_state().as_dict(),
        "backup": backup, "tmp": str(tmp.relative_to(root)),
        "created_dirs": [str(d.relative_to(root)) for d in dirs], "status": "started",
    }
    journal.entries.append(entry)
    journal.save(f"started {change.rel}")
    for d in dirs:
        make_dirs([d])
        faults.checkpoint(f"mkdir {d}")
    if change.new is None:
        remove_durably(path)
    else:
        write_atomic(path, tmp, change.new.content if change.new.link is None else None,
                     change.new.mode, change.new.link)
    entry["status"] = "done"
    journal.save(f"done {change.rel}")


def unit_links(root: Path) -> dict[str, str]:
    """Directories and symlinks under etc/systemd/system ("dir" or "link:TARGET")."""
    base = root / UNIT_DIR
    out: dict[str, str] = {}
    if not base.is_dir():
        return out
    for dirpath, dirnames, filenames in os.walk(base):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            if p.is_symlink():
                out[rel] = "link:" + os.readlink(p)
            elif p.is_dir():
                out[rel] = "dir"
    return out


def _diff_links(before: dict[str, str], after: dict[str, str]) -> dict[str, list[str]]:
    return {rel: [before.get(rel, "absent"), after.get(rel, "absent")]
            for rel in sorted(set(before) | set(after)) if before.get(rel) != after.get(rel)}


def _apply_units(journal: Journal, plan: Plan) -> None:
    """Enable/disable units with systemctl --root; the symlinks it makes are journaled."""
    root = journal.root
    entry: dict[str, Any] = {
        "kind": "units", "ops": [[u.op, u.unit] for u in plan.units],
        "pre": unit_links(root), "changes": None, "status": "started",
    }
    journal.entries.append(entry)
    journal.save("units started")
    for change in plan.units:
        proc.run(["systemctl", f"--root={root}", change.op, change.unit], timeout=60)
        faults.checkpoint(f"systemctl {change.op} {change.unit}")
    entry["changes"] = _diff_links(entry["pre"], unit_links(root))
    entry["status"] = "done"
    journal.save("units done")


# --- undo ----------------------------------------------------------------------------

def modified_since(journal: Journal) -> list[str]:
    """Files of an applied transaction that no longer hold what it wrote."""
    out = []
    for entry in journal.entries:
        if entry["kind"] == "file":
            now_state = snapshot(journal.root / entry["path"])
            if not now_state.same_content(FileState.from_dict(entry["new"]),
                                          modes=keeps_permission_bits(entry["path"])):
                out.append("/" + entry["path"])
    return out


def _undo_file(journal: Journal, entry: dict[str, Any]) -> bool:
    """Put one file back; True when something had to change."""
    root = journal.root
    path = confined(root, entry["path"], f"transaction {journal.id}")
    remove_if_present(confined(root, entry["tmp"], f"transaction {journal.id}"))
    original = FileState.from_dict(entry["original"])
    changed = False
    if snapshot(path) != original:
        backup = journal.backups / entry["backup"] if entry["backup"] else None
        restore(path, _tmp_for(path, journal), original, backup)
        changed = True
    remove_empty_dirs([root / d for d in entry["created_dirs"]])
    return changed


def _undo_units(journal: Journal, entry: dict[str, Any]) -> None:
    root = journal.root
    changes: dict[str, list[str]] = entry["changes"] or _diff_links(entry["pre"],
                                                                     unit_links(root))
    # links first (deepest first), then directories; recreate directories before links
    for rel, (before, after) in sorted(changes.items(), key=lambda kv: -len(kv[0])):
        path = root / rel
        current = unit_links(root).get(rel, "absent")
        if current == before:
            continue
        if entry["changes"] is not None and current != after:
            journal.warnings.append(f"/{rel} changed since the transaction; left as it is")
            continue
        if current.startswith("link:"):
            remove_durably(path)
        elif current == "dir":
            remove_empty_dirs([path])
    for rel, (before, _after) in sorted(changes.items(), key=lambda kv: len(kv[0])):
        path = confined(root, rel, f"transaction {journal.id}")  # again, at the moment of use
        if before == "dir" and not path.exists():
            make_dirs([path])
        elif before.startswith("link:") and not path.is_symlink():
            os.symlink(before[len("link:"):], path)


def undo(journal: Journal, final_state: str = ROLLED_BACK, error: str | None = None,
         journal_optional: bool = False) -> None:
    """Restore everything the transaction recorded, newest entry first; idempotent.

    `journal_optional`: for an in-process failure (disk full): the journal already says
    "in-progress", which recovery treats exactly like "rolling-back", so a journal write
    that fails must not stop the files from being restored (restoring frees space).
    """
    journal.state = ROLLING_BACK
    try:
        journal.save("rolling back")
    except OSError:
        if not journal_optional:
            raise
    restored: list[str] = []
    absent: list[str] = []
    unit_ops: list[list[str]] = []
    for entry in reversed(journal.entries):
        if entry["kind"] == "file":
            if _undo_file(journal, entry):
                restored.append(entry["path"])
                if entry["original"]["kind"] == "absent":
                    absent.append(entry["path"])
        elif entry["kind"] == "units":
            _undo_units(journal, entry)
            unit_ops.extend(entry["ops"])
        faults.checkpoint(f"undone {entry.get('path', 'units')}")
    if journal.live and (restored or unit_ops):
        enabled = [u for op, u in unit_ops if op == "enable"]
        acts = activate.plan_activations(restored, [], enabled, [], SystemState(), absent)
        records, errors = activate.run_activations(acts)
        journal.activations.extend(records)
        journal.warnings.extend(errors)
    if journal.live:
        journal.warnings.extend(activate.restore_live_values(journal.live_values))
    journal.state = final_state
    journal.error = error if error is not None else journal.error
    journal.rolled_back = now()
    try:
        journal.save("rolled back")
    except OSError:
        if not journal_optional:
            raise


def _undo_or_explain(journal: Journal) -> None:
    try:
        undo(journal)
    except OSError as exc:
        raise OperationError(
            f"rolling back transaction {journal.id} failed ({exc.strerror}: {exc.filename}); "
            "its journal stays unfinished: run `synapse rollback` again once that is fixed"
        ) from None


def unfinished(root: Path) -> bool:
    """Whether a crash left a transaction for `recover` to roll back."""
    return any(j.state in UNFINISHED for j in all_journals(root))


def recover(root: Path) -> list[Journal]:
    """Roll back every unfinished transaction (a crash hit it); returns those recovered."""
    recovered = []
    for journal in all_journals(root):
        if journal.state in UNFINISHED:
            was = journal.state
            _undo_or_explain(journal)
            if was == IN_PROGRESS:
                journal.warnings.append("interrupted while applying; rolled back")
                journal.save("recovered")
            recovered.append(journal)
    return recovered


def rollback(root: Path, tx: str | None, force: bool) -> tuple[list[Journal], list[Journal]]:
    """(recovered, rolled_back). Without TX: the newest applied transaction (or only the
    recovery of an interrupted one). With TX: every applied transaction from the newest
    down to TX, so the target returns to the state before TX."""
    recovered = recover(root)
    applied = [j for j in all_journals(root) if j.state == APPLIED]
    if tx is None:
        targets = [] if recovered else applied[-1:]
    else:
        wanted = find(root, tx)
        if wanted.state != APPLIED:
            if any(j.id == wanted.id for j in recovered):
                return recovered, []
            raise UserError(f"transaction {wanted.id} is {wanted.state}; only an applied "
                            "transaction can be rolled back")
        targets = [j for j in applied if int(j.id.split("-")[0]) >= int(wanted.id.split("-")[0])]
    targets.reverse()
    if not force:
        newer: set[str] = set()  # paths a newer target restores first
        for journal in targets:
            modified = [m for m in modified_since(journal) if m not in newer]
            newer.update("/" + e["path"] for e in journal.entries if e["kind"] == "file")
            if modified:
                raise UserError(
                    f"transaction {journal.id}: {', '.join(modified)} changed after it was "
                    "applied; rollback would overwrite that change; pass --force to restore "
                    "the backed-up original anyway"
                )
    for journal in targets:
        _undo_or_explain(journal)
    return recovered, targets
