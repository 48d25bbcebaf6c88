"""Run the real llama-bench (-o jsonl) and read its records.

llama-bench emits one JSON object per test with n_prompt / n_gen / n_depth (there is no
'test' field); names follow llama.cpp's compare-llama-bench.py: pp512, tg128, pp512+tg128,
with '@d<depth>' appended for a non-zero depth.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from synapse_os import proc
from synapse_os.errors import UserError

REQUIRED_FIELDS = ("n_prompt", "n_gen", "n_depth", "n_threads", "avg_ts", "stddev_ts",
                   "samples_ns", "samples_ts", "build_commit", "model_size")


@dataclass(frozen=True)
class TestSpec:
    n_prompt: int
    n_gen: int
    threads: int

    @property
    def name(self) -> str:
        return test_name(self.n_prompt, self.n_gen, 0)


def test_name(n_prompt: int, n_gen: int, n_depth: int = 0) -> str:
    if n_prompt and n_gen:
        name = f"pp{n_prompt}+tg{n_gen}"
    elif n_prompt:
        name = f"pp{n_prompt}"
    else:
        name = f"tg{n_gen}"
    return f"{name}@d{n_depth}" if n_depth else name


def record_name(record: dict[str, Any]) -> str:
    return test_name(int(record["n_prompt"]), int(record["n_gen"]), int(record["n_depth"]))


def is_generation(record: dict[str, Any]) -> bool:
    """A pure token-generation test: the one bounded by memory bandwidth."""
    return int(record["n_prompt"]) == 0 and int(record["n_gen"]) > 0


def parse_jsonl(text: str) -> list[dict[str, Any]]:
    records = []
    for line in text.splitlines():
        line = line.strip()
        if not line.startswith("{"):
            continue
        record = json.loads(line)
        missing = [f for f in REQUIRED_FIELDS if f not in record]
        if missing:
            raise ValueError(f"llama-bench record lacks {', '.join(missing)}")
        records.append(record)
    return records


def run(binary: Path, model: Path, args: list[str], *,
        timeout: float = 3600) -> list[dict[str, Any]]:
    """Run llama-bench on MODEL with ARGS; a failure is one sentence with llama-bench's stderr."""
    argv = [str(binary), "-m", str(model), "-o", "jsonl", *args]
    result = proc.run(argv, check=False, timeout=timeout)
    if result.returncode != 0:
        detail = proc.tail(result.stderr, 8) or proc.tail(result.stdout, 8)
        raise UserError(
            f"llama-bench failed on model {model} (exit code {result.returncode}); its last "
            f"output was:\n{detail}")
    try:
        records = parse_jsonl(result.stdout)
    except (json.JSONDecodeError, ValueError) as exc:
        raise UserError(f"llama-bench ({binary}) printed output that is not its JSONL records "
                        f"({exc}); pass a real llama-bench binary") from None
    if not records:
        raise UserError(f"llama-bench ({binary}) ran but printed no records; its last output "
                        f"was:\n{proc.tail(result.stderr, 8)}")
    return records


def spec_args(spec: TestSpec, repetitions: int) -> list[str]:
    """llama-bench arguments running exactly one test at one thread count."""
    if spec.n_prompt and spec.n_gen:
        tests = ["-p", "0", "-n", "0", "-pg", f"{spec.n_prompt},{spec.n_gen}"]
    else:
        tests = ["-p", str(spec.n_prompt), "-n", str(spec.n_gen)]
    return [*tests, "-t", str(spec.threads), "-r", str(repetitions)]


def merge(first: dict[str, Any], more: dict[str, Any]) -> dict[str, Any]:
    """One record holding the samples of both runs, its averages recomputed."""
    merged = dict(first)
    samples_ns = [int(x) for x in first["samples_ns"]] + [int(x) for x in more["samples_ns"]]
    samples_ts = [float(x) for x in first["samples_ts"]] + [float(x) for x in more["samples_ts"]]
    merged["samples_ns"] = samples_ns
    merged["samples_ts"] = samples_ts
    merged["avg_ns"] = int(sum(samples_ns) / len(samples_ns))
    merged["stddev_ns"] = int(_stdev(samples_ns))
    merged["avg_ts"] = sum(samples_ts) / len(samples_ts)
    merged["stddev_ts"] = _stdev(samples_ts)
    return merged


def _stdev(values: list[int] | list[float]) -> float:
    if len(values) < 2:
        return 0.0
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
