"""Token generation: plain sampling and greedy speculative decoding with a draft model.

Speculative step (greedy only, i.e. temperature 0):
  1. the draft model, synced to the current sequence, proposes k tokens greedily;
  2. the target decodes [last token] + proposals in ONE batch with logits for every row;
  3. proposals are accepted while they equal the target's argmax; the first mismatch is
     replaced by the target's own token (or, if all were accepted, the target's next
     token is taken as a bonus); rejected tokens are removed from both KV caches.
Every emitted token is therefore the target's argmax given exactly the same prefix, so
the output equals plain greedy decoding; only the number of target passes changes.
"""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from synapse_os.runtime.engine import LoadedModel

RANDOM_SEED = 0xFFFFFFFF  # LLAMA_DEFAULT_SEED: llama.cpp draws a seed itself


def llama_seed(seed: int | None) -> int:
    """Any int -> llama.cpp's uint32 seed; -1 / None mean "draw one" (as OpenAI's omitted seed)."""
    if seed is None or seed == -1:
        return RANDOM_SEED
    return seed & 0xFFFFFFFF


@dataclass(frozen=True)
class Sampling:
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int = 42
    max_tokens: int = 16
    min_p: float = 0.0
    repeat_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    penalty_last_n: int = 64
    grammar: str | None = None  # GBNF (response_format)
    logprobs: int | None = None  # None: off; n >= 0: chosen token + n alternatives

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0

    @property
    def plain_greedy(self) -> bool:
        """Greedy with nothing that changes the argmax: speculation gives the same tokens."""
        return (self.greedy and self.grammar is None and self.repeat_penalty == 1.0
                and self.presence_penalty == 0.0 and self.frequency_penalty == 0.0)


class SamplerChain:
    """llama.cpp's own sampler chain (penalties, top-k/top-p/min-p, temperature, dist or
    greedy): sampling runs in C++ on the context's logits, no Python over the vocabulary.

    A grammar (response_format) is checked the way llama.cpp's common sampler does it:
    the chain picks a token, the grammar judges that one token, and only when it refuses
    is the grammar applied to the whole vocabulary and the chain run again."""

    def __init__(self, model: LoadedModel, params: Sampling) -> None:
        import llama_cpp
        from llama_cpp._internals import LlamaSampler

        self.chain = LlamaSampler()
        self.grammar: Any = None
        self.n_vocab = model.n_vocab
        if params.grammar is not None:
            self.grammar = llama_cpp.llama_sampler_init_grammar(
                model.llm._model.vocab, params.grammar.encode("utf-8"), b"root")
            if not self.grammar:
                self.chain.close()
                raise ValueError("llama.cpp could not parse the grammar")
            from llama_cpp._internals import LlamaTokenDataArray

            self._cur = LlamaTokenDataArray(n_vocab=self.n_vocab)
            self._one_data = (llama_cpp.llama_token_data * 1)()
            self._one = llama_cpp.llama_token_data_array(
                data=self._one_data, size=1, selected=-1, sorted=False)
        if (params.repeat_penalty != 1.0 or params.presence_penalty != 0.0
                or params.frequency_penalty != 0.0):
            self.chain.add_penalties(model.n_vocab, params.penalty_last_n,
                                     params.repeat_penalty, params.frequency_penalty,
                                     params.presence_penalty)
        if params.greedy:
            self.chain.add_greedy()
        else:
            if params.top_k > 0:
                self.chain.add_top_k(params.top_k)
            if params.top_p < 1.0:
                self.chain.add_top_p(params.top_p, 1)
            if params.min_p > 0.0:
                self.chain.add_min_p(params.min_p, 1)
            self.chain.add_temp(params.temperature)
            self.chain.add_dist(llama_seed(params.seed))
        self.seed = int(self.chain.get_seed()) if not params.greedy else llama_seed(params.seed)

    def sample(self, ctx: Any, idx: int = -1) -> int:
        """Sample (and accept) a token from output `idx` of the last decode of `ctx`."""
        import llama_cpp

        if self.grammar is None:
            return int(llama_cpp.llama_sampler_sample(self.chain.sampler, ctx, idx))
        ptr = llama_cpp.llama_get_logits_ith(ctx, idx)
        logits = np.ctypeslib.as_array(ptr, shape=(self.n_vocab,))
        token = self._pick(logits, with_grammar=False)
        one = self._one_data[0]
        one.id, one.logit, one.p = token, 1.0, 0.0  # type: ignore[assignment]
        self._one.size, self._one.selected, self._one.sorted = 1, -1, False
        llama_cpp.llama_sampler_apply(self.grammar, ctypes.byref(self._one))
        if not np.isfinite(self._one_data[0].logit):  # refused: constrain, then sample again
            token = self._pick(logits, with_grammar=True)
        llama_cpp.llama_sampler_accept(self.grammar, token)
        llama_cpp.llama_sampler_accept(self.chain.sampler, token)
        return token

    def _pick(self, logits: np.ndarray, with_grammar: bool) -> int:
        import llama_cpp

        cur = self._cur
        cur.copy_logits(logits)
        cur.candidates.selected = -1
        if with_grammar:
            llama_cpp.llama_sampler_apply(self.grammar, ctypes.byref(cur.candidates))
        llama_cpp.llama_sampler_apply(self.chain.sampler, ctypes.byref(cur.candidates))
        chosen = int(cur.candidates.selected)
        return int(cur.candidates_data.id[chosen])

    def close(self) -> None:
        import llama_cpp

        if self.grammar is not None:
            llama_cpp.llama_sampler_free(self.grammar)
            self.grammar = None
        self.chain.close()


def top_logprobs(logits: np.ndarray, token: int, n: int) -> tuple[float, list[tuple[int, float]]]:
    """log-softmax of the raw logits: the chosen token's logprob and the n most likely."""
    row = logits.astype(np.float64)
    top = float(row.max())
    lse = top + float(np.log(np.exp(row - top).sum()))
    chosen = float(row[token]) - lse
    best: list[tuple[int, float]] = []
    if n > 0:
        idx = np.argpartition(-row, n)[:n]
        idx = idx[np.argsort(-row[idx], kind="stable")]
        best = [(int(i), float(row[i]) - lse) for i in idx]
    return chosen, best


@dataclass
class SpecStats:
    kind: str = "draft"  # what proposes: the draft model, or prompt lookup (batching.py)
    proposed: int = 0
    accepted: int = 0
    steps: int = 0

    @property
    def accept_rate(self) -> float | None:
        return self.accepted / self.proposed if self.proposed else None


@dataclass
class GenerationState:
    """Shared with the caller: cancellation in, counters out."""

    cancel: threading.Event = field(default_factory=threading.Event)
    spec: SpecStats = field(default_factory=SpecStats)
    tokens: list[int] = field(default_factory=list)
    finish_reason: str = "length"
    seed: int | None = None  # the seed llama.cpp's sampler used (drawn when none was given)
    cached_tokens: int = 0  # prompt tokens found in the KV cache, not read again
    logprobs: list[tuple[float, list[tuple[int, float]]]] = field(default_factory=list)


def generate(
    target: LoadedModel,
    prompt: list[int],
    params: Sampling,
    state: GenerationState,
    *,
    draft: LoadedModel | None = None,
    draft_tokens: int = 4,
    reuse_cache: bool = True,
) -> Iterator[int]:
    """Yield generated token ids (end-of-generation tokens are not yielded).

    With `draft` given and plain greedy sampling, runs speculative decoding; otherwise
    llama.cpp's sampler chain picks each token. Stops on cancel (checked after every
    token), an end-of-generation token or max_tokens.
    """
    if draft is not None and params.plain_greedy and params.logprobs is None:
        yield from _speculative(target, prompt, params, state, draft, draft_tokens, reuse_cache)
        return
    chain = SamplerChain(target, params)
    state.seed = chain.seed
    try:
        target.prefill(prompt, reuse=reuse_cache, logits=False)
        ctx = target.llm._ctx.ctx
        budget = params.max_tokens
        while True:
            token = chain.sample(ctx, -1)
            if params.logprobs is not None:
                state.logprobs.append(top_logprobs(target.last_logits(), token, params.logprobs))
            if target.is_eog(token):
                state.finish_reason = "stop"
                return
            state.tokens.append(token)
            yield token
            budget -= 1
            if budget <= 0 or state.cancel.is_set():
                state.finish_reason = "length" if budget <= 0 else "cancelled"
                return
            if len(target.tokens) + 1 >= target.n_ctx:
                state.finish_reason = "length"
                return
            target.decode([token], logits=False)
    finally:
        chain.close()


def _speculative(target: LoadedModel, prompt: list[int], params: Sampling,
                 state: GenerationState, draft: LoadedModel, draft_tokens: int,
                 reuse_cache: bool) -> Iterator[int]:
    """Greedy speculative decoding (see the module docstring): same tokens as plain greedy."""
    state.seed = params.seed
    logits = target.prefill(prompt, reuse=reuse_cache)
    token = int(np.argmax(logits))
    budget = params.max_tokens
    while True:
        if target.is_eog(token):
            state.finish_reason = "stop"
            return
        state.tokens.append(token)
        yield token
        budget -= 1
        if budget <= 0 or state.cancel.is_set():
            state.finish_reason = "length" if budget <= 0 else "cancelled"
            return
        if len(target.tokens) + 1 >= target.n_ctx:
            state.finish_reason = "length"
            return
        # -- speculative step ------------------------------------------------------
        k = min(draft_tokens, budget - 1, target.n_ctx - len(target.tokens) - 2,
                draft.n_ctx - len(target.tokens) - 2)
        proposals = _propose(draft, target.tokens + [token], k) if k > 0 else []
        rows = target.decode([token] + proposals, all_logits=True)
        state.spec.steps += 1
        state.spec.proposed += len(proposals)
        emitted: list[int] = []
        for i, proposal in enumerate(proposals):
            best = int(np.argmax(rows[i]))
            if best != proposal:
                emitted.append(best)
                break
            emitted.append(proposal)
            state.spec.accepted += 1
            if target.is_eog(proposal):
                break
        else:
            emitted.append(int(np.argmax(rows[len(proposals)])))
        # The cache holds [token] + proposals; keep the accepted ones, the last emitted
        # token is decoded at the start of the next step.
        base = len(target.tokens) - len(proposals) - 1
        target.truncate(base + len(emitted))
        for tok in emitted[:-1]:
            if target.is_eog(tok):
                state.finish_reason = "stop"
                return
            state.tokens.append(tok)
            yield tok
            budget -= 1
        token = emitted[-1]


def _propose(draft: LoadedModel, sequence: list[int], k: int) -> list[int]:
    """k greedy draft tokens continuing `sequence` (the draft's cache is synced first)."""
    logits = draft.prefill(sequence, reuse=True)
    out: list[int] = []
    for i in range(k):
        tok = int(np.argmax(logits))
        out.append(tok)
        if draft.is_eog(tok) or i == k - 1:
            break
        logits = draft.decode([tok])[0]
    return out
