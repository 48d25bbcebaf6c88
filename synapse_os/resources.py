"""Where the shipped data directories (profiles, kernel-config, overlays, ...) live."""

from pathlib import Path


def data_dir(name: str) -> Path:
    packaged = Path(__file__).resolve().parent / "data" / name
    return packaged if packaged.exists() else Path(__file__).resolve().parent.parent / name
