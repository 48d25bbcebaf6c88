"""Resolve requested symbols with the kernel's kconfig and explain every difference.

base config (file, /proc/config.gz, or the arch defconfig) -> optional localmodconfig ->
+ fragment -> `make olddefconfig` in a scratch O= dir; then each requested symbol is
compared with the final .config and, where it differs, classified from what the kernel's
own kconfig reports about it (kconfig-query): unknown (with known renames), unmet
dependency (naming the failing terms; for a choice member read the way this kconfig
version records it, kernel-config/versions.toml), selected by another symbol, choice
overridden, derived (no prompt: with the choice that sets it), an invalid value, or
overridden by a later request for the same symbol under another name.

Requirements (symbols the profile's machine needs to boot) are checked against the final
config: each one missing is a sentence in `Resolution.unbootable`, explained by the
result of the request for it.
"""

from __future__ import annotations

import contextlib
import json
import re
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from synapse_os.errors import UserError
from synapse_os.kernel.configfile import (
    ConfigLine,
    Requirement,
    format_assignment,
    normalize_value,
    parse_config,
    parse_line,
)
from synapse_os.kernel.kbuild import (
    KconfigBuild,
    SymbolInfo,
    check_source,
    check_tools,
    expand_choice,
)
from synapse_os.kernel.renames import RenameTable, load_renames
from synapse_os.kernel.versions import load_versions

APPLIED = "applied"
UNKNOWN = "unknown"
UNMET = "unmet-dependency"
SELECTED = "selected"
CHOICE = "choice"
DERIVED = "derived"
INVALID = "invalid-value"
OVERRIDDEN = "overridden"
UNEXPLAINED = "unexplained"
TRISTATE_ORDER = {"n": 0, "m": 1, "y": 2}


@dataclass(frozen=True)
class SymbolResult:
    """One requested symbol after resolution. Names are without the CONFIG_ prefix."""

    symbol: str  # as requested
    requested: str
    origin: str  # profile key, fragment file:line, ...
    status: str  # one of the constants above
    actual: str | None  # value in the final .config ("n" when unset); None if unknown
    applied_as: str | None  # the name used in this tree (differs after a rename)
    base: str | None  # value in the base config (after olddefconfig), None if unknown
    reason: str  # empty when applied as asked under the same name
    fix: str | None = None  # what to request instead, when there is a known answer

    @property
    def ok(self) -> bool:
        """Applied, or replaced by a later request for the same symbol (as kconfig does
        with a symbol set twice)."""
        return self.status in (APPLIED, OVERRIDDEN)


@dataclass(frozen=True)
class Resolution:
    """The outcome of one resolution: what the image/VM work asserts on a booted kernel."""

    kernel_version: str
    arch: str
    source: str
    base: str  # the base config's description
    symbols: tuple[SymbolResult, ...]
    config: str = field(repr=False)  # the final .config text
    required: tuple[Requirement, ...] = ()
    unbootable: tuple[str, ...] = ()  # one sentence per requirement the config misses
    supported: bool = True  # the tree's series is in kernel-config/versions.toml
    profile_hash: str = ""  # fragment.kernel_section_hash of the profile resolved

    @property
    def differences(self) -> list[SymbolResult]:
        return [s for s in self.symbols if not s.ok]

    @property
    def unexplained(self) -> list[SymbolResult]:
        return [s for s in self.symbols if s.status == UNEXPLAINED]

    def get(self, symbol: str) -> SymbolResult:
        name = symbol.removeprefix("CONFIG_")
        for s in self.symbols:
            if s.symbol == name:
                return s
        raise KeyError(symbol)

    def expected_config(self) -> dict[str, str]:
        """CONFIG_NAME -> value a kernel built from this .config must report (in
        /proc/config.gz or /boot/config-*), for every requested symbol the tree knows."""
        return {
            f"CONFIG_{s.applied_as}": s.actual
            for s in self.symbols
            if s.applied_as is not None and s.actual is not None
        }

    def check_running_config(self, config_text: str) -> list[str]:
        """Mismatches between expected_config() and a booted kernel's config text."""
        running = parse_config(config_text)
        problems = []
        for name, expected in self.expected_config().items():
            actual = running.get(name.removeprefix("CONFIG_"), "n")
            if normalize_value(actual) != normalize_value(expected):
                problems.append(f"{name}: expected {expected}, running kernel has {actual}")
        return problems

    def as_dict(self) -> dict[str, Any]:
        return {
            "kernel_version": self.kernel_version,
            "arch": self.arch,
            "source": self.source,
            "base": self.base,
            "supported": self.supported,
            "profile_hash": self.profile_hash,
            "symbols": [asdict(s) for s in self.symbols],
            "required": [asdict(r) for r in self.required],
            "unbootable": list(self.unbootable),
            "summary": {
                "requested": len(self.symbols),
                "applied": len(self.symbols) - len(self.differences),
                "differences": len(self.differences),
                "unexplained": len(self.unexplained),
                "unbootable": len(self.unbootable),
            },
        }

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), indent=2, sort_keys=True) + "\n"


def load_resolution(report: Path) -> Resolution:
    """Read back resolution.json (and the .config next to it) written by `kernel config`."""
    data = json.loads(report.read_text())
    config_path = report.parent / ".config"
    return Resolution(
        kernel_version=data["kernel_version"],
        arch=data["arch"],
        source=data["source"],
        base=data["base"],
        symbols=tuple(SymbolResult(**s) for s in data["symbols"]),
        config=config_path.read_text() if config_path.exists() else "",
        required=tuple(Requirement(**r) for r in data.get("required", [])),
        unbootable=tuple(data.get("unbootable", [])),
        supported=bool(data.get("supported", True)),
        profile_hash=str(data.get("profile_hash", "")),
    )


# ---------------------------------------------------------------------------------------
# classification

def _tri_at_least(value: str, wanted: str) -> bool:
    return TRISTATE_ORDER.get(value, 0) >= TRISTATE_ORDER.get(wanted, 0)


def _valid_for_type(info: SymbolInfo, value: str) -> str | None:
    """None if `value` can be given to a symbol of this type, else why not."""
    kind = info.type
    if kind == "bool" and value not in ("y", "n"):
        return f"CONFIG_{info.name} is a bool; accepted values are y and n"
    if kind == "tristate" and value not in ("y", "m", "n"):
        return f"CONFIG_{info.name} is a tristate; accepted values are y, m and n"
    if kind == "integer":
        try:
            int(value, 10)
        except ValueError:
            return f"CONFIG_{info.name} is an integer; {value!r} is not a whole number"
    if kind == "hex":
        try:
            int(value, 16)
        except ValueError:
            return f"CONFIG_{info.name} is hex; {value!r} is not a hexadecimal number"
    return None


def _derived_fix(info: SymbolInfo, requested: str) -> str | None:
    """The condition of the default that yields `requested`, e.g. HZ=300 -> CONFIG_HZ_300=y."""
    for value, cond, _ in info.defaults:
        if normalize_value(value) == normalize_value(requested) and cond != "y":
            if cond.replace("_", "").isalnum():
                return f"CONFIG_{cond}=y"
            return f"make this true: {cond}"
    return None


def classify(
    symbol: str, requested: str, actual: str, info: SymbolInfo,
    requested_names: Sequence[str], choice_member_dependency: str = "dir_dep",
) -> tuple[str, str, str | None]:
    """(status, reason, fix) for a known symbol whose final value differs from the request.
    `choice_member_dependency` says how this kconfig version records a choice member's
    dependency (kernel-config/versions.toml)."""
    name = f"CONFIG_{info.name}"
    dep_value, dep_expr, dep_missing = info.dependency(choice_member_dependency)
    invalid = _valid_for_type(info, requested)
    if invalid:
        return INVALID, invalid, None
    tristate_like = info.type in ("bool", "tristate")
    wants_more = tristate_like and not _tri_at_least(actual, requested)
    wants_less = tristate_like and _tri_at_least(actual, requested) and actual != requested

    member = f" (in the choice '{info.choice}')" if info.choice is not None else ""
    if wants_more and dep_value == "n" and info.visible == "n":
        missing = ", ".join(dep_missing) or dep_expr
        return UNMET, f"{name}{member} depends on {dep_expr}; not met: {missing}", None
    if wants_more and dep_value == "m" and requested == "y":
        return UNMET, f"{name}{member} is limited to m by its dependency {dep_expr}", None
    if wants_less and info.rev_value != "n" and info.rev_terms:
        selectors = "; ".join(info.rev_terms)
        first = info.rev_terms[0].split(" ", 1)[0]
        return SELECTED, f"{name} is selected by {selectors}", f"disable CONFIG_{first} first"
    if info.choice is not None and info.visible != "n":
        chosen = [m for m, v in info.choice_members if v == "y" and m != info.name]
        if wants_more and chosen:
            other = chosen[0]
            why = (
                f"CONFIG_{other} was requested later in the same choice"
                if other in requested_names
                else f"the choice kept CONFIG_{other}"
            )
            return CHOICE, f"{name} is in the choice '{info.choice}' and {why}", None
        if wants_less:
            members = ", ".join(f"CONFIG_{m}" for m, _ in info.choice_members if m != info.name)
            return (
                CHOICE,
                f"{name} is the selected value of the choice '{info.choice}'; a choice always "
                f"has one value, so request another of: {members}",
                None,
            )
    if not info.prompts or info.visible == "n":
        fix = _derived_fix(info, requested)
        if not info.prompts:
            why = f"{name} has no prompt: its value is derived from other symbols"
        else:
            conds = " || ".join(c for _, c, _ in info.prompts)
            why = f"{name} can only be set when its prompt is visible ({conds}), which it is not"
        return DERIVED, why + (f"; set {fix} instead" if fix else ""), fix
    if info.type in ("integer", "hex") and info.ranges:
        low, high = info.ranges[0]
        return INVALID, f"{name} accepts {low}..{high}; {requested} was rejected", None
    return UNEXPLAINED, (
        f"{name} came out {actual}; kconfig reports visible={info.visible}, "
        f"depends on {dep_expr} [={dep_value}], selected [={info.rev_value}]"
    ), None


def unknown_reason(symbol: str, version: str, renames: RenameTable) -> str:
    reason = f"CONFIG_{symbol} is not a symbol in Linux {version}"
    aliases = renames.aliases(symbol)
    if aliases:
        reason += f"; {aliases[0][1].describe()}, and this tree has neither name"
    if symbol in renames.notes:
        reason += f"; {renames.notes[symbol]}"
    return reason


def _actual(final: dict[str, str], info: SymbolInfo) -> str:
    if info.name in final:
        return final[info.name]
    return "n" if info.type in ("bool", "tristate") else ""


# ---------------------------------------------------------------------------------------
# the pipeline

Progress = Callable[[str], None]


def merge_config(base_text: str, lines: Sequence[ConfigLine]) -> str:
    """Base config with the requested assignments replacing the base's, appended last."""
    requested = {line.symbol for line in lines}
    kept = [
        line for line in base_text.splitlines()
        if (parsed := parse_line(line)) is None or parsed[0] not in requested
    ]
    kept += ["", "# Synapse fragment"]
    kept += [format_assignment(line.symbol, line.value) for line in lines]
    return "\n".join(kept) + "\n"


def _meets(actual: str, wanted: str) -> bool:
    if wanted in TRISTATE_ORDER:
        return _tri_at_least(actual, wanted)
    return normalize_value(actual) == normalize_value(wanted)


def _overridden_reason(r: ConfigLine, later: ConfigLine, name: str,
                       renames: RenameTable) -> str:
    if later.symbol == r.symbol:
        same = "it is requested again"
    else:
        link = next((rn.describe() for alias, rn in renames.aliases(r.symbol)
                     if alias == later.symbol), f"both are CONFIG_{name} in this tree")
        same = f"it is requested again as CONFIG_{later.symbol} ({link})"
    return (f"CONFIG_{r.symbol}={r.value} was not applied: {same} with value {later.value} "
            f"by {later.origin}, and the later request wins")


def resolve(
    requests: Sequence[ConfigLine],
    source: Path,
    *,
    base_text: str | None = None,
    base_label: str = "defconfig",
    strict_origins: frozenset[str] = frozenset(),
    lsmod_text: str | None = None,
    arch: str = "x86",
    progress: Progress | None = None,
    workdir: Path | None = None,
    requirements: Sequence[Requirement] = (),
    profile_hash: str = "",
) -> Resolution:
    """Resolve `requests` against the tree at `source`.

    Requests whose origin starts with one of `strict_origins` (user fragment files) must
    name symbols this tree knows (directly or through a rename) with values their type
    accepts: otherwise one UserError naming every such line. `requirements` are checked
    against the final config (Resolution.unbootable); they should also be requested.
    """
    say = progress or (lambda _msg: None)
    version = check_source(source, arch)
    check_tools()
    renames = load_renames()
    versions = load_versions()
    behaviour = versions.behaviour(version).choice_member_dependency
    with contextlib.ExitStack() as stack:
        tmp = stack.enter_context(
            tempfile.TemporaryDirectory(prefix="synapse-kconfig-", dir=workdir))
        build = KconfigBuild(source, Path(tmp), arch)
        say(f"Linux {version}: base config ({base_label}) through make olddefconfig")
        if base_text is None:
            build.defconfig()
        else:
            build.config_path.write_text(base_text)
            build.olddefconfig()
        if lsmod_text is not None:
            say("trimming modules with make localmodconfig")
            lsmod = Path(tmp) / "lsmod.txt"
            lsmod.write_text(lsmod_text)
            build.localmodconfig(lsmod)
        normalized_base = build.config_path.read_text()
        base_values = parse_config(normalized_base)

        say("looking the requested symbols up in Kconfig")
        wanted = [r.symbol for r in requests] + [q.symbol for q in requirements]
        candidates = list(wanted)
        for symbol in wanted:
            candidates += [alias for alias, _ in renames.aliases(symbol)]
        # one kconfig-query process answers before and after the fragment: Kconfig is
        # parsed (with its toolchain probes) once for both
        kconfig = stack.enter_context(build.session())
        kconfig.read(".config")
        before = kconfig.query(candidates)
        known = {n for n, i in before.items() if i.known}

        def tree_name(symbol: str) -> str | None:
            if symbol in known:
                return symbol
            return next((a for a, _ in renames.aliases(symbol) if a in known), None)

        applied_as = {index: tree_name(r.symbol) for index, r in enumerate(requests)}
        problems = []
        for index, r in enumerate(requests):
            if not any(r.origin.startswith(o) for o in strict_origins):
                continue
            name = applied_as[index]
            if name is None:
                problems.append(f"{r.origin}: {unknown_reason(r.symbol, version, renames)}")
            elif (invalid := _valid_for_type(before[name], normalize_value(r.value))):
                problems.append(f"{r.origin}: {invalid}, not {r.value!r}")
        if problems:
            raise UserError(
                f"{len(problems)} fragment line(s) cannot be applied to Linux {version}: "
                + "; ".join(problems)
                + " (fix or remove them; `synapse kernel explain CONFIG_NAME` shows a symbol)"
            )
        last_for = {name: index for index, name in applied_as.items() if name is not None}
        effective = [
            ConfigLine(name, r.value, r.origin)
            for index, r in enumerate(requests)
            if (name := applied_as[index]) is not None and last_for[name] == index
        ]
        say("make olddefconfig with the fragment")
        build.config_path.write_text(merge_config(normalized_base, effective))
        build.olddefconfig()
        final_text = build.config_path.read_text()
        final = parse_config(final_text)
        say("explaining differences with the kernel's kconfig")
        kconfig.read(".config")
        infos = kconfig.query(sorted(set(last_for)))

    requested_names = [r.symbol for r in requests]
    results = []
    for index, r in enumerate(requests):
        name = applied_as[index]
        if name is None:
            results.append(SymbolResult(r.symbol, r.value, r.origin, UNKNOWN, None, None,
                                        None, unknown_reason(r.symbol, version, renames)))
            continue
        info = infos[name]
        actual = _actual(final, info)
        base = base_values.get(name, "n" if info.type in ("bool", "tristate") else "")
        renamed = ""
        if name != r.symbol:
            rename = next(rn for alias, rn in renames.aliases(r.symbol) if alias == name)
            renamed = f"applied as CONFIG_{name}: {rename.describe()}"
        later = requests[last_for[name]]
        if last_for[name] != index and normalize_value(later.value) != normalize_value(r.value):
            results.append(SymbolResult(r.symbol, r.value, r.origin, OVERRIDDEN, actual, name,
                                        base, _overridden_reason(r, later, name, renames)))
            continue
        if normalize_value(actual) == normalize_value(r.value):
            results.append(SymbolResult(r.symbol, r.value, r.origin, APPLIED, actual, name,
                                        base, renamed))
            continue
        status, reason, fix = classify(r.symbol, r.value, actual, info,
                                       requested_names[index + 1:], behaviour)
        if renamed:
            reason = f"{renamed}; {reason}"
        results.append(SymbolResult(r.symbol, r.value, r.origin, status, actual, name, base,
                                    reason, fix))

    unbootable = []
    for need in requirements:
        name = tree_name(need.symbol)
        if name is None:
            unbootable.append(f"CONFIG_{need.symbol}={need.value} is needed by {need.reason}, "
                              f"but Linux {version} has no such symbol")
            continue
        actual = final.get(name, "n")
        if _meets(actual, need.value):
            continue
        result = next((res for res in reversed(results)
                       if res.applied_as == name and res.status != OVERRIDDEN), None)
        if result is None:
            why = "nothing requested it"
        elif result.ok:
            why = f"{result.origin} asks for {result.requested}"
        else:
            why = result.reason
        unbootable.append(f"CONFIG_{name}={need.value} is needed by {need.reason}, but the "
                          f"config has {actual}: {why}")
    return Resolution(version, arch, str(source), base_label, tuple(results), final_text,
                      tuple(requirements), tuple(unbootable),
                      versions.supported(version) is not None, profile_hash)


def explain(symbol: str, source: Path, *, config_text: str | None = None,
            arch: str = "x86") -> tuple[str, SymbolInfo, str]:
    """(kernel version, what kconfig says about `symbol`, a note) against a config
    (default: the arch defconfig). A name this tree knows under a rename is answered for
    the tree's name, with the rename in the note. A choice member's dependency is read
    the way this kconfig version records it (kernel-config/versions.toml)."""
    version = check_source(source, arch)
    check_tools()
    name = symbol.removeprefix("CONFIG_")
    renames = load_renames()
    behaviour = load_versions().behaviour(version).choice_member_dependency
    aliases = renames.aliases(name)
    with tempfile.TemporaryDirectory(prefix="synapse-kconfig-") as tmp:
        build = KconfigBuild(source, Path(tmp), arch)
        if config_text is None:
            build.defconfig()
        else:
            build.config_path.write_text(config_text)
            build.olddefconfig()
        infos = build.query([name, *(a for a, _ in aliases)], help_text=True)

    def answer(info: SymbolInfo) -> SymbolInfo:
        value, expr, missing = info.dependency(behaviour)
        condition = re.sub(r" \[=[^\]]*\]", "", info.choice_dep_expr)
        prompts = [(text, expand_choice(cond, condition), active)
                   for text, cond, active in info.prompts]
        return replace(info, dep_value=value, dep_expr=expr, dep_missing=missing,
                       prompts=prompts)

    if infos[name].known:
        return version, answer(infos[name]), ""
    for alias, rename in aliases:
        if infos[alias].known:
            return (version, answer(infos[alias]),
                    f"this tree calls it CONFIG_{alias}: {rename.describe()}")
    return version, infos[name], unknown_reason(name, version, renames)
