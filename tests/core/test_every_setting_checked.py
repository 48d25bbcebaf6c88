"""Every leaf setting of the profile model has a live check, or a reason on one explicit
list why a live value cannot show it. A new field fails here until it gets one of them."""

from __future__ import annotations

import typing
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import BaseModel

from synapse_os.errors import UserError
from synapse_os.profile import load_profile
from synapse_os.profile.model import Profile
from synapse_os.tunables import live_checks
from synapse_os.tunables.install import install_checks
from synapse_os.vm.assertions import service_checks
from tests.conftest import PROFILES

# The shipped CPU profile with every optional setting it leaves out set as well.
EVERYTHING = f"""\
extends: {PROFILES / "cpu-avx2.yaml"}
name: everything
memory:
  ksm: false
  zram: {{writeback_device: /dev/disk/by-id/nvme-Scratch_SSD_S1}}
  dirty_ratio: 20
  compaction_proactiveness: 0
  dirty_background_ratio: 5
cpu:
  no_turbo: false
  platform_profile: performance
services:
  enable: [systemd-timesyncd.service]
journald:
  max_retention: 1week
kernel:
  extra: {{CONFIG_LATENCYTOP: n}}
system:
  root: read-only
disk:
  root_size: 20G
"""

_RUNTIME_CONFIG = ("read by the service from its rendered configuration (checked by hash); "
                   "the service's /health and completion checks prove it took effect")
NOT_LIVE = {
    "synapse": "the profile format version, not a setting",
    "name": "names the profile (manifest, bench records, fleet reports)",
    "description": "free text for people",
    "base": "chooses the distribution backend: what renders (checked by hash) and installs",
    "hardware.cpu_vendor": "describes the machine: chooses the microcode images (files)",
    "hardware.cpu_model": "describes the machine, for people",
    "hardware.physical_cores": "describes the machine: derives runtime threads",
    "hardware.logical_cpus": "describes the machine (synapse init)",
    "hardware.threads": "describes the machine: derives runtime threads",
    "hardware.isa": "describes the machine: chooses build flags (makepkg, llama.cpp)",
    "hardware.ram": "describes the machine: derives MemoryHigh=, checked on the service",
    "hardware.gpu": "describes the machine: chooses drivers and the GPU build",
    "disk.target": "the disk partition.sh wipes once; it refuses any other disk",
    "disk.esp_size": "the ESP partition.sh creates once; not resized later",
    "boot.loader": "boot loader files, checked by hash under boot/",
    "boot.timeout": "in loader.conf / the GRUB file, checked by hash",
    "boot.mitigations_risk": "an acknowledgement, not a setting",
    "security_risk": "an acknowledgement, not a setting",
    "kernel.package": "the built kernel package's name; its config is checked symbol by symbol",
    "kernel.version": "which source the kernel is built from; its config is checked symbol "
                      "by symbol",
    "kernel.tarball_sha256": "pins the kernel source in the PKGBUILD; makepkg checks it before "
                             "anything is built",
    "kernel.localmodconfig": "trims modules at build time; the required symbols are checked",
    "memory.zram.writeback_every_min": "the timer's interval, in its unit file (checked by "
                                       "hash); the timer is checked enabled and active",
    "memory.zram.size": "an expression zram-generator evaluates against the RAM it sees at "
                        "boot; its rendered configuration is checked by hash",
    "makepkg.cflags": "build flags for packages built later (makepkg.conf.d, checked by hash)",
    "makepkg.cxxflags": "build flags for packages built later (makepkg.conf.d, checked by hash)",
    "makepkg.rustflags": "build flags for packages built later (makepkg.conf.d, checked by hash)",
    "makepkg.makeflags": "build flags for packages built later (makepkg.conf.d, checked by hash)",
    "makepkg.ltoflags": "build flags for packages built later (makepkg.conf.d, checked by hash)",
    "runtime.models.path": _RUNTIME_CONFIG + " (the runtime verifies the sha256 before load)",
    "runtime.models.sha256": _RUNTIME_CONFIG + " (the runtime verifies the sha256 before load)",
    "runtime.models.context": _RUNTIME_CONFIG,
    "runtime.models.gpu_layers": _RUNTIME_CONFIG,
    "runtime.threads": _RUNTIME_CONFIG,
    "runtime.speculative.enabled": _RUNTIME_CONFIG,
    "runtime.speculative.draft_tokens": _RUNTIME_CONFIG,
    "runtime.speculative.lookup": _RUNTIME_CONFIG + " (each request's provenance record "
                                  "says whether it drafted by lookup)",
    "runtime.queue_size": _RUNTIME_CONFIG,
    "runtime.parallel": _RUNTIME_CONFIG,
    "runtime.provenance": _RUNTIME_CONFIG,
    **{f"runtime.llama.{name}": _RUNTIME_CONFIG + " (the service reports the settings it "
       "runs with at /health)" for name in ("flash_attention", "kv_cache_type", "repack",
                                            "threads_batch", "numa", "batch_invariant")},
    "runtime.sandboxing": "unit hardening options (checked by hash); systemd applies them or "
                          "refuses to start the unit, which the active check sees",
    "runtime.memory_reserve": "derives MemoryHigh=, checked on the running service",
}


def leaves(model: type[BaseModel], prefix: str = "") -> Iterator[str]:
    for name, info in model.model_fields.items():
        ann = info.annotation
        nested = [a for a in (ann, *typing.get_args(ann))
                  if isinstance(a, type) and issubclass(a, BaseModel)]
        if not nested and typing.get_args(ann):  # dict[str, Model] (runtime.models)
            nested = [a for arg in typing.get_args(ann) for a in typing.get_args(arg)
                      if isinstance(a, type) and issubclass(a, BaseModel)]
        if nested:
            yield from leaves(nested[0], f"{prefix}{name}.")
        else:
            yield prefix + name


# The settings that exclude ones EVERYTHING sets (one kernel value, two spellings).
EVERYTHING_ELSE = f"""\
extends: {PROFILES / "cpu-avx2.yaml"}
name: everything-else
runtime:
  isolation: nspawn
  sandboxing: none
memory:
  dirty_bytes: 256M
  dirty_background_bytes: 64M
"""


def test_every_setting_has_a_live_check_or_a_reason(tmp_path: Path) -> None:
    checked: set[str] = set()
    for name, text in (("everything", EVERYTHING), ("else", EVERYTHING_ELSE)):
        path = tmp_path / f"{name}.yaml"
        path.write_text(text)
        profile = load_profile(path)
        checked |= {c.source.split(".")[0] if c.source.startswith("sysctl.") else c.source
                    for c in [*live_checks(profile), *install_checks(profile),
                              *service_checks(profile)]}
    every = set(leaves(Profile))
    assert "runtime.models.sha256" in every and "memory.zram.priority" in every
    unaccounted = sorted(every - checked - set(NOT_LIVE))
    assert not unaccounted, f"settings with neither a live check nor a reason: {unaccounted}"
    stale = sorted(set(NOT_LIVE) & checked)
    assert not stale, f"checked live now; remove them from NOT_LIVE: {stale}"
    assert set(NOT_LIVE) <= every, sorted(set(NOT_LIVE) - every)


def test_a_sysctl_field_is_rendered_checked_and_owned_from_its_one_declaration(
        tmp_path: Path) -> None:
    from synapse_os.render import render_profile
    from synapse_os.tunables import checks, desired_state

    path = tmp_path / "p.yaml"
    path.write_text(EVERYTHING_ELSE)
    profile = load_profile(path)
    sysctl_d = render_profile(profile).files["rootfs/etc/sysctl.d/90-synapse.conf"].content
    assert b"vm.dirty_bytes = 268435456\n" in sysctl_d
    (check,) = [c for c in checks(desired_state(profile)) if c.id == "sysctl vm.dirty_bytes"]
    assert (check.expected, check.source) == ("268435456", "memory.dirty_bytes")
    path.write_text(EVERYTHING_ELSE + "sysctl:\n  vm.dirty_bytes: 1\n")
    with pytest.raises(UserError, match="vm.dirty_bytes is set through memory.dirty_bytes"):
        load_profile(path)
    path.write_text(EVERYTHING_ELSE + "  dirty_ratio: 10\n")
    with pytest.raises(UserError, match="dirty_ratio and memory.dirty_bytes are one kernel"):
        load_profile(path)


def test_every_check_names_a_real_profile_setting(tmp_path: Path) -> None:
    """A check's source is the profile key behind it: a leaf or a section of the model, or
    a key of the free `sysctl:` map, so a mistyped source cannot pass for a checked one."""
    every = set(leaves(Profile))
    sections = {leaf.rsplit(".", i)[0] for leaf in every for i in range(1, leaf.count(".") + 1)}
    unknown: set[str] = set()
    for name, text in (("everything", EVERYTHING), ("else", EVERYTHING_ELSE)):
        path = tmp_path / f"{name}.yaml"
        path.write_text(text)
        profile = load_profile(path)
        free = {f"sysctl.{key}" for key in profile.sysctl}
        unknown |= {c.source for c in [*live_checks(profile), *install_checks(profile),
                                       *service_checks(profile)]} - free - every - sections
    assert not unknown, sorted(unknown)
