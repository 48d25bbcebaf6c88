"""The HTTP face of the runtime: OpenAI-compatible endpoints, /health, /metrics, admin.

Request extensions (all optional, ignored by other servers):
  body "session_id" or header "X-Session-Id": keep the conversation server-side;
  body "synapse": {"expected_tier": ..., "speculative": true|false, "cache": true|false}.
Every response carries a "synapse" object with the routing decision and timings.

Each request: body read (413 past 1 MiB) and validated, then admitted (503 + Retry-After
when the queue is full); from there one task owns it (routing, templating and
tokenising in a worker thread, generation, its record) and gives its queue place back
in one `finally`. A client that disconnects, streaming or not, stops its generation at
the next token or leaves the queue. Parameters that cannot be honoured (tools, echo,
suffix, n > 1, unusable response_format) are refused with 400, never ignored.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, Literal

import anyio
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from starlette.exceptions import HTTPException as StarletteHTTPException

from synapse_os.errors import OperationError, UserError
from synapse_os.runtime.config import Tier
from synapse_os.runtime.generation import Sampling
from synapse_os.runtime.prompting import format_chat
from synapse_os.runtime.router import Decision, classify_messages, classify_text
from synapse_os.runtime.service import TIER_ROLE, Job, RequestError, Service, Ticket

log = logging.getLogger("synapse.runtime.http")
LOOPBACK = {"127.0.0.1", "::1", "localhost"}
ROLES = ("main", "small", "draft")


MAX_BODY_BYTES = 1 << 20  # a request body larger than this is refused (413), never parsed
MAX_DRAIN_BYTES = 32 << 20
MAX_STOP = 16
MAX_TOP_LOGPROBS = 20


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="allow")


class Message(_Lenient):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[dict[str, Any]] | None = None


class Extension(BaseModel):
    model_config = ConfigDict(extra="forbid")
    expected_tier: Tier | None = None
    speculative: bool | None = None
    cache: bool | None = None


class _Common(_Lenient):
    model: str = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = Field(0, ge=0)
    min_p: float = Field(0.0, ge=0.0, le=1.0)
    repeat_penalty: float = Field(1.0, gt=0.0, le=10.0)
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    seed: int | None = None
    stream: bool = False
    stop: str | list[str] | None = None
    n: int = Field(1, ge=1, le=1)
    response_format: dict[str, Any] | None = None
    session_id: str | None = Field(None, max_length=200)
    synapse: Extension | None = None

    @field_validator("stop")
    @classmethod
    def _stop(cls, v: str | list[str] | None) -> str | list[str] | None:
        if isinstance(v, list) and len(v) > MAX_STOP:
            raise ValueError(f"at most {MAX_STOP} stop strings")
        return v


class ChatRequest(_Common):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    tools: list[Any] | None = None
    tool_choice: Any = None
    functions: list[Any] | None = None
    function_call: Any = None


class CompletionRequest(_Common):
    prompt: str | list[str]
    logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = Field(None, ge=1, le=1)


def _error(status: int, message: str, code: str, param: str | None = None,
           retry_after: int | None = None) -> JSONResponse:
    kind = "invalid_request_error" if status < 500 else "server_error"
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
    return JSONResponse(
        {"error": {"message": message, "type": kind, "param": param, "code": code}},
        status_code=status, headers=headers,
    )


def _validation_message(exc: ValidationError) -> tuple[str, str]:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"]) or "body"
    return f"invalid request: {where}: {err['msg']}", where


async def _read_body(request: Request) -> bytes:
    """The body, at most MAX_BODY_BYTES of it; a larger one is refused with 413.

    Past the limit the rest is read and dropped (up to MAX_DRAIN_BYTES) so that the client,
    still sending, reads the 413 instead of a reset connection; nothing is kept or parsed.
    """
    too_large = RequestError(413, f"the request body exceeds {MAX_BODY_BYTES} bytes",
                             "request_too_large")
    length = request.headers.get("content-length", "")
    declared = int(length) if length.isdigit() else None
    chunks: list[bytes] = []
    total = 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > MAX_BODY_BYTES or (declared or 0) > MAX_BODY_BYTES:
            chunks.clear()
            if total > MAX_DRAIN_BYTES:
                raise too_large
            continue
        chunks.append(chunk)
    if total > MAX_BODY_BYTES or (declared or 0) > MAX_BODY_BYTES:
        raise too_large
    return b"".join(chunks)


async def _parse(request: Request, model: type[BaseModel]) -> Any:
    raw = await _read_body(request)
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
        raise RequestError(400, "the request body is not valid JSON (UTF-8)",
                           "invalid_json") from None
    if not isinstance(body, dict):
        raise RequestError(400, "the request body must be a JSON object", "invalid_request")
    try:  # lone surrogates (\ud800) parse as JSON but are not text
        json.dumps(body, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise RequestError(400, "the request contains text that is not valid Unicode "
                           "(a lone surrogate escape such as \\ud800)", "invalid_text") from None
    except RecursionError:
        raise RequestError(400, "the request body is nested too deeply",
                           "invalid_json") from None
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        message, where = _validation_message(exc)
        raise RequestError(400, message, "invalid_request", where) from None


def _unsupported(param: str, what: str) -> RequestError:
    return RequestError(400, f"{what} is not supported by this server", "unsupported_parameter",
                        param)


def grammar_for(response_format: dict[str, Any] | None) -> str | None:
    """response_format -> a GBNF grammar for llama.cpp (None: free text); 400 otherwise."""
    if response_format is None:
        return None
    kind = response_format.get("type")
    if kind == "text":
        return None
    from llama_cpp.llama_grammar import JSON_GBNF, json_schema_to_gbnf

    if kind == "json_object":
        return JSON_GBNF
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if not isinstance(schema, dict):
            raise RequestError(400, "response_format.json_schema.schema must be a JSON schema "
                               "object", "invalid_request", "response_format")
        try:
            return str(json_schema_to_gbnf(json.dumps(schema)))
        except Exception as exc:  # the converter raises whatever it meets
            raise RequestError(400, f"response_format.json_schema: this schema cannot be turned "
                               f"into a grammar ({exc})", "invalid_request",
                               "response_format") from None
    raise RequestError(400, f"response_format.type {kind!r} is not one of text, json_object, "
                       "json_schema", "invalid_request", "response_format")


def check_grammar(model: Any, grammar: str) -> None:
    import llama_cpp

    sampler = llama_cpp.llama_sampler_init_grammar(model.llm._model.vocab,
                                                   grammar.encode("utf-8"), b"root")
    if not sampler:
        raise RequestError(400, "response_format: llama.cpp could not parse the grammar made "
                           "from it", "invalid_request", "response_format")
    llama_cpp.llama_sampler_free(sampler)


Emit = Callable[[str, int], None]  # (text delta, tokens generated so far)


class App:
    def __init__(self, service: Service) -> None:
        self.service = service
        self.gen_lock = asyncio.Lock()  # FIFO: the queue
        self.api = FastAPI(title="Synapse runtime")
        self._routes()

    def fail(self, status: int, message: str, code: str, param: str | None = None,
             retry_after: int | None = None) -> JSONResponse:
        """Every error answer goes out here: OpenAI's shape, counted by status and code."""
        self.service.metrics.errors.labels(str(status), code).inc()
        return _error(status, message, code, param, retry_after)

    # -- routing -----------------------------------------------------------------------
    def _route(self, name: str, decide: Callable[[], Decision]) -> tuple[str, Decision | None]:
        svc = self.service
        if name == "auto":
            decision = decide()
            svc.metrics.router_time.observe(decision.elapsed_s)
            role = TIER_ROLE[decision.tier]
            if role not in svc.models:
                role = "main"
            return role, decision
        if name in ROLES:
            return name, None
        for role, model in svc.models.items():
            if name in (model.info.path, model.info.path.rsplit("/", 1)[-1]):
                return role, None
        raise RequestError(404, f"model {name!r} does not exist here; use 'auto', "
                           f"one of {', '.join(sorted(svc.models))}, or a file name "
                           "listed by /v1/models", "model_not_found", "model")

    def _build(self, ticket: Ticket, endpoint: str, req: _Common,
               prompt_for: Callable[[Any, Decision | None, int], tuple[str, tuple[str, ...], bool]],
               decide: Callable[[], Decision], session_id: str | None,
               grammar: str | None, logprobs: int | None) -> Job:
        """Route, take the model, template and tokenise (runs in a worker thread)."""
        svc = self.service
        ext = req.synapse or Extension()
        role, decision = self._route(req.model, decide)
        model = ticket.bind(role)
        if grammar is not None:
            check_grammar(model, grammar)
        asked = getattr(req, "max_completion_tokens", None) or req.max_tokens
        n_ctx = model.n_ctx
        prompt, stop, add_bos = prompt_for(model, decision, asked or 0)
        tokens = model.tokenize(prompt, add_bos=add_bos)
        if len(tokens) >= n_ctx:
            raise RequestError(
                400, f"the prompt is {len(tokens)} tokens but the '{role}' model's context "
                f"is {n_ctx} tokens; shorten the prompt", "context_length_exceeded",
                "messages" if endpoint == "chat" else "prompt")
        room = n_ctx - len(tokens)
        if asked is not None and asked > room:
            raise RequestError(
                400, f"the prompt ({len(tokens)} tokens) plus max_tokens ({asked}) exceeds "
                f"the '{role}' model's context of {n_ctx} tokens", "context_length_exceeded",
                "max_tokens")
        default = svc.default_max_tokens(decision.tier if decision else None, endpoint)
        max_tokens = min(asked or default or room, room)
        user_stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
        det = svc.config.deterministic
        sampling = Sampling(
            temperature=0.0 if det else req.temperature,
            top_p=req.top_p, top_k=req.top_k, min_p=req.min_p,
            repeat_penalty=req.repeat_penalty, presence_penalty=req.presence_penalty,
            frequency_penalty=req.frequency_penalty,
            seed=svc.config.seed if det or req.seed is None else req.seed,
            max_tokens=max_tokens, grammar=grammar, logprobs=logprobs,
        )
        return Job(
            endpoint=endpoint, prompt=prompt, add_bos=add_bos,
            stop=tuple(s for s in user_stop if s) + stop,
            sampling=sampling, model=model, decision=decision,
            expected_tier=ext.expected_tier, speculative=ext.speculative,
            reuse_cache=False if det else (ext.cache if ext.cache is not None else True),
            stream=req.stream, session_id=session_id, prompt_tokens=tokens, ticket=ticket,
        )

    async def _execute(self, job: Job, emit: Emit) -> dict[str, Any]:
        svc = self.service
        batcher = svc.batcher_for(job)
        if batcher is not None:
            return await self._execute_batched(batcher, job, emit)
        svc.exclusive(+1)
        try:
            await self.gen_lock.acquire()
            try:
                if job.state.cancel.is_set():  # the client left while it waited
                    raise asyncio.CancelledError
                svc.start(job)
                # always the same thread: llama.cpp's CPU thread team stays warm and bound to it
                running = asyncio.get_running_loop().run_in_executor(svc.executor, svc.run, job,
                                                                     emit)
                try:
                    await asyncio.shield(running)
                except asyncio.CancelledError:
                    job.state.cancel.set()  # stops at the next token; wait so the lock means idle
                    await asyncio.wait({running})
                    raise
            finally:
                self.gen_lock.release()
        finally:
            svc.exclusive(-1)
        return svc.finish(job)

    async def _execute_batched(self, batcher: Any, job: Job, emit: Emit) -> dict[str, Any]:
        svc = self.service
        loop = asyncio.get_running_loop()
        finished: asyncio.Future[None] = loop.create_future()

        def settle() -> None:
            if not finished.done():
                finished.set_result(None)

        def done() -> None:
            loop.call_soon_threadsafe(settle)

        svc.submit_batched(batcher, job, emit, done)
        try:
            await asyncio.shield(finished)
        except asyncio.CancelledError:
            if not batcher.withdraw(job):  # already decoding: it stops at the next step
                job.state.cancel.set()
                await asyncio.wait({finished})
            raise
        if job.t_started is None:  # dropped from the queue: its client had left
            raise asyncio.CancelledError
        return svc.finish(job)

    async def _work(self, ticket: Ticket, build: Callable[[Ticket], Job],
                    prepared: asyncio.Future[Job], emit: Emit) -> dict[str, Any]:
        """One request from admission to its record. The ticket is released here, only here."""
        try:
            job = await anyio.to_thread.run_sync(build, ticket)
            prepared.set_result(job)
            return await self._execute(job, emit)
        except BaseException as exc:
            if not prepared.done():
                if isinstance(exc, asyncio.CancelledError):
                    prepared.cancel()
                else:
                    prepared.set_exception(exc)
            raise
        finally:
            ticket.release()

    def _abandon(self, job: Job, work: asyncio.Task[Any], how: str) -> None:
        """The client left: stop generating at the next token, or drop it from the queue."""
        if work.done():
            return
        job.state.cancel.set()
        stage = job.ticket.stage if job.ticket else "released"
        self.service.metrics.cancelled.labels(how, stage).inc()
        if stage == "waiting":
            work.cancel()

    @staticmethod
    async def _disconnected(request: Request) -> None:
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                return

    # -- response bodies -------------------------------------------------------------------
    @staticmethod
    def _ext(record: dict[str, Any]) -> dict[str, Any]:
        keys = ("request_id", "tier", "expected_tier", "router_confidence", "routed",
                "model_role", "speculative", "queue_ms", "ttft_ms", "latency_ms",
                "token_hash", "finish_reason", "session_id", "status", "error")
        out = {k: record[k] for k in keys}
        out["model"] = record["model"]
        out["seed"] = record["sampling"]["seed"]
        return out

    @staticmethod
    def _usage(record: dict[str, Any]) -> dict[str, Any]:
        return {"prompt_tokens": record["tokens_in"], "completion_tokens": record["tokens_out"],
                "total_tokens": record["tokens_in"] + record["tokens_out"],
                "prompt_tokens_details": {"cached_tokens": record["cached_tokens"]}}

    @staticmethod
    def _logprobs(endpoint: str, job: Job, start: int, end: int, offset: int = 0
                  ) -> dict[str, Any] | None:
        if job.sampling.logprobs is None:
            return None
        model = job.model
        tokens = job.state.tokens[start:end]
        entries = job.state.logprobs[start:end]

        def text(tok: int) -> tuple[str, list[int]]:
            raw = model.piece(tok)
            return raw.decode("utf-8", errors="replace"), list(raw)

        if endpoint == "chat":
            content = []
            for tok, (lp, top) in zip(tokens, entries, strict=False):
                t, b = text(tok)
                content.append({"token": t, "logprob": lp, "bytes": b, "top_logprobs": [
                    {"token": text(i)[0], "logprob": v, "bytes": text(i)[1]} for i, v in top]})
            return {"content": content}
        out: dict[str, Any] = {"tokens": [], "token_logprobs": [], "top_logprobs": [],
                               "text_offset": []}
        for tok, (lp, top) in zip(tokens, entries, strict=False):
            t = text(tok)[0]
            out["tokens"].append(t)
            out["token_logprobs"].append(lp)
            out["top_logprobs"].append({text(i)[0]: v for i, v in top})
            out["text_offset"].append(offset)
            offset += len(t)
        return out

    async def _serve(self, request: Request, endpoint: str, build: Callable[[Ticket], Job],
                     on_done: Callable[[Job], None] | None = None,
                     full_record: bool = False) -> Response:
        svc = self.service
        ticket = svc.admit()  # a place in the queue: given back by _work, whatever happens
        loop = asyncio.get_running_loop()
        prepared: asyncio.Future[Job] = loop.create_future()
        events: asyncio.Queue[tuple[str, int] | None] = asyncio.Queue()

        def emit(delta: str, count: int) -> None:
            loop.call_soon_threadsafe(events.put_nowait, (delta, count))

        def ended(task: asyncio.Task[Any]) -> None:
            events.put_nowait(None)
            if not task.cancelled():
                task.exception()  # retrieved: it is answered (or logged) elsewhere

        work = asyncio.ensure_future(self._work(ticket, build, prepared, emit))
        work.add_done_callback(ended)
        gone = asyncio.ensure_future(self._disconnected(request))
        try:
            await asyncio.wait({prepared, gone},  # type: ignore[type-var]
                               return_when=asyncio.FIRST_COMPLETED)
            if not prepared.done():  # the client left while the request was being prepared
                work.cancel()
                gone.cancel()
                svc.metrics.cancelled.labels("disconnect", "preparing").inc()
                return Response(status_code=499)
            job = prepared.result()  # a RequestError here answers 4xx
        except BaseException:
            gone.cancel()
            raise
        obj_id = ("chatcmpl-" if endpoint == "chat" else "cmpl-") + job.request_id
        created = int(job.created)
        model_name = job.model.info.role

        def finish_of(job: Job) -> str:
            return "stop" if job.state.finish_reason == "stop" else "length"

        if not job.stream:
            try:
                await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                gone.cancel()
            if not work.done():
                self._abandon(job, work, "disconnect")
                return Response(status_code=499)  # nobody is there to read it
            record = work.result()
            if job.error:
                return self.fail(500, job.error, "generation_failed")
            if on_done:
                on_done(job)
            logprobs = self._logprobs(endpoint, job, 0, len(job.state.tokens))
            if endpoint == "chat":
                choice: dict[str, Any] = {"index": 0, "finish_reason": finish_of(job),
                                          "logprobs": logprobs,
                                          "message": {"role": "assistant", "content": job.text}}
                kind = "chat.completion"
            else:
                choice = {"index": 0, "finish_reason": finish_of(job), "logprobs": logprobs,
                          "text": job.text}
                kind = "text_completion"
            body = {"id": obj_id, "object": kind, "created": created, "model": model_name,
                    "choices": [choice], "usage": self._usage(record),
                    "synapse": self._ext(record)}
            if full_record:  # `X-Provenance: full` (used by `synapse runtime eval`)
                body["synapse_record"] = record
            return JSONResponse(body)

        kind = "chat.completion.chunk" if endpoint == "chat" else "text_completion"
        def left(task: asyncio.Task[None]) -> None:
            if not task.cancelled():
                self._abandon(job, work, "disconnect")

        gone.add_done_callback(left)

        def chunk(delta: str | None, finish: str | None, extra: dict[str, Any] | None = None,
                  logprobs: dict[str, Any] | None = None) -> str:
            if endpoint == "chat":
                choice: dict[str, Any] = {
                    "index": 0, "finish_reason": finish, "logprobs": logprobs,
                    "delta": {} if delta is None else {"content": delta}}
            else:
                choice = {"index": 0, "finish_reason": finish, "logprobs": logprobs,
                          "text": delta or ""}
            body: dict[str, Any] = {"id": obj_id, "object": kind, "created": created,
                                    "model": model_name, "choices": [choice]}
            if extra:
                body.update(extra)
            return f"data: {json.dumps(body)}\n\n"

        async def stream() -> AsyncIterator[str]:
            try:
                if endpoint == "chat":
                    first = json.loads(chunk("", None)[6:])
                    first["choices"][0]["delta"] = {"role": "assistant", "content": ""}
                    yield f"data: {json.dumps(first)}\n\n"
                sent = 0
                offset = 0
                while (item := await events.get()) is not None:
                    delta, count = item
                    yield chunk(delta, None,
                                logprobs=self._logprobs(endpoint, job, sent, count, offset))
                    sent = count
                    offset += len(delta)
                if work.cancelled():
                    return
                exc = work.exception()
                if exc is not None or job.error:
                    message = job.error or f"internal error: {exc}"
                    self.service.metrics.errors.labels("500", "generation_failed").inc()
                    err = {"error": {"message": message, "type": "server_error",
                                     "param": None, "code": "generation_failed"}}
                    yield f"data: {json.dumps(err)}\n\n"
                else:
                    record = work.result()
                    if on_done:
                        on_done(job)
                    yield chunk(None, finish_of(job), {"usage": self._usage(record),
                                                       "synapse": self._ext(record)},
                                logprobs=self._logprobs(endpoint, job, sent,
                                                        len(job.state.tokens), offset))
                yield "data: [DONE]\n\n"
            finally:
                gone.cancel()
                self._abandon(job, work, "disconnect")

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"})

    def _check_model(self, name: str) -> None:
        """Refuse a model that is not here before it takes a queue place (checked again
        when the request is routed: a swap may come in between)."""
        if name == "auto":
            return
        role, _ = self._route(name, lambda: classify_text(""))
        if role not in self.service.models:
            raise RequestError(404, f"no '{role}' model is configured on this server",
                               "model_not_found", "model")

    def _check_chat(self, req: ChatRequest) -> None:
        if req.tools or req.functions or req.tool_choice not in (None, "none") or (
                req.function_call not in (None, "none")):
            raise _unsupported("tools", "tool and function calling")

    # -- endpoints ---------------------------------------------------------------------------
    def _routes(self) -> None:
        api = self.api
        svc = self.service

        @api.exception_handler(RequestError)
        async def _request_error(_request: Request, exc: RequestError) -> JSONResponse:
            return self.fail(exc.status, exc.message, exc.code, exc.param, exc.retry_after)

        @api.exception_handler(StarletteHTTPException)
        async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
            if exc.status_code == 404:
                return self.fail(404, f"there is no {request.url.path} here; see /v1/models, "
                                 "/v1/chat/completions, /v1/completions", "not_found")
            if exc.status_code == 405:
                return self.fail(405, f"{request.method} is not allowed on {request.url.path}",
                                 "method_not_allowed")
            return self.fail(exc.status_code, str(exc.detail), "http_error")

        @api.exception_handler(Exception)
        async def _unexpected(_request: Request, exc: Exception) -> JSONResponse:
            log.exception("unexpected error")
            return self.fail(500, f"internal error: {exc}", "internal_error")

        @api.get("/health")
        async def health() -> JSONResponse:
            if svc.load_error:
                return JSONResponse({"status": "failed", "error": svc.load_error}, 503)
            if not svc.ready:
                return JSONResponse({"status": "loading"}, 503, headers={"Retry-After": "2"})
            return JSONResponse({"status": "ok", "models": svc.model_triplet(),
                                 "queue": {"waiting": svc.waiting, "running": svc.running,
                                           "capacity": svc.config.queue_size},
                                 "llama": dataclasses.asdict(svc.config.llama_settings)})

        @api.get("/metrics")
        async def metrics() -> Response:
            for role, model in list(svc.models.items()):
                if not model.closed:
                    svc.metrics.model_memory.labels(role, "context").set(model.context_bytes())
            return Response(generate_latest(svc.metrics.registry), media_type=CONTENT_TYPE_LATEST)

        @api.get("/v1/models")
        async def models() -> JSONResponse:
            now = int(time.time())
            data = [{"id": "auto", "object": "model", "created": now, "owned_by": "synapse"}]
            for role, model in svc.models.items():
                data.append({"id": role, "object": "model", "created": now,
                             "owned_by": "synapse", "synapse": model.info.as_dict()})
            return JSONResponse({"object": "list", "data": data})

        @api.post("/v1/chat/completions")
        async def chat(request: Request) -> Response:
            req: ChatRequest = await _parse(request, ChatRequest)
            self._check_chat(req)
            self._check_model(req.model)
            grammar = grammar_for(req.response_format)
            logprobs = (req.top_logprobs or 0) if req.logprobs else None
            if req.top_logprobs is not None and not req.logprobs:
                raise RequestError(400, "top_logprobs needs logprobs: true", "invalid_request",
                                   "top_logprobs")
            session_id = req.session_id or request.headers.get("x-session-id")
            incoming = [m.model_dump(exclude_none=True) for m in req.messages]
            decision_box: list[Decision] = []

            def decide() -> Decision:
                decision_box.append(classify_messages(incoming))
                return decision_box[0]

            def prompt_for(model: Any, decision: Decision | None, asked: int
                           ) -> tuple[str, tuple[str, ...], bool]:
                history: list[dict[str, Any]] = []
                if session_id:
                    history = svc.history(session_id)
                    tier = decision.tier if decision else "high"
                    window = svc.config.router.history_window.get(tier)
                    if window is not None:
                        history = history[-window:] if window else []
                chat_prompt = format_chat(model, history + incoming)
                # keep the newest turns that fit: the prompt plus room to answer
                reserve = asked or max(16, model.n_ctx // 4)
                while history and len(model.tokenize(chat_prompt.text, chat_prompt.add_bos)
                                      ) + reserve > model.n_ctx:
                    history = history[2:]
                    chat_prompt = format_chat(model, history + incoming)
                return chat_prompt.text, chat_prompt.stop, chat_prompt.add_bos

            def build(ticket: Ticket) -> Job:
                return self._build(ticket, "chat", req, prompt_for, decide, session_id,
                                   grammar, logprobs)

            def remember(done: Job) -> None:
                if session_id:
                    svc.remember(session_id, incoming + [
                        {"role": "assistant", "content": done.text}])

            return await self._serve(request, "chat", build, remember,
                                     request.headers.get("x-provenance") == "full")

        @api.post("/v1/completions")
        async def completions(request: Request) -> Response:
            req: CompletionRequest = await _parse(request, CompletionRequest)
            self._check_model(req.model)
            if isinstance(req.prompt, list):
                if len(req.prompt) != 1:
                    raise RequestError(400, "prompt must be one string (batches of prompts are "
                                       "not supported)", "invalid_request", "prompt")
                text = req.prompt[0]
            else:
                text = req.prompt
            if req.echo:
                raise _unsupported("echo", "echo")
            if req.suffix:
                raise _unsupported("suffix", "suffix (fill-in-the-middle)")
            grammar = grammar_for(req.response_format)

            def build(ticket: Ticket) -> Job:
                return self._build(ticket, "completions", req,
                                   lambda _m, _d, _a: (text, (), True),
                                   lambda: classify_text(text), req.session_id, grammar,
                                   req.logprobs)

            return await self._serve(request, "completions", build, None,
                                     request.headers.get("x-provenance") == "full")

        @api.get("/v1/sessions/{session_id}")
        async def session(session_id: str) -> JSONResponse:
            return JSONResponse({"session_id": session_id,
                                 "messages": svc.history(session_id)})

        @api.post("/admin/swap")
        async def swap(request: Request) -> JSONResponse:
            host = request.client.host if request.client else ""
            if host not in LOOPBACK:
                return self.fail(403, "the admin endpoint only answers on loopback", "forbidden")
            body = await _parse(request, SwapRequest)
            try:
                result = await anyio.to_thread.run_sync(svc.swap, body.role, body.path,
                                                        body.sha256)
            except UserError as exc:
                return self.fail(400, str(exc), "swap_refused")
            except OperationError as exc:
                return self.fail(500, str(exc), "swap_failed")
            return JSONResponse(result)


class SwapRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Literal["main", "small", "draft"]
    path: str = Field(min_length=1)
    sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$")


def notify_ready() -> None:
    """Tell systemd (Type=notify) that the models are loaded and the API listens, so a start
    or restart of the unit (`synapse apply` restarting it for a new model) returns only then."""
    address = os.environ.get("NOTIFY_SOCKET", "")
    if not address.startswith(("/", "@")):
        return
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        sock.sendto(b"READY=1", "\0" + address[1:] if address[0] == "@" else address)


SD_LISTEN_FDS_START = 3


def passed_socket() -> socket.socket | None:
    """The listening socket systemd passed (socket activation: LISTEN_FDS for this process),
    as the isolated runtime gets it through systemd-nspawn; None when none was passed."""
    if os.environ.get("LISTEN_PID") != str(os.getpid()) or os.environ.get("LISTEN_FDS") != "1":
        return None
    for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(name, None)  # not inherited by anything the runtime starts
    sock = socket.socket(fileno=SD_LISTEN_FDS_START)
    sock.set_inheritable(False)
    return sock


def serve(service: Service, host: str, port: int) -> int:
    """Run the server until interrupted; models load in the background (/health 503 meanwhile).
    It serves on the socket systemd passed where there is one, else it binds host:port."""
    import uvicorn

    app = App(service)
    passed = passed_socket()
    if passed is not None:
        host, port = passed.getsockname()[:2]
    server = uvicorn.Server(uvicorn.Config(app.api, host=host, port=port, log_level="warning",
                                           access_log=False))
    failed = threading.Event()

    def load() -> None:
        try:
            service.load_all()
        except (UserError, OperationError):
            failed.set()
            server.should_exit = True
            return
        while not server.started and not server.should_exit:
            time.sleep(0.05)
        log.warning("ready: serving on http://%s:%d", host, port)
        notify_ready()

    threading.Thread(target=load, name="model-loader", daemon=True).start()
    try:
        server.run(sockets=[passed] if passed is not None else None)
    finally:
        service.close()
    return 1 if failed.is_set() else 0
