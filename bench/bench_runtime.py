"""Runtime benchmark: service vs raw llama-cpp-python, router time, speculative decoding.

    python bench/bench_runtime.py [--config bench/runtime-example.yaml] [--tokens 64]
                                  [--reps 5] [-o results/bench-runtime.json]

1. Generation tokens/s through the HTTP service (openai-compatible /v1/completions,
   speculation off, no prompt-cache reuse) vs raw llama-cpp-python `create_completion` on
   the same GGUF with the same settings (threads, context, batch-invariant kernels), run
   alternately, median of --reps; target >= 0.9x. Raw llama-cpp-python with its default
   kernels is reported too, to show what the batch-invariant settings cost.
2. Router decision time over the golden prompts (target < 1 ms).
3. Speculative decoding per tier: golden prompts answered with speculation forced on and
   off; decode tokens/s ratio and draft acceptance rate.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from synapse_os.runtime.config import load_runtime_config  # noqa: E402
from synapse_os.runtime.engine import llama_kwargs, open_llama  # noqa: E402
from synapse_os.runtime.golden import load_golden  # noqa: E402
from synapse_os.runtime.router import classify_text  # noqa: E402

PROMPT = "Once upon a time, in a small village by the sea, there lived"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(config_path: Path, workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "synapse_os.cli", "runtime", "serve", "--config", str(config_path),
         "--port", str(port), "--provenance", str(workdir / "provenance.ndjson")],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=(workdir / "server.log").open("w"))
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit((workdir / "server.log").read_text())
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit("server did not become ready")


def service_run(url: str, tokens: int) -> tuple[int, float]:
    t0 = time.perf_counter()
    r = httpx.post(f"{url}/v1/completions", timeout=600, json={
        "model": "main", "prompt": PROMPT, "max_tokens": tokens, "temperature": 0,
        "synapse": {"speculative": False, "cache": False}})
    wall = time.perf_counter() - t0
    r.raise_for_status()
    return int(r.json()["usage"]["completion_tokens"]), wall


def raw_run(llm: Any, tokens: int) -> tuple[int, float]:
    llm.reset()
    t0 = time.perf_counter()
    out = llm.create_completion(PROMPT, max_tokens=tokens, temperature=0.0, top_k=1)
    wall = time.perf_counter() - t0
    return int(out["usage"]["completion_tokens"]), wall


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", type=Path, default=REPO / "bench" / "runtime-example.yaml")
    ap.add_argument("--golden", type=Path, default=REPO / "bench" / "golden-prompts.yaml")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--spec-prompts", type=int, default=3, help="golden prompts per tier")
    ap.add_argument("--spec-tokens", type=int, default=48)
    ap.add_argument("--threads", type=int, default=None, help="override the config's threads")
    ap.add_argument("--skip-spec", action="store_true", help="skip the speculative section")
    ap.add_argument("-o", "--output", type=Path, default=None)
    args = ap.parse_args()

    config = load_runtime_config(args.config)
    if args.threads:
        config = config.model_copy(update={"threads": args.threads})
    threads = config.resolved_threads()
    main_cfg = config.models["main"]
    report: dict[str, Any] = {"threads": threads, "model": main_cfg.path,
                              "tokens": args.tokens, "reps": args.reps}

    # -- 2. router ------------------------------------------------------------------
    golden = load_golden(args.golden)
    samples = []
    for _ in range(200):
        for p in golden:
            samples.append(classify_text(p.prompt).elapsed_s)
    samples.sort()
    report["router"] = {"decisions": len(samples),
                        "mean_us": statistics.fmean(samples) * 1e6,
                        "p99_us": samples[int(len(samples) * 0.99)] * 1e6,
                        "max_us": samples[-1] * 1e6}

    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        cfg_path = workdir / "runtime.yaml"
        data = config.model_dump(mode="json")
        data["threads"] = threads
        cfg_path.write_text(yaml.safe_dump(data))
        proc, url = start_server(cfg_path, workdir)
        try:
            # -- 1. service vs raw ----------------------------------------------------
            same = open_llama(llama_kwargs(main_cfg, threads, config.batch, config.seed,
                                           config.batch_invariant), config.batch_invariant)
            default = open_llama(llama_kwargs(main_cfg, threads, config.batch, config.seed,
                                              False), False)
            service_run(url, 8)
            raw_run(same, 8)
            raw_run(default, 8)
            rates: dict[str, list[float]] = {"service": [], "raw_same_settings": [],
                                             "raw_default_kernels": []}
            for _ in range(args.reps):
                n, t = service_run(url, args.tokens)
                rates["service"].append(n / t)
                n, t = raw_run(same, args.tokens)
                rates["raw_same_settings"].append(n / t)
                n, t = raw_run(default, args.tokens)
                rates["raw_default_kernels"].append(n / t)
            same.close()
            default.close()
            med = {k: statistics.median(v) for k, v in rates.items()}
            report["throughput_tok_s"] = {k: {"median": med[k], "samples": v}
                                          for k, v in rates.items()}
            report["service_vs_raw"] = med["service"] / med["raw_same_settings"]
            report["service_vs_raw_default_kernels"] = med["service"] / med["raw_default_kernels"]

            # -- 3. speculative per tier -----------------------------------------------------
            spec: dict[str, Any] = {}
            for tier in () if args.skip_spec else ("trivial", "moderate", "high"):
                prompts = [p for p in golden if p.tier == tier][: args.spec_prompts]
                speed = {True: [], False: []}  # type: dict[bool, list[float]]
                proposed = accepted = 0
                for p in prompts:
                    for on in (True, False):
                        r = httpx.post(f"{url}/v1/chat/completions", timeout=600, json={
                            "model": "auto", "max_tokens": args.spec_tokens, "temperature": 0,
                            "messages": [{"role": "user", "content": p.prompt}],
                            "synapse": {"speculative": on, "cache": False}}).json()
                        ext = r["synapse"]
                        decode_s = (ext["latency_ms"] - ext["ttft_ms"]) / 1000
                        if r["usage"]["completion_tokens"] > 1 and decode_s > 0:
                            speed[on].append((r["usage"]["completion_tokens"] - 1) / decode_s)
                        if on:
                            proposed += ext["speculative"]["proposed"]
                            accepted += ext["speculative"]["accepted"]
                spec[tier] = {
                    "decode_tok_s_spec": statistics.median(speed[True]) if speed[True] else None,
                    "decode_tok_s_plain": statistics.median(speed[False]) if speed[False] else None,
                    "proposed": proposed, "accepted": accepted,
                    "acceptance": accepted / proposed if proposed else None,
                }
                if speed[True] and speed[False]:
                    spec[tier]["speedup"] = (statistics.median(speed[True])
                                             / statistics.median(speed[False]))
            report["speculative"] = spec
        finally:
            proc.terminate()
            proc.wait(timeout=30)

    r = report
    print(f"threads={threads} model={Path(main_cfg.path).name} tokens={args.tokens} "
          f"reps={args.reps}")
    for k, v in r["throughput_tok_s"].items():
        print(f"  {k:22s} {v['median']:7.1f} tok/s (median of {len(v['samples'])})")
    print(f"  service / raw (same settings)    = {r['service_vs_raw']:.3f}x (target >= 0.9)")
    print(f"  service / raw (default kernels)  = {r['service_vs_raw_default_kernels']:.3f}x")
    print(f"router: mean {r['router']['mean_us']:.1f} us, p99 {r['router']['p99_us']:.1f} us, "
          f"max {r['router']['max_us']:.1f} us over {r['router']['decisions']} decisions "
          "(target < 1000 us)")
    for tier, s in r["speculative"].items():
        acc = f"{s['acceptance']:.0%}" if s["acceptance"] is not None else "-"
        sp = f"{s['speedup']:.2f}x" if "speedup" in s else "-"
        print(f"speculative {tier:8s}: speedup {sp}, acceptance {acc} "
              f"({s['accepted']}/{s['proposed']})")
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
