"""`synapse bench ab --boot-entries`: a tuned machine against itself booted stock.

On the machine itself (bare metal, or a VM with UEFI): `start` writes the plan under
/var/lib/synapse/bench/ab-boot (which survives reboots), with its own copy of llama-bench,
the model and the resolved profile, and boots the first arm once with `bootctl
set-oneshot`. In every boot, synapse-bench-ab.service runs `step`: it checks that the boot
is the arm the plan expects (the entry the firmware selected), stops the engines, checks the
profile's settings live, runs llama-bench, keeps what it measured and boots the next arm;
after the last boot it writes the records, and the report where the statistics libraries
are installed (else `synapse bench ab-report` makes it from the records anywhere).

Arms run A B B A A B … (ABBA): a drift that is linear in time cancels within each pair.
The `stock` entry is written here: the distribution's kernel, the command line without the
profile's words, and `synapse.stock`, on which the rendered generator keeps the profile's
settings from applying (synapse_os.render.stock). Only light imports: this runs where the
runtime is installed, without the bench extras.
"""

from __future__ import annotations

import fnmatch
import importlib.util
import json
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from synapse_os import proc
from synapse_os.bench import llamabench, provenance
from synapse_os.bench.paths import check_output_dir
from synapse_os.errors import OperationError, UserError
from synapse_os.profile.model import ENGINE_UNITS, Profile
from synapse_os.profile.types import cpu_list_text, cpu_set
from synapse_os.render.stock import BENCH_UNIT, BOOT_AB_DIR, BOOT_AB_STATE, STOCK_WORD
from synapse_os.runtime.config import physical_cores
from synapse_os.tunables import desired_state
from synapse_os.tunables.cmdline import cmdline_string

# not matched by a loader.conf default such as synapse-* (so never the default entry)
STOCK_ENTRY = "synapse.stock.conf"
ARM_WORDS = ("stock", "tuned")
LOADER_VENDOR = "4a67b082-0a4c-41cf-b6c7-440b29bb8c4f"
SELECTED_VAR = f"/sys/firmware/efi/efivars/LoaderEntrySelected-{LOADER_VENDOR}"
BOOTS = "boots"


@dataclass(frozen=True)
class BootSettings:
    n_prompt: int = 64
    n_gen: int = 16
    repetitions: int = 3
    rounds: int = 4
    warmup: bool = True
    threads: int | None = None  # None: one per CPU llama-bench runs on (bench_cpus)

    def check(self) -> None:
        check_rounds(self.rounds, self.repetitions, self.n_prompt, self.n_gen)


def check_rounds(rounds: int, repetitions: int, n_prompt: int, n_gen: int) -> None:
    """What every A/B run (guests side by side, or boots) asks of its rounds."""
    if rounds < 2:
        raise UserError(f"--rounds {rounds} is below 2; an A/B run needs at least two "
                        "rounds so that each half in time has one")
    if repetitions < 1:
        raise UserError(f"-r {repetitions} is below 1; pass 1 or more repetitions")
    if n_prompt < 0 or n_gen < 0 or not (n_prompt or n_gen):
        raise UserError("-p and -n take token counts of 0 or more, and at least one must "
                        "be above 0")


def order(rounds: int) -> list[str]:
    """The arm of each boot: A B, B A, A B … (ABBA)."""
    out: list[str] = []
    for r in range(rounds):
        out += ["A", "B"] if r % 2 == 0 else ["B", "A"]
    return out


# --- boot entries ---------------------------------------------------------------------------

def _esp() -> Path:
    from synapse_os.apply.hostboot import target_esp

    mount = target_esp(Path("/"))
    if mount is None:
        raise UserError("no EFI system partition is mounted (at /efi, /boot or /boot/efi): a "
                        "boot A/B needs systemd-boot's entries (boot.loader: systemd-boot)")
    return Path("/") / mount


def _read_entry(path: Path) -> dict[str, list[str]]:
    """A Boot Loader Specification type #1 entry (or loader.conf): key -> its values. Read
    as apply reads a target: a regular file, not through a link, at most 64 KiB."""
    from synapse_os.apply.hostboot import _read_regular

    out: dict[str, list[str]] = {}
    for line in (_read_regular(path, 65536) or "").splitlines():
        key, *value = line.split(None, 1)  if line.strip() else [""]
        if key and not key.startswith("#"):
            out.setdefault(key, []).append(value[0].strip() if value else "")
    return out


def _entry_id(name: str) -> str:
    """How systemd-boot names an entry file: lower case, without a boot-counting suffix."""
    stem = name.lower().removesuffix(".conf")
    return re.sub(r"\+\d+(-\d+)?$", "", stem) + ".conf"


def _entries(esp: Path) -> list[str]:
    return sorted(p.name for p in (esp / "loader" / "entries").glob("*.conf"))


def selected_entry() -> str | None:
    """The entry systemd-boot started this boot with (its LoaderEntrySelected variable)."""
    try:
        raw = Path(SELECTED_VAR).read_bytes()[4:]  # after the variable's attributes
    except OSError:
        return None
    name = raw.decode("utf-16-le", "replace").rstrip("\0")
    return _entry_id(name) if name else None


def _default_entry(esp: Path, names: list[str]) -> str | None:
    """The entry loader.conf's `default` picks (never the stock one)."""
    pattern = _read_entry(esp / "loader" / "loader.conf").get("default", [""])[-1]
    matching = [n for n in names if pattern and n != STOCK_ENTRY
                and fnmatch.fnmatch(n.lower(), pattern.lower())]
    return max(matching, key=_version_key) if matching else None


def _version_key(text: str) -> list[tuple[int, int | str]]:
    """Natural order: 6.1.0-28 after 6.1.0-9, 6.12 after 6.9."""
    return [(0, int(part)) if part.isdigit() else (1, part)
            for part in re.split(r"(\d+)", text) if part]


def _tuned_kernel_suffix(profile: Profile) -> str | None:
    if profile.kernel.source != "custom":
        return None
    from synapse_os.kernel.pkgbuild import localversion_for

    return localversion_for(profile)


def write_stock_entry(profile: Profile, esp: Path) -> str:
    """The stock entry: the newest entry of a kernel other than the profile's own (the
    distribution's), with the profile's command-line words left out and synapse.stock."""
    directory = esp / "loader" / "entries"
    suffix = _tuned_kernel_suffix(profile)
    candidates = []
    for name in _entries(esp):
        entry = _read_entry(directory / name)
        version = (entry.get("version") or entry.get("linux") or [""])[0]
        if name != STOCK_ENTRY and "linux" in entry and \
                (suffix is None or not version.endswith(suffix)):
            candidates.append((version, entry))
    if not candidates:
        raise UserError(f"no entry in {directory} boots a kernel other than the profile's "
                        f"own (*{suffix}); install the distribution's kernel so that it gets one")
    version, entry = max(candidates, key=lambda c: _version_key(c[0]))
    profile_words = set(desired_state(profile).cmdline)
    options = [w for line in entry.get("options", []) for w in line.split()
               if w not in profile_words and w != STOCK_WORD] + [STOCK_WORD]
    try:
        options_line = cmdline_string(options)
    except ValueError as exc:
        raise UserError(f"the stock entry cannot be written from kernel {version}'s entry: "
                        f"{exc}") from None
    lines = [f"title Stock baseline of {profile.name} (synapse bench ab): kernel {version}"]
    lines += [f"{key} {value}" for key in ("version", "machine-id", "sort-key", "linux",
                                           "initrd", "devicetree")
              for value in entry.get(key, [])]
    lines.append(f"options {options_line}")
    target = directory / STOCK_ENTRY
    tmp = target.with_suffix(".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, target)
    return STOCK_ENTRY


def entry_words(spec: str) -> list[str]:
    words = [w.strip() for w in spec.split(",")]
    if len(words) != 2 or not all(words) or words[0] == words[1]:
        raise UserError(f"--boot-entries {spec!r} is not two different entries BASELINE,CANDIDATE "
                        "(e.g. stock,tuned, or the names of two boot entries)")
    return words


def resolve_entries(profile: Profile, spec: str, esp: Path) -> dict[str, str]:
    """--boot-entries A,B: each `stock`, `tuned` or an entry's file name -> entry ids."""
    words = entry_words(spec)
    names = _entries(esp)
    directory = esp / "loader" / "entries"
    out = {}
    for arm, word in zip(("A", "B"), words, strict=True):
        if word == "stock":
            out[arm] = write_stock_entry(profile, esp)
        elif word == "tuned":
            selected = selected_entry()
            tuned = selected if selected and selected != STOCK_ENTRY and selected in names \
                else _default_entry(esp, names)
            if tuned is None:
                raise UserError(f"no tuned entry was found in {directory} (not booted from one, "
                                "no loader.conf default that matches one); name it in "
                                "--boot-entries")
            out[arm] = tuned
        else:
            name = _entry_id(word if word.endswith(".conf") else f"{word}.conf")
            if name not in names:
                raise UserError(f"--boot-entries: there is no boot entry {word!r} in {directory}; "
                                f"it has {', '.join(names) or 'none'}")
            out[arm] = name
    if out["A"] == out["B"]:
        raise UserError(f"--boot-entries {spec!r}: both arms are entry {out['A']}")
    return out


# --- the plan, kept across reboots ------------------------------------------------------

def _save(state: dict[str, Any]) -> None:
    tmp = Path(BOOT_AB_STATE + ".tmp")
    tmp.write_text(json.dumps(state, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, BOOT_AB_STATE)


def _persistent(path: Path, what: str) -> None:
    existing = path.resolve()
    while not existing.exists():
        existing = existing.parent
    fstype = proc.run(["findmnt", "-no", "FSTYPE", "-T", str(existing)],
                      check=False).stdout.strip()
    if fstype in ("tmpfs", "ramfs"):
        raise UserError(f"{what} {path} is on {fstype}, which the reboots of a boot A/B empty; "
                        "it must be on disk (e.g. under /var/lib)")


def check_request(spec: str, settings: BootSettings, output: Path) -> None:
    """Everything about a boot A/B request that can be refused before anything is read or
    written (one sentence each)."""
    settings.check()
    entry_words(spec)
    if os.geteuid() != 0:
        raise UserError("a boot A/B sets the next boot entry and reboots: run it as root")
    if not Path("/sys/firmware/efi").is_dir():
        raise UserError("this machine did not boot through UEFI: a boot A/B needs "
                        "systemd-boot's one-shot entry (bootctl set-oneshot)")
    proc.require_tool("bootctl", "apt-get install systemd-boot")
    if Path(BOOT_AB_STATE).exists():
        raise UserError(f"a boot A/B is already under way ({BOOT_AB_STATE}); let it finish, or "
                        f"remove {BOOT_AB_DIR} to abandon it")
    check_output_dir(output)
    _persistent(output, "-o")
    _persistent(Path(BOOT_AB_DIR), "the plan's directory")


def start(profile: Profile, spec: str, output: Path, settings: BootSettings,
          llama_bench: Path, model: Path, model_record: dict[str, Any],
          bench_info: dict[str, Any], reboot: bool = True) -> dict[str, Any]:
    """Write the plan and boot the first arm (unless reboot is False)."""
    output = output.absolute()
    check_request(spec, settings, output)
    esp = _esp()
    default = _read_entry(esp / "loader" / "loader.conf").get("default", [""])[-1]
    if default and fnmatch.fnmatch(STOCK_ENTRY, default.lower()):
        raise UserError(f"loader.conf's default {default!r} would also pick the stock entry "
                        f"{STOCK_ENTRY}; make it name the tuned entry alone")
    words = entry_words(spec)
    work = Path(BOOT_AB_DIR)
    try:
        entries = resolve_entries(profile, spec, esp)
        from synapse_os.vm.runner import resolved_profile_yaml

        shutil.rmtree(work, ignore_errors=True)
        (work / BOOTS).mkdir(parents=True)
        shutil.copy2(llama_bench, work / "llama-bench")
        try:
            os.link(model, work / "model.gguf")
        except OSError:
            shutil.copy2(model, work / "model.gguf")
        (work / "profile.yaml").write_bytes(resolved_profile_yaml(profile))
        state = {
            "profile": profile.name, "profile_hash": profile.hash(), "entries": entries,
            "labels": {"A": f"{profile.name} ({words[0]} boot)",
                       "B": f"{profile.name} ({words[1]} boot)"},
            "order": order(settings.rounds), "next": 0, "output": str(output),
            "esp": str(esp), "settings": settings.__dict__, "model": model_record,
            "stock_entry": (esp / "loader" / "entries" / STOCK_ENTRY).read_text()
            if STOCK_ENTRY in entries.values() else None,
            "llama_bench": bench_info,
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        _save(state)
        proc.run(["bootctl", "set-oneshot", entries[state["order"][0]]], timeout=60)
    except BaseException:
        _clean_up(esp)  # nothing of a plan that cannot start stays behind
        raise
    if reboot:
        _reboot()
    return state


def _clean_up(esp: Path) -> None:
    shutil.rmtree(BOOT_AB_DIR, ignore_errors=True)
    (esp / "loader" / "entries" / STOCK_ENTRY).unlink(missing_ok=True)


def _reboot() -> None:
    proc.run(["systemctl", "reboot", "--no-block"], timeout=60)


def _virtualised() -> dict[str, Any]:
    virt = proc.run(["systemd-detect-virt"], check=False).stdout.strip() or "none"
    # QEMU without KVM is TCG: an instruction emulator, whose speed says nothing of a system
    accel = {"none": "bare metal", "qemu": "tcg"}.get(virt, virt)
    return {"hypervisor": virt, "accel": accel}


def bench_cpus(profile: Profile) -> list[int]:
    """The CPUs llama-bench runs on: the profile's inference CPUs where it partitions them
    (the engine's own, alike in both arms; systemd's CPUAffinity would leave this step the
    housekeeping CPUs), else every CPU this step may use. One thread per physical core of
    them, as the engine runs."""
    partition = profile.cpu_partition()
    return sorted(cpu_set(partition[0]) if partition else os.sched_getaffinity(0))


def llama_bench_argv(state: dict[str, Any], cpus: list[int]) -> list[str]:
    s = state["settings"]
    args = ["taskset", "-c", cpu_list_text(set(cpus)), f"{BOOT_AB_DIR}/llama-bench",
            "-m", f"{BOOT_AB_DIR}/model.gguf", "-o", "jsonl",
            "-p", str(s["n_prompt"]), "-n", str(s["n_gen"]), "-r", str(s["repetitions"]),
            "-t", str(s["threads"] or physical_cores(cpus))]
    return args + ([] if s["warmup"] else ["--no-warmup"])


def _run_llama_bench(state: dict[str, Any], cpus: list[int]) -> list[dict[str, Any]]:
    res = proc.run(llama_bench_argv(state, cpus), check=False, timeout=7200)
    if res.returncode != 0:
        raise OperationError(f"llama-bench failed (exit code {res.returncode}): "
                             f"{(res.stderr or res.stdout).strip()[-1500:]}")
    return llamabench.parse_jsonl(res.stdout)


def _settle(timeout: float = 600) -> None:
    """Wait until no boot job runs but this step's own: what else boots is done, or waits
    for the engines, which wait for this step."""
    deadline, quiet = time.monotonic() + timeout, 0
    while time.monotonic() < deadline and quiet < 2:
        jobs = proc.run(["systemctl", "list-jobs", "--no-legend", "--plain"],
                        check=False).stdout.splitlines()
        running = [j for j in jobs if j.split()[3:4] == ["running"] and BENCH_UNIT not in j]
        quiet = 0 if running else quiet + 1
        time.sleep(1)


def step() -> str:
    """This boot's part of the plan; returns what it did, in one line. A step that fails
    abandons the plan (FAILED.txt says why) and never leaves the machine booted stock."""
    if not Path(BOOT_AB_STATE).exists():
        return "no boot A/B is under way"
    state = json.loads(Path(BOOT_AB_STATE).read_text())
    esp = Path(state["esp"])
    try:
        return _step(state, esp)
    except Exception as exc:
        why = f"boot {state['next'] + 1} of the A/B failed: {exc}"
        _abandon(state, esp, why)
        if STOCK_WORD in Path("/proc/cmdline").read_text().split():
            _reboot()  # into the default entry: the stock entry is gone
        raise OperationError(f"{why}; the A/B is abandoned (see {state['output']}/FAILED.txt)"
                             ) from None


def _step(state: dict[str, Any], esp: Path) -> str:
    index = state["next"]
    arm = state["order"][index]
    expected, selected = state["entries"][arm], selected_entry()
    if selected != expected:
        raise OperationError(f"it should have started entry {expected} (arm {arm}) but "
                             f"started {selected or 'an unknown entry'}")
    from synapse_os.apply.verify import run_checks
    from synapse_os.profile import load_profile
    from synapse_os.vm.assertions import settled_checks

    started = time.monotonic()
    stopped = []
    for unit in sorted(set(ENGINE_UNITS.values())):
        if proc.run(["systemctl", "is-active", "--quiet", unit], check=False).returncode == 0:
            proc.run(["systemctl", "stop", unit], timeout=300)
            stopped.append(unit)
    profile = load_profile(Path(BOOT_AB_DIR) / "profile.yaml")
    _settle()
    booted_s = float(Path("/proc/uptime").read_text().split()[0])
    # not the wired link's checks: DHCP may still be under way, and it is no tuning
    checks = run_checks([c for c in settled_checks(profile) if c.kind != "network"])
    cpus = bench_cpus(profile)
    results = _run_llama_bench(state, cpus)
    boot = {
        "index": index, "arm": arm, "round": index // 2, "position": index,
        "entry": selected, "stock_word": STOCK_WORD in Path("/proc/cmdline").read_text().split(),
        "boot_id": Path("/proc/sys/kernel/random/boot_id").read_text().strip(),
        "booted_s": booted_s,
        "virtualised": _virtualised(), "stopped_units": stopped,
        "bench_cpus": cpu_list_text(set(cpus)),
        "failed_units": proc.run(["systemctl", "--failed", "--no-legend", "--plain"],
                                 check=False).stdout.splitlines(),
        "checks": [r.as_dict() for r in checks], "system": provenance.collect(),
        "results": results, "seconds": round(time.monotonic() - started, 1),
    }
    (Path(BOOT_AB_DIR) / BOOTS / f"{index:02d}.json").write_text(json.dumps(boot, indent=1))
    state["next"] = index + 1
    if state["next"] < len(state["order"]):
        _save(state)
        following = state["entries"][state["order"][state["next"]]]
        proc.run(["bootctl", "set-oneshot", following], timeout=60)
        _reboot()
        return f"boot {index + 1}/{len(state['order'])} (arm {arm}) measured; rebooting " \
               f"into {following}"
    back = selected != _default_entry(esp, _entries(esp))
    _write_collected(state, Path(state["output"]))
    _clean_up(esp)
    done = _report(Path(state["output"]))
    if back:  # the machine's own entry again
        _reboot()
    return done


def _write_collected(state: dict[str, Any], output: Path) -> None:
    boots = [json.loads(p.read_text())
             for p in sorted((Path(BOOT_AB_DIR) / BOOTS).glob("*.json"))]
    output.mkdir(parents=True, exist_ok=True)
    (output / "boots.json").write_text(json.dumps({"plan": state, "boots": boots}, indent=1)
                                       + "\n")


def _abandon(state: dict[str, Any], esp: Path, why: str) -> None:
    output = Path(state["output"])
    try:
        _write_collected(state, output)
        (output / "FAILED.txt").write_text(why + "\n")
    finally:
        _clean_up(esp)


def _report(output: Path) -> str:
    """The report, where the bench extra is installed; else (or when it fails) a note."""
    if all(importlib.util.find_spec(m) for m in ("scipy", "matplotlib")):
        from synapse_os.bench.ab import boot_report

        try:
            boot_report(output)
            return f"boot A/B done: {output}/RESULTS.md"
        except Exception as exc:  # the boots are measured and kept: say so, then how to retry
            why = f"the report failed ({exc}). "
    else:
        why = "This system has no statistics libraries (synapse-os[bench]). "
    (output / "README.txt").write_text(
        f"The boots are measured (boots.json). {why}Make the report with "
        f"`synapse bench ab-report {output}` where synapse-os[bench] is installed.\n")
    return f"boot A/B done: {output}/boots.json (report: synapse bench ab-report {output})"
