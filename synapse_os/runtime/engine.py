"""Loaded models: a GGUF checked by sha256 and opened with llama-cpp-python.

`LoadedModel` keeps its own record of the tokens in the KV cache so that generation
(see generation.py) can decode single tokens, verify batches of draft tokens with all
logits, and roll the cache back — the pieces speculative decoding needs — without the
`logits_all` score matrix (n_ctx x 262k floats for Gemma 3) that `Llama` would allocate.
"""

from __future__ import annotations

import ctypes
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from synapse_os.errors import OperationError, UserError
from synapse_os.models import sha256_file
from synapse_os.profile.model import LlamaSettings
from synapse_os.runtime.config import ModelConfig

# llama.cpp's LLAMA_FTYPE values -> the usual quantization names.
FILE_TYPES = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1",
    10: "Q2_K", 11: "Q3_K_S", 12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M",
    16: "Q5_K_S", 17: "Q5_K_M", 18: "Q6_K", 19: "IQ2_XXS", 20: "IQ2_XS", 21: "Q2_K_S",
    22: "IQ3_XS", 23: "IQ3_XXS", 24: "IQ1_S", 25: "IQ4_NL", 26: "IQ3_S", 27: "IQ3_M",
    28: "IQ2_S", 29: "IQ2_M", 30: "IQ4_XS", 31: "IQ1_M", 32: "BF16", 36: "TQ1_0", 37: "TQ2_0",
}
_ids = iter(range(1, 1 << 62))
GGML_TYPES = {"f16": 1, "q4_0": 2, "q8_0": 8}  # ggml_type values (llama_cpp.GGML_TYPE_*)
KV_BYTES_PER_ELEMENT = {"f16": 2.0, "q8_0": 34 / 32, "q4_0": 18 / 32}  # ggml block sizes
NUMA_STRATEGIES = {None: 0, "distribute": 1, "isolate": 2, "numactl": 3}  # GGML_NUMA_STRATEGY_*
# Measured on llama.cpp's CPU backend (llama-cpp-python 0.3.36): with flash attention,
# a q8_0 KV cache and no weight repacking, a token's logits are bit-identical whether it
# is decoded alone or in a batch of up to 7 tokens; batches of 8+ switch kernels.
MAX_INVARIANT_BATCH = 7
_load_lock = threading.Lock()


@dataclass
class ModelInfo:
    role: str
    path: str
    sha256: str
    quantization: str
    description: str
    context: int
    n_vocab: int
    weights_bytes: int
    load_id: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "role": self.role, "path": self.path, "sha256": self.sha256,
            "quantization": self.quantization, "description": self.description,
            "context": self.context, "n_vocab": self.n_vocab, "load_id": self.load_id,
        }


@dataclass
class LoadedModel:
    """One llama.cpp model + context. Not thread-safe: callers hold `lock` while generating."""

    info: ModelInfo
    llm: Any  # llama_cpp.Llama
    tokens: list[int] = field(default_factory=list)  # what sits in the KV cache (seq 0)
    lock: threading.Lock = field(default_factory=threading.Lock)
    users: int = 0
    retired: bool = False
    closed: bool = False
    kv_type: str = "q8_0"
    batcher: Any = None  # batching.Batcher: a multi-sequence context on the same weights

    @property
    def n_ctx(self) -> int:
        return int(self.llm.n_ctx())

    @property
    def n_vocab(self) -> int:
        return self.info.n_vocab

    def tokenize(self, text: str, add_bos: bool = True) -> list[int]:
        return list(self.llm.tokenize(text.encode("utf-8"), add_bos=add_bos, special=True))

    def piece(self, token: int) -> bytes:
        return bytes(self.llm._model.detokenize([token], special=False))

    def is_eog(self, token: int) -> bool:
        import llama_cpp

        return bool(llama_cpp.llama_vocab_is_eog(self.llm._model.vocab, token))

    def token_text(self, token: int) -> str:
        return str(self.llm._model.token_get_text(token))

    def context_bytes(self) -> int:
        """KV cache size: layers x context x (K + V width) x bytes per element."""
        md: dict[str, str] = getattr(self, "metadata", {})
        arch = md.get("general.architecture", "")
        try:
            layers = int(md[f"{arch}.block_count"])
            kv_heads = int(md.get(f"{arch}.attention.head_count_kv")
                           or md[f"{arch}.attention.head_count"])
            embd = int(md[f"{arch}.embedding_length"])
            heads = int(md[f"{arch}.attention.head_count"])
            k_len = int(md.get(f"{arch}.attention.key_length", embd // heads))
            v_len = int(md.get(f"{arch}.attention.value_length", embd // heads))
        except (KeyError, ValueError, ZeroDivisionError):
            return 0
        per_element = KV_BYTES_PER_ELEMENT[self.kv_type]
        return int(layers * self.n_ctx * kv_heads * (k_len + v_len) * per_element)

    # -- KV cache management -------------------------------------------------
    def truncate(self, n: int) -> None:
        """Drop everything after the first n tokens from the KV cache."""
        if n < len(self.tokens):
            self.llm._ctx.kv_cache_seq_rm(0, n, -1)
            del self.tokens[n:]

    def decode(self, tokens: Sequence[int], all_logits: bool = False,
               logits: bool = True) -> np.ndarray:
        """Append tokens to the cache; logits of the last token (or of every token).

        With logits=False nothing is copied out: a sampler reads the context's output."""
        if not tokens:
            raise ValueError("decode needs at least one token")
        if len(self.tokens) + len(tokens) > self.n_ctx:
            raise OperationError("the context window is full")
        batch_size = MAX_INVARIANT_BATCH if all_logits else int(self.llm.n_batch)
        rows: list[np.ndarray] = []
        for start in range(0, len(tokens), batch_size):
            chunk = list(tokens[start:start + batch_size])
            self.llm._batch.set_batch(chunk, n_past=len(self.tokens), logits_all=all_logits)
            self.llm._ctx.decode(self.llm._batch)
            self.tokens.extend(chunk)
            if all_logits:
                for i in range(len(chunk)):
                    rows.append(self._logits(i))
        if all_logits:
            return np.stack(rows)
        if not logits:
            return np.empty((0, 0), dtype=np.float32)
        return self._logits(len(chunk) - 1)[None, :]

    def last_logits(self) -> np.ndarray:
        return self._logits(-1)

    def _logits(self, i: int) -> np.ndarray:
        ptr = self.llm._ctx.get_logits_ith(i)
        return np.ctypeslib.as_array(
            ctypes.cast(ptr, ctypes.POINTER(ctypes.c_float)), shape=(self.n_vocab,)
        ).copy()

    def prefill(self, prompt: Sequence[int], reuse: bool, logits: bool = True) -> np.ndarray:
        """Put prompt in the cache (reusing a common prefix if allowed); last-token logits."""
        keep = 0
        if reuse:
            for a, b in zip(self.tokens, prompt, strict=False):
                if a != b:
                    break
                keep += 1
            keep = min(keep, len(prompt) - 1)  # always re-decode the last prompt token
        self.truncate(keep)
        out = self.decode(prompt[keep:], logits=logits)
        return out[0] if logits else out

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            if self.batcher is not None:
                self.batcher.close()
            self.llm.close()


def quantization_of(metadata: dict[str, str]) -> str:
    try:
        return FILE_TYPES.get(int(metadata.get("general.file_type", "")), "unknown")
    except ValueError:
        return "unknown"


def check_file(role: str, cfg: ModelConfig) -> str:
    """sha256 of the model file; refuses a missing file or a sha256 mismatch."""
    path = Path(cfg.path)
    if not path.is_file():
        raise UserError(f"model '{role}': {path} does not exist or is not a file")
    actual = sha256_file(path)
    if cfg.sha256 is not None and actual != cfg.sha256:
        raise UserError(
            f"model '{role}': {path} has sha256 {actual}, but the config expects {cfg.sha256}; "
            "refusing to load it"
        )
    return actual


def llama_kwargs(cfg: ModelConfig, threads: int, batch: int, seed: int,
                 llama: LlamaSettings, mlock: bool = False) -> dict[str, Any]:
    """Keyword arguments for llama_cpp.Llama (also used by the benchmark's raw baseline)."""
    kv_type = GGML_TYPES[llama.kv_cache_type]
    return dict(
        model_path=cfg.path,
        n_ctx=cfg.context,
        n_batch=min(batch, cfg.context),
        n_threads=threads,
        n_threads_batch=llama.threads_batch or threads,
        n_gpu_layers=cfg.gpu_layers,
        seed=seed,
        use_mlock=mlock,
        flash_attn=llama.flash_attention,
        type_k=kv_type,
        type_v=kv_type,
        numa=NUMA_STRATEGIES[llama.numa],
        verbose=False,
    )


def open_llama(kwargs: dict[str, Any], repack: bool) -> Any:
    """Llama(**kwargs); without `repack`, weight repacking is switched off for this load.

    llama-cpp-python does not expose llama_model_params.use_extra_bufts, so the default
    params factory it calls is wrapped for the duration of the (serialised) load.
    """
    try:
        import llama_cpp.llama as llama_module
        from llama_cpp import Llama
    except ImportError:
        raise OperationError(
            "llama-cpp-python is not installed; run: pip install -e '.[runtime]'"
        ) from None
    with _load_lock:
        original = llama_module.llama_cpp.llama_model_default_params
        if not repack:
            def no_repack() -> Any:
                params = original()
                params.use_extra_bufts = False
                return params

            llama_module.llama_cpp.llama_model_default_params = no_repack
        try:
            return Llama(**kwargs)
        finally:
            llama_module.llama_cpp.llama_model_default_params = original


def load_model(role: str, cfg: ModelConfig, threads: int, batch: int, seed: int,
               llama: LlamaSettings | None = None, mlock: bool = False) -> LoadedModel:
    """Check the sha256, then open the model (`llama`: default the batch-invariant
    settings). Raises UserError/OperationError."""
    llama = llama or LlamaSettings.exact()
    sha = check_file(role, cfg)
    try:
        llm = open_llama(llama_kwargs(cfg, threads, batch, seed, llama, mlock), llama.repack)
    except (ValueError, RuntimeError) as exc:
        raise OperationError(
            f"model '{role}': llama.cpp could not load {cfg.path}: {exc}") from None
    metadata = dict(llm.metadata)
    info = ModelInfo(
        role=role,
        path=os.path.abspath(cfg.path),
        sha256=sha,
        quantization=quantization_of(metadata),
        description=str(llm._model.desc()),
        context=int(llm.n_ctx()),
        n_vocab=int(llm.n_vocab()),
        weights_bytes=int(llm._model.size()),
        load_id=next(_ids),
    )
    model = LoadedModel(info=info, llm=llm, kv_type=llama.kv_cache_type)
    model.metadata = metadata  # type: ignore[attr-defined]
    return model


def check_same_vocabulary(a: LoadedModel, b: LoadedModel) -> None:
    """Speculative decoding compares token ids, so draft and target must share a vocabulary."""
    if a.n_vocab != b.n_vocab:
        raise UserError(
            f"models '{a.info.role}' and '{b.info.role}' have different vocabularies "
            f"({a.n_vocab} vs {b.n_vocab} tokens); a draft model must share the main model's"
        )
    probe = range(0, a.n_vocab, max(1, a.n_vocab // 512))
    for token in probe:
        if a.token_text(token) != b.token_text(token):
            raise UserError(
                f"models '{a.info.role}' and '{b.info.role}' disagree on token {token} "
                f"({a.token_text(token)!r} vs {b.token_text(token)!r}); a draft model must "
                "share the main model's vocabulary"
            )
