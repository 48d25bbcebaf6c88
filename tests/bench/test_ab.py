"""`synapse bench ab`: the stock and the tuned Debian images booted side by side in QEMU,
measured by one llama-bench in alternating rounds (under TCG here: mechanics, no speed claim)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from synapse_os.bench import ab, provenance, records
from synapse_os.errors import UserError
from tests.bench.conftest import error_text, invoke, read_ndjson
from tests.conftest import PROFILES, REPO, STOCK, TUNED
from tests.vm.test_qemu import qemu_pids_for


def test_a_guest_s_provenance_is_read_by_the_same_rules_as_the_host_s() -> None:
    """The dump script a guest runs, run here: the host's provenance read back from it is the
    host's provenance (bar the harness's Python, which a guest does not have)."""
    out = subprocess.run(["bash", "-c", ab.dump_script()], capture_output=True, text=True,
                         check=True).stdout
    from_dump = provenance.collect(ab.parse_dump(out))
    here = provenance.collect()
    assert from_dump.pop("python") is None and here.pop("python")
    from_dump.pop("load_average"), here.pop("load_average")
    assert from_dump == here
    assert from_dump["cmdline"] == Path("/proc/cmdline").read_text().strip()


@pytest.mark.parametrize(("extra", "expected"), [
    (["--rounds", "1"], "--rounds 1 is below 2"),
    (["-p", "0", "-n", "0"], "at least one must be above 0"),
    (["--threads", "3"], "--threads 3 is not between 1 and the guest's 2 vCPUs"),
])
def test_bad_settings_are_one_sentence_and_nothing_is_written(tmp_path: Path, extra: list[str],
                                                              expected: str) -> None:
    out = tmp_path / "ab"
    result = invoke(["bench", "ab", str(STOCK), str(TUNED), "-o", str(out), *extra])
    assert result.exit_code == 2 and expected in error_text(result)
    assert not out.exists() and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("args", "expected"), [
    (["--boot-entries", "stock", str(TUNED)], "is not two different entries"),
    (["--boot-entries", "tuned,tuned", str(TUNED)], "is not two different entries"),
    (["--boot-entries", "stock,tuned", str(TUNED), "--rounds", "1"], "--rounds 1 is below 2"),
    (["--boot-entries", "stock,tuned", str(STOCK), str(TUNED)], "takes one profile"),
    ([str(TUNED)], "takes BASELINE and CANDIDATE profiles"),
])
def test_bad_boot_ab_requests_are_one_sentence_and_nothing_is_written(
        tmp_path: Path, args: list[str], expected: str) -> None:
    from synapse_os.render.stock import BOOT_AB_DIR

    out = tmp_path / "ab"
    result = invoke(["bench", "ab", "-o", str(out), *args])
    assert result.exit_code == 2 and expected in error_text(result), error_text(result)
    assert len(error_text(result).strip().splitlines()) == 1
    assert not out.exists() and not Path(BOOT_AB_DIR).exists()


@pytest.mark.parametrize("content", [None, "not json", '{"plan": {}, "boots": []}',
                                     '{"plan": {"labels": {}}, "boots": [{"arm": "A"}]}'])
def test_a_report_of_no_finished_boot_ab_is_one_sentence(tmp_path: Path,
                                                          content: str | None) -> None:
    if content is not None:
        (tmp_path / "boots.json").write_text(content)
    result = invoke(["bench", "ab-report", str(tmp_path)])
    assert result.exit_code == 2, error_text(result)
    assert len(error_text(result).strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ([] if content is None
                                                          else ["boots.json"])


def test_the_same_profile_twice_and_a_used_output_are_refused(tmp_path: Path) -> None:
    same = invoke(["bench", "ab", str(TUNED), str(TUNED), "-o", str(tmp_path / "ab")])
    assert same.exit_code == 2 and "both arms are the same profile" in error_text(same)
    used = tmp_path / "used"
    used.mkdir()
    (used / "keep.txt").write_text("mine")
    busy = invoke(["bench", "ab", str(STOCK), str(TUNED), "-o", str(used)])
    assert busy.exit_code == 2 and "is not an empty directory" in error_text(busy)
    assert (used / "keep.txt").read_text() == "mine"


def test_an_image_of_another_profile_is_refused(stock_image: Path, tmp_path: Path) -> None:
    result = invoke(["bench", "ab", str(STOCK), str(TUNED), "-o", str(tmp_path / "ab"),
                     "--image-b", str(stock_image)])
    assert result.exit_code == 2
    assert "was built from profile 'stock-baseline-debian'" in error_text(result)
    assert not (tmp_path / "ab").exists()


@pytest.mark.slow
def test_ab_boots_both_arms_measures_both_and_reports(stock_image: Path, tuned_image: Path,
                                                     tuned_profile: Path, llama_bench: Path,
                                                     tmp_path: Path) -> None:
    out = tmp_path / "ab"
    run = subprocess.run(
        [sys.executable, "-m", "synapse_os.cli", "bench", "ab", str(STOCK), str(tuned_profile),
         "--image-a", str(stock_image), "--image-b", str(tuned_image), "-o", str(out),
         # the smallest real run: one generated token per round (~10 s under TCG)
         "-p", "0", "-n", "1", "-r", "1", "--no-warmup", "--rounds", "2",
         "--llama-bench", str(llama_bench), "--json"], cwd=REPO, capture_output=True, text=True, timeout=2400)
    assert run.returncode == 0, run.stderr[-3000:]
    summary = json.loads(run.stdout)
    assert summary["order"] == "A B B A"
    assert summary["virtualised"]["accel"] in ("tcg", "kvm")
    arms = summary["arms"]
    # the tuned arm's engine is stopped before measuring; the stock arm has none
    assert arms["A"]["stopped_units"] == [] and arms["B"]["stopped_units"] == [
        "synapse-runtime.service"]
    assert arms["A"]["boot_id"] != arms["B"]["boot_id"]
    # verify per arm: each passes its own profile; stock fails the tuned settings
    assert arms["A"]["own_checks"]["fail"] == 0 and arms["B"]["own_checks"]["fail"] == 0
    assert arms["B"]["candidate_checks"]["fail"] == 0
    assert arms["A"]["candidate_checks"]["fail"] >= 5

    by_arm = {name: read_ndjson(out / "records" / f"{name}.jsonl") for name in ("A", "B")}
    for name, recs in by_arm.items():
        records.load(out / "records" / f"{name}.jsonl")  # valid record files
        assert [r["synapse"]["test"] for r in recs] == ["tg1"]
        for r in recs:
            block = r["synapse"]["ab"]
            assert block["arm"] == name and block["virtualised"] == summary["virtualised"]
            assert [x["round"] for x in block["rounds"]] == [0, 1]
            assert all(len(x["samples_ts"]) == 1 for x in block["rounds"])
            assert len(r["samples_ts"]) == 2
            assert r["synapse"]["llama_bench"]["binary_sha256"] == \
                by_arm["A"][0]["synapse"]["llama_bench"]["binary_sha256"]
    stock_live = by_arm["A"][0]["synapse"]["ab"]["candidate_live"]
    for must_fail in ("sysctl vm.swappiness", "cmdline mitigations=off", "zram0 swap active",
                      "journald Storage", "unit bluetooth.service masked"):
        assert stock_live[must_fail]["status"] == "fail", stock_live[must_fail]
    assert stock_live["sysctl vm.swappiness"]["actual"] == "60"  # the kernel default
    tuned_system = by_arm["B"][0]["synapse"]["provenance"]
    stock_system = by_arm["A"][0]["synapse"]["provenance"]
    assert "mitigations=off" in tuned_system["cmdline"]
    assert "mitigations=off" not in stock_system["cmdline"]
    assert tuned_system["kernel"] != stock_system["kernel"]  # the tuned kernel vs Debian's

    assert set(summary["interleaved"]) == {"tg1"}
    for result in summary["interleaved"].values():
        assert set(result) == {"verdict", "whole", "first_half", "second_half"}
    text = (out / "RESULTS.md").read_text()
    assert "## The A/B run" in text and "A B B A" in text
    if summary["virtualised"]["accel"] == "tcg":
        assert "No speed claim" in text
    for plot in ("throughput.png", "ratio.png", "samples.png"):
        assert (out / plot).stat().st_size > 1000
    assert not (out / ".work").exists()
    # the records are ordinary bench records: `bench compare` reads them
    compared = invoke(["bench", "compare", str(out / "records" / "A.jsonl"),
                       str(out / "records" / "B.jsonl"), "--json"])
    assert compared.exit_code == 0, error_text(compared)
    assert not qemu_pids_for(str(stock_image)) and not qemu_pids_for(str(tuned_image))


def test_the_stock_entry_is_the_newest_distribution_kernel_without_the_profile_words(
        tmp_path: Path) -> None:
    """Entries as kernel-install writes them (tabs too): the stock entry copies the newest
    kernel that is not the profile's own (6.1.0-28 after 6.1.0-9), keeps the root options,
    drops every profile word and adds synapse.stock; an option it cannot write is refused."""
    from synapse_os.bench import bootab
    from synapse_os.profile import load_profile
    from synapse_os.tunables import desired_state

    profile = load_profile(TUNED)
    words = " ".join(desired_state(profile).cmdline)
    entries = tmp_path / "loader" / "entries"
    entries.mkdir(parents=True)
    for version in ("6.1.192-synapse", "6.1.0-9-amd64", "6.1.0-28-amd64"):
        (entries / f"synapse-{version}.conf").write_text(
            f"title Debian\nversion\t{version}\nmachine-id abc\nlinux /synapse/{version}/linux\n"
            f"initrd /synapse/{version}/initrd\noptions root=PARTLABEL=synapse-root ro {words}\n")
    assert bootab.write_stock_entry(profile, tmp_path) == bootab.STOCK_ENTRY
    stock = bootab._read_entry(entries / bootab.STOCK_ENTRY)
    assert stock["version"] == ["6.1.0-28-amd64"]
    assert stock["linux"] == ["/synapse/6.1.0-28-amd64/linux"]
    assert stock["options"] == ["root=PARTLABEL=synapse-root ro synapse.stock"]
    (tmp_path / "loader" / "loader.conf").write_text("default synapse-*-synapse.conf\n")
    names = bootab._entries(tmp_path)
    assert bootab._default_entry(tmp_path, names) == "synapse-6.1.192-synapse.conf"
    assert bootab._entry_id("Synapse-6.1.192-synapse+2-1.conf") == "synapse-6.1.192-synapse.conf"
    (entries / "synapse-6.1.0-30-amd64.conf").write_text(
        'version 6.1.0-30-amd64\nlinux /l\noptions root=/dev/vda dyndbg="file x +p"\n')
    with pytest.raises(UserError, match="cannot be written from kernel 6.1.0-30-amd64"):
        bootab.write_stock_entry(profile, tmp_path)


def test_a_boot_step_runs_llama_bench_on_the_inference_cpus_where_the_profile_has_them(
        ) -> None:
    """systemd's CPUAffinity leaves the step's unit the housekeeping CPUs: llama-bench is
    pinned to the engine's CPUs instead (one thread per physical core, as the engine), the
    same in both arms; a profile that does not partition measures on every CPU the step may
    use."""
    from synapse_os.bench import bootab
    from synapse_os.profile import load_profile
    from synapse_os.runtime.config import physical_cores

    state = {"settings": bootab.BootSettings(n_prompt=4, n_gen=1, repetitions=1).__dict__}
    partitioned = load_profile(PROFILES / "cpu-avx2.yaml")
    assert partitioned.cpu.inference_cpus == "2-15"
    cpus = bootab.bench_cpus(partitioned)
    assert cpus == list(range(2, 16))
    argv = bootab.llama_bench_argv(state, cpus)
    assert argv[:4] == ["taskset", "-c", "2-15", f"{bootab.BOOT_AB_DIR}/llama-bench"]
    assert argv[argv.index("-t") + 1] == str(physical_cores(range(2, 16)))
    whole = bootab.bench_cpus(load_profile(TUNED))
    assert whole == sorted(os.sched_getaffinity(0))
    argv = bootab.llama_bench_argv(state | {"settings": state["settings"] | {"threads": 1}},
                                   whole)
    assert argv[argv.index("-t") + 1] == "1"
    # taskset takes the list as written (here, on this machine's own CPUs)
    res = subprocess.run([*argv[:3], "true"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
