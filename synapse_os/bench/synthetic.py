"""A synthetic GGUF of a chosen size: a real architecture and tokenizer, random weights.

Token generation on the 270M test model is dominated by per-token overhead, so it says
little about memory bandwidth. Serving benchmarks use "dummy weights" for this: the real
shapes and vocabulary with random values, so the work per token is exactly that of a real
model of that size. This file takes the tokenizer (and every gemma3 setting but the
geometry) from the shipped model, uses Gemma 3 1B's layer geometry, and adds layers until
the file has the requested size. Weights are random Q4_0 (token embedding Q8_0, as in the
shipped model); norms are 1. The text it writes is noise: it is for measuring speed only,
and says so in its metadata (`synapse.synthetic`), which bench records carry.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from synapse_os.errors import UserError

ARCH = "gemma3"
# Gemma 3 1B's geometry: width, attention heads (query / key-value), head size, FFN width.
EMBED, HEADS, KV_HEADS, HEAD_DIM, FFN = 1152, 4, 1, 256, 6912
BLOCK = 32  # Q4_0 and Q8_0 quantize blocks of 32 weights
MARK = "synapse.synthetic"
GEOMETRY_KEYS = ("embedding_length", "block_count", "feed_forward_length",
                 "attention.head_count", "attention.head_count_kv", "attention.key_length",
                 "attention.value_length")


def _quant_bytes(rows: int, cols: int, block_bytes: int) -> int:
    return rows * (cols // BLOCK) * block_bytes


def layer_tensors() -> list[tuple[str, tuple[int, int] | tuple[int], str]]:
    """(name suffix, (rows, cols) or (n,), type) of one block; cols is the input width."""
    q, kv = HEADS * HEAD_DIM, KV_HEADS * HEAD_DIM
    return [
        ("attn_norm.weight", (EMBED,), "F32"),
        ("attn_q.weight", (q, EMBED), "Q4_0"),
        ("attn_k.weight", (kv, EMBED), "Q4_0"),
        ("attn_v.weight", (kv, EMBED), "Q4_0"),
        ("attn_q_norm.weight", (HEAD_DIM,), "F32"),
        ("attn_k_norm.weight", (HEAD_DIM,), "F32"),
        ("attn_output.weight", (EMBED, q), "Q4_0"),
        ("post_attention_norm.weight", (EMBED,), "F32"),
        ("ffn_norm.weight", (EMBED,), "F32"),
        ("ffn_gate.weight", (FFN, EMBED), "Q4_0"),
        ("ffn_up.weight", (FFN, EMBED), "Q4_0"),
        ("ffn_down.weight", (EMBED, FFN), "Q4_0"),
        ("post_ffw_norm.weight", (EMBED,), "F32"),
    ]


def _nbytes(shape: tuple[int, ...], kind: str) -> int:
    if kind == "F32":
        return 4 * shape[0]
    rows, cols = shape  # type: ignore[misc]
    return _quant_bytes(rows, cols, 18 if kind == "Q4_0" else 34)


def plan_layers(size_bytes: int, vocab: int) -> int:
    """How many blocks bring the weights to `size_bytes` (UserError below one block)."""
    fixed = _nbytes((vocab, EMBED), "Q8_0") + _nbytes((EMBED,), "F32")
    per_layer = sum(_nbytes(shape, kind) for _, shape, kind in layer_tensors())
    layers = round((size_bytes - fixed) / per_layer)
    if layers < 1:
        smallest = (fixed + per_layer) / 1e6
        raise UserError(
            f"a synthetic model of {size_bytes / 1e6:.0f} MB is smaller than its token "
            f"embedding and one block ({smallest:.0f} MB with the shipped {vocab}-token "
            f"vocabulary); ask for {smallest:.0f} MB or more (e.g. --size 1G)"
        )
    return layers


def _random_blocks(rng: Any, rows: int, cols: int, kind: str) -> Any:
    """Valid quantized blocks: a small f16 scale, then random quants."""
    import numpy as np

    block_bytes = 18 if kind == "Q4_0" else 34
    n = rows * (cols // BLOCK)
    data = np.frombuffer(rng.bytes(n * block_bytes), dtype=np.uint8).reshape(n, block_bytes)
    data = data.copy()
    scale = np.frombuffer(np.float16(0.02 if kind == "Q4_0" else 0.002).tobytes(), np.uint8)
    data[:, 0:2] = scale
    return data.reshape(rows, (cols // BLOCK) * block_bytes)


def write_synthetic(output: Path, size_bytes: int, *, seed: int = 0,
                    source: Path | None = None) -> dict[str, Any]:
    """Write the synthetic GGUF to `output` (atomically); returns what it holds."""
    try:
        import gguf
        import numpy as np
    except ImportError as exc:
        raise UserError(f"{exc.name} is missing; install the bench extra: "
                        "pip install 'synapse-os[bench]'") from None
    from synapse_os.models import default_model, sha256_file

    source = source or default_model()[0]
    reader = gguf.GGUFReader(source)
    arch = reader.fields["general.architecture"].contents()
    if arch != ARCH:
        raise UserError(f"{source} is a {arch} model; the synthetic model takes its "
                        f"tokenizer from a {ARCH} GGUF")
    vocab = len(reader.fields["tokenizer.ggml.tokens"].data)
    layers = plan_layers(size_bytes, vocab)
    output = Path(output)
    tmp = output.with_name(f".{output.name}.tmp-{os.getpid()}")
    writer = gguf.GGUFWriter(tmp, ARCH)
    skip = {"general.architecture", "general.name", "general.size_label", "general.file_type",
            *(f"{ARCH}.{k}" for k in GEOMETRY_KEYS)}
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key in skip:
            continue
        vtype = field.types[0]
        sub = field.types[1] if vtype == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(key, field.contents(), vtype, sub)
    writer.add_name(f"Synapse synthetic {ARCH} ({layers} blocks, random weights)")
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_Q4_0)
    writer.add_embedding_length(EMBED)
    writer.add_block_count(layers)
    writer.add_feed_forward_length(FFN)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(KV_HEADS)
    writer.add_key_length(HEAD_DIM)
    writer.add_value_length(HEAD_DIM)
    source_sha = sha256_file(source)
    writer.add_bool(MARK, True)
    writer.add_uint64(f"{MARK}.seed", seed)
    writer.add_string(f"{MARK}.tokenizer_from", source_sha)

    rng = np.random.default_rng(seed)
    types = {"Q4_0": gguf.GGMLQuantizationType.Q4_0, "Q8_0": gguf.GGMLQuantizationType.Q8_0}

    def add(name: str, shape: tuple[int, ...], kind: str) -> None:
        if kind == "F32":
            writer.add_tensor(name, np.ones(shape[0], dtype=np.float32))
        else:
            rows, cols = shape  # type: ignore[misc]
            writer.add_tensor(name, _random_blocks(rng, rows, cols, kind),
                              raw_dtype=types[kind])

    try:
        add("token_embd.weight", (vocab, EMBED), "Q8_0")
        add("output_norm.weight", (EMBED,), "F32")
        for i in range(layers):
            for suffix, shape, kind in layer_tensors():
                add(f"blk.{i}.{suffix}", shape, kind)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(tmp, output)
    finally:
        tmp.unlink(missing_ok=True)
    return {"path": str(output), "size_bytes": output.stat().st_size, "blocks": layers,
            "seed": seed, "tokenizer_from": source_sha, "vocabulary": vocab}


def synthetic_mark(path: Path) -> dict[str, Any] | None:
    """{"seed", "tokenizer_from"} when `path` is a synthetic model this module wrote."""
    try:
        import gguf
    except ImportError:
        return None
    try:
        fields = gguf.GGUFReader(path).fields
    except Exception:  # noqa: BLE001 - a file gguf-py cannot parse is llama-bench's to report
        return None
    if MARK not in fields or not fields[MARK].contents():
        return None
    return {"seed": int(fields[f"{MARK}.seed"].contents()),
            "tokenizer_from": str(fields[f"{MARK}.tokenizer_from"].contents())}
