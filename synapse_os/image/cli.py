"""CLI for images: `synapse image build` and `synapse build-iso`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import click

from synapse_os.cli import emit_json


def install_options(command: Callable[..., None]) -> Callable[..., None]:
    """--test, --cache, --kernel-tarball and --json, shared by `image build` and `bundle`."""
    for option in reversed([
        click.option("--test", "test", is_flag=True,
                     help="Add the VM test driver's root shell (virtio port) and serial "
                          "autologin. Never for machines you deploy."),
        click.option("--cache", "cache_dir", type=click.Path(path_type=Path), default=None,
                     help="Layer cache directory (default ~/.cache/synapse/images)."),
        click.option("--kernel-tarball", type=click.Path(path_type=Path), default=None,
                     help="A custom kernel's source tarball (linux-X.Y.Z.tar.xz) from this "
                          "path instead of kernel.org (an Arch bundle still downloads its "
                          "signature); it must have the sha256 the profile pins."),
        click.option("--json", "as_json", is_flag=True, help="Machine-readable output."),
    ]):
        command = option(command)
    return command


@click.group()
def group() -> None:
    """Build bootable disk images from a profile."""


@group.command("build")
@click.argument("profile", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True,
              help="The disk image file to write (raw, GPT: ESP + root).")
@install_options
def build_cmd(profile: Path, output: Path, test: bool, cache_dir: Path | None,
              kernel_tarball: Path | None, as_json: bool) -> None:
    """Build a bootable disk image of PROFILE into OUTPUT."""
    from synapse_os.image.build import build_image
    from synapse_os.image.cache import LayerCache
    from synapse_os.image.progress import Progress
    from synapse_os.profile import load_profile

    loaded = load_profile(profile)
    info = build_image(loaded, output, test=test, cache=LayerCache(cache_dir),
                       progress=Progress(quiet=as_json), profile_dir=profile.parent,
                       kernel_tarball=kernel_tarball)
    if as_json:
        emit_json(info.as_dict())
    else:
        total = sum(info.timings.values())
        kind = ", test image" if test else ""
        click.echo(f"built {output} ({info.size_bytes / 1024**3:.1f} GiB, profile {info.profile}, "
                   f"kernel {info.kernel_version}{kind}) in {total:.0f} s")


@click.command("bundle")
@click.argument("profile", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True,
              help="Directory for the rendered tree and its bundle (replaced atomically).")
@click.option("--models-root", type=click.Path(path_type=Path), default=Path("/"),
              show_default=True,
              help="The root whose runtime.models paths hold the model files to bundle "
                   "(where `synapse model add --root` stored them).")
@click.option("--without-models", is_flag=True,
              help="Bundle no model files; place them on the installed system yourself.")
@install_options
def bundle_cmd(profile: Path, output: Path, models_root: Path, without_models: bool, test: bool,
               cache_dir: Path | None, kernel_tarball: Path | None, as_json: bool) -> None:
    """Render PROFILE with everything its install needs offline into OUTPUT.

    The model files runtime.models names travel in it too, each checked against the
    sha256 the profile pins. Then, on the target booted from any live medium:
    OUTPUT/install/partition.sh --yes /dev/disk/by-id/DISK, and OUTPUT/install/install.sh
    (no network needed).
    """
    from synapse_os.image.bundle import build_bundle
    from synapse_os.image.cache import LayerCache
    from synapse_os.image.progress import Progress
    from synapse_os.profile import load_profile

    info = build_bundle(load_profile(profile), output, test=test, cache=LayerCache(cache_dir),
                        progress=Progress(quiet=as_json), profile_dir=profile.parent,
                        kernel_tarball=kernel_tarball,
                        models_root=None if without_models else models_root)
    if as_json:
        emit_json(info.as_dict())
    else:
        click.echo(f"bundled {output}: {info.files} files, {info.size_bytes / 1024**2:.0f} MiB "
                   f"({info.packages} packages, {info.wheels} wheels, {info.models} models) in "
                   f"{sum(info.timings.values()):.0f} s")


@click.command("build-iso")
@click.argument("profile", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True,
              help="Directory for the archiso profile (profile/) and the ISO.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def build_iso_cmd(profile: Path, output: Path, as_json: bool) -> None:
    """Render an archiso profile for PROFILE and build the installer ISO with mkarchiso."""
    from synapse_os.image.iso import build_iso
    from synapse_os.profile import load_profile

    result = build_iso(load_profile(profile), output)
    if as_json:
        emit_json(result)
    else:
        click.echo(f"built {result['iso']}")
