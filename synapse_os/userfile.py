"""Reading a file the user named: every way it can fail is one UserError sentence."""

from __future__ import annotations

from pathlib import Path

from synapse_os.errors import UserError


def read_user_bytes(path: Path, what: str, expected: str) -> bytes:
    """Contents of `path`; `what` names it ("base config"), `expected` says what to pass."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"{what} {path} does not exist; pass {expected}") from None
    except IsADirectoryError:
        raise UserError(f"{what} {path} is a directory; pass {expected}") from None
    except OSError as exc:
        raise UserError(f"{what} {path} cannot be read ({exc.strerror}); pass {expected}") from None


def read_user_text(path: Path, what: str, expected: str) -> str:
    try:
        return read_user_bytes(path, what, expected).decode("utf-8")
    except UnicodeDecodeError:
        raise UserError(f"{what} {path} is not UTF-8 text; pass {expected}") from None
