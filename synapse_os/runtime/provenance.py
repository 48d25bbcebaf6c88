"""Provenance: one NDJSON line per request, append-only, fsync'd on a schedule, rotated.

Every record carries what is needed to reproduce or reject the number it holds: the
model triplet with sha256 and quantization, sampling, execution mode, environment and
the synapse git revision.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import threading
import time
from functools import lru_cache
from pathlib import Path
from typing import Any

from synapse_os.proc import run
from synapse_os.profile.hardware import read_cpuinfo

SCHEMA = 1
# Every record has these keys (values may be null where not applicable, e.g. expected_tier).
REQUIRED_FIELDS = (
    "schema", "time", "request_id", "endpoint", "status", "tier", "expected_tier",
    "router_confidence", "routed", "model_role", "models", "sampling", "execution_mode",
    "deterministic", "environment", "git_revision", "synapse_version", "speculative",
    "queue_ms", "ttft_ms", "latency_ms", "tokens_in", "tokens_out", "finish_reason",
    "token_hash", "session_id", "stream",
)


def _cpu_model() -> str:
    try:
        model = read_cpuinfo(Path("/proc/cpuinfo").read_text())[1]
    except OSError:
        model = None
    return model or platform.processor() or "unknown"


def _gpu() -> str:
    if shutil.which("nvidia-smi"):
        result = run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                     check=False, timeout=10)
        if result.returncode == 0 and result.stdout.strip():
            return "; ".join(result.stdout.strip().splitlines())
    return "none"


@lru_cache(maxsize=1)
def environment() -> dict[str, Any]:
    import psutil

    try:
        import llama_cpp

        llama_version = str(llama_cpp.__version__)
    except ImportError:
        llama_version = "not installed"
    return {
        "python": platform.python_version(),
        "os": platform.platform(),
        "kernel": platform.release(),
        "cpu": _cpu_model(),
        "cpu_physical_cores": psutil.cpu_count(logical=False),
        "cpu_logical": psutil.cpu_count(),
        "gpu": _gpu(),
        "llama_cpp_python": llama_version,
        "hostname": platform.node(),
    }


class ProvenanceWriter:
    """Thread-safe NDJSON appender; `path.1` is the newest rotated file, `path.<keep>` the oldest.
    """

    def __init__(self, path: Path, fsync_interval_s: float = 1.0,
                 max_bytes: int = 64 * 1024 * 1024, keep: int = 5) -> None:
        self.path = path
        self.fsync_interval_s = fsync_interval_s
        self.max_bytes = max_bytes
        self.keep = keep
        self._lock = threading.Lock()
        self._last_sync = time.monotonic()
        self._dirty = False
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = path.open("a", encoding="utf-8")

    def write(self, record: dict[str, Any]) -> None:
        line = json.dumps(record, sort_keys=True, separators=(",", ":"), default=str) + "\n"
        with self._lock:
            if self._fh.tell() and self._fh.tell() + len(line) > self.max_bytes:
                self._rotate()
            self._fh.write(line)
            self._fh.flush()
            self._dirty = True
            if time.monotonic() - self._last_sync >= self.fsync_interval_s:
                self._sync()

    def flush(self) -> None:
        with self._lock:
            if self._dirty:
                self._sync()

    def _sync(self) -> None:
        os.fsync(self._fh.fileno())
        self._last_sync = time.monotonic()
        self._dirty = False

    def _rotate(self) -> None:
        self._sync()
        self._fh.close()
        oldest = self.path.with_name(f"{self.path.name}.{self.keep}")
        oldest.unlink(missing_ok=True)
        for i in range(self.keep - 1, 0, -1):
            src = self.path.with_name(f"{self.path.name}.{i}")
            if src.exists():
                src.rename(self.path.with_name(f"{self.path.name}.{i + 1}"))
        self.path.rename(self.path.with_name(f"{self.path.name}.1"))
        self._fh = self.path.open("a", encoding="utf-8")

    def close(self) -> None:
        with self._lock:
            if not self._fh.closed:
                self._sync()
                self._fh.close()
