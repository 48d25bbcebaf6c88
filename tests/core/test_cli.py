"""The thin CLI as a user runs it: init, schema, render, diff, exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jsonschema
import yaml

from synapse_os.profile import load_profile
from synapse_os.profile.hardware import Facts, _gpu, profile_yaml, read_cpuinfo
from tests.conftest import PROFILES

SYNAPSE = [sys.executable, "-m", "synapse_os.cli"]


def synapse(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*SYNAPSE, *args], capture_output=True, text=True, cwd=cwd)


def test_init_writes_a_profile_that_validates(tmp_path: Path) -> None:
    res = synapse("init")
    assert res.returncode == 0, res.stderr
    (tmp_path / "my.yaml").write_text(res.stdout)
    profile = load_profile(tmp_path / "my.yaml")
    facts = json.loads(synapse("init", "--json").stdout)
    assert profile.hardware.physical_cores == facts["physical_cores"]
    assert profile.hardware.isa == facts["isa"]
    assert profile.hardware.cpu_vendor == facts["cpu_vendor"]


def test_init_proposes_each_fields_own_init_value(tmp_path: Path) -> None:
    """What `synapse init` writes beyond the hardware is the model's: every field that
    proposes a value has it in the new profile, and nothing else is set."""
    from synapse_os.profile.schema import settings

    text = profile_yaml(Facts(cpu_vendor="intel", ram_bytes=2**35))
    (tmp_path / "p.yaml").write_text(text)
    data = load_profile(tmp_path / "p.yaml").model_dump(mode="json")
    proposed = {s.key: json.loads(s.proposed) for s in settings() if s.proposed}
    assert {"memory.swappiness", "memory.zram.size", "runtime.models"} <= set(proposed)
    for key, value in proposed.items():
        here = data
        for part in key.split("."):
            here = here[part]
        assert here == value or (key == "runtime.models" and
                                 here["main"]["path"] == value["main"]["path"]), key
    raw = yaml.safe_load(text)
    written = {f"{section}.{k}" for section, keys in raw.items() if isinstance(keys, dict)
               for k in keys} - {f"hardware.{k}" for k in raw["hardware"]}
    assert written == {k.rsplit(".", 1)[0] if k.startswith("memory.zram.") else k
                       for k in proposed}
    # without the RAM, memory_high: auto cannot be proposed (it would not validate)
    (tmp_path / "q.yaml").write_text(profile_yaml(Facts(cpu_vendor="intel")))
    assert load_profile(tmp_path / "q.yaml").runtime.memory_high is None


def test_cpuinfo_parsing() -> None:
    text = ("processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Core(TM) i7-9700K\n"
            "flags\t\t: fpu avx avx2 fma\nprocessor\t: 1\nvendor_id\t: GenuineIntel\n")
    vendor, model, flags = read_cpuinfo(text)
    assert (vendor, model) == ("intel", "Intel(R) Core(TM) i7-9700K")
    assert Facts(flags=flags).isa == "avx2"
    assert Facts(flags=["avx2", "avx512f", "avx512bw"]).isa == "avx512"


def test_gpu_detection_reads_pci_class_and_vendor(tmp_path: Path) -> None:
    for name, cls, vendor in (("0000:00:02.0", "0x030000", "0x8086"),
                              ("0000:01:00.0", "0x030200", "0x10de")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "class").write_text(cls + "\n")
        (tmp_path / name / "vendor").write_text(vendor + "\n")
    assert _gpu(tmp_path) == "nvidia"
    assert _gpu(tmp_path / "absent") == "none"


def test_init_quotes_awkward_cpu_names(tmp_path: Path) -> None:
    text = profile_yaml(Facts(cpu_vendor="amd", cpu_model='AMD "Ryzen": 9 #1', ram_bytes=2**35))
    (tmp_path / "p.yaml").write_text(text)
    assert load_profile(tmp_path / "p.yaml").hardware.cpu_model == 'AMD "Ryzen": 9 #1'


def test_schema_is_valid_and_accepts_the_shipped_profiles() -> None:
    res = synapse("schema")
    assert res.returncode == 0
    schema = json.loads(res.stdout)
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    for path in PROFILES.glob("*.yaml"):
        data = yaml.safe_load(path.read_text())
        if "extends" in data:
            continue  # partial profiles are complete only after merging
        errors = list(validator.iter_errors(json.loads(json.dumps(data))))
        assert not errors, f"{path.name}: {errors[0].message}"
    assert list(validator.iter_errors({"synapse": 1, "name": "x", "memroy": {}}))


def test_render_then_diff(tmp_path: Path) -> None:
    base = tmp_path / "base.yaml"
    base.write_text((PROFILES / "nvidia-gpu.yaml").read_text())
    assert synapse("render", str(base), "-o", str(tmp_path / "a")).returncode == 0
    base.write_text(base.read_text().replace("swappiness: 150", "swappiness: 170"))
    res = synapse("render", str(base), "-o", str(tmp_path / "b"), "--json")
    assert res.returncode == 0 and json.loads(res.stdout)["files"] > 10
    same = synapse("diff", str(tmp_path / "a"), str(tmp_path / "a"))
    assert same.returncode == 0 and "no differences" in same.stdout
    res = synapse("diff", str(tmp_path / "a"), str(tmp_path / "b"))
    assert res.returncode == 1
    assert "modified: rootfs/etc/sysctl.d/90-synapse.conf" in res.stdout
    assert "-vm.swappiness = 150" in res.stdout and "+vm.swappiness = 170" in res.stdout
    changes = json.loads(synapse("diff", str(tmp_path / "a"), str(tmp_path / "b"), "--json").stdout)
    assert [c["path"] for c in changes] == ["rootfs/etc/sysctl.d/90-synapse.conf"]


def test_diff_of_a_non_render_is_bad_input(tmp_path: Path) -> None:
    res = synapse("diff", str(tmp_path), str(tmp_path))
    assert res.returncode == 2 and "is not a rendered tree" in res.stderr
