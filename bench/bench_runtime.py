"""Runtime benchmark: service vs raw llama-cpp-python, router time, speculative decoding,
sampling cost, and many users at once (optionally side by side with llama-server).

    python bench/bench_runtime.py [--config bench/runtime-example.yaml] [--tokens 64]
                                  [--reps 5] [-o results/bench-runtime.json]
                                  [--concurrency 1,4,8] [--against llama-server]
                                  [--only concurrency,sampling,lookup]

1. Generation tokens/s through the HTTP service (openai-compatible /v1/completions,
   speculation off, no prompt-cache reuse) vs raw llama-cpp-python `create_completion` on
   the same GGUF with the same settings (threads, context, batch-invariant kernels), run
   alternately, median of --reps; target >= 0.9x. Raw llama-cpp-python with its default
   kernels is reported too, to show what the batch-invariant settings cost.
2. Router decision time over the golden prompts (target < 1 ms).
3. Speculative decoding per tier: golden prompts answered with speculation forced on and
   off; decode tokens/s ratio and draft acceptance rate.
4. Sampling cost: single-stream tokens/s at temperature 0.7 (top_p 0.95, top_k 40) against
   temperature 0, through the service (target: within 5 %).
5. Concurrency: at each level N, N streaming clients each send 8 different prompts in
   turn (greedy, --tokens answers); aggregate tokens/s over the wall time, TTFT and
   latency p50/p95. With --against llama-server, llama.cpp's own server (built once from
   the llama.cpp source vendored in the llama-cpp-python sdist, cached by source hash)
   serves the same model with the same threads and `-np` = the runtime's `parallel`,
   built with the CPU flags of this host's llama-cpp-python. The two servers take turns,
   --pairs times per level; the table gives the median of the pairs' Synapse /
   llama-server ratios.
6. Prompt lookup (speculation without a draft model, while batching): a server with
   `speculative.lookup` on serves N clients (each level of --concurrency) two workloads,
   passages to repeat ("quote", where the answer repeats the prompt) and the chat prompts
   below ("chat"), with speculation forced on and then off; aggregate tokens/s ratio and
   how many proposed tokens were accepted.
7. KV cache layout (--only layout): raw decode tokens/s for 4 busy slots of 8 on
   consecutive and on scattered sequence ids, and for all 8, in a unified cache (what the
   batcher uses by default) and in per-sequence caches (what batch invariance needs).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import shlex
import shutil
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

from synapse_os.profile.model import LlamaSettings  # noqa: E402
from synapse_os.runtime.config import load_runtime_config  # noqa: E402
from synapse_os.runtime.engine import llama_kwargs, open_llama  # noqa: E402
from synapse_os.runtime.golden import load_golden  # noqa: E402
from synapse_os.runtime.router import classify_text  # noqa: E402

PROMPT = "Once upon a time, in a small village by the sea, there lived"
CHAT_PROMPTS = [
    "Write a short story about a lighthouse keeper.",
    "Explain how a bicycle stays upright.",
    "Describe the water cycle to a child.",
    "List some ideas for a rainy afternoon.",
    "What makes bread rise? Explain briefly.",
    "Tell me about the history of the printing press.",
    "Give advice for someone learning to cook.",
    "Describe a walk through a forest in autumn.",
]
SERVER_FLAGS = ("-DCMAKE_BUILD_TYPE=Release", "-DBUILD_SHARED_LIBS=OFF",
                "-DLLAMA_CURL=OFF", "-DLLAMA_OPENSSL=OFF", "-DLLAMA_BUILD_TESTS=OFF",
                "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_TOOLS=ON",
                "-DLLAMA_BUILD_SERVER=ON")


def server_flags() -> tuple[str, ...]:
    """SERVER_FLAGS plus the CPU choice scripts/setup.sh made for this host's
    llama-cpp-python (portable AVX2 on an AVX-512 host), so both engines run the same
    kernels and the comparison measures the servers, not the instruction sets."""
    from synapse_os.image.runtime import host_llama_cmake_args

    return (*SERVER_FLAGS, *shlex.split(host_llama_cmake_args() or "-DGGML_NATIVE=ON"))


def llama_server_binary(explicit: str | None) -> Path:
    """--llama-server PATH, `llama-server` on $PATH, or a build from the sdist's llama.cpp
    (cached under the synapse cache by source hash, flags, compiler and CPU)."""
    if explicit:
        return Path(explicit)
    found = shutil.which("llama-server")
    if found:
        return Path(found)
    from synapse_os import proc
    from synapse_os.bench import build

    source = build.resolve_source(None)
    flags = server_flags()
    key = build.build_key(source, flags)
    target = build.cache_root() / "llama-server" / key / "llama-server"
    if target.is_file():
        return target
    work = target.parent.with_name(f".{key}.tmp-{os.getpid()}")
    shutil.rmtree(work, ignore_errors=True)
    print(f"building llama-server from {source.origin} (once; cached as {target})",
          file=sys.stderr)
    try:
        proc.run(["cmake", "-S", str(source.tree), "-B", str(work), *flags],
                 timeout=600)
        proc.run(["cmake", "--build", str(work), "--target", "llama-server", "-j",
                  str(os.cpu_count() or 1)], timeout=7200)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(work / "bin" / "llama-server", target.with_suffix(".tmp"))
        os.replace(target.with_suffix(".tmp"), target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target


def start_llama_server(binary: Path, model: str, threads: int, parallel: int, context: int,
                       workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen(
        [str(binary), "-m", model, "-t", str(threads), "-tb", str(threads),
         "-np", str(parallel), "-c", str(context * parallel), "--host", "127.0.0.1",
         "--port", str(port), "--no-webui"],
        stdout=subprocess.DEVNULL, stderr=(workdir / "llama-server.log").open("w"))
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit((workdir / "llama-server.log").read_text()[-3000:])
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit("llama-server did not become ready")


def stream_once(client: httpx.Client, url: str, model: str, prompt: str, tokens: int,
                extra: dict[str, Any]) -> tuple[int, float, float]:
    """One streaming chat request: (tokens, ttft s, latency s)."""
    body = {"model": model, "max_tokens": tokens, "temperature": 0, "stream": True,
            "messages": [{"role": "user", "content": prompt}], **extra}
    t0 = time.perf_counter()
    ttft = None
    n = 0
    usage = None
    with client.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=600) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                usage = chunk["usage"]
            for choice in chunk.get("choices") or []:
                if (choice.get("delta") or {}).get("content"):
                    n += 1
                    if ttft is None:
                        ttft = time.perf_counter() - t0
    latency = time.perf_counter() - t0
    if usage and usage.get("completion_tokens"):
        n = int(usage["completion_tokens"])
    return n, ttft if ttft is not None else latency, latency


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def concurrency_run(url: str, model: str, level: int, tokens: int,
                    extra: dict[str, Any], rounds: int = len(CHAT_PROMPTS),
                    prompts: list[str] = CHAT_PROMPTS) -> dict[str, Any]:
    """`level` clients, each sending `rounds` of the prompts in turn (rotated per client)."""
    def client_work(c: int) -> list[tuple[int, float, float]]:
        out = []
        for i in range(rounds):
            prompt = prompts[(c + i) % len(prompts)]
            # A connection per request: llama-server's HTTP library closes a kept-alive
            # connection after 5 requests without telling the client.
            with httpx.Client() as client:
                out.append(stream_once(client, url, model, prompt, tokens, extra))
        return out

    t0 = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(level) as pool:
        results = [r for rs in pool.map(client_work, range(level)) for r in rs]
    wall = time.perf_counter() - t0
    tokens = sum(r[0] for r in results)
    return {"concurrency": level, "requests": len(results), "tokens": tokens, "wall_s": wall,
            "agg_tok_s": tokens / wall,
            "ttfts_s": [r[1] for r in results], "latencies_s": [r[2] for r in results]}


def pooled(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Runs of one level on one server: median aggregate tokens/s, percentiles over every
    request of every run."""
    ttfts = [t for r in runs for t in r["ttfts_s"]]
    lats = [t for r in runs for t in r["latencies_s"]]
    return {"concurrency": runs[0]["concurrency"], "runs": len(runs),
            "requests": sum(r["requests"] for r in runs),
            "agg_tok_s": statistics.median(r["agg_tok_s"] for r in runs),
            "agg_tok_s_runs": [r["agg_tok_s"] for r in runs],
            "ttft_p50_s": pct(ttfts, 0.5), "ttft_p95_s": pct(ttfts, 0.95),
            "latency_p50_s": pct(lats, 0.5), "latency_p95_s": pct(lats, 0.95)}


def sampling_run(url: str, tokens: int, reps: int) -> dict[str, Any]:
    """Single-stream tokens/s at temperature 0 and 0.7 (alternating), decode only."""
    rates: dict[str, list[float]] = {"t0": [], "t0.7": []}
    for _ in range(reps):
        for name, body in (("t0", {"temperature": 0}),
                           ("t0.7", {"temperature": 0.7, "top_p": 0.95, "top_k": 40,
                                     "seed": 7})):
            r = httpx.post(f"{url}/v1/completions", timeout=600, json={
                "model": "main", "prompt": PROMPT, "max_tokens": tokens,
                "synapse": {"speculative": False, "cache": False}, **body}).json()
            ext = r["synapse"]
            n = r["usage"]["completion_tokens"]
            decode_s = (ext["latency_ms"] - ext["ttft_ms"]) / 1000
            if n > 1 and decode_s > 0:
                rates[name].append((n - 1) / decode_s)
    med = {k: statistics.median(v) for k, v in rates.items() if v}
    return {"decode_tok_s": med, "samples": rates,
            "ratio_t0.7_vs_t0": med["t0.7"] / med["t0"] if len(med) == 2 else None}


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


SECTIONS = ("throughput", "router", "speculative", "sampling", "concurrency", "lookup",
            "layout")
LAYOUT_SLOTS = ([0, 1, 2, 3], [0, 2, 4, 6], list(range(8)))
PASSAGES = [
    "The committee met on Tuesday to review the budget for the new library, the park "
    "renovation and the bus routes that serve the northern district.",
    "To reset the router, hold the button on its back for ten seconds, wait until the light "
    "turns green, then connect again with the password printed on the label.",
    "Add two cups of flour, one teaspoon of salt and a spoon of yeast to warm water, knead "
    "for ten minutes and leave the dough to rise for an hour.",
    "The train to the coast leaves at nine from platform four and stops at every station "
    "until the river, where passengers change for the ferry.",
]


def lookup_section(config: Any, threads: int, levels: list[int], args: argparse.Namespace,
                   workdir: Path) -> dict[str, Any]:
    """6. prompt lookup forced on and off, per workload and concurrency level."""
    data = config.model_dump(mode="json")
    data.update(threads=threads, models={"main": data["models"]["main"]},
                speculative={"enabled": False, "lookup": True,
                             "draft_tokens": config.speculative.draft_tokens})
    data["provenance"]["fsync_interval_s"] = 0  # read back between runs
    cfg_path = workdir / "runtime-lookup.yaml"
    cfg_path.write_text(yaml.safe_dump(data))
    provenance = workdir / "provenance.ndjson"
    proc, url = start_server(cfg_path, workdir)
    quote = [f"Repeat this text exactly, word for word:\n{p}" for p in PASSAGES]
    out: dict[str, Any] = {}
    try:
        concurrency_run(url, "main", 1, 8, {"synapse": {"speculative": False}}, 1)
        for name, prompts in (("quote", quote), ("chat", CHAT_PROMPTS)):
            for n in levels:
                row: dict[str, Any] = {}
                for on in (True, False):
                    seen = len(provenance.read_text().splitlines())
                    res = pooled([concurrency_run(
                        url, "main", n, args.tokens,
                        {"synapse": {"speculative": on, "cache": False}}, len(prompts),
                        prompts)])
                    recs = [json.loads(x)["speculative"]
                            for x in provenance.read_text().splitlines()[seen:]]
                    res["proposed"] = sum(r["proposed"] for r in recs)
                    res["accepted"] = sum(r["accepted"] for r in recs)
                    row["lookup" if on else "plain"] = res
                row["ratio"] = row["lookup"]["agg_tok_s"] / row["plain"]["agg_tok_s"]
                out.setdefault(name, []).append({"concurrency": n, **row})
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    return out


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
    ap.add_argument("--only", default=",".join(SECTIONS),
                    help=f"comma-separated sections to run ({', '.join(SECTIONS)})")
    ap.add_argument("--concurrency", default="1,4,8", help="client counts for section 5")
    ap.add_argument("--pairs", type=int, default=3,
                    help="section 5 with --against: alternating runs of each server per level")
    ap.add_argument("--rounds", type=int, default=len(CHAT_PROMPTS),
                    help="requests each client sends in section 5")
    ap.add_argument("--parallel", type=int, default=None, help="override the config's parallel")
    ap.add_argument("--against", choices=["llama-server"], default=None)
    ap.add_argument("--llama-server", default=None, help="llama-server binary to use")
    ap.add_argument("-o", "--output", type=Path, default=None)
    args = ap.parse_args()
    only = set(args.only.split(","))
    if args.skip_spec:
        only.discard("speculative")
    unknown = only - set(SECTIONS)
    if unknown:
        raise SystemExit(f"--only: unknown sections {sorted(unknown)}; use {', '.join(SECTIONS)}")
    levels = [int(x) for x in args.concurrency.split(",") if x]

    config = load_runtime_config(args.config)
    if args.threads:
        config = config.model_copy(update={"threads": args.threads})
    if args.parallel:
        config = config.model_copy(update={"parallel": args.parallel})
    threads = config.resolved_threads()
    main_cfg = config.models["main"]
    report: dict[str, Any] = {"threads": threads, "model": main_cfg.path,
                              "tokens": args.tokens, "reps": args.reps,
                              "parallel": config.parallel}
    server_binary = llama_server_binary(args.llama_server) if args.against else None

    # -- 2. router ------------------------------------------------------------------
    golden = load_golden(args.golden)
    if "router" in only:
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
            if "throughput" in only:
                throughput_section(report, url, config, main_cfg, threads, args)
            if "speculative" in only:
                report["speculative"] = speculative_section(url, golden, args)
            if "sampling" in only:
                report["sampling"] = sampling_run(url, args.tokens, args.reps)
            if "concurrency" in only:
                report["concurrency"] = concurrency_section(
                    url, server_binary, main_cfg, threads, config.parallel, levels, args,
                    workdir)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
        if "lookup" in only:
            report["lookup"] = lookup_section(config, threads, levels, args, workdir)
    if "layout" in only:
        report["layout_tok_s"] = layout_section(config, main_cfg, threads, args)

    print_report(report)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(report, indent=2) + "\n")


def concurrency_section(url: str, server_binary: Path | None, main_cfg: Any, threads: int,
                        parallel: int, levels: list[int], args: argparse.Namespace,
                        workdir: Path) -> dict[str, Any]:
    """5. At each level Synapse and (with --against) llama-server take turns, --pairs
    times, so both see the same machine load; a ratio is the median of the pairs' ratios
    (this machine is shared: one pair alone swings by 10 %)."""
    ours = {"synapse": {"speculative": False}}
    out: dict[str, Any] = {"synapse": []}
    lproc = None
    try:
        if server_binary is not None:
            lproc, lurl = start_llama_server(server_binary, main_cfg.path, threads, parallel,
                                             main_cfg.context, workdir)
            out.update({"llama-server": [], "llama_server_binary": str(server_binary),
                        "llama_server_cmake": list(server_flags()), "ratios": []})
            concurrency_run(lurl, "main", 1, 8, {}, 1)  # warm-up
        concurrency_run(url, "main", 1, 8, ours, 1)
        for n in levels:
            mine, theirs = [], []
            for _ in range(args.pairs if lproc is not None else 1):
                mine.append(concurrency_run(url, "main", n, args.tokens, ours, args.rounds))
                if lproc is not None:
                    theirs.append(concurrency_run(lurl, "main", n, args.tokens, {},
                                                  args.rounds))
            out["synapse"].append(pooled(mine))
            if lproc is not None:
                out["llama-server"].append(pooled(theirs))
                out["ratios"].append({
                    "concurrency": n,
                    "agg": statistics.median(a["agg_tok_s"] / b["agg_tok_s"]
                                             for a, b in zip(mine, theirs, strict=True)),
                    "ttft_p95": statistics.median(
                        pct(a["ttfts_s"], 0.95) / pct(b["ttfts_s"], 0.95)
                        for a, b in zip(mine, theirs, strict=True))})
    finally:
        if lproc is not None:
            lproc.terminate()
            lproc.wait(timeout=30)
    return out


def layout_section(config: Any, main_cfg: Any, threads: int,
                   args: argparse.Namespace) -> dict[str, Any]:
    """7. Why the batcher's KV cache is unified: the runtime's own Batcher contexts (8
    slots, the runtime's settings), unified and per-sequence (as under batch invariance,
    which decodes only consecutive sequence ids together); raw decode steps of one token
    per busy slot, per set of busy slots; alternated, median of --reps."""
    import llama_cpp

    from synapse_os.runtime.batching import Batcher
    from synapse_os.runtime.engine import MAX_INVARIANT_BATCH, load_model

    model = load_model("main", main_cfg, threads, config.batch, config.seed,
                       config.llama_settings)
    prompt = model.tokenize(PROMPT)
    batchers = {name: Batcher(model, 8, main_cfg.context, config.batch, lambda job: None,
                              max_rows)
                for name, max_rows in (("unified", None),
                                       ("per-sequence", MAX_INVARIANT_BATCH))}
    for b in batchers.values():
        for seq in range(8):
            b._fill([(t, i, seq, False) for i, t in enumerate(prompt)])
            b._decode()
    rates: dict[str, list[float]] = {}
    for _ in range(args.reps):
        for slots in LAYOUT_SLOTS:
            for name, b in batchers.items():
                t0 = time.perf_counter()
                for k in range(args.tokens):
                    b._fill([(prompt[-1], len(prompt) + k, seq, True) for seq in slots])
                    b._decode()
                rates.setdefault(f"{name} {slots}", []).append(
                    args.tokens * len(slots) / (time.perf_counter() - t0))
                for seq in slots:
                    llama_cpp.llama_memory_seq_rm(b.mem, seq, len(prompt), -1)
    for b in batchers.values():
        b.close()
    model.close()
    return {name: statistics.median(v) for name, v in rates.items()}


def throughput_section(report: dict[str, Any], url: str, config: Any, main_cfg: Any,
                       threads: int, args: argparse.Namespace) -> None:
    """1. service vs raw llama-cpp-python (same settings, and default kernels)."""
    settings = config.llama_settings
    same = open_llama(llama_kwargs(main_cfg, threads, config.batch, config.seed, settings),
                      settings.repack)
    # llama-cpp-python's own defaults: no flash attention, f16 cache, repacking
    plain = LlamaSettings(flash_attention=False, kv_cache_type="f16", repack=True,
                          batch_invariant=False)
    default = open_llama(llama_kwargs(main_cfg, threads, config.batch, config.seed, plain),
                         plain.repack)
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


def speculative_section(url: str, golden: Any, args: argparse.Namespace) -> dict[str, Any]:
    """3. speculative per tier (forced on/off)."""
    spec: dict[str, Any] = {}
    for tier in ("trivial", "moderate", "high"):
        prompts = [p for p in golden if p.tier == tier][: args.spec_prompts]
        speed: dict[bool, list[float]] = {True: [], False: []}
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
    return spec


def print_report(r: dict[str, Any]) -> None:
    print(f"threads={r['threads']} model={Path(r['model']).name} tokens={r['tokens']} "
          f"reps={r['reps']} parallel={r['parallel']}")
    if "throughput_tok_s" in r:
        for k, v in r["throughput_tok_s"].items():
            print(f"  {k:22s} {v['median']:7.1f} tok/s (median of {len(v['samples'])})")
        print(f"  service / raw (same settings)    = {r['service_vs_raw']:.3f}x (target >= 0.9)")
        print(f"  service / raw (default kernels)  = {r['service_vs_raw_default_kernels']:.3f}x")
    if "router" in r:
        print(f"router: mean {r['router']['mean_us']:.1f} us, p99 {r['router']['p99_us']:.1f} "
              f"us, max {r['router']['max_us']:.1f} us over {r['router']['decisions']} "
              "decisions (target < 1000 us)")
    for tier, s in r.get("speculative", {}).items():
        acc = f"{s['acceptance']:.0%}" if s["acceptance"] is not None else "-"
        sp = f"{s['speedup']:.2f}x" if "speedup" in s else "-"
        print(f"speculative {tier:8s}: speedup {sp}, acceptance {acc} "
              f"({s['accepted']}/{s['proposed']})")
    if "sampling" in r:
        s = r["sampling"]
        med = s["decode_tok_s"]
        ratio = s["ratio_t0.7_vs_t0"]
        print(f"sampling: decode {med.get('t0', 0):.1f} tok/s at T=0, {med.get('t0.7', 0):.1f} "
              f"at T=0.7 -> {ratio:.3f}x (target >= 0.95)" if ratio else "sampling: -")
    if "concurrency" in r:
        ours = r["concurrency"]["synapse"]
        theirs = r["concurrency"].get("llama-server")
        print("concurrency | synapse agg tok/s | TTFT p50 | TTFT p95 | lat p50 | lat p95"
              + (" | llama-server agg tok/s | TTFT p50 | TTFT p95 | agg ratio | TTFT p95 ratio"
                 if theirs else ""))
        for i, a in enumerate(ours):
            line = (f"{a['concurrency']:11d} | {a['agg_tok_s']:17.1f} | {a['ttft_p50_s']:7.3f}s"
                    f" | {a['ttft_p95_s']:7.3f}s | {a['latency_p50_s']:6.2f}s"
                    f" | {a['latency_p95_s']:6.2f}s")
            if theirs:
                b, ratio = theirs[i], r["concurrency"]["ratios"][i]
                line += (f" | {b['agg_tok_s']:22.1f} | {b['ttft_p50_s']:7.3f}s"
                         f" | {b['ttft_p95_s']:7.3f}s | {ratio['agg']:8.2f}x"
                         f" | {ratio['ttft_p95']:13.2f}x")
            print(line)
        if theirs:
            print(f"(medians of {theirs[0]['runs']} alternating runs; ratios: median of the "
                  "pairs' ratios)")
    if "layout_tok_s" in r:
        print("decode tokens/s by busy slots (of 8) and KV cache layout:")
        for name, rate in r["layout_tok_s"].items():
            print(f"  {name:40s} {rate:6.1f}")
    if "lookup" in r:
        print("prompt lookup | clients | agg tok/s on | off | ratio | accepted/proposed")
        for name, rows in r["lookup"].items():
            for row in rows:
                on, off = row["lookup"], row["plain"]
                print(f"{name:13s} | {row['concurrency']:7d} | {on['agg_tok_s']:12.1f} | "
                      f"{off['agg_tok_s']:5.1f} | {row['ratio']:5.2f}x | "
                      f"{on['accepted']}/{on['proposed']}")


if __name__ == "__main__":
    main()
