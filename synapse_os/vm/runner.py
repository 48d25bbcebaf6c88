"""`synapse vm test`: boot an image, run every generated assertion, compare with
`synapse verify` run inside the guest, and report."""

from __future__ import annotations

import base64
import json
import shlex
import time
from pathlib import Path

import yaml

from synapse_os.image.progress import Progress
from synapse_os.profile.model import ENGINE_UNITS, Profile
from synapse_os.tunables import Check
from synapse_os.vm.assertions import vm_assertions
from synapse_os.vm.machine import CommandFailed, InfraError, Machine
from synapse_os.vm.report import Outcome, VerifyAgreement, VmReport

GUEST_SYNAPSE = "/opt/synapse/bin/synapse"
GUEST_PROFILE = "/run/synapse-test/profile.yaml"


def run_checks(machine: Machine, checks: list[Check], timeout: float = 300) -> list[Outcome]:
    """Run probes in one guest round trip (each with `sh -c`, stdout only, like verify)."""
    if not checks:
        return []
    lines = ['p() { o=$(sh -c "$1" 2>/dev/null </dev/null); r=$?; '
             'printf "%s %s\\n" "$r" "$(printf %s "$o" | base64 -w0)"; }']
    lines += [f"p {shlex.quote(c.probe)}" for c in checks]
    start = time.monotonic()
    rc, out = machine.execute("\n".join(lines), timeout=timeout)
    elapsed = (time.monotonic() - start) / len(checks)
    rows = [line.split(" ", 1) for line in out.splitlines() if line.strip()]
    if rc != 0 or len(rows) != len(checks):
        raise InfraError(f"the probe batch returned {len(rows)} results for {len(checks)} "
                         f"probes (exit {rc}): {out[-500:]}")
    outcomes = []
    for check, row in zip(checks, rows, strict=True):
        code = int(row[0])
        output = base64.b64decode(row[1] if len(row) > 1 else "").decode("utf-8", "replace")
        status, actual = check.evaluate(code, output)
        outcomes.append(Outcome.of(check, status, actual, elapsed))
    return outcomes


def upload(machine: Machine, path: str, data: bytes) -> None:
    payload = base64.b64encode(data).decode()
    machine.succeed(f"mkdir -p {shlex.quote(str(Path(path).parent))} && "
                    f"echo {payload} | base64 -d > {shlex.quote(path)}")


def resolved_profile_yaml(profile: Profile) -> bytes:
    """The fully resolved profile (extends: merged) as a standalone profile file."""
    return yaml.safe_dump(profile.model_dump(mode="json"), sort_keys=False).encode()


def verify_in_guest(machine: Machine, profile: Profile, outcomes: list[Outcome]) -> VerifyAgreement:
    if machine.execute(f"test -x {GUEST_SYNAPSE}")[0] != 0:
        return VerifyAgreement(False, note=f"not run: the image has no {GUEST_SYNAPSE} "
                                           "(profiles without a runtime do not install synapse)")
    upload(machine, GUEST_PROFILE, resolved_profile_yaml(profile))
    rc, out = machine.execute(f"{GUEST_SYNAPSE} verify {GUEST_PROFILE} --json 2>/dev/null",
                              timeout=600)
    return compare_with_verify(outcomes, out, rc)


def compare_with_verify(outcomes: list[Outcome], verify_json: str, rc: int = 0) -> VerifyAgreement:
    """Agreement between the VM assertions and a `synapse verify --json` report.

    Shared checks must have the same status; a check verify makes that the VM test does
    not is a gap and counts as a disagreement too.
    """
    try:
        data = json.loads(verify_json)
        theirs = {c["id"]: c["status"] for c in data["checks"]}
    except (json.JSONDecodeError, KeyError, TypeError):
        return VerifyAgreement(True, note=f"synapse verify exited {rc} without a JSON report",
                               disagreements=[{"id": "(report)", "vm": "json",
                                               "verify": verify_json.strip()[-300:]}])
    mine = {o.id: o.status for o in outcomes}
    shared = sorted(set(mine) & set(theirs))
    disagreements = [{"id": i, "vm": mine[i], "verify": theirs[i]} for i in shared
                     if mine[i] != theirs[i]]
    for i in sorted(set(theirs) - set(mine)):
        disagreements.append({"id": i, "vm": "not asserted", "verify": theirs[i]})
    return VerifyAgreement(True, compared=len(shared), disagreements=disagreements)


def wait_for_service(machine: Machine, profile: Profile, timeout: float) -> str | None:
    """Wait for the inference service to listen and report healthy; None or why not."""
    rt = profile.runtime
    if rt is None:
        return None
    health = next(c for c in vm_assertions(profile) if c.id == "service /health")
    unit = ENGINE_UNITS[rt.engine]
    if machine.execute(f"systemctl cat {unit} >/dev/null 2>&1")[0] != 0:
        return f"the image has no {unit}"
    try:
        machine.wait_for_open_port(rt.port, timeout)
        machine.wait_until_succeeds(f"[ \"$({health.probe} 2>/dev/null)\" = ok ]", timeout,
                                    interval=3)
    except CommandFailed as exc:
        return str(exc).splitlines()[0]
    return None


def run_vm_test(
    image: Path,
    profile: Profile,
    *,
    uefi: bool = False,
    boot_timeout: float = 600,
    service_timeout: float = 1200,
    memory_mb: int = 2048,
    cpus: int = 2,
    progress: Progress | None = None,
    serial_log: Path | None = None,
) -> VmReport:
    progress = progress or Progress()
    checks = vm_assertions(profile)
    # the machine's scratch NVMe carries the profile's NVMe queue settings (checked live)
    machine = Machine(image, uefi=uefi, memory_mb=memory_mb, cpus=cpus, keep_log=serial_log)
    report = VmReport(image=str(image), profile=profile.name,
                      accel="kvm" if machine.kvm else "tcg", boot="uefi" if uefi else "direct")
    built_from = machine.meta.get("profile_hash")
    if built_from != profile.hash():
        progress.note(f"note: {image} was built from profile {machine.meta.get('profile')!r} "
                      f"with other settings than {profile.name!r}; expect failures")
    try:
        with machine:
            with progress.step(f"booting {image.name} ({report.accel}, {report.boot})"):
                start = time.monotonic()
                machine.start()
                machine.wait_for_shell(boot_timeout)
                machine.wait_for_unit("multi-user.target",
                                      max(30.0, boot_timeout - (time.monotonic() - start)))
            report.timings["boot"] = round(time.monotonic() - start, 1)
            # Settings and files first: they need no model, so they run while the inference
            # service is still loading its models; synapse verify runs once it has them.
            static = [c for c in checks if c.kind != "service"]
            service = [c for c in checks if c.kind == "service"]
            with progress.step(f"running {len(static)} setting and file assertions"):
                t = time.monotonic()
                report.outcomes = run_checks(machine, static)
            report.timings["assertions"] = round(time.monotonic() - t, 1)
            if service:
                with progress.step("waiting for the inference service to report healthy"):
                    t = time.monotonic()
                    why = wait_for_service(machine, profile, service_timeout)
                report.timings["service ready"] = round(time.monotonic() - t, 1)
                if why:
                    progress.note(f"the service did not become healthy: {why}")
                with progress.step(f"running {len(service)} service assertions "
                                   "(health, one real completion)"):
                    t = time.monotonic()
                    for c in service:
                        report.outcomes += run_checks(machine, [c], timeout=service_timeout)
                report.timings["service assertions"] = round(time.monotonic() - t, 1)
            with progress.step("running synapse verify in the guest"):
                t = time.monotonic()
                report.verify = verify_in_guest(machine, profile, report.outcomes)
            report.timings["verify"] = round(time.monotonic() - t, 1)
            with progress.step("shutting down"):
                t = time.monotonic()
                machine.shutdown()
            report.timings["shutdown"] = round(time.monotonic() - t, 1)
    except InfraError as exc:
        report.infra_error = str(exc).split("\n--- last serial console lines ---")[0]
        report.console_tail = exc.console_tail or machine.console_tail()
    return report
