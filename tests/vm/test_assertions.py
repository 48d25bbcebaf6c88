"""The VM assertions are generated from the profile, and reported honestly."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

from synapse_os.apply.plan import rootfs_files
from synapse_os.profile import load_profile
from synapse_os.render import render_profile
from synapse_os.tunables import desired_state
from synapse_os.vm.assertions import vm_assertions
from synapse_os.vm.report import Outcome, VerifyAgreement, VmReport
from synapse_os.vm.runner import compare_with_verify, resolved_profile_yaml
from tests.conftest import PROFILES


def test_every_declared_setting_has_an_assertion() -> None:
    profile = load_profile(PROFILES / "cpu-avx2-debian.yaml")
    state = desired_state(profile)
    ids = {c.id for c in vm_assertions(profile)}
    for key in state.sysctl:
        assert f"sysctl {key}" in ids
    for word in state.cmdline:
        assert f"cmdline {word}" in ids
    for unit in state.mask:
        assert {f"unit {unit} masked", f"unit {unit} inactive"} <= ids
    for key in state.journald:
        assert f"journald {key}" in ids
    assert {"zram0 swap active", "zram0 algorithm", "zswap enabled"} <= ids
    for rel in rootfs_files(render_profile(profile)):
        assert f"file /{rel}" in ids
    assert {"kernel CONFIG_ZRAM", "kernel CONFIG_TRANSPARENT_HUGEPAGE"} <= ids
    assert {"service /health", "service completion", "service port 8090 listening"} <= ids


def test_a_changed_setting_changes_the_assertion(tmp_path) -> None:  # type: ignore[no-untyped-def]
    child = tmp_path / "p.yaml"
    child.write_text(f"extends: {PROFILES / 'cpu-avx2-debian.yaml'}\nmemory:\n  swappiness: 90\n")
    before = {c.id: c.expected for c in vm_assertions(load_profile(PROFILES / "cpu-avx2-debian.yaml"))}
    after = {c.id: c.expected for c in vm_assertions(load_profile(child))}
    assert before["sysctl vm.swappiness"] == "180" and after["sysctl vm.swappiness"] == "90"


def test_stock_baseline_asserts_only_what_it_declares() -> None:
    checks = vm_assertions(load_profile(PROFILES / "stock-baseline-debian.yaml"))
    kinds = {c.kind for c in checks}
    # hostname, timezone, rendered files, the installed root's file system and its wired
    # network (every install gets one: network.wired): nothing tuned
    assert kinds <= {"file", "mount", "network"}, kinds
    assert not any(c.id.startswith(("sysctl", "cmdline", "service", "zram")) for c in checks)


def test_resolved_profile_round_trips_through_the_loader(tmp_path) -> None:  # type: ignore[no-untyped-def]
    profile = load_profile(PROFILES / "cpu-avx2-debian.yaml")
    out = tmp_path / "resolved.yaml"
    out.write_bytes(resolved_profile_yaml(profile))
    assert load_profile(out) == profile


def outcome(id_: str, status: str) -> Outcome:
    return Outcome(id_, "sysctl", "memory.x", "1", "1" if status == "pass" else "2", status)


def test_verify_agreement_flags_differences_and_gaps() -> None:
    mine = [outcome("a", "pass"), outcome("b", "fail"), outcome("c", "unknown"),
            outcome("kernel only", "pass")]
    theirs = {"checks": [{"id": "a", "status": "pass"}, {"id": "b", "status": "pass"},
                         {"id": "c", "status": "unknown"}, {"id": "d", "status": "pass"}]}
    agreement = compare_with_verify(mine, json.dumps(theirs))
    assert agreement.compared == 3
    assert {d["id"] for d in agreement.disagreements} == {"b", "d"}
    assert not agreement.ok
    assert compare_with_verify(mine[:1], json.dumps({"checks": [theirs["checks"][0]]})).ok
    broken = compare_with_verify(mine, "Traceback: nothing useful", rc=1)
    assert not broken.ok and "without a JSON report" in broken.note


def test_junit_counts_failures_skips_and_infrastructure_errors() -> None:
    report = VmReport("x.img", "p", "tcg", "direct",
                      outcomes=[outcome("a", "pass"), outcome("b", "fail"), outcome("c", "unknown")],
                      verify=VerifyAgreement(True, compared=3,
                                             disagreements=[{"id": "b", "vm": "fail",
                                                             "verify": "pass"}]),
                      timings={"boot": 30.0})
    suite = ET.fromstring(report.junit_xml())
    assert suite.get("tests") == "5"  # boot + 3 assertions + verify agreement
    assert suite.get("failures") == "2" and suite.get("skipped") == "1"
    assert suite.get("errors") == "0"
    failed = [c.get("name") for c in suite.iter("testcase") if c.find("failure") is not None]
    assert failed == ["b", "synapse verify agrees"]
    assert not report.ok

    report.infra_error = "the guest did not boot to its test shell within 600 s"
    report.console_tail = "Kernel panic - not syncing"
    suite = ET.fromstring(report.junit_xml())
    assert suite.get("errors") == "1"
    err = next(suite.iter("error"))
    assert err.get("type") == "infrastructure" and "Kernel panic" in (err.text or "")


def test_a_report_with_no_assertions_is_not_ok() -> None:
    assert not VmReport("x.img", "p", "tcg", "direct").ok
