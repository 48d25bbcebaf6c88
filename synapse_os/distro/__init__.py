"""Distribution backends: what differs between Arch and Debian (package names, bootstrap).

Everything systemd-level is shared and rendered once; a backend only names packages.
"""

from __future__ import annotations

from dataclasses import dataclass

from synapse_os.profile.model import Profile


@dataclass(frozen=True)
class Distro:
    name: str
    base_packages: tuple[str, ...]
    default_kernel: str
    microcode: dict[str, str]  # cpu vendor -> package
    zram_generator: str
    python: tuple[str, ...]
    bootloader: dict[str, tuple[str, ...]]  # loader -> packages
    filesystem_tools: dict[str, str]
    kernel_build: tuple[str, ...]  # what building a custom kernel needs on the target
    grub_config: str  # where grub-mkconfig reads the command line (relative to /)
    network: tuple[str, ...]  # what network.wired: dhcp needs beyond systemd
    esp_mount: str  # where the installed system mounts the EFI system partition
    default_entry: str  # loader.conf's default: the entry (or glob) the install writes
    locale_file: str  # where the system's LANG is read at login (relative to /)
    container: tuple[str, ...]  # what runtime.isolation: nspawn needs (systemd-nspawn)

    def packages(self, profile: Profile) -> list[str]:
        """The full package list for a profile, sorted and without duplicates."""
        pkgs = set(self.base_packages)
        pkgs.add(profile.kernel.package or self.default_kernel)
        if profile.kernel.source == "custom":
            # built on the target from the rendered recipe; the stock kernel stays as the
            # fallback boot entry
            pkgs.add(self.default_kernel)
            pkgs.update(self.kernel_build)
            pkgs.discard(profile.kernel.package or "")
        vendor = profile.hardware.cpu_vendor
        pkgs.update(self.microcode.values() if vendor == "auto" else [self.microcode[vendor]])
        if profile.memory.zram is not None and profile.memory.zram.enabled:
            pkgs.add(self.zram_generator)
        if profile.runtime is not None:
            pkgs.update(self.python)
            if profile.runtime.isolation == "nspawn":
                pkgs.update(self.container)
        pkgs.update(self.bootloader[profile.boot.loader])
        pkgs.add(self.filesystem_tools[profile.disk.root_fs])
        if profile.network.wired == "dhcp":
            pkgs.update(self.network)
        pkgs.update(profile.packages.extra)
        return sorted(pkgs)


ARCH = Distro(
    name="arch",
    base_packages=("base", "linux-firmware", "sudo", "openssh", "iproute2", "procps-ng",
                   "util-linux", "dosfstools"),
    default_kernel="linux",
    microcode={"intel": "intel-ucode", "amd": "amd-ucode"},
    zram_generator="zram-generator",
    python=("python", "python-pip"),
    bootloader={"systemd-boot": (), "grub": ("grub", "efibootmgr")},
    filesystem_tools={"xfs": "xfsprogs", "ext4": "e2fsprogs"},
    # base-devel for makepkg, plus the makedepends of Arch's own linux PKGBUILD
    kernel_build=("base-devel", "bc", "cpio", "gettext", "libelf", "pahole", "perl", "python",
                  "tar", "xz", "zstd"),
    grub_config="etc/default/grub",  # Arch's grub-mkconfig reads only this file
    network=(),  # Arch's systemd package has networkd and resolved
    esp_mount="/boot",  # kernels live on the ESP; the rendered entries name them
    default_entry="synapse.conf",
    locale_file="etc/locale.conf",
    container=(),  # Arch's systemd package has systemd-nspawn
)

DEBIAN = Distro(
    name="debian",
    base_packages=("systemd-sysv", "udev", "dbus", "sudo", "openssh-server", "iproute2",
                   "procps", "util-linux", "dosfstools", "kmod", "ca-certificates",
                   "initramfs-tools", "zstd", "locales"),
    default_kernel="linux-image-amd64",
    microcode={"intel": "intel-microcode", "amd": "amd64-microcode"},
    zram_generator="systemd-zram-generator",
    python=("python3", "python3-venv", "python3-pip", "libgomp1"),  # llama.cpp links libgomp
    bootloader={"systemd-boot": ("systemd-boot",), "grub": ("grub-efi-amd64",)},
    filesystem_tools={"xfs": "xfsprogs", "ext4": "e2fsprogs"},
    # the bundle host builds the kernel's packages (synapse_os/kernel/debs.py): the target
    # installs them and needs nothing to build
    kernel_build=(),
    grub_config="etc/default/grub.d/90-synapse.cfg",  # Debian's grub-mkconfig sources grub.d
    # Debian's layout: /boot on the root file system, kernel-install copies each kernel
    # to the ESP under the entry token "synapse" (install.sh sets it)
    network=("systemd-resolved",),
    esp_mount="/boot/efi",
    default_entry="synapse-*",
    locale_file="etc/default/locale",  # pam_env and Debian's systemd read this, not locale.conf
    container=("systemd-container",),
)

BACKENDS = {"arch": ARCH, "debian": DEBIAN}


def distro_for(profile: Profile) -> Distro:
    return BACKENDS[profile.base]
