"""`synapse kernel ...` and `synapse hw ...` commands: parse arguments, call one function."""

from __future__ import annotations

import contextlib
import json
import re
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import click
from rich.console import Console

from synapse_os.errors import OperationError, UserError

if TYPE_CHECKING:
    from synapse_os.kernel.configfile import ConfigLine
    from synapse_os.kernel.resolve import Resolution
    from synapse_os.profile.model import Profile

PathArg = click.Path(path_type=Path)


def _load(profile_path: Path) -> Profile:
    from synapse_os.profile import load_profile

    return load_profile(profile_path)


@click.group()
def group() -> None:
    """Kernel config: a tuned .config from the profile, resolved by the kernel's kconfig."""


@group.command("fragment")
@click.argument("profile", type=PathArg)
def fragment_cmd(profile: Path) -> None:
    """Print the Kconfig fragment PROFILE asks for."""
    from synapse_os.kernel.fragment import kernel_fragment

    click.echo(kernel_fragment(_load(profile)), nl=False)


def _resolve_profile(
    profile_path: Path, source: Path, base: Path | None, fragments: tuple[Path, ...],
    hw: Path | None, arch: str, progress: bool,
) -> tuple[Profile, Resolution]:
    from synapse_os.kernel.configfile import check_base_config, parse_fragment, read_config_file
    from synapse_os.kernel.kbuild import install_signal_handlers
    from synapse_os.kernel.resolve_profile import resolve_profile

    install_signal_handlers()
    profile = _load(profile_path)
    if profile.kernel.source != "custom":
        raise UserError(
            f"{profile_path}: kernel.source is 'stock', so there is no kernel config to "
            "resolve; set kernel.source: custom to build a tuned kernel"
        )
    extra: list[ConfigLine] = []
    for frag in fragments:
        extra += parse_fragment(read_config_file_text(frag), str(frag))
    base_text = None
    if base is not None:
        base_text = check_base_config(read_config_file(base, "base config"), base)
    console = Console(stderr=True)
    with contextlib.ExitStack() as stack:
        say = None
        if progress:
            status = stack.enter_context(console.status("resolving the kernel config"))
            steps = time.monotonic()

            def say(message: str) -> None:
                nonlocal steps
                now = time.monotonic()
                console.print(f"[dim]… {message}[/]")
                status.update(f"{message} [dim]({now - steps:.0f} s so far)[/]")

        resolution = resolve_profile(
            profile, source, profile_dir=profile_path.parent, hw=hw, base_text=base_text,
            base_label=str(base) if base else None, fragments=extra,
            strict_origins=frozenset(str(f) for f in fragments), arch=arch, progress=say,
        )
    return profile, resolution


def read_config_file_text(path: Path) -> str:
    """A user fragment's text, or a UserError (fragments may be empty, unlike base configs)."""
    from synapse_os.userfile import read_user_text

    return read_user_text(path, "fragment", "a readable .config fragment")


@group.command("config")
@click.argument("profile", type=PathArg)
@click.option("--source", type=PathArg, required=True,
              help="Unpacked Linux source tree (only read).")
@click.option("--base", type=PathArg, help="Base config: a .config file or /proc/config.gz "
              "(default: the arch defconfig).")
@click.option("--fragment", "fragments", type=PathArg, multiple=True,
              help="Extra fragment applied after the profile's; unknown symbols are errors.")
@click.option("--hw", type=PathArg, help="`synapse hw capture` file: trim modules with "
              "localmodconfig (default: kernel.localmodconfig).")
@click.option("--arch", default="x86", show_default=True, help="Kernel ARCH.")
@click.option("-o", "--output", type=PathArg, required=True,
              help="Directory for .config, synapse.config, resolution.json/.txt "
              "(replaced atomically).")
@click.option("--json", "as_json", is_flag=True, help="Print the resolution as JSON.")
@click.option("--strict", is_flag=True, help="Exit 1 when any requested symbol is not applied.")
@click.option("--allow-unbootable", is_flag=True,
              help="Exit 0 even when the config lacks what the profile's machine needs to boot.")
def config_cmd(profile: Path, source: Path, base: Path | None, fragments: tuple[Path, ...],
               hw: Path | None, arch: str, output: Path, as_json: bool, strict: bool,
               allow_unbootable: bool) -> None:
    """Resolve PROFILE's kernel options against the tree at --source and explain differences.

    The config must also carry what the profile's own machine needs (root file system,
    disk bus, EFI stub, zram, memcg, IKCONFIG...): when it does not, the output is still
    written, and the command fails (exit 1) unless --allow-unbootable."""
    from synapse_os.cli import emit_json
    from synapse_os.kernel.fragment import kernel_fragment
    from synapse_os.kernel.output import write_dir_atomically
    from synapse_os.kernel.report import plain_report, resolution_table, summary_line
    from synapse_os.outdir import check_output_dir

    check_output_dir(output, "resolution.json")
    loaded, resolution = _resolve_profile(profile, source, base, fragments, hw, arch,
                                          progress=not as_json)
    write_dir_atomically(output, {
        ".config": resolution.config,
        "synapse.config": kernel_fragment(loaded),
        "resolution.json": resolution.to_json(),
        "resolution.txt": plain_report(resolution),
    }, marker="resolution.json")
    if as_json:
        emit_json(resolution.as_dict())
    else:
        console = Console()
        if not console.is_terminal:
            console = Console(width=200)
        console.print(resolution_table(resolution))
        console.print(summary_line(resolution))
        console.print(f"wrote {output}/.config and {output}/resolution.json")
    if resolution.unbootable and not allow_unbootable:
        raise OperationError(_unbootable_message(resolution, f"see {output}/resolution.txt"))
    if strict and resolution.differences:
        sys.exit(1)


def _unbootable_message(resolution: Resolution, where: str) -> str:
    count = len(resolution.unbootable)
    return (f"the config cannot boot the profile's machine, {count} required setting(s) "
            f"missing: {'; '.join(resolution.unbootable)} ({where}; pass --allow-unbootable "
            "to accept that)")


@group.command("explain")
@click.argument("symbol")
@click.option("--source", type=PathArg, required=True,
              help="Unpacked Linux source tree (only read).")
@click.option("--config", "config", type=PathArg,
              help="Evaluate against this .config (default: the arch defconfig).")
@click.option("--arch", default="x86", show_default=True)
@click.option("--json", "as_json", is_flag=True)
def explain_cmd(symbol: str, source: Path, config: Path | None, arch: str, as_json: bool) -> None:
    """What the kernel's Kconfig says about SYMBOL: type, dependencies, selects, defaults."""
    from dataclasses import asdict

    from synapse_os.cli import emit_json
    from synapse_os.kernel.configfile import read_config_file
    from synapse_os.kernel.kbuild import install_signal_handlers
    from synapse_os.kernel.report import explain_text
    from synapse_os.kernel.resolve import explain

    install_signal_handlers()
    if not re.match(r"^(CONFIG_)?[A-Za-z0-9_]+$", symbol):
        raise UserError(f"{symbol!r} is not a kernel symbol; write it as CONFIG_NAME")
    text = read_config_file(config, "config") if config is not None else None
    version, info, note = explain(symbol, source, config_text=text, arch=arch)
    if as_json:
        emit_json({"kernel_version": version, "note": note, **asdict(info)})
    else:
        click.echo(explain_text(version, info, note))
    if not info.known:
        sys.exit(1)


@group.command("pkgbuild")
@click.argument("profile", type=PathArg)
@click.option("--resolved", type=PathArg,
              help="Output directory of `synapse kernel config` (has .config, resolution.json).")
@click.option("--source", type=PathArg, help="Resolve now against this tree instead of --resolved.")
@click.option("--base", type=PathArg, help="Base config when resolving now.")
@click.option("-o", "--output", type=PathArg, required=True, help="Directory for the recipes.")
@click.option("--allow-unapplied", is_flag=True,
              help="Build a resolution in which some requested settings did not land "
              "(the recipes then check the values that were resolved).")
@click.option("--allow-unbootable", is_flag=True,
              help="Build a config that lacks what the profile's machine needs to boot.")
@click.option("--json", "as_json", is_flag=True)
def pkgbuild_cmd(profile: Path, resolved: Path | None, source: Path | None, base: Path | None,
                 output: Path, allow_unapplied: bool, allow_unbootable: bool,
                 as_json: bool) -> None:
    """Write the linux-synapse PKGBUILD (Arch) and build-deb.sh (Debian bindeb-pkg).

    A --resolved directory must come from this profile as it is now (its kernel settings'
    hash is recorded in resolution.json) and, when kernel.version is pinned, from that
    kernel version."""
    from synapse_os.cli import emit_json
    from synapse_os.kernel.fragment import kernel_section_hash
    from synapse_os.kernel.output import write_dir_atomically
    from synapse_os.kernel.pkgbuild import check_resolution, render_recipes
    from synapse_os.kernel.resolve import load_resolution
    from synapse_os.outdir import check_output_dir

    check_output_dir(output, "PKGBUILD")
    if (resolved is None) == (source is None):
        raise UserError(
            "pass exactly one of --resolved DIR (from `synapse kernel config`) or --source DIR"
        )
    if resolved is not None:
        report = resolved / "resolution.json"
        if not report.is_file() or not (resolved / ".config").is_file():
            raise UserError(
                f"--resolved {resolved} has no resolution.json and .config; "
                "pass the -o directory of `synapse kernel config`"
            )
        try:
            resolution = load_resolution(report)
        except (ValueError, KeyError, TypeError) as exc:
            raise UserError(f"{report} is not a resolution report ({exc})") from None
        loaded = _load(profile)
        where = f"--resolved {resolved}"
    else:
        assert source is not None
        loaded, resolution = _resolve_profile(profile, source, base, (), None, "x86",
                                              progress=not as_json)
        where = f"the resolution against {source}"
    check_resolution(loaded, resolution, kernel_section_hash(loaded), where,
                     allow_unapplied=allow_unapplied, allow_unbootable=allow_unbootable)
    recipe = render_recipes(loaded, resolution)
    write_dir_atomically(output, recipe.files, "PKGBUILD", recipe.executable)
    if as_json:
        emit_json({"output": str(output), "files": sorted(recipe.files),
                   "kernel_version": resolution.kernel_version})
    else:
        click.echo(f"wrote {', '.join(sorted(recipe.files))} into {output}")
        click.echo(f"Arch: cd {output} && makepkg -si    Debian: {output}/build-deb.sh")


@click.group("hw")
def hw_group() -> None:
    """Hardware facts from the target machine."""


@hw_group.command("capture")
@click.option("-o", "--output", type=PathArg, required=True, help="File to write (JSON).")
@click.option("--root", type=PathArg, default=Path("/"), show_default=True,
              help="Root of the system to describe (its /proc and /sys).")
def capture_cmd(output: Path, root: Path) -> None:
    """Record loaded modules (lsmod) and PCI ids, for kernel.localmodconfig."""
    import os
    import tempfile

    from synapse_os.kernel.hw import capture

    data = capture(root)
    if output.is_dir():
        raise UserError(f"-o {output} is a directory; pass a file path")
    output.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{output.name}.", dir=output.parent)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2, sort_keys=True)
        f.write("\n")
    os.replace(tmp, output)
    click.echo(f"wrote {output}: {len(data['modules'])} modules, {len(data['pci'])} PCI devices")
