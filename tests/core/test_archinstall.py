"""The rendered archinstall configuration follows archinstall 2.8's own format, checked
against the example configuration shipped in archinstall's wheel."""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path
from typing import Any

import pytest

from synapse_os.profile import load_profile
from synapse_os.render import render_profile
from tests.conftest import PROFILES

CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "synapse/archinstall"
# Keys our config adds that the 2.8 example leaves out (all read by archinstall 2.8's guided script)
EXTRA_KEYS = {"locale_config", "network_config", "custom-commands"}
# Keys of the example that belong to older configs or to the UI language pack
UNUSED_KEYS = {"keyboard-layout", "mirror-region", "nic", "sys-encoding", "sys-language"}


@pytest.fixture(scope="module")
def example() -> dict[str, Any]:
    wheels = sorted(CACHE.glob("archinstall-2.8.*-py3-none-any.whl"))
    if not wheels:
        pytest.fail("archinstall's wheel is needed; run: python3 -m pip download --no-deps "
                    f"archinstall==2.8.3 -d {CACHE}", pytrace=False)
    with zipfile.ZipFile(wheels[-1]) as whl:
        text = whl.read("archinstall/examples/config-sample.json").decode()
    # the shipped example has a trailing comma inside mirror-region; drop that section
    start = text.index('"mirror-region"')
    end = text.index('"nic"')
    return json.loads(text[:start] + text[end:])


@pytest.mark.parametrize("profile", ["cpu-avx2", "nvidia-gpu", "stock-baseline"])
def test_config_has_archinstall_shape(example: dict[str, Any], profile: str) -> None:
    tree = render_profile(load_profile(PROFILES / f"{profile}.yaml"))
    config = json.loads(tree.files["archinstall/user_configuration.json"].content)
    assert set(config) - set(example) <= EXTRA_KEYS
    assert (set(example) - set(config)) - {"mirror-region"} <= UNUSED_KEYS
    sample_partition = example["disk_config"]["device_modifications"][0]["partitions"][0]
    mods = config["disk_config"]["device_modifications"]
    assert len(mods) == 1 and set(mods[0]) == {"device", "partitions", "wipe"}
    for partition in mods[0]["partitions"]:
        assert set(partition) == set(sample_partition)
        for key in ("size", "start"):
            assert set(partition[key]) == set(sample_partition[key])
            assert partition[key]["unit"] in {"MiB", "GiB", "Percent", "B", "KiB"}
    mountpoints = {p["mountpoint"]: p for p in mods[0]["partitions"]}
    assert mountpoints["/boot"]["fs_type"] == "fat32" and "Boot" in mountpoints["/boot"]["flags"]
    loaded = load_profile(PROFILES / f"{profile}.yaml")
    assert mountpoints["/"]["fs_type"] == loaded.disk.root_fs
    assert config["bootloader"] in {"Systemd-boot", "Grub"}
    assert config["hostname"] == loaded.hostname


def test_credentials_never_come_from_the_profile() -> None:
    tree = render_profile(load_profile(PROFILES / "cpu-avx2.yaml"))
    config = tree.files["archinstall/user_configuration.json"].content.decode()
    assert "password" not in config
    creds = json.loads(tree.files["archinstall/user_credentials.template.json"].content)
    assert set(creds) == {"!root-password", "!users"}
