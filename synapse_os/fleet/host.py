"""`synapse fleet host-profile`: the exported profile with one host's hardware laid over it.

Hosts of one fleet differ in cores and RAM; the role writes each host a profile that
`extends:` the exported one and replaces only its `hardware:` keys (from host_vars, or read
on the host), as JSON data. It is loaded back before it replaces the old one, so a bad key
is refused with the loader's own message and nothing is written.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from synapse_os.errors import UserError
from synapse_os.profile import load_profile
from synapse_os.profile.hardware import detect, hardware_section


def parse_hardware(text: str) -> dict[str, object]:
    try:
        value = json.loads(text)
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise UserError(f"--hardware {text[:80]!r}: is not a JSON object; pass the profile's "
                        "hardware keys, e.g. '{\"physical_cores\": 8, \"ram\": \"32G\"}'")
    return value


def write_host_profile(exported: Path, output: Path, hardware: dict[str, object] | None,
                       from_machine: bool) -> tuple[bool, dict[str, object]]:
    """Write `output`; (changed, the hardware keys laid over the export)."""
    if from_machine:
        hardware = hardware_section(detect())
    data: dict[str, object] = {"extends": os.path.relpath(exported.resolve(),
                                                          output.resolve().parent)}
    if hardware:
        data["hardware"] = hardware
    text = json.dumps(data, indent=2, sort_keys=True) + "\n"
    try:
        if output.read_text() == text:
            return False, hardware or {}
    except OSError:
        pass
    tmp = output.with_name(f".{output.name}.new")
    try:
        tmp.write_text(text)
        try:
            load_profile(tmp)
        except UserError as exc:  # positions in the file that would have been written
            raise UserError(str(exc).replace(str(tmp), str(output))
                            + f" (from the host's hardware; {output} was not written)") from None
        os.replace(tmp, output)
    except OSError as exc:
        raise UserError(f"{output}: could not be written ({exc.strerror})") from None
    finally:
        tmp.unlink(missing_ok=True)
    return True, hardware or {}
