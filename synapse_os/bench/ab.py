"""`synapse bench ab`: two systems booted side by side in QEMU, measured by one llama-bench.

Each arm is a profile's test image (built through the install path, or given). One read-only
disk carries the same llama-bench binary and model into both guests. Before measuring, each
guest's engine service is stopped (the arms differ in their tuning, not in what runs) and
its settings are checked live: its own profile's checks, and the candidate's (a stock
baseline must fail the tuned settings, the tuned system must pass them). Rounds alternate
A B, B A, A B … (ABBA: a linear drift cancels within each pair); every round's samples are
kept, and a difference is only called when the whole run and both halves in time agree.
"""

from __future__ import annotations

import base64
import json
import os
import shlex
import shutil
import socket
import time
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from synapse_os import proc
from synapse_os.bench import build, compare, llamabench, provenance, report, stats
from synapse_os.bench.bootab import check_rounds
from synapse_os.bench.paths import check_output_dir
from synapse_os.bench.records import SCHEMA, Record, write
from synapse_os.bench.runner import model_info
from synapse_os.errors import OperationError, UserError
from synapse_os.image import disk
from synapse_os.profile.model import ENGINE_UNITS, Profile
from synapse_os.userfile import read_user_text
from synapse_os.vm.assertions import settled_checks
from synapse_os.vm.machine import Machine
from synapse_os.vm.qemu import kvm_works
from synapse_os.vm.report import Outcome
from synapse_os.vm.runner import run_checks

Progress = Callable[[str], None]

BENCH_SERIAL = "synapse-bench"
GUEST_DIR = "/run/synapse-bench"
GUEST_BINARY = f"{GUEST_DIR}/llama-bench"
GUEST_MODEL = f"{GUEST_DIR}/model.gguf"
ARMS = ("A", "B")


@dataclass(frozen=True)
class Arm:
    name: str  # "A" (baseline) or "B" (candidate)
    profile: Profile
    profile_dir: Path
    image: Path | None = None  # None: built into the work directory


@dataclass(frozen=True)
class AbSettings:
    n_prompt: int = 64
    n_gen: int = 16
    repetitions: int = 3
    rounds: int = 4
    warmup: bool = True  # llama-bench's warm-up run before each test
    threads: int | None = None  # None: every vCPU
    cpus: int = 2
    memory_mb: int = 2048
    model: Path | None = None  # None: the default small model
    llama_bench: Path | None = None
    host_cpus: str | None = None  # KVM only: pin QEMU to these host CPUs
    hugepages: bool = False  # KVM only: hugetlbfs-backed guest RAM
    boot_timeout: float = 900

    def check(self) -> None:
        check_rounds(self.rounds, self.repetitions, self.n_prompt, self.n_gen)
        if self.cpus < 1 or self.memory_mb < 512:
            raise UserError(f"--cpus {self.cpus} / --memory {self.memory_mb} MiB: a guest needs "
                            "at least 1 vCPU and 512 MiB")
        if self.threads is not None and not 1 <= self.threads <= self.cpus:
            raise UserError(f"--threads {self.threads} is not between 1 and the guest's "
                            f"{self.cpus} vCPUs")


@dataclass
class ArmState:
    arm: Arm
    machine: Machine
    image: Path
    boot_id: str = ""
    boot_seconds: float = 0.0
    own_checks: list[Outcome] = field(default_factory=list)
    candidate_checks: list[Outcome] = field(default_factory=list)
    stopped_units: list[str] = field(default_factory=list)
    system: dict[str, Any] = field(default_factory=dict)
    rounds: list[tuple[int, int, list[dict[str, Any]]]] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return self.arm.profile.name


def check_image(arm: Arm, image: Path) -> None:
    meta = disk.read_metadata(image)
    if not meta.get("test"):
        raise UserError(f"image {image} (arm {arm.name}) is not a test image; build it with "
                        f"`synapse image build {arm.profile.name} --test`")
    if meta.get("profile_hash") != arm.profile.hash():
        raise UserError(f"image {image} (arm {arm.name}) was built from profile "
                        f"{meta.get('profile')!r} with other settings than "
                        f"{arm.profile.name!r}; rebuild it, or leave the image out to build it")


def bench_disk(binary: Path, model: Path | None, work: Path) -> Path:
    """An ext4 image holding llama-bench and the model, if one is given (mke2fs -d: no
    mount needed)."""
    proc.require_tool("mke2fs", "apt-get install e2fsprogs")
    staging = work / "bench-disk"
    staging.mkdir()
    shutil.copy2(binary, staging / "llama-bench")
    if model is not None:
        try:
            os.link(model, staging / "model.gguf")
        except OSError:
            shutil.copy2(model, staging / "model.gguf")
    size_mib = (binary.stat().st_size + (model.stat().st_size if model else 0)) // 2**20 + 64
    image = work / "bench.img"
    proc.run(["mke2fs", "-q", "-F", "-t", "ext4", "-L", BENCH_SERIAL, "-d", str(staging),
              str(image), f"{size_mib}M"], timeout=600)
    shutil.rmtree(staging)
    return image


def dump_script() -> str:
    """Shell that prints `PATH BASE64` for every readable file provenance reads (the
    patterns are constants; their globs expand where the script runs)."""
    return (f'for p in {" ".join(provenance.READ_PATTERNS)}; do [ -f "$p" ] && [ -r "$p" ] && '
            'printf "%s %s\\n" "$p" "$(base64 -w0 < "$p" 2>/dev/null)"; done; true')


def parse_dump(out: str) -> provenance.FileDump:
    files = {}
    for line in out.splitlines():
        path, _, data = line.partition(" ")
        if path.startswith("/"):
            files[path] = base64.b64decode(data).decode("utf-8", "replace")
    return provenance.FileDump(files)


def prepare(state: ArmState, candidate: Profile, progress: Progress) -> None:
    """Mount the bench disk, stop the engine, check the settings, read the provenance."""
    started = time.monotonic()
    m = state.machine
    # stopped before the boot finishes: the boot would otherwise wait for it to load models
    for unit in sorted(set(ENGINE_UNITS.values())):
        if m.execute(f"systemctl cat {shlex.quote(unit)} >/dev/null 2>&1")[0] == 0:
            m.succeed(f"systemctl stop {shlex.quote(unit)}", timeout=300)
            state.stopped_units.append(unit)
    m.wait_for_unit("multi-user.target", 600)
    m.succeed(f"mkdir -p {GUEST_DIR} && mount -o ro /dev/disk/by-id/virtio-{BENCH_SERIAL} "
              f"{GUEST_DIR}")
    state.boot_id = m.succeed("cat /proc/sys/kernel/random/boot_id").strip()
    progress(f"arm {state.arm.name}: checking {state.label}'s settings and "
             f"{candidate.name}'s live")
    state.own_checks = run_checks(m, settled_checks(state.arm.profile))
    state.candidate_checks = state.own_checks if state.arm.profile is candidate else \
        run_checks(m, settled_checks(candidate))
    state.system = provenance.collect(parse_dump(m.succeed(dump_script(), timeout=120)))
    state.timings["prepare"] = round(time.monotonic() - started, 1)


def measure(state: ArmState, settings: AbSettings, threads: int, round_no: int,
            position: int) -> None:
    args = ["-m", GUEST_MODEL, "-o", "jsonl", "-p", str(settings.n_prompt),
            "-n", str(settings.n_gen), "-r", str(settings.repetitions), "-t", str(threads)]
    if not settings.warmup:
        args.append("--no-warmup")
    started = time.monotonic()
    command = f"{GUEST_BINARY} {shlex.join(args)} 2>/run/synapse-bench.err; r=$?; " \
              "[ $r = 0 ] || tail -n 8 /run/synapse-bench.err; exit $r"
    rc, out = state.machine.execute(command, timeout=7200)
    if rc != 0:
        raise OperationError(f"llama-bench failed in arm {state.arm.name} ({state.label}, exit "
                             f"code {rc}); its last output was:\n{out.strip()[-1500:]}")
    try:
        results = llamabench.parse_jsonl(out)
    except (json.JSONDecodeError, ValueError) as exc:
        raise OperationError(f"llama-bench in arm {state.arm.name} printed output that is not "
                             f"its JSONL records ({exc})") from None
    state.rounds.append((round_no, position, results))
    state.timings[f"round {round_no}"] = round(time.monotonic() - started, 1)


def _live(outcomes: list[Outcome]) -> dict[str, dict[str, str]]:
    return {o.id: {"status": o.status, "actual": o.actual, "expected": o.expected}
            for o in outcomes}


def _counts(statuses: Iterable[str]) -> dict[str, int]:
    listed = list(statuses)
    return {s: listed.count(s) for s in ("pass", "fail", "unknown")}


def arm_records(state: ArmState, settings: AbSettings, model: dict[str, Any],
                bench: build.LlamaBench, virtualised: dict[str, Any],
                run_id: str, when: str) -> list[dict[str, Any]]:
    """One record per test: every round's samples merged, each round also kept apart."""
    return test_records(
        [(r, p, res, {}) for r, p, res in state.rounds], state.label, state.system, model,
        {"path": f"{bench.path} (as {GUEST_BINARY} in the guest)", **bench.build_info},
        run_id, when,
        {"arm": state.arm.name, "profile": state.label,
         "profile_hash": state.arm.profile.hash(), "image": str(state.image),
         "boot_id": state.boot_id, "boot_seconds": state.boot_seconds,
         "virtualised": virtualised, "stopped_units": state.stopped_units,
         "live": _live(state.own_checks), "candidate_live": _live(state.candidate_checks)})


def test_records(rounds: list[tuple[int, int, list[dict[str, Any]], dict[str, Any]]], label: str,
                 system: dict[str, Any], model: dict[str, Any], llama_bench: dict[str, Any],
                 run_id: str, when: str, ab: dict[str, Any]) -> list[dict[str, Any]]:
    """Records of one arm from its rounds (round, position, llama-bench results, what else
    to keep with the round): one per test, the rounds' samples merged and kept apart."""
    by_test: dict[str, list[tuple[int, int, dict[str, Any], dict[str, Any]]]] = {}
    for round_no, position, results, extra in rounds:
        for result in results:
            by_test.setdefault(llamabench.record_name(result), []).append(
                (round_no, position, result, extra))
    out = []
    for name, runs in by_test.items():
        record = runs[0][2]
        for _, _, more, _ in runs[1:]:
            record = llamabench.merge(record, more)
        record["synapse"] = {
            "schema": SCHEMA, "label": label, "run_id": run_id, "time": when,
            "host": system.get("host"), "real": True, "test": name,
            "repetitions": len(record["samples_ts"]), "extra_runs": 0,
            "cv": stats.cv(record["samples_ts"]),
            "median_ts": stats.median(record["samples_ts"]), "model": model,
            "llama_bench": llama_bench,
            "bandwidth": {"read_gbps": None, "method": "not measured in an A/B run"},
            "roofline": None,
            "provenance": system,
            "ab": {**ab, "rounds": [{"round": r, "position": p,
                                     "samples_ts": res["samples_ts"], **extra}
                                    for r, p, res, extra in runs]},
        }
        out.append(record)
    return out


def interleaved(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> dict[str, Any]:
    """Per test: the whole run and its two halves in time, compared (stats.compare_interleaved)."""
    out = {}
    b_by_test = {r["synapse"]["test"]: r for r in b}
    for record in a:
        name = record["synapse"]["test"]
        if name not in b_by_test:
            continue
        rounds_a = {x["round"]: x["samples_ts"] for x in record["synapse"]["ab"]["rounds"]}
        rounds_b = {x["round"]: x["samples_ts"]
                    for x in b_by_test[name]["synapse"]["ab"]["rounds"]}
        pairs = [(rounds_a[r], rounds_b[r]) for r in sorted(rounds_a) if r in rounds_b]
        out[name] = stats.compare_interleaved(pairs).as_dict()
    return out


def ab_markdown(states: dict[str, ArmState], settings: AbSettings, summary: dict[str, Any],
                virtualised: dict[str, Any]) -> str:
    a, b = states["A"], states["B"]
    tcg = virtualised["accel"] == "tcg"
    lines = ["", "## The A/B run", ""]
    if tcg:
        lines += ["**Virtualised under TCG (QEMU's instruction emulator, no KVM here): these "
                  "figures show the mechanics, not the speed of either system. No speed claim "
                  "is made from them.**", ""]
    lines += [
        f"{settings.rounds} rounds in ABBA order ({summary['order']}), each a llama-bench run "
        f"of -p {settings.n_prompt} -n {settings.n_gen} -r {settings.repetitions}"
        f"{'' if settings.warmup else ' --no-warmup'} at "
        f"{summary['threads']} threads, in {settings.cpus}-vCPU / {settings.memory_mb} MiB "
        f"guests ({virtualised['accel']}"
        + (f", pinned to host CPUs {virtualised['host_cpus']}" if virtualised["host_cpus"]
           else "")
        + (", hugepage-backed RAM" if virtualised["hugepages"] else "") + ").",
        "",
        "| arm | profile | kernel | boot id | boot s | engine stopped | own checks "
        f"(pass/fail/unknown) | {b.label}'s checks (pass/fail/unknown) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for s in (a, b):
        own = _counts(o.status for o in s.own_checks)
        cand = _counts(o.status for o in s.candidate_checks)
        lines.append(
            f"| {s.arm.name} | {s.label} | {s.system.get('kernel')} | {s.boot_id[:8]} | "
            f"{s.boot_seconds:.0f} | {', '.join(s.stopped_units) or '–'} | "
            f"{own['pass']}/{own['fail']}/{own['unknown']} | "
            f"{cand['pass']}/{cand['fail']}/{cand['unknown']} |")
    failing = [o.id for o in a.candidate_checks if o.status == "fail"]
    lines += ["", f"Arm A fails {len(failing)} of {b.label}'s settings"
              + (f" (e.g. {', '.join(failing[:6])})" if failing else "") + "."]
    lines += _verdict_lines(summary, tcg)
    lines += ["", "Records: `records/A.jsonl`, `records/B.jsonl` (every round's samples, the "
              "live value of each checked setting, the provenance of each guest); "
              "`ab.json` has this summary.", ""]
    return "\n".join(lines)


def _verdict_lines(summary: dict[str, Any], tcg: bool) -> list[str]:
    lines = ["", "### Interleaved verdicts", "",
             "A change is called only when the whole run and both halves in time agree.", "",
             "| test | whole ratio [95% CI] | first half | second half | verdict |",
             "|---|---|---|---|---|"]
    for name, result in summary["interleaved"].items():
        cells = [f"{result[k]['ratio']:.3f} [{result[k]['ci_low']:.3f}, {result[k]['ci_high']:.3f}]"
                 for k in ("whole", "first_half", "second_half")]
        verdict = result["verdict"] + (" (TCG: not a speed claim)" if tcg else "")
        lines.append(f"| {name} | {' | '.join(cells)} | {verdict} |")
    return lines


def _prepare_output(output: Path) -> Path:
    check_output_dir(output)
    tmp = output.with_name(f".{output.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def run_ab(arms: tuple[Arm, Arm], settings: AbSettings, output: Path,
           progress: Progress = lambda _msg: None) -> dict[str, Any]:
    settings.check()
    if arms[0].profile.hash() == arms[1].profile.hash():
        raise UserError(f"both arms are the same profile ({arms[0].profile.name}); give a "
                        "baseline and a candidate that differ")
    check_output_dir(output)
    for arm in arms:
        if arm.image is not None:
            check_image(arm, arm.image)
    model_path, model = model_info(settings.model)
    kvm = kvm_works()
    if not kvm and (settings.host_cpus or settings.hugepages):
        raise UserError("--host-cpus and --hugepages need KVM, which does not work here; "
                        "leave them out (the guests run under TCG)")
    flavour = "native" if kvm else "portable"  # a TCG guest has AVX2 at most
    try:
        bench = build.locate(settings.llama_bench, flavour)
    except UserError:
        if settings.llama_bench is not None:
            raise
        progress(f"building llama-bench ({flavour}); this takes minutes once")
        bench = build.build(build.resolve_source(None), flavour=flavour)
    tmp = _prepare_output(output)
    work = tmp / ".work"
    work.mkdir()
    started = time.monotonic()
    try:
        images = {}
        for arm in arms:
            if arm.image is None:
                from synapse_os.image.build import build_image
                from synapse_os.image.progress import Progress as ImageProgress

                progress(f"building arm {arm.name}'s test image ({arm.profile.name})")
                images[arm.name] = work / f"{arm.name}.img"
                build_image(arm.profile, images[arm.name], test=True,
                            progress=ImageProgress(quiet=True), profile_dir=arm.profile_dir)
            else:
                images[arm.name] = arm.image
        disk_image = bench_disk(bench.path, model_path, work)
        virtualised = {"hypervisor": "qemu", "accel": "kvm" if kvm else "tcg",
                       "vcpus": settings.cpus, "memory_mb": settings.memory_mb,
                       "host_cpus": settings.host_cpus, "hugepages": settings.hugepages}
        states = {arm.name: ArmState(arm, Machine(
            images[arm.name], kvm=kvm, memory_mb=settings.memory_mb, cpus=settings.cpus,
            keep_log=tmp / "logs" / f"{arm.name}-serial.log",
            readonly_disks={BENCH_SERIAL: disk_image}, host_cpus=settings.host_cpus,
            hugepages=settings.hugepages), images[arm.name]) for arm in arms}
        try:
            progress(f"booting both arms ({virtualised['accel']})")
            for s in states.values():
                s.machine.start()
            for s in states.values():
                s.boot_seconds = round(s.machine.wait_for_shell(settings.boot_timeout), 1)
            with ThreadPoolExecutor(len(states)) as pool:  # two guests, one each
                list(pool.map(lambda s: prepare(s, arms[1].profile, progress), states.values()))
            threads = settings.threads or settings.cpus
            order = []
            for round_no in range(settings.rounds):
                pair = ARMS if round_no % 2 == 0 else ARMS[::-1]
                for name in pair:
                    progress(f"round {round_no + 1}/{settings.rounds}: llama-bench in arm "
                             f"{name} ({states[name].label})")
                    measure(states[name], settings, threads, round_no, len(order))
                    order.append(name)
            for s in states.values():
                s.machine.shutdown()
        finally:
            for s in states.values():
                s.machine.close()
        run_id, when = uuid.uuid4().hex[:12], time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        records = {name: arm_records(s, settings, model, bench, virtualised, run_id, when)
                   for name, s in states.items()}
        for name, recs in records.items():
            write(tmp / "records" / f"{name}.jsonl", recs)
        loaded = {name: [Record(r, f"{name}.jsonl:{i}") for i, r in enumerate(recs, 1)]
                  for name, recs in records.items()}
        result = compare.compare(loaded["A"], loaded["B"])
        summary = {
            "baseline": states["A"].label, "candidate": states["B"].label,
            "order": " ".join(order), "threads": threads, "settings": {
                k: (str(v) if isinstance(v, Path) else v) for k, v in settings.__dict__.items()},
            "virtualised": virtualised, "harness_host": socket.gethostname(),
            "arms": {name: {"profile": s.label, "image": str(s.image), "boot_id": s.boot_id,
                            "boot_seconds": s.boot_seconds,
                            "own_checks": _counts(o.status for o in s.own_checks),
                            "candidate_checks": _counts(o.status for o in s.candidate_checks),
                            "stopped_units": s.stopped_units, "seconds": s.timings}
                     for name, s in states.items()},
            "comparison": result.as_dict(),
            "interleaved": interleaved(records["A"], records["B"]),
        }
        summary["wall_seconds"] = round(time.monotonic() - started, 1)
        text = report.markdown(result, loaded["A"], loaded["B"])
        (tmp / "RESULTS.md").write_text(text + ab_markdown(states, settings, summary, virtualised))
        report.plots(result, tmp)
        (tmp / "ab.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
        shutil.rmtree(work)
        if output.exists():
            output.rmdir()
        os.replace(tmp, output)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return summary


# --- the boot A/B's report (synapse_os.bench.bootab measures; this compares) ---------------

def boot_report(output: Path) -> dict[str, Any]:
    """RESULTS.md, plots, records/ and ab.json of a finished boot A/B, from its boots.json."""
    source = output / "boots.json"
    try:
        data = json.loads(read_user_text(source, "boots.json", "the -o directory of a "
                                         "finished `synapse bench ab --boot-entries`"))
        return _boot_report(output, data["plan"], data["boots"])
    except (ValueError, KeyError, TypeError, IndexError, AttributeError) as exc:
        raise UserError(f"{source} is not the boots.json of a finished boot A/B ({exc!r}); "
                        "pass the -o directory of `synapse bench ab --boot-entries`") from None


def _boot_report(output: Path, plan: dict[str, Any], boots: list[dict[str, Any]]
                 ) -> dict[str, Any]:
    records: dict[str, list[dict[str, Any]]] = {}
    for arm in ARMS:
        mine = [b for b in boots if b["arm"] == arm]
        if not mine:
            raise ValueError(f"no boot of arm {arm}")
        rounds = [(b["round"], b["position"], b["results"],
                   {"boot_id": b["boot_id"], "entry": b["entry"],
                    "kernel": b["system"].get("kernel"),
                    "checks": _counts(c["status"] for c in b["checks"])}) for b in mine]
        first = mine[0]
        records[arm] = test_records(rounds, plan["labels"][arm], first["system"], plan["model"],
                                    plan["llama_bench"], plan["started"], plan["started"], {
            "arm": arm, "profile": plan["profile"], "profile_hash": plan["profile_hash"],
            "entry": plan["entries"][arm], "boot_id": first["boot_id"],
            "virtualised": first["virtualised"], "stopped_units": first["stopped_units"],
            "live": {c["id"]: {k: c[k] for k in ("status", "actual", "expected")}
                     for c in first["checks"]}})
    for name, recs in records.items():
        write(output / "records" / f"{name}.jsonl", recs)
    loaded = {name: [Record(r, f"{name}.jsonl:{i}") for i, r in enumerate(recs, 1)]
              for name, recs in records.items()}
    result = compare.compare(loaded["A"], loaded["B"])
    virtualised = boots[0]["virtualised"]
    summary = {
        "baseline": plan["labels"]["A"], "candidate": plan["labels"]["B"],
        "order": " ".join(b["arm"] for b in boots), "entries": plan["entries"],
        "settings": plan["settings"], "virtualised": virtualised,
        "boots": [{k: b[k] for k in ("index", "arm", "entry", "boot_id", "stock_word",
                                     "booted_s", "seconds")}
                  | {"kernel": b["system"].get("kernel"),
                     "checks": _counts(c["status"] for c in b["checks"])}
                  for b in boots],
        "comparison": result.as_dict(),
        "interleaved": interleaved(records["A"], records["B"]),
    }
    tcg = virtualised["accel"] == "tcg"
    s = plan["settings"]
    lines = ["", "## The boot A/B run", ""]
    if tcg:
        lines += ["**Booted under TCG (QEMU's instruction emulator): these figures show the "
                  "mechanics, not the speed of either boot. No speed claim is made from "
                  "them.**", ""]
    lines += [f"{len(boots)} boots of one machine ({virtualised['accel']}) in ABBA order "
              f"({summary['order']}): A = entry {plan['entries']['A']}, B = entry "
              f"{plan['entries']['B']}. Each boot ran llama-bench once: -p {s['n_prompt']} "
              f"-n {s['n_gen']} -r {s['repetitions']}{'' if s['warmup'] else ' --no-warmup'}.",
              "", "| boot | arm | entry | kernel | synapse.stock | boot id | up at its step (s) "
              "| profile's checks (pass/fail/unknown) |", "|---|---|---|---|---|---|---|---|"]
    for b in summary["boots"]:
        c = b["checks"]
        lines.append(f"| {b['index'] + 1} | {b['arm']} | {_cell(b['entry'])} | "
                     f"{_cell(b['kernel'])} | "
                     f"{'yes' if b['stock_word'] else 'no'} | {b['boot_id'][:8]} | "
                     f"{b['booted_s']:.0f} | {c['pass']}/{c['fail']}/{c['unknown']} |")
    first_a = next(b for b in boots if b["arm"] == "A")
    failing = [c["id"] for c in first_a["checks"] if c["status"] == "fail"]
    lines += ["", f"Arm A fails {len(failing)} of the profile's settings"
              + (f" (e.g. {', '.join(failing[:6])})" if failing else "") + "."]
    lines += _verdict_lines(summary, tcg)
    lines += ["", "Records: `records/A.jsonl`, `records/B.jsonl`; every boot as measured: "
              "`boots.json`; this summary: `ab.json`.", ""]
    text = report.markdown(result, loaded["A"], loaded["B"])
    (output / "RESULTS.md").write_text(text + "\n".join(lines))
    report.plots(result, output)
    (output / "ab.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    return summary


def _cell(value: object) -> str:
    """A Markdown table cell of text read back from a machine."""
    return str(value).replace("|", "\\|").replace("\n", " ")[:80]
