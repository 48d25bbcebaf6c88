"""Serving under abuse and the OpenAI surface, on the real model through the openai client.

One server for the module: only a 'main' model (so naming 'small' is a 404 for a role
that is not loaded), two queue places, eight slots (continuous batching), context 512.
"""

from __future__ import annotations

import concurrent.futures
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.runtime.helpers import Server, start_server, write_config

PROMPT = [{"role": "user", "content": "Tell me a long story about a dragon and a knight."}]


@pytest.fixture(scope="module")
def server(small_model: tuple[Path, str], tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[Server]:
    workdir = tmp_path_factory.mktemp("serving")
    model, sha = small_model
    # batch invariant: concurrent streams must equal solo greedy decoding token for token,
    # prompt lookup on or off
    write_config(workdir / "runtime.yaml", model, sha, roles=("main",), queue_size=2,
                 parallel=8, llama={"batch_invariant": True},
                 speculative={"lookup": True, "draft_tokens": 4})
    srv = start_server(workdir)
    yield srv
    srv.stop()


def test_throughput_settings_are_the_default_and_serve_concurrent_streams(
        small_model: tuple[Path, str], tmp_path: Path) -> None:
    """Without speculation the engine runs llama.cpp's fast path (repacked weights, f16
    cache, full-size decode batches), reported by /health, and batches streams as well."""
    model, sha = small_model
    write_config(tmp_path / "runtime.yaml", model, sha, roles=("main",), parallel=4)
    srv = start_server(tmp_path)
    try:
        health = httpx.get(f"{srv.url}/health", timeout=10).json()
        assert health["llama"] == {"flash_attention": True, "kv_cache_type": "f16",
                                   "repack": True, "batch_invariant": False, "numa": None,
                                   "threads_batch": None}
        c = srv.client(max_retries=0)
        first: dict[int, float] = {}
        last: dict[int, float] = {}

        def run(i: int) -> str:
            parts = []
            for chunk in c.completions.create(model="main", prompt=f"Story {i}: once upon",
                                              max_tokens=16, temperature=0, stream=True):
                if chunk.choices and chunk.choices[0].text:
                    first.setdefault(i, time.perf_counter())
                    parts.append(chunk.choices[0].text)
            last[i] = time.perf_counter()
            return "".join(parts)

        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            texts = list(pool.map(run, range(4)))
        assert all(texts), texts
        assert max(first.values()) < min(last.values()), (first, last)
    finally:
        srv.stop()


def _queue(server: Server) -> dict[str, int]:
    return dict(httpx.get(f"{server.url}/health", timeout=10).json()["queue"])


def _wait_idle(server: Server, timeout: float = 60) -> dict[str, int]:
    deadline = time.monotonic() + timeout
    queue = _queue(server)
    while time.monotonic() < deadline and (queue["waiting"] or queue["running"]):
        time.sleep(0.05)
        queue = _queue(server)
    return queue


_HTTP = httpx.Client()  # one connection pool: a fresh client per request costs ~50 ms


def _post(server: Server, path: str, body: bytes | dict[str, Any], method: str = "POST",
          timeout: float = 60) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return _HTTP.request(method, f"{server.url}{path}", content=content, timeout=timeout,
                         headers={"content-type": "application/json"})


def _refused_kinds() -> list[tuple[str, str, bytes, int, str]]:
    user = [{"role": "user", "content": "hi"}]
    big = b'{"model": "main", "prompt": "' + b"a" * (2 << 20) + b'"}'

    def j(obj: dict[str, Any]) -> bytes:
        return json.dumps(obj).encode()

    return [
        ("POST", "/v1/chat/completions", b"{not json", 400, "invalid_json"),
        ("POST", "/v1/chat/completions", b"\xff\xfe{}", 400, "invalid_json"),
        ("POST", "/v1/chat/completions", j({"model": "main"}), 400, "invalid_request"),
        ("POST", "/v1/chat/completions", j({"model": "small", "messages": user}), 404,
         "model_not_found"),  # a role that exists but is not loaded here
        ("POST", "/v1/completions", j({"model": "small", "prompt": "x"}), 404, "model_not_found"),
        ("POST", "/v1/chat/completions", j({"model": "gpt-17", "messages": user}), 404,
         "model_not_found"),
        ("POST", "/v1/chat/completions", j({"model": "main", "messages": [
            {"role": "user", "content": "word " * 2000}]}), 400, "context_length_exceeded"),
        ("POST", "/v1/completions", j({"model": "main", "prompt": "x", "max_tokens": 9999}),
         400, "context_length_exceeded"),
        ("POST", "/v1/chat/completions", j({"model": "main", "messages": user, "tools": [
            {"type": "function", "function": {"name": "f", "parameters": {}}}]}), 400,
         "unsupported_parameter"),
        ("POST", "/v1/chat/completions",
         b'{"model": "main", "messages": [{"role": "user", "content": "\\ud800"}]}', 400,
         "invalid_text"),
        ("POST", "/v1/chat/completions", j({"model": "main", "messages": user,
                                            "response_format": {"type": "yaml"}}), 400,
         "invalid_request"),
        ("POST", "/v1/completions", big, 413, "request_too_large"),
        ("GET", "/v1/nothing-here", b"", 404, "not_found"),
        ("DELETE", "/v1/chat/completions", b"", 405, "method_not_allowed"),
    ]


def test_hundreds_of_refusals_leak_nothing(server: Server) -> None:
    kinds = _refused_kinds()
    jobs = [kinds[i % len(kinds)] for i in range(len(kinds) * 15)]  # 210 requests

    def one(kind: tuple[str, str, bytes, int, str]) -> tuple[int, str, int, str]:
        method, path, body, status, code = kind
        r = _post(server, path, body, method=method)
        return r.status_code, r.json()["error"]["code"], status, code

    # two at a time: the queue (2 places) is never full, so each answer must be its own
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        results = list(pool.map(one, jobs))
    wrong = [r for r in results if r[:2] != r[2:]]
    assert not wrong, wrong[:5]
    # clients that give up while generating, and while queued behind them
    for _ in range(3):
        with pytest.raises(httpx.TimeoutException):
            _post(server, "/v1/completions", {"model": "main", "prompt": "Once upon a time",
                                              "max_tokens": 300, "temperature": 0},
                  timeout=0.3)
    assert _wait_idle(server) == {"waiting": 0, "running": 0, "capacity": 2}
    ok = server.client(max_retries=0).chat.completions.create(
        model="main", messages=[{"role": "user", "content": "Say hi."}], max_tokens=4)
    assert ok.choices[0].message.content
    assert server.metric("synapse_errors_total", status="404", code="model_not_found") >= 45
    assert server.metric("synapse_errors_total", status="413", code="request_too_large") >= 15
    assert server.metric("synapse_errors_total", status="405") >= 15
    assert server.proc.poll() is None


def test_disconnect_stops_generation(server: Server) -> None:
    """Non-streaming and streaming clients that leave stop their generation early."""
    _wait_idle(server)
    before = len(server.records())
    with pytest.raises(httpx.TimeoutException):
        _post(server, "/v1/completions", {"model": "main", "prompt": "Once upon a time",
                                          "max_tokens": 400, "temperature": 0}, timeout=1.0)
    c = server.client(max_retries=0)
    stream = c.chat.completions.create(model="main", messages=PROMPT, max_tokens=400,
                                       temperature=0, stream=True)
    got = 0
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            got += 1
            if got == 3:
                break
    stream.close()
    assert _wait_idle(server, timeout=30)["running"] == 0
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and len(server.records()) < before + 2:
        time.sleep(0.1)
    left = server.records()[before:]
    assert [r["finish_reason"] for r in left] == ["cancelled", "cancelled"], left
    assert all(r["tokens_out"] < 200 for r in left), [r["tokens_out"] for r in left]
    assert server.metric("synapse_cancelled_total", how="disconnect", stage="running") >= 2


def test_big_body_is_refused_without_blocking(server: Server) -> None:
    started = time.perf_counter()
    r = httpx.post(f"{server.url}/v1/chat/completions", timeout=30,
                   content=b'{"model": "main", "messages": [' + b" " * (12 << 20) + b"]}",
                   headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
    assert time.perf_counter() - started < 10
    assert httpx.get(f"{server.url}/health", timeout=2).status_code == 200


def test_seed_any_int_and_reproducible_sampling(server: Server) -> None:
    c = server.client(max_retries=0)

    def ask(seed: int | None) -> str:
        r = c.completions.create(model="main", prompt="My favourite animal is the",
                                 max_tokens=12, temperature=1.0, seed=seed)
        return r.choices[0].text

    assert ask(-1) is not None and ask(2**40 + 3) is not None
    first, again = ask(1234), ask(1234)
    assert first == again
    assert len({ask(s) for s in (1, 2, 3, 4)}) > 1  # the seed really drives sampling
    r = c.completions.create(model="main", prompt="Hello", max_tokens=2, temperature=0.7,
                             seed=-1)
    assert r.model_extra["synapse"]["seed"] not in (None, -1)  # type: ignore[index]


def test_stop_strings(server: Server) -> None:
    c = server.client(max_retries=0)
    base = c.completions.create(model="main", prompt="The days of the week are Monday,",
                                max_tokens=24, temperature=0).choices[0].text
    words = base.split()
    assert len(words) >= 4, base
    stop = words[2]
    cut = c.completions.create(model="main", prompt="The days of the week are Monday,",
                               max_tokens=24, temperature=0, stop=[stop, "zzz"])
    assert cut.choices[0].finish_reason == "stop"
    assert cut.choices[0].text == base[:base.index(stop)]


def test_response_format_json_schema_and_object(server: Server) -> None:
    c = server.client(max_retries=0)
    schema = {"type": "object", "properties": {"answer": {"type": "string",
                                                          "enum": ["yes", "no"]}},
              "required": ["answer"]}
    r = c.chat.completions.create(
        model="main", max_tokens=32, temperature=0,
        messages=[{"role": "user", "content": "Is the sky blue? Answer in JSON."}],
        response_format={"type": "json_schema", "json_schema": {"name": "a", "schema": schema}})
    assert json.loads(r.choices[0].message.content or "")["answer"] in ("yes", "no")
    r = c.chat.completions.create(
        model="main", max_tokens=12, temperature=0, response_format={"type": "json_object"},
        messages=[{"role": "user", "content": "Give a JSON object with a name and an age."}])
    text = (r.choices[0].message.content or "").strip()
    assert text.startswith("{"), text  # free text would start "```json" or "Here"
    if r.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(text), dict)
    with pytest.raises(openai.BadRequestError, match="json_schema"):
        c.chat.completions.create(model="main", max_tokens=4, messages=PROMPT,
                                  response_format={"type": "json_schema", "json_schema": {}})


def test_logprobs(server: Server) -> None:
    c = server.client(max_retries=0)
    r = c.chat.completions.create(model="main", messages=PROMPT, max_tokens=6, temperature=0,
                                  logprobs=True, top_logprobs=3)
    assert r.choices[0].logprobs is not None and r.usage is not None
    content = r.choices[0].logprobs.content or []
    assert len(content) == r.usage.completion_tokens
    assert "".join(t.token for t in content) == r.choices[0].message.content
    for t in content:
        assert len(t.top_logprobs) == 3 and t.logprob <= 0
        lps = [x.logprob for x in t.top_logprobs]
        assert lps == sorted(lps, reverse=True)
        assert t.top_logprobs[0].token == t.token and t.logprob == pytest.approx(lps[0])
    comp = c.completions.create(model="main", prompt="One, two,", max_tokens=4, temperature=0,
                                logprobs=2)
    lp = comp.choices[0].logprobs
    assert lp is not None and len(lp.tokens or []) == len(lp.token_logprobs or []) >= 1
    assert all(len(d) == 2 for d in lp.top_logprobs or [])


def test_openai_surface_refusals(server: Server) -> None:
    c = server.client(max_retries=0)
    with pytest.raises(openai.BadRequestError, match="tool"):
        c.chat.completions.create(model="main", messages=PROMPT, max_tokens=4, tools=[
            {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}])
    with pytest.raises(openai.NotFoundError) as err:
        c.models.retrieve("nothing")  # GET /v1/models/nothing is not a route here
    assert err.value.body["code"] == "not_found"  # type: ignore[index]
    r = httpx.post(f"{server.url}/v1/completions", json={"model": "main", "prompt": "x",
                                                         "echo": True})
    assert r.status_code == 400 and r.json()["error"]["param"] == "echo"


def test_session_history_is_trimmed_to_the_context(server: Server) -> None:
    c = server.client(max_retries=0)
    filler = "Here is some context about my garden, my roses and my apple trees. " * 18
    sizes = []
    for turn in range(3):  # ~290 tokens a turn: two turns no longer fit in 512
        r = c.chat.completions.create(
            model="main", max_tokens=4, temperature=0, extra_body={"session_id": "long"},
            messages=[{"role": "user", "content": f"Turn {turn}. {filler}"}])
        assert r.usage is not None and r.usage.prompt_tokens + 4 <= 512
        sizes.append(r.usage.prompt_tokens)
    assert sizes[1] < 2 * sizes[0] and sizes[2] < 2 * sizes[0]  # the oldest turns went
    history = httpx.get(f"{server.url}/v1/sessions/long").json()["messages"]
    assert len(history) == 6  # the session itself keeps everything


def test_metrics_resolve_fast_waits_and_name_the_model(server: Server) -> None:
    text = httpx.get(f"{server.url}/metrics").text
    assert 'synapse_time_to_first_token_seconds_bucket{le="0.005",tier="explicit"}' in text
    assert 'synapse_queue_time_seconds_bucket{le="0.01"}' in text
    assert "synapse_model_info{" in text and 'quantization="Q4_K_M"' in text
    assert "process_resident_memory_bytes" in text
    assert server.metric("synapse_errors_total", code="unsupported_parameter") >= 1


def test_concurrent_streams_interleave_and_equal_solo_greedy(
        server: Server, small_model: tuple[Path, str]) -> None:
    """Eight streams decode together (parallel 8; decode batches of 4 + 4 rows): every
    stream's first token arrives before any stream ends, and each stream's greedy text
    equals plain single-sequence greedy decoding of its prompt by llama-cpp-python with
    the same (batch-invariant) settings."""
    from synapse_os.profile.model import LlamaSettings
    from synapse_os.runtime.config import ModelConfig
    from synapse_os.runtime.engine import llama_kwargs, open_llama

    prompts = ["The capital of France is", "def fibonacci(n):", "Water boils at",
               "My favourite season is", "Once upon a time", "The best way to learn",
               "In 1969, astronauts", "import numpy as np\n"]
    tokens = 24
    c = server.client(max_retries=0)
    first: dict[int, float] = {}
    last: dict[int, float] = {}
    texts: dict[int, str] = {}

    def run(i: int) -> None:
        parts = []
        for chunk in c.completions.create(model="main", prompt=prompts[i], max_tokens=tokens,
                                          temperature=0, stream=True):
            if chunk.choices and chunk.choices[0].text:
                first.setdefault(i, time.perf_counter())
                parts.append(chunk.choices[0].text)
        last[i] = time.perf_counter()
        texts[i] = "".join(parts)

    _wait_idle(server)
    with concurrent.futures.ThreadPoolExecutor(len(prompts)) as pool:
        list(pool.map(run, range(len(prompts))))
    assert max(first.values()) < min(last.values()), (first, last)

    model, _ = small_model
    raw = open_llama(llama_kwargs(ModelConfig(path=str(model), context=512), 1, 512, 42,
                                  LlamaSettings.exact()),
                     repack=False)
    try:
        for i, prompt in enumerate(prompts):
            ids = raw.tokenize(prompt.encode(), add_bos=True, special=True)
            expected: list[int] = []
            for tok in raw.generate(ids, temp=0.0, top_k=1):
                if raw._model.token_get_text(tok) in ("<eos>", "<end_of_turn>") or len(
                        expected) >= tokens:
                    break
                expected.append(tok)
            assert texts[i] == raw.detokenize(expected).decode(), (prompt, texts[i])
    finally:
        raw.close()


QUOTE = ("The committee met on Tuesday to review the budget for the new library, the park "
         "renovation and the bus routes that serve the northern district.")


def test_prompt_lookup_drafts_from_the_prompt_in_batches_without_changing_output(
        server: Server) -> None:
    """Four concurrent requests asked to repeat a sentence: with prompt lookup their decode
    rows verify tokens proposed from their own prompts (accepted where the answer quotes
    it), and each answer equals the same request's answer without speculation."""
    c = server.client(max_retries=0)
    prompts = [f"Repeat this sentence exactly, word for word: {QUOTE[i:]}\nRepeated: "
               for i in (0, 4, 8, 12)]

    def run(args: tuple[str, bool]) -> str:
        prompt, speculative = args
        r = c.completions.create(model="main", prompt=prompt, max_tokens=32, temperature=0,
                                 extra_body={"synapse": {"speculative": speculative}})
        return r.choices[0].text

    _wait_idle(server)
    before = len(server.records())
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        drafted = list(pool.map(run, [(p, True) for p in prompts]))
    spec = [r["speculative"] for r in server.records()[before:]]
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        plain = list(pool.map(run, [(p, False) for p in prompts]))
    assert drafted == plain
    assert all(s["used"] and s["kind"] == "lookup" for s in spec), spec
    assert sum(s["accepted"] for s in spec) >= 16, spec  # the quoted words came from lookup
    assert not any(r["speculative"]["used"] for r in server.records()[before + 4:])


def test_session_next_turn_reuses_the_cached_prompt_without_changing_output(
        server: Server) -> None:
    c = server.client(max_retries=0)
    out = {}
    for cache in (True, False):
        extra = {"session_id": f"reuse-{cache}", "synapse": {"cache": cache}}
        c.chat.completions.create(model="main", max_tokens=8, temperature=0, extra_body=extra,
                                  messages=[{"role": "user", "content": "Tell me about cats."}])
        r = c.chat.completions.create(model="main", max_tokens=12, temperature=0,
                                      extra_body=extra,
                                      messages=[{"role": "user", "content": "Why is that?"}])
        assert r.usage is not None and r.usage.prompt_tokens_details is not None
        out[cache] = (r.choices[0].message.content, r.usage.prompt_tokens_details.cached_tokens)
    assert out[True][1] and out[True][1] >= 10  # the first turn's prompt was not read again
    assert out[False][1] == 0
    assert out[True][0] == out[False][0]
