"""`synapse fleet report`: the per-host results an Ansible play fetched, as one table.

RESULTS_DIR holds one directory per inventory host (what the role's `fetch` tasks write):
HOST/verify.json (`synapse verify --json`) and, with the bench stage, HOST/bench.jsonl
(`synapse bench run`). Everything there is untrusted input: names are checked, files are
read without following symlinks and only up to a size bound, JSON is parsed strictly
(no NaN/Infinity, no repeated keys) and checked field by field; any problem is one
sentence (exit 2). Bench outliers use synapse_os.bench.stats, the statistics of
`synapse bench compare`: each host against the pooled samples of all the others.
"""

from __future__ import annotations

import json
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from synapse_os.errors import UserError
from synapse_os.outdir import File, write_dir

MAX_VERIFY_BYTES = 8 * 1024 * 1024
MAX_BENCH_BYTES = 8 * 1024 * 1024
MAX_HOSTS = 10_000
MAX_CHECKS = 100_000
HOST_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,252}")
STATUSES = ("pass", "fail", "unknown")
ACCEPTED_VERIFY = "the report `synapse verify --json` writes"


@dataclass
class HostResult:
    host: str
    counts: dict[str, int] | None = None  # None: no verify.json
    failing: list[str] = field(default_factory=list)
    bench: dict[str, list[float]] = field(default_factory=dict)  # "pp512@4" -> samples
    outliers: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        from statistics import median

        return {"host": self.host, "counts": self.counts, "failing": self.failing,
                "verify_ok": None if self.counts is None else self.counts["fail"] == 0,
                "bench_median_ts": {k: median(v) for k, v in sorted(self.bench.items())},
                "outliers": self.outliers}


def _read_bounded(path: Path, limit: int, what: str) -> bytes:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        raise UserError(f"{path}: does not exist; expected {what}") from None
    except OSError as exc:
        reason = "is a symlink" if path.is_symlink() else f"cannot be read ({exc.strerror})"
        raise UserError(f"{path}: {reason}; expected {what} as a regular file") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise UserError(f"{path}: is not a regular file; expected {what}")
        data = b""
        while len(data) <= limit:
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                break
            data += chunk
    finally:
        os.close(fd)
    if len(data) > limit:
        raise UserError(f"{path}: is larger than {limit // (1024 * 1024)} MiB; expected {what}")
    return data


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"key {key!r} appears twice")
        out[key] = value
    return out


def strict_json(text: str) -> Any:
    try:
        return json.loads(text, parse_constant=_no_constants, object_pairs_hook=_unique_keys)
    except RecursionError:
        raise ValueError("nested too deeply") from None


def _count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_CHECKS


def load_verify(path: Path) -> tuple[dict[str, int], list[str]]:
    """(counts, ids of failing checks) from a fetched verify report."""
    raw = _read_bounded(path, MAX_VERIFY_BYTES, ACCEPTED_VERIFY)
    try:
        data = strict_json(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise UserError(f"{path}: is not UTF-8; expected {ACCEPTED_VERIFY}") from None
    except ValueError as exc:
        raise UserError(f"{path}: is not valid JSON ({str(exc).splitlines()[0]}); expected "
                        f"{ACCEPTED_VERIFY}") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: is not a JSON object; expected {ACCEPTED_VERIFY}")
    counts, checks = data.get("counts"), data.get("checks")
    if not isinstance(counts, dict) or set(counts) != set(STATUSES) \
            or not all(_count(counts[s]) for s in STATUSES):
        raise UserError(f"{path}: 'counts' is not pass/fail/unknown numbers; expected "
                        f"{ACCEPTED_VERIFY}")
    if not isinstance(checks, list) or len(checks) > MAX_CHECKS:
        raise UserError(f"{path}: 'checks' is not a list of at most {MAX_CHECKS} checks; "
                        f"expected {ACCEPTED_VERIFY}")
    seen = dict.fromkeys(STATUSES, 0)
    failing: list[str] = []
    for number, check in enumerate(checks, start=1):
        if not isinstance(check, dict) or check.get("status") not in STATUSES \
                or not isinstance(check.get("id"), str):
            raise UserError(f"{path}: check {number} has no id or no status among "
                            f"{', '.join(STATUSES)}; expected {ACCEPTED_VERIFY}")
        seen[check["status"]] += 1
        if check["status"] == "fail":
            failing.append(check["id"])
    if seen != counts:
        raise UserError(f"{path}: 'counts' ({counts}) does not match its checks ({seen}); "
                        f"expected {ACCEPTED_VERIFY}")
    if (data.get("ok") is True) != (counts["fail"] == 0):
        raise UserError(f"{path}: 'ok' contradicts its failing checks; expected "
                        f"{ACCEPTED_VERIFY}")
    return {s: counts[s] for s in STATUSES}, failing


def load_bench(path: Path) -> dict[str, list[float]]:
    from synapse_os.bench import records

    _read_bounded(path, MAX_BENCH_BYTES, "an NDJSON file written by `synapse bench run`")
    out: dict[str, list[float]] = {}
    for record in records.load(path):
        out[f"{record.name}@{record.threads}"] = record.samples
    return out


def collect(results: Path) -> list[HostResult]:
    if results.is_symlink() or not results.is_dir():
        raise UserError(f"{results}: is not a directory; pass the results directory the play "
                        "fetched into (synapse_results_dir, default results/ next to site.yml)")
    entries = sorted(p for p in results.iterdir() if not p.name.startswith("."))
    if len(entries) > MAX_HOSTS:
        raise UserError(f"{results}: holds more than {MAX_HOSTS} entries; pass one results "
                        "directory of a play")
    hosts: list[HostResult] = []
    for entry in entries:
        if entry.is_symlink() or not entry.is_dir():
            raise UserError(f"{entry}: is not a host directory; a results directory holds one "
                            "directory per inventory host")
        if not HOST_NAME.fullmatch(entry.name):
            raise UserError(f"{entry}: {entry.name!r} is not an inventory host name (letters, "
                            "digits, '.', '_', ':', '-')")
        host = HostResult(entry.name)
        if os.path.lexists(entry / "verify.json"):
            host.counts, host.failing = load_verify(entry / "verify.json")
        if os.path.lexists(entry / "bench.jsonl"):
            host.bench = load_bench(entry / "bench.jsonl")
        if host.counts is None and not host.bench:
            raise UserError(f"{entry}: holds neither verify.json nor bench.jsonl; pass the "
                            "results directory the play fetched into")
        hosts.append(host)
    if not hosts:
        raise UserError(f"{results}: holds no host results; run the play first (its fetch "
                        "tasks fill it)")
    return hosts


def flag_outliers(hosts: list[HostResult]) -> None:
    """A host is an outlier on a test when `bench compare`'s verdict for it against the
    pooled samples of every other host is not "no difference"."""
    tests = sorted({t for h in hosts for t in h.bench})
    if not tests:
        return
    from synapse_os.bench import stats

    for test in tests:
        having = [h for h in hosts if test in h.bench]
        if len(having) < 2:
            continue
        for host in having:
            others = [s for h in having if h is not host for s in h.bench[test]]
            result = stats.compare_samples(others, host.bench[test])
            if result.verdict != "no difference":
                word = "faster" if result.verdict == "improved" else "slower"
                host.outliers.append(f"{test} {word} ({result.ratio:.3f}x the others, "
                                     f"p={result.p_value:.3g})")


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")[:200]


def results_md(hosts: list[HostResult]) -> str:
    from statistics import median

    tests = sorted({t for h in hosts for t in h.bench})
    header = ["host", "verify", "pass", "fail", "unknown"] + [f"{t} median t/s" for t in tests]
    header.append("outliers")
    lines = ["# Fleet results", "",
             f"{len(hosts)} host(s); verify: "
             f"{sum(1 for h in hosts if h.counts and h.counts['fail'] == 0)} ok, "
             f"{sum(1 for h in hosts if h.counts and h.counts['fail'])} failed, "
             f"{sum(1 for h in hosts if h.counts is None)} without a report. "
             "A check that is `unknown` (not visible on that target) is not a failure.", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for h in hosts:
        if h.counts is None:
            verdict, counts = "no report", ["", "", ""]
        else:
            verdict = "ok" if h.counts["fail"] == 0 else "FAILED"
            counts = [str(h.counts[s]) for s in STATUSES]
        bench = [f"{median(h.bench[t]):.2f}" if t in h.bench else "" for t in tests]
        row = [h.host, verdict, *counts, *bench, "; ".join(h.outliers) or ""]
        lines.append("| " + " | ".join(_cell(c) for c in row) + " |")
    failing = [(h.host, h.failing) for h in hosts if h.failing]
    if failing:
        lines += ["", "## Failing checks", ""]
        for host, ids in failing:
            shown = ", ".join(f"`{_cell(i)}`" for i in ids[:20])
            more = f" and {len(ids) - 20} more" if len(ids) > 20 else ""
            lines.append(f"- {host}: {shown}{more}")
    if tests:
        lines += ["", "Outliers: each host against the pooled samples of all other hosts, "
                  "with `synapse bench compare`'s statistics (95 % bootstrap CI of the median "
                  "ratio outside ±1 % and Mann-Whitney p < 0.05). With two hosts the two "
                  "verdicts mirror each other."]
    return "\n".join(lines) + "\n"


def plots(hosts: list[HostResult]) -> dict[str, bytes]:
    """verify.png (checks per host by status) and, with bench records, bench.png (each
    host's samples per test, outliers in red); {} without matplotlib."""
    try:
        import matplotlib
    except ImportError:
        return {}
    matplotlib.use("Agg")
    import io

    import matplotlib.pyplot as plt

    def png(fig: Any) -> bytes:
        buf = io.BytesIO()
        fig.tight_layout()
        fig.savefig(buf, format="png")
        plt.close(fig)
        return buf.getvalue()

    out: dict[str, bytes] = {}
    names = [h.host for h in hosts]
    fig, ax = plt.subplots(figsize=(7.0, 1.2 + 0.4 * len(hosts)), dpi=110)
    left = [0] * len(hosts)
    for status, colour in zip(STATUSES, ("#27ae60", "#c0392b", "#95a5a6"), strict=True):
        values = [h.counts[status] if h.counts else 0 for h in hosts]
        ax.barh(names, values, left=left, color=colour, label=status)
        left = [a + b for a, b in zip(left, values, strict=True)]
    ax.invert_yaxis()
    ax.set_xlabel("checks")
    ax.set_title("synapse verify per host")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    out["verify.png"] = png(fig)
    tests = sorted({t for h in hosts for t in h.bench})
    if tests:
        fig, axes = plt.subplots(1, len(tests), figsize=(max(6.0, 3.0 * len(tests)), 4.5),
                                 dpi=110, squeeze=False)
        for ax, test in zip(axes[0], tests, strict=True):
            having = [h for h in hosts if test in h.bench]
            ax.boxplot([h.bench[test] for h in having], widths=0.5, showfliers=False)
            for i, h in enumerate(having, start=1):
                outlier = any(o.startswith(f"{test} ") for o in h.outliers)
                ax.scatter([i] * len(h.bench[test]), h.bench[test], s=12, alpha=0.7,
                           color="#c0392b" if outlier else "#2e86c1")
            ax.set_xticks(range(1, len(having) + 1), [h.host for h in having],
                          rotation=30, ha="right")
            ax.set_title(test)
            ax.set_ylabel("tokens/s")
        out["bench.png"] = png(fig)
    return out


def write(results: Path, output: Path) -> tuple[list[HostResult], Path]:
    hosts = collect(results)
    flag_outliers(hosts)
    summary = json.dumps([h.as_dict() for h in hosts], indent=2, sort_keys=True) + "\n"
    images = plots(hosts)
    md = results_md(hosts) + "".join(f"\n![{name[:-4]}]({name})\n" for name in sorted(images))
    if not images:
        md += "\nNo plots: they need matplotlib (pip install 'synapse-os[bench]').\n"
    files = {"RESULTS.md": File(md.encode()), "fleet-report.json": File(summary.encode())}
    files.update({name: File(data) for name, data in images.items()})
    write_dir(output, files, "fleet-report.json")
    return hosts, output / "RESULTS.md"
