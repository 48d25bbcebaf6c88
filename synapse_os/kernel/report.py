"""Human output for resolutions and symbol explanations (rich tables)."""

from __future__ import annotations

import io

from rich.console import Console
from rich.table import Table

from synapse_os.kernel.kbuild import SymbolInfo
from synapse_os.kernel.resolve import APPLIED, UNEXPLAINED, Resolution

STYLE = {APPLIED: "green", UNEXPLAINED: "bold red"}
REQUIRED = "required by "


def resolution_table(resolution: Resolution) -> Table:
    table = Table(
        title=f"Linux {resolution.kernel_version} ({resolution.arch}), base: {resolution.base}",
        show_lines=False,
    )
    for column in ("symbol", "requested", "actual", "status", "asked by", "reason / fix"):
        table.add_column(column, overflow="fold")
    for s in resolution.symbols:
        why = s.reason + (f" -> fix: {s.fix}" if s.fix and s.fix not in s.reason else "")
        origin = s.origin.removeprefix(REQUIRED).split(" (", 1)[0]
        if s.origin.startswith(REQUIRED):
            origin = f"needs: {origin}"
        table.add_row(
            f"CONFIG_{s.symbol}", s.requested, s.actual if s.actual is not None else "-",
            f"[{STYLE.get(s.status, 'yellow')}]{s.status}[/]", origin, why,
        )
    return table


def summary_line(resolution: Resolution) -> str:
    diff = len(resolution.differences)
    text = f"{len(resolution.symbols) - diff}/{len(resolution.symbols)} requested symbols applied"
    if diff:
        text += f", {diff} differ (each explained above)"
    if resolution.unexplained:
        text += f", {len(resolution.unexplained)} UNEXPLAINED"
    if resolution.required:
        missing = len(resolution.unbootable)
        text += (f"; boots the profile's machine ({len(resolution.required)} required "
                 "symbols present)" if not missing else
                 f"; CANNOT BOOT the profile's machine ({missing} required symbol(s) missing)")
    for sentence in resolution.unbootable:
        text += f"\n  unbootable: {sentence}"
    if not resolution.supported:
        from synapse_os.kernel.versions import load_versions

        lines = ", ".join(s.series for s in load_versions().series)
        text += (f"\nnote: Linux {resolution.kernel_version} is not a supported line "
                 f"({lines}; kernel-config/versions.toml): explanations follow the nearest "
                 "known kconfig rules and are untested there")
    return text


def plain_report(resolution: Resolution) -> str:
    """The table as plain text, for resolution.txt."""
    buffer = io.StringIO()
    console = Console(file=buffer, width=200, no_color=True, color_system=None)
    console.print(resolution_table(resolution))
    console.print(summary_line(resolution))
    return buffer.getvalue()


def explain_text(version: str, info: SymbolInfo, note: str = "") -> str:
    if not info.known:
        return note
    lines = [note] if note else []
    lines.append(f"CONFIG_{info.name} in Linux {version}: {info.type}, "
                 f"value {info.value or '(unset)'}")
    lines.append(f"  depends on: {info.dep_expr}  [= {info.dep_value}]")
    if info.rev_terms:
        lines.append("  selected by: " + "; ".join(info.rev_terms))
    for text, cond, value in info.prompts:
        lines.append(f"  prompt: {text!r} visible if {cond} [= {value}]")
    if not info.prompts:
        lines.append("  no prompt: the value is derived (set what its defaults depend on)")
    for value, cond, active in info.defaults:
        lines.append(f"  default {value} if {cond} [= {active}]")
    if info.choice is not None:
        members = ", ".join(f"{m}={v}" for m, v in info.choice_members)
        lines.append(f"  in choice {info.choice!r}: {members}")
    if info.help:
        lines += ["", info.help.rstrip()]
    return "\n".join(lines)
