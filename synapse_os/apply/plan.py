"""The plan: what `apply` would change on a root, computed without changing anything.

Inputs are the rendered tree (its `rootfs/` part is what lands on the target), the
desired `SystemState` and what is on the target now. Only differences become changes, so
a second apply of the same profile has an empty plan.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path

from synapse_os import proc
from synapse_os.apply import activate
from synapse_os.apply.fsops import FileState, sha256_bytes, snapshot
from synapse_os.apply.hostboot import fitted_tree
from synapse_os.apply.journal import APPLIED, UNFINISHED, all_journals
from synapse_os.errors import OperationError
from synapse_os.profile.model import Profile
from synapse_os.render import File, Tree
from synapse_os.tunables import Check, SystemState, desired_state
from synapse_os.tunables.files import file_checks, keeps_permission_bits
from synapse_os.tunables.sysctl import sysctl_path

ROOTFS = "rootfs/"
UNIT_DIR = "etc/systemd/system/"
MAX_DIFF_BYTES = 256 * 1024


@dataclass(frozen=True)
class FileChange:
    rel: str  # relative to the root: "etc/sysctl.d/90-synapse.conf"
    action: str  # create | modify | remove
    current: FileState
    new: File | None  # None for remove

    def new_state(self) -> FileState:
        if self.new is None:
            return FileState("absent")
        if self.new.link is not None:
            return FileState("link", 0o777, link=self.new.link)
        return FileState("file", self.new.mode, sha256=sha256_bytes(self.new.content))

    def as_dict(self) -> dict[str, object]:
        return {"path": "/" + self.rel, "action": self.action,
                "current": self.current.as_dict(), "new": self.new_state().as_dict()}


@dataclass(frozen=True)
class UnitChange:
    op: str  # enable | disable
    unit: str
    current: str  # what `systemctl is-enabled` says now


@dataclass
class Plan:
    root: Path
    live: bool
    profile: Profile
    state: SystemState
    files: list[FileChange] = field(default_factory=list)
    units: list[UnitChange] = field(default_factory=list)
    sysctls: list[tuple[str, str, str]] = field(default_factory=list)  # key, now, wanted
    cmdline: tuple[str, str] | None = None  # (now, wanted) in etc/kernel/cmdline
    reboot_reasons: list[str] = field(default_factory=list)
    activations: list[activate.Activation] = field(default_factory=list)
    interrupted: str | None = None  # an unfinished transaction that will be rolled back first
    notes: list[str] = field(default_factory=list)  # what was left out for this machine, why

    @property
    def empty(self) -> bool:
        return not (self.files or self.units)

    @property
    def masked(self) -> list[str]:
        return [c.rel[len(UNIT_DIR):] for c in self.files
                if c.rel.startswith(UNIT_DIR) and c.new is not None and c.new.link == "/dev/null"]

    def as_dict(self) -> dict[str, object]:
        return {
            "root": str(self.root), "live": self.live, "profile": self.profile.name,
            "profile_hash": self.profile.hash(), "changed": not self.empty,
            "files": [c.as_dict() for c in self.files],
            "units": [{"op": u.op, "unit": u.unit, "current": u.current} for u in self.units]
            + [{"op": "mask", "unit": u, "current": ""} for u in self.masked],
            "sysctls": [{"key": k, "current": a, "wanted": b} for k, a, b in self.sysctls],
            "cmdline": None if self.cmdline is None
            else {"current": self.cmdline[0], "wanted": self.cmdline[1]},
            "reboot_needed": bool(self.reboot_reasons), "reboot_reasons": self.reboot_reasons,
            "activations": [a.as_dict() for a in self.activations],
            "interrupted_transaction": self.interrupted,
            "notes": self.notes,
        }


def rootfs_files(tree: Tree) -> dict[str, File]:
    """The part of a rendered tree that is placed on a target root, keyed by relative path."""
    out: dict[str, File] = {}
    for rel, f in tree.files.items():
        if rel.startswith(ROOTFS):
            target = rel[len(ROOTFS):]
            if target.startswith("/") or ".." in Path(target).parts:
                raise OperationError(f"rendered path {rel!r} escapes the target root")
            out[target] = f
    return out


def rendered_file_checks(tree: Tree, root: str = "/") -> list[Check]:
    """One check per file of the tree that lands on the target (verify and the VM)."""
    return file_checks({rel: (f.mode, f.digest(), f.link)
                        for rel, f in rootfs_files(tree).items()}, root)


def wanted_state(f: File) -> FileState:
    if f.link is not None:
        return FileState("link", 0o777, link=f.link)
    return FileState("file", f.mode, sha256=sha256_bytes(f.content))


def check_inside(root: Path, rel: str) -> Path:
    """`root/rel`, refusing a path whose parent resolves outside the root via a symlink."""
    path = root / rel
    real_root = root.resolve()
    parent = path.parent.resolve()
    if parent != real_root and real_root not in parent.parents:
        raise OperationError(
            f"{path.parent} resolves to {parent}, outside the target root {root}; "
            "refusing to write through it"
        )
    return path


def synapse_created(root: Path) -> dict[str, dict[str, object]]:
    """Files that applied transactions created (absent before) and have not removed since,
    with the state synapse last wrote: candidates for removal when a profile drops them."""
    created: dict[str, dict[str, object]] = {}
    for journal in all_journals(root):
        if journal.state != APPLIED:
            continue
        for entry in journal.entries:
            if entry["kind"] != "file":
                continue
            rel = entry["path"]
            if entry["action"] == "remove":
                created.pop(rel, None)
            elif entry["original"]["kind"] == "absent" or rel in created:
                created[rel] = entry["new"]
    return created


def is_enabled(root: Path, unit: str) -> str:
    result = proc.run(["systemctl", f"--root={root}", "is-enabled", unit], check=False,
                      timeout=30)
    return result.stdout.strip() or "not-found"


def _sysctl_now(root: Path, live: bool, key: str) -> str:
    if live:
        try:
            return " ".join(Path(sysctl_path(key)).read_text().split())
        except OSError:
            return "(not available)"
    conf = root / "etc/sysctl.d/90-synapse.conf"
    try:
        for line in conf.read_text().splitlines():
            name, sep, value = line.partition("=")
            if sep and name.strip() == key:
                return value.strip()
    except OSError:
        pass
    return "(unset)"


def make_plan(profile: Profile, root: Path, tree: Tree | None = None) -> Plan:
    root = Path(root)
    live = root.resolve() == Path("/")
    state = desired_state(profile)
    notes: list[str] = []
    tree = tree if tree is not None else fitted_tree(profile, root, notes)
    files = rootfs_files(tree)
    plan = Plan(root, live, profile, state, notes=notes)
    unfinished = [j for j in all_journals(root) if j.state in UNFINISHED]
    plan.interrupted = unfinished[-1].id if unfinished else None

    for rel, f in sorted(files.items()):
        current = snapshot(check_inside(root, rel))
        if not current.same_content(wanted_state(f), modes=keeps_permission_bits(rel)):
            action = "create" if current.kind == "absent" else "modify"
            plan.files.append(FileChange(rel, action, current, f))
    for rel, written in sorted(synapse_created(root).items()):
        if rel in files:
            continue
        current = snapshot(root / rel)
        if current.kind != "absent" and current.same_content(
                FileState.from_dict(written), modes=keeps_permission_bits(rel)):
            plan.files.append(FileChange(rel, "remove", current, None))

    for unit in state.enable:
        now = is_enabled(root, unit)
        if now != "enabled":
            plan.units.append(UnitChange("enable", unit, now))
    for unit in state.disable:
        now = is_enabled(root, unit)
        if now.startswith("enabled"):
            plan.units.append(UnitChange("disable", unit, now))
    # a unit of an earlier apply that this render drops: disabled too, or its links dangle
    for change in plan.files:
        unit = change.rel.removeprefix(UNIT_DIR)
        if change.action == "remove" and unit != change.rel and "/" not in unit \
                and unit not in state.disable:
            now = is_enabled(root, unit)
            if now.startswith("enabled"):
                plan.units.append(UnitChange("disable", unit, now))

    changed = {c.rel for c in plan.files}
    sysctl_changed = any(r.startswith("etc/sysctl.d/") for r in changed)
    if sysctl_changed or live:
        for key, value in state.sysctl.items():
            now = _sysctl_now(root, live, key)
            if now != " ".join(value.split()):
                plan.sysctls.append((key, now, value))
    if "etc/kernel/cmdline" in changed:
        cmd = next(c for c in plan.files if c.rel == "etc/kernel/cmdline")
        before = (root / cmd.rel).read_text().strip() if cmd.current.kind == "file" else ""
        after = cmd.new.content.decode().strip() if cmd.new is not None else ""
        plan.cmdline = (before, after)
    plan.reboot_reasons = activate.reboot_reasons(changed)
    if live:
        try:
            running = Path("/proc/cmdline").read_text().split()
        except OSError:
            running = []
        missing = [w for w in state.cmdline if w not in running]
        if missing:
            plan.reboot_reasons.append(
                "the running kernel was booted without: " + " ".join(missing))
        plan.activations = activate.plan_activations(
            changed, [u.unit for u in plan.units if u.op == "enable"],
            [u.unit for u in plan.units if u.op == "disable"], plan.masked, state,
            [c.rel for c in plan.files if c.action == "remove"])
    return plan


def file_diff(root: Path, change: FileChange) -> str:
    """A unified diff of one change (symlinks and binary content described in words)."""
    path = "/" + change.rel

    def lines(state: FileState, content: bytes | None) -> list[str]:
        if state.kind == "absent":
            return []
        if state.kind == "link":
            return [f"symlink -> {state.link}\n"]
        if content is None or len(content) > MAX_DIFF_BYTES or b"\0" in content:
            return [f"(binary or large content, sha256 {state.sha256})\n"]
        return content.decode(errors="replace").splitlines(keepends=True)

    old_bytes = (root / change.rel).read_bytes() if change.current.kind == "file" else None
    new_bytes = change.new.content if change.new is not None else None
    old = lines(change.current, old_bytes)
    new = lines(change.new_state(), new_bytes)
    text = "".join(difflib.unified_diff(
        old, new, fromfile="/dev/null" if change.current.kind == "absent" else f"a{path}",
        tofile="/dev/null" if change.new is None else f"b{path}"))
    if not text:  # same content, different permission bits
        text = (f"--- a{path}\n+++ b{path}\n"
                f"mode {change.current.mode:04o} -> {change.new_state().mode:04o}\n")
    return text if text.endswith("\n") else text + "\n"


def plan_text(plan: Plan, diffs: bool = True) -> str:
    out: list[str] = []
    where = "the running system (/)" if plan.live else str(plan.root)
    if plan.interrupted:
        out.append(f"transaction {plan.interrupted} was interrupted; it will be rolled back "
                   "first, then this plan applies\n")
    out.extend(f"note: {n}\n" for n in plan.notes)
    if plan.empty:
        out.append(f"nothing to do: {where} already matches profile {plan.profile.name}\n")
        return "".join(out)
    out.append(f"plan for profile {plan.profile.name} on {where}:\n")
    out.append(f"files ({len(plan.files)}):\n")
    for c in plan.files:
        out.append(f"  {c.action:<7} /{c.rel}\n")
    if diffs:
        out.append("\n")
        for c in plan.files:
            out.append(file_diff(plan.root, c))
        out.append("\n")
    if plan.sysctls:
        out.append("sysctls:\n")
        for key, now, wanted in plan.sysctls:
            out.append(f"  {key}: {now} -> {wanted}\n")
    units = [f"  {u.op} {u.unit} (now {u.current})\n" for u in plan.units]
    units += [f"  mask {u}\n" for u in plan.masked]
    if units:
        out.append("units:\n")
        out.extend(units)
    if plan.cmdline is not None:
        out.append(f"kernel command line:\n  now:    {plan.cmdline[0] or '(none)'}\n"
                   f"  wanted: {plan.cmdline[1]}\n")
    if plan.activations:
        out.append("then run:\n")
        out.extend(f"  {' '.join(a.argv)}\n" for a in plan.activations)
    elif not plan.live:
        out.append("no live activation: the target is not the running system\n")
    if plan.reboot_reasons:
        out.append("reboot needed:\n")
        out.extend(f"  {r}\n" for r in plan.reboot_reasons)
    else:
        out.append("no reboot needed\n")
    return "".join(out)
