"""The `synapse` command: parses arguments and calls one function per command.

Sub-command groups owned by other stages are loaded lazily from LAZY_COMMANDS so that
`synapse render` does not pay for importing the runtime or the bench statistics.
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path
from typing import Any

import click

from synapse_os import __version__
from synapse_os.errors import SynapseError

# command name -> "module:attribute" of a click command or group
LAZY_COMMANDS: dict[str, str] = {
    "kernel": "synapse_os.kernel.cli:group",
    "hw": "synapse_os.kernel.cli:hw_group",
    "apply": "synapse_os.apply.cli:apply_cmd",
    "verify": "synapse_os.apply.cli:verify_cmd",
    "rollback": "synapse_os.apply.cli:rollback_cmd",
    "history": "synapse_os.apply.cli:history_cmd",
    "image": "synapse_os.image.cli:group",
    "build-iso": "synapse_os.image.cli:build_iso_cmd",
    "bundle": "synapse_os.image.cli:bundle_cmd",
    "vm": "synapse_os.vm.cli:group",
    "bench": "synapse_os.bench.cli:group",
    "runtime": "synapse_os.runtime.cli:group",
    "top": "synapse_os.runtime.cli:top_cmd",
    "model": "synapse_os.model.cli:group",
    "fleet": "synapse_os.fleet.cli:group",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(LAZY_COMMANDS))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in LAZY_COMMANDS:
            module_name, attr = LAZY_COMMANDS[cmd_name].split(":")
            try:
                module = importlib.import_module(module_name)
            except ModuleNotFoundError as exc:
                if exc.name and exc.name.startswith("synapse_os"):
                    return None  # stage not built yet
                raise
            cmd = getattr(module, attr, None)
            return cmd if isinstance(cmd, click.Command) else None
        return super().get_command(ctx, cmd_name)


def emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True))


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="synapse")
@click.option("--debug", is_flag=True, help="Show tracebacks and log every command run.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """Turn one YAML profile into a tuned, reproducible Linux system for local LLMs."""
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug
    if debug:
        import logging

        logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")


@cli.command()
@click.argument("profile", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def validate(profile: Path, as_json: bool) -> None:
    """Check PROFILE; print "ok" or one clear error (exit 2)."""
    from synapse_os.profile import load_profile
    from synapse_os.render import render_profile

    loaded = load_profile(profile)
    render_profile(loaded)  # everything validate accepts must render
    if as_json:
        emit_json({"ok": True, "profile": str(profile), "hash": loaded.hash()})
    else:
        click.echo(f"ok: {profile} ({loaded.name}, base {loaded.base})")


@cli.command()
@click.argument("profile", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True,
              help="Directory to write the rendered tree into (replaced atomically).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def render(profile: Path, output: Path, as_json: bool) -> None:
    """Render every artifact for PROFILE into OUTPUT, with manifest.json."""
    from synapse_os.profile import load_profile
    from synapse_os.render import render_to

    loaded = load_profile(profile)
    tree = render_to(loaded, output)
    if as_json:
        emit_json({"output": str(output), "files": len(tree.files), "profile_hash": loaded.hash()})
    else:
        click.echo(f"rendered {len(tree.files)} files into {output}")


@cli.command()
@click.option("--markdown", is_flag=True,
              help="The settings reference (the README's table) instead of JSON Schema.")
def schema(markdown: bool) -> None:
    """Print the profile format as JSON Schema (for editors and validators)."""
    from synapse_os.profile.schema import json_schema, reference_markdown

    if markdown:
        click.echo(reference_markdown(), nl=False)
    else:
        emit_json(json_schema())


@cli.command()
@click.argument("old", type=click.Path(path_type=Path))
@click.argument("new", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def diff(old: Path, new: Path, as_json: bool) -> None:
    """Show what changed between two rendered trees (exit 1 when they differ)."""
    from synapse_os.render.diff import diff_trees

    changes = diff_trees(old, new)
    if as_json:
        emit_json([c.as_dict() for c in changes])
    else:
        for change in changes:
            click.echo(change.text())
        if not changes:
            click.echo("no differences")
    if changes:
        sys.exit(1)


@cli.command()
@click.option("--base", type=click.Choice(["arch", "debian"]), default="arch", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the detected hardware facts "
              "instead, with the profile's hardware section they fill in (key 'hardware').")
def init(base: str, as_json: bool) -> None:
    """Print a profile pre-filled from this machine's hardware."""
    from synapse_os.profile.hardware import detect, hardware_section, profile_yaml

    facts = detect()
    if as_json:
        emit_json(facts.as_dict() | {"hardware": hardware_section(facts)})
    else:
        click.echo(profile_yaml(facts, base=base), nl=False)


def main(argv: list[str] | None = None) -> None:
    debug = "--debug" in (argv if argv is not None else sys.argv[1:])
    try:
        cli.main(args=argv, prog_name="synapse", standalone_mode=False)
    except SynapseError as exc:
        if debug:
            raise
        click.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(1)
    except click.ClickException as exc:
        exc.show()
        sys.exit(2 if exc.exit_code in (1, 2) else exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except Exception as exc:  # a bug, not bad input: keep the traceback behind --debug
        if debug:
            raise
        click.echo(f"internal error: {type(exc).__name__}: {exc} (rerun with --debug)", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
