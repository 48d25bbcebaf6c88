"""Fixtures for model intake: the real gemma3 270M GGUF (tests/conftest.py `small_model`) and a
tiny real GGUF with its own vocabulary, written with gguf-py (llama.cpp loads and runs it)."""

from __future__ import annotations

from pathlib import Path

import pytest

TINY_VOCAB = 384


def write_tiny_gguf(path: Path, arch: str = "llama") -> Path:
    """A one-layer llama model with random weights and a 384-token SentencePiece-style
    vocabulary: a real GGUF, loadable by llama.cpp, sharing nothing with gemma3's 262144."""
    try:
        import gguf
        import numpy as np
    except ImportError:
        pytest.fail("gguf-py is required for this test; install it with: "
                    "pip install -e '.[dev]'  (or pip install gguf)", pytrace=False)
    n_embd, n_ff, n_head = 64, 128, 4
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name("synapse tiny test model")
    w.add_context_length(256)
    w.add_embedding_length(n_embd)
    w.add_feed_forward_length(n_ff)
    w.add_block_count(1)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(n_embd // n_head)
    w.add_file_type(0)
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{i:02X}>" for i in range(256)]
    tokens += [f"w{i}" for i in range(TINY_VOCAB - len(tokens))]
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores([0.0] * TINY_VOCAB)
    w.add_token_types([2, 3, 3] + [6] * 256 + [1] * (TINY_VOCAB - 259))
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    rng = np.random.default_rng(0)

    def tensor(name: str, *shape: int) -> None:
        w.add_tensor(name, (rng.standard_normal(shape) * 0.02).astype(np.float32))

    tensor("token_embd.weight", TINY_VOCAB, n_embd)
    w.add_tensor("output_norm.weight", np.ones(n_embd, np.float32))
    tensor("output.weight", TINY_VOCAB, n_embd)
    w.add_tensor("blk.0.attn_norm.weight", np.ones(n_embd, np.float32))
    for x in ("q", "k", "v", "output"):
        tensor(f"blk.0.attn_{x}.weight", n_embd, n_embd)
    w.add_tensor("blk.0.ffn_norm.weight", np.ones(n_embd, np.float32))
    tensor("blk.0.ffn_gate.weight", n_ff, n_embd)
    tensor("blk.0.ffn_up.weight", n_ff, n_embd)
    tensor("blk.0.ffn_down.weight", n_embd, n_ff)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture(scope="session")
def gemma(small_model: tuple[Path, str]) -> tuple[Path, str]:
    return small_model


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_gguf(tmp_path_factory.mktemp("tiny") / "tiny-llama.gguf")
