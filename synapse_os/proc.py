"""The one small, logged subprocess helper every effectful part uses.

Each call is logged (command, cwd, duration, exit code); a failure raises
OperationError carrying the tail of the failing command's stderr.
"""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from synapse_os.errors import OperationError, UserError

log = logging.getLogger("synapse.proc")

STDERR_TAIL_LINES = 20


@dataclass(frozen=True)
class Result:
    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str
    duration_s: float


def tail(text: str, lines: int = STDERR_TAIL_LINES) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


def require_tool(name: str, install_hint: str) -> str:
    """Path of an executable, or a UserError naming how to install it."""
    path = shutil.which(name)
    if path is None:
        raise UserError(f"'{name}' was not found on PATH; install it with: {install_hint}")
    return path


def run(
    argv: Sequence[str | os.PathLike[str]],
    *,
    cwd: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    check: bool = True,
    input: str | None = None,
    timeout: float | None = None,
    capture: bool = True,
) -> Result:
    """Run a command, log it, and raise OperationError (with stderr tail) if it fails."""
    args = tuple(str(a) for a in argv)
    full_env = None
    if env is not None:
        full_env = dict(os.environ)
        full_env.update(env)
    start = time.monotonic()
    try:
        proc = subprocess.run(
            args,
            cwd=cwd,
            env=full_env,
            input=input,
            text=True,
            capture_output=capture,
            timeout=timeout,
            check=False,
        )
    except FileNotFoundError as exc:
        raise OperationError(f"cannot run {args[0]!r}: {exc.strerror}") from exc
    except subprocess.TimeoutExpired as exc:
        raise OperationError(
            f"command timed out after {timeout:.0f} s: {shlex.join(args)}"
        ) from exc
    duration = time.monotonic() - start
    log.info(
        "ran %s (cwd=%s) in %.2fs -> %d",
        shlex.join(args),
        Path(cwd) if cwd else Path.cwd(),
        duration,
        proc.returncode,
    )
    result = Result(args, proc.returncode, proc.stdout or "", proc.stderr or "", duration)
    if check and proc.returncode != 0:
        detail = tail(result.stderr) or tail(result.stdout)
        raise OperationError(
            f"command failed with exit code {proc.returncode}: {shlex.join(args)}"
            + (f"\n{detail}" if detail else "")
        )
    return result
