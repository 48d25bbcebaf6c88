"""Bad record files: one sentence naming file:line, exit code 2."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.bench.conftest import error_text, invoke


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("", "is empty"),
        ("\n\n", "is empty"),
        ('{"n_prompt": 16\n', ":1 is not valid JSON"),
        ("[1, 2]\n", ":1 is not a JSON object"),
        ('{"n_prompt": 16, "n_gen": 0}\n', ":1 lacks the llama-bench field(s) n_depth"),
    ],
)
def test_bad_record_files_are_refused(tmp_path: Path, content: str, expected: str) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text(content)
    for args in (["compare", str(bad), str(bad)], ["report", str(bad), str(bad), "-o",
                                                    str(tmp_path / "r")]):
        result = invoke(["bench", *args])
        assert result.exit_code == 2
        assert expected in error_text(result)
        assert str(bad) in error_text(result)
        assert len(error_text(result).splitlines()) == 1
    assert not (tmp_path / "r").exists()


def test_a_missing_record_file_is_refused(tmp_path: Path) -> None:
    result = invoke(["bench", "compare", str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl")])
    assert result.exit_code == 2
    assert f"record file {tmp_path / 'a.jsonl'} does not exist" in error_text(result)


def test_a_llama_bench_record_without_synapse_provenance_is_refused(tmp_path: Path) -> None:
    fields = {"n_prompt": 0, "n_gen": 8, "n_depth": 0, "n_threads": 2, "avg_ts": 10.0,
              "stddev_ts": 0.1, "samples_ns": [1], "samples_ts": [10.0], "build_commit": "x",
              "model_size": 1}
    import json

    bad = tmp_path / "plain-llama-bench.jsonl"
    bad.write_text(json.dumps(fields) + "\n")
    result = invoke(["bench", "compare", str(bad), str(bad)])
    assert result.exit_code == 2
    assert "has no 'synapse' provenance block" in error_text(result)
    fields["samples_ts"] = []
    bad.write_text(json.dumps(fields) + "\n")
    result = invoke(["bench", "compare", str(bad), str(bad)])
    assert "has no usable samples_ts" in error_text(result)


def test_bad_run_options_are_refused(tmp_path: Path) -> None:
    out = str(tmp_path / "o.jsonl")
    for args, expected in [
        (["-r", "0"], "--repetitions 0 is below 1"),
        (["-r", "10", "--max-repetitions", "5"], "--max-repetitions 5 is below"),
        (["--threads", "a,b"], "is not a comma-separated list"),
        (["--threads", "0"], "holds a count below 1"),
        (["--pg", "16"], "is not PROMPT,GEN"),
        (["-p", "0", "-n", "0", "--pg", "off"], "no test selected"),
    ]:
        result = invoke(["bench", "run", "--label", "x", "-o", out, *args])
        assert result.exit_code == 2, args
        assert expected in error_text(result)
    assert not Path(out).exists()


def test_the_synapse_command_prints_one_error_line_and_exits_2(tmp_path: Path) -> None:
    import subprocess

    from tests.conftest import need_tool

    synapse = need_tool("synapse", "pip install -e .")
    missing = tmp_path / "missing.jsonl"
    proc = subprocess.run([synapse, "bench", "compare", str(missing), str(missing)],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr == f"error: record file {missing} does not exist; pass an NDJSON file " \
                          "written by `synapse bench run`\n"
    assert proc.stdout == ""
