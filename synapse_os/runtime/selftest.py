"""Deterministic self-test: replay golden prompts and compare token hashes.

Runs in-process in deterministic mode (seed 42, temperature 0, no prompt-cache reuse,
one request at a time). Without --expect, every prompt is generated twice, the second
pass in reverse order so that any state leaking between requests shows up; with
--expect, hashes are compared with a file written earlier by --record for the same
model sha256.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from synapse_os.errors import UserError
from synapse_os.runtime.config import RuntimeConfig
from synapse_os.runtime.engine import LoadedModel, load_model
from synapse_os.runtime.generation import GenerationState, Sampling, generate
from synapse_os.runtime.golden import GoldenPrompt, load_golden
from synapse_os.runtime.prompting import format_chat


def token_hash(tokens: list[int]) -> str:
    return hashlib.sha256(",".join(map(str, tokens)).encode()).hexdigest()


def _run(model: LoadedModel, prompt: GoldenPrompt, max_tokens: int, seed: int) -> str:
    chat = format_chat(model, [{"role": "user", "content": prompt.prompt}])
    tokens = model.tokenize(chat.text, add_bos=chat.add_bos)
    state = GenerationState()
    list(generate(model, tokens, Sampling(temperature=0.0, seed=seed, max_tokens=max_tokens),
                  state, reuse_cache=False))
    return token_hash(state.tokens)


def run_selftest(config: RuntimeConfig, golden: Path, expect: Path | None,
                 record: Path | None, max_tokens: int, limit: int | None) -> dict[str, Any]:
    prompts = load_golden(golden)[:limit]
    cfg = config.models["main"]
    # the self-test is the deterministic mode: batch invariant unless the config says not
    model = load_model("main", cfg, config.resolved_threads(), config.batch, config.seed,
                       config.llama.settings(exact_needed=True))
    try:
        first = {p.id: _run(model, p, max_tokens, config.seed) for p in prompts}
        if expect is not None:
            try:
                expected = json.loads(expect.read_text())
            except (OSError, json.JSONDecodeError) as exc:
                raise UserError(f"cannot read token hashes from {expect}: {exc}") from None
            if expected.get("model_sha256") != model.info.sha256:
                raise UserError(
                    f"{expect} was recorded for model sha256 {expected.get('model_sha256')}, "
                    f"not {model.info.sha256}; record it again with --record")
            if expected.get("max_tokens") != max_tokens:
                raise UserError(f"{expect} was recorded with --max-tokens "
                                f"{expected.get('max_tokens')}; use the same value")
            reference = expected["hashes"]
            against = f"recorded hashes in {expect}"
        else:
            reference = {p.id: _run(model, p, max_tokens, config.seed) for p in reversed(prompts)}
            against = "a second pass in reverse order"
        mismatches = [f"{pid}: {first[pid][:16]} != {reference.get(pid, 'missing')[:16]}"
                      for pid in first if first[pid] != reference.get(pid)]
        report = {"checked": len(first), "mismatches": mismatches, "compared_against": against,
                  "model_sha256": model.info.sha256, "max_tokens": max_tokens, "hashes": first}
        if record is not None:
            data = {"model_sha256": model.info.sha256, "max_tokens": max_tokens, "hashes": first}
            fd, tmp = tempfile.mkstemp(dir=record.parent or Path("."), prefix=".selftest.")
            with os.fdopen(fd, "w") as fh:
                json.dump(data, fh, indent=2, sort_keys=True)
            os.replace(tmp, record)
        return report
    finally:
        model.close()
