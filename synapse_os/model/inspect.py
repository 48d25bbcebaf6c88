"""What the sandboxed probe reported, checked field by field, and the judgements made on it:
is it a GGUF llama.cpp loads, does it fit the profile's memory, does a draft share the main
model's vocabulary."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from synapse_os.errors import OperationError, UserError
from synapse_os.model.sandbox import ProbeResult, run_probe

NAME = re.compile(r"[A-Za-z0-9_.+-]{1,64}")
SHA = re.compile(r"[0-9a-f]{64}")
KV_BYTES_PER_ELEMENT = 2  # f16 K and V: llama.cpp's default cache type, the upper bound
INT_FIELDS = ("gguf_version", "tensor_count", "tensor_bytes", "file_bytes", "vocab_size",
              "llama_vocab_size", "parameters", "file_type", "context_length", "block_count",
              "embedding_length", "head_count", "head_count_kv", "key_length", "value_length",
              "bos_token_id", "eos_token_id")
REQUIRED = ("gguf_version", "tensor_count", "tensor_bytes", "file_bytes", "llama_vocab_size",
            "architecture")


def _printable(value: object, limit: int = 128) -> str | None:
    """A string from the model file, safe to print: no control characters, bounded."""
    if not isinstance(value, str):
        return None
    return "".join(c for c in value if c.isprintable())[:limit]


def _int(value: object) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**63:
        return value
    return None


def check_inspection(raw: object) -> dict[str, Any]:
    """The inspection as recorded: every field typed and bounded (it came out of a process
    that parsed hostile bytes), or OperationError."""
    if not isinstance(raw, dict):
        raise OperationError("the GGUF inspection returned no result; nothing was copied")
    out: dict[str, Any] = {k: _int(raw.get(k)) for k in INT_FIELDS}
    arch = raw.get("architecture")
    out["architecture"] = arch if isinstance(arch, str) and NAME.fullmatch(arch) else None
    for key in ("quantization", "tokenizer"):
        v = raw.get(key)
        out[key] = v if isinstance(v, str) and NAME.fullmatch(v) else None
    out["name"] = _printable(raw.get("name"))
    out["chat_template"] = raw.get("chat_template") is True
    sha = raw.get("tokens_sha256")
    out["tokens_sha256"] = sha if isinstance(sha, str) and SHA.fullmatch(sha) else None
    types = raw.get("tensor_types")
    out["tensor_types"] = {k: v for k, v in types.items()
                           if NAME.fullmatch(k) and _int(v) is not None} \
        if isinstance(types, dict) and len(types) <= 64 else {}
    missing = [k for k in REQUIRED if out[k] is None]
    if missing:
        raise OperationError(f"the GGUF inspection did not report {', '.join(missing)}; "
                             "nothing was copied")
    return out


def inspect_file(fd: int, shown: str) -> tuple[dict[str, Any], ProbeResult]:
    """Inspect the file open at fd (`shown` names it in messages): the checked inspection,
    or UserError with one sentence (not a GGUF, corrupted header, truncated, unloadable)."""
    res = run_probe(fd)
    data = res.data
    if data is None or not isinstance(data.get("ok"), bool):
        why = "ran out of time" if res.sandbox.get("timed_out") else \
            f"was killed by signal {-res.returncode}" if res.returncode < 0 else \
            f"exited with status {res.returncode}"
        raise UserError(f"{shown}: llama.cpp's GGUF parser {why} while reading it in the "
                        "sandbox; refusing it, nothing was copied")
    if data["ok"] is False:
        kind = data.get("kind")
        detail = _printable(data.get("detail"), 200) or ""
        size, needed = _int(data.get("size")), _int(data.get("needed"))
        if kind == "not-gguf":
            raise UserError(f"{shown}: is not a GGUF file (it does not start with the GGUF "
                            "magic); refusing it, nothing was copied")
        if kind == "corrupt-header":
            raise UserError(f"{shown}: has a corrupted GGUF header (llama.cpp: "
                            f"{detail or 'unreadable'}); refusing it, nothing was copied")
        if kind == "truncated":
            raise UserError(f"{shown}: is truncated ({size} bytes, its tensors need {needed}); "
                            "refusing it, nothing was copied")
        if kind == "unloadable":
            raise UserError(f"{shown}: llama.cpp cannot load it ({detail or 'no reason given'});"
                            " refusing it, nothing was copied")
        if kind == "unreadable":
            raise OperationError(f"the sandboxed inspection could not open its copy of {shown} "
                                 f"({detail}); nothing was copied")
        raise OperationError("the GGUF inspection reported an unknown failure; nothing was copied")
    return check_inspection(data.get("inspection")), res


def kv_bytes(info: dict[str, Any], context: int) -> int | None:
    """K and V cache bytes at `context` tokens (None when the metadata cannot tell)."""
    layers, heads = info.get("block_count"), info.get("head_count")
    if not layers or not heads:
        return None
    kv_heads = info.get("head_count_kv") or heads
    embd = info.get("embedding_length") or 0
    k_len = info.get("key_length") or embd // heads
    v_len = info.get("value_length") or embd // heads
    return int(layers * context * kv_heads * (k_len + v_len) * KV_BYTES_PER_ELEMENT)


def memory_need(info: dict[str, Any], context: int) -> int:
    return int(info["tensor_bytes"]) + (kv_bytes(info, context) or 0)


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def vocabulary(info: dict[str, Any]) -> tuple[Any, ...]:
    """What a draft must share with its main model: llama.cpp's speculative decoding compares
    token ids, so the tokenizer, every token's text and the special ids must agree."""
    return (info.get("tokenizer"), info.get("llama_vocab_size"), info.get("tokens_sha256"),
            info.get("bos_token_id"), info.get("eos_token_id"))


def describe_vocabulary(info: dict[str, Any]) -> str:
    sha = info.get("tokens_sha256") or "?"
    return f"{info.get('llama_vocab_size')} tokens, {info.get('tokenizer')} tokenizer, " \
        f"tokens sha256 {sha[:12]}"


def summary(info: dict[str, Any], path: Path | str) -> str:
    return (f"{path}: {info['architecture']} {info.get('quantization') or '?'}, "
            f"{info['tensor_count']} tensors ({human(info['tensor_bytes'])}), vocabulary "
            f"{info['llama_vocab_size']} tokens, chat template "
            f"{'present' if info['chat_template'] else 'absent'}")
