"""`synapse model`: take a GGUF in safely, pin it in a profile, and keep the store honest."""

from __future__ import annotations

import sys
from pathlib import Path

import click

ROOT_HELP = "Act on the system mounted at DIR (default: this machine)."


def _emit(data: object) -> None:
    from synapse_os.cli import emit_json

    emit_json(data)


@click.group()
def group() -> None:
    """Inspect a GGUF in a sandbox, store it by content hash, pin it in a profile."""


@group.command("add")
@click.argument("file", type=click.Path(path_type=Path))
@click.argument("profile", type=click.Path(path_type=Path))
@click.option("--role", type=click.Choice(["main", "small", "draft"]), required=True,
              help="Which runtime model this file becomes.")
@click.option("--root", type=click.Path(path_type=Path), default=Path("/"), show_default=True,
              help=ROOT_HELP)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def add_cmd(file: Path, profile: Path, role: str, root: Path, as_json: bool) -> None:
    """Inspect FILE (sandboxed), copy it into <root>/var/ai-data/models/<sha256>.gguf and pin
    it as runtime.models.<role> in PROFILE."""
    from synapse_os.model import intake
    from synapse_os.model.inspect import human, summary

    result = intake.add(file, role, profile, root)
    if as_json:
        _emit(result)
        return
    info = result["inspection"]
    root_opt = "" if str(root) == "/" else f" --root {root}"
    click.echo(summary(info, file))
    click.echo(f"inspected in {result['inspect_seconds']:.1f} s (sandbox: network "
               f"{result['sandbox'].get('network')}, user {result['sandbox'].get('user')}); "
               f"needs {human(result['memory_need'])} at {result['context']} tokens of "
               f"{human(result['memory_budget'])} available")
    click.echo(f"stored {root.joinpath(result['path'].lstrip('/'))}")
    click.echo(f"pinned runtime.models.{role} in {profile}: {result['path']} "
               f"(sha256 {result['sha256']})")
    click.echo(f"next: synapse apply {profile}{root_opt} --dry-run, then synapse apply "
               f"{profile}{root_opt} (renders /etc/synapse/runtime.yaml pointing at it)")


@group.command("list")
@click.option("--root", type=click.Path(path_type=Path), default=Path("/"), show_default=True,
              help=ROOT_HELP)
@click.option("--profile", "profiles", type=click.Path(path_type=Path), multiple=True,
              help="Show which roles this profile pins (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def list_cmd(root: Path, profiles: tuple[Path, ...], as_json: bool) -> None:
    """What is in <root>/var/ai-data/models, with the pins of the given profiles."""
    from synapse_os.model import intake
    from synapse_os.model.inspect import human

    entries = intake.list_models(root, list(profiles))
    if as_json:
        _emit(entries)
        return
    if not entries:
        click.echo(f"no models under {root.joinpath('var/ai-data/models')}")
    for e in entries:
        if e["kind"] == "model" and e.get("inspection"):
            i = e["inspection"]
            pins = f"  pinned: {'; '.join(e['pins'])}" if e["pins"] else ""
            click.echo(f"{e['path']}  {i['architecture']} {i.get('quantization') or '?'} "
                       f"{human(e['size'] or 0)} vocab {i['llama_vocab_size']}{pins}")
        else:
            click.echo(f"{e['name']}  {e['kind']}: {e['problem']}")


@group.command("verify")
@click.option("--root", type=click.Path(path_type=Path), default=Path("/"), show_default=True,
              help=ROOT_HELP)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def verify_cmd(root: Path, as_json: bool) -> None:
    """Recompute every stored model's sha256 against its name and inspection record
    (exit 1 when any entry is wrong)."""
    from synapse_os.model import intake

    results = intake.verify(root)
    if as_json:
        _emit(results)
    else:
        for r in results:
            click.echo(f"{'ok' if r['ok'] else 'FAIL'}  {r.get('path') or r['name']}"
                       + ("" if r["ok"] else f": {r['problem']}"))
        if not results:
            click.echo(f"no models under {root.joinpath('var/ai-data/models')}")
    if not all(r["ok"] for r in results):
        sys.exit(1)


@group.command("remove")
@click.argument("model")
@click.argument("profile", type=click.Path(path_type=Path))
@click.option("--root", type=click.Path(path_type=Path), default=Path("/"), show_default=True,
              help=ROOT_HELP)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def remove_cmd(model: str, profile: Path, root: Path, as_json: bool) -> None:
    """Delete MODEL (sha256 or /var/ai-data/models/<sha256>.gguf) unless PROFILE pins it."""
    from synapse_os.model import intake

    result = intake.remove(model, profile, root)
    if as_json:
        _emit(result)
    else:
        click.echo(f"removed {', '.join(result['removed'])} from "
                   f"{root.joinpath('var/ai-data/models')}")
