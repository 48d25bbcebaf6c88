"""Provenance NDJSON -> latency p50/p95 per tier, routing accuracy, acceptance, RESULTS.md."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from synapse_os.errors import UserError
from synapse_os.runtime.provenance import REQUIRED_FIELDS

TIER_ORDER = ("trivial", "moderate", "high", "explicit")


def load_records(path: Path) -> list[dict[str, Any]]:
    """Read and check records; mock or incomplete records are refused with file:line."""
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror}") from None
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UserError(f"{path}:{number}: not a JSON line ({exc.msg})") from None
        if not isinstance(record, dict):
            raise UserError(f"{path}:{number}: a record must be a JSON object")
        missing = [f for f in REQUIRED_FIELDS if f not in record]
        if missing:
            raise UserError(f"{path}:{number}: record lacks {', '.join(missing)}")
        if record["execution_mode"] != "real":
            raise UserError(
                f"{path}:{number}: execution_mode is {record['execution_mode']!r}; only records "
                "from real model runs are accepted in results"
            )
        records.append(record)
    if not records:
        raise UserError(f"{path} holds no records")
    return records


def percentile(values: list[float], q: float) -> float | None:
    """Linear-interpolated percentile (q in 0..100), None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def summarize(records: list[dict[str, Any]]) -> dict[str, Any]:
    ok = [r for r in records if r["status"] == "ok"]
    tiers: dict[str, Any] = {}
    for tier in TIER_ORDER:
        rs = [r for r in ok if r["tier"] == tier]
        if not rs:
            continue
        lat = [float(r["latency_ms"]) for r in rs]
        ttft = [float(r["ttft_ms"]) for r in rs]
        decode_s = sum(max(r["latency_ms"] - r["ttft_ms"], 0.0) for r in rs) / 1000
        out_tokens = sum(int(r["tokens_out"]) for r in rs)
        spec = [r["speculative"] for r in rs if r["speculative"]["used"]]
        proposed = sum(s["proposed"] for s in spec)
        accepted = sum(s["accepted"] for s in spec)
        tiers[tier] = {
            "requests": len(rs),
            "latency_ms_p50": percentile(lat, 50), "latency_ms_p95": percentile(lat, 95),
            "ttft_ms_p50": percentile(ttft, 50), "ttft_ms_p95": percentile(ttft, 95),
            "tokens_out": out_tokens,
            "decode_tokens_per_s": out_tokens / decode_s if decode_s > 0 else None,
            "speculative_requests": len(spec),
            "proposed": proposed, "accepted": accepted,
            "accept_rate": accepted / proposed if proposed else None,
            "models": sorted({r["model_role"] for r in rs}),
        }
    routing: dict[str, Any] = {}
    judged = [r for r in ok if r.get("expected_tier") and r.get("routed")]
    for tier in ("trivial", "moderate", "high"):
        rs = [r for r in judged if r["expected_tier"] == tier]
        if rs:
            right = sum(1 for r in rs if r["tier"] == tier)
            routing[tier] = {"expected": len(rs), "correct": right, "accuracy": right / len(rs)}
    if judged:
        right = sum(1 for r in judged if r["tier"] == r["expected_tier"])
        routing["overall"] = {"expected": len(judged), "correct": right,
                              "accuracy": right / len(judged)}
    first = records[0]
    return {
        "requests": len(records),
        "errors": len(records) - len(ok),
        "tiers": tiers,
        "routing": routing,
        "models": first["models"],
        "environment": first["environment"],
        "git_revisions": sorted({r["git_revision"] for r in records}),
        "deterministic": sorted({bool(r["deterministic"]) for r in records}),
    }


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def render_markdown(summary: dict[str, Any]) -> str:
    lines = ["# Synapse runtime results", "",
             f"{summary['requests']} requests ({summary['errors']} errors); "
             f"git revision(s): {', '.join(summary['git_revisions'])}", "",
             "## Latency per tier", "",
             "| tier | requests | p50 ms | p95 ms | TTFT p50 ms | TTFT p95 ms | decode tok/s |",
             "|---|---|---|---|---|---|---|"]
    for tier, t in summary["tiers"].items():
        lines.append(f"| {tier} | {t['requests']} | {_fmt(t['latency_ms_p50'])} | "
                     f"{_fmt(t['latency_ms_p95'])} | {_fmt(t['ttft_ms_p50'])} | "
                     f"{_fmt(t['ttft_ms_p95'])} | {_fmt(t['decode_tokens_per_s'])} |")
    lines += ["", "## Routing accuracy", "", "| expected tier | prompts | correct | accuracy |",
              "|---|---|---|---|"]
    for tier, r in summary["routing"].items():
        lines.append(f"| {tier} | {r['expected']} | {r['correct']} | {r['accuracy']:.0%} |")
    if not summary["routing"]:
        lines.append("| (no records with an expected tier) | | | |")
    lines += ["", "## Speculative decoding", "",
              "| tier | speculative requests | proposed | accepted | acceptance |",
              "|---|---|---|---|---|"]
    for tier, t in summary["tiers"].items():
        rate = f"{t['accept_rate']:.0%}" if t["accept_rate"] is not None else "-"
        lines.append(f"| {tier} | {t['speculative_requests']} | {t['proposed']} | "
                     f"{t['accepted']} | {rate} |")
    lines += ["", "## Models", "", "| role | path | quantization | sha256 |", "|---|---|---|---|"]
    for role, m in sorted(summary["models"].items()):
        lines.append(f"| {role} | {m['path']} | {m['quantization']} | `{m['sha256']}` |")
    env = summary["environment"]
    lines += ["", "## Environment", ""] + [f"- {k}: {v}" for k, v in sorted(env.items())]
    return "\n".join(lines) + "\n"


def _write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


def write_results(summary: dict[str, Any], output: Path) -> None:
    output.mkdir(parents=True, exist_ok=True)
    _write_atomic(output / "summary.json", json.dumps(summary, indent=2, sort_keys=True) + "\n")
    _write_atomic(output / "RESULTS.md", render_markdown(summary))
