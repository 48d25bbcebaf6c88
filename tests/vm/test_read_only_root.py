"""system.root: read-only, installed by the install path and booted: the root cannot be
written, /var (its own partition) and /var/ai-data can, `synapse model add` takes the
installed model into /var/ai-data and the runtime serves it after the apply that pins it,
`synapse apply` makes the root writable for its transaction only, and an apply killed midway, followed by a power cut,
leaves a system that boots read-only (through the firmware and systemd-boot) and whose
next apply recovers the transaction; a setting changed live fails its check there. That
machine then runs the boot A/B against itself booted stock (`bench ab --boot-entries`)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from synapse_os.bench.ab import BENCH_SERIAL, GUEST_BINARY, GUEST_DIR, bench_disk
from synapse_os.image import disk
from synapse_os.profile import load_profile
from synapse_os.profile.model import Profile
from synapse_os.tunables.install import install_checks
from synapse_os.vm.assertions import vm_assertions
from synapse_os.vm.machine import Machine
from synapse_os.vm.runner import (
    GUEST_SYNAPSE,
    resolved_profile_yaml,
    run_checks,
    upload,
    wait_for_service,
)
from tests.conftest import _build

pytestmark = pytest.mark.slow

CHANGED = "/run/synapse-test/changed.yaml"
KILLED = "/run/synapse-test/killed.yaml"
SMALL_BOX = "/run/synapse-test/small-box.yaml"  # 4300M of RAM, 4G of it reserved
ROOT_STATE = "findmnt -no OPTIONS / | cut -d, -f1"
GUEST_MEMORY_MB = 6144  # above the profile's 4G memory_reserve
INSTALLED_MODEL = "/var/lib/synapse/models/gemma3-270m-q4_k_m.gguf"  # by install.sh


@pytest.fixture(scope="module")
def read_only(tuned_profile: Path, local_kernel_tarball: Path,
              tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The CI's tuned profile (same name, so the same cached kernel) with a read-only root
    on a 5G root partition, its engine isolated by systemd-nspawn and its CPUs partitioned:
    the guest's CPU 1 (already tickless) runs the engine, CPU 0 everything else."""
    profile = tmp_path_factory.mktemp("read-only") / "cpu-avx2-debian.yaml"
    profile.write_text(f"extends: {tuned_profile}\nsystem:\n  root: read-only\n"
                       "disk:\n  root_size: 5G\n"
                       "hardware:\n  physical_cores: 2\n  logical_cpus: 2\n"
                       "cpu:\n  inference_cpus: '1'\n"
                       # the engine in its container: every check below runs against it
                       "runtime:\n  isolation: nspawn\n  sandboxing: none\n  threads: auto\n")
    return _build(profile, tmp_path_factory, local_kernel_tarball), profile


def _changed(profile: Path, swappiness: int, hardware: dict[str, object]) -> bytes:
    """The profile with another swappiness, for the guest's own hardware (apply refuses a
    profile written for other hardware)."""
    data = yaml.safe_load(resolved_profile_yaml(load_profile(profile)))
    data["memory"]["swappiness"] = swappiness
    data["hardware"].update(hardware)
    return yaml.safe_dump(data, sort_keys=False).encode()


def _hardware(m: Machine) -> dict[str, object]:
    found = json.loads(m.succeed(f"{GUEST_SYNAPSE} init --json", timeout=300))["hardware"]
    return {key: found[key] for key in ("cpu_vendor", "physical_cores", "logical_cpus")} \
        | {"ram": f"{GUEST_MEMORY_MB // 1024}G"}


def _history(m: Machine) -> list[dict[str, object]]:
    return json.loads(m.succeed(f"{GUEST_SYNAPSE} history --json 2>/dev/null"))


def test_read_only_root_applies_and_survives_a_killed_apply_and_a_power_cut(
        read_only: tuple[Path, Path], llama_bench: Path, tmp_path: Path) -> None:
    built, profile_path = read_only
    image = tmp_path / "disk.img"  # booted twice, so the guest writes to a copy of its own
    subprocess.run(["cp", "--sparse=always", str(built), str(image)], check=True)
    profile = load_profile(profile_path)
    mounts = [c for c in install_checks(profile) if c.kind == "mount"]
    completion = next(c for c in vm_assertions(profile) if c.id == "service completion")
    assert {c.id for c in mounts} >= {"root mounted", "/var partition", "/tmp in memory"}

    with Machine(image, snapshot=False, memory_mb=GUEST_MEMORY_MB) as m:
        m.start()
        m.wait_for_shell(600)
        m.wait_for_unit("multi-user.target", 600)
        assert m.succeed("systemctl --failed --no-legend --plain").strip() == ""
        hardware = _hardware(m)
        assert [(o.id, o.status) for o in run_checks(m, mounts)] == \
            [(c.id, "pass") for c in mounts]
        assert "Read-only file system" in m.fail("touch /etc/synapse-write-probe")
        m.succeed("touch /var/ai-data/probe /tmp/probe && rm /var/ai-data/probe /tmp/probe")
        assert wait_for_service(m, profile, 900) is None  # the runtime runs on the ro root

        # the model the install placed, taken in: inspected in the sandbox, stored on /var
        # by content hash and pinned as the main model of the changed profile
        upload(m, CHANGED, _changed(profile_path, 150, hardware))
        started = time.monotonic()
        added = json.loads(m.succeed(f"{GUEST_SYNAPSE} model add {INSTALLED_MODEL} --role main "
                                     f"{CHANGED} --json", timeout=900))
        print(f"model add in the guest: {time.monotonic() - started:.0f} s")
        stored = f"/var/ai-data/models/{added['sha256']}.gguf"
        assert m.succeed("ls /var/ai-data/models").split() == \
            [f"{added['sha256']}.gguf", f"{added['sha256']}.json"]
        # systemd runs here: the parser ran as a transient unit with the runtime's hardening
        record = json.loads(m.succeed(f"cat /var/ai-data/models/{added['sha256']}.json"))
        assert record["sandbox"]["runner"] == "systemd-run", record["sandbox"]
        # what must not be taken in: each refused in one sentence, nothing copied or pinned
        m.succeed(f"head -c 40M {INSTALLED_MODEL} > /tmp/truncated.gguf && "
                  f"cp {INSTALLED_MODEL} /tmp/corrupt.gguf && printf '\\0\\0\\0\\0\\0\\0\\0\\100' "
                  "| dd of=/tmp/corrupt.gguf bs=1 seek=24 conv=notrunc status=none && "
                  "cp /usr/bin/python3 /tmp/python.gguf")  # header: a first key of 2**62 bytes
        upload(m, SMALL_BOX, _changed(profile_path, 150, hardware | {"ram": "4300M"}))
        pinned = m.succeed(f"sha256sum {CHANGED}")
        for file, target, phrase in (("/tmp/truncated.gguf", CHANGED, "is truncated"),
                                     ("/tmp/corrupt.gguf", CHANGED, "corrupted GGUF header"),
                                     ("/tmp/python.gguf", CHANGED, "is not a GGUF file"),
                                     (INSTALLED_MODEL, SMALL_BOX, "more than the")):
            rc, out = m.execute(f"{GUEST_SYNAPSE} model add {file} --role main {target} 2>&1",
                                timeout=600)
            assert rc == 2 and phrase in out and "nothing was copied" in out, (file, out)
            assert len(out.strip().splitlines()) == 1, out
        assert m.succeed("ls /var/ai-data/models").split() == \
            [f"{added['sha256']}.gguf", f"{added['sha256']}.json"]
        assert m.succeed(f"sha256sum {CHANGED}") == pinned
        out = m.succeed(f"{GUEST_SYNAPSE} apply {CHANGED} --yes 2>&1", timeout=600)
        assert "applied transaction" in out and "warning" not in out, out
        assert "systemctl try-restart --no-block synapse-runtime.service: ok" in out, out
        assert m.succeed("sysctl -n vm.swappiness").strip() == "150"
        assert m.succeed(ROOT_STATE).strip() == "ro"
        assert m.succeed("grep -h swappiness /etc/sysctl.d/*synapse*").split()[-1] == "150"
        # the restarted runtime serves the stored model, from inside its container
        assert wait_for_service(m, profile, 900) is None
        nspawn = m.succeed("systemctl show -P MainPID synapse-runtime.service").strip()
        assert m.succeed(f"cat /proc/{nspawn}/comm").strip() == "systemd-nspawn"
        pid = m.succeed(f"pgrep -o -P {nspawn}").strip()
        assert stored in m.succeed(f"cat /proc/{pid}/maps")
        assert run_checks(m, [completion])[0].status == "pass"
        # its own network namespace has only the loopback device up (the API socket came
        # from synapse-runtime.socket), its models are mounted read-only, it runs as synapse
        assert m.succeed(f"nsenter --target {pid} --net ip -brief link | "
                         "awk '$2 != \"DOWN\" {print $1}'").split() == ["lo"]
        assert m.succeed(f"awk '$5 == \"{stored}\" {{print $6}}' /proc/{pid}/mountinfo"
                         ).startswith("ro")
        assert m.succeed(f"ps -o user= -p {pid}").strip() == "synapse"
        isolation = next(c for c in vm_assertions(profile) if c.id.endswith(" Isolation"))
        assert run_checks(m, [isolation])[0].status == "pass"

        # killed after its first file is in place (journal, backup, temp file, rename...)
        killed = yaml.safe_load(m.succeed(f"cat {CHANGED}"))
        killed["memory"]["swappiness"] = 120
        upload(m, KILLED, yaml.safe_dump(killed, sort_keys=False).encode())
        rc, out = m.execute(f"SYNAPSE_FAULT_AFTER_STEP=6 {GUEST_SYNAPSE} apply {KILLED} "
                            "--yes 2>&1", timeout=600)
        assert rc == 137, out  # SIGKILL
        assert m.succeed(ROOT_STATE).strip() == "rw"  # until the next boot
        assert _history(m)[-1]["state"] == "in-progress"
        m.power_cut()

    # the second boot goes through the firmware: systemd-boot under OVMF starts the entry
    # install.sh had kernel-install write for the tuned kernel (Debian's stays a fallback)
    version = disk.read_metadata(built)["kernel_version"]
    # (through firmware that keeps its variables across reboots: the boot A/B at the end
    # reboots the machine itself, one-shot entry by one-shot entry)
    with Machine(image, snapshot=False, memory_mb=GUEST_MEMORY_MB, uefi=True, reboots=True,
                 readonly_disks={BENCH_SERIAL: bench_disk(llama_bench, None, tmp_path)}) as m:
        m.start()
        m.wait_for_shell(600)
        entry = m.succeed("tr -d '\\000' < /sys/firmware/efi/efivars/"
                          "LoaderEntrySelected-4a67b082-0a4c-41cf-b6c7-440b29bb8c4f | cut -c2-")
        assert entry.strip() == f"synapse-{version}.conf"
        assert version.endswith("-synapse") and m.succeed("uname -r").strip() == version
        cmdline = m.succeed("cat /proc/cmdline").split()
        assert "ro" in cmdline and all(word in cmdline for word in profile.boot.cmdline)
        m.wait_for_unit("multi-user.target", 600)
        assert m.succeed(ROOT_STATE).strip() == "ro"
        entries = m.succeed("ls /boot/efi/loader/entries").split()
        assert any(e.endswith("-amd64.conf") for e in entries), entries
        assert m.succeed("systemctl --failed --no-legend --plain").strip() == ""
        assert _history(m)[-1]["state"] == "in-progress"  # the journal survived on /var
        upload(m, KILLED, yaml.safe_dump(killed, sort_keys=False).encode())
        out = m.succeed(f"{GUEST_SYNAPSE} apply {KILLED} --yes 2>&1", timeout=600)
        assert "rolled back interrupted transaction" in out and "applied transaction" in out
        assert m.succeed("sysctl -n vm.swappiness").strip() == "120"
        assert m.succeed(ROOT_STATE).strip() == "ro"
        states = [j["state"] for j in _history(m)]
        assert states[-3:] == ["applied", "rolled-back", "applied"], states
        assert [o.status for o in run_checks(m, mounts)] == ["pass"] * len(mounts)
        # and every live check of the profile, as `synapse verify` runs them
        assert wait_for_service(m, profile, 900) is None
        rc, out = m.execute(f"{GUEST_SYNAPSE} verify {KILLED} --json 2>/dev/null", timeout=900)
        verified = json.loads(out)["checks"]
        failed = [c for c in verified if c["status"] == "fail"]
        assert rc == 0 and not failed, failed
        # the CPU partition, live: PID 1 (so every unit without its own) and interrupts on
        # CPU 0, the engine inside its container on CPU 1
        assert {(c["id"], c["status"], c["actual"]) for c in verified
                if c["source"] == "cpu.inference_cpus"} == {
            ("systemd CPUAffinity", "pass", "0"),
            ("cmdline irqaffinity=0", "pass", m.succeed("cat /proc/cmdline").strip()),
            ("service synapse-runtime.service CPUAffinity", "pass", "1")}

        # drift: a setting changed live fails its VM assertion and `synapse verify` (both can
        # fail); /etc cannot drift at all
        (tmp_path / "killed.yaml").write_text(yaml.safe_dump(killed, sort_keys=False))
        swappiness = next(c for c in vm_assertions(load_profile(tmp_path / "killed.yaml"))
                          if c.id == "sysctl vm.swappiness")
        assert run_checks(m, [swappiness])[0].status == "pass"
        m.succeed("sysctl -qw vm.swappiness=60")
        drifted = run_checks(m, [swappiness])[0]
        assert drifted.status == "fail" and drifted.actual == "60"
        assert "Read-only file system" in m.fail("systemctl unmask cups.service 2>&1")
        rc, out = m.execute(f"{GUEST_SYNAPSE} verify {KILLED} --settings-only --json "
                            "2>/dev/null", timeout=600)
        verify = {c["id"]: c["status"] for c in json.loads(out)["checks"]}
        assert rc == 1 and verify["sysctl vm.swappiness"] == "fail"
        assert verify["unit cups.service masked"] == "pass"
        _boot_ab(m, KILLED, load_profile(tmp_path / "killed.yaml"), version, tmp_path / "ab")
        m.shutdown()
        assert m.proc is not None and m.proc.returncode == 0
    shutil.rmtree(tmp_path, ignore_errors=True)


AB_OUT = "/var/lib/synapse/ab-out"  # on /var: the reboots keep it
SELECTED = ("tr -d '\\000' < /sys/firmware/efi/efivars/"
            "LoaderEntrySelected-4a67b082-0a4c-41cf-b6c7-440b29bb8c4f | cut -c2-")


def _boot_ab(m: Machine, guest_profile: str, profile: Profile, version: str,
             out: Path) -> None:
    """`synapse bench ab --boot-entries tuned,stock` on the machine itself: it writes the
    stock entry (Debian's kernel, no profile words, synapse.stock) and reboots itself
    A B B A (tuned, stock, stock, tuned) with `bootctl set-oneshot`; each boot's step checks
    the profile's settings and runs llama-bench before the engine starts. The last arm is
    the default entry, so the last step reboots no more. The report is made on the host
    from what the guest kept (it has no scipy)."""
    started = time.monotonic()
    m.succeed(f"mkdir -p {GUEST_DIR} && mount -o ro /dev/disk/by-id/virtio-{BENCH_SERIAL} "
              f"{GUEST_DIR}")
    plan = json.loads(m.succeed(
        f"{GUEST_SYNAPSE} bench ab --boot-entries tuned,stock {guest_profile} -o {AB_OUT} "
        f"--rounds 2 -p 0 -n 1 -r 1 --no-warmup --llama-bench {GUEST_BINARY} "
        f"--model {INSTALLED_MODEL} --json", timeout=300))
    print(f"boot A/B planned: {time.monotonic() - started:.0f} s")
    assert plan["order"] == ["A", "B", "B", "A"], plan
    assert plan["entries"] == {"A": f"synapse-{version}.conf", "B": "synapse.stock.conf"}
    for boot in range(4):
        m.wait_for_shell(900)
        print(f"boot {boot + 1} after the A/B's start: {time.monotonic() - started:.0f} s")
    m.wait_until_succeeds(f"test -e {AB_OUT}/README.txt", 900, interval=5)
    assert m.succeed(SELECTED).strip() == f"synapse-{version}.conf"
    # the plan and the stock entry are gone; the guest has no statistics libraries
    m.succeed("test ! -e /var/lib/synapse/bench/ab-boot && "
              "test ! -e /boot/efi/loader/entries/synapse.stock.conf")
    assert "synapse bench ab-report" in m.succeed(f"cat {AB_OUT}/README.txt")
    out.mkdir()
    (out / "boots.json").write_text(m.succeed(f"cat {AB_OUT}/boots.json", timeout=300))
    print(f"boot A/B in the guest: {time.monotonic() - started:.0f} s")

    kept = json.loads((out / "boots.json").read_text())
    options = next(line for line in kept["plan"]["stock_entry"].splitlines()
                   if line.startswith("options "))
    assert options.split()[1:] == ["root=PARTLABEL=synapse-root", "ro", "synapse.stock"]
    boots = kept["boots"]
    assert [b["arm"] for b in boots] == ["A", "B", "B", "A"]
    assert len({b["boot_id"] for b in boots}) == 4
    for b in boots:
        print(f"boot {b['index']} ({b['arm']}): step at uptime {b['booted_s']:.0f} s, "
              f"took {b['seconds']:.0f} s")
        checks = {c["id"]: c for c in b["checks"]}
        kernel = b["system"]["kernel"]
        assert b["failed_units"] == [], b["failed_units"]
        assert b["virtualised"]["accel"] == "tcg"
        assert b["results"] and all(r["samples_ts"] for r in b["results"])
        assert b["bench_cpus"] == "1"  # llama-bench on the inference CPU, in either arm
        if b["arm"] == "B":  # stock: Debian's kernel, none of the profile's settings
            assert b["entry"] == "synapse.stock.conf" and b["stock_word"]
            assert not kernel.endswith("-synapse"), kernel
            assert all(w not in b["system"]["cmdline"].split() for w in profile.boot.cmdline)
            for check in ("kernel running", "sysctl vm.swappiness", "cmdline mitigations=off",
                          "zram0 swap active", "journald SystemMaxUse",
                          "file /etc/sysctl.d/90-synapse.conf", "sysfs /sys/kernel/mm/"
                          "transparent_hugepage/defrag", "unit synapse-runtime.service enabled"):
                assert checks[check]["status"] == "fail", checks[check]
        else:  # tuned: every setting of the profile holds
            assert b["entry"] == f"synapse-{version}.conf" and not b["stock_word"]
            assert kernel == version
            failed = [c for c in b["checks"] if c["status"] == "fail"]
            assert not failed, failed
    # the report, where the statistics libraries are
    report = subprocess.run([sys.executable, "-m", "synapse_os.cli", "bench", "ab-report",
                             str(out), "--json"], capture_output=True, text=True, timeout=600)
    assert report.returncode == 0, report.stderr
    summary = json.loads(report.stdout)
    assert summary["order"] == "A B B A" and summary["virtualised"]["accel"] == "tcg"
    records = {arm: [json.loads(line) for line in
                     (out / "records" / f"{arm}.jsonl").read_text().splitlines()]
               for arm in ("A", "B")}
    assert set(summary["interleaved"]) == {r["synapse"]["test"] for r in records["A"]}
    for arm_records in records.values():
        assert arm_records and all(len(r["synapse"]["ab"]["rounds"]) == 2 and
                                   r["synapse"]["ab"]["live"] for r in arm_records)
    text = (out / "RESULTS.md").read_text()
    assert "No speed claim" in text and "synapse.stock.conf" in text
