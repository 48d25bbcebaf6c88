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
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from synapse_os import proc
from synapse_os.bench import llamabench, provenance
from synapse_os.distro import distro_for
from synapse_os.errors import OperationError, UserError
from synapse_os.profile.model import Profile
from synapse_os.render.stock import BENCH_UNIT, BOOT_AB_DIR, BOOT_AB_STATE, STOCK_WORD
from synapse_os.state import ENGINE_UNITS, cmdline_string, desired_state

STOCK_ENTRY = "synapse-stock.conf"
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
    threads: int | None = None  # None: every CPU this boot has

    def check(self) -> None:
        if self.rounds < 2:
            raise UserError(f"--rounds {self.rounds} is below 2; a boot A/B needs at least two "
                            "rounds (four boots) so that each half in time has one")
        if self.repetitions < 1:
            raise UserError(f"-r {self.repetitions} is below 1; pass 1 or more repetitions")
        if self.n_prompt < 0 or self.n_gen < 0 or not (self.n_prompt or self.n_gen):
            raise UserError("-p and -n take token counts of 0 or more, and at least one must "
                            "be above 0")


def order(rounds: int) -> list[str]:
    """The arm of each boot: A B, B A, A B … (ABBA)."""
    out: list[str] = []
    for r in range(rounds):
        out += ["A", "B"] if r % 2 == 0 else ["B", "A"]
    return out


# --- boot entries ---------------------------------------------------------------------------

def _entries_dir(profile: Profile) -> Path:
    return Path(distro_for(profile).esp_mount) / "loader" / "entries"


def _read_entry(path: Path) -> dict[str, list[str]]:
    """A Boot Loader Specification type #1 entry: key -> its values, in order."""
    out: dict[str, list[str]] = {}
    for line in path.read_text(errors="replace").splitlines():
        key, _, value = line.strip().partition(" ")
        if key and not key.startswith("#"):
            out.setdefault(key, []).append(value.strip())
    return out


def selected_entry() -> str | None:
    """The entry systemd-boot started this boot with (its LoaderEntrySelected variable)."""
    try:
        raw = Path(SELECTED_VAR).read_bytes()[4:]  # after the variable's attributes
    except OSError:
        return None
    return raw.decode("utf-16-le", "replace").rstrip("\0") or None


def _default_entry(profile: Profile, names: list[str]) -> str | None:
    loader = Path(distro_for(profile).esp_mount) / "loader" / "loader.conf"
    pattern = _read_entry(loader).get("default", [""])[-1] if loader.is_file() else ""
    matching = sorted(n for n in names if pattern and fnmatch.fnmatch(n, pattern))
    return matching[-1] if matching else None


def _tuned_kernel_suffix(profile: Profile) -> str | None:
    if profile.kernel.source != "custom":
        return None
    from synapse_os.kernel.pkgbuild import localversion_for

    return localversion_for(profile)


def write_stock_entry(profile: Profile) -> str:
    """synapse-stock.conf: the newest entry of a kernel other than the profile's own (the
    distribution's), with the profile's command-line words left out and synapse.stock."""
    directory = _entries_dir(profile)
    if not directory.is_dir():
        raise UserError(f"{directory} does not exist: a boot A/B needs systemd-boot's entries "
                        "(boot.loader: systemd-boot) on the ESP at "
                        f"{distro_for(profile).esp_mount}")
    suffix = _tuned_kernel_suffix(profile)
    candidates = []
    for path in sorted(directory.glob("*.conf")):
        if path.name == STOCK_ENTRY:
            continue
        entry = _read_entry(path)
        version = (entry.get("version") or entry.get("linux") or [""])[0]
        if "linux" in entry and (suffix is None or not version.endswith(suffix)):
            candidates.append((version, path, entry))
    if not candidates:
        raise UserError(f"no entry in {directory} boots a kernel other than the profile's "
                        f"own (*{suffix}); install the distribution's kernel so that it gets one")
    version, path, entry = max(candidates, key=lambda c: c[0])
    profile_words = set(desired_state(profile).cmdline)
    options = [w for line in entry.get("options", []) for w in line.split()
               if w not in profile_words and w != STOCK_WORD] + [STOCK_WORD]
    lines = [f"title Stock baseline of {profile.name} (synapse bench ab): kernel {version}"]
    lines += [f"{key} {value}" for key in ("version", "machine-id", "sort-key", "linux",
                                           "initrd", "devicetree")
              for value in entry.get(key, [])]
    lines.append(f"options {cmdline_string(options)}")
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


def resolve_entries(profile: Profile, spec: str) -> dict[str, str]:
    """--boot-entries A,B: each `stock`, `tuned` or an entry's file name -> entry ids."""
    words = entry_words(spec)
    directory = _entries_dir(profile)
    names = sorted(p.name for p in directory.glob("*.conf")) if directory.is_dir() else []
    out = {}
    for arm, word in zip(("A", "B"), words, strict=True):
        if word == "stock":
            out[arm] = write_stock_entry(profile)
        elif word == "tuned":
            selected = selected_entry()
            tuned = selected if selected and selected != STOCK_ENTRY and selected in names \
                else _default_entry(profile, names)
            if tuned is None:
                raise UserError(f"no tuned entry was found in {directory} (not booted from one, "
                                "no loader.conf default that matches one); name it in "
                                "--boot-entries")
            out[arm] = tuned
        else:
            name = word if word.endswith(".conf") else f"{word}.conf"
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


def _persistent(output: Path) -> None:
    parent = output.parent.resolve()
    while not parent.exists():
        parent = parent.parent
    fstype = proc.run(["findmnt", "-no", "FSTYPE", "-T", str(parent)], check=False).stdout.strip()
    if fstype in ("tmpfs", "ramfs"):
        raise UserError(f"-o {output} is on {fstype}, which the reboots of a boot A/B empty; "
                        "pass a directory on disk (e.g. under /var/lib)")


def start(profile: Profile, spec: str, output: Path, settings: BootSettings,
          llama_bench: Path, model: Path, model_record: dict[str, Any],
          bench_info: dict[str, Any], reboot: bool = True) -> dict[str, Any]:
    """Write the plan and boot the first arm (unless reboot is False)."""
    settings.check()
    words = entry_words(spec)
    if os.geteuid() != 0:
        raise UserError("a boot A/B sets the next boot entry and reboots: run it as root")
    if not Path("/sys/firmware/efi").is_dir():
        raise UserError("this machine did not boot through UEFI: a boot A/B needs "
                        "systemd-boot's one-shot entry (bootctl set-oneshot)")
    if Path(BOOT_AB_STATE).exists():
        raise UserError(f"a boot A/B is already under way ({BOOT_AB_STATE}); let it finish, or "
                        f"remove {BOOT_AB_DIR} to abandon it")
    output = output.absolute()
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise UserError(f"-o {output} exists and is not an empty directory; pass a new or "
                        "empty directory for the A/B results")
    _persistent(output)
    entries = resolve_entries(profile, spec)
    from synapse_os.vm.runner import resolved_profile_yaml

    work = Path(BOOT_AB_DIR)
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
        "settings": settings.__dict__, "model": model_record, "llama_bench": bench_info,
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    _save(state)
    _boot(entries[state["order"][0]], reboot)
    return state


def _boot(entry: str, reboot: bool) -> None:
    proc.run(["bootctl", "set-oneshot", entry], timeout=60)
    if reboot:
        proc.run(["systemctl", "reboot", "--no-block"], timeout=60)


def _virtualised() -> dict[str, Any]:
    virt = proc.run(["systemd-detect-virt"], check=False).stdout.strip() or "none"
    # QEMU without KVM is TCG: an instruction emulator, whose speed says nothing of a system
    accel = {"none": "bare metal", "qemu": "tcg"}.get(virt, virt)
    return {"hypervisor": virt, "accel": accel}


def _run_llama_bench(state: dict[str, Any]) -> list[dict[str, Any]]:
    s = state["settings"]
    threads = s["threads"] or os.cpu_count() or 1
    args = [f"{BOOT_AB_DIR}/llama-bench", "-m", f"{BOOT_AB_DIR}/model.gguf", "-o", "jsonl",
            "-p", str(s["n_prompt"]), "-n", str(s["n_gen"]), "-r", str(s["repetitions"]),
            "-t", str(threads)]
    if not s["warmup"]:
        args.append("--no-warmup")
    res = proc.run(args, check=False, timeout=7200)
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
    """This boot's part of the plan; returns what it did, in one line."""
    if not Path(BOOT_AB_STATE).exists():
        return "no boot A/B is under way"
    state = json.loads(Path(BOOT_AB_STATE).read_text())
    index = state["next"]
    arm = state["order"][index]
    expected, selected = state["entries"][arm], selected_entry()
    if selected != expected:
        _abandon(state, f"boot {index + 1} of the A/B should have started entry {expected} "
                        f"(arm {arm}) but started {selected or 'an unknown entry'}")
        raise OperationError(f"the boot A/B was abandoned: this boot is not entry {expected}; "
                             f"see {state['output']}/FAILED.txt")
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
    # not the wired link's checks: DHCP may still be under way, and it is no tuning
    booted_s = float(Path("/proc/uptime").read_text().split()[0])
    checks = run_checks([c for c in settled_checks(profile) if c.kind != "network"])
    results = _run_llama_bench(state)
    boot = {
        "index": index, "arm": arm, "round": index // 2, "position": index,
        "entry": selected, "stock_word": STOCK_WORD in Path("/proc/cmdline").read_text().split(),
        "boot_id": Path("/proc/sys/kernel/random/boot_id").read_text().strip(),
        "booted_s": booted_s,
        "virtualised": _virtualised(), "stopped_units": stopped,
        "failed_units": proc.run(["systemctl", "--failed", "--no-legend", "--plain"],
                                 check=False).stdout.splitlines(),
        "checks": [r.as_dict() for r in checks], "system": provenance.collect(),
        "results": results, "seconds": round(time.monotonic() - started, 1),
    }
    (Path(BOOT_AB_DIR) / BOOTS / f"{index:02d}.json").write_text(json.dumps(boot, indent=1))
    state["next"] = index + 1
    if state["next"] < len(state["order"]):
        _save(state)
        following = state["order"][state["next"]]
        _boot(state["entries"][following], reboot=True)
        return f"boot {index + 1}/{len(state['order'])} (arm {arm}) measured; rebooting into " \
               f"{state['entries'][following]}"
    done = _finish(state)
    names = sorted(p.name for p in _entries_dir(profile).glob("*.conf"))
    if selected != _default_entry(profile, names):  # back to the machine's own boot
        proc.run(["systemctl", "reboot", "--no-block"], timeout=60)
    return done


def _write_collected(state: dict[str, Any], output: Path) -> None:
    boots = [json.loads(p.read_text())
             for p in sorted((Path(BOOT_AB_DIR) / BOOTS).glob("*.json"))]
    output.mkdir(parents=True, exist_ok=True)
    (output / "boots.json").write_text(json.dumps({"plan": state, "boots": boots}, indent=1)
                                       + "\n")


def _abandon(state: dict[str, Any], why: str) -> None:
    output = Path(state["output"])
    _write_collected(state, output)
    (output / "FAILED.txt").write_text(why + "\n")
    shutil.rmtree(BOOT_AB_DIR, ignore_errors=True)


def _finish(state: dict[str, Any]) -> str:
    output = Path(state["output"])
    _write_collected(state, output)
    shutil.rmtree(BOOT_AB_DIR, ignore_errors=True)
    try:
        import scipy  # noqa: F401  (the statistics; the bench extra)
    except ImportError:
        (output / "README.txt").write_text(
            "The boots are measured; make the report (statistics and plots) with "
            f"`synapse bench ab-report {output}` where synapse-os[bench] is installed.\n")
        return f"boot A/B done: {output}/boots.json (report: synapse bench ab-report {output})"
    from synapse_os.bench.ab import boot_report

    boot_report(output)
    return f"boot A/B done: {output}/RESULTS.md"
