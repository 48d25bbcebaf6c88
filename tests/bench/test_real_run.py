"""A real llama-bench run on the real small model, and everything downstream of it."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from synapse_os.bench import build
from tests.bench.conftest import error_text, invoke, read_ndjson, write_ndjson

pytestmark = pytest.mark.slow

TESTS = {"pp16", "tg8", "pp16+tg8"}


def test_run_records_every_test_at_every_thread_count(real_run: Path,
                                                      small_model: tuple[Path, str]) -> None:
    records = read_ndjson(real_run)
    keys = {(r["synapse"]["test"], r["n_threads"]) for r in records}
    assert keys == {(t, n) for t in TESTS for n in (1, 2)}
    for r in records:
        s = r["synapse"]
        assert s["real"] is True
        assert s["label"] == "test-a"
        assert s["model"]["sha256"] == small_model[1]
        assert s["model"]["size_bytes"] == small_model[0].stat().st_size
        assert 3 <= len(r["samples_ts"]) == len(r["samples_ns"]) == s["repetitions"] <= 6
        assert all(x > 0 for x in r["samples_ts"])
        # more samples than asked for only when the first ones were noisy
        if s["repetitions"] > 3:
            assert s["extra_runs"] >= 1
        assert s["provenance"]["cmdline"] == Path("/proc/cmdline").read_text().strip()
        assert s["llama_bench"]["binary_sha256"]
        assert s["bandwidth"]["read_gbps"] > 0
        assert set(s["bandwidth"]["by_threads"]) == {"1", "2"}


def test_the_records_carry_every_setting_of_the_profile_as_measured(real_run: Path) -> None:
    """`--profile`: each record holds the live value of every setting the profile's checks
    read (what `synapse verify` would report on this untuned machine)."""
    from synapse_os.profile import load_profile
    from synapse_os.vm.assertions import settled_checks
    from tests.bench.conftest import LIVE_PROFILE

    profile = load_profile(LIVE_PROFILE)
    wanted = {c.id for c in settled_checks(profile)}
    for r in read_ndjson(real_run):
        live = r["synapse"]["live"]
        assert (live["profile"], live["profile_hash"]) == (profile.name, profile.hash())
        assert set(live["checks"]) == wanted
        swappiness = live["checks"]["sysctl vm.swappiness"]
        assert swappiness["actual"] == Path("/proc/sys/vm/swappiness").read_text().strip()
        assert swappiness["status"] == ("pass" if swappiness["actual"] ==
                                        swappiness["expected"] else "fail")
        assert live["checks"]["cmdline mitigations=off"]["source"] == "boot.mitigations"


def test_generation_is_reported_against_the_bandwidth_roofline(real_run: Path) -> None:
    for r in read_ndjson(real_run):
        roofline = r["synapse"]["roofline"]
        if r["n_prompt"] == 0:
            expected = (r["synapse"]["median_ts"] * r["model_size"]
                        / (r["synapse"]["bandwidth"]["read_gbps"] * 1e9))
            assert roofline["fraction"] == pytest.approx(expected)
            # tg cannot beat the memory roofline by much (caches help a 270M model a little)
            assert 0.01 < roofline["fraction"] < 1.5
        else:
            assert roofline is None


def test_llama_cpp_compare_script_reads_the_records(real_run: Path, llama_bench: Path,
                                                    tmp_path: Path) -> None:
    """llama.cpp's own scripts/compare-llama-bench.py reads the file and tabulates every test."""
    source = build.resolve_source(None)  # the vendored tree the binary was built from
    script = source.tree / "scripts" / "compare-llama-bench.py"
    records = read_ndjson(real_run)
    commit = records[0]["build_commit"]
    proc = subprocess.run([sys.executable, script, "-i", real_run, "--tool", "llama-bench",
                           "-b", commit, "-c", commit], capture_output=True, text=True,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    rows = {}
    for line in proc.stdout.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == 7 and cells[2].isdigit():
            rows[(cells[3], int(cells[2]))] = float(cells[4])
    assert rows == {(r["synapse"]["test"], r["n_threads"]): round(r["avg_ts"], 2)
                    for r in records}


def _scaled(records: list[dict[str, Any]], factor: float, label: str) -> list[dict[str, Any]]:
    out = copy.deepcopy(records)
    for r in out:
        r["samples_ts"] = [x * factor for x in r["samples_ts"]]
        r["synapse"]["label"] = label
    return out


def test_compare_with_itself_finds_no_difference(real_run: Path) -> None:
    result = invoke(["bench", "compare", str(real_run), str(real_run), "--json"])
    assert result.exit_code == 0, error_text(result)
    data = json.loads(result.output)
    assert len(data["tests"]) == 6
    assert {t["verdict"] for t in data["tests"]} == {"no difference"}
    assert data["geomean_ratio"] == pytest.approx(1.0)
    for t in data["tests"]:
        assert t["baseline_cv"] == t["candidate_cv"]
        assert (t["baseline_roofline"] is None) == (not t["test"].startswith("tg"))


def test_compare_detects_a_five_percent_shift(real_run: Path, tmp_path: Path) -> None:
    records = read_ndjson(real_run)
    # Five-percent-faster copies of each sample set, with the real jitter of this machine: the
    # run's own samples repeated three times so that the test has enough samples for p < 0.05.
    base = copy.deepcopy(records)
    for r in base:
        r["samples_ts"] = r["samples_ts"] * 3
    faster = _scaled(base, 1.05, "test-b")
    base_file = write_ndjson(tmp_path / "a.jsonl", base)
    cand_file = write_ndjson(tmp_path / "b.jsonl", faster)
    result = invoke(["bench", "compare", str(base_file), str(cand_file), "--json"])
    assert result.exit_code == 0, error_text(result)
    data = json.loads(result.output)
    assert data["geomean_ratio"] == pytest.approx(1.05)
    for t in data["tests"]:
        assert t["ratio"] == pytest.approx(1.05)
        assert t["verdict"] != "regressed"
        if max(t["baseline_cv"], t["candidate_cv"]) < 0.02:
            assert t["verdict"] == "improved"
    text = invoke(["bench", "compare", str(base_file), str(cand_file)])
    assert text.exit_code == 0
    assert "test-b vs test-a" in text.output and "geometric mean ratio: 1.050" in text.output


def test_report_writes_results_and_plots(real_run: Path, tmp_path: Path) -> None:
    records = read_ndjson(real_run)
    tuned = _scaled(records, 1.10, "tuned")
    for r in tuned:
        r["synapse"]["provenance"]["thp"]["enabled"] = "always-test"
    cand = write_ndjson(tmp_path / "tuned.jsonl", tuned)
    out = tmp_path / "report"
    result = invoke(["bench", "report", str(real_run), str(cand), "-o", str(out)])
    assert result.exit_code == 0, error_text(result)
    text = (out / "RESULTS.md").read_text()
    assert "# Benchmark results: tuned vs test-a" in text
    assert "| provenance.thp.enabled |" in text and "always-test" in text
    assert "1.100" in text
    for name in ("throughput.png", "ratio.png", "samples.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert (out / name).stat().st_size > 10_000
    # a second report replaces the first as a whole
    again = invoke(["bench", "report", str(real_run), str(real_run), "-o", str(out)])
    assert again.exit_code == 0, error_text(again)
    assert "Nothing: the recorded provenance of both runs is identical." in (
        out / "RESULTS.md").read_text()


# --- mismatched and unreal records --------------------------------------------------------

def _variant(real_run: Path, tmp_path: Path, change: str) -> Path:
    records = read_ndjson(real_run)
    for r in records:
        if change == "model":
            r["synapse"]["model"]["sha256"] = "0" * 64
        elif change == "build":
            r["build_commit"] = "deadbee"
        elif change == "unreal":
            r["synapse"]["real"] = False
        elif change == "threads":
            r["n_threads"] = r["n_threads"] + 10
    return write_ndjson(tmp_path / f"{change}.jsonl", records)


def test_compare_refuses_different_models(real_run: Path, tmp_path: Path) -> None:
    other = _variant(real_run, tmp_path, "model")
    result = invoke(["bench", "compare", str(real_run), str(other)])
    assert result.exit_code == 2
    assert "different models" in error_text(result)
    assert "--allow-model-mismatch" in error_text(result)
    allowed = invoke(["bench", "compare", str(real_run), str(other), "--allow-model-mismatch"])
    assert allowed.exit_code == 0, error_text(allowed)
    assert "warning: the records measure different models" in allowed.output


def test_compare_refuses_different_builds(real_run: Path, tmp_path: Path) -> None:
    other = _variant(real_run, tmp_path, "build")
    result = invoke(["bench", "compare", str(real_run), str(other)])
    assert result.exit_code == 2
    assert "different llama.cpp builds" in error_text(result)
    assert "deadbee" in error_text(result)
    allowed = invoke(["bench", "compare", str(real_run), str(other), "--allow-build-mismatch"])
    assert allowed.exit_code == 0, error_text(allowed)


def test_compare_refuses_records_not_from_a_real_run(real_run: Path, tmp_path: Path) -> None:
    result = invoke(["bench", "compare", str(real_run), str(_variant(real_run, tmp_path,
                                                                      "unreal"))])
    assert result.exit_code == 2
    assert "not from a real model and real llama-bench run" in error_text(result)


def test_compare_refuses_files_with_no_common_test(real_run: Path, tmp_path: Path) -> None:
    result = invoke(["bench", "compare", str(real_run), str(_variant(real_run, tmp_path,
                                                                      "threads"))])
    assert result.exit_code == 2
    assert "share no test" in error_text(result)


def test_a_file_with_two_runs_is_refused(real_run: Path, tmp_path: Path) -> None:
    doubled = tmp_path / "doubled.jsonl"
    doubled.write_text(real_run.read_text() * 2)
    result = invoke(["bench", "compare", str(real_run), str(doubled)])
    assert result.exit_code == 2
    assert "repeats test" in error_text(result)


# --- bad input to run -------------------------------------------------------------------

def test_run_refuses_a_missing_model(llama_bench: Path, tmp_path: Path) -> None:
    result = invoke(["bench", "run", "--label", "x", "-o", str(tmp_path / "o.jsonl"),
                     "--model", str(tmp_path / "none.gguf"), "--llama-bench", str(llama_bench)])
    assert result.exit_code == 2
    assert "does not exist" in error_text(result)
    assert not (tmp_path / "o.jsonl").exists()


def test_run_refuses_a_file_that_is_not_gguf(llama_bench: Path, tmp_path: Path) -> None:
    model = tmp_path / "model.gguf"
    model.write_text("hello")
    result = invoke(["bench", "run", "--label", "x", "-o", str(tmp_path / "o.jsonl"),
                     "--model", str(model), "--llama-bench", str(llama_bench)])
    assert result.exit_code == 2
    assert "is not a GGUF file" in error_text(result)


def test_a_llama_bench_crash_is_reported_with_its_stderr(llama_bench: Path,
                                                         tmp_path: Path) -> None:
    model = tmp_path / "corrupt.gguf"
    model.write_bytes(b"GGUF" + b"\x03\x00\x00\x00" + b"\xff" * 64)
    out = tmp_path / "o.jsonl"
    result = invoke(["bench", "run", "--label", "x", "-o", str(out), "--model", str(model),
                     "--llama-bench", str(llama_bench), "-p", "8", "-n", "0", "--pg", "off",
                     "-r", "1", "--threads", "1", "--bandwidth-mib", "16"])
    assert result.exit_code == 2
    message = error_text(result)
    assert message.startswith(f"llama-bench failed on model {model}")
    assert "its last output was:" in message
    assert len(message.splitlines()) > 1  # the stderr tail follows the sentence
    assert not out.exists()


def test_run_refuses_a_binary_that_is_not_llama_bench(tmp_path: Path,
                                                      small_model: tuple[Path, str]) -> None:
    fake = tmp_path / "llama-bench"
    fake.write_text("#!/bin/sh\necho hello\n")
    fake.chmod(0o755)
    result = invoke(["bench", "run", "--label", "x", "-o", str(tmp_path / "o.jsonl"),
                     "--llama-bench", str(fake), "--threads", "1", "--bandwidth-mib", "16",
                     "-r", "1"])
    assert result.exit_code == 2
    assert "printed no records" in error_text(result)
