"""The GGUF inspection itself: the program `sandbox.py` runs in a locked-down child process.

It reads the model through llama.cpp's own parsers (the `gguf_*` API of libggml-base and
a vocabulary-only `llama_model_load_from_file`), never a lookalike, and prints one JSON
object on stdout. Those parsers have had memory-safety bugs, so this runs without network,
without write access, under memory/CPU/file-size limits and a timeout; the parent treats
everything printed here as untrusted and checks it field by field (inspect.py).

Usage (by sandbox.py only): python -I -B -m synapse_os.model.probe FD
where FD is an open, read-only descriptor of the file to inspect.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import sys
from typing import Any

MAGIC = b"GGUF"
# gguf_type (ggml/include/gguf.h)
T_U8, T_I8, T_U16, T_I16, T_U32, T_I32, T_F32, T_BOOL, T_STR, T_ARR, T_U64, T_I64, T_F64 = \
    range(13)
INT_TYPES = {T_U8, T_I8, T_U16, T_I16, T_U32, T_I32, T_U64, T_I64}
MAX_TENSORS = 1 << 20


class _InitParams(ctypes.Structure):
    _fields_ = [("no_alloc", ctypes.c_bool), ("ctx", ctypes.c_void_p)]


def _ggml() -> ctypes.CDLL:
    import llama_cpp

    lib_dir = os.path.join(os.path.dirname(llama_cpp.__file__), "lib")
    lib = ctypes.CDLL(os.path.join(lib_dir, "libggml-base.so"))
    sigs: dict[str, tuple[Any, list[Any]]] = {
        "gguf_init_from_file": (ctypes.c_void_p, [ctypes.c_char_p, _InitParams]),
        "gguf_free": (None, [ctypes.c_void_p]),
        "gguf_get_version": (ctypes.c_uint32, [ctypes.c_void_p]),
        "gguf_get_data_offset": (ctypes.c_size_t, [ctypes.c_void_p]),
        "gguf_get_n_kv": (ctypes.c_int64, [ctypes.c_void_p]),
        "gguf_find_key": (ctypes.c_int64, [ctypes.c_void_p, ctypes.c_char_p]),
        "gguf_get_kv_type": (ctypes.c_int, [ctypes.c_void_p, ctypes.c_int64]),
        "gguf_get_arr_type": (ctypes.c_int, [ctypes.c_void_p, ctypes.c_int64]),
        "gguf_get_arr_n": (ctypes.c_size_t, [ctypes.c_void_p, ctypes.c_int64]),
        "gguf_get_arr_data": (ctypes.c_void_p, [ctypes.c_void_p, ctypes.c_int64]),
        "gguf_get_arr_str": (ctypes.c_char_p, [ctypes.c_void_p, ctypes.c_int64, ctypes.c_size_t]),
        "gguf_get_val_str": (ctypes.c_char_p, [ctypes.c_void_p, ctypes.c_int64]),
        "gguf_get_val_data": (ctypes.c_void_p, [ctypes.c_void_p, ctypes.c_int64]),
        "gguf_get_n_tensors": (ctypes.c_int64, [ctypes.c_void_p]),
        "gguf_get_tensor_offset": (ctypes.c_size_t, [ctypes.c_void_p, ctypes.c_int64]),
        "gguf_get_tensor_type": (ctypes.c_int, [ctypes.c_void_p, ctypes.c_int64]),
        "gguf_get_tensor_size": (ctypes.c_size_t, [ctypes.c_void_p, ctypes.c_int64]),
        "ggml_type_name": (ctypes.c_char_p, [ctypes.c_int]),
    }
    for name, (res, args) in sigs.items():
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = res, args
    return lib


_INT_CTYPES = {T_U8: ctypes.c_uint8, T_I8: ctypes.c_int8, T_U16: ctypes.c_uint16,
               T_I16: ctypes.c_int16, T_U32: ctypes.c_uint32, T_I32: ctypes.c_int32,
               T_U64: ctypes.c_uint64, T_I64: ctypes.c_int64}


class _Gguf:
    """Typed reads from a parsed gguf_context: a key of the wrong type reads as absent
    (ggml asserts, and so aborts, on a typed getter called for another type)."""

    def __init__(self, lib: ctypes.CDLL, ctx: int) -> None:
        self.lib, self.ctx = lib, ctx

    def key(self, name: str) -> int:
        return int(self.lib.gguf_find_key(self.ctx, name.encode()))

    def get_int(self, name: str) -> int | None:
        k = self.key(name)
        if k < 0:
            return None
        t = self.lib.gguf_get_kv_type(self.ctx, k)
        if t in INT_TYPES:
            return int(_INT_CTYPES[t].from_address(self.lib.gguf_get_val_data(self.ctx, k)).value)
        if t == T_ARR and self.lib.gguf_get_arr_type(self.ctx, k) in INT_TYPES:
            # per-layer values (e.g. head_count_kv on some architectures): report the largest
            at = self.lib.gguf_get_arr_type(self.ctx, k)
            n = self.lib.gguf_get_arr_n(self.ctx, k)
            if n == 0 or n > MAX_TENSORS:
                return None
            arr = (_INT_CTYPES[at] * n).from_address(self.lib.gguf_get_arr_data(self.ctx, k))
            return int(max(arr))
        return None

    def get_str(self, name: str) -> str | None:
        k = self.key(name)
        if k < 0 or self.lib.gguf_get_kv_type(self.ctx, k) != T_STR:
            return None
        raw = self.lib.gguf_get_val_str(self.ctx, k)
        return raw.decode("utf-8", "replace") if raw is not None else None

    def tokens(self) -> tuple[int, str] | None:
        """(count, sha256) of tokenizer.ggml.tokens: the vocabulary, token by token."""
        k = self.key("tokenizer.ggml.tokens")
        if k < 0 or self.lib.gguf_get_kv_type(self.ctx, k) != T_ARR \
                or self.lib.gguf_get_arr_type(self.ctx, k) != T_STR:
            return None
        n = int(self.lib.gguf_get_arr_n(self.ctx, k))
        digest = hashlib.sha256()
        get = self.lib.gguf_get_arr_str
        for i in range(n):
            raw = get(self.ctx, k, i) or b""
            digest.update(len(raw).to_bytes(4, "little"))
            digest.update(raw)
        return n, digest.hexdigest()


def _ftype_name(llama_cpp: Any, ftype: int | None) -> str | None:
    """llama.cpp's name for general.file_type (LLAMA_FTYPE_MOSTLY_Q4_K_M -> Q4_K_M)."""
    for name in dir(llama_cpp):
        if name.startswith("LLAMA_FTYPE_") and getattr(llama_cpp, name) == ftype \
                and name != "LLAMA_FTYPE_GUESSED":
            return name.removeprefix("LLAMA_FTYPE_").removeprefix("MOSTLY_").removeprefix("ALL_")
    return None


def _fail(kind: str, detail: str = "", **extra: Any) -> None:
    print(json.dumps({"ok": False, "kind": kind, "detail": detail[-300:], **extra}))
    sys.exit(0)


def inspect_fd(fd: int) -> dict[str, Any]:
    size = os.fstat(fd).st_size
    head = os.pread(fd, 8, 0)
    if len(head) < 4 or head[:4] != MAGIC:
        _fail("not-gguf", size=size)
    path = f"/proc/self/fd/{fd}".encode()
    try:  # llama.cpp opens by name: make sure the name works before blaming the file
        os.close(os.open(path, os.O_RDONLY))
    except OSError as exc:
        _fail("unreadable", f"{path.decode()}: {exc.strerror}", size=size)

    import llama_cpp

    messages: list[str] = []

    @llama_cpp.llama_log_callback
    def _log(level: int, text: bytes, user: Any) -> None:
        if text and len(messages) < 2000:
            messages.append(text.decode("utf-8", "replace"))

    llama_cpp.llama_log_set(_log, None)
    lib = _ggml()
    lib.ggml_log_set.restype, lib.ggml_log_set.argtypes = None, [llama_cpp.llama_log_callback,
                                                                  ctypes.c_void_p]
    lib.ggml_log_set(_log, None)

    def last_error() -> str:
        lines = [m.strip() for m in messages if m.strip()]
        return "; ".join(lines[-2:])

    ctx = lib.gguf_init_from_file(path, _InitParams(True, None))
    if not ctx:
        _fail("corrupt-header", last_error(), size=size)
    g = _Gguf(lib, ctx)
    n_tensors = int(lib.gguf_get_n_tensors(ctx))
    data_offset = int(lib.gguf_get_data_offset(ctx))
    type_bytes: dict[str, int] = {}
    total = 0
    end = data_offset
    for i in range(n_tensors):
        nbytes = int(lib.gguf_get_tensor_size(ctx, i))
        offset = int(lib.gguf_get_tensor_offset(ctx, i))
        name = (lib.ggml_type_name(lib.gguf_get_tensor_type(ctx, i)) or b"?").decode()
        type_bytes[name] = type_bytes.get(name, 0) + nbytes
        total += nbytes
        end = max(end, data_offset + offset + nbytes)
    if end > size:
        _fail("truncated", size=size, needed=end)
    arch = g.get_str("general.architecture") or ""
    info: dict[str, Any] = {
        "gguf_version": int(lib.gguf_get_version(ctx)),
        "architecture": arch,
        "name": g.get_str("general.name"),
        "file_type": g.get_int("general.file_type"),
        "quantization": _ftype_name(llama_cpp, g.get_int("general.file_type")),
        "tensor_count": n_tensors,
        "tensor_bytes": total,
        "tensor_types": type_bytes,
        "file_bytes": size,
        "context_length": g.get_int(f"{arch}.context_length"),
        "block_count": g.get_int(f"{arch}.block_count"),
        "embedding_length": g.get_int(f"{arch}.embedding_length"),
        "head_count": g.get_int(f"{arch}.attention.head_count"),
        "head_count_kv": g.get_int(f"{arch}.attention.head_count_kv"),
        "key_length": g.get_int(f"{arch}.attention.key_length"),
        "value_length": g.get_int(f"{arch}.attention.value_length"),
        "tokenizer": g.get_str("tokenizer.ggml.model"),
        "bos_token_id": g.get_int("tokenizer.ggml.bos_token_id"),
        "eos_token_id": g.get_int("tokenizer.ggml.eos_token_id"),
        "chat_template": g.key("tokenizer.chat_template") >= 0,
    }
    tokens = g.tokens()
    info["vocab_size"], info["tokens_sha256"] = tokens if tokens else (None, None)
    lib.gguf_free(ctx)

    # What llama.cpp itself makes of it: architecture known, vocabulary valid, every
    # tensor within the file (the loader checks bounds even when it skips the weights).
    llama_cpp.llama_backend_init()
    params = llama_cpp.llama_model_default_params()
    params.vocab_only = True
    params.use_mmap = False
    model = llama_cpp.llama_model_load_from_file(path, params)
    if not model:
        _fail("unloadable", last_error(), size=size)
    vocab = llama_cpp.llama_model_get_vocab(model)
    info["llama_vocab_size"] = int(llama_cpp.llama_vocab_n_tokens(vocab))
    info["parameters"] = int(llama_cpp.llama_model_n_params(model))
    llama_cpp.llama_model_free(model)
    return info


def main(argv: list[str]) -> None:
    if len(argv) != 2 or not argv[1].isdigit():
        print("usage: python -m synapse_os.model.probe FD", file=sys.stderr)
        sys.exit(64)
    info = inspect_fd(int(argv[1]))
    print(json.dumps({"ok": True, "inspection": info}))


if __name__ == "__main__":
    main(sys.argv)
