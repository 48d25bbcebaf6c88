"""The settings reference and `synapse schema` come from the model's fields."""

from __future__ import annotations

import json
import subprocess
import sys

from synapse_os.profile.schema import BEGIN, END, reference_markdown, settings
from tests.conftest import PROFILES, REPO


def test_every_setting_says_what_it_does() -> None:
    found = settings()
    assert len(found) > 100
    assert [s.key for s in found if not s.description] == []
    keys = {s.key for s in found}
    assert {"memory.swappiness", "runtime.models.<name>.sha256", "kernel.nohz_full_cpus",
            "memory.zram.algorithm"} <= keys


def test_the_readme_carries_the_generated_reference() -> None:
    readme = (REPO / "README.md").read_text()
    start, end = readme.index(BEGIN), readme.index(END) + len(END)
    assert readme[start:end] + "\n" == reference_markdown(), \
        "README's settings reference is stale: regenerate it with `synapse schema --markdown`"


def test_schema_command_prints_json_schema_that_a_shipped_profile_validates_against() -> None:
    import jsonschema

    res = subprocess.run([sys.executable, "-m", "synapse_os.cli", "schema"], cwd=REPO,
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    schema = json.loads(res.stdout)
    from synapse_os.profile import load_profile

    profile = load_profile(PROFILES / "cpu-avx2.yaml").model_dump(mode="json")
    jsonschema.validate(profile, schema)
    bad = dict(profile, base="gentoo")
    try:
        jsonschema.validate(bad, schema)
    except jsonschema.ValidationError as exc:
        assert "gentoo" in str(exc.message)
    else:
        raise AssertionError("a base the model refuses passed the schema")
    md = subprocess.run([sys.executable, "-m", "synapse_os.cli", "schema", "--markdown"],
                        cwd=REPO, capture_output=True, text=True, timeout=60)
    assert md.returncode == 0 and md.stdout == reference_markdown()
