"""`synapse hw capture`: the target's loaded modules and PCI devices, for localmodconfig.

Modules come from /proc/modules (what `lsmod` prints), PCI devices from sysfs; a PCI
device's driver module is added to the module list so a driver that happened not to be
loaded as a module is still kept. The file is JSON (format synapse-hw-capture/1).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from synapse_os.errors import OperationError, UserError
from synapse_os.userfile import read_user_text

FORMAT = "synapse-hw-capture/1"
PCI_FIELDS = ("vendor", "device", "subsystem_vendor", "subsystem_device", "class")


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def capture(root: Path = Path("/")) -> dict[str, Any]:
    """Facts about the machine whose filesystem is mounted at `root`."""
    proc_modules = root / "proc" / "modules"
    try:
        module_lines = proc_modules.read_text().splitlines()
    except OSError as exc:
        raise OperationError(
            f"cannot read the loaded-module list {proc_modules} ({exc.strerror}); "
            "run `synapse hw capture` on the target machine itself, not in a container"
        ) from None
    modules = sorted({line.split()[0] for line in module_lines if line.split()})
    pci = []
    pci_root = root / "sys" / "bus" / "pci" / "devices"
    for dev in sorted(pci_root.iterdir()) if pci_root.is_dir() else []:
        entry: dict[str, str | None] = {"slot": dev.name}
        for name in PCI_FIELDS:
            entry[name] = _read(dev / name) or None
        driver = dev / "driver"
        entry["driver"] = os.path.basename(os.readlink(driver)) if driver.is_symlink() else None
        module = driver / "module"
        entry["module"] = (
            os.path.basename(os.readlink(module)) if module.is_symlink() else None
        )
        pci.append(entry)
    return {
        "format": FORMAT,
        "kernel": _read(root / "proc" / "sys" / "kernel" / "osrelease") or os.uname().release,
        "modules": modules,
        "pci": pci,
    }


def load_capture(path: Path) -> dict[str, Any]:
    text = read_user_text(path, "hardware capture",
                          "a file written by `synapse hw capture -o FILE` on the target")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"hardware capture {path} cannot be read as JSON ({exc})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise UserError(f"hardware capture {path} is not a {FORMAT} file from `synapse hw capture`")
    if not isinstance(data.get("modules"), list) or not all(
        isinstance(m, str) and m for m in data["modules"]
    ):
        raise UserError(f"hardware capture {path}: 'modules' must be a list of module names")
    return data


def lsmod_text(data: dict[str, Any]) -> str:
    """The capture as `lsmod` output, the input `make localmodconfig LSMOD=` reads."""
    names = set(data["modules"])
    names |= {d["module"] for d in data.get("pci", []) if isinstance(d, dict) and d.get("module")}
    lines = ["Module                  Size  Used by"]
    lines += [f"{name:<24}0  0" for name in sorted(names)]
    return "\n".join(lines) + "\n"
