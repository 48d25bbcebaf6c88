"""Fault-injection hooks for the crash-safety tests (inert unless the variables are set).

SYNAPSE_FAULT_AFTER_STEP=N   SIGKILL this process right after its N-th checkpoint. Apply
                             and rollback call `checkpoint()` between every pair of steps
                             (journal written, backup kept, temp file written, renamed,
                             directory made, systemctl run, ...), so N = 1, 2, ... walks
                             every crash point in turn.
SYNAPSE_FAULT_MID_WRITE=N    SIGKILL in the middle of writing the N-th temporary file
                             (half of its bytes written and fsynced).
"""

from __future__ import annotations

import os
import signal

AFTER_STEP_ENV = "SYNAPSE_FAULT_AFTER_STEP"
MID_WRITE_ENV = "SYNAPSE_FAULT_MID_WRITE"

_steps = 0
_writes = 0


def _wanted(name: str) -> int:
    value = os.environ.get(name, "")
    return int(value) if value.isdigit() else 0


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def checkpoint(label: str) -> None:
    del label  # the label documents the call site; `steps()` counts them
    global _steps
    _steps += 1
    if _steps == _wanted(AFTER_STEP_ENV):
        die()


def mid_write_now() -> bool:
    global _writes
    _writes += 1
    return _writes == _wanted(MID_WRITE_ENV)


def steps() -> int:
    return _steps
