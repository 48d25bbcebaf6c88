"""Continuous batching: concurrent requests decode together, one llama_batch per step.

A `Batcher` owns a second llama.cpp context on a loaded model's weights with
`parallel` sequences and `context` x `parallel` KV cells. By default they are one pool
(a unified KV cache), so one forward pass decodes any set of sequences. Under the
batch-invariant settings each sequence has its own `context` cells, laid out exactly as a
single-sequence context would lay them out; llama.cpp then puts only consecutive sequence
ids in one pass (slots 0, 2 and 5 decode in three): 4 busy slots of 8 on scattered ids
decode at 0.6x the tokens/s of a unified cache (bench/bench_runtime.py --only layout).
Each admitted request takes a free sequence id (a slot) and its own llama.cpp sampler
chain.

One scheduling step:
  1. drop slots whose client left (their sequence is removed from the KV cache);
  2. give free slots to waiting requests;
  3. decode: one batch holding the next token of every generating slot (one row each,
     with logits), then each slot samples from its own row and streams its text;
  4. prefill: the oldest slot still reading its prompt decodes up to `batch` prompt
     tokens in a separate batch (a long prompt is read in chunks between decode steps, so
     it never stalls the others for long); the last chunk samples its first token.
Prompt lookup (speculation without a draft model): a greedy slot whose last tokens
occurred earlier in its prompt or answer proposes the tokens that followed them there, and
its decode rows verify them in the same batch (row j's argmax is the token after row j's;
the first mismatch is itself the right next token, and the rejected rows' cells are dropped
from its sequence; a model whose memory cannot drop cells, recurrent or hybrid, never
drafts). With the batch-invariant settings greedy output is what it would be without: a
slot's rows stay within MAX_INVARIANT_BATCH, so each is computed by the kernels a one-row
decode uses; with the default settings, batching itself is not bit-equal to a solo decode and
lookup adds no other difference. It pays where answers repeat their input (quoting,
editing, extraction).
A finished request's prompt stays in its sequence: the next request that starts the same
way (a session's next turn) takes that slot and reads only the rest of its prompt.
Decode rows and prompt rows are never mixed in one batch, and with the batch-invariant
settings a decode batch holds at most MAX_INVARIANT_BATCH rows (8 generating slots
decode as 4 + 4): a generating token is then computed by the same kernels whether one
or several sequences decode (see engine.py), and a prompt is read in the same chunks as
the single-sequence path reads it, so greedy output does not depend on the company a
request keeps.

Everything here runs on the service's one generation thread.
"""

from __future__ import annotations

import ctypes
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from synapse_os.runtime.generation import SamplerChain, top_logprobs
from synapse_os.runtime.textstream import TextStream

if TYPE_CHECKING:
    from synapse_os.runtime.engine import LoadedModel
    from synapse_os.runtime.service import Job

log = logging.getLogger("synapse.runtime.batching")
Emit = Callable[[str, int], None]


@dataclass
class _Waiting:
    job: Job
    emit: Emit
    done: Callable[[], None]


@dataclass
class _Slot:
    seq: int
    job: Job
    emit: Emit
    done: Callable[[], None]
    chain: SamplerChain
    text: TextStream
    pending: list[int]  # prompt tokens not yet in the cache
    budget: int
    pos: int = 0  # tokens of this sequence in the cache
    next_token: int | None = None  # sampled, to be decoded in the next step
    admitted: int = 0
    lookup: Lookup | None = None  # prompt lookup, where this request speculates


LOOKUP_NGRAMS = (3, 2)  # the longest earlier match of the last tokens wins


class Lookup:
    """Where each n-gram of a request's tokens (prompt, then answer) last continued."""

    def __init__(self, tokens: list[int], draft_tokens: int) -> None:
        self.tokens: list[int] = []
        self.after: dict[tuple[int, ...], int] = {}
        self.k = draft_tokens
        for token in tokens:
            self.append(token)

    def append(self, token: int) -> None:
        t = self.tokens
        for n in LOOKUP_NGRAMS:
            if len(t) >= n:
                self.after[tuple(t[-n:])] = len(t)
        t.append(token)

    def propose(self, limit: int) -> list[int]:
        """Up to `limit` (and k) tokens that followed the last n tokens where they occurred
        before."""
        t = self.tokens
        for n in LOOKUP_NGRAMS:
            start = self.after.get(tuple(t[-n:])) if len(t) > n else None
            if start is not None:
                return t[start:start + min(self.k, limit)]
        return []


class Batcher:
    """`parallel` sequences of one model decoded together (see the module docstring)."""

    def __init__(self, model: LoadedModel, parallel: int, context: int, batch: int,
                 on_start: Callable[[Job], None], max_rows: int | None = None,
                 lookup: Callable[[Job], int] = lambda job: 0) -> None:
        import llama_cpp
        from llama_cpp._internals import LlamaContext

        self.model = model
        self.parallel = parallel
        self.context = context
        self.n_batch = max(1, min(batch, context))
        self.on_start = on_start
        self.max_rows = max_rows
        self.lookup = lookup  # draft tokens of prompt lookup for a job (0: none)
        weights = model.llm._model.model
        self.can_draft = not (llama_cpp.llama_model_is_recurrent(weights)
                              or llama_cpp.llama_model_is_hybrid(weights))
        params = llama_cpp.llama_context_params.from_buffer_copy(model.llm.context_params)
        params.n_ctx = context * parallel
        params.n_seq_max = parallel
        params.kv_unified = max_rows is None  # see the module docstring
        params.n_batch = max(self.n_batch, parallel)
        params.n_ubatch = max(min(int(params.n_ubatch), self.n_batch), parallel)
        self._ctx = LlamaContext(model=model.llm._model, params=params, verbose=False)
        self.ctx = self._ctx.ctx
        self.mem = llama_cpp.llama_get_memory(self.ctx)
        self.rows = max_rows or max(self.n_batch, parallel)  # rows of one decode batch
        self.batch = llama_cpp.llama_batch_init(max(self.n_batch, parallel), 0, 1)
        self.slots: list[_Slot | None] = [None] * parallel
        # prompt tokens a free slot still holds in its sequence (prefix reuse)
        self.retained: list[list[int]] = [[] for _ in range(parallel)]
        self.inbox: deque[_Waiting] = deque()
        self.lock = threading.Lock()
        self.admit_new = True
        self.closed = False
        self._admissions = 0
        self.steps = 0

    # -- called from any thread -------------------------------------------------------
    def submit(self, job: Job, emit: Emit, done: Callable[[], None]) -> None:
        with self.lock:
            self.inbox.append(_Waiting(job, emit, done))

    def withdraw(self, job: Job) -> bool:
        """Take a job out of the queue if it has not started (True when it was there)."""
        with self.lock:
            for waiting in self.inbox:
                if waiting.job is job:
                    self.inbox.remove(waiting)
                    return True
        return False

    def has_work(self) -> bool:
        with self.lock:
            return bool(self.inbox) or any(s is not None for s in self.slots)

    def active(self) -> int:
        return sum(s is not None for s in self.slots)

    # -- the generation thread -----------------------------------------------------------
    def step(self) -> bool:
        """One scheduling step; False when there was nothing to do."""
        if self.closed:
            return False
        for slot in self.slots:
            if slot is not None and slot.job.state.cancel.is_set():
                self._finish(slot, "cancelled")
        self._admit()
        busy = False
        try:
            generating = [s for s in self.slots if s is not None and s.next_token is not None]
            if generating:
                busy = True
                self._decode_step(generating)
            reading = [s for s in self.slots if s is not None and s.pending]
            if reading:
                busy = True
                self._prefill_step(min(reading, key=lambda s: s.admitted))
        except Exception as exc:  # one bad step must not take the process down
            log.exception("batched decode failed")
            for slot in self.slots:
                if slot is not None:
                    slot.job.error = f"generation failed: {exc}"
                    self._finish(slot, "error")
        if busy:
            self.steps += 1
        return busy

    def _admit(self) -> None:
        while True:
            with self.lock:
                if not self.inbox or not self.admit_new:
                    return
                free = [i for i, slot in enumerate(self.slots) if slot is None]
                if not free:
                    return
                waiting = self.inbox.popleft()
            job = waiting.job
            if job.state.cancel.is_set():  # left while queued: never started
                job.error = None
                job.state.finish_reason = "cancelled"
                waiting.done()
                continue
            seq, keep = self._place(job, free)
            try:
                chain = SamplerChain(self.model, job.sampling)
            except Exception as exc:
                job.error = f"generation failed: {exc}"
                self.on_start(job)
                job.t_first = job.t_done = time.perf_counter()
                waiting.done()
                continue
            job.state.seed = chain.seed
            job.state.cached_tokens = keep
            self.on_start(job)
            self._admissions += 1
            k = min(self.lookup(job), self.rows - 1) if self.can_draft else 0
            self.slots[seq] = _Slot(seq=seq, job=job, emit=waiting.emit, done=waiting.done,
                                    chain=chain, text=TextStream(job.stop),
                                    pending=list(job.prompt_tokens[keep:]), pos=keep,
                                    budget=job.sampling.max_tokens, admitted=self._admissions,
                                    lookup=Lookup(job.prompt_tokens, k) if k > 0 else None)

    def _place(self, job: Job, free: list[int]) -> tuple[int, int]:
        """The free slot whose retained prompt shares the longest prefix with this one, and
        how many of those cached tokens to keep (the rest of the sequence is dropped).

        Only prompt tokens are ever retained (generated tokens were computed by the
        one-row decode kernels, a prompt by the prefill kernels), and with the
        batch-invariant settings at least MAX_INVARIANT_BATCH + 1 tokens are read again,
        so the prompt's last rows go through the same kernels as a fresh prefill."""
        import llama_cpp

        prompt = job.prompt_tokens
        best, keep = free[0], 0
        if job.reuse_cache:
            for seq in free:
                n = 0
                for a, b in zip(self.retained[seq], prompt, strict=False):
                    if a != b:
                        break
                    n += 1
                if n > keep:
                    best, keep = seq, n
            floor = (self.max_rows + 1) if self.max_rows is not None else 1
            keep = max(0, min(keep, len(prompt) - floor))
        else:  # take the slot that holds the least
            best = min(free, key=lambda i: len(self.retained[i]))
        llama_cpp.llama_memory_seq_rm(self.mem, best, keep, -1)
        self.retained[best] = []
        return best, keep

    def _fill(self, rows: list[tuple[int, int, int, bool]]) -> None:
        b = self.batch
        for i, (token, pos, seq, logits) in enumerate(rows):
            b.token[i] = token
            b.pos[i] = pos
            b.n_seq_id[i] = 1
            b.seq_id[i][0] = seq
            b.logits[i] = logits
        b.n_tokens = len(rows)

    def _decode(self) -> None:
        import llama_cpp

        rc = llama_cpp.llama_decode(self.ctx, self.batch)
        if rc != 0:
            raise RuntimeError(f"llama_decode returned {rc}")

    def _decode_step(self, slots: list[_Slot]) -> None:
        """One row per slot (its next token), then the tokens its prompt lookup proposes."""
        drafts = [self._propose(s) for s in slots]
        groups = -(-sum(1 + len(d) for d in drafts) // self.rows)
        size = -(-len(slots) // groups)  # balanced: 8 rows with max 7 -> 4 + 4
        start = 0
        while start < len(slots):
            group: list[tuple[_Slot, list[int]]] = []
            rows = 0
            for slot, draft in zip(slots[start:], drafts[start:], strict=True):
                if group and (len(group) == size or rows + 1 + len(draft) > self.rows):
                    break
                group.append((slot, draft))
                rows += 1 + len(draft)
            start += len(group)
            self._fill([(tok, s.pos + j, s.seq, True) for s, draft in group
                        for j, tok in enumerate([s.next_token, *draft])])  # type: ignore[list-item]
            self._decode()
            row = 0
            for slot, draft in group:
                self._verify(slot, draft, row)
                row += 1 + len(draft)

    def _propose(self, slot: _Slot) -> list[int]:
        if slot.lookup is None:
            return []
        draft = slot.lookup.propose(min(slot.budget - 1, self.context - slot.pos - 2))
        if draft:
            slot.job.state.spec.steps += 1
            slot.job.state.spec.proposed += len(draft)
        return draft

    def _verify(self, slot: _Slot, draft: list[int], row: int) -> None:
        """Take row after row while the token sampled from one is the draft's next (whose
        row then holds the right logits); drop the rejected rows from the cache."""
        base = slot.pos
        for j in range(len(draft) + 1):
            slot.pos = base + j + 1
            slot.next_token = None
            self._take(slot, row + j)
            if self.slots[slot.seq] is not slot:  # finished
                return
            if j == len(draft) or slot.next_token != draft[j]:
                break
            slot.job.state.spec.accepted += 1
        if draft:
            import llama_cpp

            if not llama_cpp.llama_memory_seq_rm(self.mem, slot.seq, slot.pos, -1):
                raise RuntimeError("the KV cache could not drop rejected draft tokens")

    def _prefill_step(self, slot: _Slot) -> None:
        chunk = slot.pending[:self.n_batch]
        last = len(chunk) == len(slot.pending)
        self._fill([(tok, slot.pos + i, slot.seq, last and i == len(chunk) - 1)
                    for i, tok in enumerate(chunk)])
        self._decode()
        slot.pos += len(chunk)
        del slot.pending[:len(chunk)]
        if last:
            self._take(slot, len(chunk) - 1)

    def _logits(self, i: int) -> np.ndarray:
        import llama_cpp

        ptr = llama_cpp.llama_get_logits_ith(self.ctx, i)
        return np.ctypeslib.as_array(ctypes.cast(ptr, ctypes.POINTER(ctypes.c_float)),
                                     shape=(self.model.n_vocab,)).copy()

    def _take(self, slot: _Slot, i: int) -> None:
        """Sample slot's next token from output row i and stream it."""
        job = slot.job
        token = slot.chain.sample(self.ctx, i)
        if job.sampling.logprobs is not None:
            job.state.logprobs.append(top_logprobs(self._logits(i), token,
                                                   job.sampling.logprobs))
        if job.t_first is None:
            job.t_first = time.perf_counter()
        if self.model.is_eog(token):
            self._finish(slot, "stop")
            return
        job.state.tokens.append(token)
        if slot.lookup is not None:
            slot.lookup.append(token)
        delta = slot.text.feed(self.model.piece(token))
        if delta:
            slot.emit(delta, len(job.state.tokens))
        if slot.text.stopped:
            self._finish(slot, "stop")
            return
        slot.budget -= 1
        if slot.budget <= 0 or slot.pos + 1 >= self.context:
            self._finish(slot, "length")
            return
        slot.next_token = token

    def _finish(self, slot: _Slot, reason: str) -> None:
        import llama_cpp

        job = slot.job
        job.state.finish_reason = reason
        tail = slot.text.finish()
        if tail:
            slot.emit(tail, len(job.state.tokens))
        job.text = slot.text.text
        job.t_done = time.perf_counter()
        if job.t_first is None:
            job.t_first = job.t_done
        slot.chain.close()
        prompt = job.prompt_tokens
        if job.reuse_cache and reason != "error" and slot.pos >= len(prompt):
            # keep the prompt for a later request that starts the same way (a session's
            # next turn); drop what was generated
            llama_cpp.llama_memory_seq_rm(self.mem, slot.seq, len(prompt), -1)
            self.retained[slot.seq] = list(prompt)
        else:
            llama_cpp.llama_memory_seq_rm(self.mem, slot.seq, -1, -1)
            self.retained[slot.seq] = []
        self.slots[slot.seq] = None
        slot.done()

    def close(self) -> None:
        import llama_cpp

        if self.closed:
            return
        self.closed = True
        if self.batch is not None:
            llama_cpp.llama_batch_free(self.batch)
        self._ctx.close()

    def stats(self) -> dict[str, Any]:
        return {"parallel": self.parallel, "active": self.active(), "steps": self.steps}
