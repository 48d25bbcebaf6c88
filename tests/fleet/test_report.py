"""`synapse fleet report`: fetched results are untrusted input; bench outliers use the
statistics of `synapse bench compare`."""

from __future__ import annotations

import json
import os
from pathlib import Path

from tests.apply.helpers import synapse

VERIFY_OK = {"root": "/r", "live": False, "ok": True, "notes": [],
             "counts": {"pass": 2, "fail": 0, "unknown": 1},
             "checks": [{"id": "file /etc/a", "status": "pass"},
                        {"id": "file /etc/b", "status": "pass"},
                        {"id": "sysctl vm.x", "status": "unknown"}]}


def record(label: str, samples: list[float]) -> dict[str, object]:
    """A record shaped as `synapse bench run` writes it (tg128 at 4 threads)."""
    return {"n_prompt": 0, "n_gen": 128, "n_depth": 0, "n_threads": 4,
            "avg_ts": sum(samples) / len(samples), "stddev_ts": 0.1,
            "samples_ns": [int(1e9 * 128 / s) for s in samples], "samples_ts": samples,
            "build_commit": "abc1234", "model_size": 1000,
            "synapse": {"schema": 1, "label": label, "time": "2026-11-30T00:00:00Z",
                        "real": True, "model": {"sha256": "0" * 64}, "llama_bench": {},
                        "bandwidth": {"read_gbps": 10.0}, "provenance": {}}}


def host(results: Path, name: str, verify: object | None = None,
         bench: list[float] | None = None) -> Path:
    d = results / name
    d.mkdir(parents=True)
    if verify is not None:
        (d / "verify.json").write_text(verify if isinstance(verify, str) else json.dumps(verify))
    if bench is not None:
        (d / "bench.jsonl").write_text(json.dumps(record(name, bench)) + "\n")
    return d


def report(results: Path, out: Path) -> tuple[int, str, str]:
    res = synapse("fleet", "report", results, "-o", out, "--json")
    return res.returncode, res.stdout, res.stderr.strip()


def test_hosts_counts_and_outlier(tmp_path: Path) -> None:
    results = tmp_path / "results"
    normal = [50.0, 50.2, 49.8, 50.1, 49.9, 50.0, 50.3, 49.7]
    host(results, "a1", VERIFY_OK, normal)
    host(results, "a2", VERIFY_OK, [x + 0.05 for x in normal])
    failed = json.loads(json.dumps(VERIFY_OK))
    failed["ok"] = False
    failed["counts"] = {"pass": 1, "fail": 1, "unknown": 1}
    failed["checks"][1]["status"] = "fail"
    host(results, "slow", failed, [x * 0.8 for x in normal])
    rc, out, err = report(results, tmp_path / "out")
    assert rc == 0, err
    hosts = {h["host"]: h for h in json.loads(out)["hosts"]}
    assert hosts["slow"]["verify_ok"] is False and hosts["slow"]["failing"] == ["file /etc/b"]
    assert hosts["slow"]["outliers"] and "slower" in hosts["slow"]["outliers"][0]
    assert not hosts["a1"]["outliers"]
    md = (tmp_path / "out/RESULTS.md").read_text()
    assert "| slow | FAILED | 1 | 1 | 1 | 40.00 |" in md
    assert "| a1 | ok | 2 | 0 | 1 | 50.00 |" in md
    # the plots: real PNGs, linked from RESULTS.md
    for name in ("verify.png", "bench.png"):
        assert (tmp_path / "out" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"]({name})" in md


def _one_sentence_exit_2(results: Path, out: Path, *needles: str) -> None:
    rc, _, err = report(results, out)
    assert rc == 2, err
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err
    for needle in needles:
        assert needle in err, err


def test_bad_results_refused(tmp_path: Path) -> None:
    cases: list[tuple[object, str]] = [
        ("{not json", "is not valid JSON"),
        ('{"counts": NaN}', "is not valid JSON"),
        ('{"ok": true, "ok": false, "counts": {}, "checks": []}', "appears twice"),
        ([1, 2], "is not a JSON object"),
        ({**VERIFY_OK, "counts": {"pass": 5, "fail": 0, "unknown": 1}}, "does not match"),
        ({**VERIFY_OK, "counts": {"pass": True, "fail": 0, "unknown": 1}}, "'counts'"),
        ({**VERIFY_OK, "ok": False}, "'ok' contradicts"),
        ({**VERIFY_OK, "checks": [{"id": "x", "status": "maybe"}]}, "check 1"),
    ]
    for i, (verify, needle) in enumerate(cases):
        results = tmp_path / f"r{i}"
        host(results, "h", verify)
        _one_sentence_exit_2(results, tmp_path / f"o{i}", needle)


def test_oversized_symlinked_and_misnamed_inputs_refused(tmp_path: Path) -> None:
    big = tmp_path / "big"
    d = host(big, "h")
    with (d / "verify.json").open("wb") as fh:
        fh.truncate(8 * 1024 * 1024 + 1)
    _one_sentence_exit_2(big, tmp_path / "o1", "larger than 8 MiB")

    linked = tmp_path / "linked"
    d = host(linked, "h")
    secret = tmp_path / "secret.json"
    secret.write_text(json.dumps(VERIFY_OK))
    os.symlink(secret, d / "verify.json")
    _one_sentence_exit_2(linked, tmp_path / "o2", "is a symlink")

    named = tmp_path / "named"
    host(named, "bad|name", VERIFY_OK)
    _one_sentence_exit_2(named, tmp_path / "o3", "is not an inventory host name")

    _one_sentence_exit_2(tmp_path / "absent", tmp_path / "o4", "is not a directory")
    empty = tmp_path / "empty"
    empty.mkdir()
    _one_sentence_exit_2(empty, tmp_path / "o5", "holds no host results")

    bench = tmp_path / "bench"
    d = host(bench, "h", VERIFY_OK)
    (d / "bench.jsonl").write_text('{"n_prompt": 0}\n')
    _one_sentence_exit_2(bench, tmp_path / "o6", "lacks the llama-bench field")
