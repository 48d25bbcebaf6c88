"""`synapse fleet export | host-profile | report`: thin click wrappers."""

from __future__ import annotations

from pathlib import Path

import click

from synapse_os.cli import emit_json


@click.group()
def group() -> None:
    """One profile across many hosts with Ansible: export a role, report the results."""


@group.command("export")
@click.argument("profile", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True,
              help="Directory for the role, site.yml and the example inventory (created, or "
              "updated when it holds an earlier export; results/ and group_vars are kept).")
@click.option("--wheel", type=click.Path(path_type=Path),
              help="Ship this synapse_os wheel instead of building one of this checkout.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def export_cmd(profile: Path, output: Path, wheel: Path | None, as_json: bool) -> None:
    """Write an Ansible role + example playbook that applies PROFILE on every host."""
    from synapse_os.fleet.export import export, resolved_profile_text
    from synapse_os.profile import load_profile

    loaded = load_profile(profile)
    done = export(loaded, resolved_profile_text(loaded), output, wheel)
    if as_json:
        emit_json(done.as_dict())
    else:
        click.echo(f"exported profile {loaded.name} to {output} (wheel {done.wheel}); run: "
                   f"ansible-playbook -i INVENTORY {output / 'site.yml'} --check --diff")


@group.command("host-profile")
@click.argument("exported", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="The host's profile (replaced only when it changes).")
@click.option("--hardware", "hardware_json", metavar="JSON",
              help="The host's hardware keys as a JSON object (what host_vars give).")
@click.option("--detect", is_flag=True, help="Read the hardware keys from this machine.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def host_profile_cmd(exported: Path, output: Path, hardware_json: str | None, detect: bool,
                     as_json: bool) -> None:
    """Write a profile that extends EXPORTED with this host's hardware section."""
    from synapse_os.errors import UserError
    from synapse_os.fleet.host import parse_hardware, write_host_profile

    if detect and hardware_json is not None:
        raise UserError("--hardware and --detect exclude each other; pass one")
    hardware = parse_hardware(hardware_json) if hardware_json is not None else None
    changed, laid = write_host_profile(exported, output, hardware, detect)
    if as_json:
        emit_json({"changed": changed, "output": str(output), "hardware": laid})
    else:
        click.echo(f"{'wrote' if changed else 'unchanged:'} {output}")


@group.command("report")
@click.argument("results", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True,
              help="Directory for RESULTS.md and fleet-report.json (replaced as a whole).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def report_cmd(results: Path, output: Path, as_json: bool) -> None:
    """Per-host verify counts and bench medians from RESULTS (what the play fetched)."""
    from synapse_os.fleet import report

    hosts, md = report.write(results, output)
    if as_json:
        emit_json({"output": str(output), "hosts": [h.as_dict() for h in hosts]})
        return
    failed = [h.host for h in hosts if h.counts and h.counts["fail"]]
    click.echo(f"report for {len(hosts)} host(s) written to {md}"
               + (f"; verify failed on {', '.join(failed)}" if failed else ""))
