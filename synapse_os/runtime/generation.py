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

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from synapse_os.runtime.engine import LoadedModel


@dataclass(frozen=True)
class Sampling:
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int = 42
    max_tokens: int = 16

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0


@dataclass
class SpecStats:
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


class Sampler:
    def __init__(self, params: Sampling) -> None:
        self.params = params
        self.rng = np.random.default_rng(params.seed)

    def __call__(self, logits: np.ndarray) -> int:
        p = self.params
        if p.greedy:
            return int(np.argmax(logits))
        scaled = logits.astype(np.float64) / p.temperature
        if p.top_k > 0 and p.top_k < scaled.size:
            cutoff = np.partition(scaled, -p.top_k)[-p.top_k]
            scaled = np.where(scaled < cutoff, -np.inf, scaled)
        order = np.argsort(-scaled)
        probs = np.exp(scaled[order] - scaled[order[0]])
        probs /= probs.sum()
        if p.top_p < 1.0:
            keep = int(np.searchsorted(np.cumsum(probs), p.top_p) + 1)
            probs = probs[:keep] / probs[:keep].sum()
            order = order[:keep]
        return int(order[self.rng.choice(len(probs), p=probs)])


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

    With `draft` given and greedy sampling, runs speculative decoding; the caller must hold
    both models' locks. Stops on cancel, an end-of-generation token or max_tokens.
    """
    sample = Sampler(params)
    logits = target.prefill(prompt, reuse=reuse_cache)
    token = sample(logits)
    budget = params.max_tokens
    speculate = draft is not None and params.greedy
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
        if not speculate or draft is None:
            token = sample(target.decode([token])[0])
            continue
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
