"""What only a machine installed from the profile has: its file systems and mounts, its
locale, its wired network and its extra packages (`apply` changes none of them)."""

from __future__ import annotations

import shlex

from synapse_os.profile.model import Profile
from synapse_os.tunables.base import SYSTEMD_UP, Check

# Mount options the kernel never lists among a mount's options (they steer mount(8),
# systemd's fstab generator or fsck).
_UNLISTED_MOUNT_OPTIONS = ("defaults", "auto", "noauto", "nofail", "user", "nouser", "users",
                           "owner", "group", "_netdev", "x-", "comment=")


def install_checks(profile: Profile) -> list[Check]:
    """What only a machine installed from the profile has (`apply` neither re-mounts the
    root, installs packages or touches networking): the root file system, its mount
    options as the kernel reports them, the locale, the wired network, and the extra
    packages."""
    from synapse_os.distro import distro_for

    read_only = profile.system.root == "read-only"
    out = [Check("root file system", "mount", "disk.root_fs", profile.disk.root_fs,
                 "findmnt -no FSTYPE /", after_reboot=True),
           Check("root mounted", "mount", "system.root", "ro" if read_only else "rw",
                 "findmnt -no OPTIONS / | cut -d, -f1", after_reboot=True)]
    if profile.disk.root_size is not None:
        out.append(Check("/var partition", "mount", "disk.root_size",
                         f"{profile.disk.root_fs} rw synapse-var",
                         "findmnt -no FSTYPE,OPTIONS,PARTLABEL /var"
                         " | awk '{split($2, o, \",\"); print $1, o[1], $3}'", after_reboot=True))
    if read_only:
        out.append(Check("/tmp in memory", "mount", "system.root", "tmpfs",
                         "findmnt -no FSTYPE /tmp", after_reboot=True))
    for opt in profile.disk.mount_options:
        if opt.startswith(_UNLISTED_MOUNT_OPTIONS):
            continue
        out.append(Check(f"root mount option {opt}", "mount", "disk.mount_options", opt,
                         "findmnt -no OPTIONS / | tr ',' ' '", "token", after_reboot=True))
    # LANG as login sessions get it, and only when glibc has that locale (else programs
    # silently fall back to C): "<locale> (not generated)" otherwise.
    locale_file = shlex.quote("/" + distro_for(profile).locale_file)
    out.append(Check("locale", "file", "locale", profile.locale,
                     f"l=$(sed -n 's/^LANG=//p' {locale_file} | tail -n 1); "
                     'if [ -n "$(LC_ALL="$l" locale 2>&1 >/dev/null)" ]; '
                     'then echo "$l (not generated)"; else echo "$l"; fi'))
    if profile.network.wired == "dhcp":
        out.append(Check("network wired link configured", "network", "network.wired",
                         "configured", "networkctl list --no-legend 2>/dev/null"
                         " | awk '$3 == \"ether\" {print $5; exit}'", after_reboot=True))
        out.append(Check("network resolver active", "network", "network.wired", "active",
                         f"{SYSTEMD_UP} systemctl is-active systemd-resolved.service"
                         " 2>/dev/null; true", after_reboot=True))
    for name in profile.packages.extra:
        pkg = shlex.quote(name)
        out.append(Check(f"package {name}", "package", "packages.extra", "installed",
                         f"if command -v pacman >/dev/null; then pacman -Q {pkg} >/dev/null 2>&1;"
                         f" else dpkg-query -W -f='${{Status}}' {pkg} 2>/dev/null"
                         " | grep -q ' installed$'; fi && echo installed || echo missing"))
    return out
