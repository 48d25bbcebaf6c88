"""The stock boot state: what `synapse.stock` on the kernel command line turns off.

The A/B harness on a tuned machine (`synapse bench ab --boot-entries`) compares it with
itself booted stock: the distribution's kernel, no profile words on the command line, and
a generator (rendered here) that hides every file the profile placed for a boot-time
reader behind /dev/null and masks the units it enables. Each tunable says which of its
files are read at boot, and by what.
"""

from __future__ import annotations

from synapse_os.tunables import REGISTRY, SystemState, zram

STOCK_WORD = "synapse.stock"
GENERATOR = "rootfs/etc/systemd/system-generators/synapse-stock"
BENCH_UNIT = "synapse-bench-ab.service"
BOOT_AB_DIR = "/var/lib/synapse/bench/ab-boot"
BOOT_AB_STATE = f"{BOOT_AB_DIR}/state.json"

# A rendered file read at boot -> the services that read it (they start after it is hidden).
READ_AT_BOOT = {rel: services for t in REGISTRY for rel, services in t.read_at_boot.items()}


def mount_unit(path: str) -> str:
    """systemd's name for the mount unit of an absolute path (`systemd-escape --path`)."""
    out = []
    for i, ch in enumerate(path.strip("/")):
        if ch == "/":
            out.append("-")
        elif ch.isascii() and (ch.isalnum() or ch in ":_" or (ch == "." and i > 0)):
            out.append(ch)
        else:
            out.append(f"\\x{ord(ch):02x}")
    return "".join(out) + ".mount"


def generator_context(state: SystemState, rendered: set[str]) -> dict[str, object]:
    """What the generator hides, masks and unmasks, for the files the profile renders.
    Left as they are: the units the profile disables, systemd's CPUAffinity (PID 1 reads it
    before any generator runs), the mount options and everything else install-time."""
    blank = [(f"/{rel}", mount_unit(f"/{rel}"), services)
             for rel, services in READ_AT_BOOT.items() if f"rootfs/{rel}" in rendered]
    # the engine and the units a tuning enables; not the services the user enables (ssh)
    mask = [unit for unit in state.enable if state.sources[f"unit {unit}"] != "services.enable"]
    mask += zram.UNITS if state.zram else ()
    return {"blank": blank, "mask": mask, "unmask": list(state.mask)}
