"""`synapse bench`: run, compare, report, llama-bench."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click
from rich.console import Console

from synapse_os.cli import emit_json
from synapse_os.errors import UserError

if TYPE_CHECKING:
    from synapse_os.bench.build import LlamaBench
    from synapse_os.bench.compare import Result
    from synapse_os.bench.records import Record


def _threads(value: str | None) -> tuple[int, ...]:
    if not value:
        return ()
    try:
        counts = tuple(int(part) for part in value.split(","))
    except ValueError:
        raise UserError(f"--threads {value!r} is not a comma-separated list of counts; pass "
                        "e.g. 1,2") from None
    return counts


def _pg(value: str) -> tuple[int, int] | None:
    if value.lower() in ("off", "none", "0"):
        return None
    parts = value.split(",")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise UserError(f"--pg {value!r} is not PROMPT,GEN (e.g. 512,128) or 'off'")
    return int(parts[0]), int(parts[1])


def _console() -> Console:

    return Console(stderr=True)


@click.group()
def group() -> None:
    """Measure llama.cpp speed with provenance and compare it against a baseline."""


@group.command("run")
@click.option("--label", required=True, help="Name of the system measured, e.g. ubuntu-stock.")
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True,
              help="NDJSON record file to write (one record per test).")
@click.option("--model", type=click.Path(path_type=Path),
              help="GGUF model (default: the small gemma3 270M model, sha256 checked).")
@click.option("--llama-bench", "llama_bench", type=click.Path(path_type=Path),
              help="llama-bench executable (default: $PATH, then the cached build).")
@click.option("-p", "--n-prompt", default=512, show_default=True,
              help="Prompt-processing test size (0: skip).")
@click.option("-n", "--n-gen", default=128, show_default=True,
              help="Generation test size (0: skip).")
@click.option("--pg", default="512,128", show_default=True,
              help="Combined prompt+generation test PROMPT,GEN, or 'off'.")
@click.option("-r", "--repetitions", default=10, show_default=True)
@click.option("--max-repetitions", default=30, show_default=True,
              help="Upper bound on samples per test when noise (CV) asks for more.")
@click.option("--threads", help="Comma-separated thread counts (default: physical and logical "
              "core counts).")
@click.option("--cv-threshold", default=0.03, show_default=True,
              help="Add repetitions while the coefficient of variation is at or above this.")
@click.option("--bandwidth-mib", type=int, help="Array size of the bandwidth probe "
              "(default: 16x last-level cache, at least 256 MiB).")
@click.option("--profile", "profile_path", type=click.Path(path_type=Path),
              help="Record the live value of every setting of this profile (its checks, as "
              "`synapse verify` runs them) with the results.")
@click.option("--json", "as_json", is_flag=True, help="Print the records as JSON.")
def run_cmd(label: str, output: Path, model: Path | None, llama_bench: Path | None,
            n_prompt: int, n_gen: int, pg: str, repetitions: int, max_repetitions: int,
            threads: str | None, cv_threshold: float, bandwidth_mib: int | None,
            profile_path: Path | None, as_json: bool) -> None:
    """Run llama-bench (pp, tg, pp+tg; thread sweep) and the bandwidth probe; write records."""
    from synapse_os.bench import records, runner
    from synapse_os.profile import load_profile

    if bandwidth_mib is not None and bandwidth_mib < 1:
        raise UserError(f"--bandwidth-mib {bandwidth_mib} is below 1; pass a size in MiB")
    settings = runner.RunSettings(
        label=label, model=model, llama_bench=llama_bench, n_prompt=n_prompt, n_gen=n_gen,
        pg=_pg(pg), repetitions=repetitions, max_repetitions=max_repetitions,
        threads=_threads(threads), cv_threshold=cv_threshold,
        bandwidth_bytes=bandwidth_mib * 1024 * 1024 if bandwidth_mib else None,
        profile=load_profile(profile_path) if profile_path is not None else None)
    with _console().status("synapse bench run") as status:
        results = runner.run(settings, progress=lambda msg: status.update(msg))
    records.write(output, results)
    if as_json:
        emit_json(results)
        return
    first = results[0]["synapse"]
    click.echo(f"{label}: {len(results)} tests written to {output}; read bandwidth "
               f"{first['bandwidth']['read_gbps']:.2f} GB/s")
    if first["live"] is not None:
        statuses = [c["status"] for c in first["live"]["checks"].values()]
        click.echo(f"  {first['live']['profile']}'s settings live: "
                   + ", ".join(f"{statuses.count(s)} {s}" for s in ("pass", "fail", "unknown")))
    for rec in results:
        s = rec["synapse"]
        roof = f", roofline {s['roofline']['fraction']:.1%}" if s["roofline"] else ""
        click.echo(f"  {s['test']:>16} @ {rec['n_threads']} threads: {s['median_ts']:9.2f} t/s "
                   f"(median of {s['repetitions']}, CV {s['cv']:.1%}{roof})")


def _load_pair(baseline: Path, candidate: Path, allow_model_mismatch: bool,
               allow_build_mismatch: bool) -> tuple[list[Record], list[Record], Result]:
    from synapse_os.bench import compare, records

    base = records.load(baseline)
    cand = records.load(candidate)
    result = compare.compare(base, cand, allow_model_mismatch=allow_model_mismatch,
                             allow_build_mismatch=allow_build_mismatch)
    return base, cand, result


_allow_model = click.option("--allow-model-mismatch", is_flag=True,
                            help="Compare records of different models (sha256).")
_allow_build = click.option("--allow-build-mismatch", is_flag=True,
                            help="Compare records of different llama.cpp builds.")


@group.command("compare")
@click.argument("baseline", type=click.Path(path_type=Path))
@click.argument("candidate", type=click.Path(path_type=Path))
@_allow_model
@_allow_build
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def compare_cmd(baseline: Path, candidate: Path, allow_model_mismatch: bool,
                allow_build_mismatch: bool, as_json: bool) -> None:
    """Per-test ratio CANDIDATE/BASELINE with 95% CI, Mann-Whitney p and a verdict."""
    from rich.table import Table

    from synapse_os.bench.compare import gbps_text, table_rows

    _, _, result = _load_pair(baseline, candidate, allow_model_mismatch, allow_build_mismatch)
    if as_json:
        emit_json(result.as_dict())
        return
    rows = table_rows(result)
    table = Table(title=f"{result.candidate_label} vs {result.baseline_label}")
    for header in rows[0]:
        table.add_column(header, justify="left" if header in ("test", "verdict") else "right")
    for row in rows[1:]:
        table.add_row(*row)
    console = Console(width=160)
    console.print(table)
    console.print(f"geometric mean ratio: {result.geomean_ratio:.3f} "
                  f"({result.geomean_ratio - 1:+.1%}); read bandwidth "
                  f"{gbps_text(result.baseline_bandwidth)} -> "
                  f"{gbps_text(result.candidate_bandwidth)}")
    for warning in result.warnings:
        console.print(f"warning: {warning}")
    if result.only_baseline or result.only_candidate:
        console.print("not compared (in one file only): "
                      + ", ".join(result.only_baseline + result.only_candidate))


@group.command("ab")
@click.argument("profiles", nargs=-1, type=click.Path(path_type=Path))
@click.option("--boot-entries", metavar="A,B", help="On a tuned machine itself: compare two of "
              "its boot entries, e.g. stock,tuned (stock: the distribution's kernel with "
              "none of PROFILE's settings), rebooting between them; PROFILE is the machine's.")
@click.option("--no-reboot", is_flag=True, help="--boot-entries: plan and set the first "
              "one-shot entry, but leave the reboot to you.")
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True,
              help="New directory for RESULTS.md, plots, records/ and ab.json.")
@click.option("--image-a", type=click.Path(path_type=Path),
              help="The baseline's test image (default: build it from BASELINE).")
@click.option("--image-b", type=click.Path(path_type=Path),
              help="The candidate's test image (default: build it from CANDIDATE).")
@click.option("-p", "n_prompt", type=int, default=64, show_default=True,
              help="Prompt tokens (pp test; 0: none).")
@click.option("-n", "n_gen", type=int, default=16, show_default=True,
              help="Generated tokens (tg test; 0: none).")
@click.option("-r", "repetitions", type=int, default=3, show_default=True,
              help="llama-bench repetitions per round.")
@click.option("--rounds", type=int, default=4, show_default=True,
              help="Rounds, each running both arms (ABBA order); at least 2.")
@click.option("--no-warmup", is_flag=True,
              help="Skip llama-bench's warm-up run before each test (tiny TCG runs).")
@click.option("--threads", type=int, help="llama-bench threads (default: every vCPU; with "
              "--boot-entries, one per CPU it runs on: the inference CPUs where the profile "
              "partitions).")
@click.option("--cpus", type=int, default=2, show_default=True, help="vCPUs per guest.")
@click.option("--memory", "memory_mb", type=int, default=2048, show_default=True,
              help="Guest RAM in MiB.")
@click.option("--model", type=click.Path(path_type=Path),
              help="GGUF model (default: the small test model).")
@click.option("--llama-bench", "llama_bench", type=click.Path(path_type=Path),
              help="llama-bench to carry into the guests (default: the cached build: native "
              "under KVM, portable under TCG; built when absent).")
@click.option("--host-cpus", help="KVM: run both guests on these host CPUs (e.g. 2-5).")
@click.option("--hugepages", is_flag=True, help="KVM: back guest RAM with hugetlbfs pages.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def ab_cmd(profiles: tuple[Path, ...], boot_entries: str | None, no_reboot: bool,
           output: Path, image_a: Path | None,
           image_b: Path | None, n_prompt: int, n_gen: int, repetitions: int, rounds: int,
           no_warmup: bool, threads: int | None, cpus: int, memory_mb: int, model: Path | None,
           llama_bench: Path | None, host_cpus: str | None, hugepages: bool,
           as_json: bool) -> None:
    """Compare two systems with llama-bench: BASELINE's and CANDIDATE's images booted in
    QEMU, or (--boot-entries A,B PROFILE) two boot entries of this machine, rebooting."""
    from synapse_os.profile import load_profile

    if boot_entries is not None:
        if len(profiles) != 1:
            raise UserError("--boot-entries takes one profile, the machine's own "
                            f"({len(profiles)} given)")
        from synapse_os.bench import bootab, build
        from synapse_os.bench.runner import model_info

        boot_settings = bootab.BootSettings(n_prompt=n_prompt, n_gen=n_gen,
                                            repetitions=repetitions, rounds=rounds,
                                            warmup=not no_warmup, threads=threads)
        bootab.check_request(boot_entries, boot_settings, output.absolute())
        profile = load_profile(profiles[0])
        model_path, model_record = model_info(model)
        bench = build.locate(llama_bench)
        plan = bootab.start(profile, boot_entries, output, boot_settings, bench.path,
                            model_path, model_record,
                            {"path": str(bench.path), **bench.build_info}, reboot=not no_reboot)
        if as_json:
            emit_json(plan)
            return
        _console().print(f"boot A/B of {plan['entries']['A']} (A) and {plan['entries']['B']} "
                         f"(B): {len(plan['order'])} boots, {' '.join(plan['order'])}; results "
                         f"in {plan['output']}" + ("; reboot to start" if no_reboot else ""))
        return
    if len(profiles) != 2:
        raise UserError(f"bench ab takes BASELINE and CANDIDATE profiles ({len(profiles)} given), "
                        "or one profile with --boot-entries")
    from synapse_os.bench.ab import AbSettings, Arm, run_ab

    baseline, candidate = profiles
    arms = (Arm("A", load_profile(baseline), baseline.parent, image_a),
            Arm("B", load_profile(candidate), candidate.parent, image_b))
    settings = AbSettings(n_prompt=n_prompt, n_gen=n_gen, repetitions=repetitions,
                          rounds=rounds, warmup=not no_warmup, threads=threads, cpus=cpus,
                          memory_mb=memory_mb,
                          model=model, llama_bench=llama_bench, host_cpus=host_cpus,
                          hugepages=hugepages)
    console = _console()
    summary = run_ab(arms, settings, output,
                     progress=(lambda _m: None) if as_json else console.print)
    if as_json:
        emit_json(summary)
        return
    for name, result in summary["interleaved"].items():
        whole = result["whole"]
        console.print(f"{name}: {summary['candidate']} / {summary['baseline']} = "
                      f"{whole['ratio']:.3f} [{whole['ci_low']:.3f}, {whole['ci_high']:.3f}], "
                      f"{result['verdict']}")
    console.print(f"wrote {output / 'RESULTS.md'} ({summary['virtualised']['accel']}, "
                  f"{summary['wall_seconds']:.0f} s)")


@group.command("ab-step", hidden=True)
def ab_step_cmd() -> None:
    """One boot's part of a boot A/B (run by synapse-bench-ab.service)."""
    from synapse_os.bench import bootab

    _console().print(bootab.step())


@group.command("ab-report")
@click.argument("directory", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def ab_report_cmd(directory: Path, as_json: bool) -> None:
    """Write RESULTS.md, plots and records of a finished boot A/B (its -o DIRECTORY)."""
    from synapse_os.bench.ab import boot_report

    summary = boot_report(directory)
    if as_json:
        emit_json(summary)
        return
    for name, result in summary["interleaved"].items():
        whole = result["whole"]
        _console().print(f"{name}: B / A = {whole['ratio']:.3f} [{whole['ci_low']:.3f}, "
                         f"{whole['ci_high']:.3f}], {result['verdict']}")
    _console().print(f"wrote {directory / 'RESULTS.md'}")


@group.command("report")
@click.argument("baseline", type=click.Path(path_type=Path))
@click.argument("candidate", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True,
              help="Directory for RESULTS.md and the PNG plots (replaced as a whole).")
@_allow_model
@_allow_build
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def report_cmd(baseline: Path, candidate: Path, output: Path, allow_model_mismatch: bool,
               allow_build_mismatch: bool, as_json: bool) -> None:
    """Write RESULTS.md (tables, provenance diff) and PNG plots comparing two record files."""
    from synapse_os.bench import report

    base, cand, result = _load_pair(baseline, candidate, allow_model_mismatch,
                                    allow_build_mismatch)
    results_md = report.write(result, base, cand, output)
    files = [str(results_md)] + [str(output / name) for name in report.PLOTS]
    if as_json:
        emit_json({"output": str(output), "files": files, **result.as_dict()})
    else:
        click.echo(f"report written to {output}: " + ", ".join(Path(f).name for f in files))


@group.command("synth-model")
@click.option("--size", default="1G", show_default=True,
              help="Size of the weights, e.g. 1G or 2500M (1024-based units).")
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True,
              help="GGUF file to write.")
@click.option("--seed", default=0, show_default=True, help="Seed of the random weights.")
@click.option("--tokenizer-from", "source", type=click.Path(path_type=Path),
              help="gemma3 GGUF whose tokenizer it takes (default: the shipped 270M model).")
@click.option("--json", "as_json", is_flag=True)
def synth_model_cmd(size: str, output: Path, seed: int, source: Path | None,
                    as_json: bool) -> None:
    """Write a synthetic GGUF of SIZE (real gemma3 architecture and tokenizer, random
    weights) to measure bandwidth-bound generation; bench records mark it synthetic."""
    from synapse_os.bench.synthetic import write_synthetic
    from synapse_os.profile.types import parse_size

    try:
        size_bytes = parse_size(size)
    except ValueError:
        raise UserError(f"--size {size!r} is not a size; use a number with K, M or G "
                        "(e.g. 1G)") from None
    if output.exists() and not output.is_file():
        raise UserError(f"{output} exists and is not a file; -o takes the GGUF file to write")
    info = write_synthetic(output, size_bytes, seed=seed, source=source)
    if as_json:
        emit_json(info)
        return
    click.echo(f"wrote {output}: {info['size_bytes'] / 1e9:.2f} GB, {info['blocks']} blocks, "
               f"random weights (seed {seed}); for speed measurements only")


@group.command("llama-bench")
@click.option("--build", "do_build", is_flag=True,
              help="Build llama-bench (GGML_NATIVE=ON) into the cache when it is absent.")
@click.option("--portable", is_flag=True,
              help="The portable build (AVX2, no OpenMP) that `bench ab` runs in TCG guests.")
@click.option("--source", type=click.Path(path_type=Path),
              help="llama.cpp directory or llama-cpp-python sdist (default: the sdist of the "
              "installed llama-cpp-python, fetched with pip).")
@click.option("--method", type=click.Choice(["auto", "cmake", "pkgbuild"]), default="auto",
              show_default=True, help="auto: the rendered PKGBUILD on Arch, CMake elsewhere.")
@click.option("--force", is_flag=True, help="Rebuild even when a cached build exists.")
@click.option("--llama-bench", "llama_bench", type=click.Path(path_type=Path),
              help="Check this executable instead of searching.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def llama_bench_cmd(do_build: bool, portable: bool, source: Path | None, method: str,
                    force: bool, llama_bench: Path | None, as_json: bool) -> None:
    """Show which llama-bench `run` uses, or build one with --build."""
    from synapse_os.bench import arch, build

    flavour = "portable" if portable else "native"
    if not do_build:
        _show(build.locate(llama_bench, flavour), as_json, "found")
        return
    if source is None and not force:  # "when absent": an existing llama-bench is kept
        try:
            _show(build.locate(llama_bench, flavour), as_json, "found")
            return
        except UserError:
            pass
    with _console().status("preparing the llama.cpp source") as status:
        src = build.resolve_source(source)
        use_pkgbuild = not portable and (method == "pkgbuild" or (
            method == "auto" and arch.is_arch() and src.sdist is not None))
        status.update(f"building llama-bench from {src.origin} "
                      f"({'makepkg' if use_pkgbuild else 'CMake'}, {flavour}); "
                      "this takes minutes")
        built = (arch.build_with_makepkg(src, force=force) if use_pkgbuild
                 else build.build(src, force=force, flavour=flavour))
    _show(built, as_json, "built")


def _show(found: LlamaBench, as_json: bool, verb: str) -> None:
    if as_json:
        emit_json(found.as_dict())
    else:
        click.echo(f"llama-bench {verb}: {found.path}")
