"""Finding QEMU and firmware, probing KVM, and building the QEMU command line."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from synapse_os.errors import UserError

QEMU = "qemu-system-x86_64"
QEMU_PACKAGE = "qemu-system-x86"
OVMF_CANDIDATES = (
    "/usr/share/ovmf/OVMF.fd",
    "/usr/share/qemu/OVMF.fd",
    "/usr/share/edk2/x64/OVMF.fd",
    "/usr/share/edk2-ovmf/x64/OVMF.fd",
)
# UEFI with variables that persist across the guest's reboots (bootctl set-oneshot): the
# firmware's code and a writable copy of its variable store, as two flash devices
OVMF_FLASH_CANDIDATES = (
    ("/usr/share/OVMF/OVMF_CODE_4M.fd", "/usr/share/OVMF/OVMF_VARS_4M.fd"),
    ("/usr/share/OVMF/OVMF_CODE.fd", "/usr/share/OVMF/OVMF_VARS.fd"),
    ("/usr/share/edk2/x64/OVMF_CODE.4m.fd", "/usr/share/edk2/x64/OVMF_VARS.4m.fd"),
)
SHELL_PORT = "org.synapse.shell"


def require_qemu() -> str:
    path = shutil.which(QEMU)
    if path is None:
        raise UserError(f"'{QEMU}' was not found on PATH; install it with: "
                        f"apt-get install {QEMU_PACKAGE}")
    return path


def find_ovmf() -> str:
    override = os.environ.get("SYNAPSE_OVMF")
    for candidate in ((override,) if override else OVMF_CANDIDATES):
        if candidate and Path(candidate).is_file():
            return candidate
    raise UserError("UEFI firmware (OVMF.fd) was not found; install it with: apt-get install ovmf "
                    "(or boot with --direct, which needs no firmware)")


def find_ovmf_flash() -> tuple[str, str]:
    """(code, variable store template) of a flash-based OVMF."""
    for code, variables in OVMF_FLASH_CANDIDATES:
        if Path(code).is_file() and Path(variables).is_file():
            return code, variables
    raise UserError("UEFI firmware with a variable store (OVMF_CODE*.fd and OVMF_VARS*.fd) was "
                    "not found; install it with: apt-get install ovmf")


KVM_PROBE_SECONDS = 10.0  # OVMF reaches its boot manager in 1-3 s under a working KVM
OVMF_BOOT_MANAGER = b"BdsDxe"  # what OVMF prints on the serial console within a second or two


@cache
def kvm_works() -> bool:
    """True only if a KVM guest actually runs here, in long mode. Nested /dev/kvm can exist
    and fail to start a guest, or start one that hangs once it leaves real mode (seen on a
    Firecracker host: SeaBIOS runs, Linux stops after "Probing EDD", OVMF prints nothing).
    So the probe boots OVMF, 64-bit firmware, under KVM and waits for its boot manager on
    the serial console; without OVMF nothing is proven and TCG is used."""
    if os.environ.get("SYNAPSE_NO_KVM"):
        return False
    if not os.access("/dev/kvm", os.R_OK | os.W_OK) or shutil.which(QEMU) is None:
        return False
    try:
        ovmf = find_ovmf()
    except UserError:
        return False
    with tempfile.TemporaryDirectory(prefix="synapse-kvm-probe.") as tmp:
        log = Path(tmp) / "serial.log"
        log.touch()
        proc = subprocess.Popen(
            [QEMU, "-machine", "q35,accel=kvm", "-cpu", "host", "-m", "256", "-nodefaults",
             "-display", "none", "-no-reboot", "-bios", ovmf, "-serial", f"file:{log}"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + KVM_PROBE_SECONDS
            while time.monotonic() < deadline and proc.poll() is None:
                if OVMF_BOOT_MANAGER in log.read_bytes():
                    return True
                time.sleep(0.2)
            return False
        finally:
            proc.kill()
            proc.wait()


def opt(path: Path | str) -> str:
    """A path as a QEMU option value: a comma would end the value (and could start another
    option) unless doubled."""
    return str(path).replace(",", ",,")


# Every guest's scratch NVMe namespace, empty, as udev names it (model "QEMU NVMe Ctrl").
SCRATCH_NVME_SERIAL = "synapse-scratch"
SCRATCH_NVME = f"/dev/disk/by-id/nvme-QEMU_NVMe_Ctrl_{SCRATCH_NVME_SERIAL}"


@dataclass
class QemuConfig:
    image: Path
    serial_log: Path | None  # None: serial on stdio (interactive)
    shell_socket: Path | None  # the test shell's virtio port (None: no driver)
    memory_mb: int = 2048
    cpus: int = 2
    kvm: bool = False
    kernel: Path | None = None  # direct kernel boot; None = UEFI via OVMF
    initrd: Path | None = None
    append: str = ""
    snapshot: bool = True  # writes go to a temp overlay; the image stays as built
    forwards: dict[int, int] = field(default_factory=dict)  # 127.0.0.1 port -> guest TCP port
    nvme_disk: Path | None = None  # the scratch NVMe (queue settings, zram's backing device)
    readonly_disks: dict[str, Path] = field(default_factory=dict)  # virtio serial -> raw image
    efi_vars: Path | None = None  # UEFI from flash, with this writable variable store
    reboot: bool = False  # a guest reboot restarts it (else QEMU exits)
    host_cpus: str | None = None  # KVM: run QEMU (and so every vCPU) on these host CPUs only
    hugepages: bool = False  # KVM: back guest RAM with the host's hugetlbfs pages
    extra: list[str] = field(default_factory=list)

    def argv(self) -> list[str]:
        accel = ["-machine", "q35,accel=kvm", "-cpu", "host"] if self.kvm else [
            # TCG: 'max' emulates AVX2/FMA/F16C (QEMU >= 7.2), which llama.cpp builds use
            "-machine", "q35,accel=tcg", "-cpu", "max",
        ]
        argv = [
            require_qemu(), *accel, "-m", str(self.memory_mb), "-smp", str(self.cpus),
            "-nodefaults", "-display", "none", *([] if self.reboot else ["-no-reboot"]),
            "-no-user-config",
            "-drive", f"file={opt(self.image)},format=raw,if=virtio,cache=unsafe"
            + (",snapshot=on" if self.snapshot else ""),
            "-object", "rng-random,filename=/dev/urandom,id=rng0",
            "-device", "virtio-rng-pci,rng=rng0",
            # one wired link for network.wired (DHCP from QEMU itself); restrict=on: the
            # guest reaches nothing outside; forwards only listen on the host's loopback
            "-nic", "user,model=virtio-net-pci,restrict=on" + "".join(
                f",hostfwd=tcp:127.0.0.1:{int(host)}-:{int(guest)}"
                for host, guest in sorted(self.forwards.items())),
        ]
        for number, (serial, path) in enumerate(sorted(self.readonly_disks.items())):
            argv += ["-drive", f"file={opt(path)},if=none,id=ro{number},format=raw,readonly=on",
                     "-device", f"virtio-blk-pci,drive=ro{number},serial={serial}"]
        if self.hugepages:
            argv += ["-object", f"memory-backend-file,id=ram0,size={self.memory_mb}M,"
                     "mem-path=/dev/hugepages,prealloc=on,share=off",
                     "-machine", "memory-backend=ram0"]
        if self.nvme_disk is not None:
            argv += ["-drive", f"file={opt(self.nvme_disk)},if=none,id=nvme0,format=raw",
                     "-device", f"nvme,drive=nvme0,serial={SCRATCH_NVME_SERIAL}"]
        if self.serial_log is not None:
            argv += ["-chardev", f"file,id=serial0,path={opt(self.serial_log)}",
                     "-serial", "chardev:serial0"]
        else:
            argv += ["-serial", "mon:stdio"]
        if self.shell_socket is not None:
            argv += ["-device", "virtio-serial-pci",
                     "-chardev", f"socket,id=shell,path={opt(self.shell_socket)},server=on,wait=on",
                     "-device", f"virtserialport,chardev=shell,name={SHELL_PORT}"]
        if self.kernel is not None:
            argv += ["-kernel", str(self.kernel)]
            if self.initrd is not None:
                argv += ["-initrd", str(self.initrd)]
            argv += ["-append", self.append]
        elif self.efi_vars is not None:
            argv += ["-drive", f"if=pflash,format=raw,unit=0,readonly=on,"
                     f"file={opt(Path(find_ovmf_flash()[0]))}",
                     "-drive", f"if=pflash,format=raw,unit=1,file={opt(self.efi_vars)}"]
        else:
            argv += ["-bios", find_ovmf()]
        argv += self.extra
        return ["taskset", "-c", self.host_cpus, *argv] if self.host_cpus else argv
