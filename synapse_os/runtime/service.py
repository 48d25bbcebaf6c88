"""The runtime core, without HTTP: models by role, routing, generation, swaps, sessions.

All generation runs on one thread (the models share the machine's cores). With
`parallel` > 1 requests are decoded together by continuous batching (batching.py);
deterministic mode, parallel 1 and explicitly requested speculation run one request
at a time on the model's own single-sequence context (the exact path).
Admission hands out a `Ticket` (queue place + model reference) that exactly one owner
releases. Requests hold a reference to the model they were admitted
on, so a hot swap never pulls a model out from under a running request: the old model
is closed when its last user releases it.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from synapse_os import __version__
from synapse_os.errors import OperationError, UserError
from synapse_os.revision import revision_label
from synapse_os.runtime.config import ModelConfig, Role, RuntimeConfig, Tier
from synapse_os.runtime.engine import (
    MAX_INVARIANT_BATCH,
    LoadedModel,
    check_same_vocabulary,
    load_model,
)
from synapse_os.runtime.generation import GenerationState, Sampling, generate
from synapse_os.runtime.metrics import Metrics
from synapse_os.runtime.provenance import (
    SCHEMA,
    ProvenanceWriter,
    environment,
)
from synapse_os.runtime.router import Decision
from synapse_os.runtime.textstream import TextStream

log = logging.getLogger("synapse.runtime")
TIER_ROLE: dict[str, str] = {"trivial": "small", "moderate": "main", "high": "main"}


class RequestError(Exception):
    """A request the service refuses: HTTP status, OpenAI error type and code, one sentence."""

    def __init__(self, status: int, message: str, code: str, param: str | None = None,
                 retry_after: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.retry_after = retry_after


class Ticket:
    """Everything admission took for one request: its queue place and the model it uses.

    One owner holds it from admission to the end of the request; `release()` is the only
    way back and is idempotent, so every exit (answer, refusal, disconnect, crash) ends in
    the same call.
    """

    def __init__(self, service: Service) -> None:
        self.service = service
        self.stage = "waiting"  # -> "running" -> "released"
        self.model: LoadedModel | None = None

    def bind(self, role: str) -> LoadedModel:
        """Take a reference on the model serving `role` (404 when none is loaded)."""
        if self.model is not None:
            raise RuntimeError("a ticket holds one model")
        self.model = self.service.acquire(role)
        return self.model

    def start(self) -> None:
        self.service._move(self, "running")

    def release(self) -> None:
        self.service._move(self, "released")


@dataclass
class Job:
    """One admitted request, from routing to its provenance record."""

    endpoint: str
    prompt: str
    add_bos: bool
    stop: tuple[str, ...]
    sampling: Sampling
    model: LoadedModel
    decision: Decision | None
    expected_tier: str | None
    speculative: bool | None
    reuse_cache: bool
    stream: bool
    session_id: str | None
    prompt_tokens: list[int] = field(default_factory=list)
    ticket: Ticket | None = None
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    created: float = field(default_factory=time.time)
    t_admitted: float = field(default_factory=time.perf_counter)
    t_started: float | None = None
    t_first: float | None = None
    t_done: float | None = None
    state: GenerationState = field(default_factory=GenerationState)
    used_speculation: bool = False
    text: str = ""
    error: str | None = None

    @property
    def tier(self) -> str:
        return self.decision.tier if self.decision else "explicit"


class SpecController:
    """Per-tier on/off for speculation, judged by measured decode speed.

    Every `probe_every`-th eligible request of a tier runs in the mode that is currently
    off, so both speeds stay measured; the faster mean of the last 5 samples wins.
    """

    def __init__(self, enabled: bool, auto_off: bool, probe_every: int, min_samples: int) -> None:
        self.enabled = enabled
        self.auto_off = auto_off
        self.probe_every = probe_every
        self.min_samples = min_samples
        self.on: dict[str, bool] = {}
        self.count: dict[str, int] = {}
        self.speed: dict[tuple[str, bool], deque[float]] = {}
        self._lock = threading.Lock()

    def state(self, tier: str) -> bool:
        return self.enabled and self.on.get(tier, True)

    def choose(self, tier: str) -> bool:
        if not self.enabled:
            return False
        with self._lock:
            n = self.count[tier] = self.count.get(tier, 0) + 1
            current = self.on.get(tier, True)
            if self.auto_off and n % self.probe_every == 0:
                return not current
            return current

    def record(self, tier: str, speculative: bool, tokens: int, seconds: float) -> None:
        if not self.enabled or tokens < 4 or seconds <= 0:
            return
        with self._lock:
            self.speed.setdefault((tier, speculative), deque(maxlen=5)).append(tokens / seconds)
            on, off = self.speed.get((tier, True)), self.speed.get((tier, False))
            if self.auto_off and on and off and min(len(on), len(off)) >= self.min_samples:
                self.on[tier] = sum(on) / len(on) >= sum(off) / len(off)


class Service:
    def __init__(self, config: RuntimeConfig, provenance_path: str | None = None) -> None:
        self.config = config
        self.metrics = Metrics()
        self.metrics.queue_capacity.set(config.queue_size)
        self.threads = config.resolved_threads()
        self.models: dict[str, LoadedModel] = {}
        self.ready = False
        self.load_error: str | None = None
        self._models_lock = threading.Lock()
        self._swap_lock = threading.Lock()
        self.sessions: OrderedDict[str, list[dict[str, Any]]] = OrderedDict()
        self._sessions_lock = threading.Lock()
        self.spec = SpecController(config.speculative.enabled or config.speculative.lookup,
                                   config.speculative.auto_off,
                                   config.speculative.probe_every,
                                   config.speculative.min_samples)
        prov = config.provenance
        from pathlib import Path

        self.provenance = ProvenanceWriter(
            Path(provenance_path or prov.path), prov.fsync_interval_s, prov.max_bytes, prov.keep
        )
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="generate")
        self.waiting = 0
        self.running = 0
        self._admission_lock = threading.Lock()
        self._loop_lock = threading.Lock()
        self._loop_running = False
        self._active: set[Any] = set()
        self._exclusive = 0
        self.recent_latency: deque[float] = deque(maxlen=20)

    # -- models -----------------------------------------------------------------
    def check_files(self) -> None:
        """sha256 of every model before anything loads (mismatch: UserError)."""
        from synapse_os.runtime.engine import check_file

        for role, cfg in self.config.models.items():
            check_file(role, cfg)

    def _load(self, role: str, cfg: ModelConfig) -> LoadedModel:
        model = load_model(role, cfg, self.threads, self.config.batch, self.config.seed,
                           self.config.llama_settings, self.config.mlock)
        if self.batching:
            from synapse_os.runtime.batching import Batcher

            try:
                model.batcher = Batcher(
                    model, self.config.parallel, cfg.context, self.config.batch, self.start,
                    MAX_INVARIANT_BATCH if self.config.batch_invariant else None,
                    self.lookup_tokens)
            except (ValueError, RuntimeError) as exc:
                model.close()
                raise OperationError(f"model '{role}': llama.cpp could not make a context of "
                                     f"{self.config.parallel} sequences: {exc}") from None
        return model

    @property
    def slots(self) -> int:
        """Requests that run at once: `parallel` with batching, else one."""
        return self.config.parallel if self.batching else 1

    @property
    def batching(self) -> bool:
        """Continuous batching is on with parallel > 1, except in deterministic mode."""
        return self.config.parallel > 1 and not self.config.deterministic

    # -- continuous batching (batching.py): one loop on the generation thread ----------
    def batcher_for(self, job: Job) -> Any:
        """The batcher that runs this job, or None for the exclusive single-sequence path
        (deterministic mode, explicitly requested speculation, parallel 1)."""
        batcher = job.model.batcher
        if batcher is None:
            return None
        if job.speculative and job.sampling.plain_greedy and job.sampling.logprobs is None \
                and "draft" in self.models and job.model.info.role != "draft":
            return None
        return batcher

    def lookup_tokens(self, job: Job) -> int:
        """Draft tokens of prompt lookup for a batched job: the configured k where it is on
        for the job's tier (or asked for), plain greedy and without logprobs; else 0."""
        cfg = self.config.speculative
        if not cfg.lookup or not job.sampling.plain_greedy or job.sampling.logprobs is not None:
            return 0
        job.used_speculation = (job.speculative if job.speculative is not None
                                else self.spec.choose(job.tier))
        job.state.spec.kind = "lookup"
        return cfg.draft_tokens if job.used_speculation else 0

    def submit_batched(self, batcher: Any, job: Job, emit: Callable[[str, int], None],
                       done: Callable[[], None]) -> None:
        with self._loop_lock:
            batcher.submit(job, emit, done)
            self._active.add(batcher)
        self.kick()

    def kick(self) -> None:
        with self._loop_lock:
            if self._loop_running or not any(b.has_work() for b in self._active):
                return
            self._loop_running = True
        self.executor.submit(self._batch_loop)

    def exclusive(self, delta: int) -> None:
        """An exclusive job waits (+1) or is done (-1): batching stops taking new requests
        while one waits, so that it runs as soon as the running ones finish."""
        with self._loop_lock:
            self._exclusive += delta
        if delta < 0:
            self.kick()

    def _batch_loop(self) -> None:
        try:
            while True:
                with self._loop_lock:
                    batchers = list(self._active)
                    hold = self._exclusive > 0
                busy = False
                for b in batchers:
                    b.admit_new = not hold
                    busy = b.step() or busy
                if busy:
                    continue
                with self._loop_lock:
                    for b in list(self._active):
                        if not b.has_work():
                            self._active.discard(b)
                    if hold or not self._active:
                        self._loop_running = False
                        return
        except BaseException:
            log.exception("the batching loop failed")
            with self._loop_lock:
                self._loop_running = False
            raise

    def load_all(self) -> None:
        try:
            loaded: dict[str, LoadedModel] = {}
            for role, cfg in self.config.models.items():
                loaded[role] = self._load(role, cfg)
            if "draft" in loaded:
                for role in ("main", "small"):
                    if role in loaded:
                        check_same_vocabulary(loaded[role], loaded["draft"])
            with self._models_lock:
                self.models = loaded
            for model in loaded.values():
                self._publish(model)
            for tier in ("trivial", "moderate", "high"):
                self.metrics.spec_enabled.labels(tier).set(int(self.spec.state(tier)))
            self.ready = True
            self.metrics.ready.set(1)
        except (UserError, OperationError) as exc:
            self.load_error = str(exc)
            log.error("loading models failed: %s", exc)
            raise

    def _publish(self, model: LoadedModel) -> None:
        i = model.info
        self.metrics.model_loaded.labels(i.role, i.path, i.sha256, i.quantization,
                                         str(i.load_id)).set(1)
        self.metrics.model_info.labels(i.role, i.path, i.sha256, i.quantization, i.description,
                                       str(i.load_id)).set(1)
        self._publish_weights()
        self.metrics.model_memory.labels(i.role, "context").set(model.context_bytes())
        self.metrics.model_gpu_layers.labels(i.role).set(self.config.models[i.role].gpu_layers
                                                         if i.role in self.config.models else 0)

    def _publish_weights(self) -> None:
        """Weights are mmap'd: roles that load the same file share its pages, so the file is
        counted once (on the first role in main, small, draft order) and 0 on the others."""
        with self._models_lock:
            models = dict(self.models)
        seen: set[str] = set()
        for role in sorted(models, key=lambda r: ("main", "small", "draft").index(r)):
            info = models[role].info
            shared = info.sha256 in seen
            seen.add(info.sha256)
            self.metrics.model_memory.labels(role, "weights").set(
                0 if shared else info.weights_bytes)

    def acquire(self, role: str) -> LoadedModel:
        with self._models_lock:
            if role not in self.models:
                raise RequestError(404, f"no '{role}' model is configured on this server",
                                   "model_not_found", "model")
            model = self.models[role]
            model.users += 1
            return model

    def release(self, model: LoadedModel) -> None:
        with self._models_lock:
            model.users -= 1
            close = model.retired and model.users == 0
        if close:
            log.info("unloading retired %s model %s", model.info.role, model.info.path)
            model.close()

    def swap(self, role: Role, path: str, sha256: str | None) -> dict[str, Any]:
        """Load and verify a new model beside the old one, then switch atomically."""
        if role not in ("main", "small", "draft"):
            raise UserError(f"role {role!r} is not one of main, small, draft")
        with self._swap_lock:
            old_cfg = self.config.models.get(role)
            cfg = ModelConfig(path=path, sha256=sha256,
                              context=old_cfg.context if old_cfg else 4096,
                              gpu_layers=old_cfg.gpu_layers if old_cfg else 0)
            new: LoadedModel | None = None
            try:
                new = self._load(role, cfg)
                with self._models_lock:
                    others = dict(self.models)
                partners = ([others[r] for r in ("main", "small") if r in others]
                            if role == "draft" else
                            [others["draft"]] if "draft" in others else [])
                for partner in partners:
                    check_same_vocabulary(new, partner)
                # a smoke decode proves the model runs before it takes traffic
                new.prefill(new.tokenize("Hello"), reuse=False)
                new.truncate(0)
            except (UserError, OperationError):
                self.metrics.swaps.labels(role, "refused").inc()
                if new is not None:
                    new.close()
                raise
            with self._models_lock:
                old = self.models.get(role)
                self.models[role] = new
                models = dict(self.config.models)
                models[role] = cfg.model_copy(update={"sha256": new.info.sha256})
                self.config = self.config.model_copy(update={"models": models})
                close_now = False
                if old is not None:
                    old.retired = True
                    close_now = old.users == 0
            if old is not None:
                i = old.info
                self.metrics.model_loaded.remove(i.role, i.path, i.sha256, i.quantization,
                                                 str(i.load_id))
                self.metrics.model_info.remove(i.role, i.path, i.sha256, i.quantization,
                                               i.description, str(i.load_id))
                if close_now:
                    old.close()
            self._publish(new)
            self.metrics.swaps.labels(role, "ok").inc()
            return {"role": role, "old": old.info.as_dict() if old else None,
                    "new": new.info.as_dict(), "old_in_use": bool(old and not close_now)}

    def model_triplet(self) -> dict[str, Any]:
        with self._models_lock:
            return {role: {"path": m.info.path, "sha256": m.info.sha256,
                           "quantization": m.info.quantization, "load_id": m.info.load_id}
                    for role, m in self.models.items()}

    # -- sessions -----------------------------------------------------------------
    def history(self, session_id: str) -> list[dict[str, Any]]:
        with self._sessions_lock:
            return list(self.sessions.get(session_id, []))

    def remember(self, session_id: str, messages: list[dict[str, Any]]) -> None:
        with self._sessions_lock:
            self.sessions.setdefault(session_id, []).extend(messages)
            self.sessions.move_to_end(session_id)
            while len(self.sessions) > self.config.max_sessions:
                self.sessions.popitem(last=False)
            self.metrics.sessions.set(len(self.sessions))

    # -- admission --------------------------------------------------------------------
    def admit(self) -> Ticket:
        """A queue place, or 503 (loading / queue full, with Retry-After). Release the ticket."""
        if not self.ready:
            self.metrics.rejected.labels("model_loading").inc()
            raise RequestError(503, "the models are still loading; retry shortly",
                               "model_loading", retry_after=2)
        with self._admission_lock:
            # in flight = waiting + running; a request that will find a free slot does not
            # wait, so the slots come on top of the queue_size places to wait
            if self.waiting + self.running >= self.config.queue_size + self.slots:
                self.metrics.rejected.labels("queue_full").inc()
                per = (sum(self.recent_latency) / len(self.recent_latency)
                       if self.recent_latency else 1.0)
                raise RequestError(
                    503, f"the request queue is full ({self.config.queue_size} waiting); "
                    "retry after the time in Retry-After", "queue_full",
                    retry_after=max(1, round(per * (self.waiting + 1) / self.slots)))
            self.waiting += 1
            self._depth()
        return Ticket(self)

    def _move(self, ticket: Ticket, stage: str) -> None:
        model = None
        with self._admission_lock:
            if ticket.stage == "released" or ticket.stage == stage:
                return
            if ticket.stage == "waiting":
                self.waiting -= 1
            elif ticket.stage == "running":
                self.running -= 1
            if stage == "running":
                self.running += 1
            else:
                model, ticket.model = ticket.model, None
            ticket.stage = stage
            self._depth()
        if model is not None:
            self.release(model)

    def _depth(self) -> None:
        self.metrics.queue_depth.set(self.waiting + self.running)

    def start(self, job: Job) -> None:
        if job.ticket is not None:
            job.ticket.start()
        job.t_started = time.perf_counter()

    # -- generation (runs in a worker thread, one at a time) ----------------------------
    def run(self, job: Job, emit: Callable[[str, int], None]) -> None:
        model = job.model
        draft: LoadedModel | None = None
        use_spec = False
        if job.sampling.plain_greedy and job.sampling.logprobs is None \
                and model.info.role != "draft":
            use_spec = (job.speculative if job.speculative is not None
                        else self.spec.choose(job.tier))
            if use_spec:
                with self._models_lock:
                    draft = self.models.get("draft")
                use_spec = draft is not None
        job.used_speculation = use_spec
        text = TextStream(job.stop)
        try:
            for token in generate(model, job.prompt_tokens, job.sampling, job.state,
                                  draft=draft if use_spec else None,
                                  draft_tokens=self.config.speculative.draft_tokens,
                                  reuse_cache=job.reuse_cache):
                if job.t_first is None:
                    job.t_first = time.perf_counter()
                delta = text.feed(model.piece(token))
                if delta:
                    emit(delta, len(job.state.tokens))
                if text.stopped:
                    job.state.finish_reason = "stop"
                    break
            tail = text.finish()
            if tail:
                emit(tail, len(job.state.tokens))
        except Exception as exc:  # the process must survive whatever one request does
            log.exception("generation failed for request %s", job.request_id)
            job.error = f"generation failed: {exc}"
            model.truncate(0)
            if draft is not None:
                draft.truncate(0)
        finally:
            job.text = text.text
            job.t_done = time.perf_counter()
            if job.t_first is None:
                job.t_first = job.t_done

    def finish(self, job: Job) -> dict[str, Any]:
        """Account for a finished job: metrics, speculation stats, provenance record."""
        assert job.t_started is not None and job.t_done is not None and job.t_first is not None
        tier = job.tier
        role = job.model.info.role
        latency = job.t_done - job.t_admitted
        tokens_out = len(job.state.tokens)
        status = "error" if job.error else "ok"
        self.recent_latency.append(job.t_done - job.t_started)
        m = self.metrics
        m.requests.labels(job.endpoint, tier, role, status).inc()
        m.tier_requests.labels(tier, "auto" if job.decision else "explicit").inc()
        m.tokens.labels("in", tier, role).inc(len(job.prompt_tokens))
        m.tokens.labels("out", tier, role).inc(tokens_out)
        m.latency.labels(tier).observe(latency)
        m.ttft.labels(tier).observe(job.t_first - job.t_admitted)
        m.queue_time.observe(job.t_started - job.t_admitted)
        spec = job.state.spec
        if job.used_speculation:
            m.spec_proposed.labels(tier).inc(spec.proposed)
            m.spec_accepted.labels(tier).inc(spec.accepted)
        if job.speculative is None and job.sampling.plain_greedy and not job.error:
            self.spec.record(tier, job.used_speculation, tokens_out, job.t_done - job.t_first)
            m.spec_enabled.labels(tier).set(int(self.spec.state(tier)))
        record = self.record(job, latency)
        self.provenance.write(record)
        return record

    def record(self, job: Job, latency: float) -> dict[str, Any]:
        assert job.t_started is not None and job.t_first is not None
        spec = job.state.spec
        digest = hashlib.sha256(",".join(map(str, job.state.tokens)).encode()).hexdigest()
        return {
            "schema": SCHEMA,
            "time": job.created,
            "request_id": job.request_id,
            "endpoint": job.endpoint,
            "status": "error" if job.error else "ok",
            "error": job.error,
            "tier": job.tier,
            "expected_tier": job.expected_tier,
            "router_confidence": job.decision.confidence if job.decision else None,
            "router_score": job.decision.score if job.decision else None,
            "router_features": job.decision.features if job.decision else None,
            "router_ms": job.decision.elapsed_s * 1000 if job.decision else None,
            "routed": job.decision is not None,
            "model_role": job.model.info.role,
            "model": job.model.info.as_dict(),
            "models": self.model_triplet(),
            "sampling": {
                "temperature": job.sampling.temperature, "top_p": job.sampling.top_p,
                "top_k": job.sampling.top_k, "min_p": job.sampling.min_p,
                "repeat_penalty": job.sampling.repeat_penalty,
                "presence_penalty": job.sampling.presence_penalty,
                "frequency_penalty": job.sampling.frequency_penalty,
                "max_tokens": job.sampling.max_tokens,
                "seed": job.state.seed if job.state.seed is not None else job.sampling.seed,
                "grammar": job.sampling.grammar is not None,
                "logprobs": job.sampling.logprobs, "stop": list(job.stop),
            },
            "execution_mode": "real",
            "deterministic": self.config.deterministic,
            "prompt_cache_reuse": job.reuse_cache,
            "cached_tokens": job.state.cached_tokens,
            "environment": environment(),
            "git_revision": revision_label(),
            "synapse_version": __version__,
            "threads": self.threads,
            "speculative": {
                "used": job.used_speculation,
                "kind": spec.kind,
                "draft_tokens": self.config.speculative.draft_tokens,
                "proposed": spec.proposed,
                "accepted": spec.accepted,
                "accept_rate": spec.accept_rate,
            },
            "queue_ms": (job.t_started - job.t_admitted) * 1000,
            "ttft_ms": (job.t_first - job.t_admitted) * 1000,
            "latency_ms": latency * 1000,
            "tokens_in": len(job.prompt_tokens),
            "tokens_out": len(job.state.tokens),
            "finish_reason": job.state.finish_reason,
            "token_hash": digest,
            "session_id": job.session_id,
            "stream": job.stream,
        }

    def default_max_tokens(self, tier: Tier | None, endpoint: str) -> int | None:
        if tier is None:
            return 16 if endpoint == "completions" else None
        return self.config.router.default_max_tokens.get(tier)

    def close(self) -> None:
        self.executor.shutdown(wait=True)
        self.provenance.close()
        with self._models_lock:
            models = list(self.models.values())
            self.models = {}
        for model in models:
            model.close()
