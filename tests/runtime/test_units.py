"""Pure parts of the runtime: router, config, text stream, provenance writer, results."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from synapse_os.errors import UserError
from synapse_os.profile.loader import load_profile
from synapse_os.runtime.config import (
    RuntimeConfig,
    load_runtime_config,
    runtime_config_from_profile,
)
from synapse_os.runtime.golden import load_golden
from synapse_os.runtime.provenance import REQUIRED_FIELDS, ProvenanceWriter
from synapse_os.runtime.results import load_records, percentile, summarize, write_results
from synapse_os.runtime.router import classify_messages, classify_text
from synapse_os.runtime.textstream import TextStream

REPO = Path(__file__).resolve().parents[2]
GOLDEN = REPO / "bench" / "golden-prompts.yaml"


def test_golden_file_has_ten_prompts_per_tier() -> None:
    prompts = load_golden(GOLDEN)
    counts = {t: sum(1 for p in prompts if p.tier == t) for t in ("trivial", "moderate", "high")}
    assert counts == {"trivial": 10, "moderate": 10, "high": 10}


def test_router_is_deterministic_and_mostly_right_on_golden() -> None:
    prompts = load_golden(GOLDEN)
    first = [classify_text(p.prompt) for p in prompts]
    again = [classify_text(p.prompt) for p in prompts]
    assert [(d.tier, d.score, d.confidence) for d in first] == [
        (d.tier, d.score, d.confidence) for d in again]
    right = sum(d.tier == p.tier for d, p in zip(first, prompts, strict=True))
    assert right >= 27, f"router accuracy on golden prompts fell to {right}/30"
    assert all(0.5 <= d.confidence <= 0.99 for d in first)


@pytest.mark.parametrize(("text", "tier"), [
    ("hello", "trivial"),
    ("What is 12 * 3?", "trivial"),
    ("Describe the water cycle and how clouds form over the ocean.", "moderate"),
    ("Implement a Rust function that merges two sorted vectors, then analyze its complexity "
     "step by step.", "high"),
])
def test_router_tiers(text: str, tier: str) -> None:
    assert classify_text(text).tier == tier


def test_router_uses_last_user_message_and_history_size() -> None:
    messages = [{"role": "user", "content": "Prove Fermat's little theorem step by step."},
                {"role": "assistant", "content": "x" * 3000},
                {"role": "user", "content": "thanks"}]
    decision = classify_messages(messages)
    assert decision.features["words"] == 1
    assert decision.features["history_chars"] > 2000


def test_profile_to_runtime_config(tmp_path: Path) -> None:
    profile = load_profile(REPO / "profiles" / "cpu-avx2.yaml")
    data = runtime_config_from_profile(profile)
    config = RuntimeConfig.model_validate(data)
    assert config.models["main"].path == profile.runtime.models["main"].path
    assert config.speculative.enabled == profile.runtime.speculative.enabled
    assert config.speculative.draft_tokens == profile.runtime.speculative.draft_tokens
    assert config.port == profile.runtime.port
    assert config.provenance.path == profile.runtime.provenance
    # pure: same profile, same dict
    assert runtime_config_from_profile(profile) == data
    # round trip through YAML the way the renderer writes it
    path = tmp_path / "runtime.yaml"
    path.write_text(yaml.safe_dump(data))
    assert load_runtime_config(path).models["main"].path == profile.runtime.models["main"].path


def test_profile_without_runtime_is_refused() -> None:
    profile = load_profile(REPO / "profiles" / "stock-baseline.yaml")
    if profile.runtime is None:
        with pytest.raises(ValueError, match="no runtime section"):
            runtime_config_from_profile(profile)


def test_runtime_config_errors_name_the_key(tmp_path: Path) -> None:
    path = tmp_path / "runtime.yaml"
    path.write_text("models:\n  small: {path: a.gguf}\n")
    with pytest.raises(UserError, match="main"):
        load_runtime_config(path)
    path.write_text("models:\n  main: {path: a.gguf, sha256: XYZ}\n")
    with pytest.raises(UserError, match=r"models\.main\.sha256"):
        load_runtime_config(path)
    path.write_text("models: [\n")
    with pytest.raises(UserError, match="not valid YAML"):
        load_runtime_config(path)


def test_text_stream_holds_back_stop_prefixes() -> None:
    ts = TextStream(["<end>"])
    out = [ts.feed(b) for b in (b"Hello", b" <e", b"nd> ignored")]
    assert out == ["Hello", " ", ""]
    assert ts.stopped and ts.text == "Hello "
    ts2 = TextStream(["<end>"])
    assert ts2.feed(b"a <e") == "a "
    assert ts2.feed(b"x") == "<ex"
    assert ts2.finish() == "" and ts2.text == "a <ex"
    ts3 = TextStream([])
    assert ts3.feed("é".encode()[:1]) == "" and ts3.feed("é".encode()[1:]) == "é"


def _record(**over: object) -> dict[str, object]:
    base: dict[str, object] = {f: None for f in REQUIRED_FIELDS}
    base.update({
        "schema": 1, "time": 0.0, "request_id": "r", "endpoint": "chat", "status": "ok",
        "tier": "trivial", "expected_tier": "trivial", "router_confidence": 0.9, "routed": True,
        "model_role": "small", "models": {"small": {"path": "/m.gguf", "sha256": "0" * 64,
                                                    "quantization": "Q4_K_M", "load_id": 1}},
        "execution_mode": "real", "environment": {"python": "3.11"}, "git_revision": "abc",
        "speculative": {"used": True, "proposed": 8, "accepted": 6, "accept_rate": 0.75},
        "queue_ms": 1.0, "ttft_ms": 10.0, "latency_ms": 100.0, "tokens_in": 5, "tokens_out": 9,
        "deterministic": False,
    })
    base.update(over)
    return base


def test_provenance_writer_rotates_and_keeps(tmp_path: Path) -> None:
    path = tmp_path / "prov.ndjson"
    writer = ProvenanceWriter(path, fsync_interval_s=0, max_bytes=4096, keep=2)
    for i in range(60):
        writer.write(_record(request_id=f"r{i}"))
    writer.close()
    rotated = sorted(p.name for p in tmp_path.iterdir())
    assert rotated == ["prov.ndjson", "prov.ndjson.1", "prov.ndjson.2"]
    ids = []
    for name in ("prov.ndjson.2", "prov.ndjson.1", "prov.ndjson"):
        ids += [json.loads(line)["request_id"] for line in (tmp_path / name).read_text().splitlines()]
    assert ids == [f"r{i}" for i in range(60 - len(ids), 60)]  # contiguous, newest last
    assert all(p.stat().st_size <= 4096 for p in tmp_path.iterdir())


def test_results_summary_and_refusals(tmp_path: Path) -> None:
    path = tmp_path / "p.ndjson"
    records = [_record(latency_ms=float(v), request_id=str(v)) for v in (100, 200, 300, 400)]
    records.append(_record(tier="moderate", expected_tier="high", model_role="main"))
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    summary = summarize(load_records(path))
    assert summary["tiers"]["trivial"]["latency_ms_p50"] == 250.0
    assert summary["tiers"]["trivial"]["latency_ms_p95"] == pytest.approx(385.0)
    assert summary["routing"]["trivial"]["accuracy"] == 1.0
    assert summary["routing"]["high"]["accuracy"] == 0.0
    assert summary["tiers"]["trivial"]["accept_rate"] == 0.75
    write_results(summary, tmp_path / "out")
    md = (tmp_path / "out" / "RESULTS.md").read_text()
    assert "| trivial | 4 | 250.0 |" in md
    path.write_text(json.dumps(_record(execution_mode="mock")) + "\n")
    with pytest.raises(UserError, match=r"p\.ndjson:1: execution_mode is 'mock'"):
        load_records(path)
    bad = _record()
    del bad["ttft_ms"]
    path.write_text(json.dumps(bad) + "\n")
    with pytest.raises(UserError, match="lacks ttft_ms"):
        load_records(path)
    assert percentile([], 50) is None


def test_speculation_switches_itself_off_for_a_slower_tier() -> None:
    from synapse_os.runtime.service import SpecController

    ctl = SpecController(enabled=True, auto_off=True, probe_every=3, min_samples=2)
    modes = [ctl.choose("high") for _ in range(6)]
    assert modes == [True, True, False, True, True, False]  # every 3rd request probes
    for _ in range(2):
        ctl.record("high", True, 40, 2.0)   # 20 tok/s with speculation
        ctl.record("high", False, 40, 1.0)  # 40 tok/s without
        ctl.record("trivial", True, 40, 1.0)
        ctl.record("trivial", False, 40, 2.0)
    assert ctl.state("high") is False and ctl.state("trivial") is True
    assert [ctl.choose("high") for _ in range(3)] == [False, False, True]  # probes the other mode
    off = SpecController(enabled=False, auto_off=True, probe_every=3, min_samples=2)
    assert not any(off.choose("high") for _ in range(5))


def test_prompt_lookup_proposes_what_followed_the_longest_earlier_match() -> None:
    from synapse_os.runtime.batching import Lookup

    look = Lookup([5, 6, 7, 8, 9, 1, 2, 6, 7], draft_tokens=3)
    assert look.propose(8) == [8, 9, 1]  # (6, 7) last continued with 8 9 1
    assert look.propose(2) == [8, 9]  # never past the limit (budget, context)
    look.append(8)
    assert look.propose(8) == [9, 1, 2]  # (6, 7, 8) matches three tokens now
    look.append(4)
    assert look.propose(8) == []  # (8, 4) and (4,) never occurred before
    # the newest occurrence wins
    assert Lookup([1, 2, 3, 1, 2, 4, 1, 2], 2).propose(8) == [4, 1]


@pytest.mark.parametrize(("runtime", "needle"), [
    ("{engine: llama-server, models: {main: {path: /m.gguf}}, speculative: {lookup: true}}",
     "llama-server would ignore it"),
    ("{models: {main: {path: /m.gguf}}, parallel: 1, speculative: {lookup: true}}",
     "parallel: 1 decodes one at a time"),
])
def test_prompt_lookup_is_refused_where_it_would_be_ignored(tmp_path: Path, runtime: str,
                                                             needle: str) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(f"synapse: 1\nname: t\nruntime: {runtime}\n")
    with pytest.raises(UserError, match=needle):
        load_profile(path)
