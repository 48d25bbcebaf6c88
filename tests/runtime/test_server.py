"""The real runtime on the real small model, over HTTP, through the official openai client.

One server process for the module (three roles of the same GGUF); short generations.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import psutil
import pytest
import yaml

from synapse_os.runtime.provenance import REQUIRED_FIELDS
from tests.conftest import need_tool
from tests.runtime.helpers import REPO, Server, free_port, start_server, write_config

_free_port = free_port
_write_config = write_config


@pytest.fixture(scope="module")
def server(small_model: tuple[Path, str], tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[Server]:
    workdir = tmp_path_factory.mktemp("runtime")
    model, sha = small_model
    _write_config(workdir / "runtime.yaml", model, sha)
    srv = start_server(workdir)
    yield srv
    srv.stop()


def test_health_and_models(server: Server) -> None:
    health = httpx.get(f"{server.url}/health").json()
    assert health["status"] == "ok"
    assert set(health["models"]) == {"main", "small", "draft"}
    ids = [m.id for m in server.client().models.list()]
    assert ids == ["auto", "draft", "main", "small"] or sorted(ids) == sorted(
        ["auto", "draft", "main", "small"])


def test_routing_auto_and_explicit(server: Server) -> None:
    c = server.client()
    trivial = c.chat.completions.create(
        model="auto", messages=[{"role": "user", "content": "Hi there!"}], max_tokens=4,
        temperature=0)
    ext = trivial.model_extra["synapse"]  # type: ignore[index]
    assert (ext["tier"], ext["model_role"], ext["routed"]) == ("trivial", "small", True)
    assert trivial.model == "small" and 0.5 <= ext["router_confidence"] <= 0.99
    high = c.chat.completions.create(
        model="auto", max_tokens=4, temperature=0, messages=[{"role": "user", "content":
        "Design a database schema for a library and explain the trade-offs of each index."}])
    ext = high.model_extra["synapse"]  # type: ignore[index]
    assert (ext["tier"], ext["model_role"]) == ("high", "main")
    explicit = c.chat.completions.create(
        model="small", messages=[{"role": "user", "content": "Prove it step by step."}],
        max_tokens=4, temperature=0)
    ext = explicit.model_extra["synapse"]  # type: ignore[index]
    assert (ext["routed"], ext["model_role"], ext["tier"]) == (False, "small", "explicit")


def test_streaming_equals_non_streaming(server: Server) -> None:
    c = server.client()
    kwargs: dict[str, Any] = dict(model="main", max_tokens=12, temperature=0,
                                  messages=[{"role": "user", "content": "Name three colors."}],
                                  extra_body={"synapse": {"cache": False}})
    whole = c.chat.completions.create(**kwargs)
    pieces = []
    finish = None
    for chunk in c.chat.completions.create(stream=True, **kwargs):
        if chunk.choices:
            pieces.append(chunk.choices[0].delta.content or "")
            finish = chunk.choices[0].finish_reason or finish
    assert len([p for p in pieces if p]) >= 2  # arrived in several events
    assert "".join(pieces) == whole.choices[0].message.content
    assert finish == whole.choices[0].finish_reason
    stream = c.completions.create(model="main", prompt="Once upon a time", max_tokens=6,
                                  temperature=0, stream=True)
    assert sum(len(ch.choices[0].text) for ch in stream if ch.choices) > 0


def test_speculative_output_equals_plain_greedy(server: Server, small_model: tuple[Path, str]
                                                ) -> None:
    """Same prompt, speculation forced on and off, plus raw llama-cpp-python greedy."""
    from synapse_os.profile.model import LlamaSettings
    from synapse_os.runtime.config import ModelConfig
    from synapse_os.runtime.engine import llama_kwargs, open_llama

    c = server.client()
    prompts = ["The capital of France is", "def fibonacci(n):", "Water boils at"]
    model, sha = small_model
    raw = open_llama(llama_kwargs(ModelConfig(path=str(model), context=512), 1, 512, 42,
                                  LlamaSettings.exact()),
                     repack=False)
    try:
        for prompt in prompts:
            out = {}
            for spec in (True, False):
                r = c.completions.create(
                    model="main", prompt=prompt, max_tokens=24, temperature=0,
                    extra_body={"synapse": {"speculative": spec, "cache": False}})
                out[spec] = (r.choices[0].text, r.model_extra["synapse"])  # type: ignore[index]
            assert out[True][0] == out[False][0]
            assert out[True][1]["token_hash"] == out[False][1]["token_hash"]
            assert out[True][1]["speculative"]["used"] is True
            assert out[True][1]["speculative"]["proposed"] > 0
            assert out[False][1]["speculative"]["used"] is False
            tokens = raw.tokenize(prompt.encode(), add_bos=True, special=True)
            expected = []
            for tok in raw.generate(tokens, temp=0.0, top_k=1):
                if raw._model.token_get_text(tok) in ("<eos>", "<end_of_turn>") or len(
                        expected) >= 24:
                    break
                expected.append(tok)
            assert raw.detokenize(expected).decode() == out[True][0]
    finally:
        raw.close()


def test_malformed_requests_get_json_errors(server: Server) -> None:
    url = f"{server.url}/v1/chat/completions"
    cases = [
        (b"{not json", 400, "invalid_json"),
        (json.dumps([1, 2]).encode(), 400, "invalid_request"),
        (json.dumps({"model": "auto"}).encode(), 400, "invalid_request"),
        (json.dumps({"model": "auto", "messages": []}).encode(), 400, "invalid_request"),
        (json.dumps({"model": "auto", "messages": [{"role": "wizard", "content": "x"}]}).encode(),
         400, "invalid_request"),
        (json.dumps({"model": "auto", "temperature": 9,
                     "messages": [{"role": "user", "content": "x"}]}).encode(), 400,
         "invalid_request"),
        (json.dumps({"model": "auto", "n": 3,
                     "messages": [{"role": "user", "content": "x"}]}).encode(), 400,
         "invalid_request"),
        (json.dumps({"model": "gpt-17", "messages": [{"role": "user", "content": "x"}]}).encode(),
         404, "model_not_found"),
        (json.dumps({"model": "main", "max_tokens": 100000,
                     "messages": [{"role": "user", "content": "x"}]}).encode(), 400,
         "context_length_exceeded"),
        (json.dumps({"model": "main", "messages": [{"role": "user",
                     "content": "word " * 2000}]}).encode(), 400, "context_length_exceeded"),
    ]
    for body, status, code in cases:
        r = httpx.post(url, content=body, headers={"content-type": "application/json"})
        assert r.status_code == status, (body[:80], r.text)
        err = r.json()["error"]
        assert err["code"] == code and err["message"], r.text
    r = httpx.post(f"{server.url}/v1/completions", json={"model": "main", "prompt": ["a", "b"]})
    assert r.status_code == 400 and "one string" in r.json()["error"]["message"]
    with pytest.raises(openai.BadRequestError, match="context"):
        server.client(max_retries=0).chat.completions.create(
            model="main", messages=[{"role": "user", "content": "word " * 2000}])
    assert httpx.get(f"{server.url}/health").status_code == 200
    assert server.proc.poll() is None


def test_queue_overflow_gets_503_with_retry_after(server: Server) -> None:
    def one(i: int) -> httpx.Response:
        return httpx.post(f"{server.url}/v1/completions", timeout=300, json={
            "model": "main", "prompt": f"Count to ten: {i}", "max_tokens": 8, "temperature": 0})

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(one, range(8)))
    codes = sorted(r.status_code for r in responses)
    assert codes.count(200) >= 3  # one running + queue_size (2) waiting
    rejected = [r for r in responses if r.status_code == 503]
    assert rejected, codes
    for r in rejected:
        assert int(r.headers["Retry-After"]) >= 1
        assert r.json()["error"]["code"] == "queue_full"
    assert httpx.get(f"{server.url}/health").json()["queue"]["waiting"] == 0


def test_swap_under_load_keeps_serving_and_sessions(server: Server, small_model: tuple[Path, str],
                                                   tmp_path: Path) -> None:
    model, sha = small_model
    c = server.client()
    session = {"session_id": "conv-1"}
    c.chat.completions.create(model="main", max_tokens=4, temperature=0, extra_body=session,
                              messages=[{"role": "user", "content": "My name is Ada."}])
    before = [m.model_extra["synapse"] for m in c.models.list() if m.id == "main"][0]  # type: ignore[index]

    new_path = tmp_path / "main-v2.gguf"
    os.symlink(model, new_path)
    failures: list[str] = []
    served: list[int] = []
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            try:
                r = httpx.post(f"{server.url}/v1/chat/completions", timeout=300, json={
                    "model": "main", "max_tokens": 6, "temperature": 0,
                    "messages": [{"role": "user", "content": "Say something."}]})
                if r.status_code == 200:
                    served.append(r.json()["synapse"]["model"]["load_id"])
                else:
                    failures.append(f"{r.status_code} {r.text}")
            except httpx.HTTPError as exc:
                failures.append(repr(exc))

    worker = threading.Thread(target=load)
    worker.start()
    try:
        time.sleep(1.0)
        result = subprocess.run(
            [sys.executable, "-m", "synapse_os.cli", "runtime", "swap", "main", str(new_path),
             "--sha256", sha, "--url", server.url, "--json"],
            cwd=REPO, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr
        swapped = json.loads(result.stdout)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and (not served or served[-1] != swapped["new"]["load_id"]):
            time.sleep(0.2)
    finally:
        stop.set()
        worker.join(timeout=300)
    assert not failures, failures
    assert before["load_id"] in served and swapped["new"]["load_id"] in served
    after = [m.model_extra["synapse"] for m in c.models.list() if m.id == "main"][0]  # type: ignore[index]
    assert after["path"] == str(new_path) and after["load_id"] == swapped["new"]["load_id"]

    c.chat.completions.create(model="main", max_tokens=4, temperature=0, extra_body=session,
                              messages=[{"role": "user", "content": "What is my name?"}])
    history = httpx.get(f"{server.url}/v1/sessions/conv-1").json()["messages"]
    assert [m["role"] for m in history] == ["user", "assistant", "user", "assistant"]
    assert history[0]["content"] == "My name is Ada."

    refused = subprocess.run(
        [sys.executable, "-m", "synapse_os.cli", "runtime", "swap", "main", str(new_path),
         "--sha256", "0" * 64, "--url", server.url],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2 and "refusing to load" in refused.stderr
    still = c.completions.create(model="main", prompt="Hi", max_tokens=2, temperature=0)
    assert still.model_extra["synapse"]["model"]["load_id"] == swapped["new"]["load_id"]  # type: ignore[index]


def test_metrics_exposed(server: Server) -> None:
    text = httpx.get(f"{server.url}/metrics").text
    for name in ("synapse_requests_total", "synapse_tokens_total",
                 "synapse_request_latency_seconds_bucket", "synapse_queue_depth",
                 "synapse_tier_requests_total", "synapse_speculative_proposed_tokens_total",
                 "synapse_speculative_accepted_tokens_total", "synapse_model_loaded",
                 "synapse_router_decision_seconds_bucket", "synapse_rejected_total"):
        assert name in text, name
    assert 'synapse_tier_requests_total{routed="auto",tier="trivial"}' in text


def test_provenance_records_are_complete(server: Server, tmp_path: Path) -> None:
    lines = server.provenance.read_text().splitlines()
    assert len(lines) >= 5
    for line in lines:
        record = json.loads(line)
        missing = [f for f in REQUIRED_FIELDS if f not in record]
        assert not missing, missing
        assert record["execution_mode"] == "real"
        assert set(record["environment"]) >= {"python", "os", "kernel", "cpu", "gpu"}
        assert set(record["models"]) == {"main", "small", "draft"}
        for m in record["models"].values():
            assert len(m["sha256"]) == 64 and m["quantization"] == "Q4_K_M"
        assert record["sampling"]["seed"] is not None
        assert record["latency_ms"] >= record["ttft_ms"] >= record["queue_ms"] >= 0
        assert {"proposed", "accepted", "accept_rate"} <= set(record["speculative"])
        assert len(record["git_revision"]) >= 7
    out = tmp_path / "results"
    result = subprocess.run([sys.executable, "-m", "synapse_os.cli", "runtime", "results",
                             str(server.provenance), "-o", str(out)],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    md = (out / "RESULTS.md").read_text()
    assert "| trivial |" in md and "| high |" in md and "Q4_K_M" in md


def test_eval_against_live_server(server: Server, tmp_path: Path) -> None:
    golden = tmp_path / "golden.yaml"
    golden.write_text(yaml.safe_dump({"prompts": [
        {"id": "a", "tier": "trivial", "prompt": "Hello!"},
        {"id": "b", "tier": "moderate", "prompt": "Explain how a refrigerator keeps food cold."},
        {"id": "c", "tier": "high", "prompt": "Prove that the square root of 2 is irrational, "
                                              "step by step."}]}))
    out = tmp_path / "eval"
    result = subprocess.run([sys.executable, "-m", "synapse_os.cli", "runtime", "eval",
                             "--golden", str(golden), "-o", str(out), "--url", server.url,
                             "--max-tokens", "4", "--json"],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["routing"]["overall"] == {"expected": 3, "correct": 3, "accuracy": 1.0}
    assert (out / "RESULTS.md").exists() and len((out / "records.ndjson").read_text().splitlines()) == 3


def test_top_panel_in_tmux(server: Server) -> None:
    tmux = need_tool("tmux", "apt-get install tmux")
    name = f"synapse-top-{os.getpid()}"
    synapse = shutil.which("synapse") or ""
    program = synapse if synapse else f"{sys.executable} -m synapse_os.cli"
    # the panel must size itself from the tmux window, not from inherited COLUMNS/LINES
    cmd = f"env -u COLUMNS -u LINES {program} top --url {server.url} --interval 0.5"
    subprocess.run([tmux, "new-session", "-d", "-s", name, "-x", "160", "-y", "50", cmd],
                   check=True, cwd=REPO)
    try:
        screen = ""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            screen = subprocess.run([tmux, "capture-pane", "-p", "-t", name],
                                    capture_output=True, text=True, check=True).stdout
            if "queue depth" in screen and "cpu0" in screen:
                break
            time.sleep(0.5)
        for word in ("synapse top", "main", "small", "draft", "Q4_K_M", "tokens/s now",
                     "queue depth", "acceptance trivial", "cpu0", "zram", "ready"):
            assert word in screen, f"{word!r} not on screen:\n{screen}"
    finally:
        subprocess.run([tmux, "kill-session", "-t", name], check=False)


def test_serve_refuses_sha_mismatch(small_model: tuple[Path, str], tmp_path: Path) -> None:
    model, _ = small_model
    _write_config(tmp_path / "runtime.yaml", model, "0" * 64)
    result = subprocess.run([sys.executable, "-m", "synapse_os.cli", "runtime", "serve",
                             "--config", str(tmp_path / "runtime.yaml"), "--port",
                             str(_free_port())], cwd=REPO, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 2
    assert "refusing to load" in result.stderr and "sha256" in result.stderr


def test_selftest_deterministic(small_model: tuple[Path, str], tmp_path: Path) -> None:
    model, sha = small_model
    _write_config(tmp_path / "runtime.yaml", model, sha)
    base = [sys.executable, "-m", "synapse_os.cli", "runtime", "selftest", "--config",
            str(tmp_path / "runtime.yaml"), "--golden", str(REPO / "bench" / "golden-prompts.yaml"),
            "--limit", "3", "--max-tokens", "8", "--json"]
    first = subprocess.run(base + ["--record", str(tmp_path / "hashes.json")], cwd=REPO,
                           capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr
    report = json.loads(first.stdout)
    assert report["checked"] == 3 and report["mismatches"] == []
    again = subprocess.run(base + ["--expect", str(tmp_path / "hashes.json")], cwd=REPO,
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    data = json.loads((tmp_path / "hashes.json").read_text())
    data["hashes"]["t01"] = "f" * 64
    (tmp_path / "hashes.json").write_text(json.dumps(data))
    tampered = subprocess.run(base + ["--expect", str(tmp_path / "hashes.json")], cwd=REPO,
                              capture_output=True, text=True, timeout=300)
    assert tampered.returncode == 1 and "t01" in tampered.stdout


def test_serves_on_the_socket_systemd_passes(small_model: tuple[Path, str],
                                            tmp_path: Path) -> None:
    """Socket activation, as the isolated runtime gets its API socket (synapse-runtime.socket
    through systemd-nspawn): the runtime binds nothing itself, answers on the passed socket
    and still says READY=1 only once its model is loaded."""
    model, sha = small_model
    _write_config(tmp_path / "runtime.yaml", model, sha, roles=("main",))
    srv = start_server(tmp_path, socket_activated=True)
    try:
        port = int(srv.url.rsplit(":", 1)[1])
        # systemd-socket-activate execs the runtime in its own place (LISTEN_PID is its pid)
        runtime = psutil.Process(srv.proc.pid)
        assert "synapse_os.cli" in runtime.cmdline()
        # the runtime listens only on the fd it was given, nothing of its own
        assert [c.laddr.port for c in runtime.net_connections("tcp")
                if c.status == psutil.CONN_LISTEN] == [port]
        reply = srv.client().chat.completions.create(
            model="main", messages=[{"role": "user", "content": "Say hi"}], max_tokens=4,
            temperature=0)
        assert reply.choices[0].message.content
        assert f"serving on http://127.0.0.1:{port}" in (tmp_path / "server.log").read_text()
    finally:
        srv.stop()
