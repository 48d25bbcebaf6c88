"""An archinstall configuration for users who install with archinstall instead of install.sh.

Follows archinstall 2.8's own config format (examples/config-sample.json in its wheel).
Credentials never come from the profile: only a template with placeholders is rendered.
"""

from __future__ import annotations

import json
import uuid
from typing import TYPE_CHECKING, Any

from synapse_os.distro import distro_for
from synapse_os.profile.model import parse_size
from synapse_os.render.escape import shell_word

if TYPE_CHECKING:
    from synapse_os.render import Context

ARCHINSTALL_VERSION = "2.8.3"
MIB = 1024 * 1024


def _size(unit: str, value: int) -> dict[str, Any]:
    return {"sector_size": None, "unit": unit, "value": value}


def _partition(name: str, **fields: Any) -> dict[str, Any]:
    # obj_id must be stable for byte-identical renders: derive it from the partition's role
    return {
        "btrfs": [],
        "obj_id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"synapse:{name}")),
        "status": "create",
        "type": "primary",
        **fields,
    }


def user_configuration(ctx: Context) -> dict[str, Any]:
    p = ctx.profile
    esp_mib = parse_size(p.disk.esp_size) // MIB
    partitions = [
        _partition("esp", flags=["Boot"], fs_type="fat32", mountpoint="/boot",
                   mount_options=[], size=_size("MiB", esp_mib), start=_size("MiB", 1)),
        _partition("root", flags=[], fs_type=p.disk.root_fs, mountpoint="/",
                   mount_options=list(p.disk.mount_options),
                   size=_size("Percent", 100), start=_size("MiB", 1 + esp_mib)),
    ]
    distro = distro_for(p)
    kernel = ctx.kernel_package if not ctx.custom_kernel else distro.default_kernel
    packages = [pkg for pkg in distro.packages(p) if pkg not in {"base", kernel}]
    commands = [f"systemctl enable {shell_word(u)}" for u in ctx.state.enable]
    commands += [f"systemctl disable {shell_word(u)} || true" for u in ctx.state.disable]
    commands += [f"systemctl mask {shell_word(u)}" for u in ctx.state.mask]
    return {
        "config_version": ARCHINSTALL_VERSION,
        "additional-repositories": [],
        "archinstall-language": "English",
        "audio_config": None,
        "bootloader": "Systemd-boot" if p.boot.loader == "systemd-boot" else "Grub",
        "debug": False,
        "disk_config": {
            "config_type": "manual_partitioning",
            "device_modifications": [
                {"device": p.disk.target or "/dev/disk/by-id/CHANGE-ME",
                 "partitions": partitions, "wipe": True}
            ],
        },
        "hostname": p.hostname,
        "kernels": [kernel],
        "locale_config": {"kb_layout": "us", "sys_enc": "UTF-8",
                          "sys_lang": p.locale.split(".")[0]},
        "network_config": {"type": "iso"},
        "no_pkg_lookups": False,
        "ntp": True,
        "offline": False,
        "packages": packages,
        "parallel downloads": 5,
        "profile_config": {"gfx_driver": None, "greeter": None,
                           "profile": {"details": [], "main": "Minimal"}},
        "script": "guided",
        "silent": False,
        "swap": bool(ctx.state.zram),
        "timezone": p.timezone,
        "custom-commands": commands,
        "version": ARCHINSTALL_VERSION,
    }


CREDENTIALS_TEMPLATE = {
    "!root-password": "<set a root password, or remove this key to lock root>",
    "!users": [{"username": "<your user>", "!password": "<password>", "sudo": True}],
}


def archinstall_files(ctx: Context) -> dict[str, str]:
    def dump(data: object) -> str:
        return json.dumps(data, indent=4, sort_keys=True) + "\n"

    return {
        "user_configuration.json": dump(user_configuration(ctx)),
        "user_credentials.template.json": dump(CREDENTIALS_TEMPLATE),
    }
