"""Bench fixtures: a real llama-bench (built once, cached by source+flags) and one real run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from synapse_os.cli import cli
from tests.conftest import PROFILES

LIVE_PROFILE = PROFILES / "cpu-avx2-debian.yaml"  # its settings' live values are recorded

# Short settings: real llama-bench on the real small model, a thread sweep of 1 and 2.
SHORT_RUN = ["-p", "16", "-n", "8", "--pg", "16,8", "-r", "3", "--max-repetitions", "6",
             "--threads", "1,2", "--bandwidth-mib", "64"]


def invoke(args: list[str]) -> Result:
    """Run `synapse ARGS` in-process, with the CLI's own error handling (exit 2 for bad input)."""
    from synapse_os.errors import SynapseError

    runner = CliRunner()
    result = runner.invoke(cli, args, catch_exceptions=True)
    if isinstance(result.exception, SynapseError):
        # what synapse_os.cli.main does: one line on stderr, the error's exit code
        result.exit_code = result.exception.exit_code
    return result


def error_text(result: Result) -> str:
    return str(result.exception) if result.exception else result.output


@pytest.fixture(scope="session")
def real_run(llama_bench: Path, small_model: tuple[Path, str],
             tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One real `synapse bench run` with short settings; its NDJSON file."""
    out = tmp_path_factory.mktemp("bench") / "run.jsonl"
    result = invoke(["bench", "run", "--label", "test-a", "-o", str(out),
                     "--llama-bench", str(llama_bench), "--profile", str(LIVE_PROFILE),
                     *SHORT_RUN])
    assert result.exit_code == 0, error_text(result)
    return out


def read_ndjson(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def write_ndjson(path: Path, records: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path
