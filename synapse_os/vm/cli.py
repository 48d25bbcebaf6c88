"""CLI for VMs: `synapse vm test` (boot + assertions + report) and `synapse vm run`."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import click

from synapse_os.cli import emit_json
from synapse_os.errors import OperationError, UserError


@click.group()
def group() -> None:
    """Boot disk images in QEMU (KVM when it works, else TCG)."""


@group.command("test")
@click.argument("image", type=click.Path(path_type=Path))
@click.option("--profile", "profile_path", type=click.Path(path_type=Path), required=True,
              help="The profile whose settings must be live in the guest.")
@click.option("--junit", type=click.Path(path_type=Path), default=None,
              help="Also write a JUnit XML report here.")
@click.option("--uefi", is_flag=True,
              help="Boot through OVMF and systemd-boot instead of direct kernel boot.")
@click.option("--boot-timeout", type=float, default=600, show_default=True,
              help="Seconds for the guest to reach multi-user.target.")
@click.option("--service-timeout", type=float, default=1200, show_default=True,
              help="Seconds for the inference service to become healthy and answer.")
@click.option("--memory", "memory_mb", type=int, default=2048, show_default=True,
              help="Guest memory in MiB.")
@click.option("--cpus", type=int, default=2, show_default=True)
@click.option("--serial-log", type=click.Path(path_type=Path), default=None,
              help="Keep the guest's serial console log here.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable report.")
def test_cmd(image: Path, profile_path: Path, junit: Path | None, uefi: bool,
             boot_timeout: float, service_timeout: float, memory_mb: int, cpus: int,
             serial_log: Path | None, as_json: bool) -> None:
    """Boot IMAGE, assert every setting of the profile is live, report (exit 1 on failure)."""
    from synapse_os.image.progress import Progress
    from synapse_os.profile import load_profile
    from synapse_os.vm.machine import install_signal_handlers
    from synapse_os.vm.runner import run_vm_test

    profile = load_profile(profile_path)
    _check_image(image)
    install_signal_handlers()
    report = run_vm_test(image, profile, uefi=uefi, boot_timeout=boot_timeout,
                         service_timeout=service_timeout, memory_mb=memory_mb, cpus=cpus,
                         progress=Progress(quiet=as_json), serial_log=serial_log)
    if junit is not None:
        _write_atomic(junit, report.junit_xml())
    if as_json:
        emit_json(report.as_dict())
    else:
        click.echo(report.text(), nl=False)
    if report.infra_error:
        raise OperationError(
            f"infrastructure failure, not an assertion failure: {report.infra_error}"
            + (f"\n--- last serial console lines ---\n{report.console_tail}"
               if report.console_tail and not as_json else "")
        )
    if not report.ok:
        c = report.counts()
        raise OperationError(f"{c['fail']} assertion(s) failed in the guest"
                             + ("" if report.verify.ok or not report.verify.ran
                                else "; synapse verify in the guest disagrees"))


@group.command("run")
@click.argument("image", type=click.Path(path_type=Path))
@click.option("--uefi", is_flag=True, help="Boot through OVMF and systemd-boot.")
@click.option("--memory", "memory_mb", type=int, default=2048, show_default=True)
@click.option("--cpus", type=int, default=2, show_default=True)
@click.option("--persist", is_flag=True,
              help="Write guest changes to the image (default: discard them).")
def run_cmd(image: Path, uefi: bool, memory_mb: int, cpus: int, persist: bool) -> None:
    """Boot IMAGE with its serial console on this terminal (Ctrl-a x quits)."""
    from synapse_os.image import disk
    from synapse_os.vm.machine import _die_with_parent
    from synapse_os.vm.qemu import QemuConfig, kvm_works

    _check_image(image)
    meta = disk.read_metadata(image)
    with tempfile.TemporaryDirectory(prefix="synapse-vm-run.") as tmp:
        config = QemuConfig(image=image, serial_log=None, shell_socket=None,
                            memory_mb=memory_mb, cpus=cpus, kvm=kvm_works(),
                            snapshot=not persist)
        if not uefi:
            disk.extract(image, [str(meta["kernel"]), str(meta["initrd"])], Path(tmp))
            config.kernel = Path(tmp) / Path(str(meta["kernel"])).name
            config.initrd = Path(tmp) / Path(str(meta["initrd"])).name
            config.append = str(meta["cmdline"])
        click.echo(f"booting {image} ({'kvm' if config.kvm else 'tcg'}); Ctrl-a x quits",
                   err=True)
        # QEMU owns the terminal; it dies with us (PDEATHSIG) and Ctrl-C goes to the guest
        proc = subprocess.Popen(config.argv(), preexec_fn=_die_with_parent)
        while True:
            try:
                code = proc.wait()
                break
            except KeyboardInterrupt:
                continue
    if code != 0:
        sys.exit(code)


def _check_image(image: Path) -> None:
    if not image.exists():
        raise UserError(f"{image}: no such image file; build one with "
                        "`synapse image build PROFILE -o IMAGE --test`")
    if not image.is_file():
        raise UserError(f"{image}: is not a file; pass a disk image built by synapse image build")


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)
