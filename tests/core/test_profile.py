"""Profile loading and validation: shipped profiles load; the blueprint's mistakes are refused
with one sentence that names file:line, the key and what is accepted."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from synapse_os.errors import UserError
from synapse_os.profile import load_profile
from synapse_os.profile.model import MITIGATIONS_ACK
from tests.conftest import PROFILES

SHIPPED = sorted(PROFILES.glob("*.yaml"))


def write(tmp_path: Path, text: str, name: str = "p.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def error_of(path: Path) -> str:
    with pytest.raises(UserError) as info:
        load_profile(path)
    return str(info.value)


@pytest.mark.parametrize("profile", SHIPPED, ids=lambda p: p.name)
def test_shipped_profiles_validate(profile: Path) -> None:
    loaded = load_profile(profile)
    assert loaded.synapse == 1
    assert loaded.name == profile.stem


def test_stock_baseline_changes_nothing() -> None:
    from synapse_os.tunables import desired_state

    state = desired_state(load_profile(PROFILES / "stock-baseline.yaml"))
    assert state.is_stock
    assert state.cmdline == () and state.enable == ()


@pytest.mark.parametrize(
    ("body", "line", "needle"),
    [
        ("memroy:\n  swappiness: 10\n", 3, "unknown key 'memroy'; did you mean 'memory'?"),
        ("memory:\n  swapiness: 10\n", 4, "did you mean 'swappiness'?"),
        ("memory:\n  swappiness: 300\n", 4, "memory.swappiness: Input should be less than or equal to 200"),
        ("disk:\n  root_fs: xfs\n  mount_options: [noatime, commit=60]\n", 3,
         "'commit=60' does not exist on XFS"),
        ("boot:\n  cmdline: [auditing=0]\n", 4, "'auditing=0' is not a kernel parameter"),
        ("boot:\n  cmdline: [logic=no]\n", 4, "'logic=no' is not a kernel parameter"),
        ("boot:\n  mitigations: off\n", 3, "mitigations: off disables CPU vulnerability"),
        ("hardware:\n  gpu: nvidia\nkernel:\n  source: custom\n  numa: false\n", 7,
         "kernel.numa: setting it to false breaks GPU setups"),
        ("kernel:\n  source: custom\n  tick: full\n", 3, "set kernel.nohz_full_cpus"),
        ("memory:\n  zram:\n    size: ram / 0\n", 5, "zram size 'ram / 0' is not valid"),
        ("memory:\n  zram:\n    size: ram - 100000\n", 5, "it must be positive"),
        ("memory:\n  zram:\n    size: os.system(1)\n", 5, "is not valid"),
        ("disk:\n  target: /dev/nvme0n1\n", 4, "is not a stable disk identity"),
        ("memory:\n  thp: sometimes\n", 4, "accepted values are 'always', 'madvise' or 'never'"),
        ("kernel:\n  hz: 300\n", 3, "need kernel.source: custom"),
        ("services:\n  mask: [bluetooth]\n", 4, "is not a systemd unit name"),
    ],
)
def test_bad_values_are_named_with_position(tmp_path: Path, body: str, line: int, needle: str) -> None:
    path = write(tmp_path, "synapse: 1\nname: t\n" + body)
    message = error_of(path)
    assert message.startswith(f"{path}:{line}:"), message
    assert needle in message, message
    assert "\n" not in message


def test_mitigations_off_with_acknowledgement_is_accepted(tmp_path: Path) -> None:
    path = write(tmp_path, f"synapse: 1\nname: t\nboot:\n  mitigations: off\n"
                           f"  mitigations_risk: {MITIGATIONS_ACK}\n")
    profile = load_profile(path)
    assert profile.boot.mitigations == "off"


def test_yaml_syntax_error_has_position(tmp_path: Path) -> None:
    path = write(tmp_path, "synapse: 1\nname: t\nmemory: [\n")
    assert error_of(path).startswith(f"{path}:4:")


def test_duplicate_key_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "synapse: 1\nname: t\nname: u\n")
    assert "key 'name' appears twice" in error_of(path)


def test_unsupported_version(tmp_path: Path) -> None:
    assert "format version 2 is not supported" in error_of(write(tmp_path, "synapse: 2\nname: t\n"))


def test_missing_file_and_directory(tmp_path: Path) -> None:
    assert "no such profile file" in error_of(tmp_path / "absent.yaml")
    assert "is a directory" in error_of(tmp_path)


def test_extends_merges_and_null_resets(tmp_path: Path) -> None:
    write(tmp_path, "synapse: 1\nname: parent\nmemory:\n  swappiness: 150\n  page_cluster: 0\n"
                    "journald:\n  storage: volatile\n", "parent.yaml")
    child = write(tmp_path, "extends: parent.yaml\nname: child\nmemory:\n  swappiness: 100\n"
                            "journald: null\n", "child.yaml")
    profile = load_profile(child)
    assert profile.name == "child"
    assert profile.memory.swappiness == 100
    assert profile.memory.page_cluster == 0  # inherited
    assert profile.journald.storage is None  # reset to the default


def test_extends_error_points_into_the_right_file(tmp_path: Path) -> None:
    parent = write(tmp_path, "synapse: 1\nname: parent\nmemory:\n  swappiness: 999\n", "parent.yaml")
    child = write(tmp_path, "extends: parent.yaml\nname: child\n", "child.yaml")
    assert error_of(child).startswith(f"{parent}:4:")


def test_extends_cycle(tmp_path: Path) -> None:
    write(tmp_path, "extends: b.yaml\nsynapse: 1\nname: a\n", "a.yaml")
    b = write(tmp_path, "extends: a.yaml\nsynapse: 1\nname: b\n", "b.yaml")
    assert "extends forms a cycle" in error_of(b)


def test_profile_hash_is_stable_and_sensitive() -> None:
    a = load_profile(PROFILES / "nvidia-gpu.yaml")
    b = load_profile(PROFILES / "nvidia-gpu.yaml")
    assert a.hash() == b.hash()
    changed = a.model_copy(update={"hostname": "other"})
    assert changed.hash() != a.hash()


def test_cli_validate_exit_codes(tmp_path: Path) -> None:
    bad = write(tmp_path, "synapse: 1\nname: t\nmemory:\n  swappiness: 201\n")
    run = [sys.executable, "-m", "synapse_os.cli", "validate"]
    ok = subprocess.run([*run, str(PROFILES / "stock-baseline.yaml")], capture_output=True, text=True)
    assert ok.returncode == 0 and ok.stdout.startswith("ok:")
    res = subprocess.run([*run, str(bad)], capture_output=True, text=True)
    assert res.returncode == 2
    assert res.stderr.startswith(f"error: {bad}:4:")
    assert "Traceback" not in res.stderr


def test_free_sysctl_cannot_override_an_owned_field(tmp_path: Path) -> None:
    path = write(tmp_path, "synapse: 1\nname: t\nmemory: {swappiness: 10}\n"
                           "sysctl: {vm.swappiness: 60}\n")
    assert "vm.swappiness is set through memory.swappiness" in error_of(path)
    # in a profile that extends one with a sysctl map, the error names the extending line
    child = write(tmp_path, f"extends: {PROFILES / 'cpu-avx2-debian.yaml'}\nname: mine\n"
                            "sysctl:\n  vm.swappiness: 60\n", "child.yaml")
    assert error_of(child).startswith(f"{child}:4:")
    numa = write(tmp_path, f"extends: {PROFILES / 'cpu-avx2-debian.yaml'}\nkernel:\n"
                           "  source: custom\n  numa: false\nsysctl:\n"
                           "  kernel.numa_balancing: 0\n", "numa.yaml")
    assert error_of(numa).startswith(f"{numa}:6:")


def test_numa_sysctl_needs_a_numa_kernel(tmp_path: Path) -> None:
    path = write(tmp_path, "synapse: 1\nname: t\nkernel: {source: custom, numa: false}\n"
                           "sysctl: {kernel.numa_balancing: 0}\n")
    assert "kernel.numa_balancing does not exist" in error_of(path)


def _runtime(tmp_path: Path, body: str, engine: str = "synapse-runtime") -> Path:
    models = ("" if engine == "ollama" else
              "  models:\n    main: {path: /var/lib/synapse/models/m.gguf}\n"
              "    draft: {path: /var/lib/synapse/models/d.gguf}\n")
    return write(tmp_path, f"synapse: 1\nname: t\nruntime:\n  engine: {engine}\n{models}"
                           + body)


def test_llama_options_default_to_throughput_and_to_exactness_with_speculation(
        tmp_path: Path) -> None:
    plain = load_profile(_runtime(tmp_path, "")).runtime
    assert plain is not None
    fast = plain.llama.settings(plain.speculative.enabled)
    assert (fast.flash_attention, fast.kv_cache_type, fast.repack, fast.batch_invariant) == (
        True, "f16", True, False)
    spec = load_profile(_runtime(tmp_path, "  speculative: {enabled: true}\n")).runtime
    assert spec is not None
    exact = spec.llama.settings(spec.speculative.enabled)
    assert (exact.flash_attention, exact.kv_cache_type, exact.repack,
            exact.batch_invariant) == (True, "q8_0", False, True)
    # explicit choices win where nothing needs exactness
    mine = load_profile(_runtime(tmp_path, "  llama: {kv_cache_type: q4_0, repack: false, "
                                           "threads_batch: 3, numa: distribute}\n")).runtime
    assert mine is not None
    chosen = mine.llama.settings(False)
    assert (chosen.kv_cache_type, chosen.repack, chosen.threads_batch, chosen.numa) == (
        "q4_0", False, 3, "distribute")


@pytest.mark.parametrize(("body", "engine", "needle"), [
    ("  speculative: {enabled: true}\n  llama: {repack: true}\n", "synapse-runtime",
     "runtime.llama.repack: True breaks batch invariance, which speculative decoding needs"),
    ("  llama: {batch_invariant: true, kv_cache_type: f16}\n", "synapse-runtime",
     "runtime.llama.kv_cache_type: f16 breaks batch invariance, which batch_invariant: true"),
    ("  llama: {numa: distribute}\n", "ollama",
     "runtime.llama.numa: ollama takes no such setting"),
    ("  llama: {kv_cache_type: q5_1}\n", "synapse-runtime", "runtime.llama.kv_cache_type"),
    # the main model as its own draft: speculation that can only be slower
    ("  models:\n    main: {path: /m.gguf}\n    draft: {path: /m.gguf}\n"
     "  speculative: {enabled: true}\n", "ollama", "runtime.models.draft is the main model"),
    (f"  models:\n    main: {{path: /a.gguf, sha256: {'ab' * 32}}}\n"
     f"    draft: {{path: /b.gguf, sha256: {'ab' * 32}}}\n"
     "  speculative: {enabled: true}\n", "ollama", "runtime.models.draft is the main model"),
])
def test_llama_options_an_engine_would_break_or_ignore_are_refused(
        tmp_path: Path, body: str, engine: str, needle: str) -> None:
    assert needle in error_of(_runtime(tmp_path, body, engine))


def test_engines_render_the_llama_options(tmp_path: Path) -> None:
    from synapse_os.render import render_profile

    server = render_profile(load_profile(_runtime(
        tmp_path, "  threads: 4\n  llama: {kv_cache_type: q8_0, repack: false, numa: isolate, "
                  "threads_batch: 8, flash_attention: false}\n", "llama-server")))
    unit = server.files["rootfs/etc/systemd/system/synapse-llama-server.service"]
    line = next(x for x in unit.content.decode().splitlines() if x.startswith("ExecStart="))
    for flag in ("--flash-attn off", "--cache-type-k q8_0", "--cache-type-v q8_0",
                 "--no-repack", "--numa isolate", "--threads 4", "--threads-batch 8"):
        assert flag in line, (flag, line)
    ollama = render_profile(load_profile(_runtime(
        tmp_path, "  llama: {kv_cache_type: q4_0}\n", "ollama")))
    conf = ollama.files["rootfs/etc/systemd/system/ollama.service.d/90-synapse.conf"]
    text = conf.content.decode()
    assert "Environment=OLLAMA_KV_CACHE_TYPE=q4_0" in text
    assert "Environment=OLLAMA_FLASH_ATTENTION=1" in text


def test_fstrim_is_set_in_one_place(tmp_path: Path) -> None:
    path = write(tmp_path, "synapse: 1\nname: t\ndisk: {fstrim: true}\n"
                           "services: {disable: [fstrim.timer]}\n")
    assert "services.disable: fstrim.timer is set through disk.fstrim" in error_of(path)


@pytest.mark.parametrize(("body", "needle"), [
    ("cpu: {inference_cpus: 2-7}\n", "cpu.inference_cpus needs hardware.logical_cpus"),
    ("hardware: {logical_cpus: 8}\ncpu: {inference_cpus: 0-7}\n",
     "cpu.inference_cpus: 0-7 leaves no CPU for the system"),
    ("hardware: {logical_cpus: 8}\ncpu: {inference_cpus: 2-8}\n",
     "cpu.inference_cpus: 2-8 names a CPU past hardware.logical_cpus (8: CPUs 0-7)"),
    ("hardware: {logical_cpus: 8}\ncpu: {inference_cpus: 4-7}\n"
     "kernel: {source: custom, tick: full, nohz_full_cpus: 2-7}\n",
     "kernel.nohz_full_cpus: 2-7 covers housekeeping CPU 2 (outside cpu.inference_cpus 4-7)"),
    ("hardware: {logical_cpus: 4}\nkernel: {source: custom, tick: full, nohz_full_cpus: 1-4}\n",
     "kernel.nohz_full_cpus: 1-4 names a CPU past hardware.logical_cpus (4: CPUs 0-3)"),
])
def test_cpu_partition_is_checked(tmp_path: Path, body: str, needle: str) -> None:
    assert needle in error_of(write(tmp_path, "synapse: 1\nname: t\n" + body))


def test_cpu_partition_renders_affinity_irqs_and_systemd(tmp_path: Path) -> None:
    from synapse_os.render import render_profile

    tree = render_profile(load_profile(PROFILES / "cpu-avx2.yaml"))
    text = {rel: f.content.decode() for rel, f in tree.files.items() if f.link is None}
    assert "CPUAffinity=2-15\n" in text["rootfs/etc/systemd/system/synapse-runtime.service"]
    assert "[Manager]\nCPUAffinity=0-1\n" in text["rootfs/etc/systemd/system.conf.d/90-synapse.conf"]
    words = text["rootfs/etc/kernel/cmdline"].split()
    assert "irqaffinity=0-1" in words and "nohz_full=2-15" in words


def test_nvme_queues_are_set_by_a_udev_rule_not_at_boot_only() -> None:
    """Block devices appear late (driver load, hotplug): udev sets their queues as each
    appears; tmpfiles keeps the sysfs files that exist from boot."""
    from synapse_os.render import render_profile

    tree = render_profile(load_profile(PROFILES / "cpu-avx2.yaml"))
    rule = tree.files["rootfs/etc/udev/rules.d/60-synapse-nvme.rules"].content.decode()
    line = next(x for x in rule.splitlines() if x.startswith("ACTION"))
    assert 'KERNEL=="nvme[0-9]*n[0-9]*"' in line and 'ENV{DEVTYPE}=="disk"' in line
    assert line.endswith('ATTR{queue/scheduler}="none", ATTR{queue/read_ahead_kb}="4096"')
    tmpfiles = tree.files["rootfs/etc/tmpfiles.d/synapse-sysfs.conf"].content.decode()
    assert "/sys/block/" not in tmpfiles and "transparent_hugepage/enabled" in tmpfiles


@pytest.mark.parametrize(("body", "engine", "needle"), [
    ("  isolation: nspawn\n", "synapse-runtime",
     "runtime.isolation: nspawn starts the container from the service, which sandboxing: "
     "strict would forbid"),
    ("  isolation: nspawn\n  sandboxing: none\n", "llama-server",
     "runtime.isolation: nspawn runs the synapse-runtime engine only"),
])
def test_isolation_the_container_cannot_honour_is_refused(
        tmp_path: Path, body: str, engine: str, needle: str) -> None:
    assert needle in error_of(_runtime(tmp_path, body, engine))


def test_isolation_refuses_a_model_it_cannot_bind(tmp_path: Path) -> None:
    assert "has a ':'" in error_of(write(tmp_path, "synapse: 1\nname: t\nruntime:\n  models:\n"
                                                   "    main: {path: /a:b/m.gguf}\n"
                                                   "  isolation: nspawn\n  sandboxing: none\n"))


def test_isolation_binds_only_the_model_files_and_refuses_a_gpu(tmp_path: Path) -> None:
    path = _runtime(tmp_path, "  isolation: nspawn\n  sandboxing: none\n")
    runtime = load_profile(path).runtime
    assert runtime is not None and runtime.container_binds() == [
        "/var/lib/synapse/models/d.gguf", "/var/lib/synapse/models/m.gguf"]
    gpu = tmp_path / "gpu.yaml"
    gpu.write_text(path.read_text() + "hardware: {gpu: nvidia}\n")
    assert "binds no GPU into the container" in error_of(gpu)


def test_the_engine_gets_one_thread_per_physical_core_of_its_cpus(tmp_path: Path) -> None:
    """Partitioned, the engine's threads (OMP_NUM_THREADS, llama-server's --threads) count
    the inference CPUs' cores, not the machine's; a number in the profile wins."""
    from synapse_os.render import render_profile

    cases = (("2-15", {}, {}, 7),  # 14 CPUs, two to a core
             ("15", {}, {}, 1),
             (None, {}, {}, 8),
             ("2-15", {"threads": 5}, {}, 5),
             ("2-15", {}, {"threads": 3}, 3))
    for cpus, hardware, runtime, threads in cases:
        path = tmp_path / "p.yaml"
        path.write_text(yaml.safe_dump({
            "extends": str(PROFILES / "cpu-avx2.yaml"),
            "hardware": {"physical_cores": 8, "logical_cpus": 16, **hardware},
            "kernel": {"nohz_full_cpus": cpus, "tick": "full" if cpus else "idle"},
            "cpu": {"inference_cpus": cpus},
            "runtime": runtime}))
        profile = load_profile(path)
        assert profile.inference_threads() == threads, (cpus, hardware, runtime)
        unit = render_profile(profile).files["rootfs/etc/systemd/system/synapse-runtime.service"]
        assert f"OMP_NUM_THREADS={threads}\n".encode() in unit.content


def test_zram_writes_idle_pages_back_to_a_disk_of_its_own(tmp_path: Path) -> None:
    from synapse_os.render import render_profile
    from synapse_os.tunables import live_checks

    scratch = "/dev/disk/by-id/nvme-Scratch_SSD_S1"
    profile = load_profile(write(tmp_path, f"extends: {PROFILES / 'cpu-avx2-debian.yaml'}\n"
                                 f"memory:\n  zram:\n    writeback_device: {scratch}\n"
                                 "    writeback_every_min: 30\n"))
    tree = render_profile(profile)
    files = {rel: f.content.decode() for rel, f in tree.files.items() if f.content is not None}
    assert f"writeback-device = {scratch}\n" in files["rootfs/etc/systemd/zram-generator.conf"]
    timer = files["rootfs/etc/systemd/system/synapse-zram-writeback.timer"]
    assert "OnUnitActiveSec=30min" in timer and "WantedBy=timers.target" in timer
    service = files["rootfs/etc/systemd/system/synapse-zram-writeback.service"]
    assert "echo idle > /sys/block/zram0/writeback; echo all > /sys/block/zram0/idle" in service
    assert "synapse-zram-writeback.timer" in files["install/install.sh"]
    checks = {c.id: c for c in live_checks(profile)}
    assert checks["zram0 backing device"].expected == scratch
    assert checks["unit synapse-zram-writeback.timer active"].source == \
        "memory.zram.writeback_device"
    # the stock boot of the A/B hides the writeback with the rest of zram
    assert "synapse-zram-writeback.timer" in files[
        "rootfs/etc/systemd/system-generators/synapse-stock"]
    target = profile.disk.target
    for own in (target, f"{target}-part3"):
        path = write(tmp_path, f"extends: {PROFILES / 'cpu-avx2-debian.yaml'}\n"
                               f"memory:\n  zram:\n    writeback_device: {own}\n")
        assert f"memory.zram.writeback_device: {own} is the install disk" in error_of(path)
    path = write(tmp_path, "synapse: 1\nname: t\nmemory:\n  zram:\n"
                           "    writeback_device: /dev/sdb\n")
    assert "'/dev/sdb' is not a stable disk identity" in error_of(path)
