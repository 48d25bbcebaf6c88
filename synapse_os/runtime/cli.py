"""`synapse runtime ...` and `synapse top`."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

from synapse_os.errors import OperationError, UserError

DEFAULT_URL = "http://127.0.0.1:8090"


@click.group()
def group() -> None:
    """The inference service: serve, evaluate, swap models, summarise provenance."""


@group.command()
@click.option("--config", "config_path", type=click.Path(path_type=Path), required=True,
              help="runtime.yaml (rendered from the profile's runtime section).")
@click.option("--host", default=None, help="Override the config's host.")
@click.option("--port", type=int, default=None, help="Override the config's port.")
@click.option("--provenance", type=click.Path(path_type=Path), default=None,
              help="Override the provenance NDJSON path.")
@click.option("--deterministic", is_flag=True,
              help="seed 42, temperature 0, one request at a time, no prompt-cache reuse.")
def serve(config_path: Path, host: str | None, port: int | None, provenance: Path | None,
          deterministic: bool) -> None:
    """Serve the OpenAI-compatible API (what synapse-runtime.service runs)."""
    from synapse_os.runtime.config import load_runtime_config
    from synapse_os.runtime.server import serve as run_server
    from synapse_os.runtime.service import Service

    logging.basicConfig(level=logging.WARNING, format="synapse-runtime: %(message)s")
    config = load_runtime_config(config_path)
    if deterministic:
        config = config.model_copy(update={"deterministic": True})
    service = Service(config, str(provenance) if provenance else None)
    service.check_files()
    code = run_server(service, host or config.host, port or config.port)
    if code:
        raise OperationError(f"the runtime stopped: {service.load_error}")


@group.command()
@click.option("--golden", type=click.Path(path_type=Path), show_default=True,
              default=Path("bench/golden-prompts.yaml"))
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True)
@click.option("--url", default=DEFAULT_URL, show_default=True)
@click.option("--max-tokens", type=int, default=32, show_default=True)
@click.option("--json", "as_json", is_flag=True)
def eval(golden: Path, output: Path, url: str, max_tokens: int, as_json: bool) -> None:  # noqa: A001
    """Run the golden prompts against a live server; write RESULTS.md and records."""
    from synapse_os.cli import emit_json
    from synapse_os.runtime.evaluate import run_eval

    summary = run_eval(golden, output, url, max_tokens)
    if as_json:
        emit_json(summary)
    else:
        click.echo(f"wrote {output / 'RESULTS.md'} ({summary['requests']} requests, routing "
                   f"accuracy {summary['routing']['overall']['accuracy']:.0%})")


@group.command()
@click.argument("ndjson", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True)
@click.option("--json", "as_json", is_flag=True)
def results(ndjson: Path, output: Path, as_json: bool) -> None:
    """Summarise a provenance NDJSON file: p50/p95 per tier, routing accuracy, acceptance."""
    from synapse_os.cli import emit_json
    from synapse_os.runtime.results import load_records, summarize, write_results

    summary = summarize(load_records(ndjson))
    write_results(summary, output)
    if as_json:
        emit_json(summary)
    else:
        click.echo(f"wrote {output / 'RESULTS.md'} from {summary['requests']} records")


@group.command()
@click.argument("role", type=click.Choice(["main", "small", "draft"]))
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--sha256", default=None, help="Expected sha256 (refuses a mismatch).")
@click.option("--url", default=DEFAULT_URL, show_default=True)
@click.option("--json", "as_json", is_flag=True)
def swap(role: str, path: Path, sha256: str | None, url: str, as_json: bool) -> None:
    """Hot-swap ROLE to the GGUF at PATH without dropping requests."""
    import httpx

    from synapse_os.cli import emit_json

    if not path.is_file():
        raise UserError(f"{path} does not exist or is not a file")
    try:
        resp = httpx.post(f"{url.rstrip('/')}/admin/swap", timeout=600,
                          json={"role": role, "path": str(path.absolute()), "sha256": sha256})
    except httpx.HTTPError as exc:
        raise OperationError(f"cannot reach the runtime at {url}: {exc}") from None
    body = resp.json()
    if resp.status_code != 200:
        message = body.get("error", {}).get("message", resp.text)
        raise (UserError if resp.status_code < 500 else OperationError)(
            f"swap refused: {message}")
    if as_json:
        emit_json(body)
    else:
        click.echo(f"{role}: now {body['new']['path']} (sha256 {body['new']['sha256'][:12]}...)")


@group.command()
@click.option("--config", "config_path", type=click.Path(path_type=Path), required=True)
@click.option("--golden", type=click.Path(path_type=Path), show_default=True,
              default=Path("bench/golden-prompts.yaml"))
@click.option("--expect", type=click.Path(path_type=Path), default=None,
              help="Token-hash file from an earlier --record; compare against it.")
@click.option("--record", type=click.Path(path_type=Path), default=None,
              help="Write the token hashes to this file.")
@click.option("--max-tokens", type=int, default=16, show_default=True)
@click.option("--limit", type=int, default=None, help="Only the first N golden prompts.")
@click.option("--json", "as_json", is_flag=True)
def selftest(config_path: Path, golden: Path, expect: Path | None, record: Path | None,
             max_tokens: int, limit: int | None, as_json: bool) -> None:
    """Deterministic self-test: replay golden prompts and compare token hashes."""
    from synapse_os.cli import emit_json
    from synapse_os.runtime.config import load_runtime_config
    from synapse_os.runtime.selftest import run_selftest

    report = run_selftest(load_runtime_config(config_path), golden, expect, record,
                          max_tokens, limit)
    if as_json:
        emit_json(report)
    else:
        for line in report["mismatches"]:
            click.echo(f"MISMATCH {line}")
        click.echo(f"{report['checked']} prompts, {len(report['mismatches'])} mismatches "
                   f"({report['compared_against']})")
    if report["mismatches"]:
        sys.exit(1)


@click.command(name="top")
@click.option("--url", default=DEFAULT_URL, show_default=True)
@click.option("--interval", type=float, default=1.0, show_default=True)
@click.option("--once", is_flag=True, help="Print one frame and exit.")
def top_cmd(url: str, interval: float, once: bool) -> None:
    """Live console panel of the runtime: models, tokens/s, queue, memory, cores, zram."""
    from synapse_os.runtime.top import run_top

    run_top(url, interval, once)
