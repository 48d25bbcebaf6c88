"""The HTTP face of the runtime: OpenAI-compatible endpoints, /health, /metrics, admin.

Request extensions (all optional, ignored by other servers):
  body "session_id" or header "X-Session-Id": keep the conversation server-side;
  body "synapse": {"expected_tier": ..., "speculative": true|false, "cache": true|false}.
Every response carries a "synapse" object with the routing decision and timings.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, Literal

import anyio
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from synapse_os.errors import OperationError, UserError
from synapse_os.runtime.config import Tier
from synapse_os.runtime.generation import Sampling
from synapse_os.runtime.prompting import format_chat
from synapse_os.runtime.router import Decision, classify_messages, classify_text
from synapse_os.runtime.service import TIER_ROLE, Job, RequestError, Service

log = logging.getLogger("synapse.runtime.http")
LOOPBACK = {"127.0.0.1", "::1", "localhost"}
ROLES = ("main", "small", "draft")


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="allow")


class Message(_Lenient):
    role: Literal["system", "developer", "user", "assistant", "tool"]
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
    seed: int | None = None
    stream: bool = False
    stop: str | list[str] | None = None
    n: int = Field(1, ge=1, le=1)
    session_id: str | None = Field(None, max_length=200)
    synapse: Extension | None = None


class ChatRequest(_Common):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)


class CompletionRequest(_Common):
    prompt: str | list[str]


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


async def _parse(request: Request, model: type[BaseModel]) -> Any:
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise RequestError(400, "the request body is not valid JSON", "invalid_json") from None
    if not isinstance(body, dict):
        raise RequestError(400, "the request body must be a JSON object", "invalid_request")
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        message, where = _validation_message(exc)
        raise RequestError(400, message, "invalid_request", where) from None


class App:
    def __init__(self, service: Service) -> None:
        self.service = service
        self.gen_lock = asyncio.Lock()  # FIFO: the queue
        self.api = FastAPI(title="Synapse runtime")
        self._routes()

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

    def _job(self, endpoint: str, req: _Common,
             prompt_for: Callable[[Any], tuple[str, tuple[str, ...], bool]],
             decide: Callable[[], Decision], session_id: str | None) -> Job:
        svc = self.service
        ext = req.synapse or Extension()
        role, decision = self._route(req.model, decide)
        svc.admit()
        model = svc.acquire(role)
        try:
            prompt, stop, add_bos = prompt_for(model)
            tokens = model.tokenize(prompt, add_bos=add_bos)
            n_ctx = model.n_ctx
            if len(tokens) >= n_ctx:
                raise RequestError(
                    400, f"the prompt is {len(tokens)} tokens but the '{role}' model's context "
                    f"is {n_ctx} tokens; shorten the prompt", "context_length_exceeded",
                    "messages" if endpoint == "chat" else "prompt")
            asked = getattr(req, "max_completion_tokens", None) or req.max_tokens
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
                top_p=req.top_p, top_k=req.top_k,
                seed=svc.config.seed if det or req.seed is None else req.seed,
                max_tokens=max_tokens,
            )
            return Job(
                endpoint=endpoint, prompt=prompt, add_bos=add_bos, stop=tuple(user_stop) + stop,
                sampling=sampling, model=model, decision=decision,
                expected_tier=ext.expected_tier, speculative=ext.speculative,
                reuse_cache=False if det else (ext.cache if ext.cache is not None else True),
                stream=req.stream, session_id=session_id, prompt_tokens=tokens,
            )
        except BaseException:
            svc.leave_queue()
            svc.release(model)
            raise

    async def _execute(self, job: Job, emit: Callable[[str], None]) -> dict[str, Any]:
        svc = self.service
        try:
            await self.gen_lock.acquire()
        except asyncio.CancelledError:
            svc.leave_queue()
            svc.release(job.model)
            raise
        try:
            svc.start(job)
            # always the same thread: llama.cpp's CPU thread team stays warm and bound to it
            await asyncio.get_running_loop().run_in_executor(svc.executor, svc.run, job, emit)
        finally:
            self.gen_lock.release()
            record = svc.finish(job)
        return record

    # -- response bodies -------------------------------------------------------------------
    @staticmethod
    def _ext(record: dict[str, Any]) -> dict[str, Any]:
        keys = ("request_id", "tier", "expected_tier", "router_confidence", "routed",
                "model_role", "speculative", "queue_ms", "ttft_ms", "latency_ms",
                "token_hash", "finish_reason", "session_id", "status", "error")
        out = {k: record[k] for k in keys}
        out["model"] = record["model"]
        return out

    @staticmethod
    def _usage(record: dict[str, Any]) -> dict[str, int]:
        return {"prompt_tokens": record["tokens_in"], "completion_tokens": record["tokens_out"],
                "total_tokens": record["tokens_in"] + record["tokens_out"]}

    async def _respond(self, endpoint: str, job: Job,
                       on_done: Callable[[Job], None] | None = None,
                       full_record: bool = False) -> Response:
        obj_id = ("chatcmpl-" if endpoint == "chat" else "cmpl-") + job.request_id
        created = int(job.created)
        model_name = job.model.info.role
        if not job.stream:
            record = await self._execute(job, lambda _delta: None)
            if job.error:
                return _error(500, job.error, "generation_failed")
            if on_done:
                on_done(job)
            finish = "stop" if job.state.finish_reason == "stop" else "length"
            if endpoint == "chat":
                choice: dict[str, Any] = {"index": 0, "finish_reason": finish, "logprobs": None,
                                          "message": {"role": "assistant", "content": job.text}}
                kind = "chat.completion"
            else:
                choice = {"index": 0, "finish_reason": finish, "logprobs": None,
                          "text": job.text}
                kind = "text_completion"
            body = {"id": obj_id, "object": kind, "created": created, "model": model_name,
                    "choices": [choice], "usage": self._usage(record),
                    "synapse": self._ext(record)}
            if full_record:  # `X-Provenance: full` (used by `synapse runtime eval`)
                body["synapse_record"] = record
            return JSONResponse(body)

        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[str | None] = asyncio.Queue()
        kind = "chat.completion.chunk" if endpoint == "chat" else "text_completion"

        def emit(delta: str) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, delta)

        task = asyncio.ensure_future(self._execute(job, emit))
        task.add_done_callback(lambda _t: queue.put_nowait(None))

        def chunk(delta: str | None, finish: str | None, extra: dict[str, Any] | None = None
                  ) -> str:
            if endpoint == "chat":
                choice: dict[str, Any] = {
                    "index": 0, "finish_reason": finish, "logprobs": None,
                    "delta": {} if delta is None else {"content": delta}}
            else:
                choice = {"index": 0, "finish_reason": finish, "logprobs": None,
                          "text": delta or ""}
            body: dict[str, Any] = {"id": obj_id, "object": kind, "created": created,
                                    "model": model_name, "choices": [choice]}
            if extra:
                body.update(extra)
            return f"data: {json.dumps(body)}\n\n"

        async def events() -> AsyncIterator[str]:
            try:
                if endpoint == "chat":
                    first = json.loads(chunk("", None)[6:])
                    first["choices"][0]["delta"] = {"role": "assistant", "content": ""}
                    yield f"data: {json.dumps(first)}\n\n"
                while (delta := await queue.get()) is not None:
                    yield chunk(delta, None)
                record = task.result()
                if job.error:
                    err = {"error": {"message": job.error, "type": "server_error",
                                     "param": None, "code": "generation_failed"}}
                    yield f"data: {json.dumps(err)}\n\n"
                else:
                    if on_done:
                        on_done(job)
                    finish = "stop" if job.state.finish_reason == "stop" else "length"
                    yield chunk(None, finish, {"usage": self._usage(record),
                                               "synapse": self._ext(record)})
                yield "data: [DONE]\n\n"
            finally:
                if not task.done():  # client went away: stop generating
                    job.state.cancel.set()

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"})

    # -- endpoints ---------------------------------------------------------------------------
    def _routes(self) -> None:
        api = self.api
        svc = self.service

        @api.exception_handler(RequestError)
        async def _request_error(_request: Request, exc: RequestError) -> JSONResponse:
            return _error(exc.status, exc.message, exc.code, exc.param, exc.retry_after)

        @api.exception_handler(Exception)
        async def _unexpected(_request: Request, exc: Exception) -> JSONResponse:
            log.exception("unexpected error")
            return _error(500, f"internal error: {exc}", "internal_error")

        @api.get("/health")
        async def health() -> JSONResponse:
            if svc.load_error:
                return JSONResponse({"status": "failed", "error": svc.load_error}, 503)
            if not svc.ready:
                return JSONResponse({"status": "loading"}, 503, headers={"Retry-After": "2"})
            return JSONResponse({"status": "ok", "models": svc.model_triplet(),
                                 "queue": {"waiting": svc.waiting, "running": svc.running,
                                           "capacity": svc.config.queue_size}})

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
            session_id = req.session_id or request.headers.get("x-session-id")
            incoming = [m.model_dump(exclude_none=True) for m in req.messages]
            decision_box: list[Decision] = []

            def decide() -> Decision:
                decision_box.append(classify_messages(incoming))
                return decision_box[0]

            def build(model: Any) -> tuple[str, tuple[str, ...], bool]:
                history: list[dict[str, Any]] = []
                if session_id:
                    history = svc.history(session_id)
                    tier = decision_box[0].tier if decision_box else "high"
                    window = svc.config.router.history_window.get(tier)
                    if window is not None:
                        history = history[-window:] if window else []
                chat_prompt = format_chat(model, history + incoming)
                return chat_prompt.text, chat_prompt.stop, chat_prompt.add_bos

            job = self._job("chat", req, build, decide, session_id)

            def remember(done: Job) -> None:
                if session_id:
                    svc.remember(session_id, incoming + [
                        {"role": "assistant", "content": done.text}])

            return await self._respond("chat", job, remember,
                                       request.headers.get("x-provenance") == "full")

        @api.post("/v1/completions")
        async def completions(request: Request) -> Response:
            req: CompletionRequest = await _parse(request, CompletionRequest)
            if isinstance(req.prompt, list):
                if len(req.prompt) != 1:
                    raise RequestError(400, "prompt must be one string (batches of prompts are "
                                       "not supported)", "invalid_request", "prompt")
                text = req.prompt[0]
            else:
                text = req.prompt
            job = self._job("completions", req, lambda _m: (text, (), True),
                            lambda: classify_text(text), req.session_id)
            return await self._respond("completions", job, None,
                                       request.headers.get("x-provenance") == "full")

        @api.get("/v1/sessions/{session_id}")
        async def session(session_id: str) -> JSONResponse:
            return JSONResponse({"session_id": session_id,
                                 "messages": svc.history(session_id)})

        @api.post("/admin/swap")
        async def swap(request: Request) -> JSONResponse:
            host = request.client.host if request.client else ""
            if host not in LOOPBACK:
                return _error(403, "the admin endpoint only answers on loopback", "forbidden")
            body = await _parse(request, SwapRequest)
            try:
                result = await anyio.to_thread.run_sync(svc.swap, body.role, body.path,
                                                        body.sha256)
            except UserError as exc:
                return _error(400, str(exc), "swap_refused")
            except OperationError as exc:
                return _error(500, str(exc), "swap_failed")
            return JSONResponse(result)


class SwapRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Literal["main", "small", "draft"]
    path: str = Field(min_length=1)
    sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$")


def serve(service: Service, host: str, port: int) -> int:
    """Run the server until interrupted; models load in the background (/health 503 meanwhile)."""
    import uvicorn

    app = App(service)
    server = uvicorn.Server(uvicorn.Config(app.api, host=host, port=port, log_level="warning",
                                           access_log=False))
    failed = threading.Event()

    def load() -> None:
        try:
            service.load_all()
            log.warning("ready: serving on http://%s:%d", host, port)
        except (UserError, OperationError):
            failed.set()
            server.should_exit = True

    threading.Thread(target=load, name="model-loader", daemon=True).start()
    try:
        server.run()
    finally:
        service.close()
    return 1 if failed.is_set() else 0
