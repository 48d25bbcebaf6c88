"""`synapse runtime eval`: golden prompts against a live server, through the openai client."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.progress import Progress

from synapse_os.errors import OperationError
from synapse_os.runtime.golden import load_golden
from synapse_os.runtime.results import summarize, write_results


def run_eval(golden: Path, output: Path, url: str, max_tokens: int) -> dict[str, Any]:
    import httpx

    prompts = load_golden(golden)
    records: list[dict[str, Any]] = []
    base = url.rstrip("/")
    with httpx.Client(timeout=600) as client, Progress(transient=True) as progress:
        task = progress.add_task("golden prompts", total=len(prompts))
        for p in prompts:
            try:
                resp = client.post(f"{base}/v1/chat/completions", json={
                    "model": "auto", "temperature": 0, "max_tokens": max_tokens,
                    "messages": [{"role": "user", "content": p.prompt}],
                    "synapse": {"expected_tier": p.tier},
                }, headers={"X-Provenance": "full"})
            except httpx.HTTPError as exc:
                raise OperationError(f"cannot reach the runtime at {url}: {exc}") from None
            if resp.status_code != 200:
                raise OperationError(f"prompt {p.id}: the runtime answered {resp.status_code}: "
                                     f"{resp.text[:300]}")
            record = resp.json().get("synapse_record")
            if not isinstance(record, dict):
                raise OperationError(f"prompt {p.id}: the server did not return its provenance "
                                     "record (is it a synapse runtime?)")
            record["golden_id"] = p.id
            records.append(record)
            progress.advance(task)
    output.mkdir(parents=True, exist_ok=True)
    with (output / "records.ndjson").open("w") as fh:
        for record in records:
            fh.write(json.dumps(record, sort_keys=True) + "\n")
    summary = summarize(records)
    write_results(summary, output)
    return summary
