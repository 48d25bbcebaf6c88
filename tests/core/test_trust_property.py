"""A profile is data, never code: a hostile value in any string field either fails
validation (exit 2 through the CLI) or is rendered so that each artifact's real consumer
reads back exactly that value, with no extra line and no command run.

The oracle for shell is a marker file only `synapse_pwned` creates (see trust_harness);
for line-oriented files (units, tmpfiles, sysusers, sysctl.d, loader entries, journald,
zram-generator) it is the structure: the same lines as the benign render, each with the
same number of fields.
"""

from __future__ import annotations

import copy
import functools
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from synapse_os.errors import UserError
from synapse_os.image.bundle import write_sums
from synapse_os.profile.loader import load_profile
from synapse_os.render import render_profile
from synapse_os.tunables import desired_state
from tests.conftest import PROFILES
from tests.core.trust_harness import (
    PAYLOADS,
    get_value,
    run_script,
    set_value,
    source_vars,
    string_fields,
    write_tree,
)


def _base(name: str) -> dict[str, Any]:
    data = yaml.safe_load((PROFILES / name).read_text())
    data.pop("extends", None)
    return data


ARCH = _base("cpu-avx2.yaml")
ARCH["journald"]["max_retention"] = "2d 12h"
ARCH["makepkg"]["ltoflags"] = "-flto=auto"
GRUB = copy.deepcopy(ARCH) | {"name": "grub-box"}
GRUB["boot"] = {**GRUB["boot"], "loader": "grub"}
GRUB["runtime"] = {**GRUB["runtime"], "engine": "llama-server", "speculative": {"enabled": False}}
GRUB["journald"] = {"max_retention": "1week", "storage": "volatile"}
GRUB["makepkg"] = {**GRUB["makepkg"], "ltoflags": "-flto=auto", "makeflags": "-j8"}
DEBIAN = _base("stock-baseline.yaml") | {"base": "debian", "name": "deb-box"}
BASES = {"arch": ARCH, "grub": GRUB, "debian": DEBIAN}
FIELDS = string_fields()


def test_every_string_field_is_found() -> None:
    """The walker sees the fields the issue names (guards against a silent empty list)."""
    names = {".".join(str(p) for p in f) for f in FIELDS}
    for expected in ("timezone", "locale", "disk.target", "boot.cmdline.0", "runtime.user",
                     "runtime.models.<value>.path", "sysctl.<key>", "sysctl.<value>",
                     "makepkg.cflags", "journald.max_retention", "services.mask.0",
                     "packages.extra.0", "kernel.extra.<value>", "description"):
        assert expected in names, f"{expected} not found among {sorted(names)}"


@functools.cache
def _base_files(name: str) -> dict[str, Any]:
    return render_profile(_load(BASES[name])).files


def _hostile(good: object) -> st.SearchStrategy[str]:
    good_text = good if isinstance(good, str) else "x"
    payload = st.sampled_from(PAYLOADS) | st.text(
        alphabet=st.sampled_from(list("ab/$`'\";|&\n\r\t%\\{}()<>*?~#=:,.- \x00\u2028")),
        min_size=1, max_size=12)
    return st.one_of(
        payload,
        payload.map(lambda p: good_text + p),
        payload.map(lambda p: p + good_text),
        st.tuples(payload, st.integers(0, max(len(good_text), 0))).map(
            lambda t: good_text[: t[1]] + t[0] + good_text[t[1]:]),
    )


def _load(data: dict[str, Any]) -> Any:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "p.yaml"
        path.write_text(yaml.safe_dump(data, allow_unicode=True))
        return load_profile(path)


def _structure(content: bytes) -> list[tuple[str, int]]:
    """(first word, number of whitespace-separated fields) of each line."""
    lines = content.decode().split("\n")
    return [(line.split()[0] if line.split() else "", len(line.split())) for line in lines]


def _check_structure(base_files: dict[str, Any], files: dict[str, Any], field: str) -> None:
    for rel, f in files.items():
        old = base_files.get(rel)
        if old is None or f.link is not None or rel.endswith((".sh", ".json", "runtime.yaml")) \
                or rel.startswith(("kernel/", "install/packages")):
            continue
        new_s, old_s = _structure(f.content), _structure(old.content)
        assert len(new_s) == len(old_s), f"{field}: {rel} gained or lost lines"
        if rel.startswith("rootfs/etc/tmpfiles.d/") or rel.startswith("rootfs/etc/sysusers.d/"):
            assert [n for _w, n in new_s] == [n for _w, n in old_s], f"{field}: {rel} fields"


def _check_shell(profile: Any, files: dict[str, Any], work: Path) -> None:
    marker = work / "PWNED"
    tree = work / "tree"
    write_tree(files, tree)
    if profile.base == "arch":  # stands in for the repository repo-add makes on an Arch host
        (tree / "bundle/pkgs").mkdir(parents=True)
        (tree / "bundle/pkgs/synapse-bundle.db").write_bytes(b"")
    write_sums(tree)  # the bundle's checksums, so the scripts go past their bundle check
    mnt = work / "mnt"
    (mnt / "etc/apt").mkdir(parents=True, exist_ok=True)
    disk = profile.disk.target or "/dev/disk/by-id/none"
    part, _ = run_script(tree / "install/partition.sh", ["--yes", disk, "--mnt", str(mnt)],
                         work, marker, mnt)
    assert part.returncode == 2 and f"refusing: {disk} is not a block device" in part.stderr, \
        part.stderr
    inst, calls = run_script(tree / "install/install.sh", ["--mnt", str(mnt)], work, marker, mnt)
    assert inst.returncode == 0, inst.stderr
    chroot_env = next(c for c in calls if c[0] == "arch-chroot" and "/usr/bin/env" in c)
    assert f"TIMEZONE={profile.timezone}" in chroot_env
    assert f"LOCALE={profile.locale}" in chroot_env
    state = desired_state(profile)
    assert f"ENABLE={' '.join(state.enable)}" in chroot_env
    assert f"MASK={' '.join(state.mask)}" in chroot_env
    m = profile.makepkg
    if "rootfs/etc/makepkg.conf.d/synapse.conf" in files:
        got = source_vars(tree / "rootfs/etc/makepkg.conf.d/synapse.conf",
                          ["CFLAGS", "CXXFLAGS", "RUSTFLAGS", "LTOFLAGS"], work, marker)
        assert got == [m.cflags or "", m.cxxflags or "", m.rustflags or "", m.ltoflags or ""]
    for grub in ("rootfs/etc/default/grub", "rootfs/etc/default/grub.d/90-synapse.cfg"):
        if grub in files:
            got = source_vars(tree / grub, ["GRUB_CMDLINE_LINUX_DEFAULT"], work, marker)
            assert got == [" ".join(state.cmdline)]
    assert not marker.exists(), "a profile value ran a command"


def _check_values(profile: Any, files: dict[str, Any]) -> None:
    state = desired_state(profile)
    sysctl = files.get("rootfs/etc/sysctl.d/90-synapse.conf")
    if sysctl is not None:  # systemd-sysctl: "key = value", split at the first '='
        parsed = {}
        for line in sysctl.content.decode().splitlines():
            if line and not line.startswith("#"):
                key, _, value = line.partition("=")
                parsed[key.strip()] = value.strip()
        assert parsed == state.sysctl
    entry = files.get("rootfs/etc/kernel/cmdline")
    if entry is not None:
        assert all(w in entry.content.decode().split() for w in state.cmdline)


@pytest.mark.parametrize("field", FIELDS, ids=lambda f: ".".join(str(p) for p in f))
@settings(max_examples=12, deadline=None, database=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_hostile_value_is_refused_or_inert(field: tuple[Any, ...], data: st.DataObject) -> None:
    base_name = data.draw(st.sampled_from(sorted(BASES)), label="base")
    base = BASES[base_name]
    value = data.draw(_hostile(get_value(base, field)), label="value")
    profile_data = copy.deepcopy(base)
    set_value(profile_data, field, value)
    try:
        profile = _load(profile_data)
    except UserError as exc:
        assert str(exc) and "\n" not in str(exc).strip("\n")
        return
    files = render_profile(profile).files  # whatever validates must render
    base_files = _base_files(base_name)
    name = ".".join(str(p) for p in field)
    if get_value(base, field) is not None:  # a substitution keeps every file's shape
        _check_structure(base_files, files, name)
    _check_values(profile, files)
    with tempfile.TemporaryDirectory() as tmp:
        _check_shell(profile, files, Path(tmp))


def test_harness_detects_a_breakout(tmp_path: Path) -> None:
    """The oracle works: a script that does run the payload creates the marker."""
    marker = tmp_path / "PWNED"
    script = tmp_path / "evil.sh"
    script.write_text('TZ_NAME="$(synapse_pwned)"\n')
    run_script(script, [], tmp_path, marker, tmp_path)
    assert marker.exists()
