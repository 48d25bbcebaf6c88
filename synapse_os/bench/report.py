"""`synapse bench report`: RESULTS.md (tables, provenance diff) and PNG plots."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from synapse_os.bench import stats
from synapse_os.bench.compare import Result, gbps_text, table_rows
from synapse_os.bench.records import Record
from synapse_os.errors import UserError

PLOTS = ("throughput.png", "ratio.png", "samples.png")
# Provenance that always differs between two runs and says nothing about the system.
_NOISY_KEYS = ("load_average", "time", "run_id")


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, inner in value.items():
            out.update(flatten(inner, f"{prefix}.{key}" if prefix else str(key)))
        return out
    if isinstance(value, list) and len(value) > 8 and all(isinstance(v, str) for v in value):
        return {prefix: " ".join(value)}
    return {prefix: value}


def system_of(record: Record) -> dict[str, Any]:
    """What describes the system and the build (not the per-test results) of a record."""
    block = record.synapse
    facts = {
        "provenance": block["provenance"],
        "model": block["model"],
        "llama_bench": block["llama_bench"],
        "bandwidth_read_gbps": None if block["bandwidth"].get("read_gbps") is None
        else round(float(block["bandwidth"]["read_gbps"]), 2),
        "build_commit": record.data["build_commit"],
        "build_number": record.data.get("build_number"),
        "cpu_info": record.data.get("cpu_info"),
    }
    flat = flatten(facts)
    return {k: v for k, v in flat.items() if not any(k.endswith(n) for n in _NOISY_KEYS)}


def provenance_diff(baseline: Record, candidate: Record) -> list[tuple[str, Any, Any]]:
    base, cand = system_of(baseline), system_of(candidate)
    keys = sorted(set(base) | set(cand))
    return [(k, base.get(k), cand.get(k)) for k in keys if base.get(k) != cand.get(k)]


def _md_table(rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |"
              for row in rows[1:]]
    return "\n".join(lines)


def _short(value: Any, limit: int = 90) -> str:
    text = "null" if value is None else str(value)
    text = text.replace("|", "\\|").replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def markdown(result: Result, baseline: list[Record], candidate: list[Record]) -> str:
    diff = provenance_diff(baseline[0], candidate[0])
    verdicts = {v: sum(1 for t in result.tests if t.stats.verdict == v)
                for v in ("improved", "regressed", "no difference")}
    parts = [
        f"# Benchmark results: {result.candidate_label} vs {result.baseline_label}",
        "",
        f"Baseline **{result.baseline_label}** ({baseline[0].synapse['time']}, host "
        f"{baseline[0].synapse.get('host')}), candidate **{result.candidate_label}** "
        f"({candidate[0].synapse['time']}, host {candidate[0].synapse.get('host')}).",
        f"Model `{Path(baseline[0].synapse['model']['path']).name}` (sha256 "
        f"`{baseline[0].model_sha256[:16]}…`), llama.cpp build "
        f"`{baseline[0].data['build_commit']}`."
        + (" The model is synthetic (random weights, `synapse bench synth-model`): these "
           "figures measure speed only." if baseline[0].synapse["model"].get("synthetic")
           else ""),
        "",
        "## Summary",
        "",
        f"- Geometric mean of the median ratios (candidate / baseline) over "
        f"{len(result.tests)} tests: **{result.geomean_ratio:.3f}** "
        f"({result.geomean_ratio - 1:+.1%}).",
        f"- Verdicts: {verdicts['improved']} improved, {verdicts['regressed']} regressed, "
        f"{verdicts['no difference']} no difference (a change is called only when the 95 % "
        f"bootstrap CI of the ratio lies outside ±{stats.NOISE_BAND:.0%} and Mann–Whitney "
        f"p < {stats.ALPHA}).",
        f"- Memory read bandwidth (STREAM-style): baseline {gbps_text(result.baseline_bandwidth)}, "
        f"candidate {gbps_text(result.candidate_bandwidth)}.",
    ]
    parts += [f"- Warning: {w}." for w in result.warnings]
    if result.only_baseline or result.only_candidate:
        parts.append(f"- Not compared (in one file only): "
                     f"{', '.join(result.only_baseline + result.only_candidate)}.")
    parts += [
        "",
        "## Tests",
        "",
        "Medians of per-repetition tokens/s; roofline = tokens/s × bytes read per token "
        "(the model's size) ÷ measured read bandwidth, for generation tests.",
        "",
        _md_table(table_rows(result)),
        "",
        "![median tokens/s with 95% CI](throughput.png)",
        "",
        "![ratio with 95% CI](ratio.png)",
        "",
        "![samples](samples.png)",
        "",
        "## What differs between the two systems",
        "",
    ]
    if diff:
        rows = [["setting", result.baseline_label, result.candidate_label]]
        rows += [[key, _short(a), _short(b)] for key, a, b in diff]
        parts.append(_md_table(rows))
    else:
        parts.append("Nothing: the recorded provenance of both runs is identical.")
    parts.append("")
    return "\n".join(parts)


def _median_ci(samples: list[float], seed: int = stats.SEED) -> tuple[float, float]:
    values = np.asarray(samples, dtype=float)
    rng = np.random.default_rng(seed)
    medians = np.median(rng.choice(values, size=(stats.BOOTSTRAP_RESAMPLES, values.size)), axis=1)
    low, high = np.quantile(medians, [0.025, 0.975])
    return float(low), float(high)


def plots(result: Result, directory: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [f"{t.name}\n{t.threads} thr" for t in result.tests]
    x = np.arange(len(result.tests))
    width = 0.38
    colours = {"base": "#7f8c8d", "cand": "#2e86c1"}

    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(names) + 2), 4.5), dpi=110)
    for offset, side, label in ((-width / 2, "base", result.baseline_label),
                                (width / 2, "cand", result.candidate_label)):
        medians, lows, highs = [], [], []
        for t in result.tests:
            samples = t.baseline_samples if side == "base" else t.candidate_samples
            med = stats.median(samples)
            low, high = _median_ci(samples)
            medians.append(med)
            lows.append(med - low)
            highs.append(high - med)
        ax.bar(x + offset, medians, width, yerr=[lows, highs], capsize=4, label=label,
               color=colours[side])
    ax.set_xticks(x, names)
    ax.set_ylabel("tokens/s (median, 95% CI)")
    ax.set_title("Throughput per test")
    ax.legend()
    fig.tight_layout()
    fig.savefig(directory / "throughput.png")
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(max(6.0, 1.4 * len(names) + 2), 4.5), dpi=110)
    ratios = [t.stats.ratio for t in result.tests]
    err = [[t.stats.ratio - t.stats.ci_low for t in result.tests],
           [t.stats.ci_high - t.stats.ratio for t in result.tests]]
    verdict_colour = {"improved": "#27ae60", "regressed": "#c0392b", "no difference": "#7f8c8d"}
    ax.axhspan(1 - stats.NOISE_BAND, 1 + stats.NOISE_BAND, color="#f4d03f", alpha=0.35,
               label=f"±{stats.NOISE_BAND:.0%} noise band")
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.bar(x, [r - 1 for r in ratios], 0.6, bottom=1, yerr=err, capsize=5,
           color=[verdict_colour[t.stats.verdict] for t in result.tests])
    for i, t in enumerate(result.tests):
        ax.annotate(t.stats.verdict, (x[i], t.stats.ci_high), textcoords="offset points",
                    xytext=(0, 6), ha="center", fontsize=8)
    ax.set_xticks(x, names)
    ax.margins(y=0.18)  # room for the verdict labels above the whiskers
    ax.set_ylabel(f"{result.candidate_label} / {result.baseline_label}")
    ax.set_title(f"Median ratio with bootstrap 95% CI (geomean {result.geomean_ratio:.3f})")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(directory / "ratio.png")
    plt.close(fig)

    fig, axes = plt.subplots(1, len(result.tests), figsize=(max(6.0, 2.6 * len(names)), 4.5),
                             dpi=110, squeeze=False)
    rng = np.random.default_rng(stats.SEED)
    for ax, t, name in zip(axes[0], result.tests, names, strict=True):
        data = [t.baseline_samples, t.candidate_samples]
        ax.boxplot(data, widths=0.5, showfliers=False)
        for i, samples in enumerate(data, start=1):
            jitter = rng.uniform(-0.12, 0.12, len(samples))
            ax.scatter(i + jitter, samples, s=12, alpha=0.7,
                       color=colours["base" if i == 1 else "cand"])
        ax.set_xticks([1, 2], [result.baseline_label, result.candidate_label], fontsize=8,
                      rotation=15)
        ax.set_title(name.replace("\n", ", "), fontsize=9)
        ax.set_ylabel("tokens/s")
    fig.suptitle("Per-repetition samples")
    fig.tight_layout()
    fig.savefig(directory / "samples.png")
    plt.close(fig)


def write(result: Result, baseline: list[Record], candidate: list[Record], output: Path) -> Path:
    """Write RESULTS.md and the plots into OUTPUT, replaced as a whole (never half-written)."""
    if output.exists() and not output.is_dir():
        raise UserError(f"report output {output} exists and is not a directory; pass a "
                        "directory path")
    if output.is_dir() and any(p.name not in ("RESULTS.md", *PLOTS) for p in output.iterdir()):
        raise UserError(f"report output {output} holds files other than a previous report; "
                        "pass an empty or new directory")
    tmp = output.with_name(f".{output.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        (tmp / "RESULTS.md").write_text(markdown(result, baseline, candidate))
        plots(result, tmp)
        if output.exists():
            shutil.rmtree(output)
        os.replace(tmp, output)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return output / "RESULTS.md"
