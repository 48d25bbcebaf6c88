"""What every tunable is made of: a live check, an activation, and the tunable itself.

A check is a POSIX shell probe that prints the live value (exit UNKNOWN_RC = this machine
cannot show it, reported as "unknown") plus how to compare it with the desired value.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from synapse_os.profile.model import Profile
    from synapse_os.render import Context, Tree
    from synapse_os.tunables.state import SystemState

Match = Literal["equal", "selected", "token", "one_of", "contains"]
UNKNOWN_RC = 100
# Whether a unit is active can only be read where systemd is PID 1 (not in a chroot/container).
SYSTEMD_UP = f"[ -d /run/systemd/system ] || exit {UNKNOWN_RC};"


@dataclass(frozen=True)
class Check:
    """One live assertion: run `probe` (sh), compare its output with `expected`."""

    id: str
    kind: str
    source: str  # the profile key that declared it
    expected: str
    probe: str
    match: Match = "equal"
    after_reboot: bool = False  # only true once the machine has booted with it

    def evaluate(self, returncode: int, output: str) -> tuple[str, str]:
        """(status, actual) where status is pass | fail | unknown."""
        actual = output.strip()
        if returncode == UNKNOWN_RC:
            return "unknown", actual or "not readable on this machine"
        if returncode != 0:
            return "fail", actual or f"probe exited {returncode}"
        return ("pass" if matches(self.match, self.expected, actual) else "fail"), actual

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def matches(how: Match, expected: str, actual: str) -> bool:
    if how == "equal":
        return actual == expected
    if how == "selected":  # sysfs choice files: "always [madvise] never"
        return f"[{expected}]" in actual.split()
    if how == "token":
        return expected in actual.split()
    if how == "one_of":
        return actual in expected.split("|")
    return expected in actual


def guarded(path: str, command: str) -> str:
    """Probe that reports 'unknown' when `path` (a glob allowed) does not exist here."""
    return f"ls -d {path} >/dev/null 2>&1 || exit {UNKNOWN_RC}; {command}"


def starting(unit: str) -> str:
    """Shell that exits unknown while UNIT (shell-quoted) starts up: a Type=notify engine
    loading its models is activating/start, which is not yet what it will be; the
    activating/auto-restart of a crash loop is not excused."""
    return (f'[ "$(systemctl show -P ActiveState {unit} 2>/dev/null)'
            f'$(systemctl show -P SubState {unit} 2>/dev/null)" = activatingstart ] && '
            f'{{ echo "starting (loading its models)"; exit {UNKNOWN_RC}; }};')


@dataclass(frozen=True)
class Activation:
    name: str
    argv: tuple[str, ...]
    reason: str
    required: bool = True  # False: a failure is a warning (e.g. starting a service)

    def as_dict(self) -> dict[str, object]:
        return {"name": self.name, "argv": list(self.argv), "reason": self.reason}


def _renders_nothing(ctx: Context, tree: Tree) -> None:
    return None


def _activates_nothing(changed: list[str], gone: set[str], with_systemd: bool
                       ) -> list[Activation]:
    return []


def _reads_nothing_live(state: SystemState) -> list[str]:
    return []


@dataclass(frozen=True)
class Tunable:
    """One concern of the running system (sysctls, journald, zram, ...).

    - `desire(profile, sources)`: its part of `SystemState`, as keyword arguments, noting
      in `sources` which profile key declared each setting id;
    - `checks(state)`: one live check per desired setting;
    - `render(ctx, tree)`: the files that carry it onto the target;
    - `activate(changed, gone, with_systemd)`: what makes the running system take its
      changed files (`changed`: paths relative to / written or removed; `gone`: those
      removed; `with_systemd`: systemd is PID 1, so units can be restarted);
    - `live_paths(state)`: the kernel files apply remembers for rollback (not files on
      disk, so a file's undo cannot restore them);
    - `read_at_boot`: its files read by a service at boot -> those services (what the
      stock boot hides before they start).
    """

    name: str
    desire: Callable[[Profile, dict[str, str]], dict[str, object]]
    checks: Callable[[SystemState], list[Check]]
    render: Callable[[Context, Tree], None] = _renders_nothing
    activate: Callable[[list[str], set[str], bool], list[Activation]] = _activates_nothing
    live_paths: Callable[[SystemState], list[str]] = _reads_nothing_live
    read_at_boot: Mapping[str, str] = field(default_factory=dict)


def changed_under(changed: Iterable[str], prefix: str) -> list[str]:
    return [rel for rel in changed if rel.startswith(prefix)]
